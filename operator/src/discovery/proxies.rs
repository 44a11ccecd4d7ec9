//! The proxies connected to this operator replica: their open streams, the version
//! each stream currently carries, and what each proxy acknowledged.
//!
//! A proxy is *in sync* when, for every stream it holds open, the version it last
//! acknowledged under that stream's name is the version the stream carries now. That
//! is what MeshStatus's `IN-SYNC` counts: a fact reported by the proxy, not a guess.
//! Streams are registered when they open and forgotten when they close, together with
//! their acknowledgements.
//!
//! # Bounds
//!
//! Everything kept here is bounded, because every entry is made by a client: a stream
//! name is a checked authority or port, an acknowledged version is at most
//! [`MAX_CONFIG_VERSION`] bytes (the server refuses longer ones) and lives only under
//! the name of a stream that is open, and the streams themselves are admitted within
//! [`StreamLimits`] ([`Proxies::admit`]) before the server subscribes them to anything:
//!
//! - **per pod**, [`MAX_STREAMS_PER_POD`] (1024). A proxy holds one InboundPolicy
//!   stream per declared port, one for port 0 and at most 64 more for undeclared ports
//!   used on demand, and one Resolve stream per destination in use, at most 256: about
//!   330 at the very most, on one connection (which the server caps at 512). 1024 is
//!   twice a connection's cap, so a proxy that reconnects while the operator still
//!   holds its old connection's streams is never refused.
//! - **in total**, [`MAX_STREAMS`] (8192), set by memory. An open stream costs the
//!   operator about 14 KiB even when idle (measured in-process over mutual TLS: most of it is the
//!   8 KiB buffer tonic keeps to encode each response stream, then the stream's task,
//!   channel, HTTP/2 state and entry here), so 8192 streams take about 110 MiB: less
//!   than half of the 256 MiB memory limit `deploy/` gives the operator, leaving the
//!   rest to the index and the watches. That serves some 500 proxies holding 15
//!   streams each; a larger mesh runs more operator replicas (the streams spread over
//!   them) or raises this limit together with the memory limit.
//! - **per identity** (a ServiceAccount's SPIFFE id), [`MAX_STREAMS_PER_IDENTITY`]
//!   (4096), half the total: however many pods one ServiceAccount runs, and whatever
//!   they ask, the other ServiceAccounts keep at least half of the operator.
//!
//! A stream beyond a limit is refused ([`LimitReached`] names the limit and its value);
//! the server answers RESOURCE_EXHAUSTED and counts it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use super::key::Key;
use crate::{denials::DenialReports, identity::SpiffeId};

/// The longest config version an acknowledgement may carry, in bytes. Versions are
/// 12 hex digits ([`weft_proxy_api::ConfigVersion::of`]); the rest is margin.
pub const MAX_CONFIG_VERSION: usize = 128;

/// The default of [`StreamLimits::per_pod`].
pub const MAX_STREAMS_PER_POD: usize = 1024;
/// The default of [`StreamLimits::per_identity`].
pub const MAX_STREAMS_PER_IDENTITY: usize = 4096;
/// The default of [`StreamLimits::total`].
pub const MAX_STREAMS: usize = 8192;

/// The most streams the operator holds, per pod, per caller identity and in total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    pub per_pod: usize,
    pub per_identity: usize,
    pub total: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_pod: MAX_STREAMS_PER_POD,
            per_identity: MAX_STREAMS_PER_IDENTITY,
            total: MAX_STREAMS,
        }
    }
}

/// Why a stream was not admitted: the limit it would exceed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitReached {
    #[error(
        "the per-pod stream limit ({limit}) is reached: pod {}/{} already holds that many",
        .pod.namespace, .pod.name
    )]
    Pod { pod: Key, limit: usize },
    #[error(
        "the per-identity stream limit ({limit}) is reached: {identity} already holds that many"
    )]
    Identity { identity: SpiffeId, limit: usize },
    #[error("the total stream limit ({limit}) is reached: this operator holds that many")]
    Total { limit: usize },
}

impl LimitReached {
    /// The refusal's reason, as metrics count it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Pod { .. } => "TooManyStreamsPerPod",
            Self::Identity { .. } => "TooManyStreamsPerIdentity",
            Self::Total { .. } => "TooManyStreamsInTotal",
        }
    }
}

/// Reads the version a stream carries now.
type CurrentVersion = Box<dyn Fn() -> String + Send>;

struct OpenStream {
    name: String,
    current: CurrentVersion,
}

#[derive(Default)]
struct ProxyState {
    streams: HashMap<u64, OpenStream>,
    /// Stream name → acknowledged version.
    acked: HashMap<String, String>,
    /// The expiry of the certificate the proxy presented, in Unix seconds.
    not_after: Option<i64>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    pods: HashMap<Key, ProxyState>,
    admitted: Admitted,
}

/// The streams admitted and not yet closed, counted for [`StreamLimits`].
#[derive(Default)]
struct Admitted {
    total: usize,
    pods: HashMap<Key, usize>,
    identities: HashMap<SpiffeId, usize>,
}

