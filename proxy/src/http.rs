//! HTTP on the outbound side: each request of a client connection, HTTP/1 or HTTP/2
//! (gRPC included), is balanced on its own over the destination's endpoints, sent on a
//! pooled connection to the chosen endpoint (mTLS to a meshed one) in the version the
//! client spoke, and counted.
//!
//! The latency of each response's head feeds the endpoint's peak-EWMA estimate, so a
//! slow endpoint gets fewer requests. A destination with no endpoint answers 503. A
//! request that could not be sent (the endpoint refused the connection, or a kept
//! connection had closed) goes to another endpoint, up to three in all, then
//! 502; one that was sent is never sent again.
//!
//! An upgrade (WebSocket) and CONNECT pass through: once the endpoint answers 101 (a
//! CONNECT, 2xx), both connections are joined as TCP.
//!
//! HTTP/1 connections to an endpoint are kept for reuse (at most
//! [`MAX_IDLE_PER_ENDPOINT`]); a connection still busy with a response is skipped,
//! never shared. HTTP/2 needs one connection per endpoint: its requests are
//! multiplexed on it. Bodies and trailers stream through as they come.
//!
//! Inbound, HTTP/2 is served the same way, to the application; HTTP/1 is relayed as
//! it came, read only to be counted ([`inbound`]).

