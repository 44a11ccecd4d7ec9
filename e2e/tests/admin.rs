//! The proxy's admin port on the real cluster: `/ready` and `/metrics` answer the
//! node (the kubelet, Prometheus), while `/config` and `/shutdown` answer only inside
//! the pod — another pod and the node get 403.

use weft_e2e::{
    kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, rollout_status, web_service, with_temp_ns,
};

/// `wget`s `url` from the app container of `pod`: (exit status, output).
fn wget_in(ns: &str, pod: &str, url: &str) -> (bool, String) {
    let out = kubectl(&[
        "exec", "-n", ns, pod, "-c", "app", "--", "wget", "-q", "-O", "-", url,
    ]);
    (out.success, out.stdout + &out.stderr)
}

#[tokio::test]
async fn config_answers_only_inside_the_pod() {
    with_temp_ns("admin", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let applied = kubectl_stdin(&["apply", "-f", "-"], &web_service(&ns, 2));
        assert!(applied.success, "{}", applied.stderr);
        rollout_status(&ns, "web");
        let pods = kubectl_ok(&[
            "get",
            "pods",
            "-n",
            &ns,
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}",
        ]);
        let pods: Vec<(&str, &str)> = pods.lines().filter_map(|l| l.split_once(' ')).collect();
        let [(a, _), (b, b_ip)] = pods[..] else {
            panic!("two web pods expected: {pods:?}");
        };

        // Inside the pod, on loopback: served.
        let (ok, config) = wget_in(&ns, b, "http://127.0.0.1:4191/config");
        assert!(ok && config.contains("\"inbound\""), "{config}");

        // From another pod: refused, and it says why.
        let (ok, refused) = wget_in(&ns, a, &format!("http://{b_ip}:4191/config"));
        assert!(
            !ok && refused.contains("403"),
            "another pod read /config: {refused}"
        );
        let (ok, refused) = wget_in(&ns, a, &format!("http://{b_ip}:4191/shutdown"));
        assert!(
            !ok && refused.contains("403"),
            "another pod reached /shutdown: {refused}"
        );

        // From the node (through the API server's pod proxy): /ready and /metrics yes,
        // /config no.
        let raw = |path: &str| {
            kubectl(&[
                "get",
                "--raw",
                &format!("/api/v1/namespaces/{ns}/pods/{b}:4191/proxy/{path}"),
            ])
        };
        let ready = raw("ready");
        assert!(
            ready.success && ready.stdout.contains("ready"),
            "{}",
            ready.stderr
        );
        let metrics = raw("metrics");
        assert!(metrics.success, "{}", metrics.stderr);
        let config = raw("config");
        assert!(
            !config.success && config.stderr.contains("Forbidden"),
            "the node read /config: {}{}",
            config.stdout,
            config.stderr
        );
    })
    .await;
}
