//! HTTP through a client proxy and server proxies, in-process over real sockets, with
//! mTLS between the proxies. Every scenario is one test body run twice, once with
//! HTTP/1.1 and once with HTTP/2 (prior knowledge, as gRPC clients speak it):
//! keep-alive with per-request balancing, large bodies, bodies streamed both ways
//! with trailers, `Expect: 100-continue`, an unreachable endpoint. gRPC (unary,
//! server streaming, a status in trailers) and malformed input follow.

// Helpers outside `#[test]` functions too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use weft_proxy::{http::Version, inbound::InboundSettings};
use weft_proxy_api::{
    testing::{ScriptedDestination, check_calls},
    v1::{destination_client, destination_server},
};

const HOST: &str = "web.shop.svc.cluster.local";

/// A body fed frame by frame from a channel; it ends when the sender is dropped.
struct Channel(mpsc::Receiver<Frame<Bytes>>);

impl Channel {
    fn new() -> (mpsc::Sender<Frame<Bytes>>, Self) {
        let (tx, rx) = mpsc::channel(16);
        (tx, Self(rx))
    }

    /// No body at all (as a GET has).
    fn empty() -> Self {
        Self::new().1
    }

    /// A body of `bytes`, whole.
    fn full(bytes: impl Into<Bytes>) -> Self {
        let (tx, body) = Self::new();
        tx.try_send(Frame::data(bytes.into())).unwrap();
        body
    }
}

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_closed() && self.0.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.is_end_stream() {
            hyper::body::SizeHint::with_exact(0)
        } else {
            hyper::body::SizeHint::default()
        }
    }
}

/// An HTTP application speaking `version`. `POST /echo` streams the request body
/// back as it arrives, then sends the request's trailers with `x-echo-bytes` (the
/// bytes it echoed); anything else is answered, after `delay`, with
/// `<name>:<bytes of the request body>`.
async fn http_app(name: &'static str, delay: Duration, version: Version) -> SocketAddr {
    serve_app(version, move |request| app_answer(name, delay, request)).await
}

/// Serves `answer` to every request on a new loopback listener, in `version`
/// (HTTP/1 with upgrades).
async fn serve_app<F, Fut>(version: Version, answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<Channel>, hyper::Error>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(answer.clone());
            let io = TokioIo::new(conn);
            match version {
                Version::Http1 => {
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .with_upgrades(),
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

async fn app_answer(
    name: &'static str,
    delay: Duration,
    request: Request<Incoming>,
) -> Result<Response<Channel>, hyper::Error> {
    if request.uri().path() == "/echo" {
        let (tx, body) = Channel::new();
        tokio::spawn(async move {
            let mut incoming = request.into_body();
            let mut echoed = 0;
            let mut trailers = HeaderMap::new();
            while let Some(Ok(frame)) = incoming.frame().await {
                match frame.into_data() {
                    Ok(data) => {
                        echoed += data.len();
                        if tx.send(Frame::data(data)).await.is_err() {
                            return;
                        }
                    }
                    Err(frame) => trailers.extend(frame.into_trailers().unwrap_or_default()),
                }
            }
            trailers.insert("x-echo-bytes", HeaderValue::from(echoed));
            let _ = tx.send(Frame::trailers(trailers)).await;
        });
        let response = Response::builder()
            .header("trailer", "x-echo-bytes, x-client-trailer")
            .body(body)
            .unwrap();
        return Ok(response);
    }
    let body = request.into_body().collect().await?.to_bytes();
    tokio::time::sleep(delay).await;
    Ok(Response::new(Channel::full(format!(
        "{name}:{}",
        body.len()
    ))))
}

/// An application that holds each request until the test lets it go: each arrival is
/// announced on the receiver with the sender that releases its answer,
/// `held:<bytes of the request body>`.
async fn held_app(version: Version) -> (SocketAddr, mpsc::UnboundedReceiver<oneshot::Sender<()>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve_app(version, move |request: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            let (release, released) = oneshot::channel();
            tx.send(release).unwrap();
            let _ = released.await;
            Ok(Response::new(Channel::full(format!("held:{}", body.len()))))
        }
    })
    .await;
    (addr, rx)
}

/// The next request to reach a [`held_app`]: what releases its answer.
async fn arrival(
    arrivals: &mut mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) -> oneshot::Sender<()> {
    tokio::time::timeout(PATIENCE, arrivals.recv())
        .await
        .expect("a request reaching the application")
        .unwrap()
}

/// An application that answers every request with `status` and counts the requests
/// that reached it, by path.
async fn counting_app(
    version: Version,
    status: u16,
) -> (SocketAddr, Arc<Mutex<HashMap<String, usize>>>) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let counts = seen.clone();
    let addr = serve_app(version, move |request: Request<Incoming>| {
        let counts = counts.clone();
        async move {
            *counts
                .lock()
                .unwrap()
                .entry(request.uri().path().to_string())
                .or_insert(0) += 1;
            request.into_body().collect().await?;
            let mut response = Response::new(Channel::full("counted"));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok(response)
        }
    })
    .await;
    (addr, seen)
}

/// A listener that takes each connection and closes it at once (an endpoint that
/// cannot be sent a request), counting the connections it took.
async fn closing_endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (addr, taken)
}

