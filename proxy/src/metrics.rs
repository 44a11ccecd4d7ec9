//! The proxy's Prometheus metrics, served on the admin port's `/metrics`.
//!
//! Names follow Linkerd's proxy where the concept is the same, so dashboards port.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
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

/// Labels of the `tcp_*` metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpLabels {
    direction: Direction,
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
        Self {
            registry,
            cert_expiration,
            cert_refreshes,
            tcp,
        }
    }

    /// Records a connection forwarded to its destination.
    pub fn tcp_opened(&self, direction: Direction) {
        let labels = TcpLabels { direction };
        self.tcp.open.get_or_create(&labels).inc();
        self.tcp.open_connections.get_or_create(&labels).inc();
    }

    /// Records a forwarded connection's end, with the bytes read from and written to
    /// the side that opened it.
    pub fn tcp_closed(&self, direction: Direction, read: u64, written: u64) {
        let labels = TcpLabels { direction };
        self.tcp.close.get_or_create(&labels).inc();
        self.tcp.open_connections.get_or_create(&labels).dec();
        self.tcp.read_bytes.get_or_create(&labels).inc_by(read);
        self.tcp.write_bytes.get_or_create(&labels).inc_by(written);
    }

    /// Records a captured connection whose destination could not be reached.
    pub fn tcp_connect_failed(&self, direction: Direction) {
        self.tcp
            .connect_errors
            .get_or_create(&TcpLabels { direction })
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