/// What the operator knows of one connected proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyReport {
    /// Open streams.
    pub streams: usize,
    /// Whether every open stream's current version is acknowledged.
    pub in_sync: bool,
    /// The expiry of its certificate, in Unix seconds.
    pub not_after: Option<i64>,
}

/// Why an acknowledgement was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("the pod holds no open stream named {0:?} on this connection's operator")]
    NoSuchStream(String),
}

/// The registry. Cheap to clone.
#[derive(Clone)]
pub struct Proxies {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<watch::Sender<u64>>,
    limits: StreamLimits,
    /// The latest denial report of each pod ([`crate::denials`]).
    denials: DenialReports,
}

impl Default for Proxies {
    fn default() -> Self {
        Self::with_limits(StreamLimits::default())
    }
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies").finish_non_exhaustive()
    }
}

impl Proxies {
    /// A registry that admits streams within `limits`.
    pub fn with_limits(limits: StreamLimits) -> Self {
        let changed = Arc::new(watch::channel(0).0);
        Self {
            inner: Arc::default(),
            denials: DenialReports::new(changed.clone()),
            changed,
            limits,
        }
    }

    /// Admits one more stream that `identity` opens for `pod`, unless that would exceed
    /// a limit (checked in the order pod, identity, total). It counts until the
    /// returned [`Admission`] drops.
    pub fn admit(&self, identity: &SpiffeId, pod: &Key) -> Result<Admission, LimitReached> {
        let mut inner = self.lock();
        let admitted = &mut inner.admitted;
        let limits = self.limits;
        if admitted.pods.get(pod).copied().unwrap_or(0) >= limits.per_pod {
            return Err(LimitReached::Pod {
                pod: pod.clone(),
                limit: limits.per_pod,
            });
        }
        if admitted.identities.get(identity).copied().unwrap_or(0) >= limits.per_identity {
            return Err(LimitReached::Identity {
                identity: identity.clone(),
                limit: limits.per_identity,
            });
        }
        if admitted.total >= limits.total {
            return Err(LimitReached::Total {
                limit: limits.total,
            });
        }
        admitted.total += 1;
        *admitted.pods.entry(pod.clone()).or_default() += 1;
        *admitted.identities.entry(identity.clone()).or_default() += 1;
        Ok(Admission {
            proxies: self.clone(),
            identity: identity.clone(),
            pod: pod.clone(),
        })
    }

    /// How many streams are admitted now: in total, and for `pod`.
    pub fn admitted(&self, pod: &Key) -> (usize, usize) {
        let inner = self.lock();
        let admitted = &inner.admitted;
        (admitted.total, admitted.pods.get(pod).copied().unwrap_or(0))
    }

    fn release(&self, identity: &SpiffeId, pod: &Key) {
        let mut inner = self.lock();
        let admitted = &mut inner.admitted;
        admitted.total = admitted.total.saturating_sub(1);
        release_one(&mut admitted.pods, pod);
        release_one(&mut admitted.identities, identity);
    }

    /// Registers a stream of `pod` named `name` (`resolve:<authority>`,
    /// `inbound:<port>`), whose current version `current` reads. It is forgotten when
    /// the returned guard drops.
    pub fn open(
        &self,
        pod: Key,
        name: String,
        current: impl Fn() -> String + Send + 'static,
        not_after: Option<i64>,
    ) -> StreamGuard {
        let id = {
            let mut inner = self.lock();
            inner.next_id += 1;
            let id = inner.next_id;
            let state = inner.pods.entry(pod.clone()).or_default();
            state.streams.insert(
                id,
                OpenStream {
                    name,
                    current: Box::new(current),
                },
            );
            if not_after.is_some() {
                state.not_after = not_after;
            }
            id
        };
        self.notify();
        StreamGuard {
            proxies: self.clone(),
            pod,
            id,
        }
    }

    /// Records that `pod` applied `version` for its stream `name`.
    pub fn ack(&self, pod: &Key, name: &str, version: String) -> Result<(), AckError> {
        {
            let mut inner = self.lock();
            let state = inner
                .pods
                .get_mut(pod)
                .filter(|s| s.streams.values().any(|s| s.name == name))
                .ok_or_else(|| AckError::NoSuchStream(name.to_string()))?;
            state.acked.insert(name.to_string(), version);
        }
        self.notify();
        Ok(())
    }

    /// The state of `pod`'s proxy, when it holds a stream open.
    pub fn report(&self, pod: &Key) -> Option<ProxyReport> {
        let inner = self.lock();
        let state = inner.pods.get(pod)?;
        let in_sync = state
            .streams
            .values()
            .all(|s| state.acked.get(&s.name) == Some(&(s.current)()));
        Some(ProxyReport {
            streams: state.streams.len(),
            in_sync,
            not_after: state.not_after,
        })
    }

    /// The acknowledged versions of `pod`, by stream name.
    pub fn acked(&self, pod: &Key) -> HashMap<String, String> {
        self.lock()
            .pods
            .get(pod)
            .map(|s| s.acked.clone())
            .unwrap_or_default()
    }

    /// The latest denial report of each pod.
    pub fn denials(&self) -> &DenialReports {
        &self.denials
    }

