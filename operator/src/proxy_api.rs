//! The proxy API server (port 8090): gRPC over TLS 1.3. It serves Certify (the
//! bootstrap), Destination, and Denials (the proxies' denial reports, [`crate::denials`]).
//!
//! The serving certificate is issued by the operator from the current authority, for
//! its own SPIFFE id and the Service's DNS names, so proxies verify it against the trust
//! bundle they already mount ([`crate::serving`]).
//!
//! Each service decodes request messages only up to what its largest legitimate request
//! needs, with margin ([`MAX_CERTIFY_REQUEST_BYTES`],
//! [`MAX_REQUEST_BYTES`](crate::discovery::server::MAX_REQUEST_BYTES) for Destination,
//! [`MAX_REPORT_BYTES`](crate::denials::MAX_REPORT_BYTES) for Denials),
//! far below tonic's default of 4 MiB: tonic refuses a longer message from its length
//! prefix with OUT_OF_RANGE, before buffering it. A connection may have at most
//! [`MAX_CONCURRENT_STREAMS`] HTTP/2 streams in flight.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::ServerConfig;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use weft_proxy_api::v1::{
    denials_server::DenialsServer, destination_server::DestinationServer,
    identity_server::IdentityServer,
};

mod denials;

use self::denials::DenialsService;
use crate::{
    discovery::server::DestinationService,
    identity::{
        CurrentAuthority,
        certify::{Certify, TokenReviewer},
    },
    serving::{ServingCert, ServingIdentity, keep_issued},
};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest Certify request message, in bytes. A legitimate one holds a SPIFFE id
/// (under 600 bytes), a projected ServiceAccount token (a JWT naming the pod, its node
/// and its ServiceAccount: 1 to 2 KiB, under 5 KiB even with long names and a 4096-bit
/// signature) and a P-256 CSR (under 1 KiB): 64 KiB leaves a wide margin for how
/// issuers shape their tokens.
pub const MAX_CERTIFY_REQUEST_BYTES: usize = 64 * 1024;

/// The most HTTP/2 streams one connection may have in flight (its
/// SETTINGS_MAX_CONCURRENT_STREAMS; tonic sets none). Above the Destination service's
/// own per-connection cap, so that a stream beyond that cap is refused with a status
/// that says why, with room for the acknowledgements in flight beside the streams.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Binds `addr` and serves the proxy API until `shutdown` resolves.
pub async fn serve<R: TokenReviewer>(
    addr: SocketAddr,
    authority: CurrentAuthority,
    serving: ServingIdentity,
    certify: Certify<R>,
    destination: DestinationService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    serve_on(listener, authority, serving, certify, destination, shutdown)
}

/// Serves the proxy API on a listener already bound (tests bind port 0 once and keep
/// the port), until `shutdown` resolves; then the listener is closed.
pub fn serve_on<R: TokenReviewer>(
    listener: TcpListener,
    authority: CurrentAuthority,
    serving: ServingIdentity,
    certify: Certify<R>,
    destination: DestinationService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let cert = Arc::new(ServingCert::default());
    tokio::spawn(keep_issued(
        cert.clone(),
        authority.clone(),
        serving,
        "proxy API",
    ));
    let acceptor = Arc::new(RwLock::new(acceptor(&cert, None)?));
    tokio::spawn(keep_trusting(acceptor.clone(), cert, authority));

    // On shutdown: stop accepting (releasing the port), and end the Destination
    // streams so the graceful shutdown completes and proxies reconnect elsewhere.
    let (closing_tx, mut closing) = tokio::sync::watch::channel(false);
    let streams = destination.clone();
    let shutdown = async move {
        shutdown.await;
        streams.stop_streams();
        let _ = closing_tx.send(true);
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = closing.wait_for(|c| *c) => return,
            };
            let Ok((tcp, peer)) = accepted else {
                continue;
            };
            // Small request/response exchanges: never wait on Nagle and delayed ACKs.
            let _ = tcp.set_nodelay(true);
            let Ok(acceptor) = acceptor.read().map(|a| a.clone()) else {
                continue;
            };
            let tx = tx.clone();
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
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .add_service(
            IdentityServer::new(certify).max_decoding_message_size(MAX_CERTIFY_REQUEST_BYTES),
        )
        .add_service(
            DenialsServer::new(DenialsService::new(destination.clone()))
                .max_decoding_message_size(crate::denials::MAX_REPORT_BYTES),
        )
        .add_service(
            DestinationServer::new(destination)
                .max_decoding_message_size(crate::discovery::server::MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown);
    Ok(tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "proxy API server failed");
        }
    }))
}

/// A TLS 1.3 acceptor serving `cert`. With a trust bundle, clients may present a
/// workload certificate, which must chain to it (Destination requires one; Certify,
/// the bootstrap, does not).
fn acceptor(cert: &Arc<ServingCert>, bundle: Option<&str>) -> std::io::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(std::io::Error::other)?;
    let mut roots = rustls::RootCertStore::empty();
    for der in bundle
        .map(|b| crate::identity::ca::pem_blocks(b, "CERTIFICATE"))
        .unwrap_or_default()
    {
        let _ = roots.add(der.into());
    }
    let mut config = if roots.is_empty() {
        builder.with_no_client_auth()
    } else {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(std::io::Error::other)?;
        builder.with_client_cert_verifier(verifier)
    }
    .with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Rebuilds the acceptor whenever the trust bundle changes (anchor rotation).
async fn keep_trusting(
    slot: Arc<RwLock<TlsAcceptor>>,
    cert: Arc<ServingCert>,
    mut authority: CurrentAuthority,
) {
    let mut trusted: Option<String> = None;
    loop {
        let bundle = authority
            .borrow_and_update()
            .as_ref()
            .map(|a| a.bundle_pem().to_string());
        if bundle != trusted {
            match acceptor(&cert, bundle.as_deref()) {
                Ok(new) => {
                    if let Ok(mut current) = slot.write() {
                        *current = new;
                    }
                    trusted = bundle;
                }
                Err(error) => tracing::warn!(%error, "cannot trust the new bundle"),
            }
        }
        if authority.changed().await.is_err() {
            return;
        }
    }
}
