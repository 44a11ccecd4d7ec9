//! `ServerAuthorization`: which clients may reach a server.
//!
//! A server is a port of the pods a label selector picks. Once any ServerAuthorization
//! selects a pod port, only clients some authorization allows get through; a port no
//! authorization selects uses the default inbound policy (Mesh, or pod annotation).
//!
//! A ServerAuthorization in `mode: Audit` lets a policy be tried before it is enforced:
//! see [`AuthorizationMode`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, ServerPort};

/// Condition types of a ServerAuthorization.
pub mod conditions {
    /// The authorization is valid and applied by the proxies of the pods it selects.
    pub const ACCEPTED: &str = "Accepted";
}

/// Allows clients to reach a server: a port of the pods a selector picks.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats keys such as type_"
)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "weft.dev",
    derive = "PartialEq",
    version = "v1alpha1",
    kind = "ServerAuthorization",
    namespaced,
    status = "ServerAuthorizationState",
    shortname = "saz",
    category = "weft",
    doc = "Allows clients to reach a server: a port of the pods a selector picks.",
    printcolumn(name = "Port", type_ = "string", json_path = ".spec.server.port"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.matchedPods"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ServerAuthorizationSpec {
    /// The server: which pods, which port.
    pub server: ServerSelector,
    /// The clients allowed to reach it.
    pub client: ClientSpec,

    /// `Enforce` (the default): a client no authorization of the port allows is denied.
    /// `Audit`: such a client is let through, and counted (the proxy's
    /// `inbound_{tcp,http}_authz_deny_total{mode="audit"}`) and logged as a would-be
    /// denial, so a policy can be rolled out and watched before it is enforced. A port
    /// that at least one `Audit` ServerAuthorization selects is in audit mode as a
    /// whole: nothing on it is denied until every ServerAuthorization selecting it
    /// enforces.
    #[serde(default)]
    pub mode: AuthorizationMode,
}

/// Whether an authorization's port denies the clients it does not allow (`Enforce`) or
/// only reports them (`Audit`).
#[derive(
    schemars::JsonSchema, Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub enum AuthorizationMode {
    #[default]
    Enforce,
    Audit,
}

/// A server: a port of the pods a label selector picks, in this namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerSelector {
    /// The pods. An empty selector selects every pod in the namespace.
    pub pod_selector: LabelSelector,

    /// The port, by number (1 to 65535) or by container port name.
    #[x_kube(validation = Rule::new("string(self).matches('^[0-9]+$') ? (int(string(self)) >= 1 && int(string(self)) <= 65535) : string(self).matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("port must be a number from 1 to 65535 or a port name"))]
    pub port: ServerPort,

    /// The port's protocol, when it should not be detected: `HTTP/1`, `HTTP/2`, `gRPC`,
    /// or `opaque` (TCP without detection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ServerProtocol>,
}

/// A declared server protocol.
#[derive(schemars::JsonSchema, Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerProtocol {
    #[serde(rename = "HTTP/1")]
    Http1,
    #[serde(rename = "HTTP/2")]
    Http2,
    #[serde(rename = "gRPC")]
    Grpc,
    #[serde(rename = "opaque")]
    Opaque,
}

/// The clients an authorization allows. At least one kind of client must be named.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.meshTLS) || (has(self.unauthenticated) && self.unauthenticated) || (has(self.networks) && size(self.networks) > 0)")
    .message("client must allow meshTLS identities, unauthenticated clients, or networks"))]
pub struct ClientSpec {
    /// Clients with a mesh identity (mutual TLS).
    #[serde(default, rename = "meshTLS", skip_serializing_if = "Option::is_none")]
    pub mesh_tls: Option<MeshTlsClients>,

    /// Allow clients without a mesh identity (plaintext), from `networks` if given.
    #[serde(default)]
    pub unauthenticated: bool,

    /// Client networks. With `unauthenticated: true` they restrict plaintext clients;
    /// alone they allow any client from these networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub networks: Vec<Network>,
}

/// Mesh identities allowed.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.identities) && size(self.identities) > 0) || (has(self.serviceAccounts) && size(self.serviceAccounts) > 0)")
    .message("meshTLS must name identities or serviceAccounts"))]
pub struct MeshTlsClients {
    /// SPIFFE ids (`spiffe://cluster.local/ns/shop/sa/web`), or `*` for any mesh identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 512),
            pattern(r"^(\*|spiffe://[a-z0-9.-]+(/[A-Za-z0-9._~%!$&'()*+,;=:@-]+)+)$")
        )
    )]
    pub identities: Vec<String>,

    /// ServiceAccounts whose pods are allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub service_accounts: Vec<ServiceAccountRef>,
}

/// A ServiceAccount, in this namespace unless `namespace` is given.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// The ServiceAccount's name.
    #[schemars(length(min = 1, max = 253), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// The ServiceAccount's namespace; this namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub namespace: Option<String>,
}

/// A client network: a CIDR, minus exceptions within it.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.except) || self.except.all(e, isCIDR(e) && cidr(self.cidr).containsCIDR(e))")
    .message("each except must be a CIDR inside cidr")
    .field_path(".except"))]
pub struct Network {
    /// The network, such as `10.0.0.0/8` or `fd00::/8`.
    #[schemars(length(min = 1, max = 43))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("cidr must be a CIDR such as 10.0.0.0/8"))]
    pub cidr: String,
    /// Networks inside `cidr` that are not allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 43)))]
    pub except: Vec<String>,
}

/// The observed state of a ServerAuthorization.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerAuthorizationState {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Accepted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// How many pods the server selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_pods: Option<i32>,

    /// The port numbers the server resolves to on those pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_ports: Vec<i32>,
}