pub mod framing;
pub mod inbound;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{
    body::{Body as _, Bytes, Frame, Incoming, SizeHint},
    client::conn::{TrySendError, http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use weft_proxy_api::v1::{Endpoint, Resolution};

use crate::{
    balance::{Balancer, InFlight},
    metrics::{Direction, HttpCounters, Metrics, RouteLabels, TcpLabels},
    profile::{Budget, Routes},
    tls::{ALPN_HTTP, Tls},
};

/// The most idle connections kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 32;
/// How many endpoints a request is offered to, when connecting to one fails or a kept
/// connection closes before the request went out on it (it is then safe to resend,
/// whatever its method).
const ATTEMPTS: u32 = 3;
/// The most times a route's failed request is sent again (the retry budget may
/// allow fewer).
const MAX_RETRIES: u32 = 3;
/// The latency charged to an endpoint that could not be reached, so the balancer
/// avoids it until the estimate decays.
const UNREACHABLE_PENALTY: Duration = Duration::from_secs(1);
/// The most endpoints whose connections are kept.
const MAX_POOLED_ENDPOINTS: usize = 1024;

/// A body as it came (a request's, a response's), one the proxy made, or a gRPC
/// response's, classified by the status in its trailers when it ends.
#[derive(Debug)]
pub enum Body {
    Incoming(Incoming),
    Full(Full<Bytes>),
    Grpc(GrpcClassified),
}

impl Body {
    fn empty() -> Self {
        Self::Full(Full::new(Bytes::new()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Incoming(body) => Pin::new(body).poll_frame(cx),
            Self::Full(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Self::Grpc(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Incoming(body) => body.is_end_stream(),
            Self::Full(body) => body.is_end_stream(),
            Self::Grpc(body) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Incoming(body) => body.size_hint(),
            Self::Full(body) => body.size_hint(),
            Self::Grpc(body) => body.inner.size_hint(),
        }
    }
}

/// A gRPC response body: when it ends, its response is counted, a failure unless the
/// trailers say `grpc-status: 0` (a body that ends without them, fails, or is
/// dropped unfinished, failed too).
pub struct GrpcClassified {
    inner: Incoming,
    record: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl std::fmt::Debug for GrpcClassified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcClassified").finish_non_exhaustive()
    }
}

impl GrpcClassified {
    fn finish(&mut self, failed: bool) {
        if let Some(record) = self.record.take() {
            record(failed);
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.finish(grpc_failed(trailers) != Some(false));
                }
            }
            Poll::Ready(Some(Err(_)) | None) => self.finish(true),
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for GrpcClassified {
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// Whether `headers` (a gRPC response's trailers, or the headers of a
/// trailers-only response) carry a failing status; `None` without one.
fn grpc_failed(headers: &http::HeaderMap) -> Option<bool> {
    headers.get("grpc-status").map(|status| status != "0")
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// The HTTP versions the proxy serves, each kept as it is to the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

/// A connection to an endpoint, ready to carry requests.
enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    /// Sends `request`; on failure, the request comes back if it was not sent.
    async fn send(
        &mut self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        match self {
            Self::Http1(sender) => sender.try_send_request(request).await,
            Self::Http2(sender) => sender.try_send_request(request).await,
        }
    }
}

/// Connections to endpoints, for reuse. Shared by every client connection.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>,
    multiplexed: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// A connection to `addr` in `version` ready for a request, if one is kept.
    fn checkout(&self, addr: SocketAddr, version: Version) -> Option<Sender> {
        if version == Version::Http2 {
            let mut multiplexed = self.multiplexed.lock().unwrap_or_else(|e| e.into_inner());
            let sender = multiplexed.get(&addr)?;
            if sender.is_closed() {
                multiplexed.remove(&addr);
                return None;
            }
            return Some(Sender::Http2(sender.clone()));
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let senders = idle.get_mut(&addr)?;
        senders.retain(|s| !s.is_closed());
        let ready = senders.iter().position(http1::SendRequest::is_ready)?;
        Some(Sender::Http1(senders.swap_remove(ready)))
    }

    /// Keeps `sender` for the next request to `addr` (an HTTP/1 one becomes ready
    /// once the response in flight on it is done).
    fn checkin(&self, addr: SocketAddr, sender: Sender) {
        match sender {
            Sender::Http1(sender) => {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() >= MAX_POOLED_ENDPOINTS && !idle.contains_key(&addr) {
                    idle.clear();
                }
                let senders = idle.entry(addr).or_default();
                senders.retain(|s| !s.is_closed());
                if senders.len() < MAX_IDLE_PER_ENDPOINT {
                    senders.push(sender);
                }
            }
            Sender::Http2(sender) => {
                let mut multiplexed = self.multiplexed.lock().unwrap_or_else(|e| e.into_inner());
                if multiplexed.len() >= MAX_POOLED_ENDPOINTS && !multiplexed.contains_key(&addr) {
                    multiplexed.clear();
                }
                multiplexed.insert(addr, sender);
            }
        }
    }
}

/// Where one client connection's requests go.
#[derive(Debug)]
pub struct Destination {
    /// The labels every request and response of the connection is counted with:
    /// outbound, its direction and authority (each endpoint adds its own); inbound,
    /// also the client's identity and `tls`.
    pub labels: TcpLabels,
    /// Every request is answered 403: the port's policy does not let the client in.
    pub forbidden: bool,
    /// The resolution prepared for requests, shared by the destination's connections.
    pub prepared: Arc<PreparedCache>,
    pub resolution: watch::Receiver<Option<Arc<Resolution>>>,
    pub balancer: Arc<Balancer>,
    pub pool: Arc<Pool>,
    pub tls: Option<Tls>,
    pub metrics: Arc<Metrics>,
    pub counters: ConnectionCounters,
}

/// The HTTP counters a connection's requests are counted with, looked up once: per
/// endpoint of the resolution they were sent from (each endpoint labels its own), and
/// for the proxy's own answers (the connection's labels alone).
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    own: OnceLock<Arc<HttpCounters>>,
    endpoints: Mutex<Option<(Arc<Prepared>, EndpointSlots)>>,
}

/// One slot per usable endpoint of a [`Prepared`] resolution, filled on first use.
type EndpointSlots = Vec<Option<Arc<HttpCounters>>>;

/// Serves the client connection `io` (an application's, outbound; a peer proxy's or an
/// unmeshed client's, inbound), which speaks `version`, sending each request to an
/// endpoint of `destination`. Once `shutdown` turns true the connection is drained:
/// requests in flight are answered, then it is closed (HTTP/1 after the response in
/// progress, HTTP/2 with a GOAWAY).
pub async fn serve<I>(
    io: I,
    version: Version,
    destination: Arc<Destination>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = destination.metrics.clone();
    let direction = destination.labels.direction.unwrap_or(Direction::Outbound);
    let service = hyper::service::service_fn(move |request| {
        let destination = destination.clone();
        async move { Ok::<_, Infallible>(destination.proxy(request).await) }
    });
    let stopping = async move {
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            // No one will ever ask: serve on.
            std::future::pending::<()>().await;
        }
    };
    // Serves `$connection` until it ends, draining it once `stopping` is done.
    macro_rules! drained {
        ($connection:expr) => {{
            let mut connection = std::pin::pin!($connection);
            tokio::select! {
                served = connection.as_mut() => served,
                () = stopping => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }};
    }
    let served = match version {
        Version::Http1 => drained!(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades()
        ),
        Version::Http2 => drained!(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), service)
        ),
    };
    if let Err(error) = served {
        // A malformed HTTP/1 request gets its 400 from hyper, malformed HTTP/2 a
        // GOAWAY; a client that went away mid-message gets nothing.
        tracing::debug!(%error, ?version, "HTTP client connection ended");
        if !error.is_incomplete_message() && !error.is_canceled() {
            metrics.http_client_error(direction);
        }
    }
}

impl Destination {
    async fn proxy(&self, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        if self.forbidden {
            let counters = self.own_counters();
            counters.request();
            return self.answer(&counters, started, StatusCode::FORBIDDEN);
        }
        let prepared = self.prepared();
        let routes = &prepared.routes;
        let Some(route) = routes.route(request.method(), request.uri().path()) else {
            return self.forward(request.map(Body::Incoming), started).await;
        };
        let labels = RouteLabels {
            dst: self.labels.authority.clone().unwrap_or_default(),
            rt_route: route.name.clone(),
        };
        self.metrics.route_request(&labels);
        let budget = routes.budget();
        if let Some(budget) = budget {
            budget.deposit();
        }
        // A request without a body can be sent again exactly as it came.
        let replay = (route.retryable && budget.is_some() && request.body().is_end_stream())
            .then(|| head_of(&request));
        let deadline = route.timeout.map(|timeout| started + timeout);
        let mut request = request.map(Body::Incoming);
        let mut retries = 0;
        loop {
            self.metrics.route_attempt(&labels);
            let forwarded = self.forward(request, started);
            let response = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), forwarded)
                    .await
                    .unwrap_or_else(|_| status_only(StatusCode::GATEWAY_TIMEOUT)),
                None => forwarded.await,
            };
            let status = response.status().as_u16();
            let failed = route.is_failure(status);
            if let Some(again) = replay.as_ref().filter(|_| failed && retries < MAX_RETRIES)
                && budget.is_some_and(Budget::withdraw)
            {
                retries += 1;
                request = head_of(again).map(|()| Body::empty());
                continue;
            }
            self.metrics
                .route_response(&labels, status, failed, started.elapsed());
            return response;
        }
    }

