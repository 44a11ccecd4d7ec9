//! The proxy's side of the Destination API: what it streams from the operator, applies,
//! acknowledges, and shows on `/config`.
//!
//! - **Inbound**: at start, one InboundPolicy stream for each port the pod declares and
//!   one for port 0, whose updates carry the default of every other port and the
//!   policy of each port a ServerAuthorization selects (a ServerAuthorization may name
//!   an undeclared port by number). Together they are the pod's
//!   [`InboundPolicies`], which every inbound connection and request is judged by; a
//!   port whose stream has not answered has no policy yet (see [`crate::inbound`]),
//!   and `/ready` waits for every one of them.
//! - **Outbound**: a Resolve stream per destination, opened on its first use, kept
//!   while it is used, and dropped after [`Settings::idle`] without use. At most
//!   [`Settings::max_resolutions`] are held; beyond that a new destination is not
//!   resolved, and its connections fail (see [`crate::outbound`]).
//! - Every update applied is acknowledged with its config version, so the operator
//!   knows this proxy is in sync.
//! - **When the operator is away**, every stream retries with jittered exponential
//!   backoff and the last applied config stays in force; a reconnection presents the
//!   current certificate and re-reads the trust bundle file.
//!
//! All streams share one mutual-TLS channel, made with the proxy's workload
//! certificate once it has one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::sync::watch;
use tonic::{Status, Streaming, transport::Channel};
use weft_proxy_api::{
    ConfigVersion,
    v1::{
        AckRequest, InboundPolicyRequest, InboundPolicyUpdate, Resolution, ResolveRequest,
        destination_client::DestinationClient,
    },
};

use super::identity::Credentials;
use crate::{
    authz::{self, InboundPolicies, InboundPolicy},
    config::ControlAddr,
    state::{Applied, AppliedConfig, Readiness},
};

const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts to reach the operator, jitter included.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The waits between attempts to reach the operator: from [`MIN_BACKOFF`], doubling,
/// each with up to half again of jitter (so restarted proxies spread out), and never
/// over [`MAX_BACKOFF`] once the jitter is added.
#[derive(Debug)]
struct Backoff {
    base: Duration,
}

impl Backoff {
    /// The largest base: with half again of jitter, it reaches [`MAX_BACKOFF`].
    const MAX_BASE: Duration = Duration::from_millis(MAX_BACKOFF.as_millis() as u64 * 2 / 3);

    fn new() -> Self {
        Self { base: MIN_BACKOFF }
    }

    /// Back to the shortest wait, after a success.
    fn reset(&mut self) {
        self.base = MIN_BACKOFF;
    }

    /// The wait before the next attempt.
    fn next_delay(&mut self) -> Duration {
        let delay = super::identity::jitter(self.base).min(MAX_BACKOFF);
        self.base = (self.base * 2).min(Self::MAX_BASE);
        delay
    }
}

/// What discovery needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub control: ControlAddr,
    pub trust_bundle_file: String,
    /// This proxy's pod.
    pub pod: String,
    /// The ports the pod declares.
    pub inbound_ports: Vec<u16>,
    /// How long an unused resolution is kept.
    pub idle: Duration,
    /// The most destinations resolved at once.
    pub max_resolutions: usize,
    /// Where discovery records which inbound policies are still missing.
    pub readiness: Readiness,
}

/// A handle on discovery. Cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

struct Inner {
    settings: Settings,
    credentials: watch::Receiver<Option<Credentials>>,
    /// The shared channel and its generation.
    channel: Mutex<(u64, Option<Channel>)>,
    connecting: tokio::sync::Mutex<()>,
    applied: AppliedConfig,
    outbound: Mutex<HashMap<String, Outbound>>,
    /// The pod's inbound policies, as applied.
    policies: watch::Sender<InboundPolicies>,
}

struct Outbound {
    last_used: Instant,
    resolution: watch::Receiver<Option<Arc<Resolution>>>,
    task: tokio::task::AbortHandle,
}

impl Discovery {
    /// Starts the inbound streams and the idle sweep.
    pub fn start(settings: Settings, credentials: watch::Receiver<Option<Credentials>>) -> Self {
        let applied = AppliedConfig::new(&settings.pod);
        let policies = InboundPolicies::awaiting(&settings.inbound_ports);
        settings.readiness.set_missing_policies(policies.missing());
        let discovery = Self {
            inner: Arc::new(Inner {
                settings,
                credentials,
                channel: Mutex::new((0, None)),
                connecting: tokio::sync::Mutex::new(()),
                applied,
                outbound: Mutex::default(),
                policies: watch::channel(policies).0,
            }),
        };
        let ports = std::iter::once(0).chain(discovery.inner.settings.inbound_ports.clone());
        for port in ports {
            tokio::spawn(discovery.clone().inbound(port));
        }
        tokio::spawn(discovery.clone().sweep());
        tokio::spawn(discovery.clone().renew_channel_with_certificate());
        discovery
    }

