//! The data plane in-process, over real sockets: a client proxy's outbound listener and
//! a server proxy's inbound listener, with certificates from a test CA and an
//! in-process stand-in for the proxy API (resolutions and inbound policies as the
//! operator streams them). Covers mTLS with identities checked both ways, policy,
//! balancing, endpoint changes, half-close, server-speaks-first TCP and certificate
//! rotation under live traffic.

// Helpers outside `#[test]` functions too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use weft_proxy::{
    identity::Credentials,
    metrics::{Direction, Metrics},
    tcp::{Forwarder, InboundSettings, Policies, Resolve},
    tls::Tls,
};
use weft_proxy_api::v1::{Authorization, Endpoint, InboundPolicyUpdate, ProtocolHint, Resolution};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
/// Where the client application connects: a loopback stand-in for a ClusterIP, so
/// nothing leaves the machine even when a test forwards it as-is.
const SERVICE: &str = "127.0.0.77:80";

/// A test CA: a self-signed anchor that signs workload certificates directly.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
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
    fn credentials(&self, identity: &str) -> Credentials {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Credentials::from_pem(&cert.pem(), &key.serialize_pem(), &self.pem, i64::MAX).unwrap()
    }
}

/// Resolutions by authority, changed by the test as the operator would.
#[derive(Default)]
struct FakeResolver(Mutex<HashMap<String, watch::Sender<Option<Arc<Resolution>>>>>);

impl FakeResolver {
    fn set(&self, authority: &str, resolution: Resolution) {
        let mut map = self.0.lock().unwrap();
        let tx = map
            .entry(authority.to_string())
            .or_insert_with(|| watch::channel(None).0);
        tx.send_replace(Some(Arc::new(resolution)));
    }
}

impl Resolve for FakeResolver {
    fn resolve(&self, authority: &str) -> watch::Receiver<Option<Arc<Resolution>>> {
        let mut map = self.0.lock().unwrap();
        map.entry(authority.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }
}

/// One policy for every port.
#[derive(Default)]
struct FakePolicies(Mutex<Option<InboundPolicyUpdate>>);

impl Policies for FakePolicies {
    fn inbound_policy(&self, _port: u16) -> Option<InboundPolicyUpdate> {
        self.0.lock().unwrap().clone()
    }
}

fn endpoint(addr: SocketAddr, identity: &str) -> Endpoint {
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

fn known(endpoints: Vec<Endpoint>, version: &str) -> Resolution {
    Resolution {
        known: true,
        service: "web.shop".into(),
        endpoints,
        config_version: version.into(),
        profile: None,
    }
}

fn allow(identities: &[&str], unauthenticated: bool) -> InboundPolicyUpdate {
    InboundPolicyUpdate {
        protocol: "detect".into(),
        authorizations: vec![Authorization {
            name: "serverauthorization/test".into(),
            identities: identities.iter().map(|s| s.to_string()).collect(),
            unauthenticated,
            networks: Vec::new(),
        }],
        config_version: "v".into(),
    }
}

/// An application: answers each connection with `<name>:` and everything it read
/// until the client's half-close. With `greeting`, it speaks first.
async fn app(name: &'static str, greeting: Option<&'static str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Some(greeting) = greeting {
                    let _ = conn.write_all(greeting.as_bytes()).await;
                }
                let mut got = Vec::new();
                if conn.read_to_end(&mut got).await.is_ok() {
                    let _ = conn.write_all(format!("{name}:").as_bytes()).await;
                    let _ = conn.write_all(&got).await;
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

/// A server-side proxy's inbound listener in front of `app`.
struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    credentials: watch::Sender<Option<Credentials>>,
    policies: Arc<FakePolicies>,
    _stop: watch::Sender<bool>,
}

async fn server(ca: &Ca, identity: &str, app: SocketAddr, settings: InboundSettings) -> Server {
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
struct Client {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    credentials: watch::Sender<Option<Credentials>>,
    resolver: Arc<FakeResolver>,
    _stop: watch::Sender<bool>,
}

async fn client(ca: &Ca) -> Client {
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
    forwarder.spawn(metrics.clone(), shutdown);
    Client {
        addr,
        metrics,
        credentials,
        resolver,
        _stop: stop,
    }
}

/// A client proxy whose application connects to [`SERVICE`], resolved to a server proxy
/// (identity [`SERVER_ID`]) in front of `app`.
async fn meshed_pair(ca: &Ca, app: SocketAddr, settings: InboundSettings) -> (Server, Client) {
    let server = server(ca, SERVER_ID, app, settings).await;
    let client = client(ca).await;
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(server.addr, SERVER_ID)], "1"));
    (server, client)
}

/// A server proxy in front of each of `apps`, and a client proxy resolving
/// [`SERVICE`] to all of them; the endpoints it was given.
async fn fleet(ca: &Ca, apps: Vec<SocketAddr>) -> (Vec<Server>, Client, Vec<Endpoint>) {
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

/// The first flight of a TLS 1.3 client (its ClientHello) for `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut hello = Vec::new();
    rustls::ClientConnection::new(Arc::new(config), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    hello
}

/// Sends `message` through `proxy`, half-closes, and reads the whole answer.
async fn exchange(proxy: SocketAddr, message: &str) -> String {
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(message.as_bytes()).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut answer)).await;
    answer
}

