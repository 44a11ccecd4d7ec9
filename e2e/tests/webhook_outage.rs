//! The webhook can never brick the cluster: with the operator stopped, pods are still
//! created (failure policy `Ignore`, the default); with the Mesh set to `Fail`, pods in
//! meshed namespaces are refused with a message naming the webhook, and `kube-system`
//! is unaffected.
//!
//! This stops the operator, so it is the only test in its binary (test binaries run
//! one after another); a guard restores the Mesh and the operator even on failure.

use std::time::Duration;

use weft_e2e::{
    kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, patch_mesh, patch_mesh_ok, scale_operator,
    with_temp_ns,
};

/// Waits until the registered webhook has `policy` as its failure policy.
fn wait_for_policy(policy: &str) {
    for _ in 0..120 {
        let out = kubectl(&[
            "get",
            "mutatingwebhookconfiguration",
            "weft-injector",
            "-o",
            "jsonpath={.webhooks[0].failurePolicy}",
        ]);
        if out.stdout.trim() == policy {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the webhook never got failure policy {policy}");
}

/// Puts the Mesh and the operator back as the install left them.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = patch_mesh(r#"{"spec":{"webhook":null}}"#);
        scale_operator(1);
        wait_for_policy("Ignore");
    }
}

fn pod(name: &str, ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{weft.dev/e2e-app: {name}}}}}
spec:
  containers:
  - {{name: app, image: weft.local/testapp:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
"#
    )
}

#[tokio::test]
async fn a_stopped_operator_blocks_pods_only_when_the_mesh_says_fail() {
    with_temp_ns("outage", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let _restore = Restore;

        // Ignore (the default): the pod is created, unmeshed.
        wait_for_policy("Ignore");
        scale_operator(0);
        let created = kubectl_stdin(&["apply", "-f", "-"], &pod("while-away", &ns));
        assert!(created.success, "refused with Ignore: {}", created.stderr);
        let containers = kubectl_ok(&[
            "get",
            "pod",
            "while-away",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name}",
        ]);
        assert_eq!(containers.trim(), "app");

        // Fail: refused in the meshed namespace, with the webhook named.
        scale_operator(1);
        patch_mesh_ok(r#"{"spec":{"webhook":{"failurePolicy":"Fail"}}}"#);
        wait_for_policy("Fail");
        scale_operator(0);
        let refused = kubectl_stdin(&["apply", "-f", "-"], &pod("refused", &ns));
        assert!(
            !refused.success,
            "created while the webhook is down with Fail"
        );
        assert!(
            refused.stderr.contains("inject.weft.dev"),
            "the refusal names the webhook: {}",
            refused.stderr
        );

        // kube-system is never subject to the webhook.
        let name = format!("{ns}-system");
        let system = kubectl_stdin(&["apply", "-f", "-"], &pod(&name, "kube-system"));
        let _ = kubectl(&["delete", "pod", &name, "-n", "kube-system", "--wait=false"]);
        assert!(system.success, "kube-system refused: {}", system.stderr);
    })
    .await;
}
