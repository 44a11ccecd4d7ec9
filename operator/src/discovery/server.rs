//! The Destination service of the proxy API: Resolve and InboundPolicy streams over the
//! [`Index`], and acknowledgements of what proxies applied, kept in [`Proxies`].
//!
//! Every call must come over mutual TLS with a workload certificate the mesh issued:
//! the caller's SPIFFE id is read from its certificate (the TLS layer already checked
//! the chain against the trust bundle) and a call without one is refused. The pod a
//! call names must be one the index knows, in the caller's namespace and running under
//! the caller's ServiceAccount; so must the pod an acknowledgement is for, so that no
//! proxy can mark another ServiceAccount's pod in sync.
//!
//! What a client can make the operator hold is bounded. A request message is at most
//! [`MAX_REQUEST_BYTES`] (tonic refuses a longer one from its length prefix, before
//! reading it); every string the operator keeps is checked against a limit and refused
//! with INVALID_ARGUMENT naming the field and the limit: a pod name is a DNS subdomain
//! of at most 253 bytes, an authority at most
//! [`MAX_AUTHORITY`](super::authority::MAX_AUTHORITY) bytes, an acknowledged stream
//! name at most [`MAX_STREAM_NAME`] and a config version at most
//! [`MAX_CONFIG_VERSION`] bytes. Streams are capped per connection
//! ([`MAX_STREAMS_PER_CONNECTION`]) and, by [`Proxies::admit`], per pod, per caller
//! identity and in total (defaults and their reasons in [`super::proxies`]); a stream
//! beyond a cap gets RESOURCE_EXHAUSTED naming the cap and its value, before anything
//! is subscribed for it. Every refusal is counted by reason. Not bounded here: what
//! HTTP/2 buffers for a client that stops reading its streams (hyper's send buffer,
//! up to 400 KiB a stream, which tonic does not let us set).

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
};

use futures::Stream;
use tokio::sync::watch;
use tonic::{
    Request, Response, Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use weft_proxy_api::v1::{
    self as api, AckRequest, AckResponse, Authorization, Endpoint, InboundPolicyRequest,
    InboundPolicyUpdate, Network, ProtocolHint, Resolution, ResolveRequest,
    destination_server::Destination,
};

use super::{
    authority::parse_authority,
    index::Index,
    key::Key,
    outbound::Resolution as Resolved,
    policy::Policy,
    profile::Profile,
    proxies::{Admission, MAX_CONFIG_VERSION, Proxies},
};
use crate::{identity::SpiffeId, metrics::Metrics};

/// The most streams one proxy connection may hold open: a proxy holds at most about
/// 330 (see [`super::proxies`]), all on one connection.
pub const MAX_STREAMS_PER_CONNECTION: usize = 512;

/// The longest stream name an acknowledgement may carry, in bytes: `resolve:` and an
/// authority of at most [`MAX_AUTHORITY`](super::authority::MAX_AUTHORITY) bytes fit.
pub const MAX_STREAM_NAME: usize = 300;

/// The largest Destination request message, in bytes. The largest legitimate one is
/// an acknowledgement: a pod name (253), a stream name ([`MAX_STREAM_NAME`]) and a
/// version ([`MAX_CONFIG_VERSION`]) with their tags, under 700 bytes.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024;

/// The Destination service.
#[derive(Clone)]
pub struct DestinationService {
    index: Arc<Mutex<Index>>,
    proxies: Proxies,
    metrics: Arc<Metrics>,
    streams: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    /// Set when the server shuts down: every stream ends.
    stopping: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for DestinationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationService").finish_non_exhaustive()
    }
}

impl DestinationService {
    pub fn new(index: Arc<Mutex<Index>>, proxies: Proxies, metrics: Arc<Metrics>) -> Self {
        Self {
            index,
            proxies,
            metrics,
            streams: Arc::default(),
            stopping: Arc::new(watch::channel(false).0),
        }
    }

    /// Ends every open stream (and refuses new ones), for a shutdown.
    pub fn stop_streams(&self) {
        self.stopping.send_replace(true);
    }

