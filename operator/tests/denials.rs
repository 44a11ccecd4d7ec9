//! The Denials service in-process, over real sockets and mutual TLS, with proxies
//! certified through the real Certify path: a proxy's report is kept for its own pod
//! and replaced by the next; what a client can make the operator hold is bounded (the
//! ports a report names, the identity it carries, the request's size), each refusal
//! named and counted; and a proxy reports only for a pod of its own ServiceAccount.

use serde_json::json;
use tonic::Code;
use weft_operator::discovery::index::Key;
use weft_operator::identity::test_util::{TestProxyApi, proxy_api};
use weft_proxy_api::v1::{DenialReport, PortDenials, denials_client::DenialsClient};

/// A Denials client holding a workload certificate for `shop/<service_account>`.
async fn client_as(
    api: &TestProxyApi,
    service_account: &str,
) -> DenialsClient<tonic::transport::Channel> {
    let (credentials, _) = api.certify("shop", service_account).await;
    let channel =
        weft_proxy::identity::connect_as(&api.control(), &api.bundle, Some(credentials.key))
            .await
            .expect("a mutual-TLS channel");
    DenialsClient::new(channel)
}

/// A pod of `shop` running as `service_account`, with container port `http` 8080.
fn feed_pod(api: &TestProxyApi, name: &str, service_account: &str) {
    let mut index = api.index.lock().expect("the index");
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

fn entry(port: u32, count: u64, client: &str) -> PortDenials {
    PortDenials {
        port,
        count,
        last_client: client.into(),
        last_time: 1_700_000_000,
    }
}

fn report(pod: &str, ports: Vec<PortDenials>) -> DenialReport {
    DenialReport {
        pod: pod.into(),
        ports,
    }
}

/// The sum of `weft_operator_destination_refusals_total{reason=...}` in the metrics.
fn refusals(api: &TestProxyApi, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    api.metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("weft_operator_destination_refusals_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_proxys_report_is_kept_for_its_pod_and_replaced_by_the_next() {
    let api = proxy_api().await.ready().await;
    feed_pod(&api, "web-1", "web");
    let mut client = client_as(&api, "web").await;
    let stranger = "spiffe://cluster.local/ns/shop/sa/stranger";
    client
        .report(report("web-1", vec![entry(8080, 3, stranger)]))
        .await
        .expect("the report is taken");
    let kept = api.proxies.denials().of(&Key::new("shop", "web-1"));
    assert_eq!(
        kept.iter()
            .map(|p| (p.port, p.count, p.last_client.as_str()))
            .collect::<Vec<_>>(),
        [(8080, 3, stranger)]
    );
    client
        .report(report("web-1", vec![entry(8080, 5, "unauthenticated")]))
        .await
        .expect("the next report is taken");
    let kept = api.proxies.denials().of(&Key::new("shop", "web-1"));
    assert_eq!(
        kept.iter()
            .map(|p| (p.count, p.last_client.as_str()))
            .collect::<Vec<_>>(),
        [(5, "unauthenticated")]
    );
}

#[tokio::test]
async fn a_report_over_a_limit_is_refused_naming_it_and_counted() {
    let api = proxy_api().await.ready().await;
    feed_pod(&api, "web-1", "web");
    let mut client = client_as(&api, "web").await;
    let pod = Key::new("shop", "web-1");

    let many = (1..=65).map(|p| entry(p, 1, "unauthenticated")).collect();
    let refused = client.report(report("web-1", many)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("at most 64 ports"),
        "{refused:?}"
    );

    let long = "x".repeat(301);
    let refused = client
        .report(report("web-1", vec![entry(8080, 1, &long)]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("at most 300 bytes"),
        "{refused:?}"
    );
    assert_eq!(refusals(&api, "BadDenialReport"), 2.0);

    // A message over the size limit is refused from its length, before it is read.
    let huge = "x".repeat(40 * 1024);
    let refused = client
        .report(report("web-1", vec![entry(8080, 1, &huge)]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(
        api.proxies.denials().of(&pod).is_empty(),
        "nothing was kept"
    );

    // At the limits, a report is taken.
    let most = (1..=64).map(|p| entry(p, 1, &"x".repeat(300))).collect();
    client
        .report(report("web-1", most))
        .await
        .expect("a report at the limits is taken");
    assert_eq!(api.proxies.denials().of(&pod).len(), 64);
}

#[tokio::test]
async fn a_proxy_reports_only_for_a_pod_of_its_own_service_account() {
    let api = proxy_api().await.ready().await;
    feed_pod(&api, "db-1", "db");
    let mut web = client_as(&api, "web").await;
    let refused = web
        .report(report("db-1", vec![entry(5432, 9, "unauthenticated")]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = web
        .report(report("web-9", vec![entry(8080, 1, "unauthenticated")]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert!(api.proxies.denials().is_empty(), "nothing was kept");

    // Without a workload certificate, no report at all.
    let anonymous = weft_proxy::identity::connect(&api.control(), &api.bundle)
        .await
        .expect("a TLS channel");
    let refused = DenialsClient::new(anonymous)
        .report(report("db-1", vec![]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}
