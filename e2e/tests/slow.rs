//! The tests that wait on real clocks, in one binary so their waits overlap:
//!
//! - trust anchor rotation end to end, with lifetimes of minutes: the operator adds a
//!   new anchor to the bundle, switches the issuer to it, and retires the old one, while
//!   a proxy keeps a valid certificate and stays Ready the whole time. It changes the
//!   cluster's Mesh and replaces its trust anchor, then puts both back; no other test
//!   binary runs beside it.
//! - an expired ServiceAccount token is refused (the shortest token lives 10 minutes).

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::{Code, Request};
use weft_e2e::{
    kubectl, kubectl_ok, kubectl_stdin, mesh_namespace, metric, patch_mesh, patch_mesh_ok,
    proxy_metrics, proxy_pod, with_temp_ns,
};
use weft_operator::{
    identity::{
        certify::{Certify, KubeTokenReviewer},
        test_util,
    },
    metrics::Metrics,
};
use weft_proxy_api::v1::{CertifyRequest, identity_server::Identity};

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

        let events = kubectl_ok(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            "involvedObject.name=default",
        ]);
        for reason in [
            "TrustAnchorRotationStarted",
            "TrustAnchorPromoted",
            "TrustAnchorRetired",
        ] {
            assert!(events.contains(reason), "no {reason} event:\n{events}");
        }
    })
    .await;
}

/// The shortest token the API server issues lives 10 minutes; this test waits it out.
#[tokio::test]
async fn an_expired_token_is_refused() {
    with_temp_ns("expired", |client, ns| async move {
        kubectl_ok(&["create", "serviceaccount", "alpha", "-n", &ns]);
        let token = kubectl_ok(&[
            "create",
            "token",
            "alpha",
            "-n",
            &ns,
            "--audience",
            "weft.dev/identity",
            "--duration",
            "10m",
        ]);
        let token = token.trim().to_string();
        let issued = Instant::now();
        let (_anchor, authority) = test_util::authority();
        let (_tx, rx) = tokio::sync::watch::channel(Some(authority));
        let svc = Certify::new(rx, KubeTokenReviewer::new(client), Arc::new(Metrics::new()));
        let identity = format!("spiffe://cluster.local/ns/{ns}/sa/alpha");
        let ask = |token: String| {
            let req = CertifyRequest {
                identity: identity.clone(),
                token,
                csr: test_util::csr(&identity),
            };
            let svc = &svc;
            async move { Identity::certify(svc, Request::new(req)).await }
        };
        ask(token.clone())
            .await
            .expect("the fresh token is accepted");
        // The API server accepts a token up to a minute past its expiry (JWT leeway for
        // clock skew) and caches a successful review for 10 seconds: from then on, it
        // must be refused.
        tokio::time::sleep(Duration::from_secs(600).saturating_sub(issued.elapsed())).await;
        let deadline = issued + Duration::from_secs(600 + 60 + 10 + 30);
        let err = loop {
            match ask(token.clone()).await {
                Err(status) => break status,
                Ok(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "a token expired for over a minute was still accepted"
                    );
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        };
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
        assert!(
            issued.elapsed() >= Duration::from_secs(600),
            "refused only once expired"
        );
    })
    .await;
}