    /// Counts a refusal for `reason`, and gives `status` back.
    pub(crate) fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.metrics.destination_refused(reason);
        status
    }

    /// The caller's mesh identity and certificate expiry, from its client certificate.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
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

    /// The caller's own pod `name`, checked against the index.
    fn own_pod(&self, caller: &Caller, name: &str, index: &Index) -> Result<Key, Status> {
        if name.is_empty() || name.len() > 253 || !crate::identity::spiffe::is_dns_subdomain(name) {
            return Err(self.refuse(
                "BadPod",
                Status::invalid_argument(format!(
                    "pod {name:.64?} is not a pod name (a DNS subdomain of at most 253 bytes)"
                )),
            ));
        }
        let key = Key::new(caller.id.namespace(), name);
        match index.identity_of(&key) {
            None => Err(self.refuse(
                "UnknownPod",
                Status::not_found(format!(
                    "no pod {}/{name} is known (yet): retry",
                    key.namespace
                )),
            )),
            Some(identity) if identity != caller.id.to_string() => Err(self.refuse(
                "PodIdentityMismatch",
                Status::permission_denied(format!(
                    "pod {}/{name} runs as {identity}, not as the caller {}",
                    key.namespace, caller.id
                )),
            )),
            Some(_) => Ok(key),
        }
    }

    /// The caller's own pod `name`, checked as the pod of every Destination call is:
    /// for the proxy API's other calls ([`crate::denials`]).
    pub(crate) fn callers_pod<T>(&self, request: &Request<T>, name: &str) -> Result<Key, Status> {
        let caller = self.caller(request)?;
        let index = self
            .index
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        self.own_pod(&caller, name, &index)
    }

    /// The index the service answers from.
    pub(crate) fn index(&self) -> &Arc<Mutex<Index>> {
        &self.index
    }

    /// The connected proxies and what they reported.
    pub(crate) fn proxies(&self) -> &Proxies {
        &self.proxies
    }

    /// Admits one more stream of `caller` for `pod` within the [`Proxies`] limits.
    fn admit(&self, caller: &Caller, pod: &Key) -> Result<Admission, Status> {
        self.proxies.admit(&caller.id, pod).map_err(|limit| {
            self.refuse(
                limit.reason(),
                Status::resource_exhausted(limit.to_string()),
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
                "TooManyStreamsPerConnection",
                Status::resource_exhausted(format!(
                    "the per-connection stream limit ({MAX_STREAMS_PER_CONNECTION}) is \
                     reached: this connection already holds that many"
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

/// What an open stream holds of the limits, given back when it ends.
struct Held {
    _slot: StreamSlot,
    _admission: Admission,
}

/// Who is calling.
struct Caller {
    id: SpiffeId,
    /// When its certificate expires, in Unix seconds.
    not_after: i64,
}

/// The URI SAN of a DER certificate, as a SPIFFE id, and its expiry.
fn spiffe_id_of(der: &[u8]) -> Option<Caller> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let id = san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => crate::identity::spiffe::parse(uri).ok(),
        _ => None,
    })?;
    Some(Caller {
        id,
        not_after: cert.validity().not_after.timestamp(),
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
        let ResolveRequest { authority, pod } = request.into_inner();
        let (pod, target) = {
            let index = self
                .index
                .lock()
                .map_err(|_| Status::internal("poisoned"))?;
            let target = parse_authority(&authority, index.cluster_domain()).map_err(|e| {
                self.refuse("BadAuthority", Status::invalid_argument(e.to_string()))
            })?;
            (self.own_pod(&caller, &pod, &index)?, target)
        };
        let admission = self.admit(&caller, &pod)?;
        let rx = self
            .index
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .subscribe(&target);
        tracing::debug!(caller = %caller.id, %authority, "resolve stream opened");
        let name = format!("resolve:{authority}");
        let held = Held {
            _slot: slot,
            _admission: admission,
        };
        Ok(Response::new(
            self.serve(rx, pod, name, caller, held, to_proto),
        ))
    }

    async fn inbound_policy(
        &self,
        request: Request<InboundPolicyRequest>,
    ) -> Result<Response<Self::InboundPolicyStream>, Status> {
        let caller = self.caller(&request)?;
        let slot = self.slot(&request)?;
        let InboundPolicyRequest { pod, port } = request.into_inner();
        let port = u16::try_from(port).map_err(|_| {
            self.refuse(
                "BadPort",
                Status::invalid_argument(format!("{port} is not a port (0 to 65535)")),
            )
        })?;
        let pod = {
            let index = self
                .index
                .lock()
                .map_err(|_| Status::internal("poisoned"))?;
            self.own_pod(&caller, &pod, &index)?
        };
        let admission = self.admit(&caller, &pod)?;
        let rx = self
            .index
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .subscribe_policy(&pod, port)
            .ok_or_else(|| Status::not_found("the pod is gone"))?;
        tracing::debug!(caller = %caller.id, port, "inbound policy stream opened");
        let name = format!("inbound:{port}");
        let held = Held {
            _slot: slot,
            _admission: admission,
        };
        Ok(Response::new(self.serve(
            rx,
            pod,
            name,
            caller,
            held,
            policy_to_proto,
        )))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let caller = self.caller(&request)?;
        let ack = request.into_inner();
        for (field, value, limit) in [
            ("stream", &ack.stream, MAX_STREAM_NAME),
            ("config_version", &ack.config_version, MAX_CONFIG_VERSION),
        ] {
            if value.len() > limit {
                return Err(self.refuse(
                    "BadAck",
                    Status::invalid_argument(format!(
                        "{field} is {} bytes long; it may be at most {limit} bytes",
                        value.len()
                    )),
                ));
            }
        }
        let pod = {
            let index = self
                .index
                .lock()
                .map_err(|_| Status::internal("poisoned"))?;
            self.own_pod(&caller, &ack.pod, &index)?
        };
        self.proxies
            .ack(&pod, &ack.stream, ack.config_version)
            .map_err(|e| {
                self.refuse("UnknownStream", Status::failed_precondition(e.to_string()))
            })?;
        Ok(Response::new(AckResponse {}))
    }
}

/// Something a stream carries: it has a version.
trait Versioned {
    fn version(&self) -> &str;
}

impl Versioned for Resolved {
    fn version(&self) -> &str {
        &self.version
    }
}

impl Versioned for Policy {
    fn version(&self) -> &str {
        &self.version
    }
}

impl DestinationService {
    /// Streams every value of `rx` to the caller, registered in [`Proxies`] as `name`
    /// for `pod` while it is open.
    fn serve<V, P>(
        &self,
        mut rx: watch::Receiver<Arc<V>>,
        pod: Key,
        name: String,
        caller: Caller,
        held: Held,
        to_proto: fn(&V) -> P,
    ) -> Pin<Box<dyn Stream<Item = Result<P, Status>> + Send>>
    where
        V: Versioned + Send + Sync + 'static,
        P: Send + 'static,
    {
        let current = rx.clone();
        let registered = self.proxies.open(
            pod,
            name,
            move || current.borrow().version().to_string(),
            Some(caller.not_after),
        );
        self.metrics.destination_stream(true);
        let metrics = self.metrics.clone();
        let mut stopping = self.stopping.subscribe();
        async_stream(move |tx| async move {
            let _held = held;
            let _registered = registered;
            loop {
                if *stopping.borrow_and_update() {
                    let _ = tx
                        .send(Err(Status::unavailable("the operator is shutting down")))
                        .await;
                    break;
                }
                let update = to_proto(&rx.borrow_and_update());
                if tx.send(Ok(update)).await.is_err() {
                    break;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    _ = stopping.changed() => {}
                    _ = tx.closed() => break,
                }
            }
            metrics.destination_stream(false);
        })
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

/// The policy as the proxy API carries it. Its networks are copied field by field as
/// `policy::authorization` copies them from the ServerAuthorization: the same shape,
/// three different types (the CRD's, the operator's domain type, the protobuf
/// message), converted at each edge so that the domain type depends on neither.
fn policy_to_proto(policy: &Policy) -> InboundPolicyUpdate {
    InboundPolicyUpdate {
        protocol: policy.protocol.clone(),
        authorizations: authorizations_to_proto(policy),
        config_version: policy.version.clone(),
        audit: policy.audit,
        ports: policy
            .ports
            .iter()
            .map(|(port, selected)| api::PortPolicy {
                port: u32::from(*port),
                protocol: selected.protocol.clone(),
                authorizations: authorizations_to_proto(selected),
                audit: selected.audit,
            })
            .collect(),
    }
}

fn authorizations_to_proto(policy: &Policy) -> Vec<Authorization> {
    policy
        .authorizations
        .iter()
        .map(|a| Authorization {
            name: a.name.clone(),
            identities: a.identities.clone(),
            unauthenticated: a.unauthenticated,
            networks: a
                .networks
                .iter()
                .map(|n| Network {
                    cidr: n.cidr.clone(),
                    except: n.except.clone(),
                })
                .collect(),
        })
        .collect()
}

fn to_proto(resolved: &Resolved) -> Resolution {
    Resolution {
        known: resolved.service.is_some() || !resolved.endpoints.is_empty(),
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
                weight: e.weight,
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
        profile: resolved.profile.as_ref().map(profile_to_proto),
    }
}

fn profile_to_proto(profile: &Profile) -> api::Profile {
    api::Profile {
        name: profile.name.clone(),
        routes: profile
            .routes
            .iter()
            .map(|r| api::Route {
                name: r.name.clone(),
                method: r.method.clone().unwrap_or_default(),
                path_regex: r.path_regex.clone(),
                timeout_ms: r.timeout_ms.unwrap_or(0),
                retryable: r.retryable,
                response_classes: r
                    .response_classes
                    .iter()
                    .map(|c| api::ResponseClass {
                        min: c.min.into(),
                        max: c.max.into(),
                        is_failure: c.is_failure,
                    })
                    .collect(),
            })
            .collect(),
        retry_budget: profile.retry_budget.as_ref().map(|b| api::RetryBudget {
            retry_ratio: f64::from(b.retry_ratio_ppm) / 1_000_000.0,
            min_retries_per_second: b.min_retries_per_second,
            ttl_ms: b.ttl_ms,
        }),
        backends: profile
            .backends
            .iter()
            .map(|b| api::Backend {
                service: format!("{}.{}", b.service.name, b.service.namespace),
                weight: b.weight,
            })
            .collect(),
    }
}