    /// A receiver that wakes on every stream opened or closed, every
    /// acknowledgement and every denial report that changed something.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn close(&self, pod: &Key, id: u64) {
        {
            let mut inner = self.lock();
            let Some(state) = inner.pods.get_mut(pod) else {
                return;
            };
            let Some(closed) = state.streams.remove(&id) else {
                return;
            };
            if !state.streams.values().any(|s| s.name == closed.name) {
                state.acked.remove(&closed.name);
            }
            if state.streams.is_empty() {
                inner.pods.remove(pod);
            }
        }
        self.notify();
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned one still holds valid data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes one from `key`'s count, forgetting the key at zero.
fn release_one<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// A stream counted against the [`StreamLimits`]; dropping it gives its place back.
#[derive(Debug)]
pub struct Admission {
    proxies: Proxies,
    identity: SpiffeId,
    pod: Key,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.proxies.release(&self.identity, &self.pod);
    }
}

/// An open stream; dropping it forgets the stream and its acknowledgement.
#[derive(Debug)]
pub struct StreamGuard {
    proxies: Proxies,
    pod: Key,
    id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.proxies.close(&self.pod, self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn a_proxy_is_in_sync_when_every_open_stream_acknowledged_its_current_version() {
        let proxies = Proxies::default();
        let pod = Key::new("shop", "web-1");
        assert_eq!(proxies.report(&pod), None, "not connected");
        let version = Arc::new(AtomicU32::new(1));
        let current = |v: &Arc<AtomicU32>| {
            let v = v.clone();
            move || v.load(Ordering::SeqCst).to_string()
        };
        let inbound = proxies.open(pod.clone(), "inbound:0".into(), current(&version), Some(99));
        let report = proxies.report(&pod).unwrap();
        assert_eq!(
            (report.streams, report.in_sync, report.not_after),
            (1, false, Some(99))
        );

        proxies.ack(&pod, "inbound:0", "1".into()).unwrap();
        assert!(proxies.report(&pod).unwrap().in_sync);
        version.store(2, Ordering::SeqCst);
        assert!(
            !proxies.report(&pod).unwrap().in_sync,
            "a new version is out"
        );

        let resolve = proxies.open(pod.clone(), "resolve:a:80".into(), || "r1".into(), None);
        proxies.ack(&pod, "inbound:0", "2".into()).unwrap();
        assert!(!proxies.report(&pod).unwrap().in_sync, "resolve not acked");
        proxies.ack(&pod, "resolve:a:80", "r1".into()).unwrap();
        assert!(proxies.report(&pod).unwrap().in_sync);
        assert_eq!(
            proxies.ack(&pod, "resolve:b:80", "x".into()),
            Err(AckError::NoSuchStream("resolve:b:80".into()))
        );

        assert_eq!(
            proxies.acked(&pod).get("resolve:a:80").map(String::as_str),
            Some("r1")
        );
        drop(resolve);
        assert!(!proxies.acked(&pod).contains_key("resolve:a:80"));
        let mut changes = proxies.changes();
        changes.mark_unchanged();
        drop(inbound);
        assert!(changes.has_changed().unwrap());
        assert_eq!(proxies.report(&pod), None, "no stream left");
    }

    #[test]
    fn streams_are_admitted_within_each_limit_and_give_their_place_back() {
        let proxies = Proxies::with_limits(StreamLimits {
            per_pod: 2,
            per_identity: 3,
            total: 4,
        });
        let web = SpiffeId::new("cluster.local", "shop", "web");
        let db = SpiffeId::new("cluster.local", "shop", "db");
        let (web_1, web_2, db_1) = (
            Key::new("shop", "web-1"),
            Key::new("shop", "web-2"),
            Key::new("shop", "db-1"),
        );
        let first = proxies.admit(&web, &web_1).unwrap();
        let _second = proxies.admit(&web, &web_1).unwrap();
        let refused = proxies.admit(&web, &web_1).unwrap_err();
        assert_eq!(
            refused,
            LimitReached::Pod {
                pod: web_1.clone(),
                limit: 2
            }
        );
        assert_eq!(refused.reason(), "TooManyStreamsPerPod");
        assert!(
            refused.to_string().contains("per-pod stream limit (2)"),
            "{refused}"
        );
        let _third = proxies.admit(&web, &web_2).unwrap();
        let refused = proxies.admit(&web, &web_2).unwrap_err();
        assert_eq!(refused.reason(), "TooManyStreamsPerIdentity", "{refused}");
        assert!(
            refused
                .to_string()
                .contains("per-identity stream limit (3)"),
            "{refused}"
        );
        let _fourth = proxies.admit(&db, &db_1).unwrap();
        let refused = proxies.admit(&db, &db_1).unwrap_err();
        assert_eq!(refused, LimitReached::Total { limit: 4 });
        assert!(
            refused.to_string().contains("total stream limit (4)"),
            "{refused}"
        );

        drop(first);
        assert_eq!(proxies.admitted(&web_1), (3, 1));
        let _again = proxies.admit(&web, &web_1).expect("a place was given back");
        assert_eq!(proxies.admitted(&web_1), (4, 2));
    }
}
