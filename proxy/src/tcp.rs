//! The data plane's listeners: inbound (4143) and outbound (4140).
//!
//! `weft-proxy init` redirects the pod's captured connections to these ports; the
//! address the peer actually dialled comes back from `SO_ORIGINAL_DST`. The proxy's
//! own connections leave under its UID, which the capture rules exclude.
//!
//! **Outbound.** The original destination is resolved through discovery (on first use;
//! a connection waits up to [`RESOLVE_WAIT`] for the first answer). For a destination
//! the mesh knows, the first bytes are read (unless its port is opaque): HTTP/1 and
//! HTTP/2 are served by [`crate::http`], which balances each request; anything else is balanced
//! per connection over the endpoints ([`crate::balance`]); a
//! meshed endpoint is reached over mTLS that checks the identity discovery gave, an
//! unmeshed one in plaintext; a known Service with no ready endpoint fails fast. A
//! destination the mesh does not know is forwarded to the original address unchanged.
//!
//! **Inbound.** The first bytes are read ([`crate::detect`]): a TLS ClientHello naming
//! this proxy is a peer proxy's mTLS, terminated here, and the client's identity is
//! recorded; anything else (plaintext, or an application's own TLS) is passed through
//! as it came. The port's policy decides whether the client may connect; then the
//! connection goes to the application on the original port over loopback. HTTP —
//! announced by the client proxy with the ALPN [`ALPN_HTTP`], or detected from an
//! unmeshed client — is counted request by request with the client's identity:
//! HTTP/1 is relayed byte for byte and read only for where its messages end
//! ([`crate::http::inbound`]), HTTP/2 is served by [`crate::http`]. A client the
//! policy refuses is answered 403 for each request. Anything else is relayed as
//! bytes (an opaque port always is).
//!
//! Every connection is counted in the `tcp_*` family Linkerd's dashboards read, with
//! `tls` and the peer's identity. Half-closes propagate both ways.
//!
//! A connection made straight to a listener (not redirected) has itself as its
//! original destination; forwarding it would loop, so it is closed at once.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};
use weft_proxy_api::v1::{Endpoint, InboundPolicyUpdate, ProtocolHint, Resolution};

use crate::{
    authz,
    balance::Balancer,
    detect::{self, Prefixed, Protocol},
    discovery::Discovery,
    http::{Prepared, PreparedCache},
    metrics::{Direction, Metrics, TcpLabels},
    tls::{ALPN_HTTP, ALPN_TCP, Tls},
};

/// How long connecting to a destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection to a destination seen for the first time waits for its
/// resolution before it is forwarded as-is.
pub const RESOLVE_WAIT: Duration = Duration::from_secs(2);
/// How long the inbound side waits for a client's first bytes on a port that is not
/// opaque: a protocol where the server speaks first is passed through after this
/// (such ports belong among the opaque ones).
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The same on an opaque port. A peer proxy sends its ClientHello as soon as it is
/// connected, so a client silent this long is an application whose server speaks
/// first (MySQL, SMTP), passed through after this short wait.
pub const OPAQUE_DETECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a TLS handshake between proxies may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most destinations whose endpoint loads and routes are kept.
const MAX_SERVICES: usize = 1024;

/// Where outbound destinations are resolved: discovery, or a test's stand-in.
pub trait Resolve: Send + Sync + 'static {
    /// The resolution of `authority` (`ip:port`), followed from now on; `None` until
    /// known.
    fn resolve(&self, authority: &str) -> watch::Receiver<Option<Arc<Resolution>>>;
}

/// Where inbound policies come from: discovery, or a test's stand-in.
pub trait Policies: Send + Sync + 'static {
    /// The policy of `port`, or `None` while none is known.
    fn inbound_policy(&self, port: u16) -> Option<InboundPolicyUpdate>;
}

impl Resolve for Discovery {
    fn resolve(&self, authority: &str) -> watch::Receiver<Option<Arc<Resolution>>> {
        Discovery::resolve(self, authority)
    }
}

