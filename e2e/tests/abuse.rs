//! A client abusing the installed operator's proxy API, from this host, with a real
//! workload certificate for a pod of its own namespace: it opens Resolve streams beyond
//! the per-pod limit over three connections, and sends acknowledgements with oversized
//! fields and oversized messages. Each is refused with the status naming its limit and
//! counted in `weft_operator_destination_refusals_total`; while the abuser holds its
//! streams, a meshed client in the namespace still resolves a destination it never used
//! before (its call goes through over mTLS); and the operator's memory stays bounded:
//! its peak resident memory (`process_resident_memory_peak_bytes`) is printed before
//! and after, and must stay well under its 256 MiB limit.
//!
//! What it may take from other tests running beside it: 1,024 streams of the 8,192 the
//! operator holds in all, for under a minute, on its own pod.

mod proxy_api;

use futures::future::join_all;
use tonic::{Code, transport::Channel};
use weft_e2e::{
    http_status, kubectl_stdin, mesh_namespace, metric, metric_sum, operator_metrics, pod_ip,
    testapp_pod, wait_ready, with_temp_ns,
};
use weft_proxy_api::v1::{
    AckRequest, Resolution, ResolveRequest, destination_client::DestinationClient,
};

use proxy_api::{connect, workload_certificate};

/// The operator's limit of Destination streams per pod (`--max-streams-per-pod`).
const PER_POD: usize = 1024;
/// The operator's memory limit (deploy/operator.yaml), and the most its peak may reach
/// here.
const LIMIT_BYTES: f64 = 256.0 * 1024.0 * 1024.0;
const PEAK_BOUND_BYTES: f64 = LIMIT_BYTES * 0.75;
/// An authority the mesh does not know: its streams answer `known = false`.
const AUTHORITY: &str = "198.19.255.254:80";

/// Opens `n` Resolve streams for `pod` on `channel`: the streams held, or the first
/// refusal.
async fn open(
    channel: &Channel,
    pod: &str,
    n: usize,
) -> Result<Vec<tonic::Streaming<Resolution>>, tonic::Status> {
    let calls = (0..n).map(|_| {
        let mut client = DestinationClient::new(channel.clone());
        let request = ResolveRequest {
            authority: AUTHORITY.into(),
            pod: pod.into(),
        };
        async move { client.resolve(request).await.map(|r| r.into_inner()) }
    });
    join_all(calls).await.into_iter().collect()
}

fn refusals(text: &str, reason: &str) -> f64 {
    metric_sum(
        text,
        "weft_operator_destination_refusals_total",
        &[("reason", reason)],
    )
}

fn peak(text: &str) -> f64 {
    metric(text, "process_resident_memory_peak_bytes")
        .unwrap_or_else(|| panic!("no process_resident_memory_peak_bytes:\n{text}"))
}

#[tokio::test]
async fn an_abusive_proxy_api_client_is_refused_by_name_and_others_keep_streaming() {
    with_temp_ns("abuse", |client, ns| async move {
        let bundle = mesh_namespace(&client, &ns).await;
        // The abuser's own pod (unmeshed: it only has to exist, under its
        // ServiceAccount), a meshed client, and a server that client has never called.
        let abuser_pod = format!(
            r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: abuser, namespace: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: abuser, namespace: {ns}, annotations: {{weft.dev/inject: disabled}}}}
spec:
  serviceAccountName: abuser
  terminationGracePeriodSeconds: 0
  containers:
  - {{name: app, image: weft.local/testapp:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
"#
        );
        let objects = [
            abuser_pod,
            testapp_pod(&ns, "caller", false),
            testapp_pod(&ns, "late", true),
        ]
        .join("---");
        let out = kubectl_stdin(&["apply", "-f", "-"], &objects);
        assert!(out.success, "{}", out.stderr);
        wait_ready(&ns, &["abuser", "caller", "late"]);

        let anonymous = connect(&bundle, None).await;
        let certificate = workload_certificate(&anonymous, &ns, "abuser").await;
        let before = operator_metrics();
        let peak_before = peak(&before);

        // Streams beyond the per-pod limit, over three connections (each also has its
        // own per-connection limit, of 512).
        let mut connections = Vec::new();
        let mut held = Vec::new();
        for n in [400, 400, PER_POD - 800] {
            let channel = connect(&bundle, Some(&certificate)).await;
            held.extend(
                open(&channel, "abuser", n)
                    .await
                    .unwrap_or_else(|e| panic!("{n} more streams: {e:?}")),
            );
            connections.push(channel);
        }
        let (first, last) = (connections[0].clone(), connections[2].clone());
        let refused = open(&last, "abuser", 1)
            .await
            .expect_err("a stream beyond the per-pod limit was admitted");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused.message().contains(&PER_POD.to_string()),
            "the refusal does not name the limit: {refused:?}"
        );

        // Oversized acknowledgements: a field over its limit, and a message over the
        // service's (a hundred of each).
        let mut destination = DestinationClient::new(first.clone());
        for _ in 0..100 {
            let ack = AckRequest {
                pod: "abuser".into(),
                stream: format!("resolve:{AUTHORITY}"),
                config_version: "v".repeat(129),
            };
            let refused = destination.ack(ack).await.expect_err("an oversized version");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(
                refused.message().contains("config_version") && refused.message().contains("128"),
                "{refused:?}"
            );
            let ack = AckRequest {
                pod: "abuser".into(),
                stream: "s".repeat(64 * 1024),
                config_version: String::new(),
            };
            let refused = destination.ack(ack).await.expect_err("an oversized message");
            assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
        }

        // Meanwhile, another proxy still gets what it asks for: a destination its proxy
        // never resolved, reached over mTLS.
        let url = format!("http://{}:8080/hostname", pod_ip(&ns, "late"));
        assert_eq!(
            http_status(&ns, "caller", &url),
            "200",
            "a meshed client could not reach a new destination while the abuser held its streams"
        );

        let after = operator_metrics();
        drop(held);
        let peak_after = peak(&after);
        let mib = |bytes: f64| bytes / 1024.0 / 1024.0;
        println!(
            "operator peak resident memory: {:.1} MiB before the abuse, {:.1} MiB after \
             ({} streams held, 200 oversized acknowledgements)",
            mib(peak_before),
            mib(peak_after),
            PER_POD
        );
        for (reason, at_least) in [("TooManyStreamsPerPod", 1.0), ("BadAck", 100.0)] {
            let counted = refusals(&after, reason) - refusals(&before, reason);
            assert!(
                counted >= at_least,
                "{counted} refusals counted as {reason}, want at least {at_least}"
            );
        }
        assert!(
            peak_after < PEAK_BOUND_BYTES,
            "the operator's peak resident memory reached {:.1} MiB (limit {:.0} MiB)",
            mib(peak_after),
            mib(LIMIT_BYTES)
        );
    })
    .await;
}
