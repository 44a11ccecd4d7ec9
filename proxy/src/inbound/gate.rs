//! The inbound side's gate: what a port's policy says about one connection's client,
//! when it connects, at each HTTP request, and at each change of policy; refusals
//! counted, logged (at info at most once per [`DENIAL_LOG_EVERY`] for a port and a
//! client) and recorded for the operator's denial report.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use crate::{
    authz::{self, Decision, InboundPolicies, PortPolicy, Refusal},
    metrics::{AuthzLabels, Metrics, Mode, Verdict},
};

/// A refusal of a client at a port is logged at info at most this often; every
/// refusal is logged at debug.
pub const DENIAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// What a refusal is logged as.
const DENIED: &str = "denied by the inbound policy";
/// What a refusal for want of the port's policy is logged as.
const POLICY_UNKNOWN: &str =
    "denied: the port's inbound policy is not known (the operator has not sent it)";
/// What a would-be refusal, in audit mode, is logged as.
const WOULD_BE_DENIED: &str = "would be denied by the inbound policy (audit mode)";
/// The most (port, client) pairs whose last info line is remembered; beyond, and
/// none of them older than [`DENIAL_LOG_EVERY`], refusals are logged at debug only.
pub(super) const DENIAL_LOG_PAIRS: usize = 1024;

/// What a port's policy says about a client: what the connection or request is
/// served and counted with.
#[derive(Clone, Debug)]
pub(super) struct Admission {
    /// The labels of the client's inbound authorization counters; `None` where no
    /// policy applies (nothing is enforced, nothing counted).
    pub(super) labels: Option<AuthzLabels>,
    /// Whether the policy allowed the client: in audit mode, a client it denies is
    /// not refused but still counted as denied.
    pub(super) verdict: Verdict,
    /// Why the client is refused; `None`: it may go on.
    pub(super) refusal: Option<Arc<Refusal>>,
    /// Why the policy denies the client, refused or (in audit mode) not.
    pub(super) denied: Option<Arc<Refusal>>,
}

/// The decision of `policy` on the client with `identity` at `peer`, connected to
/// `port`. A policy in audit mode refuses no one; a port without a known policy
/// refuses everyone.
pub(super) fn judge(
    policy: &PortPolicy,
    identity: Option<&str>,
    peer: SocketAddr,
    port: u16,
) -> Admission {
    let client_id = identity.unwrap_or(authz::UNAUTHENTICATED).to_string();
    let refused = |denial, mode| {
        let labels = AuthzLabels {
            server: port.to_string(),
            authorization: authz::Denial::policy(&denial),
            client_id: client_id.clone(),
            mode,
        };
        let denied = Arc::new(Refusal {
            server: port,
            client: identity.map(str::to_string),
            denial,
        });
        Admission {
            labels: Some(labels),
            verdict: Verdict::Deny,
            // Audit mode: a would-be refusal, let through.
            refusal: (mode == Mode::Enforce).then(|| denied.clone()),
            denied: Some(denied),
        }
    };
    let policy = match policy {
        PortPolicy::Unenforced => {
            return Admission {
                labels: None,
                verdict: Verdict::Allow,
                refusal: None,
                denied: None,
            };
        }
        PortPolicy::Unknown => return refused(authz::Denial::PolicyUnknown, Mode::Enforce),
        PortPolicy::Known(policy) => policy,
    };
    let client = authz::Client {
        identity,
        ip: peer.ip(),
    };
    let mode = Mode::of(policy.audit);
    match authz::authorize(policy, client) {
        Decision::Allowed { authorization } => Admission {
            labels: Some(AuthzLabels {
                server: port.to_string(),
                authorization: authorization.to_string(),
                client_id,
                mode,
            }),
            verdict: Verdict::Allow,
            refusal: None,
            denied: None,
        },
        Decision::Denied(denial) => refused(denial, mode),
    }
}

/// Waits until `port`'s policy is known, at most `timeout`: the policy then, known
/// or not.
pub(super) async fn wait_for_policy(
    mut policies: watch::Receiver<InboundPolicies>,
    port: u16,
    timeout: Duration,
) -> PortPolicy {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let policy = policies.borrow_and_update().policy(port);
        if policy != PortPolicy::Unknown {
            return policy;
        }
        match tokio::time::timeout_at(deadline, policies.changed()).await {
            Ok(Ok(())) => {}
            // Out of time, or no policy will ever come.
            Ok(Err(_)) | Err(_) => return PortPolicy::Unknown,
        }
    }
}

/// One connection's client at one port, judged by the port's policy as it is now:
/// when the connection opens, at each of its HTTP requests, and at each change of
/// policy while it is relayed as bytes.
#[derive(Debug)]
pub struct Gate {
    pub(super) policies: watch::Receiver<InboundPolicies>,
    pub(super) port: u16,
    pub(super) identity: Option<String>,
    pub(super) peer: SocketAddr,
    pub(super) metrics: Arc<Metrics>,
    pub(super) denials: Arc<DenialLog>,
    /// The last policy a request was judged by, and the decision with its
    /// `inbound_http_authz_*` counter: judged again only when the policy changes.
    pub(super) last: Mutex<Option<Judged>>,
}

/// A policy, and what it said about a gate's client: the counter of its requests,
/// and the refusal, if it refuses the client.
pub(super) type Judged = (PortPolicy, Option<Counter>, Option<Arc<Refusal>>);

