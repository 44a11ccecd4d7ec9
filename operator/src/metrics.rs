//! The operator's Prometheus metrics, served on the admin port's `/metrics`.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

mod process;

/// Labels of reconcile metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// The controller: `mesh`, ...
    pub controller: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// The `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The process's memory, read when `/metrics` is.
    memory: process::Memory,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_seconds: Family<ControllerLabel, Histogram>,
    certificates_issued: Counter,
    certificate_refusals: Family<ReasonLabel, Counter>,
    injector: Injector,
    destination_streams: Gauge,
    destination_refusals: Family<ReasonLabel, Counter>,
    certify: CertifyMetrics,
}

/// Certify's answers and its token cache.
#[derive(Debug, Default)]
struct CertifyMetrics {
    requests: Family<ResultLabel, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_entries: Gauge,
}

/// The injection webhook's metrics.
#[derive(Debug)]
struct Injector {
    admissions: Counter,
    injected: Counter,
    skipped: Family<ReasonLabel, Counter>,
    errors: Family<ReasonLabel, Counter>,
    seconds: Histogram,
}

/// The `controller` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        // The process's own metrics keep their usual names; the operator's are prefixed.
        let mut root = Registry::default();
        let memory = process::Memory::register(&mut root);
        let registry = root.sub_registry_with_prefix("weft_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles run, by controller and result",
            reconciles.clone(),
        );
        let reconcile_seconds = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        });
        registry.register(
            "reconcile_seconds",
            "Time spent in one reconcile",
            reconcile_seconds.clone(),
        );
        let certificates_issued = Counter::default();
        registry.register(
            "certificates_issued",
            "Workload certificates issued through Certify",
            certificates_issued.clone(),
        );
        let certificate_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "certificate_refusals",
            "Certify requests refused, by reason",
            certificate_refusals.clone(),
        );
        let injector = Injector {
            admissions: Counter::default(),
            injected: Counter::default(),
            skipped: Family::default(),
            errors: Family::default(),
            seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
        };
        registry.register(
            "injector_admissions",
            "Pod admission reviews answered by the injection webhook",
            injector.admissions.clone(),
        );
        registry.register(
            "injector_injected",
            "Pods meshed by the injection webhook",
            injector.injected.clone(),
        );
        registry.register(
            "injector_skipped",
            "Pods that asked for injection and were left alone, by reason",
            injector.skipped.clone(),
        );
        registry.register(
            "injector_errors",
            "Admission requests the injection webhook could not read, by reason",
            injector.errors.clone(),
        );
        registry.register(
            "injector_admission_seconds",
            "Time from a review's arrival to its answer, in the webhook",
            injector.seconds.clone(),
        );
        let destination_streams = Gauge::default();
        registry.register(
            "destination_streams",
            "Destination streams open to proxies",
            destination_streams.clone(),
        );
        let destination_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "destination_refusals",
            "Destination calls refused, by reason",
            destination_refusals.clone(),
        );
        let certify = CertifyMetrics::default();
        registry.register(
            "certify_requests",
            "Certify calls answered, by result: issued, refused (the request or its token \
             is not good) or limited (over a rate limit)",
            certify.requests.clone(),
        );
        registry.register(
            "certify_refusals",
            "Certify calls refused or limited, by reason",
            certify.refusals.clone(),
        );
        registry.register(
            "certify_token_cache_hits",
            "Certify calls whose token was known (from the token cache, or a review of \
             the same token under way): no TokenReview of their own",
            certify.cache_hits.clone(),
        );
        registry.register(
            "certify_token_cache_misses",
            "Certify calls whose token was not known: a TokenReview",
            certify.cache_misses.clone(),
        );
        registry.register(
            "certify_token_cache_entries",
            "Tokens in Certify's token cache, as of its last miss",
            certify.cache_entries.clone(),
        );
        Self {
            registry: root,
            memory,
            reconciles,
            reconcile_seconds,
            certificates_issued,
            certificate_refusals,
            injector,
            destination_streams,
            destination_refusals,
            certify,
        }
    }

    /// Counts one answered admission review that took `seconds`.
    pub fn admission(&self, seconds: f64) {
        self.injector.admissions.inc();
        self.injector.seconds.observe(seconds);
    }

    /// Counts one meshed pod.
    pub fn injected(&self) {
        self.injector.injected.inc();
    }

    /// Counts one pod left alone for `reason`.
    pub fn injection_skipped(&self, reason: &'static str) {
        self.injector
            .skipped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one request the webhook could not read.
    pub fn injector_error(&self, reason: &'static str) {
        self.injector
            .errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one reconcile of `controller` that took `seconds`.
    pub fn reconciled(&self, controller: &'static str, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.reconcile_seconds
            .get_or_create(&ControllerLabel { controller })
            .observe(seconds);
    }

    /// Counts one workload certificate issued.
    pub fn certificate_issued(&self) {
        self.certificates_issued.inc();
    }

    /// Counts one refused Certify request.
    pub fn certificate_refused(&self, reason: &'static str) {
        self.certificate_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one answered Certify call: its `result` (`issued`, `refused`, `limited`)
    /// and, unless issued, its `reason`.
    pub fn certify_answered(&self, result: &'static str, reason: Option<&'static str>) {
        self.certify
            .requests
            .get_or_create(&ResultLabel { result })
            .inc();
        if let Some(reason) = reason {
            self.certify
                .refusals
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }

    /// Counts one Certify token lookup: known (`hit`) or to be reviewed.
    pub fn certify_token_cache(&self, hit: bool) {
        if hit {
            self.certify.cache_hits.inc();
        } else {
            self.certify.cache_misses.inc();
        }
    }

    /// Sets how many tokens the cache holds.
    pub fn certify_token_cache_entries(&self, entries: usize) {
        self.certify
            .cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Counts a Destination stream opening (`true`) or closing.
    pub fn destination_stream(&self, open: bool) {
        if open {
            self.destination_streams.inc();
        } else {
            self.destination_streams.dec();
        }
    }

    /// Counts one refused Destination call.
    pub fn destination_refused(&self, reason: &'static str) {
        self.destination_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.memory.update();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_in_text_format() {
        let m = Metrics::new();
        m.reconciled("mesh", true, 0.002);
        m.reconciled("mesh", false, 0.2);
        let text = m.encode();
        assert!(
            text.contains(r#"weft_operator_reconciles_total{controller="mesh",result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_operator_reconciles_total{controller="mesh",result="error"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("weft_operator_reconcile_seconds_count{controller=\"mesh\"} 2"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
