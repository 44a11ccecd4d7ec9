//! The outbound side (4140): the pod's own connections, on their way out.
//!
//! The original destination is resolved through discovery (on first use; a connection
//! waits up to [`RESOLVE_WAIT`] for the first answer). For a destination the mesh
//! knows, the first bytes are read (unless its port is opaque): HTTP/1 and HTTP/2 are
//! served by [`crate::http`], which balances each request; anything else is balanced
//! per connection over the endpoints ([`crate::balance`]); a meshed endpoint is
//! reached over mTLS that checks the identity discovery gave, an unmeshed one in
//! plaintext; a known Service with no ready endpoint fails fast. A destination the
//! mesh does not know is forwarded to the original address unchanged.

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
/// resolution before it is forwarded as-is.
pub const RESOLVE_WAIT: Duration = Duration::from_secs(2);
/// The most destinations whose endpoint loads and routes are kept.
const MAX_SERVICES: usize = 1024;

/// Where outbound destinations are resolved: discovery, or a test's stand-in.
pub trait Resolve: Send + Sync + 'static {
    /// The resolution of `authority` (`ip:port`), followed from now on; `None` until
    /// known.
    fn resolve(&self, authority: &str) -> watch::Receiver<Option<Arc<Resolution>>>;
}

impl Resolve for Discovery {
    fn resolve(&self, authority: &str) -> watch::Receiver<Option<Arc<Resolution>>> {
        Discovery::resolve(self, authority)
    }
}

/// The outbound side's context: what every outbound connection shares.
pub(crate) struct Outbound {
    resolver: Option<Arc<dyn Resolve>>,
    tls: Option<Tls>,
    /// How long to wait for the application's first bytes.
    detect_timeout: Duration,
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
    ) -> Self {
        Self {
            resolver,
            tls,
            detect_timeout,
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
        let followed = self.resolution(&authority).await;
        let Some((resolution, rx)) = followed.filter(|(r, _)| r.known) else {
            return self
                .outbound_tcp(client, peer, &authority, target, None, metrics)
                .await;
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
                refused: None,
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

    /// The resolution of `authority` and the receiver following it, waiting a little
    /// for the first answer.
    async fn resolution(
        &self,
        authority: &str,
    ) -> Option<(Arc<Resolution>, watch::Receiver<Option<Arc<Resolution>>>)> {
        let mut rx = self.resolver.as_ref()?.resolve(authority);
        let resolution = {
            let waited = tokio::time::timeout(RESOLVE_WAIT, rx.wait_for(Option::is_some)).await;
            match waited {
                Ok(Ok(resolution)) => resolution.clone()?,
                _ => return None,
            }
        };
        Some((resolution, rx))
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