/// An application's HTTP client on one connection through a proxy.
enum HttpClient {
    Http1(hyper::client::conn::http1::SendRequest<Channel>),
    Http2(hyper::client::conn::http2::SendRequest<Channel>),
}

impl HttpClient {
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

    /// A request for `path`, in the form its version uses (a path and `Host` for
    /// HTTP/1, an absolute URI for HTTP/2).
    fn request(&self, method: &str, path: &str) -> http::request::Builder {
        let builder = Request::builder().method(method);
        match self {
            Self::Http1(_) => builder.uri(path).header("host", HOST),
            Self::Http2(_) => builder
                .uri(format!("http://{HOST}{path}"))
                .version(http::Version::HTTP_2),
        }
    }

    /// Sends `request`; its response's head, within [`PATIENCE`].
    async fn send(&mut self, request: Request<Channel>) -> Response<Incoming> {
        let sent = async {
            match self {
                Self::Http1(sender) => {
                    sender.ready().await.unwrap();
                    sender.send_request(request).await.unwrap()
                }
                Self::Http2(sender) => {
                    sender.ready().await.unwrap();
                    sender.send_request(request).await.unwrap()
                }
            }
        };
        tokio::time::timeout(PATIENCE, sent)
            .await
            .unwrap_or_else(|_| panic!("no response within {PATIENCE:?}"))
    }

    /// Sends `body` with `method`; the status and the answer.
    async fn call(&mut self, method: &str, body: Vec<u8>) -> (u16, String) {
        let request = self
            .request(method, "/books")
            .body(Channel::full(body))
            .unwrap();
        let response = self.send(request).await;
        let status = response.status().as_u16();
        let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("the body did not end within {PATIENCE:?}"))
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// The next data frame of `body`, within 5 s.
async fn next_data(body: &mut Incoming) -> Bytes {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a frame within 5 s")
            .expect("a frame before the end")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            return data;
        }
    }
}

/// A client proxy and a server proxy in front of `http_app("web")`, and a client
/// connected through them.
async fn web_pair(version: Version) -> (Server, Client, HttpClient) {
    let ca = Ca::new();
    let app = http_app("web", Duration::ZERO, version).await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    let http = HttpClient::connect(client.addr, version).await;
    (server, client, http)
}

async fn requests_on_one_connection_are_balanced_one_by_one(version: Version) {
    let ca = Ca::new();
    let mut apps = Vec::new();
    for (name, delay) in [("a", 0), ("b", 0), ("slow", 150)] {
        apps.push(http_app(name, Duration::from_millis(delay), version).await);
    }
    let (_servers, client, _) = fleet(&ca, apps).await;

    let mut http = HttpClient::connect(client.addr, version).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let (status, answer) = http.call("GET", Vec::new()).await;
        assert_eq!(status, 200);
        let name = answer.split(':').next().unwrap().to_string();
        *seen.entry(name).or_default() += 1;
    }
    // One client connection, several endpoints: balanced per request; the slow one
    // gets little once it has been seen to be slow.
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.get("slow").copied().unwrap_or(0) <= 8, "{seen:?}");

    // A large body (a POST of 1 MiB) arrives whole.
    let (status, answer) = http.call("POST", vec![b'x'; 1 << 20]).await;
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

async fn bodies_stream_both_ways_with_trailers(version: Version) {
    let (_server, _client, mut http) = web_pair(version).await;

    // No length announced: chunked in HTTP/1, plain DATA frames in HTTP/2.
    let (tx, body) = Channel::new();
    let request = http
        .request("POST", "/echo")
        .header("te", "trailers")
        .header("trailer", "x-client-trailer")
        .body(body)
        .unwrap();
    tx.send(Frame::data(Bytes::from_static(b"one")))
        .await
        .unwrap();
    let response = http.send(request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // The first piece comes back before the second is sent: nothing is buffered
    // whole on the way.
    assert_eq!(next_data(&mut body).await, "one");
    tx.send(Frame::data(Bytes::from_static(b"two")))
        .await
        .unwrap();
    assert_eq!(next_data(&mut body).await, "two");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-client-trailer", HeaderValue::from_static("sent"));
    tx.send(Frame::trailers(trailers)).await.unwrap();
    drop(tx);

    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the end of the response")
        .unwrap();
    let trailers = rest.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-echo-bytes"], "6");
    assert_eq!(trailers["x-client-trailer"], "sent");
}

async fn a_request_expecting_100_continue_goes_through(version: Version) {
    let (_server, _client, mut http) = web_pair(version).await;
    let request = http
        .request("PUT", "/books")
        .header("expect", "100-continue")
        .header("content-length", "65536")
        .body(Channel::full(vec![b'x'; 65536]))
        .unwrap();
    let response = http.send(request).await;
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("the body did not end within {PATIENCE:?}"))
        .unwrap()
        .to_bytes();
    assert_eq!(body, "web:65536");
}

async fn an_unreachable_endpoint_is_a_502_and_the_connection_lives_on(version: Version) {
    let (server, client, mut http) = web_pair(version).await;
    assert_eq!(http.call("GET", Vec::new()).await, (200, "web:0".into()));

    // The endpoint goes away (a closed port stands in for it), then comes back.
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(gone, SERVER_ID)], "2"));
    assert_eq!(http.call("GET", Vec::new()).await.0, 502);
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(server.addr, SERVER_ID)], "3"));
    assert_eq!(http.call("GET", Vec::new()).await, (200, "web:0".into()));
    assert!(has_sample(
        &client.metrics.encode(),
        "response_total",
        &[("status_code", "502"), ("classification", "failure")]
    ));
}

