//! The Mesh's verdict: is this the active Mesh, and is its configuration usable?
//!
//! The schema and its CEL rules already refuse most bad Meshes at admission. The
//! checks here repeat the cross-field ones as defence in depth (an object stored under
//! an older CRD, or written while the CRD was being upgraded, never met those rules)
//! and report each problem with its field named.
//!
//! `Ready` is this controller's condition, and what `kubectl wait mesh/default` waits
//! for: the configuration is usable and every component reports ready. The identity,
//! injector and discovery controllers own `IdentityReady`, `InjectorReady` and
//! `DiscoveryReady`; each writes its own condition with its own field manager, so their
//! writes never clobber each other. Identity and the injector are in the verdict
//! ([`COMPONENTS`]); discovery joins when it lands.

pub mod controller;

use k8s_openapi::jiff::Timestamp;
use weft_api::{
    ACTIVE_MESH_NAME, Condition, ConditionStatus, Mesh, MeshSpec,
    condition::{carry_transition_times, condition},
    mesh::{
        TrustAnchorMode,
        conditions::{IDENTITY_READY, INJECTOR_READY, READY},
    },
};

/// Reasons of the `Ready` condition.
pub mod reasons {
    /// The active Mesh, with a usable configuration.
    pub const CONFIGURED: &str = "Configured";
    /// A Mesh not named `default`: it is ignored.
    pub const NOT_THE_ACTIVE_MESH: &str = "NotTheActiveMesh";
    /// The active Mesh, but its configuration cannot be used.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The active Mesh, but workload certificates cannot be issued yet.
    pub const IDENTITY_NOT_READY: &str = "IdentityNotReady";
    /// The active Mesh, but the injection webhook is not registered yet.
    pub const INJECTOR_NOT_READY: &str = "InjectorNotReady";
}

/// What the operator makes of one Mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Judges the Mesh named `name` with `spec`, given the conditions the other
/// controllers reported on it: the mesh is Ready when its configuration is usable and
/// every component in [`COMPONENTS`] says it is ready.
pub fn judge(name: &str, spec: &MeshSpec, conditions: &[Condition]) -> Verdict {
    if name != ACTIVE_MESH_NAME {
        return Verdict {
            ready: false,
            reason: reasons::NOT_THE_ACTIVE_MESH,
            message: format!(
                "only the Mesh named {ACTIVE_MESH_NAME:?} configures the mesh; Mesh {name:?} is ignored"
            ),
        };
    }
    let problems = spec_problems(spec);
    if !problems.is_empty() {
        return Verdict {
            ready: false,
            reason: reasons::INVALID_SPEC,
            message: problems.join("; "),
        };
    }
    for (component, reason, name) in COMPONENTS {
        match weft_api::condition::find(conditions, component) {
            Some(c) if c.status == "True" => {}
            Some(c) => {
                return Verdict {
                    ready: false,
                    reason,
                    message: format!("{name}: {}", c.message),
                };
            }
            None => {
                return Verdict {
                    ready: false,
                    reason,
                    message: format!("waiting for the {name} controller"),
                };
            }
        }
    }
    Verdict {
        ready: true,
        reason: reasons::CONFIGURED,
        message: format!(
            "the mesh is configured with trust domain {}",
            spec.trust_domain
        ),
    }
}

/// The components whose condition `Ready` waits for: (condition, the `Ready` reason
/// while it is not true, what it is called in messages).
const COMPONENTS: [(&str, &str, &str); 2] = [
    (IDENTITY_READY, reasons::IDENTITY_NOT_READY, "identity"),
    (INJECTOR_READY, reasons::INJECTOR_NOT_READY, "injector"),
];