impl Policies for Discovery {
    fn inbound_policy(&self, port: u16) -> Option<InboundPolicyUpdate> {
        Discovery::inbound_policy(self, port)
    }
}

/// One listening side of the proxy.
pub struct Forwarder {
    listener: TcpListener,
    context: Arc<Context>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("direction", &self.context.direction)
            .field("local", &self.context.local)
            .finish_non_exhaustive()
    }
}

/// What every connection of a listener shares.
struct Context {
    direction: Direction,
    local: SocketAddr,
    resolver: Option<Arc<dyn Resolve>>,
    policies: Option<Arc<dyn Policies>>,
    tls: Option<Tls>,
    /// Every connection's destination, instead of `SO_ORIGINAL_DST` (tests, benches).
    fixed_target: Option<SocketAddr>,
    inbound: InboundSettings,
    /// Endpoint loads per destination, and the resolution version they follow.
    services: Mutex<HashMap<String, Service>>,
    /// HTTP connections to endpoints, for reuse.
    pool: Arc<crate::http::Pool>,
}

impl Forwarder {
    /// Binds the `direction` listener on `addr`.
    pub async fn bind(direction: Direction, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok(Self {
            listener,
            context: Arc::new(Context {
                direction,
                local,
                resolver: None,
                policies: None,
                tls: None,
                fixed_target: None,
                inbound: InboundSettings::default(),
                services: Mutex::default(),
                pool: Arc::default(),
            }),
        })
    }

    fn context(&mut self) -> &mut Context {
        Arc::get_mut(&mut self.context).expect("configured before it is spawned")
    }

    /// Outbound connections resolve their destination, and inbound ones follow their
    /// port's policy, through `discovery`.
    pub fn with_discovery(mut self, discovery: Option<Discovery>) -> Self {
        if let Some(discovery) = discovery {
            let context = self.context();
            match context.direction {
                Direction::Outbound => context.resolver = Some(Arc::new(discovery)),
                Direction::Inbound => context.policies = Some(Arc::new(discovery)),
            }
        }
        self
    }