    /// The current resolution, prepared for requests.
    fn prepared(&self) -> Arc<Prepared> {
        let resolution = self.resolution.borrow().clone().unwrap_or_default();
        self.prepared.get(resolution)
    }

    /// Sends `request` to an endpoint (another one when it could not be sent) and
    /// returns the response head, counted.
    async fn forward(&self, mut request: Request<Body>, started: Instant) -> Response<Body> {
        let version = if request.version() == http::Version::HTTP_2 {
            Version::Http2
        } else {
            Version::Http1
        };
        let connect = request.method() == Method::CONNECT;
        let upgrading = connect || request.headers().contains_key(header::UPGRADE);
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
        let mut attempt = 1;
        loop {
            let prepared = self.prepared();
            let Some((index, addr, endpoint, in_flight)) = prepared.pick(&self.balancer) else {
                let counters = self.own_counters();
                counters.request();
                return self.answer(&counters, started, StatusCode::SERVICE_UNAVAILABLE);
            };
            let counters = self.endpoint_counters(&prepared, index, endpoint);
            let identity = Some(endpoint.identity.as_str())
                .filter(|i| !i.is_empty() && self.labels.direction == Some(Direction::Outbound));

            let sender = match self.pool.checkout(addr, version) {
                Some(sender) => Some(sender),
                None => self.connect(addr, identity, version).await,
            };
            let Some(mut sender) = sender else {
                // Never sent: another endpoint may take it, whatever the method.
                in_flight.load().observe(UNREACHABLE_PENALTY);
                if attempt < ATTEMPTS {
                    attempt += 1;
                    continue;
                }
                counters.request();
                return self.answer(&counters, started, StatusCode::BAD_GATEWAY);
            };
            counters.request();
            let mut response = match sender.send(request).await {
                Ok(response) => response,
                Err(mut error) => match error.take_message() {
                    // A kept connection closed before the request went out on it.
                    Some(unsent) if attempt < ATTEMPTS => {
                        tracing::debug!(%addr, error = %error.error(), "resending a request that was not sent");
                        request = unsent;
                        attempt += 1;
                        continue;
                    }
                    _ => {
                        tracing::debug!(%addr, error = %error.error(), "the endpoint failed the request");
                        return self.answer(&counters, started, StatusCode::BAD_GATEWAY);
                    }
                },
            };
            in_flight.load().observe(started.elapsed());
            drop(in_flight);
            let tunnel = response.status() == StatusCode::SWITCHING_PROTOCOLS
                || (connect && response.status().is_success());
            if tunnel {
                if let Some(client_upgrade) = client_upgrade {
                    let server_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(join_upgraded(client_upgrade, server_upgrade));
                }
            } else {
                self.pool.checkin(addr, sender);
            }
            let status = response.status().as_u16();
            counters.latency(started.elapsed());
            if !is_grpc(response.headers()) {
                counters.response(&self.metrics, status, status >= 500);
                return response.map(Body::Incoming);
            }
            // gRPC: the status in the trailers decides (in the headers, for a
            // response that is only trailers).
            if let Some(failed) = grpc_failed(response.headers()) {
                counters.response(&self.metrics, status, failed);
                return response.map(Body::Incoming);
            }
            let metrics = self.metrics.clone();
            let record = Box::new(move |failed| counters.response(&metrics, status, failed));
            return response.map(|inner| {
                Body::Grpc(GrpcClassified {
                    inner,
                    record: Some(record),
                })
            });
        }
    }

