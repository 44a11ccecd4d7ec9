//! Nothing unsafe is meshed silently, on the real cluster. In a namespace that asks for
//! injection:
//!
//! - a pod running as the proxy's user and a pod on the node's network are left
//!   unmeshed, and say why: the `weft.dev/not-meshed` annotation, and a MeshStatus that
//!   lists them with the reason (the `InjectionSkipped` Events are checked in
//!   `inject.rs`);
//! - pods that merely look meshed, by the `weft.dev/injected` label or by a container
//!   of their own named `weft-proxy`, are reported `NotInjected` and get no identity:
//!   MeshStatus shows none, and a meshed client reaches such a pod behind its Service in
//!   plaintext (with an identity, the client's proxy would have spoken mutual TLS to a
//!   server that has no proxy, and failed).

use std::time::Duration;

use serde_json::Value;
use weft_e2e::{eventually, kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, with_temp_ns};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A bare pod `name` serving HTTP on 8080 from container `container` (sleeping instead
/// on the node's network), with the extra labels and pod spec given.
fn pod(ns: &str, name: &str, metadata: &str, spec: &str, container: &str) -> String {
    let command = if spec.contains("hostNetwork") {
        "exec sleep 3600"
    } else {
        "exec httpd -f -p 8080 -h /etc"
    };
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{weft.dev/e2e-app: {name}, app: {name}{metadata}}}
spec:
  terminationGracePeriodSeconds: 1
  {spec}
  containers:
  - name: {container}
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "{command}"]
    ports: [{{name: http, containerPort: 8080}}]
"#
    )
}

/// The status of MeshStatus `name` once it lists an unmeshed pod.
async fn unmeshed_status(ns: &str, name: &str) -> Value {
    eventually(
        &format!("MeshStatus {name} listing its unmeshed pod"),
        TIMEOUT,
        || async {
            let out = kubectl(&["get", "meshstatus", name, "-n", ns, "-o", "json"]);
            if !out.success {
                return Err(out.stderr);
            }
            let status: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
            let status = status["status"].clone();
            if status["unmeshedPods"][0]["reason"].is_string() {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        },
    )
    .await
}

fn meshed_condition(status: &Value) -> (String, String) {
    let condition = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Meshed"))
        .cloned()
        .unwrap_or_default();
    (
        condition["status"].as_str().unwrap_or_default().into(),
        condition["reason"].as_str().unwrap_or_default().into(),
    )
}

#[tokio::test]
async fn unsafe_pods_and_look_alikes_are_reported_unmeshed_with_why_and_get_no_identity() {
    with_temp_ns("unsafe", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let as_proxy = pod(
            &ns,
            "as-proxy",
            "",
            "securityContext: {runAsUser: 2102}",
            "app",
        );
        let host = pod(&ns, "host", "", "hostNetwork: true", "app");
        // The label alone (the pod opted out, so the injector does not mesh it).
        let labelled = pod(&ns, "labelled", ", weft.dev/injected: \"true\"", "", "app").replace(
            "  labels:",
            "  annotations: {weft.dev/inject: disabled}\n  labels:",
        );
        // Its own "proxy", and the label, behind a Service.
        let impostor = pod(
            &ns,
            "impostor",
            ", weft.dev/injected: \"true\"",
            "",
            "weft-proxy",
        ) + &format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: impostor, namespace: {ns}}}
spec:
  selector: {{app: impostor}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{weft.dev/e2e-app: client}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
"#
        );
        for manifest in [&as_proxy, &host, &labelled, &impostor] {
            let applied = kubectl_stdin(&["apply", "-f", "-"], manifest);
            assert!(applied.success, "{}", applied.stderr);
        }

        // The injector's own reasons, on the pods and in MeshStatus.
        for (name, reason) in [("as-proxy", "ProxyUid"), ("host", "HostNetwork")] {
            let annotation = kubectl_ok(&[
                "get",
                "pod",
                "-n",
                &ns,
                name,
                "-o",
                r"jsonpath={.metadata.annotations.weft\.dev/not-meshed}",
            ]);
            assert_eq!(annotation, reason, "pod {name}'s annotation");
            let status = unmeshed_status(&ns, name).await;
            assert_eq!(status["unmeshedPods"][0]["name"], name);
            assert_eq!(status["unmeshedPods"][0]["reason"], reason, "{status}");
            assert!(
                status["unmeshedPods"][0]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{status}"
            );
            assert_eq!(status["summary"]["meshed"], "0/1");
            assert_eq!(meshed_condition(&status), ("False".into(), reason.into()));
        }

        // Look-alikes: NotInjected, and no identity.
        for name in ["labelled", "impostor"] {
            let status = unmeshed_status(&ns, name).await;
            assert_eq!(
                status["unmeshedPods"][0]["reason"], "NotInjected",
                "{status}"
            );
            assert!(
                status["identity"].is_null(),
                "{name} got an identity: {status}"
            );
            assert_eq!(status["summary"]["meshed"], "0/1");
            assert_eq!(
                meshed_condition(&status),
                ("False".into(), "NotInjected".into())
            );
        }

        // A meshed client reaches the impostor in plaintext: discovery gave its
        // endpoint no identity to dial mutual TLS to.
        kubectl_ok(&[
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "pod/client",
            "pod/impostor",
            "--timeout=180s",
        ]);
        let client_containers = kubectl_ok(&[
            "get",
            "pod",
            "-n",
            &ns,
            "client",
            "-o",
            "jsonpath={.spec.initContainers[*].name}",
        ]);
        assert!(
            client_containers.contains("weft-proxy"),
            "the client is meshed: {client_containers}"
        );
        let url = format!("http://impostor.{ns}.svc.cluster.local/hostname");
        eventually("the impostor reached in plaintext", TIMEOUT, || async {
            let out = kubectl(&[
                "exec",
                "-n",
                &ns,
                "client",
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
                &url,
            ]);
            match out.stdout.trim() {
                "200" => Ok(()),
                other => Err(format!("{other} {}", out.stderr)),
            }
        })
        .await;
    })
    .await;
}
