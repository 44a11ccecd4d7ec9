//! Registration of the injection webhook: the operator creates and keeps the
//! MutatingWebhookConfiguration `weft-injector`, so nothing under `deploy/` changes at
//! run time and a GitOps tool never sees drift.
//!
//! The configuration is owned by the active Mesh (an owner reference), so deleting the
//! Mesh, or uninstalling the CRDs, removes the webhook with it: a cluster without a
//! Mesh never has a webhook that could refuse pods. Its `caBundle` is the mesh's trust
//! bundle, which also verifies the webhook's serving certificate, and follows anchor
//! rotation. Never subject to it: `kube-system`, the operator's namespace, the Mesh's
//! `injection.excludedNamespaces`, and namespaces labelled `weft.dev/inject=disabled`.
//!
//! Every replica applies the same object with the same field manager, which is
//! idempotent. The `InjectorReady` condition says whether the last apply worked.

use std::time::{Duration, Instant};

use k8s_openapi::{
    ByteString, api::admissionregistration::v1::MutatingWebhookConfiguration, jiff::Timestamp,
};
use kube::{
    Api, Client, Resource as _,
    api::{Patch, PatchParams},
    runtime::reflector::{ObjectRef, Store},
};
use serde_json::{Value, json};
use weft_api::{
    ACTIVE_MESH_NAME, ConditionStatus, Mesh,
    annotations::INJECT,
    condition::{carry_transition_times, condition},
    mesh::{FailurePolicy, conditions::INJECTOR_READY},
};

use crate::identity::CurrentAuthority;

/// The MutatingWebhookConfiguration's name.
pub const CONFIGURATION: &str = "weft-injector";
/// The webhook's name, which the API server quotes when it fails.
pub const WEBHOOK: &str = "inject.weft.dev";
/// The Service in front of the webhook, in the operator's namespace.
pub const SERVICE: &str = "weft-webhook";
const FIELD_MANAGER: &str = "weft-operator/injector";
/// How often the registration is checked against what it should be.
const CHECK: Duration = Duration::from_secs(5);
/// How often it is re-applied even when nothing changed, in case someone edited it.
const REAPPLY: Duration = Duration::from_secs(300);

/// The MutatingWebhookConfiguration for `mesh`, trusting `bundle_pem`.
pub fn configuration(mesh: &Mesh, bundle_pem: &str, operator_namespace: &str) -> Value {
    let spec = &mesh.spec;
    let mut excluded = vec!["kube-system".to_string(), operator_namespace.to_string()];
    for ns in &spec.injection.excluded_namespaces {
        if !excluded.contains(ns) {
            excluded.push(ns.clone());
        }
    }
    let failure_policy = policy_name(spec.webhook.failure_policy);
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": CONFIGURATION,
            "labels": {
                "app.kubernetes.io/part-of": "weft",
                "app.kubernetes.io/managed-by": "weft-operator",
            },
            "ownerReferences": [{
                "apiVersion": Mesh::api_version(&()),
                "kind": Mesh::kind(&()),
                "name": mesh.metadata.name,
                "uid": mesh.metadata.uid,
            }],
        },
        "webhooks": [{
            "name": WEBHOOK,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "service": {
                    "name": SERVICE,
                    "namespace": operator_namespace,
                    "path": super::PATH,
                    "port": 443,
                },
                "caBundle": ByteString(bundle_pem.as_bytes().to_vec()),
            },
            "rules": [{
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded},
                {"key": INJECT, "operator": "NotIn", "values": ["disabled"]},
            ]},
            "failurePolicy": failure_policy,
            "matchPolicy": "Equivalent",
            "sideEffects": "NoneOnDryRun",
            "timeoutSeconds": spec.webhook.timeout_seconds,
            "reinvocationPolicy": "IfNeeded",
        }],
    })
}

fn policy_name(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::Ignore => "Ignore",
        FailurePolicy::Fail => "Fail",
    }
}

