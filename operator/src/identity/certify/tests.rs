use std::{collections::HashMap, sync::Arc};

use tokio::sync::watch;
use tonic::Code;
use weft_proxy_api::v1::CertifyRequest;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::identity::{
    Authority,
    test_util::{self, csr},
};

/// Tokens are `token-<namespace>-<serviceaccount>`; anything else is rejected.
struct FakeReviewer(HashMap<String, TokenOwner>);

impl FakeReviewer {
    fn new() -> Self {
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
        Self(tokens)
    }
}

impl TokenReviewer for FakeReviewer {
    async fn review(&self, token: &str) -> Result<TokenOwner, ReviewError> {
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
