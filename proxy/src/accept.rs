//! Accepting: the listeners of both sides, and where each accepted connection was
//! going.
//!
//! `weft-proxy init` redirects the pod's captured connections to these ports; the
//! address the peer actually dialled comes back from `SO_ORIGINAL_DST`. The proxy's
//! own connections leave under its UID, which the capture rules exclude. A connection
//! is then handed to its side: [`crate::outbound`] or [`crate::inbound`].
//!
//! A connection made straight to a listener (not redirected) has itself as its
//! original destination; forwarding it would loop, so it is closed at once.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

use crate::{
    discovery::Discovery,
    inbound::{Inbound, InboundSettings, Policies},
    metrics::{Direction, Metrics},
    outbound::{Outbound, Resolve},
    tls::Tls,
};

/// One listening side of the proxy.
pub struct Forwarder {
    listener: TcpListener,
    direction: Direction,
    local: SocketAddr,
    parts: Parts,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("direction", &self.direction)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// What a side is made of, gathered before it is spawned.
#[derive(Default)]
struct Parts {
    resolver: Option<Arc<dyn Resolve>>,
    policies: Option<Arc<dyn Policies>>,
    tls: Option<Tls>,
    /// Every connection's destination, instead of `SO_ORIGINAL_DST` (tests, benches).
    fixed_target: Option<SocketAddr>,
    inbound: InboundSettings,
    /// How long an outbound connection waits for a new destination's resolution.
    resolve_timeout: Option<Duration>,
}

impl Parts {
    /// The context of the `direction` side listening on `local`.
    fn build(self, direction: Direction, local: SocketAddr) -> Context {
        let side = match direction {
            // The outbound side detects the application's protocol within the same
            // timeout as the inbound side.
            Direction::Outbound => Side::Outbound(Outbound::new(
                self.resolver,
                self.tls,
                self.inbound.detect_timeout,
                self.resolve_timeout
                    .unwrap_or(crate::outbound::DEFAULT_RESOLVE_TIMEOUT),
            )),
            Direction::Inbound => Side::Inbound(Inbound::new(
                self.policies,
                self.tls,
                self.inbound,
                self.fixed_target,
            )),
        };
        Context {
            direction,
            local,
            fixed_target: self.fixed_target,
            side,
        }
    }
}

/// What every connection of a listener shares.
struct Context {
    direction: Direction,
    local: SocketAddr,
    fixed_target: Option<SocketAddr>,
    side: Side,
}

/// Where a listener's connections go once accepted.
enum Side {
    Outbound(Outbound),
    Inbound(Inbound),
}

impl Forwarder {
    /// Binds the `direction` listener on `addr`.
    pub async fn bind(direction: Direction, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok(Self {
            listener,
            direction,
            local,
            parts: Parts::default(),
        })
    }

    /// Outbound connections resolve their destination, and inbound ones follow their
    /// port's policy, through `discovery`.
    pub fn with_discovery(mut self, discovery: Option<Discovery>) -> Self {
        if let Some(discovery) = discovery {
            match self.direction {
                Direction::Outbound => self.parts.resolver = Some(Arc::new(discovery)),
                Direction::Inbound => self.parts.policies = Some(Arc::new(discovery)),
            }
        }
        self
    }

    /// An outbound connection to a new destination waits `timeout` for its
    /// resolution, then fails.
    pub fn with_resolve_timeout(mut self, timeout: Duration) -> Self {
        self.parts.resolve_timeout = Some(timeout);
        self
    }

    /// Outbound destinations are resolved by `resolver`.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.parts.resolver = Some(resolver);
        self
    }

    /// Inbound policies come from `policies`.
    pub fn with_policies(mut self, policies: Arc<dyn Policies>) -> Self {
        self.parts.policies = Some(policies);
        self
    }

    /// mTLS with peer proxies uses `tls`.
    pub fn with_tls(mut self, tls: Tls) -> Self {
        self.parts.tls = Some(tls);
        self
    }

    /// Every connection goes to `target` instead of its original destination (for
    /// tests and benchmarks, which run without traffic capture).
    pub fn with_fixed_target(mut self, target: SocketAddr) -> Self {
        self.parts.fixed_target = Some(target);
        self
    }