    /// The resolution of `authority` (`ip:port`), following it from now on: empty
    /// until the operator answers. `None` when as many destinations as the proxy may
    /// follow are followed already.
    pub fn resolve(&self, authority: &str) -> Option<watch::Receiver<Option<Arc<Resolution>>>> {
        let mut outbound = lock(&self.inner.outbound);
        if let Some(entry) = outbound.get_mut(authority) {
            entry.last_used = Instant::now();
            return Some(entry.resolution.clone());
        }
        if outbound.len() >= self.inner.settings.max_resolutions {
            tracing::debug!(authority, "too many destinations resolved; not resolving");
            return None;
        }
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(self.clone().outbound(authority.to_string(), tx)).abort_handle();
        outbound.insert(
            authority.to_string(),
            Outbound {
                last_used: Instant::now(),
                resolution: rx.clone(),
                task,
            },
        );
        Some(rx)
    }

    /// The pod's inbound policies, followed: every update applied shows in it.
    pub fn inbound_policies(&self) -> watch::Receiver<InboundPolicies> {
        self.inner.policies.subscribe()
    }

    /// What is applied, as `/config` shows it.
    pub fn config(&self) -> Value {
        self.inner.applied.to_json()
    }

    /// What is applied, for the admin server to show.
    pub fn applied(&self) -> AppliedConfig {
        self.inner.applied.clone()
    }

    async fn inbound(self, port: u16) {
        let pod = self.inner.settings.pod.clone();
        self.follow(
            format!("inbound:{port}"),
            move |mut client| {
                let request = InboundPolicyRequest {
                    pod: pod.clone(),
                    port: port.into(),
                };
                async move { client.inbound_policy(request).await }
            },
            |applied, update: InboundPolicyUpdate| {
                // The proxy's own policy from here on.
                let selected = authz::selected_ports(&update);
                let policy = InboundPolicy::from(update);
                let version = policy.version.clone();
                applied.inbound.insert(port, policy.clone());
                if port == 0 {
                    applied.selected = selected.clone();
                }
                self.inner.policies.send_modify(|policies| {
                    policies.apply(port, policy, selected);
                    self.inner
                        .settings
                        .readiness
                        .set_missing_policies(policies.missing());
                });
                version
            },
        )
        .await;
    }

    async fn outbound(self, authority: String, tx: watch::Sender<Option<Arc<Resolution>>>) {
        let pod = self.inner.settings.pod.clone();
        let key = authority.clone();
        self.follow(
            format!("resolve:{authority}"),
            move |mut client| {
                let request = ResolveRequest {
                    authority: authority.clone(),
                    pod: pod.clone(),
                };
                async move { client.resolve(request).await }
            },
            move |applied, update: Resolution| {
                let version = ConfigVersion::from(update.config_version.clone());
                applied.outbound.insert(key.clone(), update.clone());
                tx.send_replace(Some(Arc::new(update)));
                version
            },
        )
        .await;
    }