    /// Outbound destinations are resolved by `resolver`.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.context().resolver = Some(resolver);
        self
    }

    /// Inbound policies come from `policies`.
    pub fn with_policies(mut self, policies: Arc<dyn Policies>) -> Self {
        self.context().policies = Some(policies);
        self
    }

    /// mTLS with peer proxies uses `tls`.
    pub fn with_tls(mut self, tls: Tls) -> Self {
        self.context().tls = Some(tls);
        self
    }

    /// Every connection goes to `target` instead of its original destination (for
    /// tests and benchmarks, which run without traffic capture).
    pub fn with_fixed_target(mut self, target: SocketAddr) -> Self {
        self.context().fixed_target = Some(target);
        self
    }

    /// How the inbound side detects, and what it enforces before the operator answers.
    pub fn with_inbound_settings(mut self, settings: InboundSettings) -> Self {
        self.context().inbound = settings;
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.context.local
    }

    /// Accepts and forwards until `shutdown` turns true; the task then waits for the
    /// connections in flight to finish (the caller bounds that with the grace period).
    pub fn spawn(
        self,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let in_flight = Arc::new(());
            loop {
                let accepted = tokio::select! {
                    accepted = self.listener.accept() => accepted,
                    _ = shutdown.wait_for(|stop| *stop) => break,
                };
                let (client, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off briefly.
                        let direction = self.context.direction;
                        tracing::warn!(%error, ?direction, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (metrics, guard) = (metrics.clone(), in_flight.clone());
                let (context, shutdown) = (self.context.clone(), shutdown.clone());
                tokio::spawn(async move {
                    context.forward(client, peer, &metrics, shutdown).await;
                    drop(guard);
                });
            }
            drop(self.listener);
            while Arc::strong_count(&in_flight) > 1 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

/// What the connections to one destination share.
#[derive(Debug)]
struct Service {
    /// The resolution version the balancer's endpoints are from.
    version: String,
    balancer: Arc<Balancer>,
    prepared: Arc<PreparedCache>,
}

/// The inbound side's own settings.
#[derive(Clone, Debug)]
pub struct InboundSettings {
    /// How long to wait for a silent client's first bytes, on a port that is not
    /// opaque and on one that is.
    pub detect_timeout: Duration,
    pub opaque_detect_timeout: Duration,
    /// Ports treated as opaque whatever the policy says (the Mesh's and the pod's).
    pub opaque_ports: Vec<u16>,
    /// The policy in force until the operator's arrives.
    pub default_policy: Option<InboundPolicyUpdate>,
    /// The node's IP: plaintext connections from it (kubelet probes) are allowed.
    pub host_ip: Option<IpAddr>,
}

impl Default for InboundSettings {
    fn default() -> Self {
        Self {
            detect_timeout: DETECT_TIMEOUT,
            opaque_detect_timeout: OPAQUE_DETECT_TIMEOUT,
            opaque_ports: Vec::new(),
            default_policy: None,
            host_ip: None,
        }
    }
}

impl Context {
    /// Forwards one accepted connection; HTTP served here is drained once `shutdown`
    /// turns true.
    async fn forward(
        &self,
        client: TcpStream,
        peer: SocketAddr,
        metrics: &Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) {
        let target = match self.fixed_target {
            Some(target) => target,
            None => match original_dst(&client) {
                Ok(target) if is_self(target, self.local) => {
                    tracing::debug!(%peer, %target, "not redirected: refusing a loop");
                    return;
                }
                Ok(target) => target,
                Err(error) => {
                    tracing::debug!(%peer, %error, "no original destination");
                    return;
                }
            },
        };
        let _ = client.set_nodelay(true);
        match self.direction {
            Direction::Outbound => {
                self.outbound(client, peer, target, metrics, shutdown).await;
            }
            Direction::Inbound => {
                self.inbound(client, peer, target, metrics, shutdown).await;
            }
        }
    }

    async fn outbound(
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
        let (prefix, protocol) =
            match detect::read_prefix(&mut client, self.inbound.detect_timeout).await {
                Ok(detected) => detected,
                Err(error) => {
                    tracing::debug!(%peer, %error, "failed during protocol detection");
                    metrics.detect_failed();
                    return;
                }
            };
        let client = Prefixed::new(prefix, client);
        if let Some(version) = http_version(&protocol) {
            let mut labels = TcpLabels::new(Direction::Outbound);
            labels.authority = Some(authority.clone());
            let (balancer, prepared, _) = self.service(&authority, &resolution);
            let destination = crate::http::Destination {
                balancer,
                prepared,
                labels,
                forbidden: false,
                resolution: rx,
                pool: self.pool.clone(),
                tls: self.tls.clone(),
                metrics: metrics.clone(),
                counters: Default::default(),
            };
            return serve_http(client, version, destination, shutdown).await;
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
        let Some(server) = connect(addr, Direction::Outbound, metrics).await else {
            return;
        };
        if let Some(in_flight) = &in_flight {
            in_flight.load().observe(started.elapsed());
        }
        match (identity, &self.tls) {
            (Some(identity), Some(tls)) => {
                let Some(server) = connect_mtls(tls, server, &identity, ALPN_TCP, metrics).await
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

    async fn inbound(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        target: SocketAddr,
        metrics: &Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) {
        let port = target.port();
        let app = match self.fixed_target {
            Some(app) => app,
            None => SocketAddr::new(loopback_like(target.ip()), port),
        };
        let policy = self
            .policies
            .as_ref()
            .and_then(|p| p.inbound_policy(port))
            .or_else(|| self.inbound.default_policy.clone());
        let opaque = self.inbound.opaque_ports.contains(&port)
            || policy.as_ref().is_some_and(|p| p.protocol == "opaque");
        let timeout = if opaque {
            self.inbound.opaque_detect_timeout
        } else {
            self.inbound.detect_timeout
        };
        let (prefix, protocol) = match detect::read_prefix(&mut client, timeout).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%peer, %error, "failed during protocol detection");
                metrics.detect_failed();
                return;
            }
        };
        let own_sni = self.tls.as_ref().and_then(Tls::own_sni);
        let mesh_sni = match &protocol {
            Protocol::Tls { sni: Some(sni) } => {
                crate::tls::identity_of_sni(sni).map(|_| sni.as_str())
            }
            _ => None,
        };
        let mtls = mesh_sni.is_some() && mesh_sni == own_sni.as_deref();
        if mesh_sni.is_some() && !mtls {
            // A peer proxy expecting another identity (a stale endpoint, an address
            // reused by another pod): refuse at once rather than hand the application
            // a handshake it cannot answer.
            tracing::debug!(%peer, sni = mesh_sni.unwrap_or_default(), "mTLS for another identity");
            metrics.tls_failed(Direction::Inbound);
            return;
        }
        let mut labels = TcpLabels::new(Direction::Inbound);
        let client = Prefixed::new(prefix, client);
        if let (true, Some(tls)) = (mtls, &self.tls) {
            let accepted = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(client)).await {
                Ok(Ok(accepted)) => accepted,
                Err(_) => {
                    tracing::debug!(%peer, "mTLS handshake timed out");
                    metrics.tls_failed(Direction::Inbound);
                    return;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "mTLS from a peer proxy failed");
                    metrics.tls_failed(Direction::Inbound);
                    return;
                }
            };
            let allowed =
                self.authorized(policy.as_ref(), Some(&accepted.client_id), peer, metrics);
            labels.tls = Some("true");
            labels.client_id = Some(accepted.client_id);
            let mut stream = accepted.stream;
            if accepted.alpn.as_deref() == Some(ALPN_HTTP) && !opaque {
                // HTTP, which the client speaks first: its first bytes say the version.
                let detected = detect::read_prefix(&mut stream, self.inbound.detect_timeout).await;
                let Ok((prefix, Some(version))) = detected.map(|(p, d)| (p, http_version(&d)))
                else {
                    tracing::debug!(%peer, "not HTTP where the client proxy announced it");
                    metrics.detect_failed();
                    return;
                };
                let stream = Prefixed::new(prefix, stream);
                if allowed && version == crate::http::Version::Http1 {
                    return crate::http::inbound::serve(stream, app, &labels, metrics, shutdown)
                        .await;
                }
                let destination = self.to_app(app, labels, !allowed, metrics);
                return serve_http(stream, version, destination, shutdown).await;
            }
            if !allowed {
                return;
            }
            let Some(server) = connect(app, Direction::Inbound, metrics).await else {
                return;
            };
            relay(stream, server, &labels, metrics).await;
        } else {
            let allowed = self.authorized(policy.as_ref(), None, peer, metrics);
            labels.tls = Some("false");
            if let (Some(version), false) = (http_version(&protocol), opaque) {
                if allowed && version == crate::http::Version::Http1 {
                    return crate::http::inbound::serve(client, app, &labels, metrics, shutdown)
                        .await;
                }
                let destination = self.to_app(app, labels, !allowed, metrics);
                return serve_http(client, version, destination, shutdown).await;
            }
            if !allowed {
                return;
            }
            let Some(server) = connect(app, Direction::Inbound, metrics).await else {
                return;
            };
            relay(client, server, &labels, metrics).await;
        }
    }

    /// Where an inbound HTTP connection's requests go: the application at `app`,
    /// unless the client is `forbidden`.
    fn to_app(
        &self,
        app: SocketAddr,
        labels: TcpLabels,
        forbidden: bool,
        metrics: &Arc<Metrics>,
    ) -> crate::http::Destination {
        let resolution = Resolution {
            known: true,
            endpoints: vec![Endpoint {
                address: app.to_string(),
                weight: 1,
                ..Endpoint::default()
            }],
            ..Resolution::default()
        };
        crate::http::Destination {
            labels,
            forbidden,
            prepared: Arc::default(),
            resolution: watch::channel(Some(Arc::new(resolution))).1,
            balancer: Arc::default(),
            pool: self.pool.clone(),
            tls: None,
            metrics: metrics.clone(),
            counters: Default::default(),
        }
    }

    /// Whether the port's policy lets the client in; counted either way.
    fn authorized(
        &self,
        policy: Option<&InboundPolicyUpdate>,
        identity: Option<&str>,
        peer: SocketAddr,
        metrics: &Metrics,
    ) -> bool {
        let Some(policy) = policy else {
            // No policy at all (no discovery and no default): nothing to enforce.
            return true;
        };
        if identity.is_none() && Some(peer.ip()) == self.inbound.host_ip {
            // The kubelet's probes come from the node, in plaintext.
            metrics.authz_allowed("default:kubelet");
            return true;
        }
        let client = authz::Client {
            identity,
            ip: peer.ip(),
        };
        match authz::authorize(policy, client) {
            Some(rule) => {
                metrics.authz_allowed(rule);
                true
            }
            None => {
                tracing::info!(%peer, identity = identity.unwrap_or("-"), "denied by the inbound policy");
                metrics.authz_denied();
                false
            }
        }
    }
}

/// Connects to `addr`, counting a failure.
pub(crate) async fn connect(
    addr: SocketAddr,
    direction: Direction,
    metrics: &Metrics,
) -> Option<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(server)) => {
            let _ = server.set_nodelay(true);
            Some(server)
        }
        Ok(Err(error)) => {
            tracing::debug!(%addr, %error, ?direction, "connect failed");
            metrics.tcp_connect_failed(direction);
            None
        }
        Err(_) => {
            tracing::debug!(%addr, ?direction, "connect timed out");
            metrics.tcp_connect_failed(direction);
            None
        }
    }
}

