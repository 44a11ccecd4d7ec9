use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::*;

/// Longer than any step here should take: a test fails, not hangs, past it.
const PATIENCE: Duration = Duration::from_secs(10);

/// A client's `request`, relayed to an application that answers its one
/// connection's first request head with `answer` and keeps the connection open:
/// what the client got until its connection ended, and whether the application's
/// connection was then closed too.
async fn exchange(request: &[u8], answer: &'static [u8]) -> (String, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    let app = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(conn.read_u8().await.unwrap());
        }
        conn.write_all(answer).await.unwrap();
        // Closed by the proxy: the read ends (or fails, if it reset it).
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest).await;
    });
    let (mut client, proxy_side) = tokio::io::duplex(64 * 1024);
    let metrics = Arc::new(Metrics::new());
    let (_stop, shutdown) = watch::channel(false);
    let labels = TcpLabels::new(Direction::Inbound);
    let relay = tokio::spawn(async move {
        serve(proxy_side, app_addr, &labels, None, &metrics, shutdown).await
    });
    client.write_all(request).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, client.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the client's connection is still open; got {:?}",
                String::from_utf8_lossy(&got)
            )
        })
        .unwrap();
    tokio::time::timeout(PATIENCE, relay)
        .await
        .unwrap()
        .unwrap();
    let app_closed = matches!(tokio::time::timeout(PATIENCE, app).await, Ok(Ok(())));
    (String::from_utf8(got).unwrap(), app_closed)
}

#[tokio::test]
async fn a_response_framed_both_ways_is_passed_on_chunked_then_both_connections_close() {
    let chunked = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\n\r\n";
    let (got, app_closed) = exchange(
        b"GET / HTTP/1.1\r\n\r\n",
        // What follows it is never read as another response.
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled",
    )
    .await;
    assert_eq!(got, chunked);
    assert!(app_closed, "the application's connection is still open");
}

#[tokio::test]
async fn a_response_with_conflicting_lengths_is_answered_502_in_its_place() {
    let (got, app_closed) = exchange(
        b"GET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 502 "), "{got}");
    assert!(!got.contains("abcd"), "{got}");
    assert!(app_closed, "the application's connection is still open");
}
