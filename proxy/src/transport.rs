//! How the data plane reaches its peers and is reached by them: a TCP connection
//! within [`CONNECT_TIMEOUT`], and mTLS between proxies opened or terminated within
//! [`HANDSHAKE_TIMEOUT`] ([`crate::tls`] holds the configs and the identity checks).
//!
//! Every failure is counted here, by direction, so the outbound TCP path, the HTTP
//! client and the inbound side count a refused connection or a failed handshake the
//! same way.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{
    metrics::{Direction, Metrics},
    tls::{Accepted, Tls},
};

/// How long connecting to a destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake between proxies may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a TCP connection to `addr`. The proxy's connections to its own application
/// on the pod's address (`inbound`) leave from [`weft_sidecar::PASSTHROUGH_SOURCE`],
/// which the capture rules let through; any other connection of the proxy to its own
/// pod would be sent to its inbound side.
pub(crate) async fn open(addr: SocketAddr, inbound: bool) -> std::io::Result<TcpStream> {
    if !inbound || addr.ip().is_loopback() || addr.is_ipv6() {
        return TcpStream::connect(addr).await;
    }
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(weft_sidecar::PASSTHROUGH_SOURCE.into(), 0))?;
    socket.connect(addr).await
}

/// Connects to `addr`, counting a failure.
pub(crate) async fn connect(
    addr: SocketAddr,
    direction: Direction,
    metrics: &Metrics,
) -> Option<TcpStream> {
    let inbound = direction == Direction::Inbound;
    match tokio::time::timeout(CONNECT_TIMEOUT, open(addr, inbound)).await {
        Ok(Ok(server)) => {
            let _ = server.set_nodelay(true);
            Some(server)
        }
        Ok(Err(error)) => {
            tracing::debug!(%addr, %error, ?direction, "connect failed");
            metrics.tcp_connect_failed(direction);
            None
        }
        Err(_) => {
            tracing::debug!(%addr, ?direction, "connect timed out");
            metrics.tcp_connect_failed(direction);
            None
        }
    }
}

/// Opens mTLS over `tcp` to a proxy that must be `identity`, within
/// [`HANDSHAKE_TIMEOUT`]; a failure is counted.
pub(crate) async fn connect_mtls(
    tls: &Tls,
    tcp: TcpStream,
    identity: &str,
    alpn: &[u8],
    metrics: &Metrics,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let handshake = tls.connect(tcp, identity, alpn);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => Some(stream),
        Err(_) => {
            tracing::debug!(%identity, "mTLS handshake timed out");
            metrics.tls_failed(Direction::Outbound);
            None
        }
        Ok(Err(error)) => {
            tracing::debug!(%identity, %error, "mTLS to the endpoint failed");
            metrics.tls_failed(Direction::Outbound);
            None
        }
    }
}

/// Terminates mTLS from the peer proxy at `peer` over `io`, within
/// [`HANDSHAKE_TIMEOUT`]; a failure is counted.
///
/// The mirror of [`connect_mtls`], kept apart: each side logs the peer it knows (the
/// identity it expects, the address that connected) and counts its own direction.
pub(crate) async fn accept_mtls<I>(
    tls: &Tls,
    io: I,
    peer: SocketAddr,
    metrics: &Metrics,
) -> Option<Accepted<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(io)).await {
        Ok(Ok(accepted)) => Some(accepted),
        Err(_) => {
            tracing::debug!(%peer, "mTLS handshake timed out");
            metrics.tls_failed(Direction::Inbound);
            None
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "mTLS from a peer proxy failed");
            metrics.tls_failed(Direction::Inbound);
            None
        }
    }
}
