//! The outbound side (4140): the pod's own connections, on their way out.
//!
//! The original destination is resolved through discovery (on first use; a connection
//! waits up to the resolve timeout, [`DEFAULT_RESOLVE_TIMEOUT`] unless the Mesh sets
//! another, for the first answer). For a destination the mesh knows, the first bytes
//! are read (unless its port is opaque): HTTP/1 and HTTP/2 are served by
//! [`crate::http`], which balances each request; anything else is balanced per
//! connection over the endpoints ([`crate::balance`]); a meshed endpoint is reached
//! over mTLS that checks the identity discovery gave, an unmeshed one in plaintext; a
//! known Service with no ready endpoint fails fast. A destination the operator says
//! the mesh does not know (`known = false`: outside the cluster, or an unmeshed pod's
//! address it has no Service for) is forwarded to the original address unchanged.
//!
//! **No silent plaintext.** A destination whose answer has not come within the resolve
//! timeout (the operator unreachable), or that cannot be followed at all (the proxy
//! already follows as many destinations as it may), could be a meshed pod: forwarding
//! it unchanged would send plaintext where mTLS is promised. Such a connection is
//! closed instead, counted in `outbound_resolve_failed_total{reason}` (`timeout`,
//! `limit`) and logged with its destination (at info at most once per
//! [`FAILURE_LOG_EVERY`] for a destination). An application sees a connection reset,
//! as it would from an unreachable server, and retries.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::watch,
};
use weft_proxy_api::v1::{ProtocolHint, Resolution};

use crate::{
    balance::{Balancer, Prepared, PreparedCache, label_endpoint},
    detect::{self, Prefixed},
    discovery::Discovery,
    http::{Destination, Pool, Version, server::serve_counted},
    metrics::{Direction, Metrics, TcpLabels},
    tcp::relay,
    tls::{ALPN_TCP, Tls},
    transport,
};

/// How long a connection to a destination seen for the first time waits for its
/// resolution before it is closed, unless the Mesh sets another
/// (`WEFT_PROXY_RESOLVE_TIMEOUT`).
pub const DEFAULT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A destination's failed resolutions are logged at info at most this often; every
/// one at debug.
pub const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// The most destinations whose endpoint loads and routes are kept.
const MAX_SERVICES: usize = 1024;

/// Where outbound destinations are resolved: discovery, or a test's stand-in.
pub trait Resolve: Send + Sync + 'static {
    /// The resolution of `authority` (`ip:port`), followed from now on, holding `None`
    /// until known; `None` when no more destinations can be followed.
    fn resolve(&self, authority: &str) -> Option<watch::Receiver<Option<Arc<Resolution>>>>;
}

impl Resolve for Discovery {
    fn resolve(&self, authority: &str) -> Option<watch::Receiver<Option<Arc<Resolution>>>> {
        Discovery::resolve(self, authority)
    }
}

/// Why an outbound destination could not be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveFailure {
    /// No answer within the resolve timeout.
    Timeout,
    /// The proxy already follows as many destinations as it may.
    Limit,
}

impl ResolveFailure {
    /// The `reason` label of `outbound_resolve_failed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Limit => "limit",
        }
    }
}

/// What resolving a destination came to.
enum Resolved {
    /// The operator's answer, and the receiver following it.
    Answer(Arc<Resolution>, watch::Receiver<Option<Arc<Resolution>>>),
    /// Nothing resolves destinations here (tests, benches): forwarded as they are.
    Unresolved,
    /// No answer: the connection fails.
    Failed(ResolveFailure),
}

/// The outbound side's context: what every outbound connection shares.
pub(crate) struct Outbound {
    resolver: Option<Arc<dyn Resolve>>,
    tls: Option<Tls>,
    /// How long to wait for the application's first bytes.
    detect_timeout: Duration,
    /// How long to wait for a new destination's first resolution.
    resolve_timeout: Duration,
    /// When each destination's failed resolution was last logged at info.
    failures: Mutex<HashMap<String, Instant>>,
    /// Endpoint loads per destination, and the resolution version they follow.
    services: Mutex<HashMap<String, Service>>,
    /// HTTP connections to endpoints, for reuse.
    pool: Arc<Pool>,
}

/// What the connections to one destination share.
#[derive(Debug)]
struct Service {
    /// The resolution version the balancer's endpoints are from.
    version: String,
    balancer: Arc<Balancer>,
    prepared: Arc<PreparedCache>,
}

impl Outbound {
    pub(crate) fn new(
        resolver: Option<Arc<dyn Resolve>>,
        tls: Option<Tls>,
        detect_timeout: Duration,
        resolve_timeout: Duration,
    ) -> Self {
        Self {
            resolver,
            tls,
            detect_timeout,
            resolve_timeout,
            failures: Mutex::default(),
            services: Mutex::default(),
            pool: Arc::default(),
        }
    }

