//! What the data plane's in-process tests share: a test CA, stand-ins for the proxy
//! API (resolutions and inbound policies as the operator streams them), and proxies
//! on real loopback sockets — a client proxy's outbound listener and server proxies'
//! inbound listeners.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use tokio::sync::watch;
use weft_proxy::{
    accept::Forwarder,
    authz::{InboundPolicies, InboundPolicy},
    identity::Credentials,
    inbound::{InboundSettings, Policies},
    metrics::{Direction, Metrics},
    outbound::Resolve,
    tls::Tls,
};
use weft_proxy_api::v1::{Authorization, Endpoint, InboundPolicyUpdate, ProtocolHint, Resolution};

pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
/// Where the client application connects: a loopback stand-in for a ClusterIP, so
/// nothing leaves the machine even when a test forwards it as-is.
pub const SERVICE: &str = "127.0.0.77:80";

/// A test CA: a self-signed anchor that signs workload certificates directly.
pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Weft test trust anchor");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Fresh credentials (a new key and certificate) for `identity`.
    pub fn credentials(&self, identity: &str) -> Credentials {
        let (cert, key) = self.issue(identity, None);
        Credentials::from_pem(&cert, &key, &self.pem, i64::MAX).unwrap()
    }

    /// A new key and a certificate for `identity` (and the DNS name `dns`, for a
    /// TLS stack that checks names rather than SPIFFE ids), in PEM.
    pub fn issue(&self, identity: &str, dns: Option<&str>) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        // A subject of its own: one equal to the issuer's reads as self-signed.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().unwrap())];
        if let Some(dns) = dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.to_string().try_into().unwrap()));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Resolutions by authority, changed by the test as the operator would.
#[derive(Default)]
pub struct FakeResolver(pub Mutex<HashMap<String, watch::Sender<Option<Arc<Resolution>>>>>);

impl FakeResolver {
    pub fn set(&self, authority: &str, resolution: Resolution) {
        let mut map = self.0.lock().unwrap();
        let tx = map
            .entry(authority.to_string())
            .or_insert_with(|| watch::channel(None).0);
        tx.send_replace(Some(Arc::new(resolution)));
    }
}

impl Resolve for FakeResolver {
    fn resolve(&self, authority: &str) -> Option<watch::Receiver<Option<Arc<Resolution>>>> {
        let mut map = self.0.lock().unwrap();
        let rx = map
            .entry(authority.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        Some(rx)
    }
}

/// One policy for every port; nothing enforced until one is set.
pub struct FakePolicies(pub watch::Sender<InboundPolicies>);

impl Default for FakePolicies {
    fn default() -> Self {
        Self(watch::channel(InboundPolicies::unenforced()).0)
    }
}

impl FakePolicies {
    /// `policy` on every port from now on.
    pub fn set(&self, policy: InboundPolicyUpdate) {
        self.0
            .send_replace(InboundPolicies::every_port(InboundPolicy::from(policy)));
    }
}

impl Policies for FakePolicies {
    fn inbound_policies(&self) -> watch::Receiver<InboundPolicies> {
        self.0.subscribe()
    }
}

pub fn endpoint(addr: SocketAddr, identity: &str) -> Endpoint {
    Endpoint {
        address: addr.to_string(),
        weight: 1,
        identity: identity.to_string(),
        protocol_hint: if identity.is_empty() {
            ProtocolHint::Unknown
        } else {
            ProtocolHint::Meshed
        } as i32,
        labels: HashMap::from([
            ("namespace".to_string(), "shop".to_string()),
            ("workload".to_string(), "deployment/web".to_string()),
        ]),
    }
}

pub fn known(endpoints: Vec<Endpoint>, version: &str) -> Resolution {
    Resolution {
        known: true,
        service: "web.shop".into(),
        endpoints,
        config_version: version.into(),
        profile: None,
    }
}

pub fn allow(identities: &[&str], unauthenticated: bool) -> InboundPolicyUpdate {
    InboundPolicyUpdate {
        protocol: "detect".into(),
        authorizations: vec![Authorization {
            name: "serverauthorization/test".into(),
            identities: identities.iter().map(|s| s.to_string()).collect(),
            unauthenticated,
            networks: Vec::new(),
        }],
        config_version: "v".into(),
        ..InboundPolicyUpdate::default()
    }
}

/// A server-side proxy's inbound listener in front of `app`.
pub struct Server {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub credentials: watch::Sender<Option<Credentials>>,
    pub policies: Arc<FakePolicies>,
    pub _stop: watch::Sender<bool>,
}

pub async fn server(ca: &Ca, identity: &str, app: SocketAddr, settings: InboundSettings) -> Server {
    let (credentials, rx) = watch::channel(Some(ca.credentials(identity)));
    let policies = Arc::new(FakePolicies::default());
    let metrics = Arc::new(Metrics::new());
    let (stop, shutdown) = watch::channel(false);
    let forwarder = Forwarder::bind(Direction::Inbound, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .with_fixed_target(app)
        .with_tls(Tls::new(rx))
        .with_policies(policies.clone())
        .with_inbound_settings(settings);
    let addr = forwarder.local_addr();
    forwarder.spawn(metrics.clone(), shutdown);
    Server {
        addr,
        metrics,
        credentials,
        policies,
        _stop: stop,
    }
}

/// A client-side proxy's outbound listener; its application connects to [`SERVICE`].
pub struct Client {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub credentials: watch::Sender<Option<Credentials>>,
    pub resolver: Arc<FakeResolver>,
    /// Starts the proxy's graceful shutdown.
    pub stop: watch::Sender<bool>,
    /// The listener's task: it ends once shut down and drained.
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn client(ca: &Ca) -> Client {
    let (credentials, rx) = watch::channel(Some(ca.credentials(CLIENT_ID)));
    let resolver = Arc::new(FakeResolver::default());
    let metrics = Arc::new(Metrics::new());
    let (stop, shutdown) = watch::channel(false);
    let forwarder = Forwarder::bind(Direction::Outbound, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .with_fixed_target(SERVICE.parse().unwrap())
        .with_tls(Tls::new(rx))
        .with_resolver(resolver.clone());
    let addr = forwarder.local_addr();
    let task = forwarder.spawn(metrics.clone(), shutdown);
    Client {
        addr,
        metrics,
        credentials,
        resolver,
        stop,
        task,
    }
}

/// A client proxy whose application connects to [`SERVICE`], resolved to a server proxy
/// (identity [`SERVER_ID`]) in front of `app`.
pub async fn meshed_pair(ca: &Ca, app: SocketAddr, settings: InboundSettings) -> (Server, Client) {
    let server = server(ca, SERVER_ID, app, settings).await;
    let client = client(ca).await;
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(server.addr, SERVER_ID)], "1"));
    (server, client)
}

/// A server proxy in front of each of `apps`, and a client proxy resolving
/// [`SERVICE`] to all of them; the endpoints it was given.
pub async fn fleet(ca: &Ca, apps: Vec<SocketAddr>) -> (Vec<Server>, Client, Vec<Endpoint>) {
    let mut servers = Vec::new();
    for app in apps {
        servers.push(server(ca, SERVER_ID, app, InboundSettings::default()).await);
    }
    let client = client(ca).await;
    let all: Vec<Endpoint> = servers
        .iter()
        .map(|s| endpoint(s.addr, SERVER_ID))
        .collect();
    client.resolver.set(SERVICE, known(all.clone(), "1"));
    (servers, client, all)
}

/// The sum of the samples of `name` with all of `labels`.
pub fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(name)
                && labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether a sample of `name` with all of `labels` is not zero.
pub fn has_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    text.lines().any(|line| {
        line.starts_with(name)
            && labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            && !line.ends_with(" 0")
    })
}

