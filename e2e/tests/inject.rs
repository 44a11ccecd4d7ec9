//! Injection on the real cluster: a Deployment and a Job in an annotated namespace are
//! meshed, their TCP provably goes through the proxy, and pods that opted out, that
//! share the node's network, or that live in `kube-system` are left alone.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use weft_e2e::{
    app_deployment, eventually, in_netns, kubectl, kubectl_ok, kubectl_stdin, mesh_namespace,
    metric_sum, pod_netns, proxy_metrics, rollout_status, with_temp_ns,
};

/// A Deployment `web` serving HTTP on 8080 (busybox httpd) once its proxy is ready,
/// and a pod `target` that opts out of the namespace's injection and serves the same.
fn workloads(ns: &str) -> String {
    app_deployment(ns, "web", 2)
        + &format!(
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: target
  namespace: {ns}
  labels: {{weft.dev/e2e-app: target}}
  annotations: {{weft.dev/inject: disabled}}
spec:
  containers:
  - name: app
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [httpd, -f, -p, "8080", -h, /etc]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"#
        )
}

fn container_names(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = pod.spec.as_ref().expect("a pod spec");
    let names = |list: &[k8s_openapi::api::core::v1::Container]| {
        list.iter().map(|c| c.name.clone()).collect::<Vec<_>>()
    };
    (
        names(spec.init_containers.as_deref().unwrap_or_default()),
        names(&spec.containers),
    )
}

fn is_injected(pod: &Pod) -> bool {
    let (init, containers) = container_names(pod);
    init.iter()
        .chain(&containers)
        .any(|n| n == "weft-proxy" || n == "weft-init")
}

/// An HTTP GET from this host to `ip:port`; the status line.
fn http_get(ip: &str, port: u16, path: &str) -> String {
    let mut conn = TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().expect("an address"),
        Duration::from_secs(5),
    )
    .expect("the pod accepts");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a timeout");
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").expect("the request is sent");
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("no whole answer from {ip}:{port} ({e}): {answer:?}"));
    answer
        .lines()
        .next()
        .unwrap_or_else(|| panic!("an empty answer from {ip}:{port}"))
        .to_string()
}

/// `wget` from the `app` container of `pod`: the body, or the error.
fn wget_from(ns: &str, pod: &str, url: &str) -> Result<String, String> {
    let out = kubectl(&[
        "exec", "-n", ns, pod, "-c", "app", "--", "timeout", "5", "wget", "-q", "-O-", url,
    ]);
    if out.success {
        Ok(out.stdout)
    } else {
        Err(format!("{}{}", out.stdout, out.stderr))
    }
}