    pub(crate) async fn forward(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        target: SocketAddr,
        metrics: &Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) {
        let authority = target.to_string();
        let (resolution, rx) = match self.resolution(&authority).await {
            Resolved::Answer(resolution, rx) if resolution.known => (resolution, rx),
            Resolved::Answer(..) | Resolved::Unresolved => {
                return self
                    .outbound_tcp(client, peer, &authority, target, None, metrics)
                    .await;
            }
            Resolved::Failed(failure) => {
                // Could be a meshed pod: never plaintext on a guess.
                metrics.resolve_failed(failure.as_str());
                self.log_failure(&authority, peer, failure);
                return;
            }
        };
        let opaque = resolution
            .endpoints
            .iter()
            .any(|e| e.protocol_hint == ProtocolHint::Opaque as i32);
        if opaque || resolution.endpoints.is_empty() {
            return self
                .outbound_tcp(client, peer, &authority, target, Some(&resolution), metrics)
                .await;
        }
        let (prefix, protocol) = match detect::read_prefix(&mut client, self.detect_timeout).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%peer, %error, "failed during protocol detection");
                metrics.detect_failed();
                return;
            }
        };
        let client = Prefixed::new(prefix, client);
        if let Some(version) = Version::detected(&protocol) {
            let mut labels = TcpLabels::new(Direction::Outbound);
            labels.authority = Some(authority.clone());
            let (balancer, prepared, _) = self.service(&authority, &resolution);
            let destination = Destination {
                balancer,
                prepared,
                labels,
                authz: None,
                resolution: rx,
                pool: self.pool.clone(),
                tls: self.tls.clone(),
                metrics: metrics.clone(),
                counters: Default::default(),
            };
            return serve_counted(client, version, destination, shutdown).await;
        }
        self.outbound_tcp(client, peer, &authority, target, Some(&resolution), metrics)
            .await;
    }

    /// Forwards an outbound connection as TCP: to an endpoint of `resolution` when
    /// the mesh knows the destination, else to `target` as it was.
    async fn outbound_tcp<C>(
        &self,
        client: C,
        peer: SocketAddr,
        authority: &str,
        target: SocketAddr,
        resolution: Option<&Arc<Resolution>>,
        metrics: &Metrics,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let mut labels = TcpLabels::new(Direction::Outbound);
        labels.authority = Some(authority.to_string());
        let (addr, identity, in_flight) = match resolution {
            None => (target, None, None),
            Some(resolution) => {
                let (balancer, _, prepared) = self.service(authority, resolution);
                let Some((_, addr, endpoint, in_flight)) = prepared.pick(&balancer) else {
                    tracing::debug!(%peer, %authority, "no ready endpoint: failing fast");
                    metrics.tcp_connect_failed(Direction::Outbound);
                    return;
                };
                let identity = label_endpoint(&mut labels, endpoint, self.tls.is_some());
                (addr, identity, Some(in_flight))
            }
        };
        if identity.is_none() {
            labels.tls = Some("false");
        }
        let started = Instant::now();
        let Some(server) = transport::connect(addr, Direction::Outbound, metrics).await else {
            return;
        };
        if let Some(in_flight) = &in_flight {
            in_flight.load().observe(started.elapsed());
        }
        match (identity, &self.tls) {
            (Some(identity), Some(tls)) => {
                let Some(server) =
                    transport::connect_mtls(tls, server, &identity, ALPN_TCP, metrics).await
                else {
                    return;
                };
                relay(client, server, &labels, metrics).await;
            }
            _ => relay(client, server, &labels, metrics).await,
        }
        drop(in_flight);
    }

    /// The resolution of `authority` and the receiver following it, waiting up to the
    /// resolve timeout for the first answer.
    async fn resolution(&self, authority: &str) -> Resolved {
        let Some(resolver) = &self.resolver else {
            return Resolved::Unresolved;
        };
        let Some(mut rx) = resolver.resolve(authority) else {
            return Resolved::Failed(ResolveFailure::Limit);
        };
        let resolution = {
            let wait = rx.wait_for(Option::is_some);
            match tokio::time::timeout(self.resolve_timeout, wait).await {
                Ok(Ok(resolution)) => resolution.clone(),
                // The sender is gone (the stream was dropped): nothing will come.
                Ok(Err(_)) | Err(_) => None,
            }
        };
        match resolution {
            Some(resolution) => Resolved::Answer(resolution, rx),
            None => Resolved::Failed(ResolveFailure::Timeout),
        }
    }

    /// Logs that `authority` could not be resolved for the client at `peer`: at info
    /// if it is the first time in [`FAILURE_LOG_EVERY`] for it, else at debug.
    fn log_failure(&self, authority: &str, peer: SocketAddr, failure: ResolveFailure) {
        let reason = failure.as_str();
        let now = Instant::now();
        let first = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let recent = |at: &Instant| now.saturating_duration_since(*at) < FAILURE_LOG_EVERY;
            if failures.get(authority).is_some_and(recent) {
                false
            } else {
                if failures.len() >= MAX_SERVICES {
                    failures.retain(|_, at| recent(at));
                }
                failures.len() < MAX_SERVICES && {
                    failures.insert(authority.to_string(), now);
                    true
                }
            }
        };
        let timeout_ms = self.resolve_timeout.as_millis();
        if first {
            tracing::info!(
                %peer, %authority, reason, timeout_ms,
                "closing a connection whose destination could not be resolved: it could be a \
                 meshed pod, so it is not sent in plaintext (further failures for this \
                 destination within {}s are logged at debug)",
                FAILURE_LOG_EVERY.as_secs()
            );
        } else {
            tracing::debug!(%peer, %authority, reason, timeout_ms, "destination not resolved");
        }
    }

    /// What the connections to `authority` share: the balancer, its loads kept to the
    /// current endpoints, and the resolution prepared for requests (with the routes'
    /// retry budget); and `resolution`, prepared.
    fn service(
        &self,
        authority: &str,
        resolution: &Arc<Resolution>,
    ) -> (Arc<Balancer>, Arc<PreparedCache>, Arc<Prepared>) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if services.len() >= MAX_SERVICES && !services.contains_key(authority) {
            services.clear();
        }
        let service = services
            .entry(authority.to_string())
            .or_insert_with(|| Service {
                version: resolution.config_version.clone(),
                balancer: Arc::default(),
                prepared: Arc::default(),
            });
        let prepared = service.prepared.get(resolution.clone());
        if service.version != resolution.config_version {
            service.balancer.retain(&prepared.addrs());
            service.version = resolution.config_version.clone();
        }
        (service.balancer.clone(), service.prepared.clone(), prepared)
    }
}