async fn a_request_that_could_not_be_sent_goes_to_another_endpoint(version: Version) {
    let (server, client, mut http) = web_pair(version).await;
    // A pod that went away but is still listed: nothing listens on its address.
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    client.resolver.set(
        SERVICE,
        known(
            vec![endpoint(gone, SERVER_ID), endpoint(server.addr, SERVER_ID)],
            "2",
        ),
    );
    for _ in 0..20 {
        assert_eq!(
            http.call("POST", b"order".to_vec()).await,
            (200, "web:5".into())
        );
    }
}

async fn a_shutdown_drains_the_requests_in_flight_then_closes(version: Version) {
    let ca = Ca::new();
    let (app, mut arrivals) = held_app(version).await;
    let (_server, mut client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    let mut http = HttpClient::connect(client.addr, version).await;
    let warm_up = tokio::spawn(async move { (http.call("GET", Vec::new()).await, http) });
    arrival(&mut arrivals).await.send(()).unwrap();
    let (answer, mut http) = warm_up.await.unwrap();
    assert_eq!(answer, (200, "held:0".into()));

    let in_flight = tokio::spawn(async move {
        let answer = http.call("POST", b"last".to_vec()).await;
        (answer, http)
    });
    // The request has reached the application when the proxy is told to stop.
    let release = arrival(&mut arrivals).await;
    client.stop.send_replace(true);
    // Nothing new is accepted, while the request in flight holds the proxy open.
    eventually("the listener is closed", || {
        std::net::TcpStream::connect(client.addr).is_err()
    })
    .await;
    // (That it does not end is only seen by waiting a while.)
    let still_open = tokio::time::timeout(Duration::from_millis(300), &mut client.task).await;
    assert!(
        still_open.is_err(),
        "drained before its request was answered"
    );
    // The request in flight is answered; the kept-alive connection is then closed
    // (it does not hold the proxy until the grace period ends).
    release.send(()).unwrap();
    let (answer, _kept_open) = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the answer to the request in flight")
        .unwrap();
    assert_eq!(answer, (200, "held:4".into()));
    tokio::time::timeout(PATIENCE, client.task)
        .await
        .expect("drained once its request was answered")
        .unwrap();
}

async fn the_server_proxy_serves_each_request_and_counts_it_with_the_client_identity(
    version: Version,
) {
    let (server, _client, mut http) = web_pair(version).await;
    for _ in 0..3 {
        assert_eq!(http.call("GET", Vec::new()).await, (200, "web:0".into()));
    }
    let text = server.metrics.encode();
    let peer = [
        ("direction", "inbound"),
        ("tls", "true"),
        ("client_id", CLIENT_ID),
    ];
    for (name, extra) in [
        ("request_total", None),
        ("response_total", Some(("status_code", "200"))),
        ("response_latency_ms_count", None),
        ("tcp_open_total", None),
    ] {
        let labels: Vec<(&str, &str)> = peer.iter().copied().chain(extra).collect();
        assert!(
            has_sample(&text, name, &labels),
            "{name} {labels:?} in\n{text}"
        );
    }
}

/// An identity the client proxy is not: a port that allows only it refuses the client.
const ADMIN: &str = "spiffe://cluster.local/ns/shop/sa/admin";

/// Sends a GET for `/books`; the status, the headers and the body.
async fn get(http: &mut HttpClient) -> (u16, HeaderMap, String) {
    let request = http
        .request("GET", "/books")
        .body(Channel::empty())
        .unwrap();
    let response = http.send(request).await;
    let (head, body) = response.into_parts();
    let body = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .unwrap_or_else(|_| panic!("the body did not end within {PATIENCE:?}"))
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    (head.status.as_u16(), head.headers, body)
}

async fn a_refused_client_gets_403_naming_the_port_the_policy_and_itself(version: Version) {
    let ca = Ca::new();
    let app = http_app("web", Duration::ZERO, version).await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    server.policies.set(allow(&[ADMIN], false));
    let port = app.port().to_string();

    // Meshed, but not an identity the port allows.
    let mut http = HttpClient::connect(client.addr, version).await;
    for _ in 0..2 {
        let (status, headers, body) = get(&mut http).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(
            headers["weft-authz"],
            format!("denied; server={port}; policy=serverauthorization/test; client={CLIENT_ID}")
        );
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(
            body,
            format!(
                "Weft denied the request: no authorization of port {port} \
                 (serverauthorization/test) admits client {CLIENT_ID}.\n"
            )
        );
    }
    // Unmeshed (plaintext, straight to the server proxy), where every rule asks for
    // an identity.
    let mut plain = HttpClient::connect(server.addr, version).await;
    let (status, headers, body) = get(&mut plain).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        headers["weft-authz"],
        format!("denied; server={port}; policy=serverauthorization/test; client=unauthenticated")
    );
    assert!(body.contains("this client has no mesh identity"), "{body}");

    let text = server.metrics.encode();
    let denied = |client_id| {
        [
            ("server", port.as_str()),
            ("authorization", "serverauthorization/test"),
            ("client_id", client_id),
        ]
    };
    // Each request counted, with who was refused where and by what...
    assert_eq!(
        sample_sum(&text, "inbound_http_authz_deny_total", &denied(CLIENT_ID)),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(
            &text,
            "inbound_http_authz_deny_total",
            &denied("unauthenticated")
        ),
        1.0,
        "{text}"
    );
    // ...and each connection.
    for client_id in [CLIENT_ID, "unauthenticated"] {
        assert!(
            has_sample(&text, "inbound_tcp_authz_deny_total", &denied(client_id)),
            "{client_id} in\n{text}"
        );
    }
    assert_eq!(
        sample_sum(&text, "inbound_http_authz_allow_total", &[]),
        0.0,
        "{text}"
    );
    assert!(
        has_sample(
            &text,
            "response_total",
            &[
                ("direction", "inbound"),
                ("status_code", "403"),
                ("client_id", CLIENT_ID)
            ]
        ),
        "{text}"
    );
}

