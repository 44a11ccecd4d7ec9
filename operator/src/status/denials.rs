//! A workload's `recentDenials`: the denial reports of its pods' proxies
//! ([`crate::denials`]), summed per port. Pure.
//!
//! Per port, the count is the sum of the pods' counts (each since its proxy started,
//! so it drops when a pod is replaced), and the last client and time are those of the
//! pod whose last refusal is the latest. The most recent ports come first, at most
//! [`MAX_RECENT_DENIALS`] of them.

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use weft_api::{Port, mesh_status::RecentDenials};

use crate::{
    denials::{DenialReports, PortDenials},
    discovery::key::Key,
};

/// The most ports a MeshStatus lists in `recentDenials`.
pub const MAX_RECENT_DENIALS: usize = 20;

/// The recent denials of the workload made of `pods`, from their proxies' `reports`.
pub fn recent_denials<'a>(
    reports: &DenialReports,
    pods: impl IntoIterator<Item = &'a Key>,
) -> Vec<RecentDenials> {
    let reported: Vec<PortDenials> = pods.into_iter().flat_map(|p| reports.of(p)).collect();
    summed(&reported)
}

/// `reported` (entries of several pods) summed per port, the most recent first, at
/// most [`MAX_RECENT_DENIALS`].
fn summed(reported: &[PortDenials]) -> Vec<RecentDenials> {
    let mut ports: BTreeMap<u16, PortDenials> = BTreeMap::new();
    for entry in reported {
        match ports.get_mut(&entry.port) {
            None => {
                ports.insert(entry.port, entry.clone());
            }
            Some(sum) => {
                sum.count = sum.count.saturating_add(entry.count);
                if entry.last_time > sum.last_time {
                    sum.last_time = entry.last_time;
                    sum.last_client.clone_from(&entry.last_client);
                }
            }
        }
    }
    let mut sums: Vec<PortDenials> = ports.into_values().collect();
    // The latest first; the lower port first among equals, so the order is stable.
    sums.sort_by(|a, b| b.last_time.cmp(&a.last_time).then(a.port.cmp(&b.port)));
    sums.into_iter()
        .filter_map(|sum| {
            Some(RecentDenials {
                port: Port::new(sum.port)?,
                count: i64::try_from(sum.count).unwrap_or(i64::MAX),
                last_client: sum.last_client,
                last_time: Time(Timestamp::from_second(sum.last_time).unwrap_or_default()),
            })
        })
        .take(MAX_RECENT_DENIALS)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn entry(port: u16, count: u64, client: &str, time: i64) -> PortDenials {
        PortDenials {
            port,
            count,
            last_client: client.into(),
            last_time: time,
        }
    }

    fn brief(denials: &[RecentDenials]) -> Vec<(u16, i64, &str, i64)> {
        denials
            .iter()
            .map(|d| {
                (
                    d.port.get(),
                    d.count,
                    d.last_client.as_str(),
                    d.last_time.0.as_second(),
                )
            })
            .collect()
    }

    #[test]
    fn a_workloads_denials_are_summed_per_port_with_the_latest_client_first() {
        let reports = DenialReports::new(Arc::new(tokio::sync::watch::channel(0).0));
        let (web_1, web_2, db_1) = (
            Key::new("shop", "web-1"),
            Key::new("shop", "web-2"),
            Key::new("shop", "db-1"),
        );
        let other = "spiffe://cluster.local/ns/shop/sa/other";
        reports.replace(
            web_1.clone(),
            vec![
                entry(8080, 3, other, 200),
                entry(9090, 1, "unauthenticated", 300),
            ],
            |_| true,
        );
        reports.replace(
            web_2.clone(),
            vec![entry(8080, 4, "unauthenticated", 100)],
            |_| true,
        );
        reports.replace(db_1, vec![entry(5432, 9, other, 400)], |_| true);

        let web = recent_denials(&reports, [&web_1, &web_2]);
        assert_eq!(
            brief(&web),
            [(9090, 1, "unauthenticated", 300), (8080, 7, other, 200),],
            "the other workload's pod is not counted"
        );
        assert_eq!(recent_denials(&reports, [&Key::new("shop", "web-3")]), []);
    }

    #[test]
    fn at_most_twenty_ports_are_listed_the_most_recent_first() {
        let reported: Vec<_> = (1..=30)
            .map(|p| entry(p, 1, "unauthenticated", i64::from(p)))
            .collect();
        let listed = summed(&reported);
        assert_eq!(listed.len(), MAX_RECENT_DENIALS);
        assert_eq!(listed[0].port.get(), 30);
        assert_eq!(listed[19].port.get(), 11);
    }
}
