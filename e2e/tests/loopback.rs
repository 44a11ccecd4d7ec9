//! Loopback listeners stay private on the real cluster: the server proxy hands a
//! connection to the application on the pod's address, so a port the application
//! bound to 127.0.0.1 only is not reachable from another pod through the proxy, while
//! one bound to all addresses is; a pod annotated
//! `config.weft.dev/inbound-to-loopback: "true"` gets the old behaviour, for an
//! application that listens on loopback only.

use std::time::Duration;

use weft_e2e::{eventually, http_status, kubectl_ok, kubectl_stdin, mesh_namespace, with_temp_ns};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A meshed pod `name` whose app serves `/etc` over HTTP on each of `listen`
/// (busybox httpd's `[IP:]PORT`), once its proxy is ready.
fn server(ns: &str, name: &str, listen: &[&str], annotations: &str) -> String {
    let daemons: String = listen
        .iter()
        .map(|l| format!("httpd -p {l} -h /etc; "))
        .collect();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{weft.dev/e2e-app: {name}}}
  annotations: {{{annotations}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "timeout 5 wget -q -O /dev/null http://127.0.0.1:4191/ready; {daemons}exec sleep 3600"]
"#
    )
}

#[tokio::test]
async fn a_loopback_listener_is_not_reachable_through_the_proxy() {
    with_temp_ns("loopback", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let pods = [
            server(&ns, "private", &["127.0.0.1:6060", "8080"], ""),
            server(
                &ns,
                "legacy",
                &["127.0.0.1:8080"],
                r#""config.weft.dev/inbound-to-loopback": "true""#,
            ),
            server(&ns, "caller", &[], ""),
        ];
        for pod in pods {
            let out = kubectl_stdin(&["apply", "-f", "-"], &pod);
            assert!(out.success, "{}", out.stderr);
        }
        for pod in ["private", "legacy", "caller"] {
            kubectl_ok(&[
                "wait",
                "-n",
                &ns,
                "--for=condition=Ready",
                &format!("pod/{pod}"),
                "--timeout=180s",
            ]);
        }
        let ip = |pod: &str| {
            kubectl_ok(&[
                "get",
                "pod",
                pod,
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.podIP}",
            ])
        };
        let (private, legacy) = (ip("private"), ip("legacy"));

        // The port bound to all addresses answers; the app's own httpd is up on both
        // (checked from inside the pod, on loopback).
        eventually("the open port to answer", TIMEOUT, || async {
            match http_status(&ns, "caller", &format!("http://{private}:8080/hostname")) {
                s if s == "200" => Ok(()),
                s => Err(s),
            }
        })
        .await;
        assert_eq!(
            http_status(&ns, "private", "http://127.0.0.1:6060/hostname"),
            "200"
        );
        // The loopback-only one is not reachable from another pod: the server proxy
        // finds nothing listening on the pod's address and answers 502 at once (not a
        // timeout, which would also be "not 200").
        let got = http_status(&ns, "caller", &format!("http://{private}:6060/hostname"));
        assert_eq!(
            got, "502",
            "a loopback-only listener: want the server proxy's 502 (nothing listens on the \
             pod's address); 200 means it was reachable from another pod"
        );

        // Opted in: the application that listens on loopback only is served.
        eventually(
            "the opted-in loopback application to answer",
            TIMEOUT,
            || async {
                match http_status(&ns, "caller", &format!("http://{legacy}:8080/hostname")) {
                    s if s == "200" => Ok(()),
                    s => Err(s),
                }
            },
        )
        .await;
    })
    .await;
}
