//! The identity controller: keeps the trust anchor, the issuer and the trust bundle, and
//! reports them on the Mesh.
//!
//! - The anchor comes from the user's Secret (mode `External`) or from the Secret
//!   `weft-trust-anchor` the operator generates in its namespace (mode `Generated`).
//! - The issuer lives in the Secret `weft-issuer`, re-issued when missing, unreadable,
//!   no longer signed by the anchor, or in the last third of its life.
//! - The trust bundle it makes is published to the meshed namespaces by
//!   [`super::bundle`].
//! - The Mesh's status gets `trustAnchors`, `issuer` and `IdentityReady`, written with
//!   its own field manager.
//!
//! Keys are only ever in the two Secrets and in memory; status and logs carry
//! fingerprints and expiry dates, never keys.
//!
//! What is pure lives beside it: the rotation state machine ([`super::rotation`]),
//! the readiness and the Mesh status it gives ([`super::readiness`]), and the Secrets'
//! contents ([`super::secrets`]). This module only reads and writes the cluster.
//!
//! Why a loop every [`INTERVAL`] and not kube-runtime's `Controller`: the work is
//! driven by time more than by objects. Anchor rotation steps, the issuer's renewal in
//! the last third of its life and an anchor's approaching expiry come due with no
//! object changing; the one object reconciled is a singleton (the active Mesh), and
//! what it keeps is the Secrets of one namespace. A `Controller` would still need
//! a requeue of the same period for the clock, so it would add watches and a queue
//! without removing the timer; the one event that cannot wait for the next tick,
//! gaining the Lease, already wakes the loop.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;
use weft_api::{Mesh, MeshSpec, mesh::TrustAnchorMode};

use super::{
    Authority, Ca,
    anchors::{self, AnchorSet},
    readiness::{self, Health, IdentityError, short},
    rotation::{Policy, Step, next_step},
    secrets::{
        ANCHOR_SECRET, ISSUER_SECRET, anchor_secret, ca_from_secret, ca_secret, secret_parts,
    },
};

/// The field manager of the identity controller's writes.
const FIELD_MANAGER: &str = "weft-operator/identity";
pub use super::bundle::{BUNDLE_CONFIG_MAP, BUNDLE_KEY};
/// How often the controller re-checks everything.
const INTERVAL: Duration = Duration::from_secs(10);

/// The identity controller.
pub struct IdentityController {
    client: Client,
    namespace: String,
    /// How long a new trust bundle takes to reach every proxy.
    propagation: Duration,
    recorder: Recorder,
    authority: watch::Sender<Option<Arc<Authority>>>,
    /// Whether this replica holds the Lease: only the holder generates, rotates and
    /// renews CA material and writes identity status; every replica reads the CA
    /// Secrets and signs with them.
    leader: watch::Receiver<bool>,
}