/// Sends the last bytes of an open connection, half-closes, and reads the answer.
async fn finish(mut conn: TcpStream, last: &[u8]) -> String {
    conn.write_all(last).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    answer
}

fn has_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    text.lines().any(|line| {
        line.starts_with(name)
            && labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            && !line.ends_with(" 0")
    })
}

#[tokio::test]
async fn meshed_pods_talk_over_mtls_and_each_side_knows_the_other() {
    let ca = Ca::new();
    let app = app("web", None).await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;

    // A large body, half-closed: every byte arrives, and the answer after it.
    let body = "x".repeat(1 << 20);
    let answer = exchange(client.addr, &body).await;
    assert_eq!(answer.len(), body.len() + 4);
    assert!(answer.starts_with("web:"));

    let text = server.metrics.encode();
    assert!(
        has_sample(
            &text,
            "tcp_open_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", CLIENT_ID)
            ]
        ),
        "{text}"
    );
    let text = client.metrics.encode();
    assert!(
        has_sample(
            &text,
            "tcp_open_total",
            &[
                ("direction", "outbound"),
                ("tls", "true"),
                ("server_id", SERVER_ID),
                ("dst_workload", "deployment/web")
            ]
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_refused() {
    let ca = Ca::new();
    let app = app("web", None).await;
    // The server's certificate is for `other`; discovery said `web`.
    let server = server(
        &ca,
        "spiffe://cluster.local/ns/shop/sa/other",
        app,
        InboundSettings::default(),
    )
    .await;
    let client = client(&ca).await;
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(server.addr, SERVER_ID)], "1"));
    assert_eq!(exchange(client.addr, "hello").await, "");
    let text = client.metrics.encode();
    assert!(
        has_sample(
            &text,
            "tls_handshake_errors_total",
            &[("direction", "outbound")]
        ),
        "{text}"
    );

    // A certificate from another CA is refused too.
    let other_ca = Ca::new();
    server
        .credentials
        .send_replace(Some(other_ca.credentials(SERVER_ID)));
    assert_eq!(exchange(client.addr, "hello").await, "");
}

