//! Status publication: one `MeshStatus` per meshed workload, the Mesh's totals, and
//! the status of every ServiceProfile and ServerAuthorization ([`resources`]), computed
//! from the discovery index (pods, policies, profiles) and the connected proxies (what
//! they acknowledged), and written by the Lease holder only.
//!
//! Writes are coalesced: the publisher wakes on any change, waits [`SETTLE`] for the
//! burst to end, computes every status, and writes only those that differ from what it
//! last wrote — so a rollout of fifty pods is a handful of writes per MeshStatus, not
//! hundreds. It also recomputes every [`RESYNC`], since time alone changes nothing but
//! a proxy's policy version can move without a pod event.
//!
//! A MeshStatus is named after its workload and owned by it (garbage collected with
//! it); the publisher also deletes one whose workload has no pod left. Workloads of
//! the same name and different kinds in one namespace share the name: the first kind
//! in [`WorkloadKind`] order wins, and the others are logged.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
    jiff::Timestamp,
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
    condition::{ConditionStatus, carry_transition_times, condition},
    mesh_status::{
        InboundPortState, PodCounts, ProxyCounts, Summary, WorkloadKind, WorkloadRef, conditions,
    },
};

use crate::discovery::{index::Index, key::Key, pods::Workload, proxies::Proxies};

pub mod resources;

/// How long the publisher waits for a burst of changes to end.
pub const SETTLE: Duration = Duration::from_millis(250);
/// How often it recomputes without a change.
pub const RESYNC: Duration = Duration::from_secs(10);
/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "weft-operator/status";
/// The label on every MeshStatus the operator writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "weft-operator");

/// One workload's MeshStatus, as computed.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub workload: WorkloadRef,
    /// The workload's UID when the pods know it (not a Deployment's).
    pub uid: Option<String>,
    pub state: WorkloadState,
}

/// The Mesh's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub meshed_pods: i64,
    pub connected_proxies: i64,
}

/// Computes every MeshStatus (keyed by namespace and name) and the Mesh's totals.
pub fn compute(
    index: &Index,
    proxies: &Proxies,
    now: Timestamp,
) -> (BTreeMap<Key, Desired>, Totals) {
    // Pods by workload, terminating pods left out.
    // (namespace, name, kind order) → the workload, its kind, its pods.
    type Pods = (Workload, WorkloadKind, Vec<Key>);
    let mut workloads: BTreeMap<(String, String, u8), Pods> = BTreeMap::new();
    let mut totals = Totals::default();
    // Each connected proxy's report, taken once.
    let mut reports = HashMap::new();
    for (key, pod) in index.pods() {
        if pod.terminating {
            continue;
        }
        if pod.meshed {
            totals.meshed_pods += 1;
            if let Some(report) = proxies.report(key) {
                totals.connected_proxies += 1;
                reports.insert(key.clone(), report);
            }
        }
        let Some(workload) = &pod.workload else {
            continue;
        };
        let Some(kind) = kind_of(&workload.kind) else {
            continue;
        };
        workloads
            .entry((key.namespace.clone(), workload.name.clone(), kind as u8))
            .or_insert_with(|| (workload.clone(), kind, Vec::new()))
            .2
            .push(key.clone());
    }
    let mut desired = BTreeMap::new();
    for ((namespace, name, _), (workload, kind, mut pods)) in workloads {
        pods.sort();
        let key = Key::new(&namespace, &name);
        if desired.contains_key(&key) {
            tracing::debug!(%namespace, %name, ?kind, "another workload kind has this MeshStatus name");
            continue;
        }
        let infos: Vec<_> = pods
            .iter()
            .filter_map(|p| index.pod(p).map(|i| (p, i)))
            .collect();
        if !infos.iter().any(|(_, i)| i.meshed) {
            continue;
        }
        let total = infos.len() as i32;
        let meshed = infos.iter().filter(|(_, i)| i.meshed).count() as i32;
        let ready = infos.iter().filter(|(_, i)| i.ready).count() as i32;
        let reports: Vec<_> = infos
            .iter()
            .filter(|(_, i)| i.meshed)
            .filter_map(|(p, _)| reports.get(*p))
            .collect();
        let connected = reports.len() as i32;
        let in_sync = reports.iter().filter(|r| r.in_sync).count() as i32;
        let expiry = reports
            .iter()
            .filter_map(|r| r.not_after)
            .min()
            .and_then(|s| Timestamp::from_second(s).ok())
            .map(Time);
        // The first meshed pod stands for the workload's template.
        let first: Option<&Key> = infos.iter().find(|(_, i)| i.meshed).map(|(p, _)| *p);
        let (inbound_ports, config_version) =
            first.map(|p| inbound_ports(index, p)).unwrap_or_default();
        let conditions = vec![
            condition(
                conditions::MESHED,
                ConditionStatus::from(meshed == total),
                if meshed == total {
                    "AllPodsMeshed"
                } else {
                    "PodsWithoutProxy"
                },
                format!("{meshed} of {total} pods run a proxy"),
                None,
                now,
            ),
            condition(
                conditions::IN_SYNC,
                ConditionStatus::from(meshed > 0 && in_sync == meshed),
                if meshed > 0 && in_sync == meshed {
                    "AllProxiesInSync"
                } else if connected < meshed {
                    "ProxiesNotConnected"
                } else {
                    "ProxiesBehind"
                },
                format!(
                    "{in_sync} of {meshed} proxies acknowledged their current configuration \
                     ({connected} connected)"
                ),
                None,
                now,
            ),
        ];
        let state = WorkloadState {
            observed_generation: None,
            conditions,
            pods: PodCounts {
                total,
                meshed,
                ready,
            },
            proxies: ProxyCounts { connected, in_sync },
            summary: Summary {
                meshed: format!("{meshed}/{total}"),
                ready: format!("{ready}/{total}"),
                in_sync: format!("{in_sync}/{meshed}"),
            },
            identity: first.and_then(|p| index.identity_of(p)),
            certificate_expiry: expiry,
            config_version: Some(config_version).filter(|v| !v.is_empty()),
            inbound_ports,
        };
        desired.insert(
            key,
            Desired {
                workload: WorkloadRef {
                    api_version: api_version(kind).into(),
                    kind,
                    name: workload.name.clone(),
                },
                uid: workload.uid.clone(),
                state,
            },
        );
    }
    (desired, totals)
}

