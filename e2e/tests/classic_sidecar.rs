//! With `spec.proxy.nativeSidecar: false`, the proxy is the pod's first regular
//! container, and its `postStart` hook (`weft-proxy await-ready`) holds the app back
//! until the proxy is ready.
//!
//! This changes the Mesh every pod is injected from, so it is the only test in its
//! binary (test binaries run one after another); a guard restores the Mesh.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use weft_e2e::{
    app_deployment, eventually, kubectl_ok, kubectl_stdin, mesh_namespace, patch_mesh,
    patch_mesh_ok, rollout_status, with_temp_ns,
};

struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = patch_mesh(r#"{"spec":{"proxy":null}}"#);
    }
}

#[tokio::test]
async fn a_classic_sidecar_starts_first_and_the_app_waits_for_it() {
    with_temp_ns("classic", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let _restore = Restore;
        patch_mesh_ok(r#"{"spec":{"proxy":{"nativeSidecar":false}}}"#);
        // The operator has seen the change once a server-side dry run injects the
        // classic way.
        eventually("a classic injection", Duration::from_secs(60), || {
            let ns = ns.clone();
            async move {
                let probe = format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: probe, namespace: {ns}}}\nspec:\n  containers:\n  - {{name: app, image: weft.local/testapp:dev}}\n"
                );
                let out = kubectl_stdin(
                    &["create", "--dry-run=server", "-o", "jsonpath={.spec.containers[*].name}", "-f", "-"],
                    &probe,
                );
                if out.stdout.trim() == "weft-proxy app" { Ok(()) } else { Err(format!("{}{}", out.stdout, out.stderr)) }
            }
        })
        .await;

        // The app says a line first, so its log can be told from the proxy's.
        let deployment = app_deployment(&ns, "classic", 1)
            .replace(r#"command: [sh, -c, ""#, r#"command: [sh, -c, "echo the-app-speaks; "#);
        assert!(deployment.contains("the-app-speaks"), "{deployment}");
        let applied = kubectl_stdin(&["apply", "-f", "-"], &deployment);
        assert!(applied.success, "{}", applied.stderr);
        rollout_status(&ns, "classic");
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("app=classic"))
            .await
            .expect("the pods");
        let pod = &pods.items[0];
        let spec = pod.spec.as_ref().expect("a spec");
        fn names(list: &[k8s_openapi::api::core::v1::Container]) -> Vec<&str> {
            list.iter().map(|c| c.name.as_str()).collect()
        }
        assert_eq!(names(spec.init_containers.as_deref().unwrap_or_default()), ["weft-init"]);
        assert_eq!(names(&spec.containers), ["weft-proxy", "app"]);
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        let mut named: Vec<&str> = statuses.iter().map(|s| s.name.as_str()).collect();
        named.sort_unstable();
        assert_eq!(named, ["app", "weft-proxy"], "a status per container: {statuses:?}");
        assert!(
            statuses.iter().all(|s| s.ready && s.restart_count == 0),
            "the app started once, after its proxy was ready: {statuses:?}"
        );
        // `kubectl logs` without -c still means the app, not the proxy listed first.
        let name = pod.metadata.name.as_deref().expect("a name");
        let logs = kubectl_ok(&["logs", "-n", &ns, name]);
        assert!(logs.contains("the-app-speaks"), "kubectl logs showed: {logs}");
    })
    .await;
}