#[tokio::test]
async fn the_inbound_policy_decides_who_gets_in() {
    let ca = Ca::new();
    let app = app("web", None).await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;

    *server.policies.0.lock().unwrap() =
        Some(allow(&["spiffe://cluster.local/ns/shop/sa/admin"], false));
    assert_eq!(
        exchange(client.addr, "hello").await,
        "",
        "not an allowed identity"
    );
    assert!(has_sample(
        &server.metrics.encode(),
        "inbound_tcp_authz_deny_total",
        &[]
    ));

    *server.policies.0.lock().unwrap() = Some(allow(&[CLIENT_ID], false));
    assert_eq!(exchange(client.addr, "hello").await, "web:hello");

    // Plaintext straight to the inbound side: unauthenticated, so refused...
    assert_eq!(exchange(server.addr, "hello").await, "");
    // ...until unauthenticated clients are allowed.
    *server.policies.0.lock().unwrap() = Some(allow(&[], true));
    assert_eq!(exchange(server.addr, "hello").await, "web:hello");
    assert!(has_sample(
        &server.metrics.encode(),
        "tcp_open_total",
        &[("direction", "inbound"), ("tls", "false")]
    ));
}

#[tokio::test]
async fn unmeshed_endpoints_get_plaintext_and_unknown_destinations_go_as_they_were() {
    let ca = Ca::new();
    let plain = app("plain", None).await;
    let client = client(&ca).await;
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(plain, "")], "1"));
    assert_eq!(exchange(client.addr, "hi").await, "plain:hi");
    assert!(has_sample(
        &client.metrics.encode(),
        "tcp_open_total",
        &[("tls", "false")]
    ));

    // A destination the mesh does not know is forwarded to its original address: a
    // client proxy whose fixed original destination is the app itself.
    let (_tx, rx) = watch::channel(Some(ca.credentials(CLIENT_ID)));
    let resolver = Arc::new(FakeResolver::default());
    resolver.set(&plain.to_string(), Resolution::default());
    let forwarder = Forwarder::bind(Direction::Outbound, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .with_fixed_target(plain)
        .with_tls(Tls::new(rx))
        .with_resolver(resolver);
    let addr = forwarder.local_addr();
    let (_stop, shutdown) = watch::channel(false);
    forwarder.spawn(Arc::new(Metrics::new()), shutdown);
    assert_eq!(exchange(addr, "hi").await, "plain:hi");

    // A known Service without endpoints fails fast.
    client.resolver.set(SERVICE, known(vec![], "2"));
    let started = std::time::Instant::now();
    assert_eq!(exchange(client.addr, "hi").await, "");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connections_spread_over_endpoints_and_follow_their_removal() {
    let ca = Ca::new();
    let mut apps = Vec::new();
    for name in ["a", "b", "c"] {
        apps.push(app(name, None).await);
    }
    let (_servers, client, all) = fleet(&ca, apps).await;
    let mut seen = HashMap::new();
    for _ in 0..30 {
        let answer = exchange(client.addr, "x").await;
        *seen.entry(answer).or_insert(0) += 1;
    }
    // Sequential connections on loopback: the fastest endpoints take most of them.
    assert!(seen.len() >= 2, "spread over endpoints: {seen:?}");

    // A long connection to one endpoint, then that endpoint leaves the resolution:
    // the open connection carries on, new ones avoid it.
    client
        .resolver
        .set(SERVICE, known(vec![all[0].clone()], "2"));
    let mut long = TcpStream::connect(client.addr).await.unwrap();
    long.write_all(b"before").await.unwrap();
    for _ in 0..100 {
        if has_sample(&client.metrics.encode(), "tcp_open_connections", &[]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.resolver.set(SERVICE, known(all[1..].to_vec(), "3"));
    for _ in 0..10 {
        assert!(!exchange(client.addr, "x").await.starts_with("a:"));
    }
    assert_eq!(finish(long, b"-after").await, "a:before-after");
}

#[tokio::test]
async fn a_server_that_speaks_first_is_reached_meshed_or_not() {
    let ca = Ca::new();
    let app = app("db", Some("220 ready\n")).await;
    let settings = InboundSettings {
        opaque_ports: vec![app.port()],
        opaque_detect_timeout: Duration::from_millis(200),
        ..InboundSettings::default()
    };
    let (server, client) = meshed_pair(&ca, app, settings).await;
    // The operator marks an opaque port's endpoints so; the client proxy then skips
    // detection (still mTLS to the meshed endpoint).
    let mut opaque = endpoint(server.addr, SERVER_ID);
    opaque.protocol_hint = ProtocolHint::Opaque as i32;
    client.resolver.set(SERVICE, known(vec![opaque], "2"));
    for proxy in [client.addr, server.addr] {
        // The greeting arrives before the client sends anything.
        let mut conn = TcpStream::connect(proxy).await.unwrap();
        let mut greeting = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut greeting))
            .await
            .expect("the greeting, without the client speaking")
            .unwrap();
        assert_eq!(&greeting, b"220 ready\n");
        conn.write_all(b"QUIT").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut rest = String::new();
        conn.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "db:QUIT");
    }
}

