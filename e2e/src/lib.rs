//! Helpers for the end-to-end tests, which run against the local real cluster that
//! `e2e/cluster/up.sh` builds (`make e2e` brings it up, installs Weft from `deploy/`
//! as a user would, and runs these tests).
//!
//! - [`kubectl`] runs the real `kubectl` against the cluster, as a user would.
//! - [`with_temp_ns`] gives a test a fresh namespace labelled `weft.dev/e2e=true`,
//!   dumps the namespace's state and the cluster's logs when the test fails, and
//!   deletes the namespace unless `WEFT_E2E_KEEP=1`.
//!
//! A missing precondition (no cluster, no kubeconfig) fails the test loudly; nothing
//! here ever skips.

#![forbid(unsafe_code)]

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};

/// The cache the cluster scripts build into (`$WEFT_CACHE`, default `~/.cache/weft`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("WEFT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weft")))
        .expect("HOME or WEFT_CACHE must be set")
}

/// Where the cluster keeps its state, logs and kubeconfig.
pub fn cluster_dir() -> PathBuf {
    cache_dir().join("cluster")
}

/// The pinned Kubernetes version, from `e2e/cluster/versions.env`.
pub fn kubernetes_version() -> String {
    let path = repo_root().join("e2e/cluster/versions.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no K8S_VERSION in {}", path.display()))
}

/// The kubeconfig of the local cluster (`$KUBECONFIG` when set).
pub fn kubeconfig() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| cluster_dir().join("admin.kubeconfig"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A client for the local cluster. Panics, saying what to do, when there is none.
pub async fn client() -> Client {
    let path = kubeconfig();
    let config = kube::config::Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no kubeconfig at {} ({e}): the e2e tests need the local cluster; run `make e2e`",
            path.display()
        )
    });
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .expect("the cluster's kubeconfig is usable");
    let client = Client::try_from(config).expect("a client for the local cluster");
    client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("the local cluster does not answer ({e}); run `make e2e`"));
    client
}

/// The result of a `kubectl` run.
#[derive(Debug)]
pub struct Kubectl {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Kubectl {
    fn from(out: Output) -> Self {
        Self {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The `kubectl` binary: `$KUBECTL`, else the one the cluster scripts built.
pub fn kubectl_path() -> PathBuf {
    std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            cache_dir()
                .join("bin")
                .join(format!("kubernetes-{}", kubernetes_version()))
                .join("kubectl")
        })
}

/// Runs `kubectl ARGS` against the local cluster from the repository root.
pub fn kubectl(args: &[&str]) -> Kubectl {
    Command::new(kubectl_path())
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl ({}): {e}", kubectl_path().display()))
        .into()
}

/// Runs `kubectl ARGS` and returns its stdout, failing the test if it fails.
#[track_caller]
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.success,
        "kubectl {} failed:\n{}{}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Runs `kubectl ARGS` with `stdin` as its input.
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> Kubectl {
    use std::io::Write;
    let mut child = Command::new(kubectl_path())
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .current_dir(repo_root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .expect("kubectl reads its input");
    }
    child.wait_with_output().expect("kubectl runs").into()
}

/// Polls `check` every 500ms until it returns `Some`, or fails the test after `timeout`
/// with `what` and the last state seen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `test` with a fresh namespace. On failure, prints the namespace's resources,
/// events, pod logs and the tail of every cluster component's log, then fails.
pub async fn with_temp_ns<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let client = client().await;
    let name = format!(
        "e2e-{prefix}-{}-{}",
        std::process::id(),
        NS_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"weft.dev/e2e": "true"}}
    }))
    .expect("a namespace object");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));

    let outcome = AssertUnwindSafe(test(client, name.clone()))
        .catch_unwind()
        .await;
    let keep = std::env::var("WEFT_E2E_KEEP").is_ok_and(|v| v == "1");
    if outcome.is_err() {
        dump_namespace(&name);
        dump_cluster_logs();
    }
    if keep {
        eprintln!("WEFT_E2E_KEEP=1: keeping namespace {name}");
    } else {
        let _ = namespaces.delete(&name, &DeleteParams::background()).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Prints what a person would look at first in a failing namespace.
pub fn dump_namespace(ns: &str) {
    eprintln!("===== state of namespace {ns} =====");
    for args in [
        vec!["get", "all,events", "-o", "wide", "-n", ns],
        vec!["describe", "pods", "-n", ns],
        vec![
            "logs",
            "-n",
            ns,
            "--all-containers",
            "--prefix",
            "--tail=50",
            "-l",
            "weft.dev/e2e-app",
        ],
    ] {
        let out = kubectl(&args);
        eprintln!("$ kubectl {}\n{}{}", args.join(" "), out.stdout, out.stderr);
    }
}

/// Prints the last lines of every cluster component's log.
pub fn dump_cluster_logs() {
    let dir = cluster_dir().join("logs");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no cluster logs at {}", dir.display());
        return;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        eprintln!(
            "===== tail of {} =====\n{}",
            entry.path().display(),
            tail.join("\n")
        );
    }
}