    /// A connection to the endpoint `addr` speaking `version`, over mTLS when the
    /// endpoint has an identity.
    async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        version: Version,
    ) -> Option<Sender> {
        let tcp = crate::tcp::connect(addr, Direction::Outbound, &self.metrics).await?;
        match (identity, &self.tls) {
            (Some(identity), Some(tls)) => {
                let tls =
                    crate::tcp::connect_mtls(tls, tcp, identity, ALPN_HTTP, &self.metrics).await?;
                handshake(tls, version).await
            }
            _ => handshake(tcp, version).await,
        }
    }

    /// An answer of the proxy's own, counted like the endpoint's would be.
    fn answer(
        &self,
        counters: &HttpCounters,
        started: Instant,
        status: StatusCode,
    ) -> Response<Body> {
        counters.latency(started.elapsed());
        counters.response(&self.metrics, status.as_u16(), status.is_server_error());
        status_only(status)
    }

    /// The counters of the proxy's own answers (403, 503): the connection's labels.
    fn own_counters(&self) -> Arc<HttpCounters> {
        let own = &self.counters.own;
        own.get_or_init(|| Arc::new(self.metrics.http_counters(&self.labels)))
            .clone()
    }

    /// The counters of requests sent to `endpoint`, the `index`th of `prepared`
    /// (outbound, labelled with its identity and workload).
    fn endpoint_counters(
        &self,
        prepared: &Arc<Prepared>,
        index: usize,
        endpoint: &Endpoint,
    ) -> Arc<HttpCounters> {
        let mut cached = self
            .counters
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let slots = match &mut *cached {
            Some((current, slots)) if Arc::ptr_eq(current, prepared) => slots,
            stale => {
                &mut stale
                    .insert((prepared.clone(), vec![None; prepared.weighted.len()]))
                    .1
            }
        };
        slots[index]
            .get_or_insert_with(|| {
                let mut labels = self.labels.clone();
                if labels.direction == Some(Direction::Outbound) {
                    crate::tcp::label_endpoint(&mut labels, endpoint, self.tls.is_some());
                }
                Arc::new(self.metrics.http_counters(&labels))
            })
            .clone()
    }
}