impl Gate {
    /// Judges the connection by `policy` (the one it waited for): counted, a refusal
    /// logged.
    pub(super) fn admit(&self, policy: &PortPolicy) -> Admission {
        let admission = self.judge(policy);
        if let Some(labels) = &admission.labels {
            self.metrics.tcp_authz(admission.verdict, labels);
        }
        if let Some(refusal) = &admission.refusal {
            // Reported to the operator, for the MeshStatus's recent denials.
            self.metrics.denials().record(refusal);
        }
        admission
    }

    /// [`judge`] for this connection's client, its refusal logged.
    fn judge(&self, policy: &PortPolicy) -> Admission {
        let admission = judge(policy, self.identity.as_deref(), self.peer, self.port);
        if let (Some(labels), Some(denied)) = (&admission.labels, &admission.denied) {
            log_refusal(&self.denials, denied, self.peer, labels.mode);
        }
        admission
    }

    /// Judges one HTTP request by the port's policy now, and counts it in the
    /// client's `inbound_http_authz_*`: `Err` with why when it is refused. In audit
    /// mode a would-be refusal is counted and let through.
    pub fn request(&self) -> Result<(), Arc<Refusal>> {
        let policy = self.policies.borrow().policy(self.port);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = match &*last {
            Some((judged, _, _)) => !same_policy(judged, &policy),
            None => true,
        };
        if fresh {
            let admission = self.judge(&policy);
            let counter = admission
                .labels
                .as_ref()
                .map(|labels| self.metrics.http_authz(admission.verdict, labels));
            *last = Some((policy, counter, admission.refusal));
        }
        let Some((_, counter, refusal)) = &*last else {
            return Ok(());
        };
        if let Some(counter) = counter {
            counter.inc();
        }
        match refusal {
            Some(refusal) => {
                self.metrics.denials().record(refusal);
                Err(refusal.clone())
            }
            None => Ok(()),
        }
    }

    /// Whether the port's policy now refuses the client (nothing counted).
    pub fn refuses(&self) -> bool {
        let policy = self.policies.borrow().policy(self.port);
        judge(&policy, self.identity.as_deref(), self.peer, self.port)
            .refusal
            .is_some()
    }

    /// Resolves once a change of the port's policy refuses this connection's client
    /// (enforced; never while the proxy holds no policy for it any more): counted in
    /// `inbound_tcp_authz_revoked_total` and logged.
    pub(super) async fn revoked(&self) {
        let mut policies = self.policies.clone();
        policies.mark_unchanged();
        while policies.changed().await.is_ok() {
            let policy = policies.borrow_and_update().policy(self.port);
            let admission = judge(&policy, self.identity.as_deref(), self.peer, self.port);
            let (Some(labels), Some(refusal)) = (&admission.labels, &admission.refusal) else {
                continue;
            };
            self.metrics.tcp_authz_revoked(labels);
            tracing::info!(
                peer = %self.peer,
                server = self.port,
                client = refusal.client_name(),
                policy = labels.authorization,
                reason = refusal.denial.reason(),
                "connection closed: the inbound policy no longer allows its client"
            );
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Whether `a` and `b` are the same policy (the same update applied), cheaply.
fn same_policy(a: &PortPolicy, b: &PortPolicy) -> bool {
    match (a, b) {
        (PortPolicy::Known(a), PortPolicy::Known(b)) => Arc::ptr_eq(a, b),
        (a, b) => a == b,
    }
}

/// Logs `refusal` of the client at `peer` (in audit mode, as a would-be denial):
/// at info if it is the first of its port and client for [`DENIAL_LOG_EVERY`] in
/// `denials`, else at debug.
fn log_refusal(denials: &DenialLog, refusal: &Refusal, peer: SocketAddr, mode: Mode) {
    let client = refusal.client_name();
    let (server, policy) = (refusal.server, refusal.denial.policy());
    let reason = refusal.denial.reason();
    let what = match (mode, &refusal.denial) {
        (Mode::Audit, _) => WOULD_BE_DENIED,
        (Mode::Enforce, authz::Denial::PolicyUnknown) => POLICY_UNKNOWN,
        (Mode::Enforce, _) => DENIED,
    };
    if denials.first_in_a_while(server, client, Instant::now()) {
        tracing::info!(
            %peer, server, client, policy, reason,
            "{what} (this client's further refusals at this port within {}s are logged \
             at debug)",
            DENIAL_LOG_EVERY.as_secs()
        );
    } else {
        tracing::debug!(%peer, server, client, policy, reason, "{what}");
    }
}

/// When a refusal of each (port, client) was last logged at info.
#[derive(Debug, Default)]
pub(super) struct DenialLog(pub(super) Mutex<HashMap<(u16, String), Instant>>);

impl DenialLog {
    /// Whether a refusal of `client` at `server` at `now` is the first in
    /// [`DENIAL_LOG_EVERY`] (then remembered as the last). With
    /// [`DENIAL_LOG_PAIRS`] pairs all logged within that time, no other is.
    pub(super) fn first_in_a_while(&self, server: u16, client: &str, now: Instant) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let recent = |at: &Instant| now.saturating_duration_since(*at) < DENIAL_LOG_EVERY;
        let key = (server, client.to_string());
        if last.get(&key).is_some_and(recent) {
            return false;
        }
        if last.len() >= DENIAL_LOG_PAIRS && !last.contains_key(&key) {
            last.retain(|_, at| recent(at));
            if last.len() >= DENIAL_LOG_PAIRS {
                return false;
            }
        }
        last.insert(key, now);
        true
    }
}
