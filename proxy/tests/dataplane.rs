//! The data plane in-process, over real sockets: a client proxy's outbound listener and
//! a server proxy's inbound listener, with certificates from a test CA and an
//! in-process stand-in for the proxy API. Covers TCP: mTLS with identities checked
//! both ways, policy, balancing, endpoint changes, half-close, server-speaks-first
//! TCP, certificate rotation under live traffic, and input that is not what it
//! claims. HTTP is in `http.rs`.

// Helpers outside `#[test]` functions too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use weft_proxy::{
    accept::Forwarder,
    inbound::InboundSettings,
    metrics::{Direction, Metrics},
    tls::Tls,
};
use weft_proxy_api::v1::{Endpoint, ProtocolHint, Resolution};

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

/// The first flight of a TLS 1.3 client (its ClientHello) for `sni`.
fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut hello = Vec::new();
    rustls::ClientConnection::new(Arc::new(config), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    hello
}

/// Sends `message` through `proxy`, half-closes, and reads the whole answer, which
/// must end with a close (a reset or a hang fails the test).
async fn exchange(proxy: SocketAddr, message: &str) -> String {
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(message.as_bytes()).await.unwrap();
    conn.shutdown().await.unwrap();
    let (answer, ending) = read_to_end_of(&mut conn).await;
    let answer = String::from_utf8(answer).unwrap();
    assert_eq!(ending, Ending::Closed, "a reset after {answer:?}");
    answer
}

/// Sends `message` through `proxy` and sees the connection refused: ended (closed or
/// reset) with nothing sent back. An answer, or a connection left hanging, fails the
/// test.
async fn refused(proxy: SocketAddr, message: &str) -> Ending {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    let sent = async {
        conn.write_all(message.as_bytes()).await?;
        conn.shutdown().await
    };
    match sent.await {
        Ok(()) => {}
        // Refused before the message was all written: seen as a reset.
        Err(e) if matches!(e.kind(), ConnectionReset | BrokenPipe) => return Ending::Reset,
        Err(e) => panic!("sending to {proxy}: {e}"),
    }
    let (answer, ending) = read_to_end_of(&mut conn).await;
    assert!(
        answer.is_empty(),
        "refused, yet answered {:?}",
        String::from_utf8_lossy(&answer)
    );
    ending
}

