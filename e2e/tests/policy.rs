//! Inbound policy on the real cluster, with real clients:
//!
//! - a pod whose default policy is `deny` still becomes Ready, because the injector
//!   pointed its probe at the proxy's admin port, where the proxy checks the
//!   application itself; while the node (this test, on the host) and a meshed client
//!   are refused: no address is exempt from a port's policy;
//! - a ServerAuthorization that allows one ServiceAccount: a meshed client running as
//!   that ServiceAccount gets 200, a meshed client of another ServiceAccount and an
//!   unmeshed pod get 403 from the server's proxy, and each refusal is counted.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use weft_e2e::{
    eventually, kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, metric_sum, proxy_metrics,
    rollout_status, with_temp_ns,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A Deployment `name` serving HTTP on 8080 (port `http`, files from `/etc`) once its
/// proxy is ready, with an `httpGet` readiness probe through the proxy, and the pod
/// annotations given.
fn server(ns: &str, name: &str, annotations: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}, weft.dev/e2e-app: {name}}}
      annotations: {{{annotations}}}
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
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#,
        serve = weft_e2e::APP_AFTER_PROXY,
    )
}

/// A pod `name` running as ServiceAccount `sa` that only waits to run clients.
fn client_pod(ns: &str, name: &str, sa: &str, annotations: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {sa}, namespace: {ns}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{weft.dev/e2e-app: {name}}}
  annotations: {{{annotations}}}
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

/// The HTTP status `curl` gets for `url` from pod `pod` (`000` when no response came,
/// with curl's error), or the failure of `kubectl exec` itself.
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

/// Waits until `pod` gets `want` for `url`.
async fn until_status(ns: &str, pod: &str, url: &str, want: &str) {
    eventually(
        &format!("{pod} to get {want} from {url}"),
        TIMEOUT,
        || async {
            match status_from(ns, pod, url)? {
                got if got == want => Ok(()),
                got => Err(got),
            }
        },
    )
    .await
}

/// The status line's code of `GET path` on `ip:port`, sent from this host (the node).
fn http_status_from_host(ip: &str, port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().expect("an address");
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("cannot connect from the node to {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("the request is sent");
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no HTTP answer from {addr}: {answer:?}"))
        .to_string()
}

/// The names of the pods labelled `app=<app>`.
async fn pods_of(client: &kube::Client, ns: &str, app: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("the pods")
        .items
}

#[tokio::test]
async fn a_pod_under_a_deny_policy_is_ready_through_its_probes_and_refuses_the_node_and_clients() {
    with_temp_ns("policy-deny", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let workloads = server(
            &ns,
            "locked",
            r#""config.weft.dev/default-inbound-policy": deny"#,
        ) + "\n---\n"
            + &client_pod(&ns, "caller", "caller", "");
        let applied = kubectl_stdin(&["apply", "-f", "-"], &workloads);
        assert!(applied.success, "{}", applied.stderr);
        // Ready only if the proxy's check of the application passed.
        rollout_status(&ns, "locked");
        kubectl_ok(&[
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "pod/caller",
            "--timeout=180s",
        ]);

        let pods = pods_of(&client, &ns, "locked").await;
        assert_eq!(pods.len(), 1, "one locked pod");
        let pod = &pods[0];
        let name = pod.metadata.name.clone().expect("a name");
        let spec = pod.spec.as_ref().expect("a spec");
        let app = spec
            .containers
            .iter()
            .find(|c| c.name == "app")
            .expect("the app container");
        let probe = app
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|get| get.path.clone());
        assert_eq!(probe, Some(Some("/probe/app/readiness".to_string())));
        let metrics = proxy_metrics(&ns, &name);

        // The node is refused like anyone: a request from this host to the pod.
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("the pod's address");
        let from_node = http_status_from_host(&ip, 8080, "/hostname");
        assert_eq!(from_node, "403", "the node got through a deny policy");

        // Anyone else is refused: a meshed client gets 403 from the server's proxy,
        // counted as refused by the deny default.
        let url = format!("http://locked.{ns}.svc.cluster.local/hostname");
        let by_default = [("authorization", "default:deny")];
        let denied_before = metric_sum(&metrics, "inbound_tcp_authz_deny_total", &by_default);
        assert_eq!(
            status_from(&ns, "caller", &url).expect("curl runs"),
            "403",
            "the deny policy let a meshed client in"
        );
        let denied_after = metric_sum(
            &proxy_metrics(&ns, &name),
            "inbound_tcp_authz_deny_total",
            &by_default,
        );
        assert!(
            denied_after > denied_before,
            "the refusal was not counted: {denied_before} -> {denied_after}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_server_authorization_admits_its_service_account_and_refuses_everyone_else() {
    with_temp_ns("policy-saz", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let unmeshed = "weft.dev/inject: disabled";
        let workloads = [
            server(&ns, "web", ""),
            client_pod(&ns, "friend", "friend", ""),
            client_pod(&ns, "stranger", "stranger", ""),
            client_pod(&ns, "outsider", "outsider", unmeshed),
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
            "pod/outsider",
            "--timeout=180s",
        ]);
        let url = format!("http://web.{ns}.svc.cluster.local/hostname");
        // Before any authorization, the default policy lets everyone in.
        until_status(&ns, "stranger", &url, "200").await;

        let authorization = format!(
            r#"
apiVersion: weft.dev/v1alpha1
kind: ServerAuthorization
metadata: {{name: web-friends, namespace: {ns}}}
spec:
  server: {{podSelector: {{matchLabels: {{app: web}}}}, port: http}}
  client: {{meshTLS: {{serviceAccounts: [{{name: friend}}]}}}}
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &authorization);
        assert!(applied.success, "{}", applied.stderr);
        // Once the web proxy applies it, the other ServiceAccount is refused...
        until_status(&ns, "stranger", &url, "403").await;
        // ...the ServiceAccount it names is served...
        assert_eq!(status_from(&ns, "friend", &url).expect("curl runs"), "200");
        let web = pods_of(&client, &ns, "web").await;
        assert_eq!(web.len(), 1, "one web pod");
        let web = web[0].metadata.name.clone().expect("a name");
        let metrics = proxy_metrics(&ns, &web);
        let allowed = metric_sum(
            &metrics,
            "inbound_tcp_authz_allow_total",
            &[("authorization", "serverauthorization/web-friends")],
        );
        assert!(
            allowed >= 1.0,
            "the friend's connection was not counted as allowed by web-friends:\n{metrics}"
        );
        // ...and a pod outside the mesh (plaintext, no identity) is refused too, and
        // counted as such.
        let outsider = [
            ("authorization", "serverauthorization/web-friends"),
            ("client_id", "unauthenticated"),
        ];
        let denied_before = metric_sum(&metrics, "inbound_tcp_authz_deny_total", &outsider);
        assert_eq!(
            status_from(&ns, "outsider", &url).expect("curl runs"),
            "403"
        );
        let denied_after = metric_sum(
            &proxy_metrics(&ns, &web),
            "inbound_tcp_authz_deny_total",
            &outsider,
        );
        assert!(
            denied_after > denied_before,
            "the outsider's refusal was not counted: {denied_before} -> {denied_after}"
        );
    })
    .await;
}