/// Labels a connection or request to `endpoint` (its workload, and whether the hop is
/// mTLS, given whether this proxy has TLS); returns the endpoint's identity.
pub(crate) fn label_endpoint(
    labels: &mut TcpLabels,
    endpoint: &Endpoint,
    have_tls: bool,
) -> Option<String> {
    let identity = Some(endpoint.identity.clone()).filter(|i| !i.is_empty());
    labels.tls = Some(match (&identity, have_tls) {
        (Some(_), true) => "true",
        (Some(_), false) => "no_identity",
        (None, _) => "false",
    });
    labels.server_id = identity.clone().filter(|_| have_tls);
    labels.dst_namespace = endpoint.labels.get("namespace").cloned();
    labels.dst_workload = endpoint.labels.get("workload").cloned();
    identity
}

/// Opens mTLS over `tcp` to a proxy that must be `identity`, within
/// [`HANDSHAKE_TIMEOUT`]; a failure is counted.
pub(crate) async fn connect_mtls(
    tls: &Tls,
    tcp: TcpStream,
    identity: &str,
    alpn: &[u8],
    metrics: &Metrics,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let handshake = tls.connect(tcp, identity, alpn);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => Some(stream),
        Err(_) => {
            tracing::debug!(%identity, "mTLS handshake timed out");
            metrics.tls_failed(Direction::Outbound);
            None
        }
        Ok(Err(error)) => {
            tracing::debug!(%identity, %error, "mTLS to the endpoint failed");
            metrics.tls_failed(Direction::Outbound);
            None
        }
    }
}