    /// How the inbound side detects, and what it enforces before the operator answers.
    pub fn with_inbound_settings(mut self, settings: InboundSettings) -> Self {
        self.parts.inbound = settings;
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
        let context = Arc::new(self.parts.build(self.direction, self.local));
        let listener = self.listener;
        tokio::spawn(async move {
            let in_flight = Arc::new(());
            let mut backoff = Backoff::default();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = shutdown.wait_for(|stop| *stop) => break,
                };
                let (client, peer) = match accepted {
                    Ok(accepted) => {
                        backoff.succeeded();
                        accepted
                    }
                    Err(error) => {
                        let direction = context.direction;
                        let (wait, log) = backoff.failed(Instant::now());
                        if let Some(suppressed) = log {
                            tracing::warn!(%error, ?direction, suppressed, retry_in = ?wait, "accept failed");
                        }
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                };
                let (metrics, guard) = (metrics.clone(), in_flight.clone());
                let (context, shutdown) = (context.clone(), shutdown.clone());
                tokio::spawn(async move {
                    context.forward(client, peer, &metrics, shutdown).await;
                    drop(guard);
                });
            }
            drop(listener);
            while Arc::strong_count(&in_flight) > 1 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

impl Context {
    /// Forwards one accepted connection; HTTP served here is drained once `shutdown`
    /// turns true.
    async fn forward(
        &self,
        client: TcpStream,
        peer: SocketAddr,
        metrics: &Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) {
        let target = match self.fixed_target {
            Some(target) => target,
            None => match original_dst(&client) {
                Ok(target) if is_self(target, self.local) => {
                    tracing::debug!(%peer, %target, "not redirected: refusing a loop");
                    return;
                }
                Ok(target) => target,
                Err(error) => {
                    tracing::debug!(%peer, %error, "no original destination");
                    return;
                }
            },
        };
        let _ = client.set_nodelay(true);
        match &self.side {
            Side::Outbound(outbound) => {
                outbound
                    .forward(client, peer, target, metrics, shutdown)
                    .await;
            }
            Side::Inbound(inbound) => {
                inbound
                    .forward(client, peer, target, metrics, shutdown)
                    .await;
            }
        }
    }
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
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut conn, &mut buf),
        )
        .await
        .expect("the connection closed, not left open");
        assert!(
            matches!(&read, Ok(0))
                || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "closed, got {read:?}"
        );
        // Nothing was forwarded: no connection was opened or even tried, whatever
        // labels it would have carried.
        let text = metrics.encode();
        for family in ["tcp_open_total", "tcp_connect_errors_total"] {
            assert_eq!(samples_sum(&text, family), 0.0, "{family} in\n{text}");
        }
    }

    /// The sum of every sample of the metric family `family` in `text`, whatever its
    /// labels.
    fn samples_sum(text: &str, family: &str) -> f64 {
        text.lines()
            .filter(|line| {
                line.strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Backs an accept loop off after failures — out of file descriptors (`EMFILE`,
/// `ENFILE`) mostly, which persist until connections close — so that a full table is
/// neither spun on nor logged thousands of times a second. The wait doubles from
/// [`Backoff::FIRST`] to [`Backoff::LONGEST`] and starts over after an accept succeeds;
/// a failure is logged at most every [`Backoff::LOG_EVERY`], with how many were not.
#[derive(Debug, Default)]
pub struct Backoff {
    wait: Duration,
    logged: Option<Instant>,
    suppressed: u64,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(5);
    pub const LONGEST: Duration = Duration::from_secs(1);
    pub const LOG_EVERY: Duration = Duration::from_secs(10);

    pub fn succeeded(&mut self) {
        self.wait = Duration::ZERO;
    }

    /// After a failed accept at `now`: how long to wait, and whether to log it (with
    /// the failures not logged since the last time).
    pub fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        self.wait = (self.wait * 2).clamp(Self::FIRST, Self::LONGEST);
        let log = match self.logged {
            Some(at) if now.duration_since(at) < Self::LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.logged = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        };
        (self.wait, log)
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn failures_wait_longer_up_to_a_second_and_log_every_ten_seconds() {
        let mut backoff = Backoff::default();
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.failed(t0).0).collect();
        assert_eq!(waits[0], Duration::from_millis(5));
        assert_eq!(waits[1], Duration::from_millis(10));
        assert_eq!(waits[9], Backoff::LONGEST);
        // The first failure was logged; the nine after it in the same instant were not,
        // and the next log says so.
        assert_eq!(backoff.failed(t0 + Duration::from_secs(9)).1, None);
        assert_eq!(backoff.failed(t0 + Backoff::LOG_EVERY).1, Some(10));
        backoff.succeeded();
        assert_eq!(backoff.failed(t0 + Backoff::LOG_EVERY).0, Backoff::FIRST);
    }
}
