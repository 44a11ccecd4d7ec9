//! Publishing statuses: the Lease holder's loop that wakes on change, lets a burst
//! settle, computes every status ([`super::compute`], [`super::resources`]) and writes
//! only what differs from what it last wrote.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::OwnerReference, jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams},
    core::NamespaceResourceScope,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tokio::sync::watch;
use weft_api::{
    ACTIVE_MESH_NAME, Mesh, MeshStatus, MeshStatusSpec, ServerAuthorization,
    ServerAuthorizationState, ServiceProfile, ServiceProfileState, WorkloadState,
    condition::carry_transition_times, mesh_status::WorkloadKind,
};

use super::{
    compute::{Desired, Totals, compute},
    resources,
    settle::{Conditions, Settling},
};
use crate::discovery::{index::Index, key::Key, proxies::Proxies};

/// How long the publisher pauses after a wake-up, so that one computation covers a
/// burst of changes (each object's status is then held back until it settles, see
/// [`super::settle`]).
pub const SETTLE: Duration = Duration::from_millis(250);
/// How often it recomputes without a change.
pub const RESYNC: Duration = Duration::from_secs(10);
/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "weft-operator/status";
/// The label on every MeshStatus the operator writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "weft-operator");

/// Publishes statuses while this replica leads, until `shutdown` resolves.
pub async fn run(
    client: Client,
    index: Arc<Mutex<Index>>,
    proxies: Proxies,
    mut leader: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let mut publisher = Publisher {
        client,
        written: HashMap::new(),
        uids: HashMap::new(),
        totals: None,
        profiles: HashMap::new(),
        authorizations: HashMap::new(),
        settling: Held::default(),
    };
    let mut changes = proxies.changes();
    let Ok(mut index_changes) = index.lock().map(|i| i.changes()) else {
        return;
    };
    let work = async {
        loop {
            if leader.wait_for(|l| *l).await.is_err() {
                return;
            }
            if let Err(error) = publisher.load().await {
                tracing::warn!(%error, "cannot list MeshStatuses; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            while *leader.borrow() {
                let snapshot = {
                    let Ok(index) = index.lock() else { return };
                    index_changes.mark_unchanged();
                    let now = Timestamp::now();
                    index.pods_synced().then(|| {
                        (
                            compute(&index, &proxies, now),
                            resources::profiles(&index, now),
                            resources::authorizations(&index, now),
                        )
                    })
                };
                if let Some(((desired, totals), profiles, authorizations)) = snapshot {
                    if let Err(error) = publisher.publish(desired, totals).await {
                        tracing::warn!(%error, "cannot write status; retrying");
                    }
                    let client = &publisher.client;
                    let now = Instant::now();
                    let profiles = sync_status::<ServiceProfile, _>(
                        client,
                        &mut publisher.profiles,
                        &mut publisher.settling.profiles,
                        profiles,
                        now,
                    )
                    .await;
                    let authorizations = sync_status::<ServerAuthorization, _>(
                        client,
                        &mut publisher.authorizations,
                        &mut publisher.settling.authorizations,
                        authorizations,
                        now,
                    )
                    .await;
                    if let Err(error) = profiles.and(authorizations) {
                        tracing::warn!(%error, "cannot write status; retrying");
                    }
                }
                let wake = publisher
                    .settling
                    .next()
                    .unwrap_or_else(|| Instant::now() + RESYNC);
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = index_changes.changed() => {}
                    _ = tokio::time::sleep_until(wake.into()) => {}
                    _ = leader.changed() => {}
                }
                tokio::time::sleep(SETTLE).await;
            }
            // Lost the Lease: forget what we wrote, the next leader owns it now.
            publisher.written.clear();
            publisher.totals = None;
            publisher.profiles.clear();
            publisher.authorizations.clear();
            publisher.settling = Held::default();
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = work => {}
    }
}

struct Publisher {
    client: Client,
    /// What was last written, by MeshStatus.
    written: HashMap<Key, Option<WorkloadState>>,
    /// Deployment UIDs, by namespace and name.
    uids: HashMap<Key, String>,
    totals: Option<Totals>,
    /// The status last written (or read) of each ServiceProfile.
    profiles: HashMap<Key, ServiceProfileState>,
    /// The status last written (or read) of each ServerAuthorization.
    authorizations: HashMap<Key, ServerAuthorizationState>,
    /// The changed statuses held back until they settle.
    settling: Held,
}

/// The changed statuses held back until they settle, by kind.
#[derive(Default)]
struct Held {
    workloads: Settling<WorkloadState>,
    profiles: Settling<ServiceProfileState>,
    authorizations: Settling<ServerAuthorizationState>,
}

impl Held {
    /// The earliest time a held-back status may be written.
    fn next(&self) -> Option<Instant> {
        [
            self.workloads.next(),
            self.profiles.next(),
            self.authorizations.next(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl Conditions for WorkloadState {
    fn conditions(&self) -> &[weft_api::Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<weft_api::Condition> {
        &mut self.conditions
    }
}

impl Conditions for ServiceProfileState {
    fn conditions(&self) -> &[weft_api::Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<weft_api::Condition> {
        &mut self.conditions
    }
}

impl Conditions for ServerAuthorizationState {
    fn conditions(&self) -> &[weft_api::Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<weft_api::Condition> {
        &mut self.conditions
    }
}

/// Reads the status of every `K`, so that what is already there is not written again.
async fn load_status<K, S>(
    client: &Client,
    status: fn(K) -> Option<S>,
) -> kube::Result<HashMap<Key, S>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let list = Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|object| {
            let key = Key::new(
                object.meta().namespace.as_deref()?,
                object.meta().name.as_deref()?,
            );
            Some((key, status(object)?))
        })
        .collect())
}

/// Writes each status of `desired` that differs from what `written` holds once it has
/// settled, and forgets the objects that are gone.
async fn sync_status<K, S>(
    client: &Client,
    written: &mut HashMap<Key, S>,
    settling: &mut Settling<S>,
    desired: BTreeMap<Key, S>,
    now: Instant,
) -> kube::Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Conditions + Serialize + PartialEq + Clone,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut failed = Ok(());
    written.retain(|key, _| desired.contains_key(key));
    settling.retain(|key| desired.contains_key(key));
    for (key, mut want) in desired {
        if let Some(current) = written.get_mut(&key) {
            let carried = carry_transition_times(
                current.conditions_mut(),
                std::mem::take(want.conditions_mut()),
            );
            *want.conditions_mut() = carried;
            if *current == want {
                settling.settled(&key);
                continue;
            }
        }
        if !settling.ready(&key, &mut want, now) {
            continue;
        }
        // Written or failed: either way a later round starts afresh.
        settling.settled(&key);
        let body = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": want,
        });
        let api = Api::<K>::namespaced(client.clone(), &key.namespace);
        match api
            .patch_status(&key.name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                written.insert(key, want);
            }
            // Deleted meanwhile: the index will hear of it.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => failed = Err(error),
        }
    }
    failed
}

impl Publisher {
    /// Learns which MeshStatuses exist, and their status, and the status of every
    /// ServiceProfile and ServerAuthorization.
    async fn load(&mut self) -> kube::Result<()> {
        self.profiles = load_status(&self.client, |p: ServiceProfile| p.status).await?;
        self.authorizations = load_status(&self.client, |a: ServerAuthorization| a.status).await?;
        let label = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let list = Api::<MeshStatus>::all(self.client.clone())
            .list(&ListParams::default().labels(&label))
            .await?;
        self.written = list
            .items
            .into_iter()
            .filter_map(|m| Some((Key::new(&m.namespace()?, &m.name_any()), m.status)))
            .collect();
        Ok(())
    }

    async fn publish(
        &mut self,
        desired: BTreeMap<Key, Desired>,
        totals: Totals,
    ) -> kube::Result<()> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut failed = None;
        let keep: std::collections::BTreeSet<Key> = desired.keys().cloned().collect();
        let now = Instant::now();
        self.settling.workloads.retain(|key| keep.contains(key));
        for (key, mut want) in desired {
            let api = Api::<MeshStatus>::namespaced(self.client.clone(), &key.namespace);
            let current = self.written.get(&key);
            if let Some(Some(state)) = current {
                want.state.conditions =
                    carry_transition_times(&state.conditions, want.state.conditions);
                if *state == want.state {
                    self.settling.workloads.settled(&key);
                    continue;
                }
            }
            if !self.settling.workloads.ready(&key, &mut want.state, now) {
                continue;
            }
            self.settling.workloads.settled(&key);
            if current.is_none() {
                let Some(owner) = self.owner(&key, &want).await? else {
                    continue;
                };
                let object = MeshStatus {
                    metadata: ObjectMeta {
                        name: Some(key.name.clone()),
                        namespace: Some(key.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            MANAGED_BY.0.to_string(),
                            MANAGED_BY.1.to_string(),
                        )])),
                        owner_references: Some(vec![owner]),
                        ..Default::default()
                    },
                    spec: MeshStatusSpec {
                        workload: want.workload.clone(),
                    },
                    status: None,
                };
                if let Err(error) = api.patch(&key.name, &params, &Patch::Apply(&object)).await {
                    failed = Some(error);
                    continue;
                }
            }
            let status = json!({
                "apiVersion": MeshStatus::api_version(&()),
                "kind": MeshStatus::kind(&()),
                "status": want.state,
            });
            match api
                .patch_status(&key.name, &params, &Patch::Apply(&status))
                .await
            {
                Ok(_) => {
                    self.written.insert(key, Some(want.state));
                }
                Err(error) => failed = Some(error),
            }
        }
        let gone: Vec<Key> = self
            .written
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            let api = Api::<MeshStatus>::namespaced(self.client.clone(), &key.namespace);
            match api.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(error) => {
                    failed = Some(error);
                    continue;
                }
            }
            self.written.remove(&key);
            self.uids.remove(&key);
        }
        if self.totals.as_ref() != Some(&totals) {
            let status = json!({
                "apiVersion": Mesh::api_version(&()),
                "kind": Mesh::kind(&()),
                "status": {
                    "meshedPods": totals.meshed_pods,
                    "connectedProxies": totals.connected_proxies,
                },
            });
            match Api::<Mesh>::all(self.client.clone())
                .patch_status(ACTIVE_MESH_NAME, &params, &Patch::Apply(&status))
                .await
            {
                Ok(_) => self.totals = Some(totals),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(error) => failed = Some(error),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// The owner reference of a new MeshStatus: its workload.
    async fn owner(&mut self, key: &Key, want: &Desired) -> kube::Result<Option<OwnerReference>> {
        let uid = match (&want.uid, want.workload.kind) {
            (Some(uid), _) => uid.clone(),
            (None, WorkloadKind::Deployment) => match self.uids.get(key) {
                Some(uid) => uid.clone(),
                None => {
                    let api = Api::<Deployment>::namespaced(self.client.clone(), &key.namespace);
                    let Some(uid) = api.get_opt(&key.name).await?.and_then(|d| d.metadata.uid)
                    else {
                        return Ok(None);
                    };
                    self.uids.insert(key.clone(), uid.clone());
                    uid
                }
            },
            (None, _) => return Ok(None),
        };
        Ok(Some(OwnerReference {
            api_version: want.workload.api_version.clone(),
            kind: format!("{:?}", want.workload.kind),
            name: want.workload.name.clone(),
            uid,
            controller: Some(false),
            block_owner_deletion: Some(false),
        }))
    }
}
