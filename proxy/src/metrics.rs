//! The proxy's Prometheus metrics, served on the admin port's `/metrics`.
//!
//! Names follow Linkerd's proxy where the concept is the same, so dashboards port.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
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

/// Every metric of the proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cert_expiration: Gauge<i64>,
    cert_refreshes: Family<RefreshLabels, Counter>,
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
        Self {
            registry,
            cert_expiration,
            cert_refreshes,
        }
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
