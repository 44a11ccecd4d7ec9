//! The client side of HTTP: each request of a client connection balanced on its own
//! over the destination's endpoints, its route's timeout, classification and retries
//! applied, sent on a pooled connection to the chosen endpoint (mTLS to a meshed one),
//! and counted; an upgrade joined as TCP once the endpoint accepts it.
//!
//! Inbound, each request is judged by the port's policy in force when it arrives
//! ([`Gate`]); a request the policy refuses is answered by the proxy, saying why
//! ([`Refusal`]): 403 with a `weft-authz` header
//! (`denied; server=<port>; policy=<rules or default:deny>; client=<SPIFFE id or
//! unauthenticated>`) and the same in a line of `text/plain`; a gRPC request (a
//! `content-type` of `application/grpc…`) gets a trailers-only 200 with
//! `grpc-status: 7` (PERMISSION_DENIED), that line percent-encoded in `grpc-message`,
//! and the same `weft-authz`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Body as _, Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use weft_proxy_api::v1::{Endpoint, Resolution};

use super::{
    Body, Pool, Version,
    body::{GrpcClassified, grpc_failed, is_grpc, status_only},
    pool::{Key, Sender, handshake},
};
use crate::{
    authz::Refusal,
    balance::{Balancer, Prepared, PreparedCache, label_endpoint},
    inbound::Gate,
    metrics::{Direction, HttpCounters, Metrics, RouteLabels, TcpLabels},
    profile::Budget,
    tls::{ALPN_HTTP, Tls},
    transport,
};

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

/// Where one client connection's requests go.
#[derive(Debug)]
pub struct Destination {
    /// The labels every request and response of the connection is counted with:
    /// outbound, its direction and authority (each endpoint adds its own); inbound,
    /// also the client's identity and `tls`.
    pub labels: TcpLabels,
    /// Inbound: what judges each request by the port's policy (and counts it in the
    /// client's `inbound_http_authz_*`); a refused request is answered by the proxy
    /// with why. `None` outbound.
    pub authz: Option<Arc<Gate>>,
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

impl Destination {
    pub(super) async fn proxy(&self, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        if let Some(Err(refusal)) = self.authz.as_ref().map(|gate| gate.request()) {
            let counters = self.own_counters();
            counters.request();
            return self.refuse(&counters, started, &refusal, is_grpc(request.headers()));
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

            // A kept connection serves only what it was made for: plaintext is never
            // reused for an endpoint that now has an identity, nor the other way round.
            let key = Key {
                addr,
                identity: identity.map(str::to_string),
                tls: identity.is_some() && self.tls.is_some(),
            };
            let sender = match self.pool.checkout(&key, version) {
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
                self.pool.checkin(key, sender);
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
        // The inbound side's application is reached like any inbound connection (from
        // the passthrough source), an outbound endpoint like any outbound one.
        let direction = self.labels.direction.unwrap_or(Direction::Outbound);
        let tcp = transport::connect(addr, direction, &self.metrics).await?;
        match (identity, &self.tls) {
            (Some(identity), Some(tls)) => {
                let tls =
                    transport::connect_mtls(tls, tcp, identity, ALPN_HTTP, &self.metrics).await?;
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

    /// The proxy's answer to a refused client's request: 403 with the refusal in a
    /// `weft-authz` header and in words; to a `grpc` request, a trailers-only 200 with
    /// `grpc-status: 7` and the words in `grpc-message`. Counted like the endpoint's
    /// answer would be (the gRPC one a failure).
    fn refuse(
        &self,
        counters: &HttpCounters,
        started: Instant,
        refusal: &Refusal,
        grpc: bool,
    ) -> Response<Body> {
        counters.latency(started.elapsed());
        let message = refusal.message();
        let mut response = if grpc {
            counters.response(&self.metrics, 200, true);
            let mut response = status_only(StatusCode::OK);
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(
                "grpc-status",
                HeaderValue::from_static(GRPC_PERMISSION_DENIED),
            );
            headers.insert(
                "grpc-message",
                header_value(&grpc_percent_encoded(&message)),
            );
            response
        } else {
            counters.response(&self.metrics, 403, false);
            let mut response = Response::new(Body::Full(Full::new(Bytes::from(message + "\n"))));
            *response.status_mut() = StatusCode::FORBIDDEN;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        };
        response
            .headers_mut()
            .insert(AUTHZ_HEADER, header_value(&refusal.header()));
        response
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
                    label_endpoint(&mut labels, endpoint, self.tls.is_some());
                }
                Arc::new(self.metrics.http_counters(&labels))
            })
            .clone()
    }
}

/// The header a refused request's answer explains the refusal in.
pub const AUTHZ_HEADER: &str = "weft-authz";
/// gRPC's PERMISSION_DENIED.
const GRPC_PERMISSION_DENIED: &str = "7";

/// `text` as a header value; text that cannot be one (it has been made visible ASCII
/// before, so never) reads `denied`.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("denied"))
}

/// `text` percent-encoded as gRPC's `grpc-message` requires: every byte outside
/// printable ASCII (space to `~`), and `%` itself, as `%XX`.
fn grpc_percent_encoded(text: &str) -> String {
    use std::fmt::Write as _;
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (b' '..=b'~').contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            // Writing into a String cannot fail.
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
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

/// Joins an upgraded client connection with the upgraded endpoint connection.
async fn join_upgraded(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(server)) = (client.await, server.await) else {
        tracing::debug!("an upgrade did not complete");
        return;
    };
    let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

#[cfg(test)]
mod tests {
    use super::grpc_percent_encoded;

    #[test]
    fn grpc_messages_are_percent_encoded_outside_printable_ascii() {
        assert_eq!(grpc_percent_encoded("port 80: denied."), "port 80: denied.");
        assert_eq!(grpc_percent_encoded("100% é\n"), "100%25 %C3%A9%0A");
    }
}
