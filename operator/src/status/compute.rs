//! Computing statuses: each meshed workload's MeshStatus and the Mesh's totals, from the
//! discovery index (pods, policies) and the connected proxies (what they
//! acknowledged). Pure: no Kubernetes calls; the publisher ([`super::publish`]) writes
//! what this computes.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use weft_api::{
    WorkloadState,
    condition::{ConditionStatus, condition},
    mesh_status::{
        InboundPortState, PodCounts, ProxyCounts, Summary, UnmeshedPod, WorkloadKind, WorkloadRef,
        conditions,
    },
};

use crate::discovery::{index::Index, key::Key, pods::Workload, proxies::Proxies};

/// The most unmeshed pods a MeshStatus names (`pods.total - pods.meshed` counts all).
pub const UNMESHED_LISTED: usize = 20;

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
        // A workload with a meshed pod, or with a pod that asked to be or looks meshed
        // and is not (so that what the mesh does not cover shows).
        if !infos
            .iter()
            .any(|(_, i)| i.meshed || i.not_meshed.is_some())
        {
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
        let unmeshed: Vec<UnmeshedPod> = infos
            .iter()
            .filter(|(_, i)| !i.meshed)
            .map(|(p, i)| match &i.not_meshed {
                Some(why) => UnmeshedPod {
                    name: p.name.clone(),
                    reason: why.reason.clone(),
                    message: why.message.clone(),
                },
                None => UnmeshedPod {
                    name: p.name.clone(),
                    reason: "NoProxy".into(),
                    message: "it runs no proxy: it was created before injection was asked \
                              for, or while the injector was away; recreate it to mesh it"
                        .into(),
                },
            })
            .collect();
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for pod in &unmeshed {
            *reasons.entry(pod.reason.as_str()).or_default() += 1;
        }
        let mut meshed_message = format!("{meshed} of {total} pods run a proxy");
        if !reasons.is_empty() {
            let counts: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            meshed_message.push_str(&format!("; not meshed: {}", counts.join(", ")));
        }
        let conditions = vec![
            condition(
                conditions::MESHED,
                ConditionStatus::from(meshed == total),
                match reasons.keys().copied().collect::<Vec<_>>()[..] {
                    [] => "AllPodsMeshed",
                    // A reason from a pod's annotation is used only when it is one.
                    [only] if is_reason(only) => only,
                    _ => "PodsWithoutProxy",
                },
                meshed_message,
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
            recent_denials: super::denials::recent_denials(proxies.denials(), &pods),
            config_version: Some(config_version).filter(|v| !v.is_empty()),
            inbound_ports,
            unmeshed_pods: unmeshed.into_iter().take(UNMESHED_LISTED).collect(),
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

/// Whether `reason` is a condition reason the API server accepts (CamelCase).
fn is_reason(reason: &str) -> bool {
    reason.len() <= 64
        && reason.starts_with(|c: char| c.is_ascii_alphabetic())
        && reason.chars().all(|c| c.is_ascii_alphanumeric())
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    use super::*;

    fn pod(name: &str, meshed: bool, ready: bool, terminating: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "namespace": "shop", "name": name,
                "labels": {"app": "web", "pod-template-hash": "5985cc664"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-5985cc664", "uid": "rs", "controller": true}],
            },
            "spec": {"serviceAccountName": "web", "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
            ]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap();
        if meshed {
            pod = crate::inject::as_injected(pod);
        }
        if terminating {
            pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        }
        pod
    }

    fn not_meshed(mut pod: Pod, reason: &str) -> Pod {
        pod.metadata.annotations = Some(
            [
                ("weft.dev/not-meshed".to_string(), reason.to_string()),
                (
                    "weft.dev/not-meshed-message".to_string(),
                    format!("because {reason}"),
                ),
            ]
            .into(),
        );
        pod
    }

    fn meshed_condition(state: &WorkloadState) -> (String, String, String) {
        let c = state
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::MESHED)
            .unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn pods_that_should_be_meshed_and_are_not_are_listed_with_why() {
        let mut index = Index::new("cluster.local", "cluster.local");
        let proxies = Proxies::default();
        // No meshed pod at all, but the injector said why: the workload shows.
        index.replace_pods(&[
            not_meshed(pod("web-1", false, true, false), "HostNetwork"),
            not_meshed(pod("web-2", false, true, false), "HostNetwork"),
        ]);
        let (desired, totals) = compute(&index, &proxies, Timestamp::now());
        assert_eq!(totals.meshed_pods, 0);
        let state = &desired[&Key::new("shop", "web")].state;
        assert_eq!(state.summary.meshed, "0/2");
        assert_eq!(state.identity, None, "no identity for unmeshed pods");
        let names: Vec<_> = state
            .unmeshed_pods
            .iter()
            .map(|p| (p.name.as_str(), p.reason.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("web-1", "HostNetwork", "because HostNetwork"),
                ("web-2", "HostNetwork", "because HostNetwork")
            ]
        );
        let (status, reason, message) = meshed_condition(state);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "HostNetwork"));
        assert!(message.contains("HostNetwork: 2"), "{message}");

        // Mixed reasons, a pod without a proxy and no reason, and one that merely
        // claims to be meshed.
        let mut claims = pod("web-4", false, true, false);
        claims
            .metadata
            .labels
            .get_or_insert_default()
            .insert("weft.dev/injected".into(), "true".into());
        index.replace_pods(&[
            pod("web-0", true, true, false),
            not_meshed(pod("web-1", false, true, false), "ProxyUid"),
            pod("web-3", false, true, false),
            claims,
            // A reason that is not a condition reason is listed, never a condition's.
            not_meshed(pod("web-5", false, true, false), "not a reason!"),
        ]);
        let (desired, totals) = compute(&index, &proxies, Timestamp::now());
        assert_eq!(totals.meshed_pods, 1);
        let state = &desired[&Key::new("shop", "web")].state;
        assert_eq!(state.summary.meshed, "1/5");
        let reasons: Vec<_> = state
            .unmeshed_pods
            .iter()
            .map(|p| (p.name.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("web-1", "ProxyUid"),
                ("web-3", "NoProxy"),
                ("web-4", "NotInjected"),
                ("web-5", "not a reason!")
            ]
        );
        let (_, reason, _) = meshed_condition(state);
        assert_eq!(reason, "PodsWithoutProxy");

        // At most UNMESHED_LISTED are named; the counts say how many there are.
        let many: Vec<Pod> = (0..30)
            .map(|i| not_meshed(pod(&format!("web-{i:02}"), false, true, false), "ProxyUid"))
            .collect();
        index.replace_pods(&many);
        let (desired, _) = compute(&index, &proxies, Timestamp::now());
        let state = &desired[&Key::new("shop", "web")].state;
        assert_eq!(state.unmeshed_pods.len(), UNMESHED_LISTED);
        assert_eq!((state.pods.total, state.pods.meshed), (30, 0));

        // Pods that never asked and claim nothing: no MeshStatus.
        index.replace_pods(&[pod("web-1", false, true, false)]);
        assert!(compute(&index, &proxies, Timestamp::now()).0.is_empty());
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
