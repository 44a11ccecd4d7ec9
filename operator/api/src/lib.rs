//! The custom resources of Weft (group `weft.dev`, version `v1alpha1`).
//!
//! These Rust types are the single source of the CRDs: `crds/*.yaml` is generated from
//! them by the `crdgen` binary (`make crds`), and a test fails when the committed YAML
//! and the types differ. Every field's doc comment becomes its `kubectl explain` text.
//!
//! - [`Mesh`] (cluster-scoped): the whole mesh configuration; the active one is `default`.
//! - [`ServiceProfile`]: routes, retries, timeouts and traffic split for one Service.
//! - [`ServerAuthorization`]: which clients may reach a server (pods + port).
//! - [`MeshStatus`]: the operator's per-workload view, what `kubectl get meshstatus` shows.
//!
//! All four have a status subresource with Kubernetes-style conditions and
//! `observedGeneration`, so `kubectl wait`, Argo CD and Flux read their health directly.
//! What the API server can judge (enums, ranges, patterns, CEL rules) is in the schema;
//! what it cannot (for example whether a route's path regex compiles) is checked by the
//! operator and reported as `Accepted=False` with the field named.

#![forbid(unsafe_code)]

pub mod condition;
pub mod crd;
mod duration;
pub mod mesh;
pub mod mesh_status;
mod port;
pub mod server_authorization;
pub mod service_profile;

pub use self::{
    condition::{Condition, ConditionStatus},
    duration::{Duration, DurationError},
    mesh::{Mesh, MeshSpec, MeshState},
    mesh_status::{MeshStatus, MeshStatusSpec, WorkloadState},
    port::{Port, PortError, ServerPort},
    server_authorization::{
        ServerAuthorization, ServerAuthorizationSpec, ServerAuthorizationState,
    },
    service_profile::{ServiceProfile, ServiceProfileSpec, ServiceProfileState},
};

/// The API group of every Weft resource.
pub const GROUP: &str = "weft.dev";
/// The API version of every Weft resource.
pub const VERSION: &str = "v1alpha1";
/// The kubectl category: `kubectl get weft` lists every Weft resource.
pub const CATEGORY: &str = "weft";
/// The name of the active [`Mesh`]; any other Mesh is reported `NotTheActiveMesh`.
pub const ACTIVE_MESH_NAME: &str = "default";

/// A DNS-1123 subdomain (a Kubernetes object name or a DNS name), as a schema pattern.
pub(crate) const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A DNS-1123 label (a Service or port name), as a schema pattern.
pub(crate) const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
