//! Installing Weft as a user would, and the Mesh resource on a real API server.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use weft_api::{Mesh, MeshSpec};
use weft_e2e::{eventually, kubectl, kubectl_ok, kubectl_stdin};

#[tokio::test]
async fn deploy_applies_server_side_without_warnings_and_the_operator_gets_ready() {
    let out = kubectl(&["apply", "--server-side", "-k", "deploy/"]);
    assert!(
        out.success,
        "kubectl apply -k deploy/ failed:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.to_lowercase().contains("warning"),
        "kubectl apply -k deploy/ warned:\n{}",
        out.stderr
    );
    let rendered = kubectl(&["apply", "--dry-run=client", "-k", "deploy/"]);
    assert!(rendered.success, "client dry run:\n{}", rendered.stderr);

    let client = weft_e2e::client().await;
    let deployments = Api::<Deployment>::namespaced(client, "weft-system");
    eventually(
        "the operator Deployment to be available",
        Duration::from_secs(120),
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments
                    .get("weft-operator")
                    .await
                    .map_err(|e| e.to_string())?;
                let ready = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                if ready >= 1 {
                    Ok(())
                } else {
                    Err(format!("{:?}", d.status))
                }
            }
        },
    )
    .await;
    let pods = kubectl_ok(&[
        "get",
        "pods",
        "-n",
        "weft-system",
        "-l",
        "app.kubernetes.io/name=weft-operator",
        "--no-headers",
    ]);
    assert!(pods.contains("1/1") && pods.contains("Running"), "{pods}");
}

#[tokio::test]
async fn the_default_mesh_turns_ready_and_others_are_not_active() {
    kubectl_ok(&["apply", "-f", "examples/mesh.yaml"]);
    let waited = kubectl(&[
        "wait",
        "--for=condition=Ready",
        "mesh/default",
        "--timeout=90s",
    ]);
    assert!(
        waited.success,
        "kubectl wait mesh/default:\n{}{}",
        waited.stdout, waited.stderr
    );

    let client = weft_e2e::client().await;
    let meshes = Api::<Mesh>::all(client);
    let default = meshes.get("default").await.unwrap();
    let status = default.status.expect("the operator wrote a status");
    assert_eq!(status.observed_generation, default.metadata.generation);

    let name = format!("e2e-second-{}", std::process::id());
    let second = serde_json::to_string(&Mesh::new(&name, MeshSpec::default())).unwrap();
    let applied = kubectl_stdin(&["apply", "-f", "-"], &second);
    assert!(applied.success, "{}", applied.stderr);
    let reason = eventually(
        "the second Mesh to be judged",
        Duration::from_secs(60),
        || {
            let meshes = meshes.clone();
            let name = name.clone();
            async move {
                let mesh = meshes.get(&name).await.map_err(|e| e.to_string())?;
                let conditions = mesh.status.map(|s| s.conditions).unwrap_or_default();
                let ready = weft_api::condition::find(&conditions, "Ready").cloned();
                ready
                    .map(|c| (c.status, c.reason))
                    .ok_or_else(|| "no Ready condition yet".to_string())
            }
        },
    )
    .await;
    assert_eq!(
        reason,
        ("False".to_string(), "NotTheActiveMesh".to_string())
    );
    let table = kubectl_ok(&["get", "mesh", &name, "--no-headers"]);
    assert!(table.contains("NotTheActiveMesh"), "{table}");
    let events = kubectl_ok(&[
        "get",
        "events",
        "-A",
        "--field-selector",
        &format!("involvedObject.name={name}"),
    ]);
    assert!(
        events.contains("NotTheActiveMesh"),
        "an Event says why:\n{events}"
    );
    kubectl_ok(&["delete", "mesh", &name]);
}

/// A Mesh with `spec` is refused by the API server with a message naming `field`.
#[track_caller]
fn assert_mesh_refused(spec: &str, field: &str) {
    let manifest = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: e2e-invalid}}\nspec: {spec}\n"
    );
    let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &manifest);
    assert!(
        !out.success,
        "the API server accepted an invalid Mesh: {spec}"
    );
    assert!(
        out.stderr.contains(field),
        "refusal of {spec} does not name {field}:\n{}",
        out.stderr
    );
}