/// The inbound ports of `pod` with their protocol and policy, and a version over the
/// policies of all its ports (the undeclared ones included).
fn inbound_ports(index: &Index, pod: &Key) -> (Vec<InboundPortState>, String) {
    let Some(info) = index.pod(pod) else {
        return Default::default();
    };
    let mut versions = String::new();
    if let Some(policy) = index.policy(pod, 0) {
        versions.push_str(&policy.version);
    }
    let mut ports = Vec::new();
    for (name, number) in &info.ports {
        let (Some(policy), Some(port)) = (index.policy(pod, *number), weft_api::Port::new(*number))
        else {
            continue;
        };
        versions.push_str(&policy.version);
        let names: Vec<&str> = policy
            .authorizations
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        ports.push(InboundPortState {
            port,
            name: name.clone(),
            protocol: policy.protocol.clone(),
            policy: if names.is_empty() {
                "deny".into()
            } else {
                names.join(",")
            },
        });
    }
    (ports, crate::short_hash(versions.as_bytes()))
}

fn kind_of(kind: &str) -> Option<WorkloadKind> {
    Some(match kind {
        "Deployment" => WorkloadKind::Deployment,
        "StatefulSet" => WorkloadKind::StatefulSet,
        "DaemonSet" => WorkloadKind::DaemonSet,
        "Job" => WorkloadKind::Job,
        "Pod" => WorkloadKind::Pod,
        _ => return None,
    })
}

fn api_version(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment | WorkloadKind::StatefulSet | WorkloadKind::DaemonSet => "apps/v1",
        WorkloadKind::Job => "batch/v1",
        WorkloadKind::Pod => "v1",
    }
}

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
                    let profiles =
                        sync_status::<ServiceProfile, _>(client, &mut publisher.profiles, profiles)
                            .await;
                    let authorizations = sync_status::<ServerAuthorization, _>(
                        client,
                        &mut publisher.authorizations,
                        authorizations,
                    )
                    .await;
                    if let Err(error) = profiles.and(authorizations) {
                        tracing::warn!(%error, "cannot write status; retrying");
                    }
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = index_changes.changed() => {}
                    _ = tokio::time::sleep(RESYNC) => {}
                    _ = leader.changed() => {}
                }
                tokio::time::sleep(SETTLE).await;
            }
            // Lost the Lease: forget what we wrote, the next leader owns it now.
            publisher.written.clear();
            publisher.totals = None;
            publisher.profiles.clear();
            publisher.authorizations.clear();
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
}

