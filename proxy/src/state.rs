//! What the proxy holds now, for the admin server to show: whether it is ready
//! ([`Readiness`], written by the identity task) and the configuration discovery has
//! applied ([`AppliedConfig`], written by the discovery streams).
//!
//! The writers hold a handle each; the admin server reads a [`State`] of both and
//! writes nothing. Depending on this module alone, the admin server depends on
//! nothing that depends on it.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::{Value, json};
use weft_proxy_api::v1::Resolution;

use crate::authz::InboundPolicy;

/// What the admin server reads: readiness, the applied configuration when discovery
/// runs, and the application's probes it performs for the kubelet.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub readiness: Readiness,
    pub config: Option<AppliedConfig>,
    pub probes: crate::probe::Prober,
}

/// What the proxy still needs before it is ready: its identity, and (when discovery
/// runs) the inbound policies of every port, so that no client is refused for want of
/// a policy once the pod is Ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    identity: Arc<AtomicBool>,
    /// The inbound policy streams whose first update has not been applied: declared
    /// ports, and 0 (every other port).
    missing_policies: Arc<Mutex<Vec<u16>>>,
}

impl Readiness {
    /// Records that the proxy holds a valid workload certificate (or lost it).
    pub fn set_identity(&self, ok: bool) {
        self.identity.store(ok, Ordering::Release);
    }

    /// Records which inbound policy streams have not delivered their policy yet.
    pub fn set_missing_policies(&self, ports: Vec<u16>) {
        *self
            .missing_policies
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = ports;
    }

    /// `Ok` when ready, else what is missing.
    pub fn check(&self) -> Result<(), String> {
        if !self.identity.load(Ordering::Acquire) {
            return Err("no identity certificate yet".to_string());
        }
        let missing = self
            .missing_policies
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if missing.is_empty() {
            return Ok(());
        }
        let ports: Vec<String> = missing.iter().map(u16::to_string).collect();
        Err(format!(
            "the inbound policies of ports {} are not applied yet (0: every port the pod \
             does not declare)",
            ports.join(", ")
        ))
    }
}

/// What discovery has applied now. Cheap to clone: every clone is the same.
#[derive(Clone, Debug)]
pub struct AppliedConfig {
    /// This proxy's pod.
    pod: String,
    applied: Arc<Mutex<Applied>>,
}

/// What is applied now.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) inbound: BTreeMap<u16, InboundPolicy>,
    /// The policies port 0's update carries for the ports ServerAuthorizations select.
    pub(crate) selected: BTreeMap<u16, InboundPolicy>,
    pub(crate) outbound: BTreeMap<String, Resolution>,
    /// Streams currently open to the operator.
    pub(crate) streams: usize,
}

impl AppliedConfig {
    /// Nothing applied yet, for `pod`.
    pub(crate) fn new(pod: &str) -> Self {
        Self {
            pod: pod.to_string(),
            applied: Arc::default(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Applied> {
        // Nothing panics while holding it; a poisoned one still holds valid data.
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is applied, as `/config` shows it.
    pub fn to_json(&self) -> Value {
        let applied = self.lock();
        let policy = |p: &InboundPolicy| {
            let rules: Vec<Value> = p
                .authorizations
                .iter()
                .map(|a| {
                    json!({
                        "name": a.name,
                        "identities": a.identities,
                        "unauthenticated": a.unauthenticated,
                        "networks": a.networks.iter().map(|n| json!({"cidr": n.cidr, "except": n.except})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "protocol": p.protocol,
                "authorizations": rules,
                "audit": p.audit,
                "version": p.version.as_str(),
            })
        };
        let inbound: serde_json::Map<String, Value> = applied
            .inbound
            .iter()
            .map(|(port, p)| {
                let mut json = policy(p);
                if *port == 0 {
                    // The ports ServerAuthorizations select, which port 0's update carries.
                    json["ports"] = applied
                        .selected
                        .iter()
                        .map(|(port, p)| (port.to_string(), policy(p)))
                        .collect::<serde_json::Map<String, Value>>()
                        .into();
                }
                (port.to_string(), json)
            })
            .collect();
        let outbound: serde_json::Map<String, Value> = applied
            .outbound
            .iter()
            .map(|(authority, r)| {
                let endpoints: Vec<Value> = r
                    .endpoints
                    .iter()
                    .map(|e| {
                        json!({
                            "address": e.address,
                            "weight": e.weight,
                            "identity": e.identity,
                            "protocolHint": e.protocol_hint().as_str_name(),
                            "labels": e.labels,
                        })
                    })
                    .collect();
                let profile = r.profile.as_ref().map(|p| {
                    let routes: Vec<Value> = p
                        .routes
                        .iter()
                        .map(|route| {
                            json!({
                                "name": route.name,
                                "method": route.method,
                                "pathRegex": route.path_regex,
                                "timeoutMs": route.timeout_ms,
                                "retryable": route.retryable,
                            })
                        })
                        .collect();
                    let backends: Vec<String> = p
                        .backends
                        .iter()
                        .map(|b| format!("{}:{}", b.service, b.weight))
                        .collect();
                    json!({"name": p.name, "routes": routes, "backends": backends})
                });
                (
                    authority.clone(),
                    json!({
                        "known": r.known,
                        "service": r.service,
                        "endpoints": endpoints,
                        "profile": profile,
                        "version": r.config_version,
                    }),
                )
            })
            .collect();
        json!({
            "pod": self.pod,
            "streams": applied.streams,
            "inbound": inbound,
            "outbound": outbound,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_every_inbound_policy_is_applied() {
        let r = Readiness::default();
        r.set_identity(true);
        r.set_missing_policies(vec![0, 8080]);
        assert_eq!(
            r.check().unwrap_err(),
            "the inbound policies of ports 0, 8080 are not applied yet (0: every port the \
             pod does not declare)"
        );
        r.set_missing_policies(vec![8080]);
        assert!(r.check().is_err());
        r.set_missing_policies(Vec::new());
        assert!(r.check().is_ok());
    }

    #[test]
    fn ready_only_with_an_identity() {
        let r = Readiness::default();
        assert_eq!(r.check().unwrap_err(), "no identity certificate yet");
        r.set_identity(true);
        assert!(r.check().is_ok());
        r.set_identity(false);
        assert!(r.check().is_err());
    }
}
