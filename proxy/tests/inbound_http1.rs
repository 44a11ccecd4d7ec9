//! Inbound HTTP/1 relayed to the application byte for byte (`weft_proxy::http::relay`),
//! in-process over real sockets: an unmeshed client speaks raw HTTP/1 to a server
//! proxy in front of a scripted application, so what each side sends and sees is
//! exact. The meshed cases (through a client proxy, with mTLS) run in `http.rs`.

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use weft_proxy::inbound::InboundSettings;

/// A scripted HTTP/1 application: each request head (bodies are not sent here) is
/// answered by its path — `/close` answers, then closes its side of the connection
/// and counts, in `closed`, the proxy closing the other once it noticed; `/drop`
/// closes it unanswered; `/early` answers 413 and closes its side without reading the
/// body; any other path is answered with itself as the body (a
/// `HEAD` with the length only). It counts the request heads it got.
struct App {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

async fn app() -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counters = (seen.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (seen, closed) = counters.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    seen.fetch_add(1, Ordering::SeqCst);
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap(), words.next().unwrap());
                    if path == "/drop" {
                        return;
                    }
                    if path == "/early" {
                        // Refused before its body is read: answered, then this side
                        // closed, the rest of the body read and dropped.
                        let answer = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";
                        conn.write_all(answer.as_bytes()).await.unwrap();
                        let _ = conn.shutdown().await;
                        let _ = tokio::io::copy(&mut conn, &mut tokio::io::sink()).await;
                        return;
                    }
                    let body = if method == "HEAD" { "" } else { path };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        path.len()
                    );
                    conn.write_all(answer.as_bytes()).await.unwrap();
                    if path == "/close" {
                        let _ = conn.shutdown().await;
                        let _ = tokio::io::copy(&mut conn, &mut tokio::io::sink()).await;
                        closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    App { addr, seen, closed }
}

/// A server proxy in front of a scripted [`app`], and the app.
async fn proxied_app() -> (Server, App) {
    let app = app().await;
    let server = server(&Ca::new(), SERVER_ID, app.addr, InboundSettings::default()).await;
    (server, app)
}

/// Reads from `conn` until each of `ends` arrived; the connection ending first, or
/// nothing for [`PATIENCE`], fails the test.
async fn read_answers(conn: &mut TcpStream, ends: &[&str]) -> String {
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !ends.iter().all(|end| got.contains(end)) {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{ends:?} not within {PATIENCE:?}; got {got:?}"))
            .unwrap();
        assert!(n > 0, "the connection ended before {ends:?}; got {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    got
}

/// Waits until `count` reads `expected` (counters move once an answer is through).
async fn counted(what: &str, count: impl Fn() -> f64, expected: f64) {
    eventually(&format!("{what} = {expected}"), || count() == expected).await;
}

fn inbound_count(server: &Server, name: &str, extra: &[(&str, &str)]) -> f64 {
    let labels: Vec<(&str, &str)> = [("direction", "inbound"), ("tls", "false")]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    sample_sum(&server.metrics.encode(), name, &labels)
}

#[tokio::test]
async fn pipelined_requests_and_a_bodiless_head_answer_are_framed_and_counted() {
    let (server, app) = proxied_app().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    // A HEAD answer says content-length: 5 and has no body: were it read as having
    // one, the next answer would be swallowed as its body.
    conn.write_all(
        b"HEAD /head HTTP/1.1\r\nhost: web\r\n\r\nGET /next HTTP/1.1\r\nhost: web\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_answers(&mut conn, &["/next"]).await;
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
    assert!(got.ends_with("\r\n\r\n/next"), "{got}");
    assert_eq!(app.seen.load(Ordering::SeqCst), 2);
    let server = &server;
    let count = |name, labels: &'static [(&str, &str)]| move || inbound_count(server, name, labels);
    counted("requests", count("request_total", &[]), 2.0).await;
    let ok = &[("status_code", "200"), ("classification", "success")];
    counted("responses", count("response_total", ok), 2.0).await;
    counted("latencies", count("response_latency_ms_count", &[]), 2.0).await;
}

#[tokio::test]
async fn the_application_closing_an_idle_connection_leaves_the_clients_open() {
    let (server, app) = proxied_app().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /close HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_answers(&mut conn, &["/close"])
            .await
            .ends_with("/close")
    );
    // The application's side is gone, and the proxy closed its own once it noticed;
    // the next request on the client's connection opens another.
    eventually(
        "the proxy closes the connection the application closed",
        || app.closed.load(Ordering::SeqCst) == 1,
    )
    .await;
    conn.write_all(b"GET /again HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let got = read_answers(&mut conn, &["/again"]).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert_eq!(app.seen.load(Ordering::SeqCst), 2);
    assert_eq!(inbound_count(&server, "tcp_open_total", &[]), 1.0);
}

#[tokio::test]
async fn a_request_the_application_drops_unanswered_is_a_502() {
    let (server, _app) = proxied_app().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /drop HTTP/1.1\r\n\r\n").await.unwrap();
    // The connection is closed after the 502.
    let (got, ending) = read_to_end_of(&mut conn).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
    assert_eq!(ending, Ending::Closed);
    let failed = &[("status_code", "502"), ("classification", "failure")];
    counted(
        "failed responses",
        || inbound_count(&server, "response_total", failed),
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_malformed_or_ambiguous_request_is_refused_before_the_application_sees_it() {
    let (server, app) = proxied_app().await;
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"[..], "400"),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            "400",
        ),
    ] {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(request).await.unwrap();
        let (got, _) = read_to_end_of(&mut conn).await;
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with(&format!("HTTP/1.1 {status}")), "{got}");
    }
    let mut huge = String::from("GET / HTTP/1.1\r\n");
    for i in 0..200 {
        huge.push_str(&format!("x-filler-{i}: {}\r\n", "y".repeat(64)));
    }
    huge.push_str("\r\n");
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(huge.as_bytes()).await.unwrap();
    let got = read_answers(&mut conn, &["\r\n\r\n"]).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");

    assert_eq!(
        app.seen.load(Ordering::SeqCst),
        0,
        "the application saw none"
    );
    let errors = || {
        sample_sum(
            &server.metrics.encode(),
            "http_client_errors_total",
            &[("direction", "inbound")],
        )
    };
    counted("client errors", errors, 4.0).await;
    // Everyone else is still served.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /fine HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(
        read_answers(&mut conn, &["/fine"])
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn an_answer_before_the_request_body_ends_the_connection_when_the_application_closes() {
    let (server, app) = proxied_app().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"POST /early HTTP/1.1\r\ncontent-length: 100000\r\n\r\nfirst part")
        .await
        .unwrap();
    let got = read_answers(&mut conn, &["\r\n\r\n"]).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    // The rest of the body has nowhere to go: it must not reach a new application
    // connection as if it were a request. The client's connection ends instead.
    // (The write may meet the close already.)
    let _ = conn.write_all(&[b'x'; 1000]).await;
    read_to_end_of(&mut conn).await;
    assert_eq!(app.seen.load(Ordering::SeqCst), 1);
}
