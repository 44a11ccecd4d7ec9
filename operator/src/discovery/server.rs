//! The Destination service of the proxy API: Resolve streams over the [`Index`], and
//! acknowledgements of what proxies applied.
//!
//! Every call must come over mutual TLS with a workload certificate the mesh issued:
//! the caller's SPIFFE id is read from its certificate (the TLS layer already checked
//! the chain against the trust bundle) and a call without one is refused. A connection
//! may hold at most [`MAX_STREAMS_PER_CONNECTION`] streams; more get
//! RESOURCE_EXHAUSTED. Every refusal is counted by reason.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
};

use futures::Stream;
use tonic::{
    Request, Response, Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use weft_proxy_api::v1::{
    AckRequest, AckResponse, Endpoint, InboundPolicyRequest, InboundPolicyUpdate, ProtocolHint,
    Resolution, ResolveRequest, destination_server::Destination,
};

use super::index::{Index, Resolution as Resolved, parse_authority};
use crate::{identity::SpiffeId, metrics::Metrics};

/// The most streams one proxy connection may hold open.
pub const MAX_STREAMS_PER_CONNECTION: usize = 512;

/// What proxies acknowledged: per pod (`namespace/name`), per stream, the version.
pub type Acks = Arc<Mutex<HashMap<String, HashMap<String, String>>>>;

/// The Destination service.
#[derive(Clone)]
pub struct DestinationService {
    index: Arc<Mutex<Index>>,
    acks: Acks,
    metrics: Arc<Metrics>,
    streams: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

impl std::fmt::Debug for DestinationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationService").finish_non_exhaustive()
    }
}

impl DestinationService {
    pub fn new(index: Arc<Mutex<Index>>, acks: Acks, metrics: Arc<Metrics>) -> Self {
        Self {
            index,
            acks,
            metrics,
            streams: Arc::default(),
        }
    }

    fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.metrics.destination_refused(reason);
        status
    }

    /// The caller's mesh identity, from its client certificate.
    fn caller<T>(&self, request: &Request<T>) -> Result<SpiffeId, Status> {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(self.refuse(
                "NoClientCertificate",
                Status::unauthenticated(
                    "Destination calls need a workload certificate (mutual TLS)",
                ),
            ));
        };
        spiffe_id_of(leaf).ok_or_else(|| {
            self.refuse(
                "NoSpiffeId",
                Status::unauthenticated("the client certificate names no SPIFFE id"),
            )
        })
    }

    /// Takes one of the connection's stream slots, given back when the guard drops.
    fn slot<T>(&self, request: &Request<T>) -> Result<StreamSlot, Status> {
        let remote = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut streams = self
            .streams
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let open = streams.entry(remote).or_default();
        if *open >= MAX_STREAMS_PER_CONNECTION {
            drop(streams);
            return Err(self.refuse(
                "TooManyStreams",
                Status::resource_exhausted(format!(
                    "this connection already holds {MAX_STREAMS_PER_CONNECTION} streams"
                )),
            ));
        }
        *open += 1;
        Ok(StreamSlot {
            streams: self.streams.clone(),
            remote,
        })
    }
}

/// One open stream of a connection.
struct StreamSlot {
    streams: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    remote: SocketAddr,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.streams.lock()
            && let Some(open) = streams.get_mut(&self.remote)
        {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.remote);
            }
        }
    }
}

/// The URI SAN of a DER certificate, as a SPIFFE id.
fn spiffe_id_of(der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri.parse().ok(),
        _ => None,
    })
}

type ResolutionStream = Pin<Box<dyn Stream<Item = Result<Resolution, Status>> + Send>>;
type PolicyStream = Pin<Box<dyn Stream<Item = Result<InboundPolicyUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Destination for DestinationService {
    type ResolveStream = ResolutionStream;
    type InboundPolicyStream = PolicyStream;

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<Self::ResolveStream>, Status> {
        let caller = self.caller(&request)?;
        let slot = self.slot(&request)?;
        let authority = &request.get_ref().authority;
        let mut rx = {
            let mut index = self
                .index
                .lock()
                .map_err(|_| Status::internal("poisoned"))?;
            let target = parse_authority(authority, index.cluster_domain()).map_err(|e| {
                self.refuse("BadAuthority", Status::invalid_argument(e.to_string()))
            })?;
            index.subscribe(&target)
        };
        tracing::debug!(%caller, %authority, "resolve stream opened");
        self.metrics.destination_stream(true);
        let metrics = self.metrics.clone();
        let stream = async_stream(move |tx| async move {
            let _slot = slot;
            loop {
                let update = to_proto(&rx.borrow_and_update());
                if tx.send(Ok(update)).await.is_err() {
                    break;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                }
            }
            metrics.destination_stream(false);
        });
        Ok(Response::new(stream))
    }

    async fn inbound_policy(
        &self,
        request: Request<InboundPolicyRequest>,
    ) -> Result<Response<Self::InboundPolicyStream>, Status> {
        self.caller(&request)?;
        Err(Status::unimplemented(
            "inbound policy streams are not served yet: proxies apply their default policy",
        ))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let caller = self.caller(&request)?;
        let ack = request.into_inner();
        if ack.pod.is_empty() || ack.pod.len() > 253 || ack.stream.len() > 300 {
            return Err(self.refuse(
                "BadAck",
                Status::invalid_argument("pod must be a pod name and stream at most 300 bytes"),
            ));
        }
        let pod = format!("{}/{}", caller.namespace(), ack.pod);
        let mut acks = self.acks.lock().map_err(|_| Status::internal("poisoned"))?;
        let streams = acks.entry(pod).or_default();
        if streams.len() >= MAX_STREAMS_PER_CONNECTION && !streams.contains_key(&ack.stream) {
            drop(acks);
            return Err(self.refuse(
                "TooManyStreams",
                Status::resource_exhausted("too many acknowledged streams for one pod"),
            ));
        }
        streams.insert(ack.stream, ack.config_version);
        Ok(Response::new(AckResponse {}))
    }
}

/// A stream fed by `produce` through a small channel, which ends when the client goes.
fn async_stream<T, F, Fut>(produce: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn to_proto(resolved: &Resolved) -> Resolution {
    Resolution {
        known: resolved.service.is_some(),
        service: resolved
            .service
            .as_ref()
            .map(|k| format!("{}.{}", k.name, k.namespace))
            .unwrap_or_default(),
        endpoints: resolved
            .endpoints
            .iter()
            .map(|e| Endpoint {
                address: e.address.to_string(),
                weight: 1,
                identity: e.identity.clone().unwrap_or_default(),
                protocol_hint: if e.opaque {
                    ProtocolHint::Opaque
                } else if e.identity.is_some() {
                    ProtocolHint::Meshed
                } else {
                    ProtocolHint::Unknown
                } as i32,
                labels: e.labels.clone().into_iter().collect(),
            })
            .collect(),
        config_version: resolved.version.clone(),
    }
}
