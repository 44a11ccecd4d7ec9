//! The installed operator's proxy API as a client on this host reaches it: the Service
//! `weft-proxy-api` in `weft-system`, TLS on port 8090, dialled at its ClusterIP
//! (kube-proxy on this host routes ClusterIPs) with the server name its certificate
//! carries, and verified against the trust bundle the operator publishes in meshed
//! namespaces. A proxy dials the same Service by its DNS name; this host has no cluster
//! DNS, hence the address from kubectl and the name given to TLS apart.
//!
//! A workload certificate is obtained as a proxy obtains it: a P-256 key made in memory,
//! a CSR for the SPIFFE id, and a `Certify` call with a ServiceAccount token that
//! `kubectl create token` made.
//!
//! The TLS client is tonic's (rustls with ring, the `tls-ring` feature that the
//! operator, a dev-dependency of these tests, turns on).

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::{net::IpAddr, time::Duration};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use tonic::{
    Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use weft_e2e::kubectl_ok;
use weft_proxy_api::v1::{CertifyRequest, CertifyResponse, identity_client::IdentityClient};

/// The name the operator's serving certificate carries for the proxy API (it also
/// carries the same name with the cluster domain).
pub const SERVER_NAME: &str = "weft-proxy-api.weft-system.svc";
pub const PORT: u16 = 8090;
/// The longest a connection or a call may take before the test fails as hung.
pub const CALL: Duration = Duration::from_secs(30);

/// The ClusterIP of the proxy API's Service.
pub fn service_ip() -> IpAddr {
    let ip = kubectl_ok(&[
        "get",
        "service",
        "weft-proxy-api",
        "-n",
        "weft-system",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    ip.trim()
        .parse()
        .unwrap_or_else(|e| panic!("the proxy API's ClusterIP {ip:?}: {e}"))
}

/// The trust bundle the operator published in `ns` now (a proxy re-reads its mounted
/// copy before every call too).
pub fn bundle(ns: &str) -> String {
    let bundle = kubectl_ok(&[
        "get",
        "configmap",
        "weft-trust-bundle",
        "-n",
        ns,
        "-o",
        r"jsonpath={.data.ca-bundle\.pem}",
    ]);
    assert!(
        bundle.contains("BEGIN CERTIFICATE"),
        "no bundle in {ns}: {bundle:?}"
    );
    bundle
}

/// A TLS channel to the installed proxy API, verifying it against `bundle`, presenting
/// `client` when given.
pub async fn channel(
    bundle: &str,
    client: Option<&WorkloadCertificate>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .domain_name(SERVER_NAME)
        .ca_certificate(Certificate::from_pem(bundle));
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(&client.chain_pem, &client.key_pem));
    }
    let endpoint = Endpoint::from_shared(format!("https://{}:{PORT}", service_ip()))
        .expect("a valid URI")
        .tls_config(tls)?
        .connect_timeout(CALL);
    let connect = endpoint.connect();
    tokio::time::timeout(CALL + Duration::from_secs(5), connect)
        .await
        .unwrap_or_else(|_| panic!("connecting to the proxy API hung for {CALL:?}"))
}

/// [`channel`], failing the test when it cannot connect.
pub async fn connect(bundle: &str, client: Option<&WorkloadCertificate>) -> Channel {
    channel(bundle, client).await.unwrap_or_else(|e| {
        panic!("cannot connect to the installed proxy API ({SERVER_NAME}:{PORT}): {e:?}")
    })
}

/// `kubectl create token SA -n NS EXTRA...`.
pub fn token(ns: &str, sa: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", "token", sa, "-n", ns];
    args.extend_from_slice(extra);
    kubectl_ok(&args).trim().to_string()
}

/// One `Certify` call; a call that does not answer within [`CALL`] fails the test.
pub async fn certify(
    channel: &Channel,
    identity: &str,
    token: &str,
    csr: Vec<u8>,
) -> Result<CertifyResponse, Status> {
    let request = CertifyRequest {
        identity: identity.into(),
        token: token.into(),
        csr,
    };
    let call = async { IdentityClient::new(channel.clone()).certify(request).await };
    tokio::time::timeout(CALL, call)
        .await
        .unwrap_or_else(|_| panic!("Certify for {identity} did not answer within {CALL:?}"))
        .map(tonic::Response::into_inner)
}

/// A workload certificate and its key, in PEM.
#[derive(Clone, Debug)]
pub struct WorkloadCertificate {
    pub identity: String,
    /// The leaf first, then the intermediates.
    pub chain_pem: String,
    pub key_pem: String,
}

/// A P-256 key and a DER CSR for `identity`, as a proxy makes them.
pub fn key_and_csr(identity: &str) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
    let mut params = CertificateParams::default();
    let uri = identity.to_string().try_into().expect("a URI SAN");
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .expect("a CSR")
        .der()
        .to_vec();
    (key, csr)
}

/// A workload certificate for `ns/sa` from the installed operator's `Certify`, with a
/// token for the identity audience.
pub async fn workload_certificate(channel: &Channel, ns: &str, sa: &str) -> WorkloadCertificate {
    let identity = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    let token = token(
        ns,
        sa,
        &["--audience", weft_proxy_api::IDENTITY_TOKEN_AUDIENCE],
    );
    let (key, csr) = key_and_csr(&identity);
    let response = certify(channel, &identity, &token, csr)
        .await
        .unwrap_or_else(|e| panic!("{identity} is not certified: {e:?}"));
    let mut chain_pem = pem("CERTIFICATE", &response.leaf_certificate);
    for der in &response.intermediate_certificates {
        chain_pem.push_str(&pem("CERTIFICATE", der));
    }
    WorkloadCertificate {
        identity,
        chain_pem,
        key_pem: key.serialize_pem(),
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `der` as a PEM block labelled `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let mut text = String::new();
    for chunk in der.chunks(3) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(BASE64[(bits >> (18 - 6 * i)) as usize & 63]));
            } else {
                text.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The claims of a JWT (its payload, base64url without padding), unverified.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {token:.20}..."));
    let mut bytes = Vec::new();
    let (mut bits, mut count) = (0u32, 0);
    for c in payload.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {payload}"),
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
        }
    }
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("the JWT's claims: {e}"))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}
