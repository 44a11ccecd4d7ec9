//! Probes of meshed pods on the real cluster mean what they say: the injector points
//! them at the proxy's admin port, and the proxy checks the application itself. A
//! pod whose application listens on nothing is not Ready (tcpSocket, httpGet and gRPC
//! probes each) — through the proxy's inbound side a tcpSocket probe would pass — and
//! a liveness probe restarts an application that stopped listening.

use std::time::Duration;

use serde_json::Value;
use weft_e2e::{
    APP_AFTER_PROXY, eventually, kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, with_temp_ns,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A bare meshed pod `name` whose app runs `command`, with `probes` (YAML lines of
/// the app container, indented by four spaces).
fn pod(ns: &str, name: &str, command: &str, probes: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{weft.dev/e2e-app: {name}}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "{command}"]
    ports: [{{name: http, containerPort: 8080}}]
{probes}
"#
    )
}

/// `pod`'s status.
fn status(ns: &str, pod: &str) -> Value {
    let out = kubectl_ok(&["get", "pod", pod, "-n", ns, "-o", "json"]);
    serde_json::from_str::<Value>(&out).expect("a pod")["status"].clone()
}

/// The status of container `name` of a pod's status (init containers included).
fn container<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|k| status[k].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
}

fn ready(status: &Value, name: &str) -> bool {
    container(status, name).is_some_and(|c| c["ready"] == true)
}

#[tokio::test]
async fn a_meshed_application_that_listens_on_nothing_is_not_ready() {
    with_temp_ns("probes-deaf", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let deaf = "exec sleep 3600";
        let pods = [
            (
                "hearing",
                APP_AFTER_PROXY,
                "    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}",
            ),
            (
                "deaf-tcp",
                deaf,
                "    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}",
            ),
            (
                "deaf-http",
                deaf,
                "    readinessProbe: {httpGet: {port: http, path: /}, periodSeconds: 1}",
            ),
            (
                "deaf-grpc",
                deaf,
                "    readinessProbe: {grpc: {port: 9090}, periodSeconds: 1}",
            ),
        ];
        for (name, command, probes) in pods {
            let out = kubectl_stdin(&["apply", "-f", "-"], &pod(&ns, name, command, probes));
            assert!(out.success, "{name}: {}", out.stderr);
        }
        // The application that listens is Ready: the rewritten probe passes.
        eventually("the listening pod to be Ready", TIMEOUT, || async {
            let status = status(&ns, "hearing");
            if ready(&status, "app") {
                Ok(())
            } else {
                Err(status.to_string())
            }
        })
        .await;
        let probe = kubectl_ok(&[
            "get",
            "pod",
            "hearing",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.containers[?(@.name==\"app\")].readinessProbe.httpGet.path}",
        ]);
        assert_eq!(probe, "/probe/app/readiness");

        // The others have their proxy up, and stay unready through many probe periods.
        for name in ["deaf-tcp", "deaf-http", "deaf-grpc"] {
            eventually(&format!("{name}'s proxy to be ready"), TIMEOUT, || async {
                let status = status(&ns, name);
                if ready(&status, "weft-proxy") {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            })
            .await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        for name in ["deaf-tcp", "deaf-http", "deaf-grpc"] {
            let status = status(&ns, name);
            assert!(
                !ready(&status, "app"),
                "{name}'s application listens on nothing, yet it is Ready: {status}"
            );
        }
        // The kubelet says why, from the proxy's answer.
        let events = kubectl_ok(&[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "involvedObject.name=deaf-tcp,reason=Unhealthy",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        assert!(events.contains("503"), "{events}");
    })
    .await;
}

#[tokio::test]
async fn a_liveness_probe_restarts_a_meshed_application_that_stopped_listening() {
    with_temp_ns("probes-live", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        // httpd without -f detaches: killing it leaves the container running, closed.
        let command = "timeout 5 wget -q -O /dev/null http://127.0.0.1:4191/ready; \
                       httpd -p 8080 -h /etc; exec sleep 3600";
        let probes = "    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}\n    \
                      livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1, failureThreshold: 2}";
        let out = kubectl_stdin(&["apply", "-f", "-"], &pod(&ns, "live", command, probes));
        assert!(out.success, "{}", out.stderr);
        eventually("the pod to be Ready", TIMEOUT, || async {
            let status = status(&ns, "live");
            if ready(&status, "app") { Ok(()) } else { Err(status.to_string()) }
        })
        .await;
        let killed = kubectl(&["exec", "-n", &ns, "live", "-c", "app", "--", "killall", "httpd"]);
        assert!(killed.success, "{}", killed.stderr);
        eventually("the kubelet to restart the application", TIMEOUT, || async {
            let status = status(&ns, "live");
            let restarts = container(&status, "app").and_then(|c| c["restartCount"].as_i64());
            if restarts.unwrap_or(0) >= 1 { Ok(()) } else { Err(status.to_string()) }
        })
        .await;
    })
    .await;
}
