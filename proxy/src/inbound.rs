//! The inbound side (4143): connections to the pod, from peer proxies and unmeshed
//! clients, on their way to the application.
//!
//! The first bytes are read ([`crate::detect`]): a TLS ClientHello naming this proxy
//! is a peer proxy's mTLS, terminated here, and the client's identity is recorded;
//! anything else (plaintext, or an application's own TLS) is passed through as it
//! came. The port's policy decides whether the client may connect ([`crate::authz`]);
//! then the connection goes to the application where the client sent it — the pod's
//! address and the original port, from the passthrough source the capture rules let
//! through ([`crate::transport::open`]) — so a listener the application bound to
//! loopback stays private to the pod; `WEFT_PROXY_INBOUND_TO_LOOPBACK` sends it over
//! loopback instead, for an application that listens nowhere else.
//! HTTP — announced by the client proxy with the ALPN [`ALPN_HTTP`], or detected from
//! an unmeshed client — is counted request by request with the client's identity:
//! HTTP/1 is relayed byte for byte and read only for where its messages end
//! ([`crate::http::relay`]), HTTP/2 is served by [`crate::http`]. A client the policy
//! refuses is answered 403 for each request. Anything else is relayed as bytes (an
//! opaque port always is).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::watch,
};
use weft_proxy_api::v1::{Endpoint, Resolution};

use crate::{
    authz::{self, InboundPolicy},
    detect::{self, Prefixed, Protocol},
    discovery::Discovery,
    http::{self, Destination, Pool, Version, server::serve_counted},
    metrics::{Direction, Metrics, TcpLabels},
    tcp::relay,
    tls::{self, ALPN_HTTP, Tls},
    transport,
};

/// How long the inbound side waits for a client's first bytes on a port that is not
/// opaque: a protocol where the server speaks first is passed through after this
/// (such ports belong among the opaque ones).
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The same on an opaque port. A peer proxy sends its ClientHello as soon as it is
/// connected, so a client silent this long is an application whose server speaks
/// first (MySQL, SMTP), passed through after this short wait.
pub const OPAQUE_DETECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Where inbound policies come from: discovery, or a test's stand-in.
pub trait Policies: Send + Sync + 'static {
    /// The policy of `port`, or `None` while none is known.
    fn inbound_policy(&self, port: u16) -> Option<InboundPolicy>;
}

impl Policies for Discovery {
    fn inbound_policy(&self, port: u16) -> Option<InboundPolicy> {
        Discovery::inbound_policy(self, port)
    }
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
    pub default_policy: Option<InboundPolicy>,
    /// Reach the application on loopback rather than on the address the client
    /// dialled (the pod's), which would expose the pod's loopback-only listeners.
    pub to_loopback: bool,
}

impl Default for InboundSettings {
    fn default() -> Self {
        Self {
            detect_timeout: DETECT_TIMEOUT,
            opaque_detect_timeout: OPAQUE_DETECT_TIMEOUT,
            opaque_ports: Vec::new(),
            default_policy: None,
            to_loopback: false,
        }
    }
}

/// The inbound side's context: what every inbound connection shares.
pub(crate) struct Inbound {
    policies: Option<Arc<dyn Policies>>,
    tls: Option<Tls>,
    settings: InboundSettings,
    /// Every connection's application, instead of the original port on loopback
    /// (tests, benches).
    fixed_target: Option<SocketAddr>,
    /// HTTP connections to the application, for reuse.
    pool: Arc<Pool>,
}