    /// Opens the stream `open` makes, applies and acknowledges each update, and
    /// reopens it with backoff whenever it fails or ends.
    async fn follow<U, F, Fut>(
        &self,
        name: String,
        open: F,
        apply: impl Fn(&mut Applied, U) -> ConfigVersion,
    ) where
        F: Fn(DestinationClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Streaming<U>>, Status>>,
    {
        let mut backoff = Backoff::new();
        loop {
            let (generation, channel) = self.channel().await;
            let mut client = DestinationClient::new(channel);
            match open(client.clone()).await {
                Ok(response) => {
                    let _open = OpenStream::new(&self.inner.applied);
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(update)) => {
                                backoff.reset();
                                let version = apply(&mut self.inner.applied.lock(), update);
                                let ack = AckRequest {
                                    pod: self.inner.settings.pod.clone(),
                                    stream: name.clone(),
                                    config_version: version.into(),
                                };
                                if let Err(status) = client.ack(ack).await {
                                    tracing::debug!(stream = %name, %status, "acknowledgement refused");
                                }
                            }
                            Ok(None) => {
                                tracing::info!(stream = %name, "the operator ended the stream");
                                break;
                            }
                            Err(status) => {
                                tracing::info!(stream = %name, %status, "stream failed");
                                break;
                            }
                        }
                    }
                }
                Err(status) => {
                    tracing::warn!(stream = %name, %status, "the operator refused the stream");
                }
            }
            self.drop_channel(generation);
            let delay = backoff.next_delay();
            tracing::debug!(stream = %name, retry_in = ?delay, "reopening the stream");
            tokio::time::sleep(delay).await;
        }
    }

    /// The shared channel, connecting it (with backoff) when there is none.
    pub(super) async fn channel(&self) -> (u64, Channel) {
        let mut backoff = Backoff::new();
        loop {
            if let (generation, Some(channel)) = &*lock(&self.inner.channel) {
                return (*generation, channel.clone());
            }
            let _connecting = self.inner.connecting.lock().await;
            if let (generation, Some(channel)) = &*lock(&self.inner.channel) {
                return (*generation, channel.clone());
            }
            let mut credentials = self.inner.credentials.clone();
            let key = match credentials.wait_for(Option::is_some).await {
                Ok(creds) => creds.as_ref().map(|c| c.key.clone()),
                Err(_) => None,
            };
            let Some(key) = key else {
                // The identity task is gone: the process is ending.
                return std::future::pending().await;
            };
            let settings = &self.inner.settings;
            let connected = match std::fs::read_to_string(&settings.trust_bundle_file) {
                Ok(bundle) => super::identity::connect_as(&settings.control, &bundle, Some(key))
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("cannot read {}: {e}", settings.trust_bundle_file)),
            };
            match connected {
                Ok(channel) => {
                    let mut current = lock(&self.inner.channel);
                    current.0 += 1;
                    current.1 = Some(channel.clone());
                    tracing::info!(control = %settings.control.host, "connected to the operator");
                    return (current.0, channel);
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "cannot connect to the operator");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Forgets the channel of `generation`, so the next stream reconnects.
    fn drop_channel(&self, generation: u64) {
        let mut current = lock(&self.inner.channel);
        if current.0 == generation {
            current.1 = None;
        }
    }

    /// New streams present a renewed certificate: forget the channel when it changes.
    async fn renew_channel_with_certificate(self) {
        let mut credentials = self.inner.credentials.clone();
        while credentials.changed().await.is_ok() {
            let generation = lock(&self.inner.channel).0;
            self.drop_channel(generation);
        }
    }

    /// Drops the resolutions nobody used for [`Settings::idle`].
    async fn sweep(self) {
        let idle = self.inner.settings.idle;
        let every = (idle / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let gone: Vec<String> = {
                let mut outbound = lock(&self.inner.outbound);
                let gone: Vec<String> = outbound
                    .iter()
                    .filter(|(_, e)| e.last_used.elapsed() >= idle)
                    .map(|(a, _)| a.clone())
                    .collect();
                for authority in &gone {
                    if let Some(entry) = outbound.remove(authority) {
                        entry.task.abort();
                    }
                }
                gone
            };
            if !gone.is_empty() {
                let mut applied = self.inner.applied.lock();
                for authority in &gone {
                    applied.outbound.remove(authority);
                }
                tracing::debug!(count = gone.len(), "idle destinations dropped");
            }
        }
    }
}

/// Counts a stream as open while it lives.
struct OpenStream<'a>(&'a AppliedConfig);

impl<'a> OpenStream<'a> {
    fn new(applied: &'a AppliedConfig) -> Self {
        applied.lock().streams += 1;
        Self(applied)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        let mut applied = self.0.lock();
        applied.streams = applied.streams.saturating_sub(1);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds valid data.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnections_to_the_operator_are_at_most_ten_seconds_apart_jitter_included() {
        let bound = Duration::from_secs(10);
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(
            delays.iter().all(|delay| *delay <= bound),
            "over {bound:?}: {delays:?}"
        );
        // It does back off: from half a second (and its jitter) to two thirds of the
        // bound and more.
        assert!(delays[0] >= MIN_BACKOFF && delays[0] <= MIN_BACKOFF * 3 / 2);
        assert!(delays.windows(2).take(4).all(|w| w[1] > w[0]), "{delays:?}");
        assert!(
            delays[10..].iter().all(|d| *d >= Backoff::MAX_BASE),
            "{delays:?}"
        );
        // Still spread out at the bound, not all equal.
        assert!(delays[10..].iter().any(|d| *d != delays[10]), "{delays:?}");
        // A success starts again from the shortest wait.
        backoff.reset();
        assert!(backoff.next_delay() <= MIN_BACKOFF * 3 / 2);
    }
}
