//! The Destination service in-process, over real sockets and mutual TLS, with a proxy
//! certified through the real Certify path: a subscriber gets the initial state and
//! every change, acknowledgements are recorded, and callers without a workload
//! certificate or with a bad authority are refused with a reason. What a client can
//! make the operator hold is bounded: request sizes, the fields kept, streams per pod,
//! per identity and in total; and a proxy acknowledges only for its own pods.

use serde_json::json;
use tonic::Code;
use weft_operator::discovery::index::Key;
use weft_operator::discovery::proxies::{Proxies, StreamLimits};
use weft_operator::identity::test_util::{TestProxyApi, csr, proxy_api};
use weft_proxy::authz::PortPolicy;
use weft_proxy::config::ControlAddr;
use weft_proxy_api::v1::{
    AckRequest, CertifyRequest, InboundPolicyRequest, ResolveRequest,
    destination_client::DestinationClient, identity_client::IdentityClient,
};

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

/// A server as an operator started with stream `limits` serves.
async fn start_with(limits: StreamLimits) -> Server {
    let mut api = proxy_api().await;
    api.stop().await;
    api.proxies = Proxies::with_limits(limits);
    api.restart().await;
    let api = api.ready().await;
    Server {
        control: api.control(),
        api,
    }
}

/// A workload certificate for `shop/web`, and its trust bundle file.
async fn certify(server: &Server) -> (weft_proxy::identity::Credentials, String) {
    server.api.certify("shop", "web").await
}

/// A Destination client holding a workload certificate for `shop/web`.
async fn certified_client(server: &Server) -> DestinationClient<tonic::transport::Channel> {
    client_as(server, "web").await
}

/// A Destination client holding a workload certificate for `shop/<service_account>`.
async fn client_as(
    server: &Server,
    service_account: &str,
) -> DestinationClient<tonic::transport::Channel> {
    let (credentials, _) = server.api.certify("shop", service_account).await;
    let channel = weft_proxy::identity::connect_as(
        &server.control,
        &server.api.bundle,
        Some(credentials.key),
    )
    .await
    .expect("a mutual-TLS channel");
    DestinationClient::new(channel)
}

/// A pod of `shop` running as `service_account`, with container port `http` 8080.
fn feed_pod(server: &Server, name: &str, service_account: &str) {
    let mut index = server.api.index.lock().expect("the index");
    index.apply_pod(
        &serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name, "labels": {"app": name}},
            "spec": {"serviceAccountName": service_account, "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
            ]},
        }))
        .expect("a Pod"),
    );
}

fn feed_web(server: &Server, endpoints: &[&str]) {
    feed_pod(server, "client-1", "web");
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

/// The next message of `stream`; a stream that ends, fails or is silent for 10 s fails
/// the test.
async fn next<T>(stream: &mut tonic::Streaming<T>, what: &str) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .unwrap_or_else(|_| panic!("{what} did not arrive within 10 s"))
        .unwrap_or_else(|status| panic!("the stream failed before {what}: {status}"))
        .unwrap_or_else(|| panic!("the stream ended before {what}"))
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
    let first = next(&mut stream, "the initial state").await;
    assert!(first.known);
    assert_eq!(first.service, "web.shop");
    let addresses: Vec<_> = first.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addresses, ["198.18.0.5:8080"]);

    feed_web(&server, &["198.18.0.5", "198.18.0.6"]);
    let second = next(&mut stream, "the change").await;
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
    let client_1 = Key::new("shop", "client-1");
    let acks = server.api.proxies.acked(&client_1);
    assert_eq!(
        acks["resolve:web.shop.svc.cluster.local:80"],
        second.config_version
    );
    let report = server.api.proxies.report(&client_1).expect("connected");
    assert!(report.in_sync);
    assert!(
        report.not_after.is_some(),
        "the certificate's expiry is known"
    );

    // A destination the mesh does not know says so.
    let mut unknown = client
        .resolve(request("198.51.100.7:443"))
        .await
        .expect("a stream")
        .into_inner();
    assert!(!next(&mut unknown, "an answer").await.known);
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

