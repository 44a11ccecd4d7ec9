//! Connections to endpoints, kept for the next request: HTTP/1 ones one request at a
//! time (at most [`MAX_IDLE_PER_ENDPOINT`] idle per endpoint, a connection still busy
//! with a response skipped, never shared), HTTP/2 one per endpoint with its requests
//! multiplexed on it.

use std::{collections::HashMap, net::SocketAddr, sync::Mutex};

use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{TrySendError, http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Body, Version};

/// The most idle connections kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 32;
/// The most endpoints whose connections are kept.
const MAX_POOLED_ENDPOINTS: usize = 1024;

/// A connection to an endpoint, ready to carry requests.
pub(super) enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    /// Sends `request`; on failure, the request comes back if it was not sent.
    pub(super) async fn send(
        &mut self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        match self {
            Self::Http1(sender) => sender.try_send_request(request).await,
            Self::Http2(sender) => sender.try_send_request(request).await,
        }
    }
}

/// Connections to endpoints, for reuse. Shared by every client connection.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>,
    multiplexed: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// A connection to `addr` in `version` ready for a request, if one is kept.
    pub(super) fn checkout(&self, addr: SocketAddr, version: Version) -> Option<Sender> {
        if version == Version::Http2 {
            let mut multiplexed = self.multiplexed.lock().unwrap_or_else(|e| e.into_inner());
            let sender = multiplexed.get(&addr)?;
            if sender.is_closed() {
                multiplexed.remove(&addr);
                return None;
            }
            return Some(Sender::Http2(sender.clone()));
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let senders = idle.get_mut(&addr)?;
        senders.retain(|s| !s.is_closed());
        let ready = senders.iter().position(http1::SendRequest::is_ready)?;
        Some(Sender::Http1(senders.swap_remove(ready)))
    }

    /// Keeps `sender` for the next request to `addr` (an HTTP/1 one becomes ready
    /// once the response in flight on it is done).
    pub(super) fn checkin(&self, addr: SocketAddr, sender: Sender) {
        match sender {
            Sender::Http1(sender) => {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() >= MAX_POOLED_ENDPOINTS && !idle.contains_key(&addr) {
                    idle.clear();
                }
                let senders = idle.entry(addr).or_default();
                senders.retain(|s| !s.is_closed());
                if senders.len() < MAX_IDLE_PER_ENDPOINT {
                    senders.push(sender);
                }
            }
            Sender::Http2(sender) => {
                let mut multiplexed = self.multiplexed.lock().unwrap_or_else(|e| e.into_inner());
                if multiplexed.len() >= MAX_POOLED_ENDPOINTS && !multiplexed.contains_key(&addr) {
                    multiplexed.clear();
                }
                multiplexed.insert(addr, sender);
            }
        }
    }
}

/// Starts an HTTP connection in `version` on `io`, driven by a task of its own.
pub(super) async fn handshake<I>(io: I, version: Version) -> Option<Sender>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let started = match version {
        Version::Http1 => http1::handshake(io).await.map(|(sender, connection)| {
            tokio::spawn(async move {
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%error, "HTTP/1 connection to the endpoint ended");
                }
            });
            Sender::Http1(sender)
        }),
        Version::Http2 => {
            http2::handshake(TokioExecutor::new(), io)
                .await
                .map(|(sender, connection)| {
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%error, "HTTP/2 connection to the endpoint ended");
                        }
                    });
                    Sender::Http2(sender)
                })
        }
    };
    started
        .inspect_err(
            |error| tracing::debug!(%error, ?version, "handshake with the endpoint failed"),
        )
        .ok()
}
