//! The data plane on the real cluster, with real clients: curl (HTTP/1.1), a gRPC
//! client (unary and streaming calls, a status in trailers) and busybox nc (raw TCP)
//! between meshed pods, over mTLS between their proxies (the server proxies count the
//! client's SPIFFE id); meshed → unmeshed and unmeshed → meshed;
//! and a rolling restart of the server Deployment under steady load that loses no
//! request.

use std::time::Duration;

use weft_e2e::{
    eventually, kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, metric_sum, proxy_metrics,
    rollout_status, with_temp_ns,
};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Waits for this pod's proxy, then serves a TCP echo on 9000 and HTTP on 8080.
const SERVE: &str = "timeout 5 wget -q -O /dev/null http://127.0.0.1:4191/ready \
                     && (nc -ll -p 9000 -e cat &) && exec httpd -f -p 8080 -h /www";

/// The gRPC application, serving on 50051.
const GRPC_CONTAINER: &str = "{name: grpc, image: weft.local/weft-e2e-grpc:dev, imagePullPolicy: IfNotPresent, \
     args: [serve, \"50051\"], securityContext: {runAsUser: 1000}, \
     ports: [{name: grpc, containerPort: 50051}]}";

/// `web`: meshed, two replicas, HTTP and a TCP echo. `grpc`: meshed, two replicas.
/// `plain`: the same HTTP and echo, not meshed. `client` (meshed) and `outsider`
/// (not meshed) run the clients.
fn workloads(ns: &str) -> String {
    let server = |name: &str, annotations: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}, weft.dev/e2e-app: {name}}}
      annotations: {{{annotations}}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: app
        image: weft.local/testapp:dev
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "{serve}"]
        ports: [{{name: http, containerPort: 8080}}, {{name: echo, containerPort: 9000}}]
        # Through the proxy to the app: ready only once the app answers.
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
        # Serve on while the endpoint's removal reaches the clients' proxies.
        lifecycle: {{preStop: {{exec: {{command: [sleep, "5"]}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}, {{name: echo, port: 9000, targetPort: echo}}]
"#,
            serve = if annotations.is_empty() {
                SERVE
            } else {
                // Not meshed: no proxy to wait for.
                "(nc -ll -p 9000 -e cat &) && exec httpd -f -p 8080 -h /www"
            }
        )
    };
    let pod = |name: &str, annotations: &str| {
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
    command: [sleep, "3600"]
  # Where the gRPC client runs (`kubectl exec -c grpc`). Not as the proxy's user,
  # whose connections the capture rules let through.
  - {GRPC_CONTAINER}
"#
        )
    };
    let grpc = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: grpc, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: grpc}}}}
  template:
    metadata: {{labels: {{app: grpc, weft.dev/e2e-app: grpc}}}}
    spec:
      containers:
      - {GRPC_CONTAINER}
---
apiVersion: v1
kind: Service
metadata: {{name: grpc, namespace: {ns}}}
spec:
  selector: {{app: grpc}}
  ports: [{{name: grpc, port: 50051, targetPort: grpc}}]
"#
    );
    let unmeshed = "weft.dev/inject: disabled";
    [
        server("web", ""),
        server("plain", unmeshed),
        pod("client", ""),
        pod("outsider", unmeshed),
        grpc,
    ]
    .join("\n---\n")
}

/// Runs `sh -c script` in pod `pod`'s app container; its stdout, or the failure.
fn sh(ns: &str, pod: &str, script: &str) -> Result<String, String> {
    let out = kubectl(&["exec", "-n", ns, pod, "-c", "app", "--", "sh", "-c", script]);
    if out.success {
        Ok(out.stdout)
    } else {
        Err(format!("{}{}", out.stdout, out.stderr))
    }
}

/// The pods of Deployment `app`, terminating or not.
fn pods_of(ns: &str, app: &str) -> Vec<String> {
    kubectl_ok(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("app={app}"),
        "-o",
        "name",
    ])
    .lines()
    .map(|l| l.trim_start_matches("pod/").to_string())
    .collect()
}

