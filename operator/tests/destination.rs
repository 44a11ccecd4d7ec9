//! The Destination service in-process, over real sockets and mutual TLS, with a proxy
//! certified through the real Certify path: a subscriber gets the initial state and
//! every change, acknowledgements are recorded, and callers without a workload
//! certificate or with a bad authority are refused with a reason.

use serde_json::json;
use tonic::Code;
use weft_operator::identity::test_util::{TestProxyApi, proxy_api};
use weft_proxy::config::ControlAddr;
use weft_proxy_api::v1::{AckRequest, ResolveRequest, destination_client::DestinationClient};

struct Server {
    control: ControlAddr,
    api: TestProxyApi,
}

async fn start() -> Server {
    let api = proxy_api().await.ready().await;
    Server {
        control: api.control(),
        api,
    }
}

/// A Destination client holding a workload certificate for `shop/web`, obtained with
/// Certify as a proxy does.
async fn certified_client(server: &Server) -> DestinationClient<tonic::transport::Channel> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("weft-destination-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let (token, bundle) = (dir.join("token"), dir.join("bundle.pem"));
    std::fs::write(&token, "shop/web").expect("the token file");
    std::fs::write(&bundle, &server.api.bundle).expect("the bundle file");
    let settings = weft_proxy::identity::Settings {
        identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
        token_file: token.display().to_string(),
        trust_bundle_file: bundle.display().to_string(),
        control: server.control.clone(),
    };
    let credentials = weft_proxy::identity::certify(&settings)
        .await
        .expect("certified");
    let channel = weft_proxy::identity::connect_as(
        &server.control,
        &server.api.bundle,
        Some(credentials.key),
    )
    .await
    .expect("a mutual-TLS channel");
    DestinationClient::new(channel)
}

fn feed_web(server: &Server, endpoints: &[&str]) {
    let mut index = server.api.index.lock().expect("the index");
    index.apply_service(
        &serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"clusterIP": "198.19.0.12", "ports": [{"port": 80, "name": "http"}]},
        }))
        .expect("a Service"),
    );
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|ip| json!({"addresses": [ip], "targetRef": {"kind": "Pod", "name": format!("web-{ip}")}}))
        .collect();
    index.apply_slice(
        &serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web-a",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints,
        }))
        .expect("an EndpointSlice"),
    );
}

fn request(authority: &str) -> ResolveRequest {
    ResolveRequest {
        authority: authority.into(),
        pod: "client-1".into(),
    }
}

#[tokio::test]
async fn a_subscriber_gets_the_initial_state_and_every_change() {
    let server = start().await;
    feed_web(&server, &["198.18.0.5"]);
    let mut client = certified_client(&server).await;
    let mut stream = client
        .resolve(request("web.shop.svc.cluster.local:80"))
        .await
        .expect("a stream")
        .into_inner();
    let first = stream.message().await.unwrap().expect("the initial state");
    assert!(first.known);
    assert_eq!(first.service, "web.shop");
    let addresses: Vec<_> = first.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addresses, ["198.18.0.5:8080"]);

    feed_web(&server, &["198.18.0.5", "198.18.0.6"]);
    let second = stream.message().await.unwrap().expect("the change");
    assert_eq!(second.endpoints.len(), 2);
    assert_ne!(second.config_version, first.config_version);

    client
        .ack(AckRequest {
            pod: "client-1".into(),
            stream: "resolve:web.shop.svc.cluster.local:80".into(),
            config_version: second.config_version.clone(),
        })
        .await
        .expect("acknowledged");
    let acks = server.api.acks.lock().unwrap().clone();
    assert_eq!(
        acks["shop/client-1"]["resolve:web.shop.svc.cluster.local:80"],
        second.config_version
    );

    // A destination the mesh does not know says so.
    let mut unknown = client
        .resolve(request("198.51.100.7:443"))
        .await
        .expect("a stream")
        .into_inner();
    assert!(!unknown.message().await.unwrap().expect("an answer").known);
}

#[tokio::test]
async fn callers_without_a_workload_certificate_or_with_bad_authorities_are_refused() {
    let server = start().await;
    let anonymous = weft_proxy::identity::connect(&server.control, &server.api.bundle)
        .await
        .expect("a server-authenticated channel");
    let err = DestinationClient::new(anonymous)
        .resolve(request("web.shop:80"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    let mut client = certified_client(&server).await;
    for bad in [
        "web",
        "web.shop:0",
        "not an authority:80",
        &"a".repeat(1000),
    ] {
        let err = client.resolve(request(bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err}");
    }
    let text = server.api.metrics.encode();
    assert!(
        text.contains("weft_operator_destination_refusals_total{reason=\"BadAuthority\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("weft_operator_destination_refusals_total{reason=\"NoClientCertificate\"} 1"),
        "{text}"
    );
}
