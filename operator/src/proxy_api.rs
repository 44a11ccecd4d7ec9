//! The proxy API server (port 8090): gRPC over TLS 1.3.
//!
//! The serving certificate is issued by the operator from the current authority, for
//! its own SPIFFE id and the Service's DNS names, so proxies verify it against the trust
//! bundle they already mount ([`crate::serving`]).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::ServerConfig;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use weft_proxy_api::v1::identity_server::IdentityServer;

use crate::{
    identity::{
        CurrentAuthority,
        certify::{Certify, TokenReviewer},
    },
    serving::{ServingCert, ServingIdentity, keep_issued},
};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    tokio::spawn(keep_issued(cert.clone(), authority, serving, "proxy API"));

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