#[tokio::test]
async fn a_deployment_is_meshed_and_its_tcp_goes_through_the_proxy() {
    with_temp_ns("inject", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let applied = kubectl_stdin(&["apply", "-f", "-"], &workloads(&ns));
        assert!(applied.success, "{}", applied.stderr);
        rollout_status(&ns, "web");
        kubectl_ok(&[
            "wait",
            "-n",
            &ns,
            "pod/target",
            "--for=condition=Ready",
            "--timeout=120s",
        ]);

        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let web = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("the web pods");
        assert_eq!(web.items.len(), 2);
        for pod in &web.items {
            let (init, containers) = container_names(pod);
            assert_eq!(init, ["weft-init", "weft-proxy"], "native sidecar");
            assert_eq!(containers, ["app"]);
            let spec = pod.spec.as_ref().expect("a spec");
            let proxy = &spec.init_containers.as_ref().expect("init containers")[1];
            assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            assert_eq!(
                labels.get("weft.dev/injected").map(String::as_str),
                Some("true")
            );
            let notes = pod.metadata.annotations.clone().unwrap_or_default();
            assert!(notes.contains_key("weft.dev/config-version"), "{notes:?}");
            // Every container, the native sidecar among the init containers included,
            // is ready and at its first start: the app started after its proxy.
            let status = pod.status.as_ref().expect("a status");
            let apps = status.container_statuses.as_deref().unwrap_or_default();
            assert_eq!(apps.len(), 1, "one app status: {apps:?}");
            assert!(
                apps.iter()
                    .all(|s| s.name == "app" && s.ready && s.restart_count == 0),
                "the app ready at its first start: {apps:?}"
            );
            let inits = status
                .init_container_statuses
                .as_deref()
                .unwrap_or_default();
            let of = |name: &str| {
                inits
                    .iter()
                    .find(|s| s.name == name)
                    .unwrap_or_else(|| panic!("no status for {name}: {inits:?}"))
            };
            let init = of("weft-init");
            let exit = init
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code);
            assert_eq!(exit, Some(0), "weft-init ran to success: {init:?}");
            let sidecar = of("weft-proxy");
            assert!(
                sidecar.ready && sidecar.started == Some(true) && sidecar.restart_count == 0,
                "the native sidecar ready at its first start: {sidecar:?}"
            );
        }
        let target = pods.get("target").await.expect("the target pod");
        assert!(
            !is_injected(&target),
            "weft.dev/inject=disabled is honoured"
        );
        let target_ip = target
            .status
            .and_then(|s| s.pod_ip)
            .expect("the target's address");

        let pod = web.items[0].metadata.name.clone().expect("a name");
        let ip = web.items[0]
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("the pod's address");

        // Inbound: a request from outside the pod reaches the app through the proxy.
        // The kubelet's tcpSocket probe opens connections too, so the request asks for
        // a page that is not there, and only its 404 moves the counter looked at.
        let not_found = [
            ("direction", "inbound"),
            ("tls", "false"),
            ("status_code", "404"),
        ];
        let counted = || metric_sum(&proxy_metrics(&ns, &pod), "response_total", &not_found);
        let before = counted();
        let status = http_get(&ip, 8080, "/no-such-page");
        assert!(
            status.starts_with("HTTP/1.") && status.contains(" 404 "),
            "{status}"
        );
        eventually(
            "the inbound 404 to be counted once",
            Duration::from_secs(10),
            || async {
                let now = counted();
                if now == before + 1.0 {
                    Ok(())
                } else {
                    Err(format!("{before} -> {now}"))
                }
            },
        )
        .await;

        // Outbound: the app's connection to another pod goes through the proxy.
        let url = format!("http://{target_ip}:8080/hostname");
        let to_target = [
            ("direction", "outbound"),
            ("authority", &format!("{target_ip}:8080")),
        ];
        let opened = || metric_sum(&proxy_metrics(&ns, &pod), "tcp_open_total", &to_target);
        let before = opened();
        let body = wget_from(&ns, &pod, &url).expect("the app reaches the target");
        assert_eq!(body.trim(), "target");
        let after = opened();
        assert!(after >= before + 1.0, "outbound opens {before} -> {after}");

        // With the proxy's outbound port closed, the app cannot connect anywhere; once
        // it is open again, it can: its connections only ever went through the proxy.
        let netns = pod_netns(&ip);
        let reject = [
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "4140",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ];
        let rule = |op: &str| {
            let mut args = vec!["iptables", "-w", op];
            args.extend(reject);
            in_netns(&netns, &args);
        };
        rule("-I");
        let closed = wget_from(&ns, &pod, &url);
        rule("-D");
        assert!(
            closed.is_err(),
            "connected with the proxy's port closed: {closed:?}"
        );
        assert_eq!(
            wget_from(&ns, &pod, &url).expect("reachable again").trim(),
            "target"
        );

        let events = kubectl_ok(&[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "reason=Injected",
            "-o",
            "jsonpath={.items[*].involvedObject.kind} {.items[*].message}",
        ]);
        assert!(
            events.contains("ReplicaSet") && events.contains("native sidecar"),
            "{events}"
        );
        let skipped = kubectl_ok(&[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "reason=InjectionSkipped",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        assert!(skipped.contains("Disabled"), "{skipped}");
    })
    .await;
}

#[tokio::test]
async fn a_job_completes_with_its_native_sidecar() {
    with_temp_ns("inject-job", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let job = format!(
            r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: once, namespace: {ns}}}
spec:
  backoffLimit: 0
  template:
    metadata: {{labels: {{weft.dev/e2e-app: once}}}}
    spec:
      restartPolicy: Never
      containers:
      - name: app
        image: weft.local/testapp:dev
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "echo done"]
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &job);
        assert!(applied.success, "{}", applied.stderr);
        kubectl_ok(&[
            "wait",
            "-n",
            &ns,
            "job/once",
            "--for=condition=Complete",
            "--timeout=180s",
        ]);
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("job-name=once"))
            .await
            .expect("the job's pods");
        assert_eq!(pods.items.len(), 1);
        let (init, _) = container_names(&pods.items[0]);
        assert_eq!(init, ["weft-init", "weft-proxy"]);
    })
    .await;
}

