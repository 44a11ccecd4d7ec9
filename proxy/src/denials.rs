//! The log of what the proxy's inbound policy refused, per port: written by the data
//! plane at each refusal (a connection, and each HTTP request on a refused connection
//! — what `inbound_tcp_authz_deny_total` and `inbound_http_authz_deny_total` count),
//! read by the denial report ([`crate::control::report`]) that the operator turns into
//! each workload's recent denials. Bounded: at most [`MAX_PORTS`] ports (a refusal at a
//! further port is counted in the metrics only) and a client identity of at most
//! [`MAX_CLIENT_ID`] bytes (longer ones are cut on a character boundary).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use weft_proxy_api::v1::{DenialReport, PortDenials};

use crate::authz::Refusal;

/// The most ports a report names, as the operator accepts.
pub const MAX_PORTS: usize = 64;
/// The longest client identity a report carries, in bytes, as the operator accepts.
pub const MAX_CLIENT_ID: usize = 300;
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
}
