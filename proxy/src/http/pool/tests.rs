//! The pool's keys and lifetimes, on connections to an in-memory HTTP server; the
//! lifetimes on tokio's paused clock.

use std::convert::Infallible;

use http::Response;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use tokio::task::JoinHandle;

use super::*;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";

fn key(identity: Option<&str>, tls: bool) -> Key {
    Key {
        addr: "10.0.0.1:8080".parse().unwrap(),
        identity: identity.map(str::to_string),
        tls,
    }
}

/// A connection in `version` to an in-memory server answering every request 200, ready
/// for a request; and the server's task, which ends when the connection is closed.
async fn connection(version: Version) -> (Sender, JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let service = hyper::service::service_fn(|_| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let served = tokio::spawn(async move {
        let io = TokioIo::new(server);
        let _ = match version {
            Version::Http1 => {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
            }
            Version::Http2 => {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            }
        };
    });
    let mut sender = handshake(client, version).await.expect("a handshake");
    match &mut sender.conn {
        Conn::Http1(s) => s.ready().await.unwrap(),
        Conn::Http2(s) => s.ready().await.unwrap(),
    }
    (sender, served)
}

/// Lets every task with something to do run (the clock stands still meanwhile).
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// Whether the server's end of the connection is still open, once everything that
/// could close it has run.
async fn still_open(served: &JoinHandle<()>) -> bool {
    settle().await;
    !served.is_finished()
}

async fn a_connection_serves_only_the_address_identity_and_transport_it_was_made_for(
    version: Version,
) {
    let plaintext = key(None, false);
    let meshed = key(Some(WEB), true);
    // Made for a request for other identities, or the same without TLS.
    let strangers = [
        key(Some(OTHER), true),
        key(Some(WEB), false),
        Key {
            addr: "10.0.0.2:8080".parse().unwrap(),
            ..meshed.clone()
        },
    ];

    // Made while the endpoint had no identity: never reused once it has one.
    let pool = Pool::default();
    pool.checkin(plaintext.clone(), connection(version).await.0);
    assert!(pool.checkout(&meshed, version).is_none());
    for stranger in &strangers {
        assert!(pool.checkout(stranger, version).is_none(), "{stranger:?}");
    }
    assert!(pool.checkout(&plaintext, version).is_some());

    // Made for an identity: never reused for plaintext, nor for another identity.
    let pool = Pool::default();
    pool.checkin(meshed.clone(), connection(version).await.0);
    assert!(pool.checkout(&plaintext, version).is_none());
    for stranger in &strangers {
        assert!(pool.checkout(stranger, version).is_none(), "{stranger:?}");
    }
    assert!(pool.checkout(&meshed, version).is_some());
}

#[tokio::test]
async fn http1_a_connection_serves_only_the_address_identity_and_transport_it_was_made_for() {
    a_connection_serves_only_the_address_identity_and_transport_it_was_made_for(Version::Http1)
        .await;
}

#[tokio::test]
async fn http2_a_connection_serves_only_the_address_identity_and_transport_it_was_made_for() {
    a_connection_serves_only_the_address_identity_and_transport_it_was_made_for(Version::Http2)
        .await;
}

async fn an_idle_connection_is_closed_after_the_idle_timeout(version: Version) {
    let pool = Pool::default();
    let key = key(Some(WEB), true);
    let (sender, served) = connection(version).await;
    pool.checkin(key.clone(), sender);
    // Used again just before its idle time is up: kept, its idle time starting over.
    tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
    let sender = pool
        .checkout(&key, version)
        .expect("kept while not idle long");
    pool.checkin(key.clone(), sender);
    tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
    assert!(still_open(&served).await, "closed before its idle time");
    // Unused for the idle timeout: the sweep closes it, without a request asking.
    tokio::time::advance(Duration::from_secs(1) + SWEEP_EVERY).await;
    assert!(
        !still_open(&served).await,
        "an idle connection was left open past {IDLE_TIMEOUT:?}"
    );
    assert!(pool.checkout(&key, version).is_none());
}

#[tokio::test(start_paused = true)]
async fn http1_an_idle_connection_is_closed_after_the_idle_timeout() {
    an_idle_connection_is_closed_after_the_idle_timeout(Version::Http1).await;
}

#[tokio::test(start_paused = true)]
async fn http2_an_idle_connection_is_closed_after_the_idle_timeout() {
    an_idle_connection_is_closed_after_the_idle_timeout(Version::Http2).await;
}

async fn a_busy_connection_takes_no_new_request_past_its_maximum_age(version: Version) {
    let pool = Pool::default();
    let key = key(None, false);
    let (sender, served) = connection(version).await;
    let opened = Instant::now();
    pool.checkin(key.clone(), sender);
    // Used far more often than the idle timeout, up to just before its maximum age.
    let step = IDLE_TIMEOUT / 3;
    while Instant::now() + step < opened + MAX_AGE {
        tokio::time::advance(step).await;
        let sender = pool.checkout(&key, version).expect("kept while young");
        pool.checkin(key.clone(), sender);
    }
    // The request that takes it last, as it turns too old: it is not kept after.
    let last = pool.checkout(&key, version).expect("kept while young");
    tokio::time::advance(opened + MAX_AGE - Instant::now()).await;
    // The sweep due now runs first: only the return of the connection can close it.
    settle().await;
    pool.checkin(key.clone(), last);

    assert!(
        !still_open(&served).await,
        "a connection older than {MAX_AGE:?} was kept after its last request"
    );
    assert!(pool.checkout(&key, version).is_none());

    // Kept idle in the pool as it turns too old: not handed out either.
    let (sender, _served) = connection(version).await;
    pool.checkin(key.clone(), sender);
    let opened = Instant::now();
    while Instant::now() + step < opened + MAX_AGE {
        tokio::time::advance(step).await;
        let sender = pool.checkout(&key, version).expect("kept while young");
        pool.checkin(key.clone(), sender);
    }
    tokio::time::advance(opened + MAX_AGE - Instant::now()).await;
    assert!(pool.checkout(&key, version).is_none());
}

#[tokio::test(start_paused = true)]
async fn http1_a_busy_connection_takes_no_new_request_past_its_maximum_age() {
    a_busy_connection_takes_no_new_request_past_its_maximum_age(Version::Http1).await;
}

#[tokio::test(start_paused = true)]
async fn http2_a_busy_connection_takes_no_new_request_past_its_maximum_age() {
    a_busy_connection_takes_no_new_request_past_its_maximum_age(Version::Http2).await;
}

#[tokio::test(start_paused = true)]
async fn a_response_in_flight_on_a_connection_let_go_for_its_age_still_ends() {
    for version in [Version::Http1, Version::Http2] {
        // The server sends the head and a first part, the rest when the test says.
        let (rest, parts) = tokio::sync::mpsc::channel::<Bytes>(4);
        let parts = Mutex::new(Some(parts));
        let service = hyper::service::service_fn(move |_| {
            let parts = parts.lock().unwrap().take().expect("one request");
            let body = http_body_util::StreamBody::new(futures::stream::unfold(
                parts,
                |mut parts| async move {
                    let part = parts.recv().await?;
                    Some((Ok::<_, Infallible>(hyper::body::Frame::data(part)), parts))
                },
            ));
            async move { Ok::<_, Infallible>(Response::new(body)) }
        });
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(async move {
            let io = TokioIo::new(server);
            let _ = match version {
                Version::Http1 => {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                }
                Version::Http2 => {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                }
            };
        });
        let mut sender = handshake(client, version).await.expect("a handshake");
        let mut request = Request::get("http://web.shop/")
            .body(Body::empty())
            .unwrap();
        if version == Version::Http2 {
            *request.version_mut() = http::Version::HTTP_2;
        }
        rest.send(Bytes::from_static(b"first ")).await.unwrap();
        let response = sender.send(request).await.unwrap();

        // Its connection turns too old while the body is on its way: let go.
        let pool = Pool::default();
        tokio::time::advance(MAX_AGE).await;
        pool.checkin(key(None, false), sender);
        assert!(
            still_open(&served).await,
            "{version:?}: a response was cut short"
        );
        rest.send(Bytes::from_static(b"and last")).await.unwrap();
        drop(rest);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "first and last", "{version:?}");
        // Then it closes.
        assert!(!still_open(&served).await, "{version:?}: not closed after");
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_pool_closes_its_idle_connections() {
    for version in [Version::Http1, Version::Http2] {
        let pool = Pool::default();
        let (sender, served) = connection(version).await;
        pool.checkin(key(None, false), sender);
        assert!(still_open(&served).await);
        drop(pool);
        assert!(!still_open(&served).await, "{version:?}");
    }
}

#[test]
fn the_lifetimes_are_ordered() {
    // A sweep several times per idle timeout, an idle timeout well within the age.
    const { assert!(SWEEP_EVERY.as_secs() * 3 <= IDLE_TIMEOUT.as_secs()) };
    const { assert!(IDLE_TIMEOUT.as_secs() * 2 <= MAX_AGE.as_secs()) };
}
