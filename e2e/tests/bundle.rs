//! Trust-bundle publication on the real cluster: one namespace cannot stop it for the
//! others (a ConfigMap of the bundle's name that Weft does not own, a quota that
//! refuses ConfigMaps), a ConfigMap Weft does not own is never overwritten and its
//! namespace gets no proxies, and a deleted or edited bundle — or a meshed namespace
//! deleted and created again under the same name — is repaired within seconds.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use serde_json::Value;
use weft_e2e::{
    app_deployment, eventually, kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, rollout_status,
    with_temp_ns,
};

const BUNDLE: &str = "weft-trust-bundle";
const KEY: &str = "ca-bundle.pem";
/// How long a repair may take: the operator compares every second, so a few seconds;
/// the margin is for a busy machine.
const REPAIR: Duration = Duration::from_secs(30);

/// The bundle in `ns`, if any.
async fn bundle_in(client: &Client, ns: &str) -> Result<String, String> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(BUNDLE)
        .await
        .map_err(|e| e.to_string())?
        .and_then(|cm| cm.data?.get(KEY).cloned())
        .ok_or_else(|| format!("no {BUNDLE} in {ns}"))
}

/// The Mesh's `TrustBundlePublished` condition.
fn bundle_condition() -> Value {
    let out = kubectl_ok(&["get", "mesh", "default", "-o", "json"]);
    let mesh: Value = serde_json::from_str(&out).expect("the Mesh");
    mesh["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "TrustBundlePublished")
        .cloned()
        .unwrap_or(Value::Null)
}

/// The names of `pod`'s containers and init containers.
fn containers(ns: &str, pod: &str) -> String {
    kubectl_ok(&[
        "get",
        "pod",
        pod,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name}",
    ])
}

