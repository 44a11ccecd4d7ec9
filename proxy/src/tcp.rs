//! Transparent TCP forwarding: the inbound (4143) and outbound (4140) listeners.
//!
//! `weft-proxy init` redirects the pod's captured connections to these ports; the
//! address the peer actually dialled comes back from `SO_ORIGINAL_DST`, and the proxy
//! connects there itself. Its own connections leave under its UID, which the capture
//! rules exclude, so they are not captured again.
//!
//! Today every connection is forwarded as opaque TCP. Protocol detection, mTLS
//! between proxies, balancing and policy are layered on this accept loop by the data
//! plane; the counters here are the `tcp_*` family Linkerd's dashboards read.
//!
//! A connection made straight to a listener (not redirected) has itself as its
//! original destination; forwarding it would loop, so it is closed at once.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

use crate::{
    discovery::Discovery,
    metrics::{Direction, Metrics},
};

/// How long connecting to the original destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One listening side of the proxy.
#[derive(Debug)]
pub struct Forwarder {
    direction: Direction,
    listener: TcpListener,
    local: SocketAddr,
    discovery: Option<Discovery>,
}

impl Forwarder {
    /// Binds the `direction` listener on `addr`.
    pub async fn bind(direction: Direction, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok(Self {
            direction,
            listener,
            local,
            discovery: None,
        })
    }

    /// Outbound connections resolve their destination through `discovery`.
    pub fn with_discovery(mut self, discovery: Option<Discovery>) -> Self {
        if self.direction == Direction::Outbound {
            self.discovery = discovery;
        }
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Accepts and forwards until `shutdown` turns true; the task then waits for the
    /// connections in flight to finish (the caller bounds that with the grace period).
    pub fn spawn(
        self,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let in_flight = Arc::new(());
            loop {
                let accepted = tokio::select! {
                    accepted = self.listener.accept() => accepted,
                    _ = shutdown.wait_for(|stop| *stop) => break,
                };
                let (client, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(%error, direction = ?self.direction, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (metrics, guard) = (metrics.clone(), in_flight.clone());
                let (direction, local) = (self.direction, self.local);
                let discovery = self.discovery.clone();
                tokio::spawn(async move {
                    forward(direction, local, client, peer, &metrics, discovery.as_ref()).await;
                    drop(guard);
                });
            }
            drop(self.listener);
            while Arc::strong_count(&in_flight) > 1 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

/// Forwards one accepted connection to where it was headed.
async fn forward(
    direction: Direction,
    local: SocketAddr,
    mut client: TcpStream,
    peer: SocketAddr,
    metrics: &Metrics,
    discovery: Option<&Discovery>,
) {
    let target = match original_dst(&client) {
        Ok(target) if is_self(target, local) => {
            tracing::debug!(%peer, %target, ?direction, "not redirected: refusing a loop");
            return;
        }
        Ok(target) => target,
        Err(error) => {
            tracing::debug!(%peer, %error, ?direction, "no original destination");
            return;
        }
    };
    if let Some(discovery) = discovery {
        // Resolution on first use. The connection still goes where it was headed:
        // endpoint selection and mTLS between proxies build on this resolution.
        discovery.resolve(&target.to_string());
    }
    let _ = client.set_nodelay(true);
    let started = Instant::now();
    let mut server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(server)) => server,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %target, %error, ?direction, "connect failed");
            metrics.tcp_connect_failed(direction);
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, %target, ?direction, "connect timed out");
            metrics.tcp_connect_failed(direction);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    metrics.tcp_opened(direction);
    let (from_client, from_server) =
        match tokio::io::copy_bidirectional(&mut client, &mut server).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::debug!(%peer, %target, %error, ?direction, "connection reset");
                (0, 0)
            }
        };
    let _ = client.shutdown().await;
    metrics.tcp_closed(direction, from_client, from_server);
    tracing::trace!(%peer, %target, ?direction, elapsed = ?started.elapsed(), "closed");
}

/// Where a redirected connection was going, from `SO_ORIGINAL_DST`.
fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}

/// Whether `target` is the listener itself: the connection was not redirected.
fn is_self(target: SocketAddr, local: SocketAddr) -> bool {
    target.port() == local.port() && (local.ip().is_unspecified() || target.ip() == local.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_to_the_listener_itself_is_a_loop() {
        let any: SocketAddr = "0.0.0.0:4143".parse().unwrap();
        assert!(is_self("198.18.0.7:4143".parse().unwrap(), any));
        assert!(!is_self("198.18.0.7:8080".parse().unwrap(), any));
        let lo: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        assert!(is_self(lo, lo));
        assert!(!is_self("198.19.0.10:4140".parse().unwrap(), lo));
    }

    #[tokio::test]
    async fn an_unredirected_connection_is_closed_without_forwarding() {
        let metrics = Arc::new(Metrics::new());
        let forwarder = Forwarder::bind(Direction::Outbound, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = forwarder.local_addr();
        let (_stop, shutdown) = watch::channel(false);
        forwarder.spawn(metrics.clone(), shutdown);
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "closed, got {read:?}");
        assert!(
            !metrics
                .encode()
                .contains("tcp_open_total{direction=\"outbound\"} 1")
        );
    }
}