/// A resolution as requests use it, prepared once: its endpoints' addresses parsed
/// (with their weights, for the balancer) and its profile's routes compiled.
#[derive(Debug)]
pub struct Prepared {
    resolution: Arc<Resolution>,
    /// The endpoints whose address parses, and their weights.
    weighted: Vec<(SocketAddr, u32)>,
    /// The index in `resolution.endpoints` of each of `weighted`.
    indices: Vec<usize>,
    routes: Routes,
}

impl Prepared {
    /// An endpoint chosen by `balancer`: its index among the usable endpoints, its
    /// address, its entry in the resolution, and the in-flight mark to feed the
    /// balancer; `None` without a usable endpoint.
    pub fn pick(&self, balancer: &Balancer) -> Option<(usize, SocketAddr, &Endpoint, InFlight)> {
        let (chosen, in_flight) = balancer.pick(&self.weighted)?;
        let endpoint = &self.resolution.endpoints[self.indices[chosen]];
        Some((chosen, self.weighted[chosen].0, endpoint, in_flight))
    }

    /// The addresses of the usable endpoints.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.weighted.iter().map(|(addr, _)| *addr).collect()
    }
}

/// The latest [`Prepared`] resolution of one destination. Discovery hands every
/// follower of a destination the same `Arc` for one update, so a resolution is
/// prepared once per update, whatever the number of connections and requests.
#[derive(Debug, Default)]
pub struct PreparedCache(Mutex<Option<Arc<Prepared>>>);

impl PreparedCache {
    /// `resolution`, prepared (again only when it is a new one).
    pub fn get(&self, resolution: Arc<Resolution>) -> Arc<Prepared> {
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prepared) = cached.as_ref()
            && Arc::ptr_eq(&prepared.resolution, &resolution)
        {
            return prepared.clone();
        }
        let endpoints = crate::tcp::endpoint_addrs(&resolution);
        let prepared = Arc::new(Prepared {
            weighted: endpoints.iter().map(|(a, w, _)| (*a, *w)).collect(),
            indices: endpoints.iter().map(|(_, _, i)| *i).collect(),
            routes: Routes::compile(resolution.profile.as_ref()),
            resolution,
        });
        *cached = Some(prepared.clone());
        prepared
    }
}

/// The head of `request` (method, URI, version, headers), without its body.
fn head_of<B>(request: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.version_mut() = request.version();
    *head.headers_mut() = request.headers().clone();
    head
}

/// An empty response with `status`.
fn status_only(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// Starts an HTTP connection in `version` on `io`, driven by a task of its own.
async fn handshake<I>(io: I, version: Version) -> Option<Sender>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let started = match version {
        Version::Http1 => http1::handshake(io).await.map(|(sender, connection)| {
            tokio::spawn(async move {
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%error, "HTTP/1 connection to the endpoint ended");
                }
            });
            Sender::Http1(sender)
        }),
        Version::Http2 => {
            http2::handshake(TokioExecutor::new(), io)
                .await
                .map(|(sender, connection)| {
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%error, "HTTP/2 connection to the endpoint ended");
                        }
                    });
                    Sender::Http2(sender)
                })
        }
    };
    started
        .inspect_err(
            |error| tracing::debug!(%error, ?version, "handshake with the endpoint failed"),
        )
        .ok()
}

/// Joins an upgraded client connection with the upgraded endpoint connection.
async fn join_upgraded(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(server)) = (client.await, server.await) else {
        tracing::debug!("an upgrade did not complete");
        return;
    };
    let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