async fn an_admitted_client_is_counted_by_the_rule_that_admitted_it(version: Version) {
    let ca = Ca::new();
    let app = http_app("web", Duration::ZERO, version).await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    server.policies.set(allow(&[CLIENT_ID], false));
    let mut http = HttpClient::connect(client.addr, version).await;
    for _ in 0..3 {
        assert_eq!(http.call("GET", Vec::new()).await, (200, "web:0".into()));
    }
    let text = server.metrics.encode();
    let port = app.port().to_string();
    let allowed = [
        ("server", port.as_str()),
        ("authorization", "serverauthorization/test"),
        ("client_id", CLIENT_ID),
    ];
    assert_eq!(
        sample_sum(&text, "inbound_http_authz_allow_total", &allowed),
        3.0,
        "{text}"
    );
    assert!(
        has_sample(&text, "inbound_tcp_authz_allow_total", &allowed),
        "{text}"
    );
    for denials in [
        "inbound_http_authz_deny_total",
        "inbound_tcp_authz_deny_total",
    ] {
        assert_eq!(sample_sum(&text, denials, &[]), 0.0, "{text}");
    }
}

async fn each_request_is_judged_by_the_policy_in_force_when_it_arrives(version: Version) {
    let ca = Ca::new();
    let app = http_app("web", Duration::ZERO, version).await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    server.policies.set(allow(&[ADMIN], false));
    // One kept-alive client connection throughout.
    let mut http = HttpClient::connect(client.addr, version).await;
    let (status, headers, _) = get(&mut http).await;
    assert_eq!(status, 403);
    assert!(headers.contains_key("weft-authz"), "{headers:?}");
    // Access granted: its next request is served.
    server.policies.set(allow(&[CLIENT_ID], false));
    for _ in 0..2 {
        assert_eq!(http.call("GET", Vec::new()).await.0, 200);
    }
    // Removed: its next request is refused, naming the policy now in force.
    server.policies.set(allow(&[ADMIN], false));
    let (status, headers, _) = get(&mut http).await;
    assert_eq!(status, 403);
    let authz = headers["weft-authz"].to_str().unwrap();
    assert!(authz.contains("policy=serverauthorization/test"), "{authz}");
    // And back.
    server.policies.set(allow(&[CLIENT_ID], false));
    assert_eq!(http.call("GET", Vec::new()).await.0, 200);
}

/// An application for ServiceProfile routes: `/flaky` fails (503) every other time,
/// `/slow` answers after 300 ms, anything else at once; all with 200 otherwise.
async fn profile_app(version: Version) -> SocketAddr {
    let calls = Arc::new(AtomicUsize::new(0));
    serve_app(version, move |request: Request<Incoming>| {
        let calls = calls.clone();
        async move {
            let status = match request.uri().path() {
                "/flaky" if calls.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) => 503,
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    200
                }
                _ => 200,
            };
            let mut response = Response::new(Channel::full("done"));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok(response)
        }
    })
    .await
}

async fn profile_routes_time_out_retry_and_are_counted(version: Version) {
    use weft_proxy_api::v1::{Profile, RetryBudget, Route};
    let ca = Ca::new();
    let (server, client) =
        meshed_pair(&ca, profile_app(version).await, InboundSettings::default()).await;
    let mut resolution = known(vec![endpoint(server.addr, SERVER_ID)], "2");
    let route = |name: &str, path: &str, timeout_ms: u64, retryable: bool| Route {
        name: name.into(),
        method: "GET".into(),
        path_regex: path.into(),
        timeout_ms,
        retryable,
        response_classes: Vec::new(),
    };
    resolution.profile = Some(Profile {
        name: "web".into(),
        routes: vec![
            route("GET /flaky", "/flaky", 0, true),
            route("GET /slow", "/slow", 100, false),
        ],
        retry_budget: Some(RetryBudget {
            retry_ratio: 0.2,
            min_retries_per_second: 10,
            ttl_ms: 10_000,
        }),
        backends: Vec::new(),
    });
    client.resolver.set(SERVICE, resolution);
    let mut http = HttpClient::connect(client.addr, version).await;
    let mut get = async |path: &str| {
        let request = http.request("GET", path).body(Channel::empty()).unwrap();
        http.send(request).await.status().as_u16()
    };

    // Every other answer fails; the retryable route sends each of those again.
    for _ in 0..6 {
        assert_eq!(get("/flaky").await, 200);
    }
    // Over its timeout: 504, whatever the application would have said later.
    assert_eq!(get("/slow").await, 504);
    // No route: as it came.
    assert_eq!(get("/other").await, 200);

    let text = client.metrics.encode();
    let flaky = [("rt_route", "GET /flaky")];
    assert_eq!(
        sample_sum(&text, "route_request_total", &flaky),
        6.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(&text, "route_actual_request_total", &flaky),
        12.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(
            &text,
            "route_response_total",
            &[("rt_route", "GET /flaky"), ("status_code", "200")]
        ),
        6.0
    );
    assert!(has_sample(
        &text,
        "route_response_total",
        &[
            ("rt_route", "GET /slow"),
            ("status_code", "504"),
            ("classification", "failure")
        ]
    ));
    assert!(!text.contains("/other"), "{text}");
}

