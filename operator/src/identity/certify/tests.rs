use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tonic::Code;
use weft_proxy_api::v1::CertifyRequest;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::identity::{
    Authority,
    test_util::{self, csr},
};

/// Tokens are `token-<namespace>-<serviceaccount>`; anything else is rejected. Counts
/// its reviews; each takes `delay` (forever for `None`).
struct FakeReviewer(
    HashMap<String, TokenOwner>,
    Arc<AtomicUsize>,
    Option<Duration>,
);

impl FakeReviewer {
    fn new() -> Self {
        Self::slow(Some(Duration::ZERO))
    }

    fn slow(delay: Option<Duration>) -> Self {
        let mut tokens = HashMap::new();
        for (ns, sa) in [("shop", "web"), ("shop", "admin")] {
            tokens.insert(
                format!("token-{ns}-{sa}"),
                TokenOwner {
                    namespace: ns.into(),
                    service_account: sa.into(),
                },
            );
        }
        Self(tokens, Arc::default(), delay)
    }
}

impl TokenReviewer for FakeReviewer {
    async fn review(&self, token: &str) -> Result<TokenOwner, ReviewError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        match self.2 {
            Some(delay) if delay.is_zero() => {}
            Some(delay) => tokio::time::sleep(delay).await,
            None => std::future::pending().await,
        }
        self.0
            .get(token)
            .cloned()
            .ok_or_else(|| ReviewError::Rejected("token has expired".into()))
    }
}

fn authority() -> Arc<Authority> {
    test_util::authority().1
}

fn service(authority: Option<Arc<Authority>>) -> (Certify<FakeReviewer>, Arc<Metrics>) {
    let (_tx, rx) = watch::channel(authority);
    let metrics = Arc::new(Metrics::new());
    (
        Certify::new(rx, FakeReviewer::new(), metrics.clone()),
        metrics,
    )
}

fn request(identity: &str, token: &str, csr: Vec<u8>) -> CertifyRequest {
    CertifyRequest {
        identity: identity.into(),
        token: token.into(),
        csr,
    }
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

#[tokio::test]
async fn a_token_for_web_gets_a_certificate_for_web() {
    let (svc, metrics) = service(Some(authority()));
    let resp = svc
        .certify(request(WEB, "token-shop-web", csr(WEB)))
        .await
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&resp.leaf_certificate).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1);
    assert_eq!(
        san.value.general_names[0],
        x509_parser::extensions::GeneralName::URI(WEB)
    );
    assert_eq!(resp.intermediate_certificates.len(), 1);
    assert_eq!(
        resp.valid_until_unix_seconds,
        cert.validity().not_after.timestamp()
    );
    assert!(
        metrics
            .encode()
            .contains("weft_operator_certificates_issued_total 1")
    );
}

