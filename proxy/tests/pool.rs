//! A client proxy's kept connections serve only what they were made for: when
//! discovery gives an endpoint an identity, the next request to it goes over mTLS
//! even on a connection kept alive by the application, never on the plaintext
//! connection made before; and when the endpoint loses its identity, the next request
//! goes in plaintext, not on the mTLS connection made for the identity it no longer
//! has. Each scenario runs with HTTP/1.1 and with HTTP/2.

// Helpers outside `#[test]` functions too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::{convert::Infallible, net::SocketAddr};

use http::{Request, Response};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use weft_proxy::{http::Version, inbound::InboundSettings};

/// An application answering every request `ok`, in `version`.
async fn app(version: Version) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|_| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let io = TokioIo::new(conn);
            match version {
                Version::Http1 => {
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                    );
                }
                Version::Http2 => {
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service),
                    );
                }
            }
        }
    });
    addr
}

/// An application's connection through its proxy, kept alive across requests.
enum Application {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Application {
    async fn connect(proxy: SocketAddr, version: Version) -> Self {
        let io = TokioIo::new(TcpStream::connect(proxy).await.unwrap());
        match version {
            Version::Http1 => {
                let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(connection);
                Self::Http1(sender)
            }
            Version::Http2 => {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(connection);
                Self::Http2(sender)
            }
        }
    }

    /// A GET answered `ok`, body and all, within [`PATIENCE`].
    async fn get(&mut self) {
        let exchange = async {
            let response = match self {
                Self::Http1(sender) => {
                    sender.ready().await.unwrap();
                    let request = Request::get("/").header("host", "web.shop");
                    sender
                        .send_request(request.body(Empty::new()).unwrap())
                        .await
                }
                Self::Http2(sender) => {
                    sender.ready().await.unwrap();
                    let request = Request::get("http://web.shop/").version(http::Version::HTTP_2);
                    sender
                        .send_request(request.body(Empty::new()).unwrap())
                        .await
                }
            };
            let response = response.unwrap();
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap().to_bytes()
        };
        let body = tokio::time::timeout(PATIENCE, exchange).await.unwrap();
        assert_eq!(body, "ok");
    }
}

/// The requests the server proxy has served, over mTLS from the client proxy and in
/// plaintext.
fn served(server: &Server) -> (f64, f64) {
    let text = server.metrics.encode();
    let count = |tls| {
        sample_sum(
            &text,
            "request_total",
            &[("direction", "inbound"), ("tls", tls)],
        )
    };
    (count("true"), count("false"))
}

/// A server proxy in front of an application, and a client proxy whose application
/// is connected; the endpoint is first given `identity` (`""`: none), then the other.
async fn identity_changes(version: Version, first: &str, then: &str) -> (Server, Vec<(f64, f64)>) {
    let ca = Ca::new();
    let server = server(
        &ca,
        SERVER_ID,
        app(version).await,
        InboundSettings::default(),
    )
    .await;
    let client = client(&ca).await;
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(server.addr, first)], "1"));
    let mut application = Application::connect(client.addr, version).await;
    let mut seen = Vec::new();
    application.get().await;
    seen.push(served(&server));
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(server.addr, then)], "2"));
    application.get().await;
    seen.push(served(&server));
    (server, seen)
}

async fn an_endpoint_given_an_identity_is_reached_over_mtls_from_its_next_request(
    version: Version,
) {
    let (_server, seen) = identity_changes(version, "", SERVER_ID).await;
    assert_eq!(seen[0], (0.0, 1.0), "the unmeshed endpoint, in plaintext");
    assert_eq!(
        seen[1],
        (1.0, 1.0),
        "the request after the endpoint got its identity (mTLS, plaintext)"
    );
}

async fn an_endpoint_that_lost_its_identity_is_reached_in_plaintext_from_its_next_request(
    version: Version,
) {
    let (_server, seen) = identity_changes(version, SERVER_ID, "").await;
    assert_eq!(seen[0], (1.0, 0.0), "the meshed endpoint, over mTLS");
    assert_eq!(
        seen[1],
        (1.0, 1.0),
        "the request after the endpoint lost its identity (mTLS, plaintext)"
    );
}

#[tokio::test]
async fn http1_an_endpoint_given_an_identity_is_reached_over_mtls_from_its_next_request() {
    an_endpoint_given_an_identity_is_reached_over_mtls_from_its_next_request(Version::Http1).await;
}

#[tokio::test]
async fn http2_an_endpoint_given_an_identity_is_reached_over_mtls_from_its_next_request() {
    an_endpoint_given_an_identity_is_reached_over_mtls_from_its_next_request(Version::Http2).await;
}

#[tokio::test]
async fn http1_an_endpoint_that_lost_its_identity_is_reached_in_plaintext_from_its_next_request() {
    an_endpoint_that_lost_its_identity_is_reached_in_plaintext_from_its_next_request(
        Version::Http1,
    )
    .await;
}

#[tokio::test]
async fn http2_an_endpoint_that_lost_its_identity_is_reached_in_plaintext_from_its_next_request() {
    an_endpoint_that_lost_its_identity_is_reached_in_plaintext_from_its_next_request(
        Version::Http2,
    )
    .await;
}