/// Keeps the webhook registered for the active Mesh until `shutdown` resolves.
pub async fn run(
    client: Client,
    meshes: Store<Mesh>,
    mut authority: CurrentAuthority,
    operator_namespace: String,
    shutdown: impl Future<Output = ()>,
) {
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let mesh_api = Api::<Mesh>::all(client);
    let mut applied: Option<(Value, Instant)> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let mesh = meshes.get(&ObjectRef::new(ACTIVE_MESH_NAME));
        let bundle = authority
            .borrow_and_update()
            .as_ref()
            .map(|a| a.bundle_pem().to_string());
        if let (Some(mesh), Some(bundle)) = (mesh, bundle) {
            let desired = configuration(&mesh, &bundle, &operator_namespace);
            let fresh = applied
                .as_ref()
                .is_some_and(|(last, at)| *last == desired && at.elapsed() < REAPPLY);
            if !fresh {
                let result = configs
                    .patch(
                        CONFIGURATION,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&desired),
                    )
                    .await;
                let verdict = match &result {
                    Ok(_) => {
                        tracing::info!(webhook = WEBHOOK, "injection webhook registered");
                        applied = Some((desired.clone(), Instant::now()));
                        Ok(policy_name(mesh.spec.webhook.failure_policy))
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot register the injection webhook");
                        applied = None;
                        Err(error.to_string())
                    }
                };
                if let Err(error) = write_status(&mesh_api, &mesh, verdict).await {
                    tracing::warn!(%error, "cannot write the Mesh's InjectorReady condition");
                    applied = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK) => {}
            changed = authority.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = &mut shutdown => return,
        }
    }
}

/// Writes `InjectorReady` when it changed: the failure policy registered, or why not.
async fn write_status(
    api: &Api<Mesh>,
    mesh: &Mesh,
    verdict: Result<&'static str, String>,
) -> Result<(), kube::Error> {
    let current = mesh
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let (status, reason, message) = match verdict {
        Ok(policy) => (
            ConditionStatus::True,
            "Registered",
            format!("webhook {WEBHOOK} is registered with failure policy {policy}"),
        ),
        Err(error) => (
            ConditionStatus::False,
            "RegistrationFailed",
            format!("cannot register webhook {WEBHOOK}: {error}"),
        ),
    };
    let cond = condition(
        INJECTOR_READY,
        status,
        reason,
        message,
        mesh.metadata.generation,
        Timestamp::now(),
    );
    let cond = carry_transition_times(current, vec![cond]).remove(0);
    if weft_api::condition::find(current, INJECTOR_READY) == Some(&cond) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": Mesh::api_version(&()),
        "kind": Mesh::kind(&()),
        "status": {"conditions": [cond]},
    });
    api.patch_status(
        ACTIVE_MESH_NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(spec: Value) -> Mesh {
        serde_json::from_value(json!({
            "apiVersion": "weft.dev/v1alpha1",
            "kind": "Mesh",
            "metadata": {"name": "default", "uid": "1234"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn the_registration_never_covers_system_namespaces_and_follows_the_mesh() {
        let config = configuration(
            &mesh(json!({
                "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 5},
                "injection": {"excludedNamespaces": ["monitoring", "kube-system"]},
            })),
            "PEM",
            "weft-system",
        );
        let typed: MutatingWebhookConfiguration = serde_json::from_value(config.clone()).unwrap();
        let hook = &typed.webhooks.unwrap()[0];
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hook.timeout_seconds, Some(5));
        assert_eq!(hook.side_effects, "NoneOnDryRun");
        assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
        assert_eq!(hook.client_config.ca_bundle.as_ref().unwrap().0, b"PEM");
        let selector = hook.namespace_selector.as_ref().unwrap();
        let exprs = selector.match_expressions.as_ref().unwrap();
        assert_eq!(
            exprs[0].values.as_deref().unwrap(),
            ["kube-system", "weft-system", "monitoring"]
        );
        assert_eq!(exprs[1].key, "weft.dev/inject");
        let owner = &typed.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Mesh", "1234"));

        let default = configuration(&mesh(json!({})), "PEM", "weft-system");
        assert_eq!(default["webhooks"][0]["failurePolicy"], "Ignore");
        assert_eq!(default["webhooks"][0]["timeoutSeconds"], 10);
    }
}
