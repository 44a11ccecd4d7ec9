//! Discovery on the real cluster: what `kubectl get meshstatus` shows is what the
//! proxies applied. A meshed Deployment scaled 1 → 5 → 2 is counted in its MeshStatus,
//! `IN-SYNC` counts proxies that acknowledged their current configuration, a
//! ServerAuthorization reaches every proxy's `/config`, a destination is resolved on
//! first use and a ServiceProfile for it reaches the proxy that resolved it (the
//! ServiceProfile's and the ServerAuthorization's status say what proxies got),
//! proxies keep their config while the operator is stopped and receive what changed
//! meanwhile once it is back, and deleting the Deployment removes its MeshStatus.
//!
//! This stops the operator, so it is the only test in its binary (test binaries run
//! one after another); a guard restarts the operator even on failure.

use std::time::Duration;

use serde_json::Value;
use weft_e2e::{
    RestoreOperator, eventually, kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, metric_sum,
    proxy_metrics, scale_operator, web_service, with_temp_ns,
};

const TIMEOUT: Duration = Duration::from_secs(180);

/// The MeshStatus `web`, as JSON.
fn mesh_status(ns: &str) -> Result<Value, String> {
    let out = kubectl(&["get", "meshstatus", "web", "-n", ns, "-o", "json"]);
    if !out.success {
        return Err(out.stderr);
    }
    serde_json::from_str(&out.stdout).map_err(|e| e.to_string())
}

/// Waits until MeshStatus `web` shows `meshed`, `ready` and `in_sync` as printed.
async fn wait_for_counts(ns: &str, meshed: &str, ready: &str, in_sync: &str) -> Value {
    eventually(
        &format!("MeshStatus web at meshed {meshed}, ready {ready}, in sync {in_sync}"),
        TIMEOUT,
        || async {
            let status = mesh_status(ns)?;
            let summary = &status["status"]["summary"];
            let seen = (
                summary["meshed"].as_str().unwrap_or_default(),
                summary["ready"].as_str().unwrap_or_default(),
                summary["inSync"].as_str().unwrap_or_default(),
            );
            if seen == (meshed, ready, in_sync) {
                Ok(status)
            } else {
                Err(format!("{seen:?}: {}", status["status"]))
            }
        },
    )
    .await
}

