//! What the Denials service of the proxy API keeps (its server is
//! `proxy_api::denials`): each proxy reports what its inbound policy
//! refused, per port, and the operator keeps the latest report of each pod
//! ([`DenialReports`]) for MeshStatus's `recentDenials` ([`crate::status::denials`]).
//!
//! A report comes over mutual TLS and is checked as every Destination call is (the
//! caller's certified SPIFFE id; the pod must be one the index knows, in the caller's
//! namespace, running under the caller's ServiceAccount), so no proxy can write
//! another workload's denials. What it can make the operator hold is bounded: a
//! request message is at most [`MAX_REPORT_BYTES`] (tonic refuses a longer one from its
//! length prefix with OUT_OF_RANGE), a report names at most [`MAX_PORTS`] ports and a
//! client identity of at most [`MAX_CLIENT_ID`] bytes (INVALID_ARGUMENT naming the
//! field and the limit, counted as `BadDenialReport`), and the operator keeps one
//! report per pod, for pods the index knows: a report replaces its pod's last one, and
//! the reports of pods the index no longer knows are dropped whenever a report is
//! taken. So what is kept grows with the pods, like the index, by at most about
//! 25 KiB a pod (64 ports with a 300-byte identity), a few hundred bytes in practice.
//! A report's time is taken as the proxy says, but never later than when it arrived.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use tokio::sync::watch;
use weft_proxy_api::v1::DenialReport;

use crate::discovery::key::Key;

/// The most ports a report may name: a proxy reports at most this many.
pub const MAX_PORTS: usize = 64;
/// The longest client identity a report may carry, in bytes: a SPIFFE id of the
/// longest namespace and ServiceAccount names fits.
pub const MAX_CLIENT_ID: usize = 300;
/// The largest report message, in bytes: [`MAX_PORTS`] entries of a port, a count, a
/// time and a [`MAX_CLIENT_ID`]-byte identity with their tags (under 21 KiB), and a pod
/// name, with margin.
pub const MAX_REPORT_BYTES: usize = 32 * 1024;

/// One port's denials, as a proxy reported them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDenials {
    pub port: u16,
    /// Refusals at the port since the proxy started.
    pub count: u64,
    /// The last refused client: a SPIFFE id, or `unauthenticated`.
    pub last_client: String,
    /// When, in Unix seconds.
    pub last_time: i64,
}

/// The latest denial report of each pod. Cheap to clone.
#[derive(Clone)]
pub struct DenialReports {
    pods: Arc<Mutex<HashMap<Key, Vec<PortDenials>>>>,
    /// Told of every report that changed something (the status publisher wakes).
    changed: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for DenialReports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenialReports").finish_non_exhaustive()
    }
}

impl DenialReports {
    /// An empty set that tells `changed` of every change.
    pub fn new(changed: Arc<watch::Sender<u64>>) -> Self {
        Self {
            pods: Arc::default(),
            changed,
        }
    }