/// Copies both ways until both sides are done (a half-close passes through), counting
/// the connection and its bytes.
async fn relay<C, S>(mut client: C, mut server: S, labels: &TcpLabels, metrics: &Metrics)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let labels = metrics.tcp_opened(labels);
    let (from_client, from_server) =
        match tokio::io::copy_bidirectional(&mut client, &mut server).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::debug!(%error, "connection reset");
                (0, 0)
            }
        };
    let _ = client.shutdown().await;
    metrics.tcp_closed(&labels, from_client, from_server);
}

/// The HTTP version `protocol` was detected as, if it is HTTP.
fn http_version(protocol: &Protocol) -> Option<crate::http::Version> {
    match protocol {
        Protocol::Http1 => Some(crate::http::Version::Http1),
        Protocol::Http2 => Some(crate::http::Version::Http2),
        Protocol::Tls { .. } | Protocol::Opaque => None,
    }
}

/// Serves an HTTP connection request by request ([`crate::http`]), counted in the
/// `tcp_*` family like every connection.
async fn serve_http<I>(
    io: I,
    version: crate::http::Version,
    destination: crate::http::Destination,
    shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = destination.metrics.clone();
    let labels = metrics.tcp_opened(&destination.labels);
    let (io, counts) = Counted::new(io);
    crate::http::serve(io, version, Arc::new(destination), shutdown).await;
    let (read, written) = counts.get();
    metrics.tcp_closed(&labels, read, written);
}

