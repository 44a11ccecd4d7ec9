//! The proxy's Prometheus metrics, served on the admin port's `/metrics`.
//!
//! Names follow Linkerd's proxy where the concept is the same, so dashboards port.
//!
//! Inbound authorization is counted per connection (`inbound_tcp_authz_allow_total`,
//! `inbound_tcp_authz_deny_total`: every connection is judged once, whatever it
//! carries) and per HTTP request on those connections (`inbound_http_authz_allow_total`,
//! `inbound_http_authz_deny_total`), each labelled ([`AuthzLabels`]) `server` (the
//! port), `authorization` (the rule that admitted the client; for a denial, the policy
//! that refused it: its rules' names, comma-separated, `default:deny`, or `unknown`
//! when the port's policy was not known in time), `client_id` (the client's SPIFFE id,
//! or `unauthenticated`) and `mode` (`enforce`, or `audit` for a policy in audit mode,
//! whose would-be denials are counted in `..._deny_total{mode="audit"}` and let
//! through); see [`authz`] for those families. Their cardinality is
//! bounded: each of these families labels at most [`MAX_AUTHZ_CLIENT_IDS`] distinct
//! client ids and [`MAX_AUTHZ_SERVERS`] distinct ports, and counts any further one
//! as `client_id="other"` / `server="other"`, so neither many identities nor a scan of
//! the pod's ports grows the proxy's memory or its `/metrics` without bound.

pub mod authz;

use std::{
    collections::HashSet,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{
        EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder, text::encode,
    },
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use self::authz::Authz;
pub use self::authz::{
    AUTHZ_OTHER, AuthzLabels, MAX_AUTHZ_CLIENT_IDS, MAX_AUTHZ_SERVERS, Mode, Verdict,
};

/// Labels of `proxy_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Labels of `identity_cert_refresh_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    result: &'static str,
}

/// Labels of `outbound_resolve_failed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Which side of the pod a connection came from: the `direction` label, `inbound` or
/// `outbound`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// To the pod's application, from outside.
    Inbound,
    /// From the pod's application, to elsewhere.
    Outbound,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        })
    }
}

/// The most distinct label sets of the `tcp_*` family; beyond, a connection's peer
/// labels read `overflow`, so no peer can grow the proxy's memory through them.
pub const MAX_TCP_LABEL_SETS: usize = 512;

/// Labels of the `tcp_*` metrics: the direction, whether the connection between
/// proxies was mTLS, and who is on the other side. Unset labels are left out.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct TcpLabels {
    pub direction: Option<Direction>,
    /// `true` (mTLS between proxies), `false`, or `no_identity` (the peer is meshed
    /// but this proxy has no certificate yet).
    pub tls: Option<&'static str>,
    /// Inbound: the client proxy's SPIFFE id.
    pub client_id: Option<String>,
    /// Outbound: the server proxy's SPIFFE id.
    pub server_id: Option<String>,
    /// Outbound: where the application connected (`ip:port`).
    pub authority: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_workload: Option<String>,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeLabel as _;
        if let Some(direction) = self.direction {
            ("direction", direction).encode(encoder.encode_label())?;
        }
        if let Some(tls) = self.tls {
            ("tls", tls).encode(encoder.encode_label())?;
        }
        for (key, value) in [
            ("client_id", &self.client_id),
            ("server_id", &self.server_id),
            ("authority", &self.authority),
            ("dst_namespace", &self.dst_namespace),
            ("dst_workload", &self.dst_workload),
        ] {
            if let Some(value) = value {
                (key, value.as_str()).encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

impl TcpLabels {
    pub fn new(direction: Direction) -> Self {
        Self {
            direction: Some(direction),
            ..Self::default()
        }
    }
}

/// Labels of `response_total`: the request's, the status and its classification.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ResponseLabels {
    request: TcpLabels,
    status_code: u16,
    /// `success`, or `failure` for a 5xx (gRPC: a `grpc-status` other than 0).
    classification: &'static str,
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeLabel as _;
        self.request.encode(encoder)?;
        ("status_code", self.status_code).encode(encoder.encode_label())?;
        ("classification", self.classification).encode(encoder.encode_label())
    }
}