#[tokio::test]
async fn inbound_policy_streams_follow_server_authorizations_and_acks_make_a_proxy_in_sync() {
    let server = start().await;
    feed_pod(&server, "web-1", "web");
    let mut client = certified_client(&server).await;
    let mut stream = client
        .inbound_policy(InboundPolicyRequest {
            pod: "web-1".into(),
            port: 8080,
        })
        .await
        .expect("a stream")
        .into_inner();
    let first = next(&mut stream, "the initial policy").await;
    assert_eq!(first.protocol, "detect");
    assert_eq!(first.authorizations[0].name, "default:all-unauthenticated");
    let web_1 = Key::new("shop", "web-1");
    assert!(
        !server.api.proxies.report(&web_1).unwrap().in_sync,
        "not acked yet"
    );
    let ack = |version: String| AckRequest {
        pod: "web-1".into(),
        stream: "inbound:8080".into(),
        config_version: version,
    };
    client.ack(ack(first.config_version.clone())).await.unwrap();
    assert!(server.api.proxies.report(&web_1).unwrap().in_sync);

    server.api.index.lock().unwrap().apply_authorization(
        Key::new("shop", "web-http"),
        Some(1),
        &serde_json::from_value(json!({
            "server": {"podSelector": {"matchLabels": {"app": "web-1"}}, "port": "http"},
            "client": {"unauthenticated": true, "networks": [{"cidr": "198.18.0.0/16"}]},
        }))
        .unwrap(),
    );
    let second = next(&mut stream, "the change").await;
    assert_eq!(
        second.authorizations[0].name,
        "serverauthorization/web-http"
    );
    assert_eq!(second.authorizations[0].networks[0].cidr, "198.18.0.0/16");
    assert!(
        !server.api.proxies.report(&web_1).unwrap().in_sync,
        "a new version"
    );
    client.ack(ack(second.config_version)).await.unwrap();
    assert!(server.api.proxies.report(&web_1).unwrap().in_sync);

    drop(stream);
    eventually("the closed stream to disconnect the proxy", || {
        server.api.proxies.report(&web_1).is_none()
    })
    .await;
}