#[tokio::test]
async fn the_same_token_asking_for_another_identity_is_refused() {
    let (svc, metrics) = service(Some(authority()));
    let admin = "spiffe://cluster.local/ns/shop/sa/admin";
    let err = svc
        .certify(request(admin, "token-shop-web", csr(admin)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("the token is for spiffe://cluster.local/ns/shop/sa/web"),
        "{err}"
    );
    // Asking for its own identity but with a CSR for another: refused too.
    let err = svc
        .certify(request(WEB, "token-shop-web", csr(admin)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let text = metrics.encode();
    assert!(
        text.contains(r#"weft_operator_certificate_refusals_total{reason="wrong_identity"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn rejected_tokens_are_unauthenticated() {
    let (svc, metrics) = service(Some(authority()));
    let err = svc
        .certify(request(WEB, "expired-or-forged", csr(WEB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let text = metrics.encode();
    assert!(
        text.contains(r#"weft_operator_certificate_refusals_total{reason="token_rejected"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn bad_requests_get_the_right_status() {
    let (svc, metrics) = service(Some(authority()));
    let err = svc.certify(request(WEB, "", csr(WEB))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let text = metrics.encode();
    assert!(
        text.contains(r#"weft_operator_certificate_refusals_total{reason="empty_token"} 1"#),
        "{text}"
    );
    let err = svc
        .certify(request(WEB, "token-shop-web", b"garbage".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = svc
        .certify(request("not-an-id", "token-shop-web", csr(WEB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let other_domain = "spiffe://evil.example/ns/shop/sa/web";
    let err = svc
        .certify(request(other_domain, "token-shop-web", csr(other_domain)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn without_an_issuer_certify_is_unavailable() {
    let (svc, _) = service(None);
    let err = svc
        .certify(request(WEB, "token-shop-web", csr(WEB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[test]
fn token_reviews_are_read_strictly() {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
    let review = |authenticated: bool, audiences: &[&str], user: &str| TokenReview {
        status: Some(TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.into()),
                ..Default::default()
            }),
            error: None,
        }),
        ..Default::default()
    };
    let aud = weft_proxy_api::IDENTITY_TOKEN_AUDIENCE;
    assert_eq!(
        owner_of(&review(true, &[aud], "system:serviceaccount:shop:web")),
        Ok(TokenOwner {
            namespace: "shop".into(),
            service_account: "web".into()
        })
    );
    assert!(matches!(
        owner_of(&review(false, &[aud], "system:serviceaccount:shop:web")),
        Err(ReviewError::Rejected(_))
    ));
    assert!(matches!(
        owner_of(&review(true, &["other"], "system:serviceaccount:shop:web")),
        Err(ReviewError::Rejected(_))
    ));
    assert!(matches!(
        owner_of(&review(true, &[aud], "alice")),
        Err(ReviewError::NotAServiceAccount(_))
    ));
    assert!(matches!(
        owner_of(&TokenReview::default()),
        Err(ReviewError::Rejected(_))
    ));
}

/// The service with `limits` and `reviewer`, and the count of its reviews.
fn limited_service(
    limits: Limits,
    reviewer: FakeReviewer,
) -> (Arc<Certify<FakeReviewer>>, Arc<Metrics>, Arc<AtomicUsize>) {
    let (_tx, rx) = watch::channel(Some(authority()));
    let metrics = Arc::new(Metrics::new());
    let reviews = reviewer.1.clone();
    (
        Arc::new(Certify::with_limits(rx, reviewer, metrics.clone(), limits)),
        metrics,
        reviews,
    )
}

fn has(metrics: &Metrics, line: &str) {
    let text = metrics.encode();
    assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
}

#[tokio::test]
async fn a_token_is_reviewed_once_and_then_known_by_its_hash() {
    let (svc, metrics, reviews) = limited_service(Limits::default(), FakeReviewer::new());
    for _ in 0..5 {
        svc.certify(request(WEB, "token-shop-web", csr(WEB)))
            .await
            .unwrap();
    }
    assert_eq!(reviews.load(Ordering::SeqCst), 1);
    // A refused token too: a flood of it costs one review.
    for _ in 0..50 {
        let err = svc
            .certify(request(WEB, "forged", csr(WEB)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(!err.message().contains("forged"), "{err}");
    }
    assert_eq!(reviews.load(Ordering::SeqCst), 2);
    has(&metrics, "weft_operator_certify_token_cache_misses_total 2");
    has(&metrics, "weft_operator_certify_token_cache_hits_total 53");
    has(
        &metrics,
        r#"weft_operator_certify_requests_total{result="issued"} 5"#,
    );
    has(
        &metrics,
        r#"weft_operator_certify_requests_total{result="refused"} 50"#,
    );
    has(
        &metrics,
        r#"weft_operator_certify_refusals_total{reason="token_rejected"} 50"#,
    );
}

#[tokio::test]
async fn concurrent_calls_with_one_new_token_share_one_review() {
    let (svc, metrics, reviews) = limited_service(
        Limits::default(),
        FakeReviewer::slow(Some(Duration::from_millis(200))),
    );
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                svc.certify(request(WEB, "token-shop-web", csr(WEB)))
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(reviews.load(Ordering::SeqCst), 1);
    has(&metrics, "weft_operator_certify_token_cache_misses_total 1");
}

#[tokio::test]
async fn a_service_account_over_its_rate_is_limited_and_told_which_limit() {
    let limits = Limits {
        per_service_account: Rate::new(0.001, 2),
        ..Limits::default()
    };
    let (svc, metrics, _) = limited_service(limits, FakeReviewer::new());
    for _ in 0..2 {
        svc.certify(request(WEB, "token-shop-web", csr(WEB)))
            .await
            .unwrap();
    }
    let err = svc
        .certify(request(WEB, "token-shop-web", csr(WEB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(
        err.message(),
        "ServiceAccount shop/web is over its Certify rate limit (0.001/s, burst 2); retry later"
    );
    // Limited before its CSR is even looked at.
    let err = svc
        .certify(request(WEB, "token-shop-web", b"garbage".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // Another ServiceAccount of the same namespace is not.
    let admin = "spiffe://cluster.local/ns/shop/sa/admin";
    svc.certify(request(admin, "token-shop-admin", csr(admin)))
        .await
        .unwrap();
    has(
        &metrics,
        r#"weft_operator_certify_requests_total{result="limited"} 2"#,
    );
    has(
        &metrics,
        r#"weft_operator_certify_requests_total{result="issued"} 3"#,
    );
    has(
        &metrics,
        r#"weft_operator_certify_refusals_total{reason="service_account_rate_limit"} 2"#,
    );
}

#[tokio::test]
async fn the_global_rate_bounds_every_service_account() {
    let limits = Limits {
        global: Rate::new(0.001, 1),
        ..Limits::default()
    };
    let (svc, metrics, _) = limited_service(limits, FakeReviewer::new());
    svc.certify(request(WEB, "token-shop-web", csr(WEB)))
        .await
        .unwrap();
    let admin = "spiffe://cluster.local/ns/shop/sa/admin";
    let err = svc
        .certify(request(admin, "token-shop-admin", csr(admin)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        err.message()
            .starts_with("this operator is over its Certify rate limit"),
        "{err}"
    );
    has(
        &metrics,
        r#"weft_operator_certify_refusals_total{reason="global_rate_limit"} 1"#,
    );
}

#[tokio::test]
async fn unknown_tokens_from_one_peer_cost_reviews_only_within_its_limit() {
    let limits = Limits {
        reviews_per_peer: Rate::new(0.001, 2),
        ..Limits::default()
    };
    let (svc, metrics, reviews) = limited_service(limits, FakeReviewer::new());
    let (flooder, other): (IpAddr, IpAddr) =
        ("198.18.0.7".parse().unwrap(), "198.18.0.8".parse().unwrap());
    let ask = |token: &str, peer| {
        let svc = svc.clone();
        let req = request(WEB, token, csr(WEB));
        async move { svc.certify_from(req, Some(peer)).await }
    };
    // Two new tokens are reviewed (one good, one bad); the third is not.
    ask("token-shop-web", flooder).await.unwrap();
    ask("forged-1", flooder).await.unwrap_err();
    let err = ask("forged-2", flooder).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("198.18.0.7"), "{err}");
    assert_eq!(reviews.load(Ordering::SeqCst), 2);
    // Tokens already known cost no review: still answered.
    ask("token-shop-web", flooder).await.unwrap();
    assert_eq!(
        ask("forged-1", flooder).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Another peer has its own budget.
    assert_eq!(
        ask("forged-2", other).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    has(
        &metrics,
        r#"weft_operator_certify_refusals_total{reason="peer_review_rate_limit"} 1"#,
    );
}

#[tokio::test]
async fn a_call_past_its_deadline_fails_with_deadline_exceeded() {
    let limits = Limits {
        deadline: Duration::from_millis(100),
        review_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let (svc, metrics, _) = limited_service(limits, FakeReviewer::slow(None));
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        svc.certify(request(WEB, "token-shop-web", csr(WEB))),
    )
    .await
    .expect("answered")
    .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    has(
        &metrics,
        r#"weft_operator_certify_refusals_total{reason="deadline_exceeded"} 1"#,
    );
    // The abandoned review is not waited for by the next call: it reviews again.
    let err = svc
        .certify(request(WEB, "token-shop-web", csr(WEB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
}

#[tokio::test]
async fn a_review_past_its_timeout_is_unavailable_and_not_remembered() {
    let limits = Limits {
        review_timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let (svc, metrics, reviews) = limited_service(limits, FakeReviewer::slow(None));
    for _ in 0..2 {
        let err = svc
            .certify(request(WEB, "token-shop-web", csr(WEB)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.message().contains("did not answer within"), "{err}");
    }
    assert_eq!(reviews.load(Ordering::SeqCst), 2);
    has(
        &metrics,
        r#"weft_operator_certify_refusals_total{reason="review_timeout"} 2"#,
    );
}

#[tokio::test]
async fn refusals_quote_client_text_escaped_and_cut() {
    let (svc, _, _) = limited_service(Limits::default(), FakeReviewer::new());
    let long = format!(
        "spiffe://cluster.local/ns/shop/sa/{}\n\u{1b}[31m",
        "x".repeat(5000)
    );
    let err = svc
        .certify(request(&long, "token-shop-web", csr(WEB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 400, "{} bytes", err.message().len());
    assert!(!err.message().contains('\n') && !err.message().contains('\u{1b}'));
    assert!(err.message().contains("bytes)"), "{err}");
    // A name a CSR asks for is client text too.
    let other = format!("spiffe://cluster.local/ns/shop/sa/{}", "y".repeat(200));
    let err = svc
        .certify(request(WEB, "token-shop-web", csr(&other)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().len() < 400, "{}", err.message());
    assert!(err.message().contains(&"y".repeat(50)), "{err}");
    assert!(!err.message().contains(&"y".repeat(200)), "{err}");
    assert_eq!(quoted("a\"b\n"), r#""a\"b\n""#);
    assert_eq!(
        quoted(&"é".repeat(200)),
        format!("\"{}\"... (400 bytes)", "é".repeat(MAX_QUOTED_CHARS))
    );
}