    /// Takes `pod`'s report, in place of its last one, and forgets the reports of
    /// the pods `known` no longer holds.
    pub fn replace(&self, pod: Key, ports: Vec<PortDenials>, known: impl Fn(&Key) -> bool) {
        let changed = {
            let mut pods = self.lock();
            pods.retain(|key, _| known(key));
            pods.insert(pod, ports.clone()) != Some(ports)
        };
        if changed {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The last report of `pod`; empty when it sent none.
    pub fn of(&self, pod: &Key) -> Vec<PortDenials> {
        self.lock().get(pod).cloned().unwrap_or_default()
    }

    /// How many pods have a report kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no report is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<PortDenials>>> {
        // Nothing panics while holding the lock; a poisoned one still holds valid data.
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a report was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadReport {
    #[error("ports has {0} entries; a report may name at most {MAX_PORTS} ports")]
    TooManyPorts(usize),
    #[error("port {0} is not a port (1 to 65535)")]
    BadPort(u32),
    #[error("last_client of port {0} is {1} bytes long; it may be at most {MAX_CLIENT_ID} bytes")]
    ClientTooLong(u16, usize),
}

/// The report's entries, checked against the limits, by port (a port named twice
/// keeps its last entry), each time no later than `now` (Unix seconds).
pub fn checked(report: &DenialReport, now: i64) -> Result<Vec<PortDenials>, BadReport> {
    if report.ports.len() > MAX_PORTS {
        return Err(BadReport::TooManyPorts(report.ports.len()));
    }
    let mut ports = BTreeMap::new();
    for entry in &report.ports {
        let port = u16::try_from(entry.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(BadReport::BadPort(entry.port))?;
        if entry.last_client.len() > MAX_CLIENT_ID {
            return Err(BadReport::ClientTooLong(port, entry.last_client.len()));
        }
        ports.insert(
            port,
            PortDenials {
                port,
                count: entry.count,
                last_client: entry.last_client.clone(),
                last_time: entry.last_time.min(now),
            },
        );
    }
    Ok(ports.into_values().collect())
}

#[cfg(test)]
mod tests {
    use weft_proxy_api::v1::PortDenials as Entry;

    use super::*;

    fn entry(port: u32, count: u64, client: &str, time: i64) -> Entry {
        Entry {
            port,
            count,
            last_client: client.into(),
            last_time: time,
        }
    }

    fn report(ports: Vec<Entry>) -> DenialReport {
        DenialReport {
            pod: "web-1".into(),
            ports,
        }
    }

    #[test]
    fn a_report_is_taken_by_port_with_its_times_no_later_than_its_arrival() {
        let ports = checked(
            &report(vec![
                entry(9090, 1, "unauthenticated", 50),
                entry(8080, 3, "spiffe://cluster.local/ns/shop/sa/other", 500),
            ]),
            100,
        )
        .unwrap();
        assert_eq!(
            ports,
            [
                PortDenials {
                    port: 8080,
                    count: 3,
                    last_client: "spiffe://cluster.local/ns/shop/sa/other".into(),
                    last_time: 100,
                },
                PortDenials {
                    port: 9090,
                    count: 1,
                    last_client: "unauthenticated".into(),
                    last_time: 50,
                },
            ]
        );
    }

    #[test]
    fn a_report_over_a_limit_is_refused_naming_it() {
        let many = (1..=65)
            .map(|p| entry(p, 1, "unauthenticated", 1))
            .collect();
        let refused = checked(&report(many), 100).unwrap_err();
        assert_eq!(refused, BadReport::TooManyPorts(65));
        assert!(
            refused.to_string().contains("at most 64 ports"),
            "{refused}"
        );
        let long = "x".repeat(MAX_CLIENT_ID + 1);
        let refused = checked(&report(vec![entry(8080, 1, &long, 1)]), 100).unwrap_err();
        assert!(
            refused.to_string().contains("at most 300 bytes"),
            "{refused}"
        );
        let at_limit = "x".repeat(MAX_CLIENT_ID);
        assert!(checked(&report(vec![entry(8080, 1, &at_limit, 1)]), 100).is_ok());
        assert_eq!(
            checked(&report(vec![entry(70_000, 1, "unauthenticated", 1)]), 100),
            Err(BadReport::BadPort(70_000))
        );
    }

    #[test]
    fn each_pod_keeps_its_latest_report_until_it_is_gone() {
        let changed = Arc::new(watch::channel(0).0);
        let mut changes = changed.subscribe();
        let reports = DenialReports::new(changed);
        let (web_1, web_2) = (Key::new("shop", "web-1"), Key::new("shop", "web-2"));
        let one = |count| {
            vec![PortDenials {
                port: 8080,
                count,
                last_client: "unauthenticated".into(),
                last_time: 1,
            }]
        };
        reports.replace(web_1.clone(), one(1), |_| true);
        reports.replace(web_2.clone(), one(5), |_| true);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        reports.replace(web_1.clone(), one(1), |_| true);
        assert!(
            !changes.has_changed().unwrap(),
            "the same report changes nothing"
        );
        reports.replace(web_1.clone(), one(2), |_| true);
        assert!(changes.has_changed().unwrap());
        assert_eq!(
            reports.of(&web_1),
            one(2),
            "the latest report replaces the last"
        );
        assert_eq!(reports.len(), 2);

        // web-2 is gone: its report goes with the next one taken.
        reports.replace(web_1.clone(), one(3), |k| *k == web_1);
        assert_eq!(reports.of(&web_2), []);
        assert_eq!(reports.len(), 1);
    }
}
