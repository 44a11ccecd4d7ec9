//! The installed operator's Destination service (Service `weft-proxy-api`, mutual TLS),
//! called as a proxy calls it: with a workload certificate from the installed
//! operator's `Certify`, a Resolve stream for a Service, and an Ack for each update.
//! The subscriber gets the initial state and every change made with kubectl; the
//! operator's pod is deleted (a real restart: a new pod, a fresh index from the API
//! server), its stream ends with UNAVAILABLE, and a new stream to the new pod carries
//! the changes made while the subscriber was cut off; and a client without a workload
//! certificate is refused.
//!
//! It restarts the cluster's operator: no other test binary runs beside it.

mod proxy_api;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::{Code, Streaming, transport::Channel};
use weft_e2e::{kubectl_ok, kubectl_stdin, mesh_namespace, with_temp_ns};
use weft_proxy_api::v1::{
    AckRequest, Resolution, ResolveRequest, destination_client::DestinationClient,
};

use proxy_api::{CALL, bundle, channel, connect, workload_certificate};

const TIMEOUT: Duration = Duration::from_secs(60);
const OPERATOR: &str = "app.kubernetes.io/name=weft-operator";

/// A pod `client-1` (the caller's own pod, running as `default`; it only has to exist),
/// a selector-less Service `web` and its EndpointSlice with `ips` ready on port 8080.
fn objects(ns: &str, ips: &[&str]) -> String {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client-1, namespace: {ns}, annotations: {{weft.dev/inject: disabled}}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: app
    image: weft.local/testapp:dev
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: {ns}
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: {}
"#,
        Value::Array(endpoints)
    )
}

fn apply(manifest: &str) {
    let applied = kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(applied.success, "{}", applied.stderr);
}

/// The sorted endpoint addresses of a resolution.
fn addresses(resolution: &Resolution) -> Vec<String> {
    let mut seen: Vec<String> = resolution
        .endpoints
        .iter()
        .map(|e| e.address.clone())
        .collect();
    seen.sort();
    seen
}

/// One subscriber's Resolve stream and what it needs to acknowledge updates.
struct Subscriber {
    client: DestinationClient<Channel>,
    stream: Streaming<Resolution>,
    authority: String,
}

impl Subscriber {
    /// Opens a Resolve stream for `authority` as pod `client-1`.
    async fn open(channel: Channel, authority: &str) -> Result<Self, tonic::Status> {
        let mut client = DestinationClient::new(channel);
        let request = ResolveRequest {
            authority: authority.into(),
            pod: "client-1".into(),
        };
        let stream = tokio::time::timeout(CALL, client.resolve(request))
            .await
            .unwrap_or_else(|_| panic!("Resolve did not answer within {CALL:?}"))?
            .into_inner();
        Ok(Self {
            client,
            stream,
            authority: authority.into(),
        })
    }

    /// Reads updates, acknowledging each as a proxy does, until one satisfies `want`;
    /// fails the test if the stream ends or nothing satisfying comes within [`TIMEOUT`].
    async fn until(&mut self, what: &str, want: impl Fn(&Resolution) -> bool) -> Resolution {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.stream.message())
                .await
                .unwrap_or_else(|_| {
                    panic!("timed out after {TIMEOUT:?} waiting for {what}; last: {last:?}")
                });
            let update = match next {
                Ok(Some(update)) => update,
                other => panic!("the stream ended waiting for {what}: {other:?}; last: {last:?}"),
            };
            let ack = AckRequest {
                pod: "client-1".into(),
                stream: format!("resolve:{}", self.authority),
                config_version: update.config_version.clone(),
            };
            tokio::time::timeout(CALL, self.client.ack(ack))
                .await
                .unwrap_or_else(|_| panic!("Ack did not answer within {CALL:?}"))
                .unwrap_or_else(|e| panic!("the operator refused the ack of {update:?}: {e:?}"));
            if want(&update) {
                return update;
            }
            last = Some(update);
        }
    }
}

