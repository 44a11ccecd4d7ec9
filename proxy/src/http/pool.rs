//! Connections to endpoints, kept for the next request: HTTP/1 ones one request at a
//! time (at most [`MAX_IDLE_PER_ENDPOINT`] idle per endpoint, a connection still busy
//! with a response skipped, never shared), HTTP/2 one per endpoint with its requests
//! multiplexed on it. The outbound side keeps one pool for all of the pod's
//! connections; the inbound side one per client connection, dropped with it, so that
//! no client's streams share an HTTP/2 connection (and its flow-control window) with
//! another client's.
//!
//! A kept connection is found by its [`Key`]: the endpoint's address, the identity the
//! endpoint was expected to prove, and whether the connection is mTLS. A connection
//! made while an endpoint had no identity (plaintext) is never handed to a request
//! that expects one, nor one made for an identity to a request expecting another or
//! none: what discovery says about the endpoint when the request is sent decides.
//!
//! A kept connection lives at most [`MAX_AGE`] and is closed once it has gone unused
//! for [`IDLE_TIMEOUT`] (90 s, hyper's pool's default), so that a
//! connection the server authorized under a policy since changed does not carry
//! requests forever, and connections to endpoints gone quiet are let go. Neither
//! cuts a request short: a connection past either limit is no longer handed out nor
//! kept; requests already on it finish, then it closes. The pool checks its
//! connections every [`SWEEP_EVERY`], so an idle one closes within that of its time.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{TrySendError, http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};

use super::{Body, Version};

/// The most idle connections kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 32;
/// The most endpoints whose connections are kept.
const MAX_POOLED_ENDPOINTS: usize = 1024;
/// How long a kept connection may go without a request before it is closed (the
/// default of hyper's pool).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long after it was opened a connection stops taking new requests, however busy:
/// the server authorizes a connection when it is made, so this bounds how long a
/// connection outlives a change of the server's policy or of the endpoint's identity.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// How often the pool closes the connections past [`IDLE_TIMEOUT`] or [`MAX_AGE`].
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What a kept connection was made for: only a request for the same endpoint, the
/// same expected identity and the same transport may use it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub addr: SocketAddr,
    /// The identity the endpoint had to prove (discovery's), `None` for an endpoint
    /// without one.
    pub identity: Option<String>,
    /// Whether the connection is mTLS (else plaintext).
    pub tls: bool,
}

/// A connection to an endpoint, ready to carry requests.
pub(super) struct Sender {
    conn: Conn,
    /// When the connection was opened.
    opened: Instant,
}

enum Conn {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    /// Sends `request`; on failure, the request comes back if it was not sent.
    pub(super) async fn send(
        &mut self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        match &mut self.conn {
            Conn::Http1(sender) => sender.try_send_request(request).await,
            Conn::Http2(sender) => sender.try_send_request(request).await,
        }
    }
}

/// A kept connection, with when it was opened and last used.
struct Kept<S> {
    sender: S,
    opened: Instant,
    used: Instant,
}

impl<S> Kept<S> {
    /// Whether the connection is past its idle time or its age at `now`.
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.used) >= IDLE_TIMEOUT || too_old(self.opened, now)
    }
}

/// Whether a connection opened at `opened` is past [`MAX_AGE`] at `now`.
fn too_old(opened: Instant, now: Instant) -> bool {
    now.saturating_duration_since(opened) >= MAX_AGE
}

#[derive(Default)]
struct Connections {
    idle: HashMap<Key, Vec<Kept<http1::SendRequest<Body>>>>,
    multiplexed: HashMap<Key, Kept<http2::SendRequest<Body>>>,
}

impl Connections {
    /// Drops the connections closed, idle too long or too old at `now` (each closes
    /// once the requests on it are done).
    fn sweep(&mut self, now: Instant) {
        self.idle.retain(|_, kept| {
            kept.retain(|k| !k.sender.is_closed() && !k.expired(now));
            !kept.is_empty()
        });
        self.multiplexed
            .retain(|_, k| !k.sender.is_closed() && !k.expired(now));
    }
}

