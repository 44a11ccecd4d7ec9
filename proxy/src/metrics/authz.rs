//! The inbound authorization families: `inbound_{tcp,http}_authz_{allow,deny}_total`
//! and `inbound_tcp_authz_revoked_total`, with their bounded labels ([`AuthzLabels`]).
//!
//! `mode` says whether the port's policy was enforced (`enforce`) or only audited
//! (`audit`): a client an audited policy would have refused is let through and counted
//! in `..._deny_total{mode="audit"}`, a would-be denial. A client refused because its
//! port's policy was not known in time is counted in `..._deny_total` with
//! `authorization="unknown"`.

use std::{collections::HashSet, sync::Mutex};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::Metrics;

/// The most distinct `client_id`s each inbound authorization family labels; any
/// further client is counted as `client_id="other"`.
pub const MAX_AUTHZ_CLIENT_IDS: usize = 100;
/// The most distinct `server`s (ports) each inbound authorization family labels; any
/// further port is counted as `server="other"`.
pub const MAX_AUTHZ_SERVERS: usize = 100;
/// What stands for the client ids and ports beyond those limits.
pub const AUTHZ_OTHER: &str = "other";

/// Whether a port's policy is enforced or audited: the `mode` label.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum Mode {
    /// A client the policy refuses is refused.
    #[default]
    Enforce,
    /// A client the policy refuses is let through, counted as a would-be denial.
    Audit,
}

impl Mode {
    /// `audit` when `audit`, else `enforce`.
    pub fn of(audit: bool) -> Self {
        if audit { Self::Audit } else { Self::Enforce }
    }
}

impl EncodeLabelValue for Mode {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        })
    }
}

/// Labels of the inbound authorization counters (`inbound_{tcp,http}_authz_*`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// The port the client connected to.
    pub server: String,
    /// The rule that admitted the client; for a denial, the policy that refused it
    /// (its rules' names, comma-separated, `default:deny`, or `unknown`).
    pub authorization: String,
    /// The client's SPIFFE id, or `unauthenticated`.
    pub client_id: String,
    /// Whether the policy was enforced or audited.
    pub mode: Mode,
}

/// Whether an inbound authorization counter counts admissions or refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// One inbound authorization family, with the client ids and ports it labels so far.
#[derive(Debug, Default)]
struct AuthzFamily {
    counters: Family<AuthzLabels, Counter>,
    clients: Mutex<HashSet<String>>,
    servers: Mutex<HashSet<String>>,
}

impl AuthzFamily {
    /// The counter of `labels`, its client id and port folded into
    /// [`AUTHZ_OTHER`] beyond the limits.
    fn counter(&self, labels: &AuthzLabels) -> Counter {
        let labels = AuthzLabels {
            server: admitted(&self.servers, &labels.server, MAX_AUTHZ_SERVERS),
            authorization: labels.authorization.clone(),
            client_id: admitted(&self.clients, &labels.client_id, MAX_AUTHZ_CLIENT_IDS),
            mode: labels.mode,
        };
        self.counters.get_or_create(&labels).clone()
    }
}

/// `value`, if `seen` holds it or has room for it (then it does); else
/// [`AUTHZ_OTHER`].
fn admitted(seen: &Mutex<HashSet<String>>, value: &str, max: usize) -> String {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(value) {
        return value.to_string();
    }
    if seen.len() < max {
        seen.insert(value.to_string());
        return value.to_string();
    }
    AUTHZ_OTHER.to_string()
}

/// Every inbound authorization family.
#[derive(Debug, Default)]
pub(super) struct Authz {
    tcp_allow: AuthzFamily,
    tcp_deny: AuthzFamily,
    http_allow: AuthzFamily,
    http_deny: AuthzFamily,
    tcp_revoked: AuthzFamily,
}

impl Authz {
    /// The families, registered in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let authz = Self::default();
        registry.register(
            "inbound_tcp_authz_allow",
            "Inbound connections allowed, by port, the rule that allowed them, client \
             and mode",
            authz.tcp_allow.counters.clone(),
        );
        registry.register(
            "inbound_tcp_authz_deny",
            "Inbound connections no rule of their port's policy allowed (refused, or let \
             through with mode=\"audit\"), by port, policy and client",
            authz.tcp_deny.counters.clone(),
        );
        registry.register(
            "inbound_http_authz_allow",
            "Inbound HTTP requests allowed, by port, the rule that allowed them, client \
             and mode",
            authz.http_allow.counters.clone(),
        );
        registry.register(
            "inbound_http_authz_deny",
            "Inbound HTTP requests no rule of their port's policy allowed (refused, or let \
             through with mode=\"audit\"), by port, policy and client",
            authz.http_deny.counters.clone(),
        );
        registry.register(
            "inbound_tcp_authz_revoked",
            "Inbound connections relayed as bytes that were closed because a change of \
             their port's policy no longer allowed their client, by port, the policy \
             that refused it and client",
            authz.tcp_revoked.counters.clone(),
        );
        authz
    }
}

impl Metrics {
    /// Records an inbound connection allowed or denied, with `labels`.
    pub fn tcp_authz(&self, verdict: Verdict, labels: &AuthzLabels) {
        let family = match verdict {
            Verdict::Allow => &self.authz.tcp_allow,
            Verdict::Deny => &self.authz.tcp_deny,
        };
        family.counter(labels).inc();
    }

    /// The counter of the HTTP requests allowed or denied with `labels`; each request
    /// increments it.
    pub fn http_authz(&self, verdict: Verdict, labels: &AuthzLabels) -> Counter {
        let family = match verdict {
            Verdict::Allow => &self.authz.http_allow,
            Verdict::Deny => &self.authz.http_deny,
        };
        family.counter(labels)
    }

    /// Records an inbound connection closed because its port's policy no longer
    /// allows its client (`labels` name the policy that refuses it now).
    pub fn tcp_authz_revoked(&self, labels: &AuthzLabels) {
        self.authz.tcp_revoked.counter(labels).inc();
    }
}