/// The name of the operator's one pod.
fn operator_pod() -> String {
    let names = kubectl_ok(&[
        "get",
        "pods",
        "-n",
        "weft-system",
        "-l",
        OPERATOR,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let names: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(names.len(), 1, "one operator pod: {names:?}");
    names[0].to_string()
}

#[tokio::test]
async fn streams_follow_the_api_server_and_survive_an_operator_restart() {
    with_temp_ns("destination", |client, ns| async move {
        let trust = mesh_namespace(&client, &ns).await;
        apply(&objects(&ns, &["198.18.250.1"]));

        let anonymous = connect(&trust, None).await;
        let certificate = workload_certificate(&anonymous, &ns, "default").await;
        let authority = format!("web.{ns}.svc.cluster.local:80");
        let mut subscriber =
            Subscriber::open(connect(&trust, Some(&certificate)).await, &authority)
                .await
                .expect("a Resolve stream");

        // The initial state, then changes made with kubectl: one endpoint added, one
        // removed.
        subscriber
            .until("the initial endpoint", |r| {
                r.known && addresses(r) == ["198.18.250.1:8080"]
            })
            .await;
        apply(&objects(&ns, &["198.18.250.1", "198.18.250.2"]));
        subscriber
            .until("the added endpoint", |r| {
                addresses(r) == ["198.18.250.1:8080", "198.18.250.2:8080"]
            })
            .await;
        apply(&objects(&ns, &["198.18.250.2"]));
        subscriber
            .until("the removed endpoint gone", |r| {
                addresses(r) == ["198.18.250.2:8080"]
            })
            .await;

        // The operator's pod is deleted: its stream ends, as the operator says when it
        // shuts down.
        let old = operator_pod();
        kubectl_ok(&["delete", "pod", "-n", "weft-system", &old, "--wait=false"]);
        let ended = tokio::time::timeout(TIMEOUT, async {
            loop {
                match subscriber.stream.message().await {
                    Ok(Some(_)) => continue,
                    other => break other,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the stream outlived the operator pod {old} by {TIMEOUT:?}"));
        let status = ended.expect_err("the stream ends with a status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");

        // Changes while the subscriber is cut off (the old pod shutting down, a new one
        // starting): an endpoint comes, a ServiceProfile appears.
        apply(&objects(&ns, &["198.18.250.2", "198.18.250.3"]));
        let profile = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: ServiceProfile\n\
             metadata: {{name: web, namespace: {ns}}}\n\
             spec: {{service: web, routes: [{{name: all, condition: {{pathRegex: '/.*'}}}}]}}\n"
        );
        apply(&profile);

        // A new pod; the subscriber reconnects (with a fresh connection, as a proxy
        // does) until the new operator answers.
        kubectl_ok(&[
            "wait",
            "-n",
            "weft-system",
            "--for=delete",
            &format!("pod/{old}"),
            "--timeout=120s",
        ]);
        kubectl_ok(&[
            "rollout",
            "status",
            "-n",
            "weft-system",
            "deployment/weft-operator",
            "--timeout=180s",
        ]);
        let new = operator_pod();
        assert_ne!(new, old, "a new operator pod");
        let deadline = Instant::now() + TIMEOUT;
        let mut resumed = loop {
            let opened = match channel(&bundle(&ns), Some(&certificate)).await {
                Ok(channel) => Subscriber::open(channel, &authority).await,
                Err(e) => Err(tonic::Status::unavailable(format!("{e:?}"))),
            };
            match opened {
                Ok(subscriber) => break subscriber,
                // Not serving yet, or its index not yet synced with the pod.
                Err(e) if matches!(e.code(), Code::Unavailable | Code::NotFound) => {
                    assert!(
                        Instant::now() < deadline,
                        "the new operator {new} never resumed the stream: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("the new operator {new} refused the stream: {e:?}"),
            }
        };
        let update = resumed
            .until("every change made while it was away", |r| {
                addresses(r) == ["198.18.250.2:8080", "198.18.250.3:8080"]
                    && r.profile
                        .as_ref()
                        .is_some_and(|p| p.routes.first().is_some_and(|r| r.name == "all"))
            })
            .await;
        assert!(update.known, "{update:?}");

        // No workload certificate: refused, whatever the request.
        let refused = Subscriber::open(connect(&bundle(&ns), None).await, &authority)
            .await
            .err()
            .expect("a client without a workload certificate is refused");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        // The refusal is about the certificate, not the request: the same request with
        // one is served.
        let served =
            Subscriber::open(connect(&bundle(&ns), Some(&certificate)).await, &authority).await;
        assert!(served.is_ok(), "{:?}", served.err());
    })
    .await;
}
