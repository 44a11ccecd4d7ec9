//! The proxies connected to this operator replica: their open streams, the version
//! each stream currently carries, and what each proxy acknowledged.
//!
//! A proxy is *in sync* when, for every stream it holds open, the version it last
//! acknowledged under that stream's name is the version the stream carries now. That
//! is what MeshStatus's `IN-SYNC` counts: a fact reported by the proxy, not a guess.
//! Streams are registered when they open and forgotten when they close, together with
//! their acknowledgements.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use super::key::Key;

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
}

impl Default for Proxies {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies").finish_non_exhaustive()
    }
}

impl Proxies {
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

    /// A receiver that wakes on every stream opened or closed and every
    /// acknowledgement.
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
}
