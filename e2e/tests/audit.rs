//! Audit mode on the real cluster: a ServerAuthorization in `mode: Audit` that allows
//! ServiceAccount `friend` lets a meshed client of another ServiceAccount through (200),
//! and the server's proxy counts it in `inbound_http_authz_deny_total{mode="audit"}`
//! and logs it as a would-be denial; switched to `Enforce`, the same client gets 403.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use weft_e2e::{
    eventually, kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, metric_sum, proxy_metrics,
    rollout_status, with_temp_ns,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A Deployment and Service `web` serving HTTP on 8080 (port `http`), ServiceAccounts
/// `friend` and `stranger`, and a pod `stranger` running as the latter that waits to
/// run clients.
fn workloads(ns: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web, weft.dev/e2e-app: web}}}}
    spec:
      containers:
      - name: app
        image: weft.local/testapp:dev
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "{serve}"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /hostname, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: friend, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: stranger, namespace: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: stranger, namespace: {ns}, labels: {{weft.dev/e2e-app: stranger}}}}
spec:
  serviceAccountName: stranger
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
"#,
        serve = weft_e2e::APP_AFTER_PROXY,
    )
}

/// A ServerAuthorization `friends-only` of `web`'s port `http` allowing `friend`, in
/// `mode`.
fn authorization(ns: &str, mode: &str) -> String {
    format!(
        r#"
apiVersion: weft.dev/v1alpha1
kind: ServerAuthorization
metadata: {{name: friends-only, namespace: {ns}}}
spec:
  mode: {mode}
  server:
    podSelector: {{matchLabels: {{app: web}}}}
    port: http
  client:
    meshTLS:
      serviceAccounts: [{{name: friend}}]
"#
    )
}

/// The HTTP status `curl` in pod `pod` gets for `url` (`000` with no answer).
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

#[tokio::test]
async fn an_audit_authorization_lets_a_stranger_through_counted_and_logged_until_it_enforces() {
    with_temp_ns("audit", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let applied = kubectl_stdin(&["apply", "-f", "-"], &workloads(&ns));
        assert!(applied.success, "{}", applied.stderr);
        rollout_status(&ns, "web");
        kubectl_ok(&[
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "pod/stranger",
            "--timeout=180s",
        ]);
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("the pods of web")
            .items;
        assert_eq!(pods.len(), 1, "one web pod");
        let web = pods[0].metadata.name.clone().expect("a name");
        let url = format!("http://web.{ns}.svc.cluster.local/hostname");

        let applied = kubectl_stdin(&["apply", "-f", "-"], &authorization(&ns, "Audit"));
        assert!(applied.success, "{}", applied.stderr);
        let mode = kubectl_ok(&[
            "get",
            "serverauthorization",
            "-n",
            &ns,
            "friends-only",
            "-o",
            "jsonpath={.spec.mode}",
        ]);
        assert_eq!(mode, "Audit");

        // The stranger is let through, and its requests are counted as would-be
        // denials by the authorization's policy once the proxy applies it.
        let audited = [
            ("mode", "audit"),
            ("authorization", "serverauthorization/friends-only"),
        ];
        eventually(
            "the stranger's request counted as a would-be denial",
            TIMEOUT,
            || async {
                let status = status_from(&ns, "stranger", &url)?;
                if status != "200" {
                    return Err(format!("the stranger got {status} under an audit policy"));
                }
                let metrics = proxy_metrics(&ns, &web);
                let audited = metric_sum(&metrics, "inbound_http_authz_deny_total", &audited);
                if audited > 0.0 {
                    Ok(())
                } else {
                    let lines: Vec<&str> =
                        metrics.lines().filter(|l| l.contains("authz")).collect();
                    Err(format!("not counted yet: {}", lines.join("\n")))
                }
            },
        )
        .await;
        let enforced = [("mode", "enforce")];
        assert_eq!(
            metric_sum(
                &proxy_metrics(&ns, &web),
                "inbound_http_authz_deny_total",
                &enforced
            ),
            0.0,
            "nothing was denied for real"
        );
        let logs = kubectl_ok(&["logs", "-n", &ns, &web, "-c", "weft-proxy"]);
        let line = logs
            .lines()
            .find(|l| l.contains("would be denied"))
            .unwrap_or_else(|| panic!("no would-be denial in the proxy's log:\n{logs}"));
        assert!(
            line.contains("audit") && line.contains(&format!("/ns/{ns}/sa/stranger")),
            "the log names the mode and the client: {line}"
        );

        // Enforced: the stranger is refused.
        let applied = kubectl_stdin(&["apply", "-f", "-"], &authorization(&ns, "Enforce"));
        assert!(applied.success, "{}", applied.stderr);
        eventually("the stranger refused", TIMEOUT, || async {
            match status_from(&ns, "stranger", &url)? {
                got if got == "403" => Ok(()),
                got => Err(got),
            }
        })
        .await;
        let metrics = proxy_metrics(&ns, &web);
        assert!(
            metric_sum(&metrics, "inbound_http_authz_deny_total", &enforced) > 0.0,
            "the refusal is counted as enforced"
        );
    })
    .await;
}
