//! The Denials service of the proxy API: a proxy's report of what its inbound policy
//! refused, checked as every Destination call is and by [`checked`], kept in the
//! [`DenialReports`](crate::denials::DenialReports) of the connected proxies.

use k8s_openapi::jiff::Timestamp;
use tonic::{Request, Response, Status};
use weft_proxy_api::v1::{DenialReport, DenialReportResponse, denials_server::Denials};

use crate::{denials::checked, discovery::server::DestinationService};

/// The Denials service: checks each report and keeps it in the [`DenialReports`] of
/// the Destination service's [`Proxies`](crate::discovery::proxies::Proxies).
#[derive(Clone, Debug)]
pub struct DenialsService {
    destination: DestinationService,
}

impl DenialsService {
    pub fn new(destination: DestinationService) -> Self {
        Self { destination }
    }
}

#[tonic::async_trait]
impl Denials for DenialsService {
    async fn report(
        &self,
        request: Request<DenialReport>,
    ) -> Result<Response<DenialReportResponse>, Status> {
        let destination = &self.destination;
        let pod = destination.callers_pod(&request, &request.get_ref().pod)?;
        let ports = checked(request.get_ref(), Timestamp::now().as_second()).map_err(|e| {
            destination.refuse("BadDenialReport", Status::invalid_argument(e.to_string()))
        })?;
        let index = destination.index();
        destination.proxies().denials().replace(pod, ports, |key| {
            index.lock().map(|i| i.pod(key).is_some()).unwrap_or(true)
        });
        Ok(Response::new(DenialReportResponse {}))
    }
}