/// A pod running only the proxy, as ServiceAccount `sa`, asking for `identity`.
pub fn proxy_pod(ns: &str, name: &str, sa: &str, identity: &str) -> String {
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
  containers:
  - name: weft-proxy
    image: weft.local/weft-proxy:dev
    imagePullPolicy: IfNotPresent
    env:
    - {{name: WEFT_PROXY_IDENTITY, value: "{identity}"}}
    - {{name: WEFT_PROXY_CONTROL_ADDR, value: "weft-proxy-api.weft-system.svc.cluster.local:8090"}}
    - {{name: WEFT_PROXY_LOG, value: "info"}}
    ports: [{{name: admin, containerPort: 4191}}]
    readinessProbe: {{httpGet: {{path: /ready, port: admin}}, periodSeconds: 1}}
    volumeMounts:
    - {{name: identity-token, mountPath: /var/run/secrets/weft.dev/identity, readOnly: true}}
    - {{name: trust-bundle, mountPath: /var/run/weft.dev/trust, readOnly: true}}
  volumes:
  - name: identity-token
    projected:
      sources:
      - serviceAccountToken: {{path: token, audience: weft.dev/identity, expirationSeconds: 3600}}
  - name: trust-bundle
    configMap: {{name: weft-trust-bundle}}
"#
    )
}

/// The proxy's `/metrics`, through the API server's pod proxy.
pub fn proxy_metrics(ns: &str, pod: &str) -> String {
    kubectl_ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/pods/{pod}:4191/proxy/metrics"),
    ])
}

/// The value of the first sample of `name` (with its labels, if given) in `text`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every sample of `name` whose labels include all of `labels`, in `text`
/// (so a counter split by more labels than a test cares about still adds up).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An app container's command (busybox `sh -c`): it exits at once unless its proxy is
/// already ready when it starts, and then serves HTTP on 8080 (files from `/etc`). An
/// app container that never restarted started after its proxy was ready.
pub const APP_AFTER_PROXY: &str =
    "timeout 5 wget -q -O /dev/null http://127.0.0.1:4191/ready && exec httpd -f -p 8080 -h /etc";

/// A Deployment `name` of `replicas` pods labelled `app: <name>` whose app runs
/// [`APP_AFTER_PROXY`].
pub fn app_deployment(ns: &str, name: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, weft.dev/e2e-app: {name}}}}}
    spec:
      containers:
      - name: app
        image: weft.local/testapp:dev
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "{APP_AFTER_PROXY}"]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"#
    )
}

/// A meshed Deployment `web` of `replicas` pods running [`APP_AFTER_PROXY`] (container
/// port `http` 8080, a tcpSocket readiness probe) and Service `web` (port 80).
pub fn web_service(ns: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web, weft.dev/e2e-app: web}}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: weft.local/testapp:dev
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "{APP_AFTER_PROXY}"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

/// Waits (up to 180 s) until Deployment `name` has rolled out, failing the test if
/// it does not.
#[track_caller]
pub fn rollout_status(ns: &str, name: &str) {
    kubectl_ok(&[
        "rollout",
        "status",
        "-n",
        ns,
        &format!("deployment/{name}"),
        "--timeout=180s",
    ]);
}

/// `kubectl patch mesh default --type=merge -p PATCH`.
pub fn patch_mesh(patch: &str) -> Kubectl {
    kubectl(&["patch", "mesh", "default", "--type=merge", "-p", patch])
}

/// [`patch_mesh`], failing the test if it fails.
#[track_caller]
pub fn patch_mesh_ok(patch: &str) {
    let out = patch_mesh(patch);
    assert!(
        out.success,
        "patching the Mesh with {patch} failed: {}",
        out.stderr
    );
}

/// Annotates `ns` with `weft.dev/inject=enabled` and waits until the operator has
/// published the trust bundle there, so pods created next are meshed and can start.
/// Returns the bundle.
pub async fn mesh_namespace(client: &Client, ns: &str) -> String {
    use k8s_openapi::api::core::v1::ConfigMap;
    kubectl_ok(&["annotate", "namespace", ns, "weft.dev/inject=enabled"]);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    eventually(
        "the trust bundle in the namespace",
        Duration::from_secs(60),
        || {
            let config_maps = config_maps.clone();
            async move {
                let cm = config_maps
                    .get_opt("weft-trust-bundle")
                    .await
                    .map_err(|e| e.to_string())?;
                cm.and_then(|cm| cm.data?.get("ca-bundle.pem").cloned())
                    .ok_or_else(|| "not yet".to_string())
            }
        },
    )
    .await
}

/// The port of the operator's proxy API, as a proxy dials it (the Service's port and
/// the operator's container port alike): a rule on it in a pod's network namespace
/// cuts that pod's proxy off from the control plane.
pub const CONTROL_PORT: &str = "8090";