async fn a_client_that_resets_mid_stream_costs_only_its_own_request(version: Version) {
    let (_server, client, mut http) = web_pair(version).await;
    let (tx, body) = Channel::new();
    let request = http.request("POST", "/echo").body(body).unwrap();
    tx.send(Frame::data(Bytes::from_static(b"half")))
        .await
        .unwrap();
    let response = http.send(request).await;
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await, "half");
    // Gone mid-stream: HTTP/1 by closing its connection, HTTP/2 by resetting the
    // stream (dropping the response sends RST_STREAM) on a connection it keeps.
    drop((body, tx));
    if version == Version::Http1 {
        http = HttpClient::connect(client.addr, version).await;
    }
    assert_eq!(http.call("GET", Vec::new()).await, (200, "web:0".into()));
    let mut other = HttpClient::connect(client.addr, version).await;
    assert_eq!(other.call("GET", Vec::new()).await, (200, "web:0".into()));
}

async fn a_request_is_offered_to_three_endpoints_at_most_then_answered_502(version: Version) {
    let (server, client, mut http) = web_pair(version).await;
    assert_eq!(http.call("GET", Vec::new()).await, (200, "web:0".into()));
    // Five endpoints, each closing every connection before a request can be sent.
    let mut taken = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..5 {
        let (addr, count) = closing_endpoint().await;
        endpoints.push(endpoint(addr, SERVER_ID));
        taken.push(count);
    }
    client.resolver.set(SERVICE, known(endpoints, "2"));
    let attempts = || {
        taken
            .iter()
            .map(|t| t.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    for round in 1..=2 {
        assert_eq!(http.call("POST", b"order".to_vec()).await.0, 502);
        assert_eq!(attempts(), 3 * round, "three endpoints tried per request");
    }
    // The same request, once an endpoint can take it, is sent (and answered) once.
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(server.addr, SERVER_ID)], "3"));
    assert_eq!(
        http.call("POST", b"order".to_vec()).await,
        (200, "web:5".into())
    );
}

async fn a_retryable_route_retries_a_bodiless_request_three_times_at_most(version: Version) {
    use weft_proxy_api::v1::{Profile, RetryBudget, Route};
    let ca = Ca::new();
    // An application that always fails.
    let (app, seen) = counting_app(version, 503).await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    let mut resolution = known(vec![endpoint(server.addr, SERVER_ID)], "2");
    let route = |method: &str| Route {
        name: format!("{method} /fail"),
        method: method.into(),
        path_regex: "/fail".into(),
        timeout_ms: 0,
        retryable: true,
        response_classes: Vec::new(),
    };
    resolution.profile = Some(Profile {
        name: "web".into(),
        routes: vec![route("GET"), route("POST")],
        // A budget that allows far more than three retries.
        retry_budget: Some(RetryBudget {
            retry_ratio: 1.0,
            min_retries_per_second: 100,
            ttl_ms: 10_000,
        }),
        backends: Vec::new(),
    });
    client.resolver.set(SERVICE, resolution);
    let mut http = HttpClient::connect(client.addr, version).await;
    let reached = |path: &str| seen.lock().unwrap().get(path).copied().unwrap_or(0);

    // Without a body: the first attempt and three retries, then the failure.
    let request = http.request("GET", "/fail").body(Channel::empty()).unwrap();
    assert_eq!(http.send(request).await.status(), 503);
    assert_eq!(reached("/fail"), 4);
    // With a body: sent once, never again.
    let request = http
        .request("POST", "/fail")
        .body(Channel::full("order"))
        .unwrap();
    assert_eq!(http.send(request).await.status(), 503);
    assert_eq!(reached("/fail"), 5);
}

async fn a_server_with_the_wrong_identity_is_refused_on_the_http_path(version: Version) {
    let ca = Ca::new();
    let app = http_app("web", Duration::ZERO, version).await;
    // Discovery says `web`; what answers there presents `other`, a certificate the
    // same CA issued.
    let impostor = impostor(&ca, "spiffe://cluster.local/ns/shop/sa/other", app).await;
    let client = client(&ca).await;
    client.resolver.set(
        SERVICE,
        known(vec![endpoint(impostor.addr, SERVER_ID)], "1"),
    );
    let mut http = HttpClient::connect(client.addr, version).await;
    for round in 1..=2 {
        assert_eq!(http.call("GET", Vec::new()).await.0, 502);
        // Each attempt's handshake was begun, and none completed.
        assert_eq!(impostor.begun.load(Ordering::SeqCst), 3 * round);
        assert_eq!(impostor.completed.load(Ordering::SeqCst), 0);
    }
    assert_eq!(
        sample_sum(
            &client.metrics.encode(),
            "tls_handshake_errors_total",
            &[("direction", "outbound")]
        ),
        6.0
    );
}

