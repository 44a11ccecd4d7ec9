//! `MeshStatus`: the operator's view of one meshed workload, what `kubectl get
//! meshstatus` shows.
//!
//! One per meshed workload (Deployment, StatefulSet, DaemonSet, Job, or bare Pod),
//! created and written only by the operator and owned by the workload, so it is garbage
//! collected with it. The spec names the workload; everything else is status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{DNS_SUBDOMAIN_PATTERN, Port};

/// Condition types of a MeshStatus.
pub mod conditions {
    /// Every pod of the workload runs a proxy.
    pub const MESHED: &str = "Meshed";
    /// Every connected proxy acknowledged the current configuration version.
    pub const IN_SYNC: &str = "InSync";
}

/// The mesh's view of one workload. Written only by the Weft operator.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats keys such as type_"
)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "weft.dev",
    derive = "PartialEq",
    version = "v1alpha1",
    kind = "MeshStatus",
    plural = "meshstatuses",
    namespaced,
    status = "WorkloadState",
    shortname = "mst",
    category = "weft",
    doc = "The mesh's view of one workload: pods, identity, certificates, proxies in sync. \
           Written only by the Weft operator.",
    printcolumn(
        name = "Workload",
        type_ = "string",
        json_path = ".spec.workload.kind",
        priority = 1
    ),
    printcolumn(
        name = "Meshed",
        type_ = "string",
        json_path = ".status.summary.meshed"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.summary.ready"),
    printcolumn(
        name = "In-Sync",
        type_ = "string",
        json_path = ".status.summary.inSync"
    ),
    printcolumn(name = "Identity", type_ = "string", json_path = ".status.identity"),
    printcolumn(
        name = "Cert-Expiry",
        type_ = "string",
        json_path = ".status.certificateExpiry"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatusSpec {
    /// The workload this status describes.
    pub workload: WorkloadRef,
}

/// A workload, in the MeshStatus's namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// The workload's apiVersion, such as `apps/v1`.
    #[schemars(length(min = 1, max = 128))]
    pub api_version: String,
    /// The workload's kind.
    pub kind: WorkloadKind,
    /// The workload's name.
    #[schemars(length(min = 1, max = 253), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// The kinds of workload the mesh reports on.
#[derive(schemars::JsonSchema, Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    Pod,
}

/// The observed state of a meshed workload.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadState {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Meshed` and `InSync`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Pod counts.
    #[serde(default)]
    pub pods: PodCounts,

    /// Proxy counts.
    #[serde(default)]
    pub proxies: ProxyCounts,

    /// The counts as `kubectl get` shows them (`3/3`).
    #[serde(default)]
    pub summary: Summary,

    /// The workload's mesh identity (its SPIFFE id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,

    /// The earliest expiry of the workload's proxy certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expiry: Option<Time>,

    /// The inbound denials its proxies reported, per port, summed over its pods
    /// (the most recent first, at most 20 ports): what the inbound policy refused,
    /// and the last client it refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["port".into()]))]
    pub recent_denials: Vec<RecentDenials>,

    /// The configuration version the operator currently computes for the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,

    /// The workload's inbound ports, their protocol and their policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["port".into()]))]
    pub inbound_ports: Vec<InboundPortState>,

    /// Pods of the workload that are not meshed, and why: at most 20, by name
    /// (`pods.total - pods.meshed` counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub unmeshed_pods: Vec<UnmeshedPod>,
}

/// A pod the mesh does not cover, and why.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnmeshedPod {
    /// The pod's name.
    pub name: String,
    /// Why it is not meshed: `ProxyUid` (a container runs as the proxy's user),
    /// `HostNetwork`, `IPv6` (an address family the capture rules do not cover),
    /// `TrustBundleNotWefts`, `Disabled` (`weft.dev/inject: disabled`),
    /// `InvalidAnnotation`, `NotInjected` (it looks meshed, by a label or a container's
    /// name, but does not run the proxy the injector gives), or `NoProxy` (another pod
    /// of the workload is meshed and this one has no proxy: created before injection
    /// was asked for, or while the webhook was away).
    pub reason: String,
    /// The details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Pod counts of a workload.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCounts {
    /// Pods of the workload.
    #[serde(default)]
    pub total: i32,
    /// Pods running a proxy.
    #[serde(default)]
    pub meshed: i32,
    /// Pods that are Ready.
    #[serde(default)]
    pub ready: i32,
}

/// Proxy counts of a workload.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyCounts {
    /// Proxies connected to the operator.
    #[serde(default)]
    pub connected: i32,
    /// Connected proxies that acknowledged the current configuration version.
    #[serde(default)]
    pub in_sync: i32,
}

/// The counts as printed columns.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Meshed pods / all pods.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub meshed: String,
    /// Ready pods / all pods.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ready: String,
    /// In-sync proxies / meshed pods.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub in_sync: String,
}

/// One inbound port of a workload.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundPortState {
    /// The port number.
    pub port: Port,
    /// The container port's name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The protocol the proxy handles it as (`HTTP/1`, `HTTP/2`, `gRPC`, `opaque`, or
    /// `detect`).
    pub protocol: String,
    /// The policy that applies: a ServerAuthorization's name, or `default:<policy>`.
    pub policy: String,
}

/// The denials at one inbound port of a workload.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentDenials {
    /// The port number.
    pub port: Port,
    /// Connections and HTTP requests the port's policy refused since the workload's
    /// proxies started (the sum of their `inbound_tcp_authz_deny_total` and
    /// `inbound_http_authz_deny_total` for the port).
    pub count: i64,
    /// The last client refused: its SPIFFE id, or `unauthenticated`.
    pub last_client: String,
    /// When the last refusal happened.
    pub last_time: Time,
}
