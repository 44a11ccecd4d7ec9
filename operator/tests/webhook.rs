//! The injection webhook in-process, over real sockets and TLS: a pod is patched, and
//! every kind of bad request gets a clear answer, never a panic or a hung connection.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_operator::webhook::test_util::{Client, deployment_pod, review, tls, webhook};

fn answer_of(body: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(body).expect("an AdmissionReview");
    review["response"].clone()
}

/// The pod is left unmeshed: the patch only annotates it `weft.dev/not-meshed` with
/// `reason` (and its message), and adds no container.
fn assert_only_not_meshed(response: &Value, reason: &str) {
    let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone())
        .unwrap_or_else(|e| panic!("a patch: {e}: {response}"));
    let patch: Value = serde_json::from_slice(&bytes).expect("a JSON patch");
    let ops = patch.as_array().expect("a list of operations");
    assert!(
        ops.iter().all(|op| op["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/metadata/annotations/weft.dev~1not-meshed"))),
        "{patch}"
    );
    assert!(
        ops.iter().any(|op| op["value"] == reason),
        "no not-meshed annotation with {reason}: {patch}"
    );
}

#[tokio::test]
async fn a_pod_in_a_meshed_namespace_is_patched() {
    let hook = webhook().await;
    let mut client = Client::connect(hook.addr, &hook.bundle).await;
    let body = serde_json::to_vec(&review("Pod", "shop", deployment_pod())).unwrap();
    let (status, answer) = client.post("/inject", body).await;
    assert_eq!(status, 200);
    let response = answer_of(&answer);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    // kube writes the patch's bytes as a JSON array of numbers, which the API server
    // reads like the usual base64 string.
    let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone()).expect("patch bytes");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");
    let mut pod = deployment_pod();
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    assert_eq!(pod["spec"]["initContainers"][1]["name"], "weft-proxy");
    assert_eq!(pod["spec"]["containers"][0]["name"], "app");
    // The application's probe now asks the proxy, which checks the application.
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"],
        json!({"httpGet": {"path": "/probe/app/readiness", "port": 4191}})
    );
    let env = pod["spec"]["initContainers"][1]["env"].as_array().unwrap();
    let probes = env
        .iter()
        .find(|e| e["name"] == "WEFT_PROXY_PROBES")
        .and_then(|e| e["value"].as_str())
        .expect("the original probes in the proxy's environment");
    assert!(probes.contains("\"path\":\"/healthz\""), "{probes}");

    // The same pod in a namespace that did not ask: allowed, untouched.
    let body = serde_json::to_vec(&review("Pod", "elsewhere", deployment_pod())).unwrap();
    let (status, answer) = client.post("/inject", body).await;
    assert_eq!(status, 200);
    assert!(answer_of(&answer).get("patch").is_none());

    let text = hook.metrics.encode();
    assert!(
        text.contains("weft_operator_injector_admissions_total 2"),
        "{text}"
    );
    assert!(
        text.contains("weft_operator_injector_injected_total 1"),
        "{text}"
    );
    assert!(
        text.contains("weft_operator_injector_admission_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test]
async fn malformed_reviews_get_400_with_the_reason() {
    let hook = webhook().await;
    let mut client = Client::connect(hook.addr, &hook.bundle).await;
    for (body, expected) in [
        (b"{not json".to_vec(), "not an AdmissionReview"),
        (b"".to_vec(), "not an AdmissionReview"),
        (b"[1,2,3]".to_vec(), "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "request",
        ),
    ] {
        let (status, answer) = client.post("/inject", body.clone()).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, 400, "{body:?}: {answer}");
        assert!(answer.contains(expected), "{body:?}: {answer}");
    }
    let (status, _) = client.post("/elsewhere", b"{}".to_vec()).await;
    assert_eq!(status, 404);
    // The connection still works after all that.
    let body = serde_json::to_vec(&review("Pod", "shop", deployment_pod())).unwrap();
    assert_eq!(client.post("/inject", body).await.0, 200);
    let text = hook.metrics.encode();
    assert!(
        text.contains("weft_operator_injector_errors_total{reason=\"MalformedReview\"} 4"),
        "{text}"
    );
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let hook = webhook().await;
    let mut client = Client::connect(hook.addr, &hook.bundle).await;
    let mut pod = deployment_pod();
    pod["metadata"]["annotations"]["huge"] = json!("x".repeat(weft_operator::webhook::MAX_BODY));
    let body = serde_json::to_vec(&review("Pod", "shop", pod)).unwrap();
    let (status, answer) = client.post("/inject", body).await;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&answer).contains("larger than"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn anything_but_a_pod_is_allowed_unchanged_with_a_warning() {
    let hook = webhook().await;
    let mut client = Client::connect(hook.addr, &hook.bundle).await;
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    let body = serde_json::to_vec(&review("ConfigMap", "shop", config_map)).unwrap();
    let (status, answer) = client.post("/inject", body).await;
    assert_eq!(status, 200);
    let response = answer_of(&answer);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("ConfigMap"),
        "{response}"
    );

    // A "pod" whose spec is not a pod spec.
    let broken =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {"containers": "many"}});
    let body = serde_json::to_vec(&review("Pod", "shop", broken)).unwrap();
    let (status, answer) = client.post("/inject", body).await;
    assert_eq!(status, 200);
    let response = answer_of(&answer);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    assert!(!response["warnings"][0].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn conflicting_annotations_leave_the_pod_unmeshed_with_a_warning() {
    let hook = webhook().await;
    let mut client = Client::connect(hook.addr, &hook.bundle).await;
    for (annotation, value) in [
        ("config.weft.dev/skip-inbound-ports", "abc"),
        ("config.weft.dev/skip-outbound-ports", "-80"),
    ] {
        let mut pod = deployment_pod();
        pod["metadata"]["annotations"][annotation] = json!(value);
        let body = serde_json::to_vec(&review("Pod", "shop", pod)).unwrap();
        let (status, answer) = client.post("/inject", body).await;
        assert_eq!(status, 200);
        let response = answer_of(&answer);
        assert_eq!(response["allowed"], true);
        assert_only_not_meshed(&response, "InvalidAnnotation");
        let warning = response["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains(annotation) && warning.contains(value),
            "{warning}"
        );
    }
    let text = hook.metrics.encode();
    assert!(
        text.contains("weft_operator_injector_skipped_total{reason=\"InvalidAnnotation\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_namespace_holding_a_bundle_weft_does_not_own_gets_no_proxies() {
    let hook = webhook().await;
    let mut client = Client::connect(hook.addr, &hook.bundle).await;
    let body = serde_json::to_vec(&review("Pod", "tenant", deployment_pod())).unwrap();
    let (status, answer) = client.post("/inject", body).await;
    assert_eq!(status, 200);
    let response = answer_of(&answer);
    assert_eq!(response["allowed"], true);
    assert_only_not_meshed(&response, "TrustBundleNotWefts");
    let warning = response["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("ConfigMap tenant/weft-trust-bundle is not Weft's"),
        "{warning}"
    );
    let text = hook.metrics.encode();
    assert!(
        text.contains("weft_operator_injector_skipped_total{reason=\"TrustBundleNotWefts\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_body_that_never_comes_gets_400_instead_of_hanging() {
    let hook = webhook().await;
    let mut conn = tls(hook.addr, &hook.bundle).await;
    conn.write_all(b"POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        conn.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the webhook hung");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
}