/// The buckets of `response_latency_ms`, Linkerd's.
const LATENCY_BUCKETS_MS: [f64; 20] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

/// Labels of the `route_*` metrics: the destination (`ip:port`) and the
/// ServiceProfile route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub dst: String,
    pub rt_route: String,
}

/// Labels of `route_response_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResponseLabels {
    dst: String,
    rt_route: String,
    status_code: u16,
    classification: &'static str,
}

/// The `tcp_*` family, per direction.
#[derive(Debug, Default)]
struct Tcp {
    open: Family<TcpLabels, Counter>,
    close: Family<TcpLabels, Counter>,
    open_connections: Family<TcpLabels, Gauge>,
    read_bytes: Family<TcpLabels, Counter>,
    write_bytes: Family<TcpLabels, Counter>,
    connect_errors: Family<TcpLabels, Counter>,
}

/// Every metric of the proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cert_expiration: Gauge<i64>,
    cert_refreshes: Family<RefreshLabels, Counter>,
    tcp: Tcp,
    tcp_label_sets: Mutex<HashSet<TcpLabels>>,
    authz: Authz,
    /// Each refusal's port, client and time, for the denial report.
    denials: crate::denials::Denials,
    tls_errors: Family<TcpLabels, Counter>,
    detect_errors: Counter,
    resolve_failures: Family<ReasonLabels, Counter>,
    http_errors: Family<TcpLabels, Counter>,
    route_requests: Family<RouteLabels, Counter>,
    route_actual_requests: Family<RouteLabels, Counter>,
    route_responses: Family<RouteResponseLabels, Counter>,
    route_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    requests: Family<TcpLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<TcpLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();

        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("proxy_build_info", "The proxy's version", build);

        let start = Gauge::<i64>::default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        start.set(i64::try_from(now).unwrap_or(i64::MAX));
        registry.register(
            "process_start_time_seconds",
            "When the proxy started, in seconds since the epoch",
            start,
        );

        let cert_expiration = Gauge::<i64>::default();
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's current certificate expires, in seconds since the epoch",
            cert_expiration.clone(),
        );
        let cert_refreshes = Family::<RefreshLabels, Counter>::default();
        registry.register(
            "identity_cert_refresh",
            "Certification attempts, by result",
            cert_refreshes.clone(),
        );
        let tcp = Tcp::default();
        registry.register(
            "tcp_open",
            "Connections forwarded (the proxy reached their destination)",
            tcp.open.clone(),
        );
        registry.register(
            "tcp_close",
            "Forwarded connections closed",
            tcp.close.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "Forwarded connections open now",
            tcp.open_connections.clone(),
        );
        registry.register(
            "tcp_read_bytes",
            "Bytes read from the side that opened the connection",
            tcp.read_bytes.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to the side that opened the connection",
            tcp.write_bytes.clone(),
        );
        registry.register(
            "tcp_connect_errors",
            "Captured connections whose destination could not be reached",
            tcp.connect_errors.clone(),
        );
        let authz = Authz::register(&mut registry);
        let tls_errors = Family::<TcpLabels, Counter>::default();
        registry.register(
            "tls_handshake_errors",
            "TLS handshakes between proxies that failed",
            tls_errors.clone(),
        );
        let detect_errors = Counter::default();
        registry.register(
            "protocol_detect_errors",
            "Connections that failed while their protocol was being detected",
            detect_errors.clone(),
        );
        let resolve_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "outbound_resolve_failed",
            "Outbound connections closed because their destination could not be resolved \
             (reason: timeout, limit), rather than sent in plaintext to what could be a \
             meshed pod",
            resolve_failures.clone(),
        );
        let http_errors = Family::<TcpLabels, Counter>::default();
        registry.register(
            "http_client_errors",
            "HTTP client connections that ended in a protocol error (malformed HTTP/1, \
             invalid HTTP/2 frames)",
            http_errors.clone(),
        );
        let route_requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "route_request",
            "HTTP requests to a ServiceProfile route, as the application sent them",
            route_requests.clone(),
        );
        let route_actual_requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "route_actual_request",
            "HTTP requests to a ServiceProfile route sent to endpoints, retries included",
            route_actual_requests.clone(),
        );
        let route_responses = Family::<RouteResponseLabels, Counter>::default();
        registry.register(
            "route_response",
            "Responses on a ServiceProfile route, classified by its response classes",
            route_responses.clone(),
        );
        let route_latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "route_response_latency_ms",
            "Time from a route's request to the response head the application got, \
             retries included, in milliseconds",
            route_latency.clone(),
        );
        let requests = Family::<TcpLabels, Counter>::default();
        registry.register(
            "request",
            "HTTP requests the proxy sent on",
            requests.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "response",
            "HTTP responses, by status and classification",
            responses.clone(),
        );
        let latency: Family<TcpLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "response_latency_ms",
            "Time from a request to its response's head, in milliseconds",
            latency.clone(),
        );
        Self {
            registry,
            cert_expiration,
            cert_refreshes,
            tcp,
            requests,
            responses,
            latency,
            tcp_label_sets: Mutex::default(),
            authz,
            denials: crate::denials::Denials::default(),
            tls_errors,
            detect_errors,
            resolve_failures,
            http_errors,
            route_requests,
            route_actual_requests,
            route_responses,
            route_latency,
        }
    }

    /// `labels`, or its overflow form once [`MAX_TCP_LABEL_SETS`] are in use.
    fn bounded(&self, labels: &TcpLabels) -> TcpLabels {
        let mut seen = self
            .tcp_label_sets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if seen.contains(labels) {
            return labels.clone();
        }
        if seen.len() < MAX_TCP_LABEL_SETS {
            seen.insert(labels.clone());
            return labels.clone();
        }
        let overflow = |v: &Option<String>| v.as_ref().map(|_| "overflow".to_string());
        TcpLabels {
            direction: labels.direction,
            tls: labels.tls,
            client_id: overflow(&labels.client_id),
            server_id: overflow(&labels.server_id),
            authority: overflow(&labels.authority),
            dst_namespace: overflow(&labels.dst_namespace),
            dst_workload: overflow(&labels.dst_workload),
        }
    }

    /// Records a connection forwarded to its destination; returns the labels to close
    /// it with.
    pub fn tcp_opened(&self, labels: &TcpLabels) -> TcpLabels {
        let labels = self.bounded(labels);
        self.tcp.open.get_or_create(&labels).inc();
        self.tcp.open_connections.get_or_create(&labels).inc();
        labels
    }

    /// Records a forwarded connection's end, with the bytes read from and written to
    /// the side that opened it.
    pub fn tcp_closed(&self, labels: &TcpLabels, read: u64, written: u64) {
        self.tcp.close.get_or_create(labels).inc();
        self.tcp.open_connections.get_or_create(labels).dec();
        self.tcp.read_bytes.get_or_create(labels).inc_by(read);
        self.tcp.write_bytes.get_or_create(labels).inc_by(written);
    }

    /// Records a captured connection whose destination could not be reached.
    pub fn tcp_connect_failed(&self, direction: Direction) {
        self.tcp
            .connect_errors
            .get_or_create(&TcpLabels::new(direction))
            .inc();
    }

    /// Each refusal's port, client and time, for the denial report.
    pub fn denials(&self) -> &crate::denials::Denials {
        &self.denials
    }

    /// Records a failed TLS handshake between proxies.
    pub fn tls_failed(&self, direction: Direction) {
        self.tls_errors
            .get_or_create(&TcpLabels::new(direction))
            .inc();
    }

    /// The HTTP metrics of requests counted with `labels` (bounded like the `tcp_*`
    /// family), looked up once for a connection's requests.
    pub fn http_counters(&self, labels: &TcpLabels) -> HttpCounters {
        let labels = self.bounded(labels);
        HttpCounters {
            requests: self.requests.get_or_create(&labels).clone(),
            authz: None,
            latency: self.latency.get_or_create(&labels).clone(),
            responses: Mutex::default(),
            labels,
        }
    }

    /// Records a request to a ServiceProfile route.
    pub fn route_request(&self, labels: &RouteLabels) {
        self.route_requests.get_or_create(labels).inc();
    }

    /// Records one sending of a route's request to an endpoint (retries included).
    pub fn route_attempt(&self, labels: &RouteLabels) {
        self.route_actual_requests.get_or_create(labels).inc();
    }

    /// Records the response the application got on a route.
    pub fn route_response(
        &self,
        labels: &RouteLabels,
        status: u16,
        failure: bool,
        latency: std::time::Duration,
    ) {
        self.route_responses
            .get_or_create(&RouteResponseLabels {
                dst: labels.dst.clone(),
                rt_route: labels.rt_route.clone(),
                status_code: status,
                classification: if failure { "failure" } else { "success" },
            })
            .inc();
        self.route_latency
            .get_or_create(labels)
            .observe(latency.as_secs_f64() * 1000.0);
    }

    /// Records an HTTP client connection that ended in a protocol error.
    pub fn http_client_error(&self, direction: Direction) {
        self.http_errors
            .get_or_create(&TcpLabels::new(direction))
            .inc();
    }

    /// Records a connection that failed during protocol detection.
    pub fn detect_failed(&self) {
        self.detect_errors.inc();
    }

    /// Records an outbound connection closed because its destination could not be
    /// resolved, for `reason` (`timeout`, `limit`).
    pub fn resolve_failed(&self, reason: &'static str) {
        self.resolve_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records a new certificate expiring at `not_after` (Unix seconds).
    pub fn certified(&self, not_after: i64) {
        self.cert_expiration.set(not_after);
        self.cert_refreshes
            .get_or_create(&RefreshLabels { result: "ok" })
            .inc();
    }

    /// Records a failed certification attempt.
    pub fn certify_failed(&self) {
        self.cert_refreshes
            .get_or_create(&RefreshLabels { result: "failure" })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The `request_total`, `response_total` and `response_latency_ms` of one label set,
/// looked up once and then kept (by a connection, or for an endpoint), so a request is
/// counted without hashing its labels.
#[derive(Debug)]
pub struct HttpCounters {
    labels: TcpLabels,
    requests: Counter,
    /// Inbound: the `inbound_http_authz_*` counter each request is also counted in.
    authz: Option<Counter>,
    latency: Histogram,
    /// `response_total` by status and classification, as they were first seen.
    responses: Mutex<Vec<(u16, bool, Counter)>>,
}

impl HttpCounters {
    /// These counters, also counting each request in `authz` (the inbound
    /// authorization counter of the connection's client, from [`Metrics::http_authz`]).
    pub fn with_authz(mut self, authz: Option<Counter>) -> Self {
        self.authz = authz;
        self
    }

    /// Records a request.
    pub fn request(&self) {
        self.requests.inc();
        if let Some(authz) = &self.authz {
            authz.inc();
        }
    }

    /// Records how long a request's response head took.
    pub fn latency(&self, latency: std::time::Duration) {
        self.latency.observe(latency.as_secs_f64() * 1000.0);
    }

    /// Records a response with `status`; `failed` for a 5xx, or for gRPC a status
    /// other than OK.
    pub fn response(&self, metrics: &Metrics, status: u16, failed: bool) {
        let mut responses = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, counter)) = responses
            .iter()
            .find(|(s, f, _)| *s == status && *f == failed)
        {
            counter.inc();
            return;
        }
        let counter = metrics
            .responses
            .get_or_create(&ResponseLabels {
                request: self.labels.clone(),
                status_code: status,
                classification: if failed { "failure" } else { "success" },
            })
            .clone();
        counter.inc();
        responses.push((status, failed, counter));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