#[tokio::test]
async fn a_namespace_whose_bundle_cannot_be_written_stops_no_other() {
    // Names that sort first, as the namespaces a publisher would meet first.
    with_temp_ns("aaa-foreign", |_, foreign| async move {
        with_temp_ns("aab-quota", |_, quota| async move {
            with_temp_ns("zzz-meshed", |client, meshed| async move {
                // A tenant's own immutable ConfigMap of the bundle's name.
                let own = format!(
                    r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: {BUNDLE}, namespace: {foreign}}}
immutable: true
data: {{{KEY}: "the tenant's own roots"}}
"#
                );
                let out = kubectl_stdin(&["apply", "-f", "-"], &own);
                assert!(out.success, "{}", out.stderr);
                // A namespace whose quota refuses every ConfigMap.
                let full = format!(
                    r#"
apiVersion: v1
kind: ResourceQuota
metadata: {{name: no-config-maps, namespace: {quota}}}
spec: {{hard: {{configmaps: "0"}}}}
"#
                );
                let out = kubectl_stdin(&["apply", "-f", "-"], &full);
                assert!(out.success, "{}", out.stderr);
                for ns in [&foreign, &quota] {
                    kubectl_ok(&["annotate", "namespace", ns, "weft.dev/inject=enabled"]);
                }

                // Every other namespace still gets the bundle, and its pods start meshed.
                let bundle = mesh_namespace(&client, &meshed).await;
                let out = kubectl_stdin(&["apply", "-f", "-"], &app_deployment(&meshed, "web", 1));
                assert!(out.success, "{}", out.stderr);
                rollout_status(&meshed, "web");
                let pod = kubectl_ok(&[
                    "get", "pods", "-n", &meshed, "-l", "app=web", "-o",
                    "jsonpath={.items[0].metadata.name}",
                ]);
                assert!(
                    containers(&meshed, &pod).contains("weft-proxy"),
                    "the pod in {meshed} was not meshed: {}",
                    containers(&meshed, &pod)
                );

                // Both namespaces are reported, with their reasons.
                eventually("the Mesh to report both namespaces", REPAIR, || async {
                    let condition = bundle_condition();
                    let message = condition["message"].as_str().unwrap_or_default();
                    if condition["status"] == "False"
                        && message.contains(&format!("{foreign}: ConfigMap {foreign}/{BUNDLE} is not Weft's"))
                        && message.contains(&format!("{quota}: cannot write ConfigMap"))
                        && message.contains("quota")
                    {
                        Ok(())
                    } else {
                        Err(condition.to_string())
                    }
                })
                .await;
                let events = kubectl_ok(&[
                    "get", "events", "-A", "--field-selector",
                    "reason=TrustBundleNotPublished", "-o", "jsonpath={.items[*].note}{.items[*].message}",
                ]);
                assert!(events.contains(&foreign), "no Event names {foreign}: {events}");

                // The tenant's ConfigMap is untouched, and a pod there is not meshed,
                // with the reason on the way back to kubectl.
                assert_eq!(
                    bundle_in(&client, &foreign).await.as_deref(),
                    Ok("the tenant's own roots")
                );
                let pod = format!(
                    r#"
apiVersion: v1
kind: Pod
metadata: {{name: lonely, namespace: {foreign}}}
spec:
  containers:
  - {{name: app, image: weft.local/testapp:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
"#
                );
                let out = kubectl_stdin(&["apply", "-f", "-"], &pod);
                assert!(out.success, "{}", out.stderr);
                assert!(
                    out.stderr.contains("Weft proxy not injected")
                        && out.stderr.contains("is not Weft's"),
                    "no warning about the bundle: {}",
                    out.stderr
                );
                assert!(!containers(&foreign, "lonely").contains("weft-proxy"));

                // Labelling it as Weft's hands it over: the immutable ConfigMap is
                // replaced by the bundle.
                kubectl_ok(&[
                    "label", "configmap", BUNDLE, "-n", &foreign,
                    "app.kubernetes.io/managed-by=weft-operator",
                ]);
                eventually("the handed-over ConfigMap to hold the bundle", REPAIR, || async {
                    match bundle_in(&client, &foreign).await {
                        Ok(b) if b == bundle => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                })
                .await;
            })
            .await;
        })
        .await;
    })
    .await;
}

/// Deletes namespace `0` when dropped (the test's namespace of a fixed name).
struct DeleteNamespace(String);

impl Drop for DeleteNamespace {
    fn drop(&mut self) {
        kubectl(&[
            "delete",
            "namespace",
            &self.0,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

#[tokio::test]
async fn a_deleted_or_edited_bundle_and_a_recreated_namespace_are_repaired() {
    with_temp_ns("bundle-repair", |client, ns| async move {
        let bundle = mesh_namespace(&client, &ns).await;
        let restored = |what: &'static str| {
            let (client, ns, bundle) = (client.clone(), ns.clone(), bundle.clone());
            async move {
                eventually(what, REPAIR, || async {
                    match bundle_in(&client, &ns).await {
                        Ok(b) if b == bundle => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                })
                .await
            }
        };
        kubectl_ok(&["delete", "configmap", BUNDLE, "-n", &ns]);
        restored("the deleted bundle to come back").await;
        kubectl_ok(&[
            "patch", "configmap", BUNDLE, "-n", &ns, "--type=merge", "-p",
            r#"{"data":{"ca-bundle.pem":"edited"}}"#,
        ]);
        restored("the edited bundle to be restored").await;

        // A meshed namespace deleted and created again under the same name, twice.
        let name = format!("e2e-recreated-{}", std::process::id());
        let _cleanup = DeleteNamespace(name.clone());
        for round in 1..=2 {
            let namespace = format!(
                r#"
apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  labels: {{weft.dev/e2e: "true"}}
  annotations: {{weft.dev/inject: enabled}}
"#
            );
            let out = kubectl_stdin(&["create", "-f", "-"], &namespace);
            assert!(out.success, "round {round}: {}", out.stderr);
            let out = kubectl_stdin(&["apply", "-f", "-"], &app_deployment(&name, "web", 1));
            assert!(out.success, "round {round}: {}", out.stderr);
            eventually(
                &format!("round {round}: a meshed pod Ready in the recreated namespace"),
                Duration::from_secs(90),
                || async {
                    let out = kubectl(&[
                        "get", "pods", "-n", &name, "-l", "app=web", "-o",
                        r#"jsonpath={.items[0].metadata.name} {.items[0].status.conditions[?(@.type=="Ready")].status}"#,
                    ]);
                    match out.stdout.split_whitespace().collect::<Vec<_>>()[..] {
                        [pod, "True"] if containers(&name, pod).contains("weft-proxy") => Ok(()),
                        _ => Err(out.stdout + &out.stderr),
                    }
                },
            )
            .await;
            kubectl_ok(&["delete", "namespace", &name, "--wait=false"]);
            eventually(
                &format!("round {round}: namespace {name} to be gone"),
                Duration::from_secs(120),
                || async {
                    let out = kubectl(&["get", "namespace", &name, "--ignore-not-found", "-o", "name"]);
                    if out.success && out.stdout.trim().is_empty() {
                        Ok(())
                    } else {
                        Err(out.stdout + &out.stderr)
                    }
                },
            )
            .await;
        }
    })
    .await;
}