/// Connections to endpoints, for reuse: outbound, shared by every client connection of
/// the pod; inbound, one client connection's own.
#[derive(Default)]
pub struct Pool {
    connections: Arc<Mutex<Connections>>,
    /// Whether the task closing expired connections runs.
    sweeping: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// A connection for `key` in `version` ready for a request, if one is kept.
    pub(super) fn checkout(&self, key: &Key, version: Version) -> Option<Sender> {
        let now = Instant::now();
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if version == Version::Http2 {
            let kept = connections.multiplexed.get_mut(key)?;
            if kept.sender.is_closed() || kept.expired(now) {
                connections.multiplexed.remove(key);
                return None;
            }
            kept.used = now;
            return Some(Sender {
                conn: Conn::Http2(kept.sender.clone()),
                opened: kept.opened,
            });
        }
        let kept = connections.idle.get_mut(key)?;
        kept.retain(|k| !k.sender.is_closed() && !k.expired(now));
        let ready = kept.iter().position(|k| k.sender.is_ready())?;
        let kept = kept.swap_remove(ready);
        Some(Sender {
            conn: Conn::Http1(kept.sender),
            opened: kept.opened,
        })
    }

    /// Keeps `sender` for the next request for `key` (an HTTP/1 one becomes ready
    /// once the response in flight on it is done), unless it is past [`MAX_AGE`].
    pub(super) fn checkin(&self, key: Key, sender: Sender) {
        let now = Instant::now();
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if too_old(sender.opened, now) {
            // Let go, and the pool's own handle on it if it is multiplexed.
            if connections
                .multiplexed
                .get(&key)
                .is_some_and(|kept| kept.expired(now))
            {
                connections.multiplexed.remove(&key);
            }
            return;
        }
        self.sweep_in_the_background();
        let opened = sender.opened;
        match sender.conn {
            Conn::Http1(sender) => {
                let idle = &mut connections.idle;
                if idle.len() >= MAX_POOLED_ENDPOINTS && !idle.contains_key(&key) {
                    idle.clear();
                }
                let kept = idle.entry(key).or_default();
                kept.retain(|k| !k.sender.is_closed());
                if kept.len() < MAX_IDLE_PER_ENDPOINT {
                    kept.push(Kept {
                        sender,
                        opened,
                        used: now,
                    });
                }
            }
            Conn::Http2(sender) => {
                let multiplexed = &mut connections.multiplexed;
                if multiplexed.len() >= MAX_POOLED_ENDPOINTS && !multiplexed.contains_key(&key) {
                    multiplexed.clear();
                }
                multiplexed.insert(
                    key,
                    Kept {
                        sender,
                        opened,
                        used: now,
                    },
                );
            }
        }
    }

    /// Starts the task that closes expired connections every [`SWEEP_EVERY`], once;
    /// it ends when the pool is dropped.
    fn sweep_in_the_background(&self) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to run it on (never, in the proxy): try at the next checkin.
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let connections: Weak<Mutex<Connections>> = Arc::downgrade(&self.connections);
        runtime.spawn(async move {
            let mut every = tokio::time::interval_at(Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(connections) = connections.upgrade() else {
                    return;
                };
                let mut connections = connections.lock().unwrap_or_else(|e| e.into_inner());
                connections.sweep(Instant::now());
            }
        });
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
            Sender {
                conn: Conn::Http1(sender),
                opened: Instant::now(),
            }
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
                    Sender {
                        conn: Conn::Http2(sender),
                        opened: Instant::now(),
                    }
                })
        }
    };
    started
        .inspect_err(
            |error| tracing::debug!(%error, ?version, "handshake with the endpoint failed"),
        )
        .ok()
}

#[cfg(test)]
mod tests;
