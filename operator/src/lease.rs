//! Leadership: one operator replica at a time holds the `weft-operator` Lease in the
//! operator's namespace, and only the holder writes status that several replicas would
//! otherwise fight over (MeshStatus, the Mesh's totals).
//!
//! The holder renews every [`RENEW`]; another replica takes the Lease over once it has
//! gone [`DURATION`] without renewal. Every write goes through the Lease's
//! resourceVersion, so two replicas racing for it cannot both win. On shutdown the
//! holder gives the Lease up, so a successor takes over at once.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;

/// The Lease's name.
pub const NAME: &str = "weft-operator";
/// How often the holder renews, and others check.
pub const RENEW: Duration = Duration::from_secs(5);
/// How long a Lease stays held without renewal.
pub const DURATION: Duration = Duration::from_secs(15);

/// Keeps trying to hold the Lease as `identity` until `shutdown` resolves; `leader`
/// says whether this replica holds it.
pub async fn run(
    client: Client,
    namespace: &str,
    identity: &str,
    leader: watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let api = Api::<Lease>::namespaced(client, namespace);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let held = match try_hold(&api, identity).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, "cannot read or write the leader Lease");
                false
            }
        };
        if leader.send_if_modified(|l| std::mem::replace(l, held) != held) {
            tracing::info!(identity, leader = held, "leadership changed");
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW) => {}
            _ = &mut shutdown => break,
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        let _ = release(&api, identity).await;
    }
}

/// One round: creates, renews or takes over the Lease. Whether we hold it after.
async fn try_hold(api: &Api<Lease>, identity: &str) -> kube::Result<bool> {
    let now = MicroTime(Timestamp::now());
    let Some(mut lease) = api.get_opt(NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.into()),
                lease_duration_seconds: Some(DURATION.as_secs() as i32),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_default();
    let ours = spec.holder_identity.as_deref() == Some(identity);
    if !ours && !expired(spec, now.0) {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(identity.into());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(DURATION.as_secs() as i32);
    spec.renew_time = Some(now);
    // The resourceVersion read above makes this a compare-and-swap.
    match api.replace(NAME, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the holder let the Lease lapse (or nobody holds it).
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    spec.renew_time
        .as_ref()
        .is_none_or(|t| t.0.as_second() + duration < now.as_second())
}

/// Gives the Lease up, if we still hold it.
async fn release(api: &Api<Lease>, identity: &str) -> kube::Result<()> {
    let mut lease = api.get(NAME).await?;
    let spec = lease.spec.get_or_insert_default();
    if spec.holder_identity.as_deref() == Some(identity) {
        spec.holder_identity = None;
        spec.renew_time = None;
        api.replace(NAME, &PostParams::default(), &lease).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_when_unrenewed_for_its_duration_or_unheld() {
        let at = |s| MicroTime(Timestamp::from_second(s).unwrap());
        let spec = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(at(1000)),
            ..Default::default()
        };
        let now = |s| Timestamp::from_second(s).unwrap();
        assert!(!expired(&spec, now(1010)));
        assert!(!expired(&spec, now(1015)));
        assert!(expired(&spec, now(1016)));
        let released = LeaseSpec {
            holder_identity: None,
            ..spec.clone()
        };
        assert!(expired(&released, now(1000)));
    }
}