#[tokio::test]
async fn kube_system_host_network_and_proxy_user_pods_are_left_alone() {
    with_temp_ns("inject-skip", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        // kube-system is never even sent to the webhook, whatever the pod asks.
        let name = format!("{ns}-asks");
        let system_pod = format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: kube-system
  annotations: {{weft.dev/inject: enabled}}
spec:
  containers:
  - {{name: app, image: weft.local/testapp:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &system_pod);
        assert!(applied.success, "{}", applied.stderr);
        let pod = Api::<Pod>::namespaced(client.clone(), "kube-system")
            .get(&name)
            .await
            .expect("the kube-system pod");
        kubectl_ok(&["delete", "pod", "-n", "kube-system", &name, "--wait=false"]);
        assert!(!is_injected(&pod), "a kube-system pod was injected");

        let host = format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: host, namespace: {ns}, labels: {{weft.dev/e2e-app: host}}}}
spec:
  hostNetwork: true
  containers:
  - {{name: app, image: weft.local/testapp:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &host);
        assert!(applied.success, "{}", applied.stderr);
        assert!(
            applied.stderr.contains("hostNetwork"),
            "the warning says why: {}",
            applied.stderr
        );
        let pod = Api::<Pod>::namespaced(client.clone(), &ns)
            .get("host")
            .await
            .expect("the host-network pod");
        assert!(!is_injected(&pod));
        let note = eventually("the skip Event", Duration::from_secs(30), || {
            let ns = ns.clone();
            async move {
                let out = kubectl_ok(&[
                    "get", "events", "-n", &ns, "--field-selector",
                    "reason=InjectionSkipped,involvedObject.name=host", "-o",
                    "jsonpath={.items[*].message}",
                ]);
                if out.contains("HostNetwork") { Ok(out) } else { Err(out) }
            }
        })
        .await;
        assert!(note.contains("hostNetwork: true"), "{note}");

        // A container running as the proxy's user would bypass capture.
        let as_proxy = format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: as-proxy, namespace: {ns}, labels: {{weft.dev/e2e-app: as-proxy}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    securityContext: {{runAsUser: 2102}}
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &as_proxy);
        assert!(applied.success, "{}", applied.stderr);
        assert!(
            applied.stderr.contains("container app runs as user 2102"),
            "the warning says why: {}",
            applied.stderr
        );
        let pod = Api::<Pod>::namespaced(client.clone(), &ns)
            .get("as-proxy")
            .await
            .expect("the pod running as the proxy's user");
        assert!(!is_injected(&pod));
        eventually("the ProxyUid Event", Duration::from_secs(30), || {
            let ns = ns.clone();
            async move {
                let out = kubectl_ok(&[
                    "get", "events", "-n", &ns, "--field-selector",
                    "reason=InjectionSkipped,involvedObject.name=as-proxy", "-o",
                    "jsonpath={.items[*].message}",
                ]);
                if out.contains("ProxyUid") { Ok(out) } else { Err(out) }
            }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_annotation_leaves_the_pod_unmeshed_and_says_why() {
    with_temp_ns("inject-bad", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        const BAD: &str = "config.weft.dev/proxy-cpu-limit";
        // A bare pod: the API server hands the webhook's warning to kubectl.
        let pod = format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: bare
  namespace: {ns}
  labels: {{weft.dev/e2e-app: bare}}
  annotations: {{"{BAD}": lots}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: app, image: weft.local/testapp:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &pod);
        assert!(applied.success, "{}", applied.stderr);
        assert!(
            applied.stderr.contains("Warning") && applied.stderr.contains(BAD),
            "kubectl shows the warning naming the annotation: {:?}",
            applied.stderr
        );
        let bare = Api::<Pod>::namespaced(client.clone(), &ns)
            .get("bare")
            .await
            .expect("the bare pod");
        assert!(!is_injected(&bare), "a pod with a bad annotation was meshed");

        // A Deployment's pod: the Event lands on its owner, the ReplicaSet.
        let deployment = format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: odd, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: odd}}}}
  template:
    metadata:
      labels: {{app: odd, weft.dev/e2e-app: odd}}
      annotations: {{"{BAD}": lots}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: app, image: weft.local/testapp:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &deployment);
        assert!(applied.success, "{}", applied.stderr);
        rollout_status(&ns, "odd");
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("app=odd"))
            .await
            .expect("the odd pods");
        assert_eq!(pods.items.len(), 1, "one odd pod");
        assert!(!is_injected(&pods.items[0]), "the Deployment's pod was meshed");
        let owner = pods.items[0]
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.name.clone())
            .expect("the pod's ReplicaSet");
        let note = eventually("the InjectionSkipped Event on the ReplicaSet", Duration::from_secs(30), || {
            let (ns, owner) = (ns.clone(), owner.clone());
            async move {
                let out = kubectl_ok(&[
                    "get", "events", "-n", &ns, "--field-selector",
                    &format!("reason=InjectionSkipped,involvedObject.kind=ReplicaSet,involvedObject.name={owner}"),
                    "-o", "jsonpath={.items[*].message}",
                ]);
                if out.contains(BAD) { Ok(out) } else { Err(out) }
            }
        })
        .await;
        assert!(note.contains("InvalidAnnotation"), "{note}");
    })
    .await;
}