/// Requests on a connection whose Service has lost its endpoints are answered 503. (A
/// connection opened while the Service has none is not read as HTTP at all: the
/// outbound side fails it fast as TCP, with a reset.)
async fn a_destination_left_without_endpoints_answers_503(version: Version) {
    let (server, client, mut http) = web_pair(version).await;
    assert_eq!(http.call("GET", Vec::new()).await, (200, "web:0".into()));
    client.resolver.set(SERVICE, known(vec![], "2"));
    assert_eq!(http.call("GET", Vec::new()).await, (503, String::new()));
    assert_eq!(
        sample_sum(
            &client.metrics.encode(),
            "response_total",
            &[("status_code", "503"), ("classification", "failure")]
        ),
        1.0
    );
    // The same connection is served again once an endpoint is back.
    client
        .resolver
        .set(SERVICE, known(vec![endpoint(server.addr, SERVER_ID)], "3"));
    assert_eq!(http.call("GET", Vec::new()).await, (200, "web:0".into()));
}

/// Each scenario as two tests: `http1::<name>` and `http2::<name>`.
macro_rules! for_both_versions {
    ($($scenario:ident),* $(,)?) => {
        mod http1 {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(weft_proxy::http::Version::Http1).await;
            })*
        }
        mod http2 {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(weft_proxy::http::Version::Http2).await;
            })*
        }
    };
}

for_both_versions!(
    requests_on_one_connection_are_balanced_one_by_one,
    bodies_stream_both_ways_with_trailers,
    a_request_expecting_100_continue_goes_through,
    an_unreachable_endpoint_is_a_502_and_the_connection_lives_on,
    a_request_that_could_not_be_sent_goes_to_another_endpoint,
    a_shutdown_drains_the_requests_in_flight_then_closes,
    the_server_proxy_serves_each_request_and_counts_it_with_the_client_identity,
    a_refused_client_gets_403_naming_the_port_the_policy_and_itself,
    an_admitted_client_is_counted_by_the_rule_that_admitted_it,
    each_request_is_judged_by_the_policy_in_force_when_it_arrives,
    profile_routes_time_out_retry_and_are_counted,
    a_client_that_resets_mid_stream_costs_only_its_own_request,
    a_request_is_offered_to_three_endpoints_at_most_then_answered_502,
    a_retryable_route_retries_a_bodiless_request_three_times_at_most,
    a_server_with_the_wrong_identity_is_refused_on_the_http_path,
    a_destination_left_without_endpoints_answers_503,
);

#[tokio::test]
async fn an_http1_client_expecting_100_continue_hears_it_before_sending_the_body() {
    let ca = Ca::new();
    let app = http_app("web", Duration::ZERO, Version::Http1).await;
    let (_server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    let mut conn = TcpStream::connect(client.addr).await.unwrap();
    conn.write_all(
        format!("PUT /books HTTP/1.1\r\nhost: {HOST}\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let interim = read_until(&mut conn, b"\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    conn.write_all(b"hello").await.unwrap();
    let answer = read_until(&mut conn, b"web:5").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Reads from `conn` until `end` has been read; the peer ending the connection first,
/// or nothing for [`PATIENCE`], fails the test.
async fn read_until(conn: &mut TcpStream, end: &[u8]) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(end.len()).any(|w| w == end) {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{end:?} not within {PATIENCE:?}; got {got:?}"))
            .unwrap();
        assert!(n > 0, "the connection ended before {end:?}; got {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// An HTTP/1 application that accepts an upgrade or a CONNECT, then echoes raw bytes.
async fn upgrade_app() -> SocketAddr {
    serve_app(
        Version::Http1,
        |mut request: Request<Incoming>| async move {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
            if request.method() == http::Method::CONNECT {
                return Ok(Response::new(Channel::empty()));
            }
            let response = Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Channel::empty())
                .unwrap();
            Ok(response)
        },
    )
    .await
}

#[tokio::test]
async fn an_upgraded_http1_connection_becomes_a_tunnel_through_both_proxies() {
    let ca = Ca::new();
    let (_server, client) = meshed_pair(&ca, upgrade_app().await, InboundSettings::default()).await;
    let conn = TcpStream::connect(client.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    let request = Request::builder()
        .uri("/chat")
        .header("host", "web.shop.svc.cluster.local")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 101);
    let upgraded = hyper::upgrade::on(response).await.expect("upgraded");
    let mut tunnel = TokioIo::new(upgraded);
    tunnel.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut echo))
        .await
        .expect("the echo through the tunnel")
        .unwrap();
    assert_eq!(&echo, b"ping");
}

/// An HTTP/2 frame: its type, flags, stream and payload.
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The next frame from `conn`, acknowledging the peer's SETTINGS and PINGs on the
/// way (as any client must); `None` once the peer has closed the connection.
async fn next_h2_frame(conn: &mut TcpStream) -> Option<H2Frame> {
    let mut head = [0u8; 9];
    let read = tokio::time::timeout(PATIENCE, conn.read_exact(&mut head))
        .await
        .expect("a frame or the end of the connection");
    if matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof) {
        return None;
    }
    read.unwrap();
    let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; length];
    tokio::time::timeout(PATIENCE, conn.read_exact(&mut payload))
        .await
        .expect("a whole frame")
        .unwrap();
    let frame = H2Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    };
    if matches!(frame.kind, 4 | 6) && frame.flags & 1 == 0 {
        // SETTINGS or PING, not an acknowledgement: acknowledge it.
        let payload = if frame.kind == 6 {
            &frame.payload[..]
        } else {
            &[]
        };
        let _ = conn.write_all(&h2_frame(frame.kind, 1, 0, payload)).await;
    }
    Some(frame)
}