/// Inserts (`op` `-I`) or deletes (`-D`) the rule in network namespace `netns` that
/// cuts its pod off from the operator's proxy API, answering the proxy's packets with
/// `action` (`["DROP"]`, or `["REJECT", "--reject-with", "tcp-reset"]`).
#[track_caller]
pub fn control_rule(netns: &Path, op: &str, action: &[&str]) {
    let mut args = vec![
        "iptables",
        "-w",
        op,
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        CONTROL_PORT,
        "-j",
    ];
    args.extend(action);
    in_netns(netns, &args);
}

/// The network namespace (a file to `nsenter --net=`) of the pod with address `ip`.
pub fn pod_netns(ip: &str) -> PathBuf {
    let dir = Path::new("/run/weft-cluster/containerd/state/io.containerd.grpc.v1.cri/netns");
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "cannot list the pods' network namespaces in {}: {e}",
            dir.display()
        )
    });
    for entry in entries.flatten() {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", entry.path().display()))
            .args(["ip", "-4", "-o", "addr", "show"])
            .output()
            .expect("nsenter runs (as root)");
        if String::from_utf8_lossy(&out.stdout).contains(&format!("inet {ip}/")) {
            return entry.path();
        }
    }
    panic!("no network namespace in {} has address {ip}", dir.display());
}

/// Runs `cmd ARGS` inside the network namespace `netns`, failing the test if it fails.
#[track_caller]
pub fn in_netns(netns: &Path, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .expect("nsenter runs (as root)");
    assert!(
        out.status.success(),
        "{} in {} failed: {}",
        args.join(" "),
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Scales the operator to `replicas` and waits: for 0, until its pods are gone; else
/// until the rollout is complete.
pub fn scale_operator(replicas: u32) {
    const OPERATOR: [&str; 2] = ["-n", "weft-system"];
    let replicas = format!("--replicas={replicas}");
    let mut args = vec!["scale", "deployment/weft-operator", replicas.as_str()];
    args.extend(OPERATOR);
    kubectl_ok(&args);
    if replicas == "--replicas=0" {
        let mut args = vec![
            "wait",
            "--for=delete",
            "pod",
            "-l",
            "app.kubernetes.io/name=weft-operator",
            "--timeout=120s",
        ];
        args.extend(OPERATOR);
        // Nothing to wait for is fine too.
        let _ = kubectl(&args);
    } else {
        let mut args = vec![
            "rollout",
            "status",
            "deployment/weft-operator",
            "--timeout=180s",
        ];
        args.extend(OPERATOR);
        kubectl_ok(&args);
    }
}

/// Scales the operator back to one replica when dropped, so a failing test that
/// stopped it leaves the cluster usable.
#[derive(Debug)]
pub struct RestoreOperator;

impl Drop for RestoreOperator {
    fn drop(&mut self) {
        scale_operator(1);
    }
}

/// The HTTP status `curl` in the `app` container of pod `pod` gets for `url`; `000`
/// when no response came (refused, reset, or nothing within 20 s).
pub fn http_status(ns: &str, pod: &str, url: &str) -> String {
    let out = kubectl(&[
        "exec",
        "-n",
        ns,
        pod,
        "-c",
        "app",
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "20",
        url,
    ]);
    out.stdout.trim().to_string()
}

/// A pod `name` (labelled `weft.dev/e2e-app: <name>`) under its own ServiceAccount
/// `name`, whose `app` container serves HTTP on 8080 once its proxy is ready
/// ([`APP_AFTER_PROXY`]); with `serve: false` it only sleeps (a client).
pub fn testapp_pod(ns: &str, name: &str, serve: bool) -> String {
    let app = if serve {
        format!(
            r#"command: [sh, -c, "{APP_AFTER_PROXY}"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}"#
        )
    } else {
        r#"command: [sleep, "3600"]"#.to_string()
    };
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
    {app}
"#
    )
}

/// Waits until each of `pods` in `ns` is Ready (3 minutes at most).
pub fn wait_ready(ns: &str, pods: &[&str]) {
    for pod in pods {
        kubectl_ok(&[
            "wait",
            "-n",
            ns,
            "--for=condition=Ready",
            &format!("pod/{pod}"),
            "--timeout=180s",
        ]);
    }
}

/// The address of pod `pod` in `ns`.
pub fn pod_ip(ns: &str, pod: &str) -> String {
    kubectl_ok(&[
        "get",
        "pod",
        pod,
        "-n",
        ns,
        "-o",
        "jsonpath={.status.podIP}",
    ])
    .trim()
    .to_string()
}

/// The operator's `/metrics`, every replica's text together (through the API server's
/// pod proxy).
pub fn operator_metrics() -> String {
    let pods = kubectl_ok(&[
        "get",
        "pods",
        "-n",
        "weft-system",
        "-l",
        "app.kubernetes.io/name=weft-operator",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    pods.split_whitespace()
        .map(|pod| {
            kubectl_ok(&[
                "get",
                "--raw",
                &format!("/api/v1/namespaces/weft-system/pods/{pod}:9990/proxy/metrics"),
            ])
        })
        .collect::<Vec<_>>()
        .join("\n")
}
