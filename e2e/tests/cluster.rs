//! The local cluster itself: one Ready node, pods from locally built images on the
//! 198.18.0.0/16 bridge, cluster DNS, and Service ClusterIPs in 198.19.0.0/16.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::{Api, api::ListParams};
use weft_e2e::{eventually, kubectl_ok, kubectl_stdin, with_temp_ns};

#[tokio::test]
async fn one_node_is_ready() {
    let client = weft_e2e::client().await;
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(nodes.items.len(), 1, "a single-node cluster");
    let ready = nodes.items[0]
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("True"));

    let table = kubectl_ok(&["get", "nodes", "--no-headers"]);
    let columns: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(columns.get(1), Some(&"Ready"), "kubectl get nodes: {table}");
    assert!(
        columns.get(4).is_some_and(|v| v.starts_with("v1.34.")),
        "kubectl get nodes: {table}"
    );
}

#[tokio::test]
async fn pods_get_bridge_addresses_resolve_services_and_reach_each_other() {
    with_temp_ns("net", |client, ns| async move {
        let token = format!("hello-from-{ns}");
        let manifest = format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {ns}, labels: {{app: web, weft.dev/e2e-app: web}}}}
spec:
  containers:
  - name: web
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "echo {token} > /www/token && exec httpd -f -p 8080 -h /www"]
    ports: [{{containerPort: 8080, name: http}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{weft.dev/e2e-app: client}}}}
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command:
    - sh
    - -c
    - |
      for i in $(seq 1 60); do
        if nslookup web.{ns}.svc.cluster.local && timeout 5 wget -q -O - http://web.{ns}.svc.cluster.local/token; then
          exit 0
        fi
        sleep 1
      done
      exit 1
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &manifest);
        assert!(applied.success, "{}", applied.stderr);

        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let phase = eventually("the client pod to finish", Duration::from_secs(120), || {
            let pods = pods.clone();
            async move {
                let pod = pods.get("client").await.map_err(|e| e.to_string())?;
                match pod.status.and_then(|s| s.phase).as_deref() {
                    Some(p @ ("Succeeded" | "Failed")) => Ok(p.to_string()),
                    other => Err(format!("phase {other:?}")),
                }
            }
        })
        .await;
        let logs = kubectl_ok(&["logs", "-n", &ns, "client"]);
        assert_eq!(phase, "Succeeded", "client logs:\n{logs}");
        assert!(logs.contains(&token), "the client got the server's page through the Service:\n{logs}");

        let service = Api::<Service>::namespaced(client.clone(), &ns).get("web").await.unwrap();
        let cluster_ip = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
        assert!(cluster_ip.starts_with("198.19."), "ClusterIP {cluster_ip} is in 198.19.0.0/16");
        assert!(logs.contains(&cluster_ip), "DNS answered the ClusterIP {cluster_ip}:\n{logs}");
        for name in ["web", "client"] {
            let ip = pods.get(name).await.unwrap().status.and_then(|s| s.pod_ip).unwrap_or_default();
            assert!(ip.starts_with("198.18."), "pod {name} has {ip}, not a 198.18.0.0/16 address");
        }
    })
    .await;
}