/// A status with conditions, whose transition times carry over unchanged conditions.
trait Conditions {
    fn conditions_mut(&mut self) -> &mut Vec<weft_api::Condition>;
}

impl Conditions for ServiceProfileState {
    fn conditions_mut(&mut self) -> &mut Vec<weft_api::Condition> {
        &mut self.conditions
    }
}

impl Conditions for ServerAuthorizationState {
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

/// Writes each status of `desired` that differs from what `written` holds, and forgets
/// the objects that are gone.
async fn sync_status<K, S>(
    client: &Client,
    written: &mut HashMap<Key, S>,
    desired: BTreeMap<Key, S>,
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
    for (key, mut want) in desired {
        if let Some(current) = written.get_mut(&key) {
            let carried = carry_transition_times(
                current.conditions_mut(),
                std::mem::take(want.conditions_mut()),
            );
            *want.conditions_mut() = carried;
            if *current == want {
                continue;
            }
        }
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
        for (key, mut want) in desired {
            let api = Api::<MeshStatus>::namespaced(self.client.clone(), &key.namespace);
            let current = self.written.get(&key);
            if let Some(Some(state)) = current {
                want.state.conditions =
                    carry_transition_times(&state.conditions, want.state.conditions);
                if *state == want.state {
                    continue;
                }
            }
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    fn pod(name: &str, meshed: bool, ready: bool, terminating: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "namespace": "shop", "name": name,
                "labels": {"app": "web", "pod-template-hash": "5985cc664",
                           "weft.dev/injected": meshed.to_string()},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-5985cc664", "uid": "rs", "controller": true}],
            },
            "spec": {"serviceAccountName": "web", "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
            ]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap();
        if terminating {
            pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        }
        pod
    }

    #[test]
    fn a_workload_status_counts_pods_and_proxies_that_acknowledged() {
        let mut index = Index::new("cluster.local", "cluster.local");
        index.replace_pods(&[
            pod("web-1", true, true, false),
            pod("web-2", true, false, false),
            pod("web-3", false, true, false),
            pod("web-4", true, true, true),
        ]);
        let proxies = Proxies::default();
        let web_1 = Key::new("shop", "web-1");
        let version = index.policy(&web_1, 0).unwrap().version;
        let _stream = proxies.open(
            web_1.clone(),
            "inbound:0".into(),
            move || version.clone(),
            Some(4_000_000_000),
        );
        let _behind = proxies.open(
            Key::new("shop", "web-2"),
            "inbound:0".into(),
            || "new".into(),
            Some(3_000_000_000),
        );
        proxies
            .ack(
                &web_1,
                "inbound:0",
                index.policy(&web_1, 0).unwrap().version,
            )
            .unwrap();

        let (desired, totals) = compute(&index, &proxies, Timestamp::now());
        assert_eq!(
            totals,
            Totals {
                meshed_pods: 2,
                connected_proxies: 2
            }
        );
        let web = &desired[&Key::new("shop", "web")];
        assert_eq!(web.workload.kind, WorkloadKind::Deployment);
        assert_eq!(web.uid, None, "a Deployment's UID is not on its pods");
        let state = &web.state;
        assert_eq!(
            (
                state.summary.meshed.as_str(),
                state.summary.ready.as_str(),
                state.summary.in_sync.as_str()
            ),
            ("2/3", "2/3", "1/2")
        );
        assert_eq!(
            state.proxies,
            ProxyCounts {
                connected: 2,
                in_sync: 1
            }
        );
        assert_eq!(
            state.identity.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/web")
        );
        assert_eq!(
            state.certificate_expiry.as_ref().unwrap().0.as_second(),
            3_000_000_000
        );
        assert_eq!(state.inbound_ports[0].policy, "default:all-unauthenticated");
        assert_eq!(state.inbound_ports[0].protocol, "detect");
        let in_sync = state
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::IN_SYNC)
            .unwrap();
        assert_eq!(
            (in_sync.status.as_str(), in_sync.reason.as_str()),
            ("False", "ProxiesBehind")
        );

        // No meshed pod left: no MeshStatus.
        index.replace_pods(&[pod("web-3", false, true, false)]);
        assert!(compute(&index, &proxies, Timestamp::now()).0.is_empty());
    }
}