impl std::fmt::Debug for IdentityController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityController")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl IdentityController {
    pub fn new(
        client: Client,
        namespace: &str,
        propagation: Duration,
        reporter: Reporter,
        authority: watch::Sender<Option<Arc<Authority>>>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            leader,
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespace: namespace.to_string(),
            propagation,
            authority,
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut leader = self.leader.clone();
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(INTERVAL) => {}
                // Becoming the leader may be what the CA was waiting for.
                Ok(()) = leader.changed() => {}
            }
        }
    }

    async fn reconcile(&mut self) {
        let meshes = Api::<Mesh>::all(self.client.clone());
        let mesh = match meshes.get_opt(weft_api::ACTIVE_MESH_NAME).await {
            Ok(Some(mesh)) => mesh,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot read the Mesh");
                return;
            }
        };
        let verdict = self.ensure_authority(&mesh).await;
        if let Err(error) = &verdict {
            tracing::warn!(%error, "identity is not ready");
        }
        if self.leading()
            && let Err(error) = self.write_status(&mesh, verdict).await
        {
            tracing::warn!(%error, "cannot write the Mesh's identity status");
        }
    }

    async fn ensure_authority(
        &mut self,
        mesh: &Mesh,
    ) -> Result<(Arc<Authority>, Health), IdentityError> {
        let spec = &mesh.spec;
        let now = OffsetDateTime::now_utc();
        let (anchors, health) = self.anchors(mesh, now).await?;
        let issuer = self.issuer(spec, &anchors.current, now).await?;
        let bundle = anchors.bundle_pem();
        let current = self.authority.borrow().clone();
        if let Some(current) = current
            && current.issuer().fingerprint() == issuer.fingerprint()
            && current.bundle_pem() == bundle
            && current.trust_domain() == spec.trust_domain
        {
            return Ok((current, health));
        }
        let authority = Arc::new(Authority::new(
            issuer,
            bundle,
            &spec.trust_domain,
            spec.identity.workload_certificate_lifetime.get(),
        ));
        tracing::info!(
            anchor = %anchors.current.fingerprint(),
            issuer = %authority.issuer().fingerprint(),
            "identity authority ready"
        );
        self.authority.send_replace(Some(authority.clone()));
        Ok((authority, health))
    }

    fn leading(&self) -> bool {
        *self.leader.borrow()
    }

    /// The anchors, rotated one step when one is due.
    async fn anchors(
        &self,
        mesh: &Mesh,
        now: OffsetDateTime,
    ) -> Result<(AnchorSet, Health), IdentityError> {
        let spec = &mesh.spec;
        let anchor_spec = &spec.identity.trust_anchor;
        let secrets = Api::<Secret>::namespaced(self.client.clone(), &self.namespace);
        if anchor_spec.mode == TrustAnchorMode::External {
            let name = anchor_spec.secret_name.clone().unwrap_or_default();
            let secret =
                secrets
                    .get_opt(&name)
                    .await?
                    .ok_or_else(|| IdentityError::AnchorNotFound {
                        namespace: self.namespace.clone(),
                        name: name.clone(),
                    })?;
            let (data, _) = secret_parts(&secret);
            let text = |key: &str| {
                data.get(key)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            };
            let anchor = Ca::from_pem(&text(anchors::CURRENT_CERT), &text(anchors::CURRENT_KEY))
                .map_err(|source| IdentityError::InvalidAnchor {
                    name: name.clone(),
                    source,
                })?;
            if anchor.not_after() <= now {
                return Err(IdentityError::AnchorExpired { name });
            }
            let life = anchor.not_after() - anchor.not_before();
            let health = if anchor.not_after() - now < life / 3 {
                Health::AnchorExpiringSoon(format!(
                    "the trust anchor in Secret {name} expires at {}; replace it before then",
                    anchor.not_after()
                ))
            } else {
                Health::Issuing
            };
            return Ok((AnchorSet::new(anchor), health));
        }

        let policy = Policy {
            automatic: spec.identity.automatic_rotation,
            propagation: self.propagation,
            workload_lifetime: spec.identity.workload_certificate_lifetime.get(),
        };
        let lifetime = anchor_spec.lifetime.get();
        let (set, stored) = match secrets.get_opt(ANCHOR_SECRET).await? {
            Some(secret) => {
                let (data, annotations) = secret_parts(&secret);
                let set = AnchorSet::from_secret(&data, &annotations).map_err(|source| {
                    IdentityError::InvalidAnchor {
                        name: ANCHOR_SECRET.into(),
                        source,
                    }
                })?;
                (
                    set,
                    Some((data, annotations, secret.metadata.resource_version)),
                )
            }
            None if !self.leading() => return Err(IdentityError::NotLeader),
            None => {
                let set = AnchorSet::new(
                    Ca::generate_anchor(&spec.trust_domain, lifetime, now)
                        .map_err(IdentityError::Generate)?,
                );
                secrets
                    .create(&PostParams::default(), &anchor_secret(&set, None))
                    .await?;
                tracing::info!(fingerprint = %set.current.fingerprint(), "generated a trust anchor");
                (set, None)
            }
        };
        let step = next_step(&set.times(), &policy, now);
        let mut unsaved = None;
        let set = match (step, stored) {
            (Step::Wait, _) | (_, None) => set,
            // The leader takes the step; this replica sees it on a later pass.
            _ if !self.leading() => set,
            (step, Some((data, annotations, resource_version))) => {
                let rotated = set
                    .apply(step, &policy, &spec.trust_domain, lifetime, now)
                    .map_err(IdentityError::Generate)?;
                match secrets
                    .replace(
                        ANCHOR_SECRET,
                        &PostParams::default(),
                        &anchor_secret(&rotated, resource_version),
                    )
                    .await
                {
                    Ok(_) => {
                        self.rotation_event(mesh, step, &rotated).await;
                        rotated
                    }
                    Err(error) => {
                        // Keep serving with the anchors as stored; the step is retried
                        // on the next pass, and identity stays up meanwhile.
                        tracing::warn!(%error, ?step, "cannot save the trust anchor rotation");
                        unsaved = Some(format!(
                            "rotation step {step:?} could not be saved: {error}"
                        ));
                        AnchorSet::from_secret(&data, &annotations).map_err(|source| {
                            IdentityError::InvalidAnchor {
                                name: ANCHOR_SECRET.into(),
                                source,
                            }
                        })?
                    }
                }
            }
        };
        if set.current.not_after() <= now {
            return Err(IdentityError::AnchorExpired {
                name: ANCHOR_SECRET.into(),
            });
        }
        let health = match (&set.next, &set.previous) {
            (Some((next, at)), _) => Health::Rotating(format!(
                "trust anchor {} is in the bundle and signs from {}",
                short(&next.fingerprint()),
                *at + self.propagation
            )),
            (None, Some((_, retire_after))) => Health::Rotating(format!(
                "trust anchor {} signs; the previous one leaves the bundle at {retire_after}",
                short(&set.current.fingerprint())
            )),
            (None, None) => Health::Issuing,
        };
        let health = match unsaved {
            Some(problem) => Health::Rotating(problem),
            None => health,
        };
        Ok((set, health))
    }

    async fn rotation_event(&self, mesh: &Mesh, step: Step, set: &AnchorSet) {
        let (reason, note) = match step {
            Step::Start => (
                "TrustAnchorRotationStarted",
                format!(
                    "new trust anchor {} added to the trust bundle",
                    set.next
                        .as_ref()
                        .map(|(n, _)| short(&n.fingerprint()).to_string())
                        .unwrap_or_default()
                ),
            ),
            Step::Promote => (
                "TrustAnchorPromoted",
                format!(
                    "trust anchor {} now signs the issuer",
                    short(&set.current.fingerprint())
                ),
            ),
            Step::Retire => (
                "TrustAnchorRetired",
                "the previous trust anchor left the trust bundle".to_string(),
            ),
            Step::Wait => return,
        };
        tracing::info!(reason, %note, "trust anchor rotation");
        let event = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: "RotateTrustAnchor".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &mesh.object_ref(&())).await {
            tracing::warn!(%error, "could not publish event");
        }
    }

    async fn issuer(
        &self,
        spec: &MeshSpec,
        anchor: &Ca,
        now: OffsetDateTime,
    ) -> Result<Ca, IdentityError> {
        let secrets = Api::<Secret>::namespaced(self.client.clone(), &self.namespace);
        let lifetime = spec.identity.issuer_lifetime.get();
        let stored = secrets
            .get_opt(ISSUER_SECRET)
            .await?
            .map(|secret| ca_from_secret(&secret));
        match stored {
            Some(Ok(issuer))
                if super::ca::issued_by(&issuer, anchor)
                    && (!renewal_due(&issuer, lifetime, now)
                        // Not the leader: keep signing with it while the leader
                        // renews it, as long as it has not expired.
                        || (!self.leading() && issuer.not_after() > now)) =>
            {
                return Ok(issuer);
            }
            _ if !self.leading() => return Err(IdentityError::NotLeader),
            Some(Ok(_)) => {
                tracing::info!("the issuer is due for renewal or was signed by another anchor")
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "the issuer Secret is unusable; replacing it")
            }
            None => {}
        }
        // The issuer never outlives the anchor that signed it.
        let until_anchor_expiry = Duration::try_from(anchor.not_after() - now).unwrap_or_default();
        let issuer = anchor
            .issue_intermediate(&spec.trust_domain, lifetime.min(until_anchor_expiry), now)
            .map_err(IdentityError::Generate)?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        secrets
            .patch(
                ISSUER_SECRET,
                &params,
                &Patch::Apply(&ca_secret(ISSUER_SECRET, &issuer)),
            )
            .await?;
        tracing::info!(fingerprint = %issuer.fingerprint(), not_after = %issuer.not_after(), "issued a new issuer");
        Ok(issuer)
    }

    async fn write_status(
        &self,
        mesh: &Mesh,
        verdict: Result<(Arc<Authority>, Health), IdentityError>,
    ) -> Result<(), kube::Error> {
        let Some(status) = readiness::status(mesh, &verdict, Timestamp::now()) else {
            return Ok(());
        };
        let patch = json!({
            "apiVersion": Mesh::api_version(&()),
            "kind": Mesh::kind(&()),
            "status": status,
        });
        Api::<Mesh>::all(self.client.clone())
            .patch_status(
                weft_api::ACTIVE_MESH_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }
}

/// Whether `issuer` is in the last third of `lifetime`.
fn renewal_due(issuer: &Ca, lifetime: Duration, now: OffsetDateTime) -> bool {
    let remaining = issuer.not_after() - now;
    remaining < time::Duration::try_from(lifetime / 3).unwrap_or(time::Duration::ZERO)
}
