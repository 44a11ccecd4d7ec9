//! A gRPC application for the data plane's tests: the Destination service, scripted.
//! [`ScriptedDestination`] serves it; [`check_calls`] makes every kind of call a
//! gRPC client makes and checks each answer, through whatever stands between them
//! (the proxies).
//!
//! - `Ack` (unary) answers, unless the pod is missing: `INVALID_ARGUMENT`.
//! - `Resolve` (server streaming) sends three resolutions, then ends with
//!   `RESOURCE_EXHAUSTED`, a status that travels in the HTTP/2 trailers.

use futures::stream;
use tonic::{Code, Request, Response, Status};

use crate::v1::{
    AckRequest, AckResponse, InboundPolicyRequest, InboundPolicyUpdate, Resolution, ResolveRequest,
    destination_client::DestinationClient, destination_server::Destination,
};

/// How many resolutions a `Resolve` stream sends before its status.
pub const STREAMED: usize = 3;
/// The status message that ends a `Resolve` stream.
pub const ENOUGH: &str = "three is enough";

/// The scripted Destination service.
#[derive(Debug, Default)]
pub struct ScriptedDestination;

#[tonic::async_trait]
impl Destination for ScriptedDestination {
    type ResolveStream = stream::Iter<std::vec::IntoIter<Result<Resolution, Status>>>;
    type InboundPolicyStream = stream::Empty<Result<InboundPolicyUpdate, Status>>;

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<Self::ResolveStream>, Status> {
        let authority = request.into_inner().authority;
        let mut items: Vec<Result<Resolution, Status>> = (0..STREAMED)
            .map(|i| {
                Ok(Resolution {
                    service: authority.clone(),
                    config_version: i.to_string(),
                    ..Resolution::default()
                })
            })
            .collect();
        items.push(Err(Status::resource_exhausted(ENOUGH)));
        Ok(Response::new(stream::iter(items)))
    }

    async fn inbound_policy(
        &self,
        _: Request<InboundPolicyRequest>,
    ) -> Result<Response<Self::InboundPolicyStream>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        if request.get_ref().pod.is_empty() {
            return Err(Status::invalid_argument("pod is required"));
        }
        Ok(Response::new(AckResponse {}))
    }
}

/// Makes a unary call, a refused unary call and a streaming call on `client`, and
/// checks every answer; what differed, if anything.
pub async fn check_calls<T>(client: &mut DestinationClient<T>) -> Result<(), String>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let ack = |pod: &str| AckRequest {
        pod: pod.into(),
        ..AckRequest::default()
    };
    client
        .ack(ack("web-1"))
        .await
        .map_err(|s| format!("unary call: {s}"))?;
    match client.ack(ack("")).await {
        Err(s) if s.code() == Code::InvalidArgument && s.message() == "pod is required" => {}
        other => return Err(format!("refused unary call: {other:?}")),
    }

    let request = ResolveRequest {
        authority: "web.shop:80".into(),
        ..ResolveRequest::default()
    };
    let mut stream = client
        .resolve(request)
        .await
        .map_err(|s| format!("streaming call: {s}"))?
        .into_inner();
    for i in 0..STREAMED {
        match stream.message().await {
            Ok(Some(r)) if r.config_version == i.to_string() && r.service == "web.shop:80" => {}
            other => return Err(format!("streamed message {i}: {other:?}")),
        }
    }
    match stream.message().await {
        Err(s) if s.code() == Code::ResourceExhausted && s.message() == ENOUGH => Ok(()),
        other => Err(format!(
            "the stream's status (from its trailers): {other:?}"
        )),
    }
}
