//! The installed operator's `Certify` (Service `weft-proxy-api`, TLS), as a proxy calls
//! it: real ServiceAccount tokens from `kubectl create token`, checked by the operator
//! with real TokenReviews. A token for the identity audience gets a certificate for its
//! own ServiceAccount that verifies against the published bundle; another
//! ServiceAccount, another audience, garbage and a token whose pod was deleted are
//! refused with the code the operator uses for each.

mod proxy_api;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::DeleteParams};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, UnixTime, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tonic::Code;
use weft_e2e::{eventually, kubectl_ok, kubectl_stdin, mesh_namespace, with_temp_ns};
use weft_operator::identity::test_util::csr;

use proxy_api::{certify, connect, token};

#[tokio::test]
async fn tokens_are_checked_by_the_api_server() {
    with_temp_ns("certify", |client, ns| async move {
        let bundle = mesh_namespace(&client, &ns).await;
        kubectl_ok(&["create", "serviceaccount", "alpha", "-n", &ns]);
        kubectl_ok(&["create", "serviceaccount", "beta", "-n", &ns]);
        let channel = connect(&bundle, None).await;
        let ask = |identity: String, token: String| {
            let channel = channel.clone();
            async move {
                let csr = csr(&identity);
                certify(&channel, &identity, &token, csr).await
            }
        };

        let alpha = format!("spiffe://cluster.local/ns/{ns}/sa/alpha");
        let beta = format!("spiffe://cluster.local/ns/{ns}/sa/beta");
        let alpha_token = token(&ns, "alpha", &["--audience", "weft.dev/identity"]);

        // A token for alpha gets a certificate for alpha that verifies against the bundle.
        let resp = ask(alpha.clone(), alpha_token.clone())
            .await
            .expect("alpha is certified");
        assert_eq!(
            weft_proxy::tls::spiffe_id_of(&resp.leaf_certificate).as_deref(),
            Some(alpha.as_str()),
            "the leaf names alpha"
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for anchor in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(anchor.expect("a PEM certificate")).expect("an anchor");
        }
        assert!(!roots.is_empty(), "the bundle holds anchors: {bundle}");
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        let intermediates: Vec<_> = resp
            .intermediate_certificates
            .iter()
            .cloned()
            .map(CertificateDer::from)
            .collect();
        verifier
            .verify_client_cert(
                &CertificateDer::from(resp.leaf_certificate.clone()),
                &intermediates,
                UnixTime::now(),
            )
            .expect("the leaf verifies against the published bundle");

        // The same token asking for beta is refused.
        let err = ask(beta.clone(), alpha_token.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");

        // A token for another audience is refused.
        let wrong_audience = token(&ns, "alpha", &["--audience", "some-other-service"]);
        let err = ask(alpha.clone(), wrong_audience).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");

        // Garbage is refused.
        let err = ask(alpha.clone(), "not.a.jwt".into()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");

        // A token bound to a pod stops working once the pod is deleted. The pod opts
        // out of injection: it only has to exist.
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: holder, namespace: {ns}, \
             annotations: {{weft.dev/inject: disabled}}}}\n\
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
            &[
                "--audience",
                "weft.dev/identity",
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                "holder",
                "--bound-object-uid",
                &uid,
            ],
        );
        ask(alpha.clone(), bound.clone())
            .await
            .expect("the pod-bound token works while the pod exists");
        pods.delete("holder", &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
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
        // The API server caches a successful token review for 10 seconds; any other
        // answer than a success or that refusal fails at once.
        let err = eventually(
            "the deleted pod's token to be refused",
            Duration::from_secs(60),
            || {
                let ask = ask(alpha.clone(), bound.clone());
                async move {
                    match ask.await {
                        Ok(_) => Err("still accepted".to_string()),
                        Err(status) => Ok(status),
                    }
                }
            },
        )
        .await;
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    })
    .await;
}
