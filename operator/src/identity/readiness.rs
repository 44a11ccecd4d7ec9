//! Whether the mesh's identity is ready, and how the Mesh's status says so: the
//! `IdentityReady` condition, the trust anchors and the issuer. Pure: the controller
//! ([`super::controller`]) reads and writes the cluster; this computes what it writes.

use std::sync::Arc;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use serde_json::json;
use weft_api::{
    ConditionStatus, Mesh,
    condition::{carry_transition_times, condition},
    mesh::{CertificateSummary, conditions::IDENTITY_READY},
};

use super::{Authority, CaError};

/// Why the identity could not be made ready. Each becomes the `IdentityReady` reason.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the trust anchor Secret {namespace}/{name} does not exist")]
    AnchorNotFound { namespace: String, name: String },
    #[error("the trust anchor in Secret {name} is unusable: {source}")]
    InvalidAnchor {
        name: String,
        #[source]
        source: CaError,
    },
    #[error("the trust anchor {name} has expired")]
    AnchorExpired { name: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[source] CaError),
    #[error("the replica holding the Lease creates or renews the CA; this one waits for it")]
    NotLeader,
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl IdentityError {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Self::AnchorNotFound { .. } => "TrustAnchorNotFound",
            Self::InvalidAnchor { .. } => "InvalidTrustAnchor",
            Self::AnchorExpired { .. } => "TrustAnchorExpired",
            Self::Generate(_) => "GenerationFailed",
            Self::NotLeader => "WaitingForLeader",
            Self::Kube(_) => "KubernetesError",
        }
    }
}

/// How identity is doing, when it works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Health {
    Issuing,
    /// A trust anchor rotation is under way; what it is at.
    Rotating(String),
    /// A user-supplied anchor is close to expiry.
    AnchorExpiringSoon(String),
}

/// The Mesh's identity status for `verdict`, or `None` when the Mesh already shows it.
pub(super) fn status(
    mesh: &Mesh,
    verdict: &Result<(Arc<Authority>, Health), IdentityError>,
    now: Timestamp,
) -> Option<serde_json::Value> {
    let current = mesh
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = mesh.metadata.generation;
    let (cond, anchors, issuer) = match verdict {
        Ok((authority, health)) => {
            let (status, reason, message) = match health {
                Health::Issuing => (
                    ConditionStatus::True,
                    "Issuing",
                    format!(
                        "issuing certificates for trust domain {}",
                        authority.trust_domain()
                    ),
                ),
                Health::Rotating(message) => (
                    ConditionStatus::True,
                    "RotatingTrustAnchor",
                    message.clone(),
                ),
                Health::AnchorExpiringSoon(message) => (
                    ConditionStatus::False,
                    "TrustAnchorExpiringSoon",
                    message.clone(),
                ),
            };
            let anchors: Vec<CertificateSummary> =
                super::ca::pem_blocks(authority.bundle_pem(), "CERTIFICATE")
                    .iter()
                    .filter_map(|der| summary(der))
                    .collect();
            (
                condition(IDENTITY_READY, status, reason, message, generation, now),
                Some(anchors),
                summary(authority.issuer().cert_der()),
            )
        }
        Err(error) => (
            condition(
                IDENTITY_READY,
                ConditionStatus::False,
                error.reason(),
                error.to_string(),
                generation,
                now,
            ),
            None,
            None,
        ),
    };
    let cond = carry_transition_times(current, vec![cond]).remove(0);
    let unchanged = mesh.status.as_ref().is_some_and(|s| {
        weft_api::condition::find(&s.conditions, IDENTITY_READY) == Some(&cond)
            && anchors.as_ref().is_none_or(|a| *a == s.trust_anchors)
            && (issuer.is_none() || issuer == s.issuer)
    });
    if unchanged {
        return None;
    }
    let mut status = json!({"conditions": [cond]});
    if let Some(anchors) = anchors {
        status["trustAnchors"] = json!(anchors);
    }
    if let Some(issuer) = issuer {
        status["issuer"] = json!(issuer);
    }
    Some(status)
}

/// The first 12 hex digits of a fingerprint, enough to tell anchors apart in messages.
pub(super) fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

fn summary(der: &[u8]) -> Option<CertificateSummary> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let not_after = Timestamp::from_second(cert.validity().not_after.timestamp()).ok()?;
    Some(CertificateSummary {
        fingerprint: super::ca::fingerprint(der),
        subject: Some(cert.subject().to_string()),
        not_after: Time(not_after),
    })
}

#[cfg(test)]
mod tests {
    use weft_api::{Mesh, MeshSpec};

    use super::*;

    fn mesh() -> Mesh {
        let mut mesh = Mesh::new("default", MeshSpec::default());
        mesh.metadata.generation = Some(3);
        mesh
    }

    /// `status`'s answer written into the Mesh, as the controller's patch would.
    fn with_status(mut mesh: Mesh, status: serde_json::Value) -> Mesh {
        mesh.status = Some(serde_json::from_value(status).expect("a Mesh status"));
        mesh
    }

    #[test]
    fn a_failure_is_a_false_condition_naming_its_reason_written_once() {
        let now = Timestamp::now();
        let failed = Err(IdentityError::NotLeader);
        let status = status(&mesh(), &failed, now).expect("a status to write");
        let cond = &status["conditions"][0];
        assert_eq!(cond["type"], IDENTITY_READY);
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "WaitingForLeader");
        assert_eq!(cond["observedGeneration"], 3);
        assert!(status.get("issuer").is_none(), "{status}");
        // The Mesh already says it: nothing to write.
        let shown = with_status(mesh(), status);
        assert_eq!(super::status(&shown, &failed, now), None);
    }

    #[test]
    fn an_issuing_authority_shows_its_anchor_and_issuer() {
        let (_, authority) = crate::identity::test_util::authority();
        let issuing = Ok((authority.clone(), Health::Issuing));
        let now = Timestamp::now();
        let status = status(&mesh(), &issuing, now).expect("a status to write");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(status["conditions"][0]["reason"], "Issuing");
        let anchors = status["trustAnchors"].as_array().expect("the anchors");
        assert_eq!(anchors.len(), 1, "{status}");
        assert_eq!(
            status["issuer"]["fingerprint"],
            crate::identity::ca::fingerprint(authority.issuer().cert_der()),
        );
        // A rotation changes the condition, so it is written again.
        let shown = with_status(mesh(), status);
        assert_eq!(super::status(&shown, &issuing, now), None);
        let rotating = Ok((authority, Health::Rotating("publishing anchor 9f2c".into())));
        let again = super::status(&shown, &rotating, now).expect("the rotation shown");
        assert_eq!(again["conditions"][0]["reason"], "RotatingTrustAnchor");
    }
}