#[tokio::test]
async fn certificates_rotate_under_live_traffic() {
    let ca = Ca::new();
    let app = app("web", None).await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    let mut live = TcpStream::connect(client.addr).await.unwrap();
    live.write_all(b"one").await.unwrap();

    // Both sides renew, and the trust bundle moves to a new anchor.
    let new_ca = Ca::new();
    server
        .credentials
        .send_replace(Some(new_ca.credentials(SERVER_ID)));
    client
        .credentials
        .send_replace(Some(new_ca.credentials(CLIENT_ID)));
    assert_eq!(
        exchange(client.addr, "new").await,
        "web:new",
        "new handshakes use the new certificates"
    );

    assert_eq!(
        finish(live, b"-two").await,
        "web:one-two",
        "the open connection carried on"
    );
}

#[tokio::test]
async fn garbage_and_foreign_tls_cost_one_connection_only() {
    let ca = Ca::new();
    let app = app("web", None).await;
    let server = server(&ca, SERVER_ID, app, InboundSettings::default()).await;
    *server.policies.0.lock().unwrap() = Some(allow(&[], true));

    // A ClientHello naming this proxy but with garbage after it.
    let hello = client_hello(&weft_proxy::tls::sni_of(SERVER_ID).unwrap());
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(&hello).await.unwrap();
    conn.write_all(b"\x17\x03\x03\x00\x05garbage")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut sink)).await;
    assert!(has_sample(
        &server.metrics.encode(),
        "tls_handshake_errors_total",
        &[("direction", "inbound")]
    ));

    // An application's own TLS (another SNI) and binary noise pass through untouched.
    let foreign = client_hello("example.test");
    let answer = exchange(server.addr, &String::from_utf8_lossy(&foreign)).await;
    assert!(answer.starts_with("web:"), "passed through: {answer:?}");
    assert_eq!(
        exchange(server.addr, "\u{0}\u{1}noise").await,
        "web:\u{0}\u{1}noise"
    );
}

/// An HTTP/1 application: answers `<name>:<bytes of the request body>`, after
/// `delay`.
async fn http_app(name: &'static str, delay: Duration) -> SocketAddr {
    use http_body_util::BodyExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(
                move |request: http::Request<hyper::body::Incoming>| async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    tokio::time::sleep(delay).await;
                    let answer = format!("{name}:{}", body.len());
                    Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                        hyper::body::Bytes::from(answer),
                    )))
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), service),
            );
        }
    });
    addr
}