/// How long a test waits for something that should happen at once on loopback
/// before it fails, naming what it waited for.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// How a connection ended, as its peer ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A close (FIN): the read saw the end.
    Closed,
    /// A reset (RST): the read failed with a reset or an abort.
    Reset,
}

/// Reads `conn` until its peer ends it: what came before, and how it ended. A peer
/// that neither ends it nor sends within [`PATIENCE`] fails the test, so a hang
/// never reads as a refusal.
pub async fn read_to_end_of(conn: &mut tokio::net::TcpStream) -> (Vec<u8>, Ending) {
    use std::io::ErrorKind;
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the connection was neither answered nor ended within {PATIENCE:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                )
            });
        match read {
            Ok(0) => return (got, Ending::Closed),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return (got, Ending::Reset);
            }
            Err(e) => panic!("reading the connection failed: {e}"),
        }
    }
}

/// Waits until `check` holds, polling; fails the test with `what` once [`PATIENCE`]
/// has passed without it.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A server that presents the certificate of `identity` (one the CA really issued)
/// whatever name the client asks for, then relays to `app`: a pod that took over
/// another's address, say. Only the client's own check of the identity can refuse it.
pub struct Impostor {
    pub addr: SocketAddr,
    /// Handshakes begun, and those the client completed.
    pub begun: Arc<std::sync::atomic::AtomicUsize>,
    pub completed: Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn impostor(ca: &Ca, identity: &str, app: SocketAddr) -> Impostor {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let tls = Tls::new(watch::channel(Some(ca.credentials(identity))).1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (begun, completed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counts = (begun.clone(), completed.clone());
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (tls, (begun, completed)) = (tls.clone(), counts.clone());
            tokio::spawn(async move {
                begun.fetch_add(1, Ordering::SeqCst);
                let Ok(accepted) = tls.accept(conn).await else {
                    return;
                };
                completed.fetch_add(1, Ordering::SeqCst);
                let Ok(mut server) = tokio::net::TcpStream::connect(app).await else {
                    return;
                };
                let mut stream = accepted.stream;
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut server).await;
            });
        }
    });
    Impostor {
        addr,
        begun,
        completed,
    }
}