/// The pods of `web` that are not terminating.
fn web_pods(ns: &str) -> Vec<String> {
    let out = kubectl_ok(&["get", "pods", "-n", ns, "-l", "app=web", "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("a pod list");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// A proxy's `/config`, read from inside its pod (it answers only on loopback).
fn proxy_config(ns: &str, pod: &str) -> Value {
    let raw = kubectl_ok(&[
        "exec",
        "-n",
        ns,
        pod,
        "-c",
        "app",
        "--",
        "wget",
        "-q",
        "-O",
        "-",
        "http://127.0.0.1:4191/config",
    ]);
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{pod}'s /config is JSON: {e}: {raw}"))
}

/// The authorization names a proxy applied for `port`.
fn applied_rules(config: &Value, port: &str) -> Vec<String> {
    config["inbound"][port]["authorizations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn scaling_a_meshed_deployment_is_reflected_in_its_proxies_and_its_mesh_status() {
    with_temp_ns("discovery", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let applied = kubectl_stdin(&["apply", "-f", "-"], &web_service(&ns, 1));
        assert!(applied.success, "{}", applied.stderr);

        let status = wait_for_counts(&ns, "1/1", "1/1", "1/1").await;
        assert_eq!(status["spec"]["workload"]["kind"], "Deployment");
        assert_eq!(status["metadata"]["ownerReferences"][0]["name"], "web");
        assert_eq!(
            status["status"]["identity"],
            format!("spiffe://cluster.local/ns/{ns}/sa/default")
        );
        assert!(
            status["status"]["certificateExpiry"].is_string(),
            "{status}"
        );
        assert_eq!(status["status"]["inboundPorts"][0]["port"], 8080);
        assert_eq!(
            status["status"]["inboundPorts"][0]["policy"],
            "default:all-unauthenticated"
        );

        kubectl_ok(&["scale", "deployment", "web", "-n", &ns, "--replicas=5"]);
        wait_for_counts(&ns, "5/5", "5/5", "5/5").await;
        let printed = kubectl_ok(&["get", "meshstatus", "-n", &ns]);
        assert!(
            printed.contains("5/5") && printed.contains("IN-SYNC"),
            "{printed}"
        );

        // A ServerAuthorization for the `http` port: IN-SYNC counts the proxies that
        // applied it, and each shows it on /config.
        let authorization = format!(
            r#"
apiVersion: weft.dev/v1alpha1
kind: ServerAuthorization
metadata: {{name: web-http, namespace: {ns}}}
spec:
  server: {{podSelector: {{matchLabels: {{app: web}}}}, port: http}}
  client: {{meshTLS: {{serviceAccounts: [{{name: default}}]}}}}
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &authorization);
        assert!(applied.success, "{}", applied.stderr);
        let status = eventually("the new policy in MeshStatus, in sync", TIMEOUT, || async {
            let status = mesh_status(&ns)?;
            let policy = &status["status"]["inboundPorts"][0]["policy"];
            let in_sync = &status["status"]["summary"]["inSync"];
            if policy == "serverauthorization/web-http" && in_sync == "5/5" {
                Ok(status)
            } else {
                Err(format!("policy {policy}, in sync {in_sync}"))
            }
        })
        .await;
        let pods = web_pods(&ns);
        assert_eq!(pods.len(), 5, "{pods:?}");
        for pod in &pods {
            let config = proxy_config(&ns, pod);
            assert_eq!(
                applied_rules(&config, "8080"),
                ["serverauthorization/web-http"],
                "{pod}: {config:#}"
            );
            assert_eq!(
                applied_rules(&config, "0"),
                ["default:all-unauthenticated"],
                "{pod}: {config:#}"
            );
        }
        assert_eq!(status["status"]["proxies"]["connected"], 5);
        eventually("the ServerAuthorization's status", TIMEOUT, || async {
            let out = kubectl_ok(&[
                "get",
                "serverauthorization",
                "web-http",
                "-n",
                &ns,
                "-o",
                "json",
            ]);
            let status =
                serde_json::from_str::<Value>(&out).map_err(|e| e.to_string())?["status"].clone();
            if status["matchedPods"] == 5
                && status["matchedPorts"] == serde_json::json!([8080])
                && status["conditions"][0]["status"] == "True"
            {
                Ok(())
            } else {
                Err(format!("{status}"))
            }
        })
        .await;

        kubectl_ok(&["scale", "deployment", "web", "-n", &ns, "--replicas=2"]);
        wait_for_counts(&ns, "2/2", "2/2", "2/2").await;
        // The pods scaled away are gone (not only terminating), so the request below
        // can only land on, and be counted by, the two that stay.
        eventually("the scaled-down pods to be gone", TIMEOUT, || async {
            let out = kubectl_ok(&["get", "pods", "-n", &ns, "-l", "app=web", "-o", "name"]);
            let pods = out.lines().count();
            (pods == 2).then_some(()).ok_or(format!("{pods} pods"))
        })
        .await;

        // A destination is resolved on first use: the Service, from one of the pods.
        let cluster_ip = kubectl_ok(&[
            "get",
            "service",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ]);
        let authority = format!("{}:80", cluster_ip.trim());
        let client_pod = web_pods(&ns)[0].clone();
        let before = proxy_config(&ns, &client_pod);
        assert!(before["outbound"][&authority].is_null(), "{before:#}");
        let fetched = kubectl(&[
            "exec",
            "-n",
            &ns,
            &client_pod,
            "-c",
            "app",
            "--",
            "timeout",
            "5",
            "wget",
            "-q",
            "-O",
            "/dev/null",
            &format!("http://{authority}/hostname"),
        ]);
        assert!(fetched.success, "{}", fetched.stderr);
        eventually("the Service resolved with 2 endpoints", TIMEOUT, || async {
            let config = proxy_config(&ns, &client_pod);
            let resolved = &config["outbound"][&authority];
            let endpoints = resolved["endpoints"].as_array().map_or(0, Vec::len);
            if resolved["known"] == true && endpoints == 2 {
                Ok(())
            } else {
                Err(format!("{resolved}"))
            }
        })
        .await;
        let resolved = &proxy_config(&ns, &client_pod)["outbound"][&authority];
        assert_eq!(resolved["service"], format!("web.{ns}"));
        assert_eq!(
            resolved["endpoints"][0]["identity"],
            format!("spiffe://cluster.local/ns/{ns}/sa/default")
        );
        assert_eq!(
            resolved["endpoints"][0]["labels"]["workload"],
            "deployment/web"
        );
        // That request went between two proxies over mTLS: one of the server pods
        // counted an inbound connection with `tls="true"` and the client's identity.
        let client_id = format!("spiffe://cluster.local/ns/{ns}/sa/default");
        let metrics: Vec<String> = web_pods(&ns)
            .iter()
            .map(|pod| proxy_metrics(&ns, pod))
            .collect();
        let inbound_mtls = [
            ("direction", "inbound"),
            ("tls", "true"),
            ("client_id", client_id.as_str()),
        ];
        let mtls: f64 = metrics
            .iter()
            .map(|text| metric_sum(text, "tcp_open_total", &inbound_mtls))
            .sum();
        let seen: Vec<&str> = metrics
            .iter()
            .flat_map(|text| text.lines())
            .filter(|l| l.starts_with("tcp_open_total") || l.starts_with("tls_"))
            .collect();
        // The client's proxy saw an HTTP/1 request, balanced on its own, over mTLS.
        let requests = metric_sum(
            &proxy_metrics(&ns, &client_pod),
            "request_total",
            &[("direction", "outbound"), ("tls", "true")],
        );
        assert!(requests >= 1.0, "the client proxy counted no HTTP request");
        assert!(
            mtls >= 1.0,
            "no mTLS connection from {client_id} was counted: {seen:#?}"
        );

        // A ServiceProfile for the Service reaches the proxy that resolved it; its
        // status says what the proxies got and names the route that was left out.
        let profile = format!(
            r#"
apiVersion: weft.dev/v1alpha1
kind: ServiceProfile
metadata: {{name: web, namespace: {ns}}}
spec:
  service: web
  routes:
  - name: GET /hostname
    condition: {{method: GET, pathRegex: /hostname}}
    timeout: 2s
  - name: broken
    condition: {{pathRegex: "/books/[0-9"}}
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &profile);
        assert!(applied.success, "{}", applied.stderr);
        eventually(
            "the ServiceProfile's routes in /config",
            TIMEOUT,
            || async {
                let config = proxy_config(&ns, &client_pod);
                let routes = &config["outbound"][&authority]["profile"]["routes"];
                if routes[0]["name"] == "GET /hostname"
                    && routes.as_array().map(Vec::len) == Some(1)
                {
                    Ok(())
                } else {
                    Err(format!("{}", config["outbound"][&authority]))
                }
            },
        )
        .await;
        eventually("the ServiceProfile's status", TIMEOUT, || async {
            let out = kubectl_ok(&["get", "serviceprofile", "web", "-n", &ns, "-o", "json"]);
            let status =
                serde_json::from_str::<Value>(&out).map_err(|e| e.to_string())?["status"].clone();
            let condition = |type_: &str| {
                status["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == type_)
                    .map(|c| (c["status"].clone(), c["reason"].clone()))
            };
            if status["routeCount"] == 1
                && condition("Accepted") == Some(("False".into(), "InvalidRoute".into()))
                && condition("ResolvedRefs") == Some(("True".into(), "Resolved".into()))
                && status["configVersion"].is_string()
            {
                Ok(())
            } else {
                Err(format!("{status}"))
            }
        })
        .await;

        // The operator goes away: the proxies keep what they applied. A change made
        // meanwhile reaches them when it is back.
        let restore = RestoreOperator;
        scale_operator(0);
        let pods = web_pods(&ns);
        assert_eq!(pods.len(), 2, "two web pods to look at: {pods:?}");
        for pod in pods {
            let config = proxy_config(&ns, &pod);
            assert_eq!(config["streams"], 0, "{pod}: {config:#}");
            assert_eq!(
                applied_rules(&config, "8080"),
                ["serverauthorization/web-http"],
                "{pod} keeps its policy: {config:#}"
            );
        }
        kubectl_ok(&["delete", "serverauthorization", "web-http", "-n", &ns]);
        drop(restore);
        eventually("the deletion to reach every proxy", TIMEOUT, || async {
            let pods = web_pods(&ns);
            let rules: Vec<Vec<String>> = pods
                .iter()
                .map(|p| applied_rules(&proxy_config(&ns, p), "8080"))
                .collect();
            if pods.len() == 2 && rules.iter().all(|r| r == &["default:all-unauthenticated"]) {
                Ok(())
            } else {
                Err(format!("{rules:?}"))
            }
        })
        .await;
        wait_for_counts(&ns, "2/2", "2/2", "2/2").await;

        kubectl_ok(&["delete", "deployment", "web", "-n", &ns, "--wait=false"]);
        eventually("the MeshStatus to be removed", TIMEOUT, || async {
            match mesh_status(&ns) {
                Err(e) if e.contains("NotFound") => Ok(()),
                Err(e) => Err(e),
                Ok(status) => Err(format!("still there: {}", status["status"]["summary"])),
            }
        })
        .await;
    })
    .await;
}