#[test]
fn invalid_meshes_are_refused_with_the_field_named() {
    assert_mesh_refused(
        "{defaultInboundPolicy: allow-all}",
        "spec.defaultInboundPolicy",
    );
    assert_mesh_refused(
        "{identity: {issuerLifetime: -5m}}",
        "spec.identity.issuerLifetime",
    );
    assert_mesh_refused(
        "{identity: {workloadCertificateLifetime: soon}}",
        "spec.identity.workloadCertificateLifetime",
    );
    assert_mesh_refused("{trustDomain: Not_A_DNS_Name}", "spec.trustDomain");
    assert_mesh_refused(
        "{identity: {issuerLifetime: 2h, workloadCertificateLifetime: 24h}}",
        "spec.identity.issuerLifetime",
    );
    assert_mesh_refused(
        "{identity: {trustAnchor: {mode: External}}}",
        "spec.identity.trustAnchor.secretName",
    );
    assert_mesh_refused("{proxy: {ports: {inbound: 4140}}}", "spec.proxy.ports");
    assert_mesh_refused(
        "{webhook: {timeoutSeconds: 31}}",
        "spec.webhook.timeoutSeconds",
    );
}

#[test]
fn the_other_resources_cel_rules_run_on_the_api_server() {
    let refused = |manifest: &str, field: &str| {
        let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], manifest);
        assert!(!out.success, "accepted:\n{manifest}");
        assert!(
            out.stderr.contains(field),
            "refusal does not name {field}:\n{}",
            out.stderr
        );
    };
    let ns = "default";
    refused(
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: ServiceProfile\nmetadata: {{name: x, namespace: {ns}}}\n\
             spec: {{service: x, routes: [{{name: a, condition: {{pathRegex: /}}}}, {{name: a, condition: {{pathRegex: /b}}}}]}}\n"
        ),
        "spec.routes",
    );
    refused(
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: ServerAuthorization\nmetadata: {{name: x, namespace: {ns}}}\n\
             spec: {{server: {{podSelector: {{}}, port: 0}}, client: {{unauthenticated: true}}}}\n"
        ),
        "spec.server.port",
    );
    refused(
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: ServerAuthorization\nmetadata: {{name: x, namespace: {ns}}}\n\
             spec: {{server: {{podSelector: {{}}, port: 80}}, client: {{networks: [{{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}}}}\n"
        ),
        "spec.client.networks[0].except",
    );
    let ok = kubectl_stdin(
        &["apply", "--dry-run=server", "-f", "-"],
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: ServerAuthorization\nmetadata: {{name: x, namespace: {ns}}}\n\
             spec: {{server: {{podSelector: {{}}, port: http}}, client: {{meshTLS: {{identities: ['*']}}}}}}\n"
        ),
    );
    assert!(
        ok.success,
        "a valid ServerAuthorization was refused:\n{}",
        ok.stderr
    );
}

#[test]
fn kubectl_lists_weft_resources_by_category_and_meshstatus() {
    let all = kubectl(&["get", "weft", "-A"]);
    assert!(all.success, "kubectl get weft -A:\n{}", all.stderr);
    let statuses = kubectl(&["get", "meshstatus", "-A"]);
    assert!(
        statuses.success,
        "kubectl get meshstatus -A:\n{}",
        statuses.stderr
    );
    let explained = kubectl_ok(&["explain", "mesh.spec.defaultInboundPolicy"]);
    assert!(explained.contains("all-authenticated"), "{explained}");
}

/// The GitOps promise: once the operator has run (registered its webhook, written
/// statuses, published bundles), re-applying what the user applied changes nothing.
#[tokio::test]
async fn reapplying_deploy_and_the_mesh_after_the_operator_ran_changes_nothing() {
    kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "mesh/default",
        "--timeout=120s",
    ]);
    kubectl_ok(&["get", "mutatingwebhookconfiguration", "weft-injector"]);
    for args in [
        ["diff", "--server-side", "-k", "deploy/"],
        ["diff", "", "-k", "deploy/"],
        ["diff", "", "-f", "examples/mesh.yaml"],
    ] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let out = kubectl(&args);
        assert!(
            out.success && out.stdout.trim().is_empty(),
            "kubectl {} reports a change:\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
    }
}
