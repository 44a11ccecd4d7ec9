//! The tests that wait on real clocks, in one binary so their waits overlap:
//!
//! - trust anchor rotation end to end, with lifetimes of minutes: the operator adds a
//!   new anchor to the bundle, switches the issuer to it, and retires the old one, while
//!   a proxy keeps a valid certificate and stays Ready the whole time. It changes the
//!   cluster's Mesh and replaces its trust anchor, then puts both back; no other test
//!   binary runs beside it.
//! - a ServiceAccount token is accepted by the installed operator's Certify just before
//!   it expires and refused just after (the shortest token lives 10 minutes).

mod proxy_api;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tonic::{Code, Status};
use weft_e2e::{
    kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, metric, patch_mesh, patch_mesh_ok,
    proxy_metrics, proxy_pod, with_temp_ns,
};
use weft_operator::identity::test_util;
use weft_proxy_api::v1::CertifyResponse;

/// What `kubectl get mesh default` says of the anchors and the issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    anchors: Vec<String>,
    issuer: String,
}

fn seen() -> Seen {
    let anchors = kubectl_ok(&[
        "get",
        "mesh",
        "default",
        "-o",
        "jsonpath={.status.trustAnchors[*].fingerprint}",
    ]);
    let issuer = kubectl_ok(&[
        "get",
        "mesh",
        "default",
        "-o",
        "jsonpath={.status.issuer.fingerprint}",
    ]);
    Seen {
        anchors: anchors.split_whitespace().map(str::to_string).collect(),
        issuer,
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Deletes the trust anchor and issuer Secrets, so the operator generates new ones.
fn drop_anchor_and_issuer() -> weft_e2e::Kubectl {
    kubectl(&[
        "delete",
        "secret",
        "-n",
        "weft-system",
        "weft-trust-anchor",
        "weft-issuer",
        "--ignore-not-found",
    ])
}

/// Puts the Mesh and its anchor back to the defaults, even when the test fails.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = patch_mesh(r#"{"spec":{"identity":null}}"#);
        let _ = drop_anchor_and_issuer();
    }
}

#[tokio::test]
async fn the_trust_anchor_rotates_while_a_proxy_stays_certified() {
    let _restore = Restore;
    // Event times have whole seconds.
    let started =
        k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second())
            .expect("now is a timestamp");
    // Minute-scale lifetimes, and a fresh anchor that has them.
    patch_mesh_ok(
        r#"{"spec":{"identity":{"trustAnchor":{"lifetime":"7m"},"issuerLifetime":"3m","workloadCertificateLifetime":"1m"}}}"#,
    );
    let before = seen();
    let dropped = drop_anchor_and_issuer();
    assert!(dropped.success, "{}", dropped.stderr);
    let deadline = Instant::now() + Duration::from_secs(90);
    let first = loop {
        let s = seen();
        let fresh = s.anchors.len() == 1
            && !before.anchors.contains(&s.anchors[0])
            && !s.issuer.is_empty()
            && s.issuer != before.issuer;
        if fresh {
            break s;
        }
        assert!(Instant::now() < deadline, "no fresh anchor: {s:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };

    with_temp_ns("rotation", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        let identity = format!("spiffe://cluster.local/ns/{ns}/sa/books");
        let manifest = proxy_pod(&ns, "books", "books", &identity);
        let applied = kubectl_stdin(&["apply", "-f", "-"], &manifest);
        assert!(applied.success, "{}", applied.stderr);
        let waited = kubectl(&[
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "pod/books",
            "--timeout=120s",
        ]);
        assert!(waited.success, "{}{}", waited.stdout, waited.stderr);

        // Watch the whole rotation: start (two anchors), promote (new issuer, new anchor
        // first), retire (only the new anchor).
        let original = first.anchors[0].clone();
        let mut steps = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(9 * 60);
        loop {
            let s = seen();
            if s.anchors.len() == 2 && s.anchors[0] == original {
                steps.insert("started");
            }
            if s.anchors.len() == 2 && s.anchors[1] == original && s.issuer != first.issuer {
                steps.insert("promoted");
            }
            if s.anchors.len() == 1 && s.anchors[0] != original {
                steps.insert("retired");
            }
            // Throughout: the proxy is Ready and holds an unexpired certificate.
            let ready = kubectl_ok(&[
                "get",
                "pod",
                "-n",
                &ns,
                "books",
                "-o",
                "jsonpath={.status.containerStatuses[0].ready}",
            ]);
            assert_eq!(
                ready, "true",
                "the proxy lost readiness during rotation at step {steps:?}, {s:?}"
            );
            let metrics = proxy_metrics(&ns, "books");
            let expiry =
                metric(&metrics, "identity_cert_expiration_timestamp_seconds").unwrap_or(0.0);
            assert!(
                expiry > unix_now(),
                "the proxy's certificate expired during rotation: {metrics}"
            );
            if steps.contains("retired") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the rotation did not finish; saw {steps:?}, now {s:?}"
            );
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert_eq!(
            steps.len(),
            3,
            "every step was visible in kubectl get mesh: {steps:?}"
        );

        // The proxy renewed its 1-minute certificate from the new issuer and never failed
        // for long.
        let metrics = proxy_metrics(&ns, "books");
        let ok = metric(&metrics, "identity_cert_refresh_total{result=\"ok\"}").unwrap_or(0.0);
        assert!(ok >= 5.0, "the proxy kept renewing: {metrics}");

        // The Events of this rotation, not of an earlier run's (Events live an hour).
        let events = kube::Api::<k8s_openapi::api::core::v1::Event>::all(client.clone())
            .list(&kube::api::ListParams::default().fields("involvedObject.name=default"))
            .await
            .expect("the Mesh's events");
        let reasons: BTreeSet<String> = events
            .items
            .iter()
            .filter(|e| {
                let at = e
                    .last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or_else(|| e.event_time.as_ref().map(|t| t.0));
                at.is_some_and(|at| at >= started)
            })
            .filter_map(|e| e.reason.clone())
            .collect();
        for reason in [
            "TrustAnchorRotationStarted",
            "TrustAnchorPromoted",
            "TrustAnchorRetired",
        ] {
            assert!(
                reasons.contains(reason),
                "no {reason} event since the test started ({started}): {reasons:?}"
            );
        }
    })
    .await;
}