impl Inbound {
    pub(crate) fn new(
        policies: Option<Arc<dyn Policies>>,
        tls: Option<Tls>,
        settings: InboundSettings,
        fixed_target: Option<SocketAddr>,
    ) -> Self {
        Self {
            policies,
            tls,
            settings,
            fixed_target,
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
        let port = target.port();
        let app = match self.fixed_target {
            Some(app) => app,
            None if self.settings.to_loopback => SocketAddr::new(loopback_like(target.ip()), port),
            // The pod's own address: a listener the application bound to loopback
            // stays private to the pod.
            None => target,
        };
        let policy = self
            .policies
            .as_ref()
            .and_then(|p| p.inbound_policy(port))
            .or_else(|| self.settings.default_policy.clone());
        let opaque = self.settings.opaque_ports.contains(&port)
            || policy.as_ref().is_some_and(InboundPolicy::is_opaque);
        let timeout = if opaque {
            self.settings.opaque_detect_timeout
        } else {
            self.settings.detect_timeout
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
            Protocol::Tls { sni: Some(sni) } => tls::identity_of_sni(sni).map(|_| sni.as_str()),
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
            let Some(accepted) = transport::accept_mtls(tls, client, peer, metrics).await else {
                return;
            };
            let allowed =
                self.authorized(policy.as_ref(), Some(&accepted.client_id), peer, metrics);
            labels.tls = Some("true");
            labels.client_id = Some(accepted.client_id);
            let mut stream = accepted.stream;
            if accepted.alpn.as_deref() == Some(ALPN_HTTP) && !opaque {
                // HTTP, which the client speaks first: its first bytes say the version.
                let detected = detect::read_prefix(&mut stream, self.settings.detect_timeout).await;
                let Ok((prefix, Some(version))) = detected.map(|(p, d)| (p, Version::detected(&d)))
                else {
                    tracing::debug!(%peer, "not HTTP where the client proxy announced it");
                    metrics.detect_failed();
                    return;
                };
                let stream = Prefixed::new(prefix, stream);
                let app = App { addr: app, allowed };
                return self
                    .serve_app(stream, Some(version), app, labels, metrics, shutdown)
                    .await;
            }
            let app = App { addr: app, allowed };
            self.serve_app(stream, None, app, labels, metrics, shutdown)
                .await;
        } else {
            let allowed = self.authorized(policy.as_ref(), None, peer, metrics);
            labels.tls = Some("false");
            let version = Version::detected(&protocol).filter(|_| !opaque);
            let app = App { addr: app, allowed };
            self.serve_app(client, version, app, labels, metrics, shutdown)
                .await;
        }
    }

    /// Hands the client's connection `io` to the application: as HTTP in `version`
    /// (HTTP/1 relayed as it came when the client is allowed, else served request by
    /// request and every request refused), or without one as bytes, if the client is
    /// allowed. A peer proxy's mTLS and a plaintext client end the same way here.
    async fn serve_app<I>(
        &self,
        io: I,
        version: Option<Version>,
        app: App,
        labels: TcpLabels,
        metrics: &Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let App { addr, allowed } = app;
        if let Some(version) = version {
            if allowed && version == Version::Http1 {
                return http::relay::serve(io, addr, &labels, metrics, shutdown).await;
            }
            let destination = self.app_destination(addr, labels, !allowed, metrics);
            return serve_counted(io, version, destination, shutdown).await;
        }
        if !allowed {
            return;
        }
        let Some(server) = transport::connect(addr, Direction::Inbound, metrics).await else {
            return;
        };
        relay(io, server, &labels, metrics).await;
    }

    /// Where an inbound HTTP connection's requests go: the application at `app`,
    /// unless the client is `forbidden`.
    fn app_destination(
        &self,
        app: SocketAddr,
        labels: TcpLabels,
        forbidden: bool,
        metrics: &Arc<Metrics>,
    ) -> Destination {
        let resolution = Resolution {
            known: true,
            endpoints: vec![Endpoint {
                address: app.to_string(),
                weight: 1,
                ..Endpoint::default()
            }],
            ..Resolution::default()
        };
        Destination {
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
        policy: Option<&InboundPolicy>,
        identity: Option<&str>,
        peer: SocketAddr,
        metrics: &Metrics,
    ) -> bool {
        let Some(policy) = policy else {
            // No policy at all (no discovery and no default): nothing to enforce.
            return true;
        };
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

/// The application a connection goes to, and whether the port's policy lets the
/// client reach it.
#[derive(Clone, Copy, Debug)]
struct App {
    addr: SocketAddr,
    allowed: bool,
}

/// The loopback address of `ip`'s family.
fn loopback_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}
