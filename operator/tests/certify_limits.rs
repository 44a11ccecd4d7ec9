//! Certify's limits in-process, over real sockets and TLS as a proxy calls it: a
//! ServiceAccount over its rate is answered RESOURCE_EXHAUSTED naming the limit while
//! another ServiceAccount is still certified; tokens never seen before cost reviews only
//! within the caller's address's budget (the address comes from the connection); a
//! refusal quotes the client's text bounded; and every answer is counted.

use std::time::Duration;

use tonic::{Code, transport::Channel};
use weft_operator::identity::{
    certify::{Limits, Rate},
    test_util::{TestProxyApi, csr, proxy_api_with},
};
use weft_proxy_api::v1::{CertifyRequest, identity_client::IdentityClient};

fn id(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/shop/sa/{sa}")
}

async fn channel(api: &TestProxyApi) -> Channel {
    weft_proxy::identity::connect(&api.control(), &api.bundle)
        .await
        .expect("a channel to the proxy API")
}

/// One Certify call asking for `identity` with `token`; fails the test after 10 s.
async fn certify(channel: &Channel, identity: &str, token: &str) -> Result<(), tonic::Status> {
    let mut client = IdentityClient::new(channel.clone());
    let call = client.certify(CertifyRequest {
        identity: identity.into(),
        token: token.into(),
        csr: csr(identity),
    });
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("Certify answers within 10 s")
        .map(|_| ())
}

fn has(api: &TestProxyApi, line: &str) {
    let text = api.metrics.encode();
    assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
}

#[tokio::test]
async fn a_service_account_over_its_rate_is_limited_and_another_is_not() {
    let api = proxy_api_with(Limits {
        per_service_account: Rate::new(0.001, 3),
        ..Limits::default()
    })
    .await
    .ready()
    .await;
    let channel = channel(&api).await;
    for _ in 0..3 {
        certify(&channel, &id("web"), "shop/web").await.unwrap();
    }
    for _ in 0..5 {
        let err = certify(&channel, &id("web"), "shop/web").await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
        assert_eq!(
            err.message(),
            "ServiceAccount shop/web is over its Certify rate limit (0.001/s, burst 3); \
             retry later"
        );
    }
    certify(&channel, &id("admin"), "shop/admin").await.unwrap();
    has(
        &api,
        r#"weft_operator_certify_requests_total{result="issued"} 4"#,
    );
    has(
        &api,
        r#"weft_operator_certify_requests_total{result="limited"} 5"#,
    );
    has(
        &api,
        r#"weft_operator_certify_refusals_total{reason="service_account_rate_limit"} 5"#,
    );
    // Two tokens, each reviewed once.
    has(&api, "weft_operator_certify_token_cache_misses_total 2");
    has(&api, "weft_operator_certify_token_cache_hits_total 7");
}

#[tokio::test]
async fn new_tokens_from_one_address_are_reviewed_within_its_budget() {
    let api = proxy_api_with(Limits {
        reviews_per_peer: Rate::new(0.001, 2),
        ..Limits::default()
    })
    .await
    .ready()
    .await;
    let channel = channel(&api).await;
    // Reviewed: a good token and a bad one.
    certify(&channel, &id("web"), "shop/web").await.unwrap();
    let err = certify(&channel, &id("web"), "bad-1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // A third new token from 127.0.0.1 is not reviewed.
    let err = certify(&channel, &id("web"), "bad-2").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(
        err.message(),
        "Certify calls from 127.0.0.1 are over their TokenReview rate limit \
         (0.001/s, burst 2); retry later"
    );
    // Known tokens cost no review and are answered as before.
    certify(&channel, &id("web"), "shop/web").await.unwrap();
    let err = certify(&channel, &id("web"), "bad-1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    has(
        &api,
        r#"weft_operator_certify_refusals_total{reason="peer_review_rate_limit"} 1"#,
    );
    has(
        &api,
        r#"weft_operator_certify_refusals_total{reason="token_rejected"} 2"#,
    );
}

#[tokio::test]
async fn a_refusal_quotes_the_clients_text_bounded_and_escaped() {
    let api = proxy_api_with(Limits::default()).await.ready().await;
    let channel = channel(&api).await;
    let identity = format!(
        "spiffe://cluster.local/ns/shop/sa/{}\r\n",
        "w".repeat(30_000)
    );
    let err = IdentityClient::new(channel.clone())
        .certify(CertifyRequest {
            identity: identity.clone(),
            token: "shop/web".into(),
            csr: csr(&id("web")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().len() < 400, "{} bytes", err.message().len());
    assert!(
        err.message().starts_with(&format!(
            "\"spiffe://cluster.local/ns/shop/sa/{}\"... (30036 bytes) is not a workload identity",
            "w".repeat(128 - 34)
        )),
        "{err}"
    );
    has(
        &api,
        r#"weft_operator_certify_refusals_total{reason="bad_identity"} 1"#,
    );
    has(
        &api,
        r#"weft_operator_certify_requests_total{result="refused"} 1"#,
    );
    // The server carries on.
    certify(&channel, &id("web"), "shop/web").await.unwrap();
}