/// The bytes read from and written to an IO that was handed away.
#[derive(Debug, Default)]
struct ByteCounts {
    read: AtomicU64,
    written: AtomicU64,
}

impl ByteCounts {
    fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

/// An IO that counts its bytes into a [`ByteCounts`] kept by the caller.
struct Counted<I> {
    io: I,
    counts: Arc<ByteCounts>,
}

impl<I> Counted<I> {
    fn new(io: I) -> (Self, Arc<ByteCounts>) {
        let counts = Arc::new(ByteCounts::default());
        (
            Self {
                io,
                counts: counts.clone(),
            },
            counts,
        )
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.counts.read.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The endpoints of `resolution` that parse: address, weight, and their index.
pub(crate) fn endpoint_addrs(resolution: &Resolution) -> Vec<(SocketAddr, u32, usize)> {
    resolution
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((e.address.parse().ok()?, e.weight, i)))
        .collect()
}

/// The loopback address of `ip`'s family.
fn loopback_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// Where a redirected connection was going, from `SO_ORIGINAL_DST`.
fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}

/// Whether `target` is the listener itself: the connection was not redirected.
fn is_self(target: SocketAddr, local: SocketAddr) -> bool {
    target.port() == local.port() && (local.ip().is_unspecified() || target.ip() == local.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_to_the_listener_itself_is_a_loop() {
        let any: SocketAddr = "0.0.0.0:4143".parse().unwrap();
        assert!(is_self("198.18.0.7:4143".parse().unwrap(), any));
        assert!(!is_self("198.18.0.7:8080".parse().unwrap(), any));
        let lo: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        assert!(is_self(lo, lo));
        assert!(!is_self("198.19.0.10:4140".parse().unwrap(), lo));
    }

    #[tokio::test]
    async fn an_unredirected_connection_is_closed_without_forwarding() {
        let metrics = Arc::new(Metrics::new());
        let forwarder = Forwarder::bind(Direction::Outbound, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = forwarder.local_addr();
        let (_stop, shutdown) = watch::channel(false);
        forwarder.spawn(metrics.clone(), shutdown);
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut conn, &mut buf),
        )
        .await
        .expect("the connection closed, not left open");
        assert!(
            matches!(&read, Ok(0))
                || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "closed, got {read:?}"
        );
        // Nothing was forwarded: no connection was opened or even tried, whatever
        // labels it would have carried.
        let text = metrics.encode();
        for family in ["tcp_open_total", "tcp_connect_errors_total"] {
            assert_eq!(samples_sum(&text, family), 0.0, "{family} in\n{text}");
        }
    }

    /// The sum of every sample of the metric family `family` in `text`, whatever its
    /// labels.
    fn samples_sum(text: &str, family: &str) -> f64 {
        text.lines()
            .filter(|line| {
                line.strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