/// Every cross-field problem of `spec`, each naming its field.
pub fn spec_problems(spec: &MeshSpec) -> Vec<String> {
    let mut problems = Vec::new();
    let id = &spec.identity;
    if id.issuer_lifetime.get() <= id.workload_certificate_lifetime.get() {
        problems.push(format!(
            "spec.identity.issuerLifetime ({}) must be longer than spec.identity.workloadCertificateLifetime ({})",
            id.issuer_lifetime, id.workload_certificate_lifetime
        ));
    }
    match id.trust_anchor.mode {
        TrustAnchorMode::Generated => {
            if id.trust_anchor.lifetime.get() <= id.issuer_lifetime.get() {
                problems.push(format!(
                    "spec.identity.trustAnchor.lifetime ({}) must be longer than spec.identity.issuerLifetime ({})",
                    id.trust_anchor.lifetime, id.issuer_lifetime
                ));
            }
            if id.trust_anchor.secret_name.is_some() {
                problems.push(
                    "spec.identity.trustAnchor.secretName is only allowed with mode External"
                        .into(),
                );
            }
        }
        TrustAnchorMode::External => {
            if id.trust_anchor.secret_name.is_none() {
                problems.push(
                    "spec.identity.trustAnchor.secretName is required with mode External".into(),
                );
            }
        }
    }
    let ports = &spec.proxy.ports;
    if ports.inbound == ports.outbound
        || ports.inbound == ports.admin
        || ports.outbound == ports.admin
    {
        problems.push(format!(
            "spec.proxy.ports must differ (inbound {}, outbound {}, admin {})",
            ports.inbound, ports.outbound, ports.admin
        ));
    }
    problems
}

/// The status fields this controller owns: `observedGeneration` and `Ready`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadyStatus {
    pub observed_generation: Option<i64>,
    pub ready: Condition,
}

/// The status the Mesh should have, given its verdict, at `now`.
pub fn ready_status(mesh: &Mesh, verdict: &Verdict, now: Timestamp) -> ReadyStatus {
    let generation = mesh.metadata.generation;
    let desired = condition(
        READY,
        ConditionStatus::from(verdict.ready),
        verdict.reason,
        verdict.message.clone(),
        generation,
        now,
    );
    let current = mesh
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut merged = carry_transition_times(current, vec![desired]);
    ReadyStatus {
        observed_generation: generation,
        ready: merged.remove(0),
    }
}

/// Whether the Mesh's status already says what `desired` says.
pub fn is_current(mesh: &Mesh, desired: &ReadyStatus) -> bool {
    let Some(status) = &mesh.status else {
        return false;
    };
    status.observed_generation == desired.observed_generation
        && weft_api::condition::find(&status.conditions, READY) == Some(&desired.ready)
}