#[tokio::test]
async fn streams_for_unknown_or_foreign_pods_bad_ports_and_unknown_streams_are_refused() {
    let server = start().await;
    feed_pod(&server, "web-1", "web");
    feed_pod(&server, "db-1", "db");
    let mut client = certified_client(&server).await;
    let policy = |pod: &str, port| InboundPolicyRequest {
        pod: pod.into(),
        port,
    };
    let cases = [
        (policy("nobody", 80), Code::NotFound),
        (policy("db-1", 80), Code::PermissionDenied),
        (policy("web-1", 70_000), Code::InvalidArgument),
        (policy("Not_A_Pod", 80), Code::InvalidArgument),
        (policy(&"a".repeat(300), 80), Code::InvalidArgument),
    ];
    for (request, code) in cases {
        let err = client.inbound_policy(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err}");
    }
    let err = client
        .resolve(ResolveRequest {
            authority: "web.shop:80".into(),
            pod: "db-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = client
        .ack(AckRequest {
            pod: "web-1".into(),
            stream: "inbound:80".into(),
            config_version: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let text = server.api.metrics.encode();
    for (reason, count) in [
        ("UnknownPod", 1),
        ("PodIdentityMismatch", 2),
        ("BadPort", 1),
        ("BadPod", 2),
        ("UnknownStream", 1),
    ] {
        assert!(
            text.contains(&format!(
                "weft_operator_destination_refusals_total{{reason=\"{reason}\"}} {count}\n"
            )),
            "{reason}: {text}"
        );
    }
}

/// Waits up to 30 s (reconnection backoff included) for `check` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// An in-process proxy's discovery for pod `web-1`, certified as `shop/web`.
async fn proxy_discovery(
    server: &Server,
    idle: std::time::Duration,
) -> weft_proxy::discovery::Discovery {
    let (credentials, trust_bundle_file) = certify(server).await;
    let (_, rx) = tokio::sync::watch::channel(Some(credentials));
    weft_proxy::discovery::Discovery::start(
        weft_proxy::discovery::Settings {
            control: server.control.clone(),
            trust_bundle_file,
            pod: "web-1".into(),
            inbound_ports: vec![8080],
            idle,
            max_resolutions: 16,
            readiness: weft_proxy::state::Readiness::default(),
        },
        rx,
    )
}

/// Whether the operator sees `pod`'s proxy with `streams` open, all acknowledged.
fn in_sync_with(server: &Server, pod: &Key, streams: usize) -> bool {
    server
        .api
        .proxies
        .report(pod)
        .is_some_and(|r| r.streams == streams && r.in_sync)
}

fn endpoints_of(config: &serde_json::Value, authority: &str) -> usize {
    config["outbound"][authority]["endpoints"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn a_proxy_keeps_its_config_while_the_operator_is_away_and_resumes_without_losing_an_update()
{
    let mut server = start().await;
    feed_pod(&server, "web-1", "web");
    feed_web(&server, &["198.18.0.5"]);
    let discovery = proxy_discovery(&server, std::time::Duration::from_secs(60)).await;
    let web_1 = Key::new("shop", "web-1");
    let authority = "198.19.0.12:80";
    let resolution = discovery.resolve(authority);

    eventually("the proxy to apply and acknowledge 3 streams", || {
        in_sync_with(&server, &web_1, 3)
    })
    .await;
    let config = discovery.config();
    assert_eq!(endpoints_of(&config, authority), 1, "{config:#}");
    assert_eq!(
        config["inbound"]["8080"]["protocol"], "detect",
        "{config:#}"
    );
    assert_eq!(
        config["inbound"]["0"]["authorizations"][0]["name"],
        "default:all-unauthenticated"
    );
    let applied = server.api.proxies.acked(&web_1);
    assert_eq!(
        config["outbound"][authority]["version"].as_str(),
        applied
            .get(&format!("resolve:{authority}"))
            .map(String::as_str),
        "what the operator recorded is what the proxy shows"
    );

    // The operator goes away; the proxy keeps what it applied.
    server.api.stop().await;
    eventually("the proxy to notice", || discovery.config()["streams"] == 0).await;
    assert_eq!(endpoints_of(&discovery.config(), authority), 1);
    // A change while it is away...
    feed_web(&server, &["198.18.0.5", "198.18.0.6"]);
    // ...reaches the proxy once it is back.
    server.api.restart().await;
    eventually("the proxy to apply the change made while away", || {
        endpoints_of(&discovery.config(), authority) == 2
    })
    .await;
    assert_eq!(
        resolution
            .as_ref()
            .and_then(|r| r.borrow().as_ref().map(|r| r.endpoints.len())),
        Some(2)
    );
    eventually("the restarted operator to see the proxy in sync", || {
        in_sync_with(&server, &web_1, 3)
    })
    .await;
}

#[tokio::test]
async fn an_unused_destination_is_dropped_on_both_sides() {
    let server = start().await;
    feed_pod(&server, "web-1", "web");
    feed_web(&server, &["198.18.0.5"]);
    let discovery = proxy_discovery(&server, std::time::Duration::from_millis(400)).await;
    let web_1 = Key::new("shop", "web-1");
    // Resolved once, then no longer watched: the destination goes idle.
    drop(discovery.resolve("198.19.0.12:80"));
    eventually("the resolve stream", || {
        server
            .api
            .proxies
            .report(&web_1)
            .is_some_and(|r| r.streams == 3)
    })
    .await;
    eventually("the idle destination to be dropped", || {
        server
            .api
            .proxies
            .report(&web_1)
            .is_some_and(|r| r.streams == 2)
    })
    .await;
    let config = discovery.config();
    assert!(
        config["outbound"].as_object().unwrap().is_empty(),
        "{config:#}"
    );
}

#[tokio::test]
async fn an_undeclared_port_named_by_a_server_authorization_comes_with_the_pods_policy() {
    let server = start().await;
    feed_pod(&server, "web-1", "web");
    server
        .api
        .index
        .lock()
        .expect("the index")
        .apply_authorization(
            Key::new("shop", "web-admin"),
            Some(1),
            &serde_json::from_value(json!({
                "server": {"podSelector": {"matchLabels": {"app": "web-1"}}, "port": 9999},
                "client": {"meshTLS": {"identities": ["*"]}},
            }))
            .expect("a ServerAuthorization"),
        );
    let discovery = proxy_discovery(&server, std::time::Duration::from_secs(60)).await;
    // The pod does not declare 9999: port 0's policy carries it, with the
    // ServerAuthorization that names it, before any connection to it; another
    // undeclared port follows the default.
    let policies = discovery.inbound_policies();
    let named = |port: u16| match policies.borrow().policy(port) {
        PortPolicy::Known(p) => p.authorizations.first().map(|a| a.name.clone()),
        _ => None,
    };
    eventually("port 9999's own policy", || {
        named(9999).as_deref() == Some("serverauthorization/web-admin")
    })
    .await;
    assert_eq!(named(9998).as_deref(), Some("default:all-unauthenticated"));
}

/// Opens the inbound policy stream of `pod`'s `port` and reads its first update.
async fn policy_stream(
    client: &DestinationClient<tonic::transport::Channel>,
    pod: &str,
    port: u32,
) -> Result<
    (
        tonic::Streaming<weft_proxy_api::v1::InboundPolicyUpdate>,
        String,
    ),
    tonic::Status,
> {
    let mut stream = client
        .clone()
        .inbound_policy(InboundPolicyRequest {
            pod: pod.into(),
            port,
        })
        .await?
        .into_inner();
    let first = next(&mut stream, "the initial policy").await;
    Ok((stream, first.config_version))
}

/// How many Destination calls were refused for `reason`.
fn refusals(server: &Server, reason: &str) -> u64 {
    let line = format!("weft_operator_destination_refusals_total{{reason=\"{reason}\"}} ");
    server
        .api
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn acknowledged_fields_over_their_limits_are_refused_naming_the_field_and_the_limit() {
    let server = start().await;
    feed_pod(&server, "web-1", "web");
    let client = certified_client(&server).await;
    let (_stream, version) = policy_stream(&client, "web-1", 8080).await.unwrap();
    let web_1 = Key::new("shop", "web-1");
    let ack = |stream: &str, version: String| AckRequest {
        pod: "web-1".into(),
        stream: stream.into(),
        config_version: version,
    };

    let err = client
        .clone()
        .ack(ack("inbound:8080", "v".repeat(129)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("config_version") && err.message().contains("at most 128 bytes"),
        "{err}"
    );
    let err = client
        .clone()
        .ack(ack(&"s".repeat(301), version.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("stream") && err.message().contains("at most 300 bytes"),
        "{err}"
    );
    assert!(
        server.api.proxies.acked(&web_1).is_empty(),
        "nothing refused was kept"
    );
    assert_eq!(refusals(&server, "BadAck"), 2);

    // A version at the limit is kept (and, not being the stream's, is not in sync).
    client
        .clone()
        .ack(ack("inbound:8080", "v".repeat(128)))
        .await
        .expect("a version of 128 bytes is acknowledged");
    assert_eq!(server.api.proxies.acked(&web_1)["inbound:8080"].len(), 128);
    client
        .clone()
        .ack(ack("inbound:8080", version))
        .await
        .unwrap();
    assert!(server.api.proxies.report(&web_1).unwrap().in_sync);
}

#[tokio::test]
async fn request_messages_over_the_limit_are_refused_before_they_are_read() {
    let server = start().await;
    feed_pod(&server, "web-1", "web");
    let client = certified_client(&server).await;
    let (_stream, version) = policy_stream(&client, "web-1", 8080).await.unwrap();

    // Over Destination's message limit: tonic refuses it from its length, so the
    // handler (which would answer INVALID_ARGUMENT for the version) never sees it.
    let err = client
        .clone()
        .ack(AckRequest {
            pod: "web-1".into(),
            stream: "inbound:8080".into(),
            config_version: "v".repeat(8 * 1024),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.message().contains("the limit is: 4096 bytes"), "{err}");

    // Over Certify's: an outsized token never reaches the token review.
    let channel = weft_proxy::identity::connect(&server.control, &server.api.bundle)
        .await
        .expect("a channel to the proxy API");
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let err = IdentityClient::new(channel)
        .certify(CertifyRequest {
            identity: web.into(),
            token: format!("shop/web{}", " ".repeat(100 * 1024)),
            csr: csr(web),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.message().contains("the limit is: 65536 bytes"), "{err}");

    // The same connection carries on.
    client
        .clone()
        .ack(AckRequest {
            pod: "web-1".into(),
            stream: "inbound:8080".into(),
            config_version: version,
        })
        .await
        .expect("a request within the limit is served");
}

#[tokio::test]
async fn streams_beyond_a_limit_are_refused_while_other_clients_keep_streaming() {
    let server = start_with(StreamLimits {
        per_pod: 3,
        per_identity: 4,
        total: 6,
    })
    .await;
    for (pod, service_account) in [("web-1", "web"), ("web-2", "web"), ("db-1", "db")] {
        feed_pod(&server, pod, service_account);
    }
    let (web, db) = (
        client_as(&server, "web").await,
        client_as(&server, "db").await,
    );

    // web-1 holds as many streams as a pod may...
    let mut held = Vec::new();
    for port in [0, 8080, 9000] {
        held.push(policy_stream(&web, "web-1", port).await.expect("a stream"));
    }
    // ...and its next one is refused, naming the limit.
    let err = policy_stream(&web, "web-1", 9001).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("per-pod stream limit (3)"), "{err}");
    // Another pod of the same ServiceAccount reaches the identity's limit...
    held.push(policy_stream(&web, "web-2", 8080).await.expect("a stream"));
    let err = policy_stream(&web, "web-2", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("per-identity stream limit (4)"),
        "{err}"
    );
    // ...while another ServiceAccount's pod is served up to the total.
    let (mut db_stream, _) = policy_stream(&db, "db-1", 8080).await.expect("a stream");
    let _db_other = policy_stream(&db, "db-1", 0).await.expect("a stream");
    let err = policy_stream(&db, "db-1", 9000).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("total stream limit (6)"), "{err}");

    // The streams held keep streaming: a change reaches every one of them.
    server.api.index.lock().unwrap().apply_authorization(
        Key::new("shop", "all-http"),
        Some(1),
        &serde_json::from_value(json!({
            "server": {"podSelector": {}, "port": "http"},
            "client": {"unauthenticated": true},
        }))
        .unwrap(),
    );
    let update = next(&mut db_stream, "db-1's change").await;
    assert_eq!(
        update.authorizations[0].name,
        "serverauthorization/all-http"
    );
    let update = next(&mut held[1].0, "web-1's change").await;
    assert_eq!(
        update.authorizations[0].name,
        "serverauthorization/all-http"
    );

    // A closed stream gives its place back.
    drop(held.remove(0));
    let mut reopened = None;
    for _ in 0..100 {
        match policy_stream(&web, "web-1", 9001).await {
            Ok(stream) => {
                reopened = Some(stream);
                break;
            }
            Err(err) => {
                assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    assert!(reopened.is_some(), "web-1's freed place was not given back");

    // Each refusal is counted under its limit (web-1's may have been retried above).
    assert!(refusals(&server, "TooManyStreamsPerPod") >= 1);
    assert_eq!(refusals(&server, "TooManyStreamsPerIdentity"), 1);
    assert_eq!(refusals(&server, "TooManyStreamsInTotal"), 1);
}

#[tokio::test]
async fn an_acknowledgement_for_another_service_accounts_pod_is_refused_and_changes_nothing() {
    let server = start().await;
    feed_pod(&server, "web-1", "web");
    feed_pod(&server, "db-1", "db");
    let (web, db) = (
        client_as(&server, "web").await,
        client_as(&server, "db").await,
    );
    let (_db_stream, version) = policy_stream(&db, "db-1", 8080).await.expect("a stream");
    let db_1 = Key::new("shop", "db-1");
    let ack = AckRequest {
        pod: "db-1".into(),
        stream: "inbound:8080".into(),
        config_version: version,
    };

    // web, a pod of the same namespace under another ServiceAccount, acknowledges
    // db-1's current version for it.
    let err = web.clone().ack(ack.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        err.message()
            .contains("spiffe://cluster.local/ns/shop/sa/db"),
        "{err}"
    );
    assert!(server.api.proxies.acked(&db_1).is_empty());
    assert!(
        !server.api.proxies.report(&db_1).unwrap().in_sync,
        "db-1 is still not in sync"
    );
    assert_eq!(refusals(&server, "PodIdentityMismatch"), 1);

    // db-1's own proxy's acknowledgement is what makes it in sync.
    db.clone().ack(ack).await.expect("acknowledged");
    assert!(server.api.proxies.report(&db_1).unwrap().in_sync);
}
