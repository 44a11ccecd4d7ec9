//! mTLS to a pod's own address on the real cluster: a meshed client calling a
//! StatefulSet pod by its DNS name, by its headless Service's name, or by its pod IP
//! reaches it over mTLS with the client's identity — the server proxy counts every one
//! of those requests `tls="true"` with the caller's SPIFFE id, and none in plaintext.

use weft_e2e::{
    APP_AFTER_PROXY, http_status, kubectl_stdin, mesh_namespace, metric_sum, pod_ip, proxy_metrics,
    testapp_pod, wait_ready, with_temp_ns,
};

#[tokio::test]
async fn a_statefulset_pod_is_reached_over_mtls_by_name_headless_name_and_ip() {
    with_temp_ns("statefulset", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let objects = format!(
            r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: db, namespace: {ns}}}
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: {ns}}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {ns}}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db, weft.dev/e2e-app: db}}}}
    spec:
      serviceAccountName: db
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: weft.local/testapp:dev
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "{APP_AFTER_PROXY}"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
{}"#,
            testapp_pod(&ns, "caller", false)
        );
        let out = kubectl_stdin(&["apply", "-f", "-"], &objects);
        assert!(out.success, "{}", out.stderr);
        wait_ready(&ns, &["db-0", "caller"]);
        let ip = pod_ip(&ns, "db-0");
        let urls = [
            format!("http://db-0.db.{ns}.svc.cluster.local:8080/hostname"),
            format!("http://db.{ns}.svc.cluster.local:8080/hostname"),
            format!("http://{ip}:8080/hostname"),
        ];
        for url in &urls {
            assert_eq!(http_status(&ns, "caller", url), "200", "{url}");
        }

        let metrics = proxy_metrics(&ns, "db-0");
        let caller = format!("spiffe://cluster.local/ns/{ns}/sa/caller");
        let over_mtls = metric_sum(
            &metrics,
            "response_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", &caller),
            ],
        );
        let plaintext = metric_sum(
            &metrics,
            "response_total",
            &[("direction", "inbound"), ("tls", "false")],
        );
        assert!(
            over_mtls >= urls.len() as f64 && plaintext == 0.0,
            "{over_mtls} requests over mTLS from {caller} and {plaintext} in plaintext; want \
             {} and none:\n{metrics}",
            urls.len()
        );
    })
    .await;
}