/// The shortest token the API server issues lives 10 minutes (it refuses a shorter
/// `expirationSeconds`). The API server accepts a token until a minute past its `exp`
/// (the JWT library's leeway for clock skew, `jwt.DefaultLeeway`) and caches a
/// successful review for 10 seconds, so: accepted 30 s before `exp`, refused once
/// `exp` + 60 s + 10 s has passed.
#[tokio::test]
async fn an_expired_token_is_refused() {
    const LEEWAY: f64 = 60.0;
    const REVIEW_CACHE: f64 = 10.0;
    with_temp_ns("expired", |client, ns| async move {
        mesh_namespace(&client, &ns).await;
        kubectl_ok(&["create", "serviceaccount", "alpha", "-n", &ns]);
        let token = proxy_api::token(
            &ns,
            "alpha",
            &["--audience", "weft.dev/identity", "--duration", "10m"],
        );
        let claims = proxy_api::jwt_claims(&token);
        let (iat, exp) = (claims["iat"].as_f64(), claims["exp"].as_f64());
        let (Some(iat), Some(exp)) = (iat, exp) else {
            panic!("the token has no iat or exp: {claims}");
        };
        assert_eq!(exp - iat, 600.0, "a 10-minute token: {claims}");
        let identity = format!("spiffe://cluster.local/ns/{ns}/sa/alpha");
        // The bundle is read before each call, as a proxy does: the rotation test beside
        // this one changes it.
        let ask = || async {
            let channel = proxy_api::channel(&proxy_api::bundle(&ns), None)
                .await
                .map_err(|e| Status::unavailable(format!("cannot connect: {e:?}")))?;
            let csr = test_util::csr(&identity);
            proxy_api::certify(&channel, &identity, &token, csr).await
        };
        answer(&ask, unix_now() + 60.0)
            .await
            .expect("the fresh token is accepted");

        sleep_until_unix(exp - 30.0).await;
        let accepted = answer(&ask, exp - 5.0).await;
        let at = unix_now();
        accepted.unwrap_or_else(|e| {
            panic!(
                "the token was refused {:.0} s before its expiry: {e:?}",
                exp - at
            )
        });

        sleep_until_unix(exp + LEEWAY + REVIEW_CACHE + 5.0).await;
        let refused = answer(&ask, exp + LEEWAY + REVIEW_CACHE + 60.0)
            .await
            .map(|certified| certified.valid_until_unix_seconds)
            .expect_err("a token expired for over a minute is refused");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(
            refused.message().contains("expired"),
            "refused because it expired: {refused:?}"
        );
    })
    .await;
}

/// Sleeps until `unix` (seconds since the epoch).
async fn sleep_until_unix(unix: f64) {
    let left = unix - unix_now();
    if left > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(left)).await;
    }
}

/// The answer of `ask` about the token: asks again while the answer says nothing about
/// it (the operator has no issuer for a moment, or the bundle is changing under the
/// TLS handshake, while the rotation test beside replaces the anchor: both come as
/// UNAVAILABLE), until `by` (seconds since the epoch), when the test fails.
async fn answer<F, Fut>(ask: &F, by: f64) -> Result<CertifyResponse, Status>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<CertifyResponse, Status>>,
{
    loop {
        match ask().await {
            Err(status) if status.code() == Code::Unavailable => {
                assert!(
                    unix_now() < by,
                    "no answer about the token in time; last: {status:?}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            answer => return answer,
        }
    }
}