#[tokio::test]
async fn an_http2_client_gets_a_goaway_at_shutdown_and_its_request_in_flight_is_answered() {
    let ca = Ca::new();
    let (app, mut arrivals) = held_app(Version::Http2).await;
    let (_server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    let mut conn = TcpStream::connect(client.addr).await.unwrap();
    // The preface, empty SETTINGS, and `GET /` on stream 1 (HPACK: :method GET,
    // :scheme http, :path / from the static table; :authority as a literal).
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(4, 0, 0, &[]));
    let mut block = vec![0x82, 0x86, 0x84, 0x41, u8::try_from(HOST.len()).unwrap()];
    block.extend_from_slice(HOST.as_bytes());
    hello.extend(h2_frame(1, 0x4 | 0x1, 1, &block));
    conn.write_all(&hello).await.unwrap();

    let release = arrival(&mut arrivals).await;
    client.stop.send_replace(true);
    // A GOAWAY comes while the application still holds the request.
    loop {
        let frame = next_h2_frame(&mut conn)
            .await
            .expect("a GOAWAY before the connection ends");
        assert_ne!(frame.stream, 1, "an answer before the application gave one");
        if frame.kind == 7 {
            break;
        }
    }
    // Then the request in flight is answered in full, and the connection closed.
    release.send(()).unwrap();
    let (mut status, mut body, mut ended) = (None, Vec::new(), false);
    while let Some(frame) = next_h2_frame(&mut conn).await {
        if frame.stream != 1 {
            continue;
        }
        match frame.kind {
            // HPACK static index 8: `:status 200`.
            1 => status = frame.payload.first().copied(),
            0 => body.extend_from_slice(&frame.payload),
            _ => {}
        }
        ended |= frame.flags & 1 == 1;
    }
    assert_eq!(status, Some(0x88), "a 200");
    assert_eq!(body, b"held:0");
    assert!(ended, "the stream ended");
    tokio::time::timeout(PATIENCE, client.task)
        .await
        .expect("drained once its request was answered")
        .unwrap();
}

async fn grpc_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(conn, _)| conn);
        Some((accepted, listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(destination_server::DestinationServer::new(
                ScriptedDestination,
            ))
            .serve_with_incoming(incoming),
    );
    addr
}

#[tokio::test]
async fn grpc_unary_and_streaming_calls_keep_their_status_and_trailers() {
    let ca = Ca::new();
    let (server, client) = meshed_pair(&ca, grpc_app().await, InboundSettings::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", client.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = destination_client::DestinationClient::new(channel);
    tokio::time::timeout(PATIENCE, check_calls(&mut grpc))
        .await
        .unwrap_or_else(|_| panic!("the calls not answered within {PATIENCE:?}"))
        .unwrap();
    drop(grpc);

    // Classified by gRPC status, as the application saw it, on both sides: the call
    // that succeeded, and two that failed (a status in the headers of a
    // trailers-only response, and one in the trailers after three messages).
    for (metrics, direction) in [(&client.metrics, "outbound"), (&server.metrics, "inbound")] {
        let text = metrics.encode();
        let count = |classification| {
            sample_sum(
                &text,
                "response_total",
                &[
                    ("direction", direction),
                    ("status_code", "200"),
                    ("classification", classification),
                ],
            )
        };
        assert_eq!((count("success"), count("failure")), (1.0, 2.0), "{text}");
    }
}

#[tokio::test]
async fn a_refused_grpc_call_is_permission_denied_saying_why() {
    let ca = Ca::new();
    let app = grpc_app().await;
    let (server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    server.policies.set(allow(&[ADMIN], false));
    let port = app.port();
    let why = format!(
        "Weft denied the request: no authorization of port {port} \
         (serverauthorization/test) admits client {CLIENT_ID}."
    );

    // A meshed client's call, as its gRPC library sees it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", client.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = destination_client::DestinationClient::new(channel);
    let ack = weft_proxy_api::v1::AckRequest {
        pod: "web-1".into(),
        ..Default::default()
    };
    let status = tokio::time::timeout(PATIENCE, grpc.ack(ack))
        .await
        .unwrap_or_else(|_| panic!("the call not answered within {PATIENCE:?}"))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), why);
    assert_eq!(
        status.metadata().get("weft-authz").unwrap(),
        &format!("denied; server={port}; policy=serverauthorization/test; client={CLIENT_ID}")
    );

    // An unmeshed client's, on the wire: a trailers-only response (the status in
    // headers that end the stream), the message percent-encoded.
    let mut h2 = HttpClient::connect(server.addr, Version::Http2).await;
    let request = h2
        .request("POST", "/weft.proxy.v1.Destination/Ack")
        .header("content-type", "application/grpc+proto")
        .header("te", "trailers")
        .body(Channel::full(vec![0u8; 5]))
        .unwrap();
    let response = h2.send(request).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["grpc-status"], "7");
    assert_eq!(headers["content-type"], "application/grpc");
    let message = headers["grpc-message"].to_str().unwrap().to_string();
    assert_eq!(
        message,
        format!(
            "Weft denied the request: port {port} admits only meshed clients \
             (authorizations: serverauthorization/test), and this client has no mesh \
             identity."
        )
    );
    assert_eq!(
        headers["weft-authz"],
        format!("denied; server={port}; policy=serverauthorization/test; client=unauthenticated")
    );
    assert!(response.body().is_end_stream(), "a body after the status");
    let rest = response.into_body().collect().await.unwrap();
    assert!(
        rest.trailers().is_none(),
        "trailers after a trailers-only answer"
    );
    assert!(rest.to_bytes().is_empty());

    let text = server.metrics.encode();
    for client_id in [CLIENT_ID, "unauthenticated"] {
        let denied = [
            ("server", &*port.to_string()),
            ("authorization", "serverauthorization/test"),
            ("client_id", client_id),
        ];
        assert_eq!(
            sample_sum(&text, "inbound_http_authz_deny_total", &denied),
            1.0,
            "{client_id} in\n{text}"
        );
    }
    // Answered 200, a failure by its gRPC status.
    assert_eq!(
        sample_sum(
            &text,
            "response_total",
            &[
                ("direction", "inbound"),
                ("status_code", "200"),
                ("classification", "failure")
            ]
        ),
        2.0,
        "{text}"
    );
}

