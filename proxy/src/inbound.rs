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
//! ([`crate::http::relay`]), HTTP/2 is served by [`crate::http`]. Anything else is
//! relayed as bytes (an opaque port always is).
//!
//! Every port is judged by its own policy ([`crate::authz::InboundPolicies`]). A
//! connection to a port whose policy is not known yet (the operator has not answered
//! since the proxy started) waits for it, up to [`POLICY_TIMEOUT`], and is then
//! refused like any other client ([`authz::Denial::PolicyUnknown`], counted with
//! `authorization="unknown"`) — never admitted by a policy that is not the port's.
//!
//! HTTP is judged request by request, by the policy in force when each request
//! arrives: a change of policy applies to the next request of a kept-alive
//! connection, both ways. A connection relayed as bytes is judged when it opens, and
//! closed when a change of policy no longer admits its client (counted in
//! `inbound_tcp_authz_revoked_total`, logged).
//!
//! A client the policy refuses is told why, if it speaks HTTP: each of its requests is
//! answered 403 with a `weft-authz` header naming the port, the policy and the client
//! (gRPC: `grpc-status: 7` and a `grpc-message`; see [`crate::http::client`]). Any
//! other refused connection is closed. Every connection is counted in
//! `inbound_tcp_authz_{allow,deny}_total`, and each HTTP request on it in
//! `inbound_http_authz_{allow,deny}_total` ([`crate::metrics`]), labelled with the
//! policy's `mode`. Each refusal is logged at debug, and at info at most once per
//! [`DENIAL_LOG_EVERY`] for a port and a client, so a client retrying in a loop does
//! not flood the log.
//!
//! A policy in audit mode refuses no one: a client it denies is let through, and
//! counted and logged exactly as its refusal would have been, as a would-be denial
//! (`..._deny_total{mode="audit"}`, "would be denied by the inbound policy (audit
//! mode)").

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::watch,
};
use weft_proxy_api::v1::{Endpoint, Resolution};

use self::gate::{Admission, DenialLog, wait_for_policy};
pub use self::gate::{DENIAL_LOG_EVERY, Gate};
use crate::{
    authz::{InboundPolicies, PortPolicy},
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
/// How long a connection to a port whose policy is not known yet waits for it before
/// it is refused.
pub const POLICY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where inbound policies come from: discovery, or a test's stand-in.
pub trait Policies: Send + Sync + 'static {
    /// The pod's inbound policies, followed: every change shows in the receiver.
    fn inbound_policies(&self) -> watch::Receiver<InboundPolicies>;
}

impl Policies for Discovery {
    fn inbound_policies(&self) -> watch::Receiver<InboundPolicies> {
        Discovery::inbound_policies(self)
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
    /// How long a connection to a port whose policy is not known waits for it.
    pub policy_timeout: Duration,
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
            policy_timeout: POLICY_TIMEOUT,
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
    denials: Arc<DenialLog>,
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
            denials: Arc::default(),
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
        let policies = match &self.policies {
            Some(policies) => policies.inbound_policies(),
            None => watch::channel(InboundPolicies::unenforced()).1,
        };
        let policy = wait_for_policy(policies.clone(), port, self.settings.policy_timeout).await;
        let opaque = self.settings.opaque_ports.contains(&port)
            || matches!(&policy, PortPolicy::Known(p) if p.is_opaque());
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
            let gate = Arc::new(Gate {
                policies,
                port,
                identity: Some(accepted.client_id.clone()),
                peer,
                metrics: metrics.clone(),
                denials: self.denials.clone(),
                last: Mutex::default(),
            });
            let admission = gate.admit(&policy);
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
                let app = App {
                    addr: app,
                    admission,
                    gate,
                };
                return self
                    .serve_app(stream, Some(version), app, labels, metrics, shutdown)
                    .await;
            }
            let app = App {
                addr: app,
                admission,
                gate,
            };
            self.serve_app(stream, None, app, labels, metrics, shutdown)
                .await;
        } else {
            let gate = Arc::new(Gate {
                policies,
                port,
                identity: None,
                peer,
                metrics: metrics.clone(),
                denials: self.denials.clone(),
                last: Mutex::default(),
            });
            let admission = gate.admit(&policy);
            labels.tls = Some("false");
            let version = Version::detected(&protocol).filter(|_| !opaque);
            let app = App {
                addr: app,
                admission,
                gate,
            };
            self.serve_app(client, version, app, labels, metrics, shutdown)
                .await;
        }
    }

    /// Hands the client's connection `io` to the application: as HTTP in `version`
    /// (HTTP/1 relayed as it came when the client is allowed, else served request by
    /// request; either way each request judged by the policy in force when it
    /// arrives), or without one as bytes, if the client is allowed (else closed), until
    /// a change of policy no longer allows it. A peer proxy's mTLS and a plaintext
    /// client end the same way here.
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
        let App {
            addr,
            admission,
            gate,
        } = app;
        if let Some(version) = version {
            if admission.refusal.is_none() && version == Version::Http1 {
                return http::relay::serve(io, addr, &labels, Some(gate), metrics, shutdown).await;
            }
            let destination = self.app_destination(addr, labels, gate, metrics);
            return serve_counted(io, version, destination, shutdown).await;
        }
        if admission.refusal.is_some() {
            // Closed: there is no protocol to say why in.
            return;
        }
        let Some(server) = transport::connect(addr, Direction::Inbound, metrics).await else {
            return;
        };
        tokio::select! {
            () = relay(io, server, &labels, metrics) => {}
            // Dropping the relay closes both connections.
            () = gate.revoked() => {}
        }
    }

    /// Where an inbound HTTP connection's requests go: the application at `app`, each
    /// request judged by `gate`.
    /// The client connection gets connections to the application of its own, closed
    /// with it: on one shared with other clients, a client that holds streams or
    /// never opens its flow-control window would stall the others' requests.
    fn app_destination(
        &self,
        app: SocketAddr,
        labels: TcpLabels,
        gate: Arc<Gate>,
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
            authz: Some(gate),
            prepared: Arc::default(),
            resolution: watch::channel(Some(Arc::new(resolution))).1,
            balancer: Arc::default(),
            pool: Arc::new(Pool::default()),
            tls: None,
            metrics: metrics.clone(),
            counters: Default::default(),
        }
    }
}

/// The application a connection goes to, what the port's policy said about the
/// client when it connected, and what judges it from then on.
#[derive(Debug)]
struct App {
    addr: SocketAddr,
    admission: Admission,
    gate: Arc<Gate>,
}

/// The loopback address of `ip`'s family.
fn loopback_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

mod gate;
#[cfg(test)]
mod tests;
