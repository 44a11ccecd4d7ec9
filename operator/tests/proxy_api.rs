//! The proxy API server in-process, over real sockets and TLS: the Certify path a
//! proxy takes, a client that does not trust the operator, and malformed gRPC that must
//! be refused without disturbing anyone else.

use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use time::OffsetDateTime;
use tonic::Code;
use weft_operator::identity::{
    Ca,
    test_util::{TestProxyApi, csr, proxy_api},
};
use weft_proxy::{config::ControlAddr, identity::CertifyError};
use weft_proxy_api::v1::{CertifyRequest, identity_client::IdentityClient};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

struct Server {
    control: ControlAddr,
    bundle: String,
    api: TestProxyApi,
}

async fn start() -> Server {
    let api = proxy_api().await.ready().await;
    Server {
        control: api.control(),
        bundle: api.bundle.clone(),
        api,
    }
}

/// `what`, failing the test if it takes longer than 10 s.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

async fn certify(server: &Server, token: &str) -> Result<(), tonic::Status> {
    within("Certify", async {
        let channel = weft_proxy::identity::connect(&server.control, &server.bundle)
            .await
            .expect("a channel to the proxy API");
        IdentityClient::new(channel)
            .certify(CertifyRequest {
                identity: WEB.into(),
                token: token.into(),
                csr: csr(WEB),
            })
            .await
            .map(|_| ())
    })
    .await
}

/// Sends `body` as a raw gRPC request to Certify and returns its grpc-status.
async fn raw_certify(server: &Server, body: &'static [u8]) -> String {
    within("a raw Certify call", raw_certify_unbounded(server, body)).await
}

async fn raw_certify_unbounded(server: &Server, body: &'static [u8]) -> String {
    let channel = weft_proxy::identity::connect(&server.control, &server.bundle)
        .await
        .expect("a channel to the proxy API");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://localhost:{}/weft.proxy.v1.Identity/Certify",
            server.control.port
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from_static(body))))
        .expect("a request");
    let response = tower::ServiceExt::oneshot(channel, request)
        .await
        .expect("a response");
    let in_headers = response.headers().get("grpc-status").cloned();
    let collected = response.into_body().collect().await.expect("a body");
    let trailers = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned());
    in_headers
        .or(trailers)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_proxy_is_certified_over_tls() {
    let server = start().await;
    certify(&server, "shop/web").await.unwrap();
    let err = certify(&server, "shop/admin").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = certify(&server, "").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let text = server.api.metrics.encode();
    assert!(
        text.contains("weft_operator_certificates_issued_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_anchor_cannot_connect() {
    let server = start().await;
    let stranger = Ca::generate_anchor(
        "cluster.local",
        Duration::from_secs(3600),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let refused = within(
        "a connection trusting another anchor",
        weft_proxy::identity::connect(&server.control, stranger.cert_pem()),
    )
    .await
    .expect_err("a client trusting another anchor connects");
    // Refused by the client's verification of the server's certificate, not by a
    // server that is not there: the proxy's error carries the TLS cause. The stranger
    // anchor has the mesh anchor's name, so the verifier takes it for the issuer and
    // the signature does not verify...
    assert!(
        matches!(&refused, CertifyError::Connect { reason, .. }
            if reason.contains("invalid peer certificate: BadSignature")),
        "{refused}"
    );
    // ...which a bare handshake shows as the typed rustls error...
    let failed = handshake(&server, stranger.cert_pem())
        .await
        .expect_err("a handshake trusting another anchor succeeds");
    assert_eq!(
        failed
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(&rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadSignature
        )),
        "{failed}"
    );
    // ...while a client trusting the anchor connects to the same server.
    handshake(&server, &server.bundle)
        .await
        .expect("a handshake trusting the anchor");
    within(
        "a connection trusting the anchor",
        weft_proxy::identity::connect(&server.control, &server.bundle),
    )
    .await
    .expect("a client trusting the anchor connects");
}

/// A TLS 1.3 handshake with the server as `localhost`, trusting `bundle` only.
async fn handshake(server: &Server, bundle: &str) -> std::io::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for der in weft_operator::identity::ca::pem_blocks(bundle, "CERTIFICATE") {
        roots.add(der.into()).expect("a trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.control.port))
        .await
        .expect("the server accepts");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    within(
        "a TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map(drop)
}

#[tokio::test]
async fn malformed_grpc_is_refused_and_the_server_carries_on() {
    let server = start().await;
    // A frame that announces 100 bytes and carries 3.
    let truncated = raw_certify(&server, &[0, 0, 0, 0, 100, 1, 2, 3]).await;
    assert!(
        !truncated.is_empty() && truncated != "0",
        "grpc-status {truncated:?}"
    );
    // A whole frame whose bytes are not a CertifyRequest.
    let garbage = raw_certify(&server, &[0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await;
    assert!(
        !garbage.is_empty() && garbage != "0",
        "grpc-status {garbage:?}"
    );
    // An empty request decodes to empty fields and is refused for them.
    let empty = raw_certify(&server, &[0, 0, 0, 0, 0]).await;
    assert_eq!(empty, (Code::InvalidArgument as i32).to_string());
    // Everyone else is still served.
    certify(&server, "shop/web").await.unwrap();
}
