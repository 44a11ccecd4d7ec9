//! Mutual TLS between proxies: TLS 1.3 only, the workload certificate on both sides,
//! the SPIFFE identity discovery gave checked on the server's certificate, and the
//! client's identity recorded by the server.
//!
//! A SPIFFE id is a URI, and TLS names servers with DNS names, so the client sends an
//! SNI derived from the identity it expects ([`sni_of`]:
//! `<sa>.<ns>.serviceaccount.identity.weft.<trust-domain>`). The inbound side uses it
//! to tell a peer proxy's mTLS from an application's own TLS (which it forwards
//! untouched), and the client's verifier turns it back into the SPIFFE id the server's
//! certificate must carry.
//!
//! Configs are rebuilt when the certificate renews (new handshakes use the new one at
//! once; open connections keep theirs), and the trust bundle comes with each renewal.

use std::{
    io,
    sync::{Arc, Mutex},
};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{ParsedCertificate, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::{io::AsyncRead, io::AsyncWrite, sync::watch};
use weft_proxy_api::SpiffeId;

use crate::identity::Credentials;

/// ALPN of a TCP connection carried as-is between proxies.
pub const ALPN_TCP: &[u8] = b"weft.dev/tcp";
/// ALPN of HTTP between proxies, in the version the application spoke (HTTP/1, or
/// HTTP/2 with prior knowledge): the server proxy serves it request by request.
pub const ALPN_HTTP: &[u8] = b"weft.dev/http";

/// The SNI a client sends to reach a proxy with SPIFFE id `identity`, or `None` when
/// the identity is not a `spiffe://<td>/ns/<ns>/sa/<sa>` id that makes a DNS name.
pub fn sni_of(identity: &str) -> Option<String> {
    let rest = identity.strip_prefix("spiffe://")?;
    let (trust_domain, path) = rest.split_once('/')?;
    let path = path.strip_prefix("ns/")?;
    let (namespace, sa) = path.split_once("/sa/")?;
    if namespace.is_empty() || sa.is_empty() || namespace.contains('.') || sa.contains('/') {
        return None;
    }
    let name = format!("{sa}.{namespace}.serviceaccount.identity.weft.{trust_domain}");
    ServerName::try_from(name.clone()).ok().map(|_| name)
}

/// The SPIFFE id an SNI made by [`sni_of`] stands for.
pub fn identity_of_sni(sni: &str) -> Option<String> {
    let (left, trust_domain) = sni.split_once(".serviceaccount.identity.weft.")?;
    // A namespace has no dots; a ServiceAccount name may.
    let (sa, namespace) = left.rsplit_once('.')?;
    Some(SpiffeId::new(trust_domain, namespace, sa).to_string())
}

/// The SPIFFE id (URI SAN) of a DER certificate.
pub fn spiffe_id_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
            Some((*uri).to_string())
        }
        _ => None,
    })
}

/// The proxy's TLS, following its credentials. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    credentials: watch::Receiver<Option<Credentials>>,
    cache: Arc<Mutex<Option<Configs>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Configs {
    key: Arc<CertifiedKey>,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// The SNI peers use to reach this proxy.
    sni: Option<String>,
}

/// A TLS connection a peer proxy opened, terminated here.
#[derive(Debug)]
pub struct Accepted<I> {
    pub stream: tokio_rustls::server::TlsStream<I>,
    /// The client proxy's SPIFFE id.
    pub client_id: String,
    /// The ALPN protocol agreed: [`ALPN_TCP`] or [`ALPN_HTTP`].
    pub alpn: Option<Vec<u8>>,
}

impl Tls {
    pub fn new(credentials: watch::Receiver<Option<Credentials>>) -> Self {
        Self {
            credentials,
            cache: Arc::default(),
        }
    }

    /// The configs for the current credentials, rebuilt after a renewal; `None` before
    /// the first certificate.
    fn configs(&self) -> Option<Configs> {
        let credentials = self.credentials.borrow().clone()?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(configs) = cache.as_ref()
            && Arc::ptr_eq(&configs.key, &credentials.key)
        {
            return Some(configs.clone());
        }
        match build(&credentials) {
            Ok(configs) => {
                *cache = Some(configs.clone());
                Some(configs)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot build TLS configs from the credentials");
                None
            }
        }
    }

    /// The SNI a peer proxy sends to reach this one.
    pub fn own_sni(&self) -> Option<String> {
        self.configs()?.sni
    }

    /// Opens mTLS over `io` to a proxy that must present `identity`, offering `alpn`.
    pub async fn connect<I: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: I,
        identity: &str,
        alpn: &[u8],
    ) -> io::Result<tokio_rustls::client::TlsStream<I>> {
        let configs = self
            .configs()
            .ok_or_else(|| io::Error::other("no workload certificate yet"))?;
        let sni = sni_of(identity)
            .ok_or_else(|| io::Error::other(format!("{identity:?} is not a SPIFFE id")))?;
        let name = ServerName::try_from(sni).map_err(io::Error::other)?;
        let mut config = (*configs.client).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, io)
            .await
    }

    /// Terminates mTLS from a peer proxy over `io` (whose ClientHello named this
    /// proxy), returning the stream and the client's identity.
    pub async fn accept<I: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: I,
    ) -> io::Result<Accepted<I>> {
        let configs = self
            .configs()
            .ok_or_else(|| io::Error::other("no workload certificate yet"))?;
        let stream = tokio_rustls::TlsAcceptor::from(configs.server)
            .accept(io)
            .await?;
        let client_id = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| spiffe_id_of(cert.as_ref()))
            .ok_or_else(|| io::Error::other("the client certificate has no SPIFFE id"))?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        Ok(Accepted {
            stream,
            client_id,
            alpn,
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(credentials: &Credentials) -> Result<Configs, rustls::Error> {
    let provider = provider();
    let roots = credentials.roots.clone();
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            credentials.key.clone(),
        )));
    server.alpn_protocols = vec![ALPN_TCP.to_vec(), ALPN_HTTP.to_vec()];
    let verifier = Arc::new(SpiffeVerifier {
        roots,
        algorithms: provider.signature_verification_algorithms,
    });
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            credentials.key.clone(),
        )));
    let own = credentials
        .key
        .end_entity_cert()
        .ok()
        .and_then(|cert| spiffe_id_of(cert.as_ref()));
    Ok(Configs {
        key: credentials.key.clone(),
        client: Arc::new(client),
        server: Arc::new(server),
        sni: own.as_deref().and_then(sni_of),
    })
}

/// Verifies a peer proxy's certificate: a chain to the trust bundle, and the SPIFFE id
/// the SNI stands for.
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let ServerName::DnsName(name) = server_name else {
            return Err(CertificateError::NotValidForName.into());
        };
        let expected = identity_of_sni(name.as_ref()).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ))?;
        match spiffe_id_of(end_entity.as_ref()) {
            Some(id) if id == expected => Ok(ServerCertVerified::assertion()),
            _ => Err(CertificateError::NotValidForName.into()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_and_its_sni_map_both_ways() {
        let id = "spiffe://cluster.local/ns/shop/sa/web.v2";
        let sni = sni_of(id).unwrap();
        assert_eq!(
            sni,
            "web.v2.shop.serviceaccount.identity.weft.cluster.local"
        );
        assert_eq!(identity_of_sni(&sni).as_deref(), Some(id));
        assert_eq!(sni_of("spiffe://cluster.local/other"), None);
        assert_eq!(sni_of("https://x/ns/a/sa/b"), None);
        assert_eq!(identity_of_sni("example.com"), None);
    }
}
