//! The proxy API server (port 8090): gRPC over TLS 1.3.
//!
//! The serving certificate is issued by the operator from the current authority, for
//! its own SPIFFE id and the Service's DNS names, so proxies verify it against the trust
//! bundle they already mount. It is replaced when the issuer changes and well before it
//! expires, without restarting the listener.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    crypto::ring::sign::any_ecdsa_type,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use time::OffsetDateTime;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use weft_proxy_api::v1::identity_server::IdentityServer;

use crate::identity::{
    CurrentAuthority, SpiffeId,
    certify::{Certify, TokenReviewer},
};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the serving certificate is checked for renewal.
const RENEW_CHECK: Duration = Duration::from_secs(30);

/// Who the operator is on the proxy API: its service account and the names proxies
/// dial.
#[derive(Clone, Debug)]
pub struct ServingIdentity {
    pub namespace: String,
    pub service_account: String,
    pub dns_names: Vec<String>,
}

/// The serving certificate of the moment.
#[derive(Debug, Default)]
struct ServingCert(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok()?.clone()
    }
}

/// Binds `addr` and serves the proxy API until `shutdown` resolves.
pub async fn serve<R: TokenReviewer>(
    addr: SocketAddr,
    authority: CurrentAuthority,
    serving: ServingIdentity,
    certify: Certify<R>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let cert = Arc::new(ServingCert::default());
    tokio::spawn(renew_serving_cert(cert.clone(), authority, serving));

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            // Small request/response exchanges: never wait on Nagle and delayed ACKs.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "proxy API handshake failed"),
                    Err(_) => tracing::debug!(%peer, "proxy API handshake timed out"),
                }
            });
        }
    });
    let incoming =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) });
    let server = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(certify))
        .serve_with_incoming_shutdown(incoming, shutdown);
    Ok(tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "proxy API server failed");
        }
    }))
}

/// Keeps `cert` issued by the current authority: at once when the authority changes,
/// and when 70% of the certificate's life has passed.
async fn renew_serving_cert(
    cert: Arc<ServingCert>,
    mut authority: CurrentAuthority,
    serving: ServingIdentity,
) {
    let mut renew_at: Option<OffsetDateTime> = None;
    loop {
        let current = authority.borrow_and_update().clone();
        if let Some(current) = current {
            let due = renew_at.is_none_or(|at| OffsetDateTime::now_utc() >= at);
            if due {
                match issue(&current, &serving) {
                    Ok((key, not_after)) => {
                        if let Ok(mut slot) = cert.0.write() {
                            *slot = Some(key);
                        }
                        let now = OffsetDateTime::now_utc();
                        renew_at = Some(now + (not_after - now) * 0.7);
                        tracing::info!(%not_after, "proxy API serving certificate issued");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot issue the proxy API serving certificate")
                    }
                }
            }
        }
        // Wake at the renewal time; after a failure, retry every RENEW_CHECK.
        let sleep = renew_at
            .and_then(|at| Duration::try_from(at - OffsetDateTime::now_utc()).ok())
            .filter(|left| !left.is_zero())
            .map_or(RENEW_CHECK, |left| left.min(RENEW_CHECK));
        tokio::select! {
            changed = authority.changed() => {
                if changed.is_err() {
                    return;
                }
                renew_at = None;
            }
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

fn issue(
    authority: &crate::identity::Authority,
    serving: &ServingIdentity,
) -> Result<(Arc<CertifiedKey>, OffsetDateTime), String> {
    let id = SpiffeId::new(
        authority.trust_domain(),
        &serving.namespace,
        &serving.service_account,
    )
    .map_err(|e| e.to_string())?;
    let (leaf, key_pem) = authority
        .serving_certificate(&id, &serving.dns_names, OffsetDateTime::now_utc())
        .map_err(|e| e.to_string())?;
    let key_der = crate::identity::ca::first_pem_block(&key_pem, "PRIVATE KEY").ok_or("no key")?;
    let signing_key = any_ecdsa_type(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)))
        .map_err(|e| e.to_string())?;
    let mut chain = vec![CertificateDer::from(leaf.cert_der)];
    chain.extend(authority.chain().into_iter().map(CertificateDer::from));
    Ok((
        Arc::new(CertifiedKey::new(chain, signing_key)),
        leaf.not_after,
    ))
}