/// Whether going from the Mesh's current status to `desired` changes the verdict (and so
/// deserves an Event).
pub fn is_transition(mesh: &Mesh, desired: &ReadyStatus) -> bool {
    let current = mesh
        .status
        .as_ref()
        .and_then(|s| weft_api::condition::find(&s.conditions, READY));
    current.is_none_or(|c| c.status != desired.ready.status || c.reason != desired.ready.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::{Duration, MeshState, mesh::TrustAnchorSpec};

    fn mesh(name: &str, spec: MeshSpec) -> Mesh {
        let mut m = Mesh::new(name, spec);
        m.metadata.generation = Some(3);
        m
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    /// What the identity and injector controllers report once they work.
    fn identity_ready() -> Vec<Condition> {
        vec![
            condition(
                IDENTITY_READY,
                ConditionStatus::True,
                "Issuing",
                "",
                Some(1),
                at(1),
            ),
            condition(
                INJECTOR_READY,
                ConditionStatus::True,
                "Registered",
                "",
                Some(1),
                at(1),
            ),
        ]
    }

    #[test]
    fn the_active_mesh_waits_for_the_injector() {
        let mut conditions = identity_ready();
        conditions.pop();
        let v = judge("default", &MeshSpec::default(), &conditions);
        assert!(!v.ready);
        assert_eq!(v.reason, reasons::INJECTOR_NOT_READY);
        assert!(v.message.contains("injector"), "{}", v.message);
    }

    #[test]
    fn default_is_active_and_ready() {
        let v = judge("default", &MeshSpec::default(), &identity_ready());
        assert!(v.ready);
        assert_eq!(v.reason, reasons::CONFIGURED);
        assert!(v.message.contains("cluster.local"));
    }

    #[test]
    fn the_active_mesh_waits_for_identity() {
        let v = judge("default", &MeshSpec::default(), &[]);
        assert!(!v.ready);
        assert_eq!(v.reason, reasons::IDENTITY_NOT_READY);
        let broken = vec![condition(
            IDENTITY_READY,
            ConditionStatus::False,
            "TrustAnchorNotFound",
            "the trust anchor Secret weft-system/mine does not exist",
            Some(1),
            at(1),
        )];
        let v = judge("default", &MeshSpec::default(), &broken);
        assert!(!v.ready);
        assert!(v.message.contains("weft-system/mine"), "{}", v.message);
    }

    #[test]
    fn any_other_name_is_not_the_active_mesh() {
        let v = judge("staging", &MeshSpec::default(), &identity_ready());
        assert!(!v.ready);
        assert_eq!(v.reason, reasons::NOT_THE_ACTIVE_MESH);
        assert!(v.message.contains("staging"));
    }

    #[test]
    fn cross_field_problems_name_every_field() {
        let mut spec = MeshSpec::default();
        spec.identity.issuer_lifetime = Duration::from_hours(1);
        spec.identity.workload_certificate_lifetime = Duration::from_hours(2);
        spec.identity.trust_anchor = TrustAnchorSpec {
            mode: TrustAnchorMode::External,
            secret_name: None,
            lifetime: Duration::from_hours(1),
        };
        spec.proxy.ports.admin = spec.proxy.ports.inbound;
        let v = judge("default", &spec, &identity_ready());
        assert!(!v.ready);
        assert_eq!(v.reason, reasons::INVALID_SPEC);
        for field in [
            "spec.identity.issuerLifetime",
            "spec.identity.trustAnchor.secretName",
            "spec.proxy.ports",
        ] {
            assert!(
                v.message.contains(field),
                "{field} missing from {:?}",
                v.message
            );
        }
        assert_eq!(spec_problems(&spec).len(), 3);
    }

    #[test]
    fn generated_anchor_must_outlive_the_issuer() {
        let mut spec = MeshSpec::default();
        spec.identity.trust_anchor.lifetime = Duration::from_hours(24 * 30);
        let problems = spec_problems(&spec);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("spec.identity.trustAnchor.lifetime"));
    }

    #[test]
    fn status_observes_the_generation_and_keeps_transition_times() {
        let mut m = mesh("default", MeshSpec::default());
        let verdict = judge("default", &m.spec, &identity_ready());
        let first = ready_status(&m, &verdict, at(100));
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!(first.ready.status, "True");
        assert!(!is_current(&m, &first));
        assert!(is_transition(&m, &first));

        m.status = Some(MeshState {
            observed_generation: first.observed_generation,
            conditions: vec![first.ready.clone()],
            ..MeshState::default()
        });
        let again = ready_status(&m, &verdict, at(200));
        assert_eq!(again, first, "the same verdict later is the same status");
        assert!(is_current(&m, &again));
        assert!(!is_transition(&m, &again));

        m.metadata.generation = Some(4);
        let newer = ready_status(&m, &verdict, at(300));
        assert!(!is_current(&m, &newer), "a new generation must be observed");
        assert!(!is_transition(&m, &newer), "but it is not a new verdict");
        assert_eq!(
            newer.ready.last_transition_time,
            first.ready.last_transition_time
        );
    }

    #[test]
    fn a_verdict_change_is_a_transition() {
        let mut m = mesh("default", MeshSpec::default());
        let ok = ready_status(&m, &judge("default", &m.spec, &identity_ready()), at(100));
        m.status = Some(MeshState {
            observed_generation: ok.observed_generation,
            conditions: vec![ok.ready.clone()],
            ..MeshState::default()
        });
        m.spec.proxy.ports.admin = m.spec.proxy.ports.inbound;
        let bad = ready_status(&m, &judge("default", &m.spec, &identity_ready()), at(200));
        assert_eq!(bad.ready.status, "False");
        assert!(is_transition(&m, &bad));
        assert_ne!(
            bad.ready.last_transition_time,
            ok.ready.last_transition_time
        );
    }
}
