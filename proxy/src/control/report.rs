//! The proxy's denial report: what its inbound policy refused, per port, sent to the
//! operator (`Denials.Report`) so that MeshStatus shows each workload's recent denials.
//!
//! [`Denials`] is the log the data plane writes: each refusal (a connection, and each
//! HTTP request on a refused connection — what `inbound_tcp_authz_deny_total` and
//! `inbound_http_authz_deny_total` count) adds one to its port's count and becomes the
//! port's last client and time. It is bounded: at most [`MAX_PORTS`] ports (a refusal
//! at a further port is counted in the metrics only) and a client identity of at most
//! [`MAX_CLIENT_ID`] bytes (longer ones are cut on a character boundary).
//!
//! [`run`] sends the whole log, the counts since the proxy started, when it changed
//! since the last report the operator took, at most every [`REPORT_EVERY`]; and again
//! after the control channel was reconnected (a restarted or other operator replica
//! holds no report of this pod yet). A report the operator refuses or cannot take is
//! sent again at the next round. It goes over discovery's mutual-TLS channel.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use weft_proxy_api::v1::{DenialReport, PortDenials, denials_client::DenialsClient};

use super::discovery::Discovery;
use crate::authz::Refusal;

/// The most ports a report names, as the operator accepts.
pub const MAX_PORTS: usize = 64;
/// The longest client identity a report carries, in bytes, as the operator accepts.
pub const MAX_CLIENT_ID: usize = 300;
/// The shortest time between two reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The denials counted since the proxy started, per inbound port. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Denials {
    inner: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    ports: BTreeMap<u16, PortLog>,
    /// Grows with every refusal recorded: tells the reporter something changed.
    changes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PortLog {
    count: u64,
    last_client: String,
    last_time: i64,
}

impl Denials {
    /// Records one refusal: a refused connection, or a request on one.
    pub fn record(&self, refusal: &Refusal) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.record_at(refusal.server, refusal.client_name(), now);
    }

    fn record_at(&self, port: u16, client: &str, time: i64) {
        let mut log = self.lock();
        if !log.ports.contains_key(&port) && log.ports.len() >= MAX_PORTS {
            return;
        }
        let entry = log.ports.entry(port).or_insert_with(|| PortLog {
            count: 0,
            last_client: String::new(),
            last_time: 0,
        });
        entry.count += 1;
        entry.last_time = time;
        if entry.last_client != client {
            entry.last_client = truncated(client, MAX_CLIENT_ID).to_string();
        }
        log.changes += 1;
    }

    /// How many refusals were recorded, and the report of them for `pod`.
    pub fn report(&self, pod: &str) -> (u64, DenialReport) {
        let log = self.lock();
        let ports = log
            .ports
            .iter()
            .map(|(port, p)| PortDenials {
                port: (*port).into(),
                count: p.count,
                last_client: p.last_client.clone(),
                last_time: p.last_time,
            })
            .collect();
        (
            log.changes,
            DenialReport {
                pod: pod.to_string(),
                ports,
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // Nothing panics while holding the lock; a poisoned one still holds valid data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What the operator last took: the refusals it covered and the channel it went over.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sent {
    changes: u64,
    generation: Option<u64>,
}

impl Sent {
    /// Whether a report of `changes` refusals is due over channel `generation`.
    fn due(self, changes: u64, generation: u64) -> bool {
        changes > 0 && (changes != self.changes || Some(generation) != self.generation)
    }
}

/// Reports `denials` of `pod` to the operator, forever (see the module docs).
pub async fn run(discovery: Discovery, pod: String, denials: Denials) {
    let mut sent = Sent::default();
    let mut rounds = tokio::time::interval(REPORT_EVERY);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        rounds.tick().await;
        if denials.report(&pod).0 == 0 {
            continue;
        }
        let (generation, channel) = discovery.channel().await;
        let (changes, report) = denials.report(&pod);
        if !sent.due(changes, generation) {
            continue;
        }
        match DenialsClient::new(channel).report(report).await {
            Ok(_) => {
                sent = Sent {
                    changes,
                    generation: Some(generation),
                };
            }
            Err(status) => {
                tracing::debug!(%status, "the operator did not take the denial report; resending later");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(denials: &Denials) -> Vec<(u32, u64, String, i64)> {
        denials
            .report("web-1")
            .1
            .ports
            .into_iter()
            .map(|p| (p.port, p.count, p.last_client, p.last_time))
            .collect()
    }

    #[test]
    fn each_port_counts_its_refusals_and_keeps_the_last_client_and_time() {
        let denials = Denials::default();
        assert_eq!(denials.report("web-1").0, 0, "nothing recorded yet");
        let other = "spiffe://cluster.local/ns/shop/sa/other";
        denials.record_at(8080, "unauthenticated", 100);
        denials.record_at(8080, other, 105);
        denials.record_at(9090, other, 103);
        let (changes, report) = denials.report("web-1");
        assert_eq!((changes, report.pod.as_str()), (3, "web-1"));
        assert_eq!(
            ports(&denials),
            [
                (8080, 2, other.to_string(), 105),
                (9090, 1, other.to_string(), 103)
            ]
        );
    }

    #[test]
    fn the_log_is_bounded_in_ports_and_identity_length() {
        let denials = Denials::default();
        for port in 1..=100 {
            denials.record_at(port, "unauthenticated", 1);
        }
        denials.record_at(7, &"é".repeat(200), 2);
        let ports = ports(&denials);
        assert_eq!(ports.len(), MAX_PORTS);
        assert_eq!(ports.last().map(|p| p.0), Some(MAX_PORTS as u32));
        let long = &ports[6].2;
        assert_eq!(long.len(), MAX_CLIENT_ID, "cut on a character boundary");
        assert_eq!(ports[6].1, 2);
    }

    #[test]
    fn a_report_is_due_when_counts_changed_or_the_channel_is_new() {
        let sent = Sent::default();
        assert!(!sent.due(0, 1), "nothing to say");
        assert!(sent.due(3, 1));
        let sent = Sent {
            changes: 3,
            generation: Some(1),
        };
        assert!(!sent.due(3, 1), "nothing changed");
        assert!(sent.due(4, 1), "a new refusal");
        assert!(
            sent.due(3, 2),
            "reconnected: the operator may hold no report"
        );
    }
}