/// Sends `bytes` on a fresh connection to `proxy` and reads what comes back until the
/// proxy ends the connection (one it leaves open fails the test).
async fn answer_to(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    read_to_end_of(&mut conn).await.0
}

#[tokio::test]
async fn malformed_http_costs_its_own_connection_only() {
    let ca = Ca::new();
    let app = http_app("web", Duration::ZERO, Version::Http1).await;
    let (_server, client) = meshed_pair(&ca, app, InboundSettings::default()).await;
    let mut bystander = HttpClient::connect(client.addr, Version::Http1).await;
    assert_eq!(bystander.call("GET", Vec::new()).await.0, 200);

    // Oversized headers: 431.
    let mut huge = format!("GET /books HTTP/1.1\r\nhost: {HOST}\r\n");
    for i in 0..200 {
        huge.push_str(&format!("x-filler-{i}: {}\r\n", "y".repeat(64)));
    }
    huge.push_str("\r\n");
    let answer = answer_to(client.addr, huge.as_bytes()).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A header line that is not one: 400.
    let bad = format!("GET /books HTTP/1.1\r\nhost: {HOST}\r\nno colon here\r\n\r\n");
    let answer = answer_to(client.addr, bad.as_bytes()).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Invalid chunked encoding after a valid head: the head was already on its way
    // to an endpoint, the body it was forwarding fails, so the request fails there:
    // 502 (the application, which reads the whole body first, never answers it), and
    // the connection, whose framing is lost, is closed.
    let chunked = format!(
        "POST /books HTTP/1.1\r\nhost: {HOST}\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n"
    );
    let answer = answer_to(client.addr, chunked.as_bytes()).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 502"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // An HTTP/2 client whose first frame after the preface is garbage: a GOAWAY
    // (frame type 7) and the end of that connection.
    let mut garbage = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    garbage.extend_from_slice(&[0, 0, 3, 0xff, 0xff, 0, 0, 0, 1, 1, 2, 3]);
    garbage.extend_from_slice(&[0, 0, 8, 0x4, 0, 0, 0, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8]);
    let answer = answer_to(client.addr, &garbage).await;
    assert!(frame_types(&answer).contains(&7), "no GOAWAY in {answer:?}");

    // Everyone else is still served, and the failures were counted.
    assert_eq!(bystander.call("GET", Vec::new()).await.0, 200);
    let text = client.metrics.encode();
    assert!(
        has_sample(
            &text,
            "http_client_errors_total",
            &[("direction", "outbound")]
        ),
        "{text}"
    );
}

/// The types of the HTTP/2 frames in `bytes`, a server's side of a connection.
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        types.push(rest[3]);
        rest = &rest[(9 + length).min(rest.len())..];
    }
    types
}

#[tokio::test]
async fn a_connect_tunnel_passes_through_both_proxies() {
    let ca = Ca::new();
    let (_server, client) = meshed_pair(&ca, upgrade_app().await, InboundSettings::default()).await;
    let mut conn = TcpStream::connect(client.addr).await.unwrap();
    conn.write_all(b"CONNECT db.shop:5432 HTTP/1.1\r\nhost: db.shop:5432\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(&mut conn, b"\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    conn.write_all(b"through the tunnel").await.unwrap();
    let echo = read_until(&mut conn, b"tunnel").await;
    assert_eq!(echo, "through the tunnel");
}