/// The ClusterIP of Service `name`.
fn service_ip(ns: &str, name: &str) -> String {
    kubectl_ok(&[
        "get",
        "service",
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
    .trim()
    .to_string()
}

/// The sum of `name{labels}` over the proxies of `pods`.
fn sum_over(ns: &str, pods: &[String], name: &str, labels: &[(&str, &str)]) -> f64 {
    pods.iter()
        .map(|pod| metric_sum(&proxy_metrics(ns, pod), name, labels))
        .sum()
}

#[tokio::test]
async fn real_clients_reach_meshed_and_unmeshed_pods_and_a_rolling_restart_loses_nothing() {
    with_temp_ns("dataplane", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let applied = kubectl_stdin(&["apply", "-f", "-"], &workloads(&ns));
        assert!(applied.success, "{}", applied.stderr);
        for deployment in ["web", "plain", "grpc"] {
            rollout_status(&ns, deployment);
        }
        kubectl_ok(&[
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "pod/client",
            "pod/outsider",
            "--timeout=180s",
        ]);
        let web = format!("web.{ns}.svc.cluster.local");
        let plain = format!("plain.{ns}.svc.cluster.local");
        let client_id = format!("spiffe://cluster.local/ns/{ns}/sa/default");
        let web_pods = pods_of(&ns, "web");
        let mtls_from_client = [
            ("direction", "inbound"),
            ("tls", "true"),
            ("client_id", client_id.as_str()),
        ];

        // curl between meshed pods: HTTP through both proxies, mTLS between them.
        let before = sum_over(&ns, &web_pods, "tcp_open_total", &mtls_from_client);
        let page = eventually("curl from client to web", TIMEOUT, || async {
            sh(
                &ns,
                "client",
                &format!("curl -sS --max-time 10 http://{web}/"),
            )
        })
        .await;
        assert_eq!(page.trim(), "weft testapp");
        let after_curl = sum_over(&ns, &web_pods, "tcp_open_total", &mtls_from_client);
        assert!(
            after_curl > before,
            "no mTLS connection from {client_id} counted"
        );
        let requests = metric_sum(
            &proxy_metrics(&ns, "client"),
            "response_total",
            &[
                ("direction", "outbound"),
                ("tls", "true"),
                ("status_code", "200"),
            ],
        );
        assert!(
            requests >= 1.0,
            "the client's proxy counted no mTLS response"
        );

        // A raw TCP client (nc, no protocol the proxy knows): echoed through mTLS.
        let echoed = sh(
            &ns,
            "client",
            &format!("echo hello-tcp | timeout 5 nc {web} 9000; true"),
        )
        .unwrap();
        assert_eq!(echoed.trim(), "hello-tcp");
        let after_nc = sum_over(&ns, &web_pods, "tcp_open_total", &mtls_from_client);
        assert!(after_nc > after_curl, "the TCP connection was not mTLS");

        // A gRPC client between meshed pods: unary and streaming calls, each answer
        // as the server sent it, the stream's status from its trailers.
        let grpc_pods = pods_of(&ns, "grpc");
        let before = sum_over(&ns, &grpc_pods, "tcp_open_total", &mtls_from_client);
        let called = kubectl(&[
            "exec",
            "-n",
            &ns,
            "client",
            "-c",
            "grpc",
            "--",
            "weft-e2e-grpc",
            "call",
            &format!("http://grpc.{ns}.svc.cluster.local:50051"),
        ]);
        assert!(called.success, "{}{}", called.stdout, called.stderr);
        let after = sum_over(&ns, &grpc_pods, "tcp_open_total", &mtls_from_client);
        assert!(after > before, "the gRPC connection was not mTLS");
        let grpc_responses = metric_sum(
            &proxy_metrics(&ns, "client"),
            "response_total",
            &[
                ("direction", "outbound"),
                ("tls", "true"),
                ("authority", &format!("{}:50051", service_ip(&ns, "grpc"))),
            ],
        );
        assert!(
            grpc_responses >= 3.0,
            "the client's proxy counted {grpc_responses} gRPC responses"
        );

        // Meshed → unmeshed: plaintext from the client's proxy to the pod as it is.
        let page = sh(
            &ns,
            "client",
            &format!("curl -sS --max-time 10 http://{plain}/"),
        )
        .unwrap();
        assert_eq!(page.trim(), "weft testapp");
        let echoed = sh(
            &ns,
            "client",
            &format!("echo hello-plain | timeout 5 nc {plain} 9000; true"),
        )
        .unwrap();
        assert_eq!(echoed.trim(), "hello-plain");

        // Unmeshed → meshed: the server proxies take plaintext (the default policy
        // allows it) and count it without a client identity. The kubelet's probes are
        // plaintext too, so the request asks for a path no probe asks for, and only its
        // 404 moves the counter looked at.
        let page = sh(
            &ns,
            "outsider",
            &format!("curl -sS --max-time 10 http://{web}/"),
        )
        .unwrap();
        assert_eq!(page.trim(), "weft testapp");
        let plaintext_404 = [
            ("direction", "inbound"),
            ("tls", "false"),
            ("status_code", "404"),
        ];
        let before = sum_over(&ns, &web_pods, "response_total", &plaintext_404);
        let status = sh(
            &ns,
            "outsider",
            &format!(
                "curl -sS -o /dev/null -w '%{{http_code}}' --max-time 10 http://{web}/no-such-page"
            ),
        )
        .unwrap();
        assert_eq!(status.trim(), "404");
        eventually(
            "the outsider's plaintext request counted once as inbound tls=\"false\"",
            TIMEOUT,
            || async {
                let after = sum_over(&ns, &web_pods, "response_total", &plaintext_404);
                if after == before + 1.0 {
                    Ok(())
                } else {
                    Err(format!("{before} -> {after}"))
                }
            },
        )
        .await;

        // A rolling restart of `web` under steady load (a request every 50 ms from
        // the meshed client, through its proxy): not one request fails.
        sh(&ns, "client", "rm -f /tmp/ok /tmp/stop").unwrap();
        let load_ns = ns.clone();
        let load_url = format!("http://{web}/");
        let load = std::thread::spawn(move || {
            let script = format!(
                "ok=0; failed=0; end=$(( $(date +%s) + 150 )); \
                 while [ ! -e /tmp/stop ] && [ $(date +%s) -lt $end ]; do \
                   if curl -sS -o /dev/null -f --max-time 5 {load_url}; then ok=$((ok+1)); \
                   else failed=$((failed+1)); fi; echo $ok > /tmp/ok; sleep 0.05; \
                 done; echo ok=$ok failed=$failed"
            );
            sh(&load_ns, "client", &script)
        });
        // The load is under way once it has had answers.
        let answered = |at_least: u64| {
            let ns = ns.clone();
            async move {
                let ok = sh(&ns, "client", "cat /tmp/ok 2>/dev/null || echo 0")?;
                match ok.trim().parse::<u64>() {
                    Ok(n) if n >= at_least => Ok(n),
                    _ => Err(format!("{} answered", ok.trim())),
                }
            }
        };
        eventually("the load to get 20 answers", TIMEOUT, || answered(20)).await;
        kubectl_ok(&["rollout", "restart", "-n", &ns, "deployment/web"]);
        rollout_status(&ns, "web");
        eventually("the old web pods to be gone", TIMEOUT, || async {
            let pods = pods_of(&ns, "web");
            if pods.len() == 2 && pods.iter().all(|p| !web_pods.contains(p)) {
                Ok(())
            } else {
                Err(format!("{pods:?}"))
            }
        })
        .await;
        // And the new pods serve it for a while.
        let so_far = answered(0).await.unwrap();
        eventually("20 more answers from the new pods", TIMEOUT, || {
            answered(so_far + 20)
        })
        .await;
        sh(&ns, "client", "touch /tmp/stop").unwrap();
        let tally = tokio::task::spawn_blocking(move || load.join())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        eprintln!("load during the rolling restart: {tally}");
        let count = |key: &str| -> u64 {
            tally
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in {tally:?}"))
        };
        assert_eq!(
            count("failed"),
            0,
            "requests failed during the restart: {tally}"
        );
        assert!(count("ok") >= 100, "too little load to tell: {tally}");
    })
    .await;
}
