//! Inbound policy fails closed, on the real cluster with real clients:
//!
//! - a ServerAuthorization on a port the pod does not declare holds however many other
//!   ports of the pod a client touched first (the proxy once streamed such ports' policies
//!   on demand, 64 at most, and judged any further one by the default);
//! - a freshly started proxy whose operator cannot answer refuses a client the default
//!   would allow (403, `policy=unknown`), counted, and its pod is not Ready; once the
//!   operator answers, the client is served and the pod Ready;
//! - a busy client removed from a ServerAuthorization gets 403 for its next request
//!   within seconds (nothing else in between: no error, no hang), and 200 again once it
//!   is added back. The test app (busybox httpd) closes each connection after its
//!   answer, so here every request comes on a new connection from the client; that a
//!   request on a kept-alive connection is judged by the policy in force when it arrives
//!   is shown in-process, over HTTP/1 and HTTP/2 (`proxy/tests/http.rs`).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use weft_e2e::{
    control_rule, eventually, http_status, in_netns, kubectl, kubectl_path, kubectl_stdin,
    mesh_namespace, metric_sum, pod_ip, pod_netns, testapp_pod, wait_ready, with_temp_ns,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A pod `name` (ServiceAccount `name`) serving HTTP on 8080, which it declares, and on
/// 9100, which it does not, once its proxy is ready.
fn server_pod(ns: &str, name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{weft.dev/e2e-app: {name}}}}}
spec:
  serviceAccountName: {name}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "timeout 5 wget -q -O /dev/null http://127.0.0.1:4191/ready && httpd -p 9100 -h /etc && exec httpd -f -p 8080 -h /etc"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"#
    )
}

/// A ServerAuthorization `name` of pod `web`'s `port`, allowing `service_accounts`.
fn authorization(ns: &str, name: &str, port: u16, service_accounts: &[&str]) -> String {
    let accounts: Vec<String> = service_accounts
        .iter()
        .map(|sa| format!("{{name: {sa}}}"))
        .collect();
    format!(
        r#"
apiVersion: weft.dev/v1alpha1
kind: ServerAuthorization
metadata: {{name: {name}, namespace: {ns}}}
spec:
  server: {{podSelector: {{matchLabels: {{weft.dev/e2e-app: web}}}}, port: {port}}}
  client: {{meshTLS: {{serviceAccounts: [{accounts}]}}}}
"#,
        accounts = accounts.join(", ")
    )
}

fn apply(yaml: &str) {
    let applied = kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(applied.success, "{}", applied.stderr);
}