/// An HTTP/1 client on one kept-alive connection through `proxy`.
async fn http_client(
    proxy: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>> {
    let conn = TcpStream::connect(proxy).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends `body` with `method` on `sender`; the status and the answer.
async fn request(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
    method: &str,
    body: Vec<u8>,
) -> (u16, String) {
    use http_body_util::BodyExt as _;
    sender.ready().await.unwrap();
    let request = http::Request::builder()
        .method(method)
        .uri("/books")
        .header("host", "web.shop.svc.cluster.local")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http1_requests_on_one_connection_are_balanced_one_by_one() {
    let ca = Ca::new();
    let mut apps = Vec::new();
    for (name, delay) in [("a", 0), ("b", 0), ("slow", 150)] {
        apps.push(http_app(name, Duration::from_millis(delay)).await);
    }
    let (_servers, client, _) = fleet(&ca, apps).await;

    let mut sender = http_client(client.addr).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let (status, answer) = request(&mut sender, "GET", Vec::new()).await;
        assert_eq!(status, 200);
        let name = answer.split(':').next().unwrap().to_string();
        *seen.entry(name).or_default() += 1;
    }
    // One client connection, several endpoints: balanced per request; the slow one
    // gets little once it has been seen to be slow.
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.get("slow").copied().unwrap_or(0) <= 8, "{seen:?}");

    // A large body, sent as it comes (a POST of 1 MiB), arrives whole.
    let (status, answer) = request(&mut sender, "POST", vec![b'x'; 1 << 20]).await;
    assert_eq!(status, 200);
    assert!(answer.ends_with(":1048576"), "{answer}");

    let text = client.metrics.encode();
    for (name, labels) in [
        (
            "request_total",
            vec![
                ("direction", "outbound"),
                ("tls", "true"),
                ("server_id", SERVER_ID),
            ],
        ),
        (
            "response_total",
            vec![("status_code", "200"), ("classification", "success")],
        ),
        ("response_latency_ms_count", vec![("direction", "outbound")]),
    ] {
        assert!(
            has_sample(&text, name, &labels),
            "{name} {labels:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn http1_to_an_unreachable_endpoint_is_a_502_and_the_connection_lives_on() {
    let ca = Ca::new();
    let app = http_app("web", Duration::ZERO).await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    let mut sender = http_client(client.addr).await;
    assert_eq!(
        request(&mut sender, "GET", Vec::new()).await,
        (200, "web:0".into())
    );

    // The endpoint goes away (a closed port stands in for it), then comes back.
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(gone, SERVER_ID)], "2"));
    assert_eq!(request(&mut sender, "GET", Vec::new()).await.0, 502);
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(server.addr, SERVER_ID)], "3"));
    assert_eq!(
        request(&mut sender, "GET", Vec::new()).await,
        (200, "web:0".into())
    );
    assert!(has_sample(
        &client.metrics.encode(),
        "response_total",
        &[("status_code", "502"), ("classification", "failure")]
    ));
}

/// An HTTP/1 application that accepts an upgrade and then echoes raw bytes.
async fn upgrade_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(
                |mut request: http::Request<hyper::body::Incoming>| async move {
                    let upgrade = hyper::upgrade::on(&mut request);
                    tokio::spawn(async move {
                        let Ok(upgraded) = upgrade.await else { return };
                        let (mut read, mut write) =
                            tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut read, &mut write).await;
                    });
                    let response = http::Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", "websocket")
                        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
                        .unwrap();
                    Ok::<_, hyper::Error>(response)
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                    .with_upgrades(),
            );
        }
    });
    addr
}

#[tokio::test]
async fn an_upgraded_http1_connection_becomes_a_tunnel_through_both_proxies() {
    let ca = Ca::new();
    let (_server, client) = meshed_pair(&ca, upgrade_app().await, InboundSettings::default()).await;
    let conn = TcpStream::connect(client.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn))
            .await
            .unwrap();
    tokio::spawn(connection.with_upgrades());
    let request = http::Request::builder()
        .uri("/chat")
        .header("host", "web.shop.svc.cluster.local")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 101);
    let upgraded = hyper::upgrade::on(response).await.expect("upgraded");
    let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
    tunnel.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut echo))
        .await
        .expect("the echo through the tunnel")
        .unwrap();
    assert_eq!(&echo, b"ping");
}
