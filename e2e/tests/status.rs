//! MeshStatus on the real cluster counts what proxies acknowledged, not what the
//! operator sent: with one proxy of two cut off from the operator while the
//! configuration changes, `IN-SYNC` shows 1/2 while `MESHED` stays 2/2, and it
//! returns to 2/2 once that proxy reaches the operator again.

use std::time::Duration;

use serde_json::Value;
use weft_e2e::{
    control_rule, eventually, kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, pod_netns,
    web_service, with_temp_ns,
};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Waits until MeshStatus `web` shows `meshed` and `in_sync` as printed, and returns
/// its status.
async fn wait_for(ns: &str, meshed: &str, in_sync: &str) -> Value {
    eventually(
        &format!("MeshStatus web at meshed {meshed}, in sync {in_sync}"),
        TIMEOUT,
        || async {
            let out = kubectl(&["get", "meshstatus", "web", "-n", ns, "-o", "json"]);
            if !out.success {
                return Err(out.stderr);
            }
            let status: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
            let summary = &status["status"]["summary"];
            let seen = (
                summary["meshed"].as_str().unwrap_or_default(),
                summary["inSync"].as_str().unwrap_or_default(),
            );
            if seen == (meshed, in_sync) {
                Ok(status["status"].clone())
            } else {
                Err(format!("{seen:?}: {}", status["status"]))
            }
        },
    )
    .await
}

#[tokio::test]
async fn in_sync_counts_only_the_proxies_that_acknowledged_their_configuration() {
    with_temp_ns("status-sync", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let applied = kubectl_stdin(&["apply", "-f", "-"], &web_service(&ns, 2));
        assert!(applied.success, "{}", applied.stderr);
        wait_for(&ns, "2/2", "2/2").await;

        // Cut one proxy off from the operator: everything it sends to the proxy API is
        // refused in its own network namespace, so it can take updates in but its
        // acknowledgements never leave.
        let ip = kubectl_ok(&[
            "get",
            "pods",
            "-n",
            &ns,
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ]);
        let netns = pod_netns(ip.trim());
        let iptables =
            |op: &str| control_rule(&netns, op, &["REJECT", "--reject-with", "tcp-reset"]);
        iptables("-I");

        // A new configuration for both proxies: a ServerAuthorization on their port.
        let authorization = format!(
            r#"
apiVersion: weft.dev/v1alpha1
kind: ServerAuthorization
metadata: {{name: web-any, namespace: {ns}}}
spec:
  server: {{podSelector: {{matchLabels: {{app: web}}}}, port: http}}
  client: {{meshTLS: {{identities: ["*"]}}}}
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &authorization);
        if !applied.success {
            iptables("-D");
            panic!("{}", applied.stderr);
        }
        let behind = wait_for(&ns, "2/2", "1/2").await;
        let in_sync = behind["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "InSync")
            .cloned()
            .unwrap_or_default();
        assert_eq!(in_sync["status"], "False", "{behind}");
        assert!(
            in_sync["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("1 of 2 proxies")),
            "{in_sync}"
        );

        // Once it reaches the operator again, it catches up and acknowledges.
        iptables("-D");
        wait_for(&ns, "2/2", "2/2").await;
    })
    .await;
}