async fn until_status(ns: &str, pod: &str, url: &str, want: &str) {
    eventually(
        &format!("{pod} to get {want} from {url}"),
        TIMEOUT,
        || async {
            let got = http_status(ns, pod, url);
            if got == want { Ok(()) } else { Err(got) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_server_authorization_on_an_undeclared_port_holds_after_many_other_ports() {
    with_temp_ns("failclosed-port", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        apply(&server_pod(&ns, "web"));
        apply(&testapp_pod(&ns, "friend", false));
        apply(&testapp_pod(&ns, "stranger", false));
        wait_ready(&ns, &["web", "friend", "stranger"]);
        let web = pod_ip(&ns, "web");

        // Before any ServerAuthorization, the stranger touches 70 other ports of the
        // pod, none of which it declares (nothing listens there).
        let touch = format!(
            "for p in $(seq 10000 10069); do curl -s -o /dev/null -m 3 http://{web}:$p/; done"
        );
        let touched = kubectl(&[
            "exec", "-n", &ns, "stranger", "-c", "app", "--", "sh", "-c", &touch,
        ]);
        assert!(touched.success, "{}", touched.stderr);

        // Port 9100, which the pod does not declare, allows the friend alone.
        apply(&authorization(&ns, "web-metrics", 9100, &["friend"]));
        let url = format!("http://{web}:9100/hostname");
        until_status(&ns, "stranger", &url, "403").await;
        assert_eq!(http_status(&ns, "friend", &url), "200");
        // And it stays so.
        assert_eq!(http_status(&ns, "stranger", &url), "403");
    })
    .await;
}

/// What `curl` on the node (outside every pod, so a plaintext client the default
/// policy allows) gets for `url`: the status and the response headers.
fn node_curl(url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-w",
            "%{http_code}",
            "-m",
            "20",
            url,
        ])
        .output()
        .expect("curl runs on the node");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.lines().last().unwrap_or_default().trim().to_string();
    (status, text)
}

fn pod_ready(ns: &str, pod: &str) -> String {
    let out = kubectl(&[
        "get",
        "pod",
        pod,
        "-n",
        ns,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
    ]);
    out.stdout.trim().to_string()
}

#[tokio::test]
async fn a_restarted_proxy_refuses_clients_until_its_policy_arrives_and_is_not_ready() {
    with_temp_ns("failclosed-unknown", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        apply(&server_pod(&ns, "web"));
        wait_ready(&ns, &["web"]);
        let web = pod_ip(&ns, "web");
        let url = format!("http://{web}:8080/hostname");
        // The default policy allows the node.
        assert_eq!(node_curl(&url).0, "200");

        // The proxy's operator goes silent, and the proxy starts again.
        let netns = pod_netns(&web);
        let iptables = |op: &str| control_rule(&netns, op, &["DROP"]);
        iptables("-I");
        let restarts = |ns: &str| {
            kubectl(&[
                "get",
                "pod",
                "web",
                "-n",
                ns,
                "-o",
                "jsonpath={.status.initContainerStatuses[?(@.name==\"weft-proxy\")].restartCount}",
            ])
            .stdout
            .trim()
            .to_string()
        };
        let before = restarts(&ns);
        in_netns(
            &netns,
            &["curl", "-s", "-X", "POST", "http://127.0.0.1:4191/shutdown"],
        );
        eventually("the proxy to start again", TIMEOUT, || async {
            let now = restarts(&ns);
            let live = node_curl(&format!("http://{web}:4191/live")).0;
            if now != before && live == "200" {
                Ok(())
            } else {
                Err(format!("restarts {before} -> {now}, /live {live}"))
            }
        })
        .await;

        // Its policy cannot arrive: the client is refused, saying so, not admitted by
        // a default.
        let (status, headers) = node_curl(&url);
        let metrics = Command::new("curl")
            .args(["-s", "-m", "10", &format!("http://{web}:4191/metrics")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .expect("curl runs on the node");
        let ready = eventually("the pod to be not Ready", TIMEOUT, || async {
            match pod_ready(&ns, "web").as_str() {
                "False" => Ok("False".to_string()),
                other => Err(other.to_string()),
            }
        })
        .await;
        iptables("-D");
        assert_eq!(status, "403", "{headers}");
        assert!(
            headers.contains("policy=unknown"),
            "the refusal names no unknown policy: {headers}"
        );
        assert!(
            metric_sum(
                &metrics,
                "inbound_http_authz_deny_total",
                &[("server", "8080"), ("authorization", "unknown")]
            ) >= 1.0,
            "{metrics}"
        );
        assert_eq!(ready, "False");

        // The operator answers again: served, and Ready.
        eventually("the node to be served again", TIMEOUT, || async {
            match node_curl(&url).0.as_str() {
                "200" => Ok(()),
                other => Err(other.to_string()),
            }
        })
        .await;
        wait_ready(&ns, &["web"]);
    })
    .await;
}

#[tokio::test]
async fn a_busy_client_is_refused_at_its_next_request_once_removed_and_served_once_added() {
    with_temp_ns("failclosed-revoke", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        apply(&server_pod(&ns, "web"));
        apply(&testapp_pod(&ns, "friend", false));
        wait_ready(&ns, &["web", "friend"]);
        let web = pod_ip(&ns, "web");
        let url = format!("http://{web}:8080/hostname");
        apply(&authorization(&ns, "web-http", 8080, &["friend", "admin"]));
        until_status(&ns, "friend", &url, "200").await;

        // One curl, five requests a second for two minutes: each line the status and
        // whether curl had to connect for it.
        let mut curl = Command::new(kubectl_path())
            .args([
                "exec",
                "-n",
                &ns,
                "friend",
                "-c",
                "app",
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                // To stderr, which curl does not buffer: each line as it happens.
                "%{stderr}%{http_code} %{num_connects}\n",
                "--rate",
                "5/s",
                "-m",
                "300",
            ])
            .arg(format!("{url}?[1-600]"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = curl.stderr.take().expect("piped");
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.trim().to_string());
                }
            }
        });
        let after = |from: usize, status: &str| {
            let lines = lines.lock().unwrap();
            lines
                .iter()
                .skip(from)
                .position(|l| l.starts_with(status))
                .map(|i| (from + i, lines[from + i].clone()))
        };
        let seen = || lines.lock().unwrap().len();
        eventually(
            "the kept-alive client's requests to be served",
            TIMEOUT,
            || async {
                after(0, "200")
                    .map(|_| ())
                    .ok_or_else(|| format!("{:?}", lines.lock().unwrap()))
            },
        )
        .await;

        // Removed: its next requests are refused, on the same connection.
        let removed_at = seen();
        apply(&authorization(&ns, "web-http", 8080, &["admin"]));
        let started = std::time::Instant::now();
        let (refused_at, line) = eventually(
            "a 403 after the removal",
            Duration::from_secs(30),
            || async {
                after(removed_at, "403").ok_or_else(|| format!("{:?}", lines.lock().unwrap()))
            },
        )
        .await;
        let took = started.elapsed();
        let around: Vec<String> =
            lines.lock().unwrap()[removed_at.saturating_sub(2)..=refused_at].to_vec();
        assert!(
            line.starts_with("403 ")
                && lines.lock().unwrap()[removed_at..refused_at]
                    .iter()
                    .all(|l| l.starts_with("200 ")),
            "want 200s, then 403 for the next request refused; the lines around the \
             removal: {around:?}"
        );
        assert!(
            took < Duration::from_secs(15),
            "refused only after {took:?}"
        );

        // Added back: served again.
        apply(&authorization(&ns, "web-http", 8080, &["friend", "admin"]));
        eventually(
            "a 200 after the re-addition",
            Duration::from_secs(30),
            || async {
                after(refused_at + 1, "200")
                    .map(|_| ())
                    .ok_or_else(|| format!("{:?}", lines.lock().unwrap()))
            },
        )
        .await;
        let _ = curl.kill();
        let _ = curl.wait();
    })
    .await;
}