/// Sends the last bytes of an open connection, half-closes, and reads the answer.
async fn finish(mut conn: TcpStream, last: &[u8]) -> String {
    conn.write_all(last).await.unwrap();
    conn.shutdown().await.unwrap();
    let (answer, ending) = read_to_end_of(&mut conn).await;
    let answer = String::from_utf8(answer).unwrap();
    assert_eq!(ending, Ending::Closed, "a reset after {answer:?}");
    answer
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
    refused(client.addr, "hello").await;
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
    let failed = || {
        sample_sum(
            &client.metrics.encode(),
            "tls_handshake_errors_total",
            &[("direction", "outbound")],
        )
    };
    let before = failed();
    refused(client.addr, "hello").await;
    assert_eq!(failed(), before + 1.0);

    // A server that answers for `web` with another identity's certificate: the
    // client proxy's own check refuses it, the handshake never completes.
    let impostor = impostor(&ca, "spiffe://cluster.local/ns/shop/sa/other", app).await;
    client.resolver.set(
        SERVICE,
        known(vec![endpoint(impostor.addr, SERVER_ID)], "2"),
    );
    let before = failed();
    refused(client.addr, "hello").await;
    assert_eq!(failed(), before + 1.0);
    assert_eq!(impostor.begun.load(Ordering::SeqCst), 1);
    assert_eq!(impostor.completed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_inbound_policy_decides_who_gets_in() {
    let ca = Ca::new();
    let app = app("web", None).await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;

    let port = app.port().to_string();
    let judged = |authorization, client_id| {
        [
            ("server", port.clone()),
            ("authorization", authorization),
            ("client_id", client_id),
        ]
    };
    let count = |name: &str, labels: [(&str, String); 3]| {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sample_sum(&server.metrics.encode(), name, &labels)
    };
    let (test, meshed) = (
        "serverauthorization/test".to_string(),
        CLIENT_ID.to_string(),
    );

    server
        .policies
        .set(allow(&["spiffe://cluster.local/ns/shop/sa/admin"], false));
    // Not an allowed identity: closed, and counted with who was refused where, by
    // what.
    refused(client.addr, "hello").await;
    let deny = "inbound_tcp_authz_deny_total";
    assert_eq!(count(deny, judged(test.clone(), meshed.clone())), 1.0);

    server.policies.set(allow(&[CLIENT_ID], false));
    assert_eq!(exchange(client.addr, "hello").await, "web:hello");
    let allowed = "inbound_tcp_authz_allow_total";
    assert_eq!(count(allowed, judged(test.clone(), meshed.clone())), 1.0);

    // Plaintext straight to the inbound side: unauthenticated, so refused...
    refused(server.addr, "hello").await;
    let unauthenticated = "unauthenticated".to_string();
    assert_eq!(
        count(deny, judged(test.clone(), unauthenticated.clone())),
        1.0
    );
    // ...until unauthenticated clients are allowed.
    server.policies.set(allow(&[], true));
    assert_eq!(exchange(server.addr, "hello").await, "web:hello");
    assert_eq!(count(allowed, judged(test, unauthenticated.clone())), 1.0);
    assert!(has_sample(
        &server.metrics.encode(),
        "tcp_open_total",
        &[("direction", "inbound"), ("tls", "false")]
    ));

    // Under the deny default (a policy without rules), everyone is refused by it.
    server.policies.set(Default::default());
    refused(client.addr, "hello").await;
    refused(server.addr, "hello").await;
    let default_deny = "default:deny".to_string();
    assert_eq!(count(deny, judged(default_deny.clone(), meshed)), 1.0);
    assert_eq!(count(deny, judged(default_deny, unauthenticated)), 1.0);
}

#[tokio::test]
async fn an_opaque_port_closes_a_refused_client_even_one_that_speaks_http() {
    let ca = Ca::new();
    let app = app("web", None).await;
    let settings = InboundSettings {
        opaque_ports: vec![app.port()],
        ..InboundSettings::default()
    };
    let (server, client) = meshed_pair(&ca, app, settings).await;
    // The client proxy knows the port is opaque too: its bytes go over mTLS as they
    // are.
    let opaque = Endpoint {
        protocol_hint: ProtocolHint::Opaque as i32,
        ..endpoint(server.addr, SERVER_ID)
    };
    client.resolver.set(SERVICE, known(vec![opaque], "2"));
    server
        .policies
        .set(allow(&["spiffe://cluster.local/ns/shop/sa/admin"], false));
    // An HTTP request, but the port is opaque: no 403, the connection is closed,
    // meshed or not.
    let request = "GET / HTTP/1.1\r\nhost: web\r\n\r\n";
    refused(client.addr, request).await;
    refused(server.addr, request).await;

    let text = server.metrics.encode();
    let port = app.port().to_string();
    for client_id in [CLIENT_ID, "unauthenticated"] {
        let denied = [
            ("server", port.as_str()),
            ("authorization", "serverauthorization/test"),
            ("client_id", client_id),
        ];
        assert_eq!(
            sample_sum(&text, "inbound_tcp_authz_deny_total", &denied),
            1.0,
            "{client_id} in\n{text}"
        );
    }
    assert_eq!(
        sample_sum(&text, "inbound_http_authz_deny_total", &[]),
        0.0,
        "{text}"
    );
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
    refused(client.addr, "hi").await;
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Resolves nothing: every destination is beyond what the proxy may follow.
struct AtTheLimit;

impl weft_proxy::outbound::Resolve for AtTheLimit {
    fn resolve(&self, _authority: &str) -> Option<watch::Receiver<Option<Arc<Resolution>>>> {
        None
    }
}

#[tokio::test]
async fn a_destination_discovery_does_not_answer_for_is_closed_never_sent_as_it_was() {
    // The original destination: a listener that counts what reaches it.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = reached.clone();
    tokio::spawn(async move {
        while target.accept().await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let ca = Ca::new();
    let silent: Arc<dyn weft_proxy::outbound::Resolve> = Arc::new(FakeResolver::default());
    for (resolver, reason) in [(silent, "timeout"), (Arc::new(AtTheLimit) as _, "limit")] {
        let (_tx, rx) = watch::channel(Some(ca.credentials(CLIENT_ID)));
        let metrics = Arc::new(Metrics::new());
        let forwarder = Forwarder::bind(Direction::Outbound, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .with_fixed_target(target_addr)
            .with_tls(Tls::new(rx))
            .with_resolver(resolver)
            .with_resolve_timeout(Duration::from_millis(200));
        let addr = forwarder.local_addr();
        let (_stop, shutdown) = watch::channel(false);
        forwarder.spawn(metrics.clone(), shutdown);

        refused(addr, "hi").await;
        let text = metrics.encode();
        assert_eq!(
            sample_sum(
                &text,
                "outbound_resolve_failed_total",
                &[("reason", reason)]
            ),
            1.0,
            "{text}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "an unresolved destination was reached as it was (in plaintext)"
    );
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
    // Not a request line in the making: detected as TCP at once.
    long.write_all(b"before;").await.unwrap();
    eventually("the long connection is open to its endpoint", || {
        has_sample(&client.metrics.encode(), "tcp_open_connections", &[])
    })
    .await;
    client.resolver.set(SERVICE, known(all[1..].to_vec(), "3"));
    for _ in 0..10 {
        let answer = exchange(client.addr, "x").await;
        assert!(answer == "b:x" || answer == "c:x", "{answer:?}");
    }
    assert_eq!(finish(long, b"after").await, "a:before;after");
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
        let (rest, ending) = read_to_end_of(&mut conn).await;
        assert_eq!((&rest[..], ending), (&b"db:QUIT"[..], Ending::Closed));
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
    server.policies.set(allow(&[], true));

    // A ClientHello naming this proxy but with garbage after it, then one offering
    // only an ALPN protocol proxies do not speak: each refused and counted.
    let own_sni = weft_proxy::tls::sni_of(SERVER_ID).unwrap();
    let failures = || {
        sample_sum(
            &server.metrics.encode(),
            "tls_handshake_errors_total",
            &[("direction", "inbound")],
        )
    };
    for (hello, after) in [
        (
            client_hello(&own_sni, &[]),
            &b"\x17\x03\x03\x00\x05garbage"[..],
        ),
        (client_hello(&own_sni, &[b"h2"]), &b""[..]),
    ] {
        let before = failures();
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(&hello).await.unwrap();
        conn.write_all(after).await.unwrap();
        // Ended by the proxy (what it sent first, a TLS alert, does not matter).
        read_to_end_of(&mut conn).await;
        assert_eq!(failures(), before + 1.0);
    }

    // An application's own TLS (another SNI) and binary noise pass through untouched.
    let foreign = client_hello("example.test", &[]);
    let answer = exchange(server.addr, &String::from_utf8_lossy(&foreign)).await;
    assert!(answer.starts_with("web:"), "passed through: {answer:?}");
    assert_eq!(
        exchange(server.addr, "\u{0}\u{1}noise").await,
        "web:\u{0}\u{1}noise"
    );
}

#[tokio::test]
async fn a_tcp_connection_lives_through_a_shutdown_until_it_ends() {
    let ca = Ca::new();
    let app = app("web", None).await;
    let (server, mut client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    let mut open = TcpStream::connect(client.addr).await.unwrap();
    // Not a request line in the making: detected as TCP at once.
    open.write_all(b"before;").await.unwrap();
    eventually("the connection is relayed to the server proxy", || {
        has_sample(
            &server.metrics.encode(),
            "tcp_open_connections",
            &[("direction", "inbound")],
        )
    })
    .await;

    client.stop.send_replace(true);
    // No new connection is taken...
    eventually("the listener is closed", || {
        std::net::TcpStream::connect(client.addr).is_err()
    })
    .await;
    // ...while the open one holds the proxy (that it does not end is only seen by
    // waiting a while), then carries on both ways.
    let still_open = tokio::time::timeout(Duration::from_millis(300), &mut client.task).await;
    assert!(still_open.is_err(), "drained with a connection open");
    assert_eq!(finish(open, b"after").await, "web:before;after");
    tokio::time::timeout(PATIENCE, client.task)
        .await
        .expect("drained once its connection ended")
        .unwrap();
}
