//! Identity on the real cluster: a proxy with a projected ServiceAccount token gets a
//! SPIFFE certificate from the operator and turns Ready; one that asks for another
//! identity is refused and never does.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use weft_api::Mesh;
use weft_e2e::{
    eventually, kubectl_ok, kubectl_stdin, mesh_namespace, metric, proxy_metrics, proxy_pod,
    with_temp_ns,
};

#[tokio::test]
async fn a_proxy_gets_a_certificate_for_its_service_account_and_turns_ready() {
    with_temp_ns("identity", |client, ns| async move {
        let bundle = mesh_namespace(&client, &ns).await;
        assert!(bundle.contains("BEGIN CERTIFICATE"), "{bundle}");

        let good = format!("spiffe://cluster.local/ns/{ns}/sa/books");
        let applied = kubectl_stdin(
            &["apply", "-f", "-"],
            &proxy_pod(&ns, "books", "books", &good),
        );
        assert!(applied.success, "{}", applied.stderr);
        let waited = weft_e2e::kubectl(&[
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "pod/books",
            "--timeout=120s",
        ]);
        assert!(
            waited.success,
            "the proxy never turned Ready:\n{}{}",
            waited.stdout, waited.stderr
        );

        let metrics = proxy_metrics(&ns, "books");
        let expiry =
            metric(&metrics, "identity_cert_expiration_timestamp_seconds").expect("expiry metric");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            expiry > now + 3600.0,
            "the certificate expires at {expiry}, now is {now}:\n{metrics}"
        );
        assert!(
            expiry <= now + 24.0 * 3600.0 + 60.0,
            "a 24h certificate by default:\n{metrics}"
        );
        assert_eq!(
            metric(&metrics, "identity_cert_refresh_total{result=\"ok\"}"),
            Some(1.0),
            "{metrics}"
        );

        // The Mesh says where identity stands.
        let mesh = Api::<Mesh>::all(client.clone())
            .get("default")
            .await
            .unwrap();
        let status = mesh.status.unwrap();
        assert!(
            weft_api::condition::is_true(&status.conditions, "IdentityReady"),
            "{:?}",
            status.conditions
        );
        assert_eq!(status.trust_anchors.len(), 1);
        assert!(status.issuer.is_some());
        let yaml = kubectl_ok(&["get", "mesh", "default", "-o", "yaml"]);
        assert!(
            yaml.contains("fingerprint:") && !yaml.contains("PRIVATE KEY"),
            "{yaml}"
        );

        // Asking for another ServiceAccount's identity is refused, and the proxy stays unready.
        let stolen = format!("spiffe://cluster.local/ns/{ns}/sa/books");
        let applied = kubectl_stdin(
            &["apply", "-f", "-"],
            &proxy_pod(&ns, "thief", "thief", &stolen),
        );
        assert!(applied.success, "{}", applied.stderr);
        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let failures = eventually(
            "the thief's certification to fail",
            Duration::from_secs(90),
            || {
                let ns = ns.clone();
                let pods = pods.clone();
                async move {
                    let running = pods.get("thief").await.map_err(|e| e.to_string())?;
                    if running.status.and_then(|s| s.phase).as_deref() != Some("Running") {
                        return Err("not running yet".into());
                    }
                    let text = proxy_metrics(&ns, "thief");
                    match metric(&text, "identity_cert_refresh_total{result=\"failure\"}") {
                        Some(n) if n >= 2.0 => Ok(text),
                        _ => Err(text),
                    }
                }
            },
        )
        .await;
        assert_eq!(
            metric(&failures, "identity_cert_refresh_total{result=\"ok\"}"),
            None,
            "{failures}"
        );
        let ready = kubectl_ok(&[
            "get",
            "pod",
            "-n",
            &ns,
            "thief",
            "-o",
            "jsonpath={.status.containerStatuses[0].ready}",
        ]);
        assert_eq!(ready, "false");
        let logs = kubectl_ok(&["logs", "-n", &ns, "thief"]);
        assert!(
            logs.contains("the token is for spiffe://cluster.local/ns/")
                && logs.contains("sa/thief"),
            "{logs}"
        );
    })
    .await;
}
