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

use std::time::Duration;

use weft_proxy_api::v1::denials_client::DenialsClient;

use super::discovery::Discovery;
use crate::denials::Denials;

/// The shortest time between two reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

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
