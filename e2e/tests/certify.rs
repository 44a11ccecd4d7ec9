//! `Certify` against the real API server: tokens are checked with real TokenReviews.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::DeleteParams};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, UnixTime},
    server::WebPkiClientVerifier,
};
use tonic::{Code, Request};
use weft_e2e::{eventually, kubectl_ok, kubectl_stdin, with_temp_ns};
use weft_operator::{
    identity::{
        certify::{Certify, KubeTokenReviewer},
        test_util::{self, csr},
    },
    metrics::Metrics,
};
use weft_proxy_api::v1::{CertifyRequest, CertifyResponse, identity_server::Identity};

fn token(ns: &str, sa: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", "token", sa, "-n", ns];
    args.extend_from_slice(extra);
    kubectl_ok(&args).trim().to_string()
}

async fn ask(
    svc: &Certify<KubeTokenReviewer>,
    identity: &str,
    token: &str,
) -> Result<CertifyResponse, tonic::Status> {
    let req = CertifyRequest {
        identity: identity.into(),
        token: token.into(),
        csr: csr(identity),
    };
    Identity::certify(svc, Request::new(req))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn tokens_are_checked_by_the_api_server() {
    with_temp_ns("certify", |client, ns| async move {
        kubectl_ok(&["create", "serviceaccount", "alpha", "-n", &ns]);
        kubectl_ok(&["create", "serviceaccount", "beta", "-n", &ns]);

        let (anchor, authority) = test_util::authority();
        let (_tx, rx) = tokio::sync::watch::channel(Some(authority));
        let svc = Certify::new(rx, KubeTokenReviewer::new(client.clone()), Arc::new(Metrics::new()));

        let alpha = format!("spiffe://cluster.local/ns/{ns}/sa/alpha");
        let beta = format!("spiffe://cluster.local/ns/{ns}/sa/beta");
        let alpha_token = token(&ns, "alpha", &["--audience", "weft.dev/identity"]);

        // A token for alpha gets a certificate for alpha that verifies against the bundle.
        let resp = ask(&svc, &alpha, &alpha_token).await.expect("alpha is certified");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(anchor.cert_der().to_vec())).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider).build().unwrap();
        let intermediates: Vec<_> = resp.intermediate_certificates.iter().cloned().map(CertificateDer::from).collect();
        verifier
            .verify_client_cert(&CertificateDer::from(resp.leaf_certificate.clone()), &intermediates, UnixTime::now())
            .expect("the leaf verifies against the published bundle");

        // The same token asking for beta is refused.
        let err = ask(&svc, &beta, &alpha_token).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");

        // A token for another audience is refused.
        let wrong_audience = token(&ns, "alpha", &["--audience", "some-other-service"]);
        let err = ask(&svc, &alpha, &wrong_audience).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");

        // Garbage is refused.
        let err = ask(&svc, &alpha, "not.a.jwt").await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");

        // A token bound to a pod stops working once the pod is deleted.
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: holder, namespace: {ns}}}\n\
             spec: {{serviceAccountName: alpha, terminationGracePeriodSeconds: 0, containers: [{{name: c, \
             image: weft.local/testapp:dev, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}}]}}\n"
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &pod);
        assert!(applied.success, "{}", applied.stderr);
        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let uid = pods.get("holder").await.unwrap().metadata.uid.unwrap();
        let bound = token(
            &ns,
            "alpha",
            &["--audience", "weft.dev/identity", "--bound-object-kind", "Pod", "--bound-object-name", "holder",
              "--bound-object-uid", &uid],
        );
        ask(&svc, &alpha, &bound).await.expect("the pod-bound token works while the pod exists");
        pods.delete("holder", &DeleteParams::default().grace_period(0)).await.unwrap();
        eventually("the pod to be gone", Duration::from_secs(60), || {
            let pods = pods.clone();
            async move {
                match pods.get_opt("holder").await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        // The API server caches a successful token review for 10 seconds.
        let svc = &svc;
        let bound = &bound;
        let alpha = &alpha;
        let err = eventually("the deleted pod's token to be refused", Duration::from_secs(60), || async move {
            match ask(svc, alpha, bound).await {
                Ok(_) => Err("still accepted".to_string()),
                Err(status) => Ok(status),
            }
        })
        .await;
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    })
    .await;
}
