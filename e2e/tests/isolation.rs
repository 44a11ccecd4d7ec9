//! No client of a pod can stall another's, on the real cluster: a meshed pod runs the
//! gRPC test application (HTTP/2). From this host (the node: an unauthenticated
//! plaintext client, which the pod's `all-unauthenticated` policy admits), one client
//! connection with an HTTP/2 window of zero opens streams whose large responses it
//! never reads; another client connection's calls are answered as fast as before.
//! Behind one connection to the application shared by both clients, the second
//! client's responses would wait forever for window the first never gives.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tonic::transport::{Channel, Endpoint};
use weft_e2e::{kubectl_ok, kubectl_stdin, mesh_namespace, with_temp_ns};
use weft_proxy_api::{
    testing::{STREAMED, check_calls},
    v1::{ResolveRequest, destination_client::DestinationClient},
};

/// The size of the authority the stalled client asks to resolve: the application
/// sends it back in each of [`STREAMED`] messages, so each response is several MiB,
/// more than an HTTP/2 stream's window between the proxy and the application.
const LARGE: usize = 1024 * 1024;
/// How many responses the stalled client holds: together far more than an HTTP/2
/// connection's window between the proxy and the application.
const STALLED_STREAMS: usize = 8;
/// How long the other client's calls may take: they take milliseconds, and forever
/// behind a stalled connection.
const BOUND: Duration = Duration::from_secs(5);
/// How many times the other client makes its calls, before and beside the stall.
const ROUNDS: usize = 5;

/// A meshed pod `grpc` serving the gRPC test application on 50051, under the
/// `all-unauthenticated` default policy whatever the Mesh's default.
fn grpc_pod(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: grpc
  namespace: {ns}
  labels: {{weft.dev/e2e-app: grpc}}
  annotations: {{config.weft.dev/default-inbound-policy: all-unauthenticated}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: grpc
    image: weft.local/weft-e2e-grpc:dev
    imagePullPolicy: IfNotPresent
    args: [serve, "50051"]
    securityContext: {{runAsUser: 1000}}
    ports: [{{name: grpc, containerPort: 50051}}]
    readinessProbe: {{tcpSocket: {{port: 50051}}, periodSeconds: 1}}
"#
    )
}

/// A client connection of its own to `addr`, with an HTTP/2 stream window of
/// `window` bytes (`None`: the default).
async fn connect(addr: &str, window: Option<u32>) -> DestinationClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("an endpoint")
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(window)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect from the node to {addr}: {e}"));
    DestinationClient::new(channel)
}

/// The slowest of [`ROUNDS`] rounds of calls on a new client connection to `addr`,
/// each within [`BOUND`].
async fn calls(addr: &str, when: &str) -> Duration {
    let mut client = connect(addr, None).await;
    let mut slowest = Duration::ZERO;
    for round in 0..ROUNDS {
        let started = Instant::now();
        tokio::time::timeout(BOUND, check_calls(&mut client))
            .await
            .unwrap_or_else(|_| {
                panic!("{when}: round {round} of a client's calls not answered within {BOUND:?}")
            })
            .unwrap_or_else(|e| panic!("{when}: round {round} of a client's calls: {e}"));
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

#[tokio::test]
async fn a_client_that_never_opens_its_window_does_not_stall_another_clients_calls() {
    with_temp_ns("isolation", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let applied = kubectl_stdin(&["apply", "-f", "-"], &grpc_pod(&ns));
        assert!(applied.success, "{}", applied.stderr);
        kubectl_ok(&[
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "pod/grpc",
            "--timeout=180s",
        ]);
        let pod = Api::<Pod>::namespaced(client.clone(), &ns)
            .get("grpc")
            .await
            .expect("the pod");
        let meshed = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .any(|c| c.name == "weft-proxy");
        assert!(meshed, "the grpc pod was not meshed");
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .expect("the pod's address");
        let addr = format!("{ip}:50051");

        let before = calls(&addr, "before the stall").await;

        // One client connection with a window of zero opens streams whose large
        // responses it never reads: each response's head comes, none of its data.
        let stalled = connect(&addr, Some(0)).await;
        let mut held = Vec::new();
        for i in 0..STALLED_STREAMS {
            let request = ResolveRequest {
                authority: i.to_string().repeat(LARGE),
                ..ResolveRequest::default()
            };
            let response = tokio::time::timeout(BOUND, stalled.clone().resolve(request))
                .await
                .expect("the stalled client's response heads come")
                .expect("the stalled client's calls are answered");
            held.push(response.into_inner());
        }
        // Time for the application to send all that windows let it.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let beside = calls(&addr, "beside the stalled client").await;
        eprintln!(
            "the slowest of {ROUNDS} rounds of another client's calls: {before:?} before, \
             {beside:?} while a client held {STALLED_STREAMS} responses of {} MiB unread",
            STREAMED * LARGE / (1024 * 1024)
        );
        drop(held);
    })
    .await;
}
