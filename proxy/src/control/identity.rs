//! The proxy's identity: a key made in memory, a certificate from the operator.
//!
//! At start the proxy makes an ECDSA P-256 key (never written anywhere), sends a CSR for
//! its SPIFFE id with its projected ServiceAccount token to `Certify`, and holds the
//! certificate it gets back. It asks again at 70% of the certificate's life, and after a
//! failure retries with jittered exponential backoff, keeping the certificate it has
//! meanwhile. The trust bundle is re-read from its mounted file on every call, so a
//! rotated bundle is picked up without a restart.

use std::{sync::Arc, time::Duration};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName},
    sign::CertifiedKey,
};
use tokio::sync::watch;
use weft_proxy_api::v1::{CertifyRequest, identity_client::IdentityClient};

use crate::{config::ControlAddr, metrics::Metrics, state::Readiness};

/// The first retry delay after a failed certification; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The share of a certificate's life after which it is renewed.
const RENEW_AT: f64 = 0.7;
/// How long one Certify call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The proxy's current certificate and key, ready for TLS, and the trust bundle it
/// was certified with.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub key: Arc<CertifiedKey>,
    pub not_after_unix: i64,
    pub roots: Arc<RootCertStore>,
}

impl Credentials {
    /// Credentials from PEM: a certificate chain (leaf first), its PKCS#8 key, and the
    /// trust bundle.
    pub fn from_pem(
        chain: &str,
        key: &str,
        bundle: &str,
        not_after_unix: i64,
    ) -> Result<Self, CertifyError> {
        use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
        let chain = pem_certificates(chain);
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| CertifyError::BadResponse(format!("the key: {e}")))?;
        let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&key)?;
        Ok(Self {
            key: Arc::new(CertifiedKey::new(chain, signing_key)),
            not_after_unix,
            roots: Arc::new(roots_of(bundle)?),
        })
    }
}

/// The roots of a PEM trust bundle; an error when it holds none.
fn roots_of(bundle: &str) -> Result<RootCertStore, CertifyError> {
    let mut roots = RootCertStore::empty();
    for der in pem_certificates(bundle) {
        let _ = roots.add(der);
    }
    if roots.is_empty() {
        return Err(CertifyError::EmptyBundle(
            bundle.lines().next().unwrap_or_default().to_string(),
        ));
    }
    Ok(roots)
}

/// Why a certification failed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the trust bundle {0} holds no usable certificate")]
    EmptyBundle(String),
    #[error("cannot make a key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot reach the operator at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the operator refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the operator's answer is unusable: {0}")]
    BadResponse(String),
    #[error("the call timed out after {0:?}")]
    Timeout(Duration),
}

/// What certification needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub identity: String,
    pub token_file: String,
    pub trust_bundle_file: String,
    pub control: ControlAddr,
}

/// Keeps the proxy certified until the process ends.
pub async fn run(
    settings: Settings,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    credentials: watch::Sender<Option<Credentials>>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let wait = match certify(&settings).await {
            Ok(creds) => {
                let now = unix_now();
                let life = (creds.not_after_unix - now).max(0) as f64;
                metrics.certified(creds.not_after_unix);
                tracing::info!(identity = %settings.identity, not_after = creds.not_after_unix, "certified");
                credentials.send_replace(Some(creds));
                readiness.set_identity(true);
                backoff = MIN_BACKOFF;
                Duration::from_secs_f64(life * RENEW_AT)
            }
            Err(error) => {
                metrics.certify_failed();
                let expired = credentials
                    .borrow()
                    .as_ref()
                    .is_none_or(|c| c.not_after_unix <= unix_now());
                if expired {
                    readiness.set_identity(false);
                }
                tracing::warn!(%error, retry_in = ?backoff, "certification failed");
                let wait = jitter(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One certification: a fresh key, a CSR, a `Certify` call.
pub async fn certify(settings: &Settings) -> Result<Credentials, CertifyError> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|source| CertifyError::Read {
            path: path.to_string(),
            source,
        })
    };
    let token = read(&settings.token_file)?;
    let bundle = read(&settings.trust_bundle_file)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(settings.identity.clone().try_into()?)];
    let csr = params.serialize_request(&key)?.der().to_vec();

    let request = CertifyRequest {
        identity: settings.identity.clone(),
        token: token.trim().to_string(),
        csr,
    };
    let response = tokio::time::timeout(CALL_TIMEOUT, async {
        let mut client = IdentityClient::new(connect(&settings.control, &bundle).await?);
        Ok::<_, CertifyError>(client.certify(request).await?.into_inner())
    })
    .await
    .map_err(|_| CertifyError::Timeout(CALL_TIMEOUT))??;

    let mut chain = vec![CertificateDer::from(response.leaf_certificate)];
    chain.extend(
        response
            .intermediate_certificates
            .into_iter()
            .map(CertificateDer::from),
    );
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&key_der)?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| CertifyError::BadResponse(e.to_string()))?;
    Ok(Credentials {
        key: Arc::new(certified),
        not_after_unix: response.valid_until_unix_seconds,
        roots: Arc::new(roots_of(&bundle)?),
    })
}

/// A TLS 1.3 gRPC channel to the operator at `control`, verifying its certificate
/// against the PEM trust `bundle` and the host name.
pub async fn connect(
    control: &ControlAddr,
    bundle: &str,
) -> Result<tonic::transport::Channel, CertifyError> {
    connect_as(control, bundle, None).await
}

/// Like [`connect`], presenting `client` (the proxy's workload certificate) for the
/// mutual-TLS streams of the proxy API.
pub async fn connect_as(
    control: &ControlAddr,
    bundle: &str,
    client: Option<Arc<CertifiedKey>>,
) -> Result<tonic::transport::Channel, CertifyError> {
    let roots = roots_of(bundle)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match client {
        Some(key) => {
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)))
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let server_name =
        ServerName::try_from(control.host.clone()).map_err(|e| CertifyError::Connect {
            addr: control.host.clone(),
            reason: e.to_string(),
        })?;
    let addr = format!("{}:{}", control.host, control.port);
    let connect_err = |reason: String| CertifyError::Connect {
        addr: addr.clone(),
        reason,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| connect_err(e.to_string()))?;
    let target = addr.clone();
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, server_name, target) =
                (connector.clone(), server_name.clone(), target.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| connect_err(format!("{e}: {}", source_chain(&e))))
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut source = error.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out.join(": ")
}

/// Every certificate in a PEM bundle.
fn pem_certificates(bundle: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(bundle.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `base` plus up to half of it again, at random, so restarted proxies spread out.
pub(crate) fn jitter(base: Duration) -> Duration {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut byte = [0u8; 1];
    let _ = SystemRandom::new().fill(&mut byte);
    base + base.mul_f64(f64::from(byte[0]) / 510.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_adds_at_most_half() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(10) && j <= Duration::from_secs(15),
                "{j:?}"
            );
        }
    }

    #[test]
    fn pem_bundles_yield_every_certificate_and_skip_garbage() {
        assert!(pem_certificates("").is_empty());
        assert!(pem_certificates("not pem").is_empty());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::default()
            .self_signed(&key)
            .unwrap()
            .pem();
        assert_eq!(pem_certificates(&format!("{cert}{cert}")).len(), 2);
    }
}
