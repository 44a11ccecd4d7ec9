//! A denial shows in MeshStatus on the real cluster: with a ServerAuthorization that
//! allows one ServiceAccount, a meshed client of another ServiceAccount gets 403s from
//! the server's proxy, the proxy reports its denials to the operator, and within
//! seconds the server workload's MeshStatus lists, for the port, a count at least the
//! number of 403s the client got and that client's SPIFFE id as the last one refused.

use std::time::Duration;

use serde_json::Value;
use weft_e2e::{
    eventually, kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, rollout_status, web_service,
    with_temp_ns,
};

const TIMEOUT: Duration = Duration::from_secs(120);
/// How long the denials may take to show: a proxy reports at most every 10 s, the
/// status is written once it settled (at most 2 s later).
const SHOWN_WITHIN: Duration = Duration::from_secs(45);

/// A pod `name` running as ServiceAccount `sa` that only waits to run clients.
fn client_pod(ns: &str, name: &str, sa: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {sa}, namespace: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{weft.dev/e2e-app: {name}}}}}
spec:
  serviceAccountName: {sa}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
"#
    )
}

/// The HTTP status `curl` in `pod` gets for `url` (`000` when no response came).
fn status_from(ns: &str, pod: &str, url: &str) -> Result<String, String> {
    let out = kubectl(&[
        "exec",
        "-n",
        ns,
        pod,
        "-c",
        "app",
        "--",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        url,
    ]);
    if out.success {
        Ok(out.stdout.trim().to_string())
    } else {
        Err(format!("{}{}", out.stdout, out.stderr))
    }
}

/// The `recentDenials` entry of `port` in MeshStatus `name`, if any.
fn recent_denials(ns: &str, name: &str, port: u64) -> Result<Value, String> {
    let out = kubectl(&["get", "meshstatus", name, "-n", ns, "-o", "json"]);
    if !out.success {
        return Err(out.stderr);
    }
    let status: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    status["status"]["recentDenials"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["port"].as_u64() == Some(port))
        .cloned()
        .ok_or_else(|| format!("no denials at {port} yet: {}", status["status"]))
}

#[tokio::test]
async fn mesh_status_shows_the_denials_count_and_the_last_client_refused() {
    with_temp_ns("denials", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let workloads = [
            web_service(&ns, 1),
            client_pod(&ns, "friend", "friend"),
            client_pod(&ns, "stranger", "stranger"),
            format!(
                r#"
apiVersion: weft.dev/v1alpha1
kind: ServerAuthorization
metadata: {{name: web-friends, namespace: {ns}}}
spec:
  server: {{podSelector: {{matchLabels: {{app: web}}}}, port: http}}
  client: {{meshTLS: {{serviceAccounts: [{{name: friend}}]}}}}
"#
            ),
        ]
        .join("\n---\n");
        let applied = kubectl_stdin(&["apply", "-f", "-"], &workloads);
        assert!(applied.success, "{}", applied.stderr);
        rollout_status(&ns, "web");
        kubectl_ok(&[
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "pod/friend",
            "pod/stranger",
            "--timeout=180s",
        ]);
        let url = format!("http://web.{ns}.svc.cluster.local/hostname");
        // Once the server's proxy follows the authorization, the stranger is refused:
        // every 403 it gets is one denial at least.
        eventually("the stranger to be refused", TIMEOUT, || async {
            match status_from(&ns, "stranger", &url)? {
                refused if refused == "403" => Ok(()),
                other => Err(other),
            }
        })
        .await;
        let mut refused = 1;
        for _ in 0..4 {
            let status = status_from(&ns, "stranger", &url).expect("curl runs");
            assert_eq!(status, "403", "the stranger was not refused");
            refused += 1;
        }
        // The friend is served: only the stranger is refused.
        assert_eq!(status_from(&ns, "friend", &url).expect("curl runs"), "200");

        let stranger = format!("spiffe://cluster.local/ns/{ns}/sa/stranger");
        let shown = eventually(
            "MeshStatus web to show the stranger's denials",
            SHOWN_WITHIN,
            || async {
                let denials = recent_denials(&ns, "web", 8080)?;
                let count = denials["count"].as_i64().unwrap_or_default();
                if count >= refused && denials["lastClient"] == stranger.as_str() {
                    Ok(denials)
                } else {
                    Err(denials.to_string())
                }
            },
        )
        .await;
        eprintln!("MeshStatus web shows, after {refused} refusals: {shown}");
        assert!(
            shown["lastTime"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{shown}"
        );
    })
    .await;
}
