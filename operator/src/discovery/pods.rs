//! Pods as the discovery index knows them: identity, readiness, workload, ports and
//! their annotations, read once from each Pod object.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use weft_api::mesh::DefaultInboundPolicy;

use super::policy;

/// What the index knows of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub uid: String,
    pub service_account: String,
    /// Whether it runs the proxy the injector gives ([`crate::inject::injected`]), on
    /// IPv4 only: what a label or a container's name says does not count.
    pub meshed: bool,
    /// Why it is not meshed, when it should be or looks it: the injector's reason
    /// (its `weft.dev/not-meshed` annotation), `NotInjected` for a pod that looks
    /// meshed (the label, a container named `weft-proxy`) and is not, `IPv6` for an
    /// injected pod with an IPv6 address. `None` for a meshed pod and for a pod that
    /// never asked.
    pub not_meshed: Option<NotMeshed>,
    /// Whether its Ready condition is true.
    pub ready: bool,
    /// Whether it is being deleted.
    pub terminating: bool,
    /// The workload it belongs to; the pod itself when nothing controls it.
    pub workload: Option<Workload>,
    pub labels: BTreeMap<String, String>,
    /// TCP container ports: (name, number).
    pub ports: Vec<(Option<String>, u16)>,
    /// Opaque ports from its annotation.
    pub opaque_ports: BTreeSet<u16>,
    /// Its default inbound policy annotation, when valid.
    pub default_policy: Option<DefaultInboundPolicy>,
    /// Its own addresses (none for a pod on the node's network, whose address is the
    /// node's).
    pub ips: Vec<std::net::IpAddr>,
    /// Ports its proxy does not capture (its admin port, skipped inbound ports): no
    /// proxy terminates mTLS there, so clients reach them in plaintext.
    pub uncaptured_ports: BTreeSet<u16>,
}

/// Why a pod is not meshed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotMeshed {
    pub reason: String,
    pub message: String,
}

/// The workload a pod belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `Pod`, or another controller's
    /// kind.
    pub kind: String,
    pub name: String,
    /// The workload's UID when the pod knows it (a Deployment's is one step further,
    /// on its ReplicaSet).
    pub uid: Option<String>,
}

impl Workload {
    /// `deployment/web`, as metric labels show it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }
}

pub(super) fn pod_info(pod: &Pod) -> PodInfo {
    let labels = pod.metadata.labels.as_ref();
    let (meshed, not_meshed) = meshed(pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let workload = match crate::controller_of(&pod.metadata) {
        Some(o) => {
            // A ReplicaSet of a Deployment is named `<deployment>-<pod-template-hash>`.
            let hash = labels.and_then(|l| l.get("pod-template-hash"));
            Some(
                match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                    Some(deployment) if o.kind == "ReplicaSet" => Workload {
                        kind: "Deployment".into(),
                        name: deployment.into(),
                        uid: None,
                    },
                    _ => Workload {
                        kind: o.kind.clone(),
                        name: o.name.clone(),
                        uid: Some(o.uid.clone()),
                    },
                },
            )
        }
        None => pod.metadata.name.clone().map(|name| Workload {
            kind: "Pod".into(),
            name,
            uid: Some(uid.clone()),
        }),
    };
    let annotations = pod.metadata.annotations.as_ref();
    let opaque_ports = annotations
        .and_then(|a| a.get(weft_api::annotations::OPAQUE_PORTS))
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default();
    let spec = pod.spec.as_ref();
    let ports = tcp_container_ports(pod);
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    PodInfo {
        uid,
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        meshed,
        not_meshed,
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        workload,
        labels: labels.cloned().unwrap_or_default(),
        ports,
        opaque_ports,
        default_policy: annotations
            .and_then(|a| a.get(weft_api::annotations::DEFAULT_INBOUND_POLICY))
            .and_then(|v| policy::parse_default_policy(v)),
        uncaptured_ports: uncaptured_ports(pod),
        ips: if spec.and_then(|s| s.host_network) == Some(true) {
            Vec::new()
        } else {
            pod.status
                .iter()
                .flat_map(|s| s.pod_ips.iter().flatten())
                .filter_map(|ip| ip.ip.parse().ok())
                .collect()
        },
    }
}

/// Whether `pod` is meshed, and why not when it should be or looks it.
fn meshed(pod: &Pod) -> (bool, Option<NotMeshed>) {
    let not = |reason: &str, message: String| {
        (
            false,
            Some(NotMeshed {
                reason: reason.into(),
                message,
            }),
        )
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let has_proxy_container = spec.is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .any(|c| c.name == crate::inject::PROXY_CONTAINER)
    });
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(weft_api::annotations::INJECTED))
        .is_some_and(|v| v == "true");
    if has_proxy_container || labelled {
        return match crate::inject::injected(pod, namespace) {
            Ok(()) => {
                let ipv6: Vec<String> = pod
                    .status
                    .iter()
                    .flat_map(|s| s.pod_ips.iter().flatten())
                    .filter(|ip| ip.ip.contains(':'))
                    .map(|ip| ip.ip.clone())
                    .collect();
                if ipv6.is_empty() {
                    (true, None)
                } else {
                    not(
                        "IPv6",
                        format!(
                            "the pod has IPv6 addresses ({}), which the capture rules (IPv4 \
                             only) do not cover",
                            ipv6.join(", ")
                        ),
                    )
                }
            }
            Err(why) => not(
                "NotInjected",
                format!(
                    "it looks meshed ({}) but does not run the proxy the injector gives: {why}",
                    if labelled {
                        "labelled weft.dev/injected=true"
                    } else {
                        "a container named weft-proxy"
                    }
                ),
            ),
        };
    }
    let annotations = pod.metadata.annotations.as_ref();
    match annotations.and_then(|a| a.get(weft_api::annotations::NOT_MESHED)) {
        // Anyone who can create the pod can write these: kept short.
        Some(reason) => not(
            &bounded(reason, 64),
            bounded(
                annotations
                    .and_then(|a| a.get(weft_api::annotations::NOT_MESHED_MESSAGE))
                    .map_or("", String::as_str),
                1000,
            ),
        ),
        None => (false, None),
    }
}

/// `text` cut to at most `bytes` bytes, at a character boundary.
fn bounded(text: &str, bytes: usize) -> String {
    let mut end = text.len().min(bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The ports the pod's injected proxy leaves alone, read from its environment.
fn uncaptured_ports(pod: &Pod) -> BTreeSet<u16> {
    let spec = pod.spec.as_ref();
    let proxy = spec.into_iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .filter(|c| c.name == crate::inject::PROXY_CONTAINER)
    });
    let mut ports = BTreeSet::new();
    for container in proxy {
        for var in container.env.iter().flatten() {
            let value = var.value.as_deref().unwrap_or_default();
            if var.name == weft_sidecar::ENV_ADMIN_LISTEN_ADDR {
                if let Ok(addr) = value.parse::<std::net::SocketAddr>() {
                    ports.insert(addr.port());
                }
            } else if var.name == weft_sidecar::ENV_SKIP_INBOUND_PORTS {
                ports.extend(
                    value
                        .split(',')
                        .filter_map(|p| p.trim().parse::<u16>().ok()),
                );
            }
        }
    }
    ports
}

/// The TCP ports a pod's containers declare, (name, number), sorted and deduplicated.
pub fn tcp_container_ports(pod: &Pod) -> Vec<(Option<String>, u16)> {
    let mut ports: Vec<(Option<String>, u16)> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| Some((p.name.clone(), u16::try_from(p.container_port).ok()?)))
        .collect();
    ports.sort();
    ports.dedup();
    ports
}
