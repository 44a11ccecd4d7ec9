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

/// The annotations and labels users and the injector put on namespaces and pods.
pub mod annotations {
    /// `enabled` or `disabled`, on a namespace or a pod (the pod's wins): whether the
    /// injector meshes new pods.
    pub const INJECT: &str = "weft.dev/inject";
    /// Label the injector puts on every pod it meshed (`true`), so
    /// `kubectl get pods -l weft.dev/injected` lists them.
    pub const INJECTED: &str = "weft.dev/injected";
    /// Annotation the injector puts on every pod it meshed: the version (a hash) of the
    /// Mesh configuration the pod was injected with.
    pub const CONFIG_VERSION: &str = "weft.dev/config-version";
    /// Annotation the injector puts on a pod it was asked to mesh and did not: why
    /// (`ProxyUid`, `HostNetwork`, `Disabled`, `TrustBundleNotWefts`,
    /// `InvalidAnnotation`, `NotInjected`...). MeshStatus lists such pods with it.
    pub const NOT_MESHED: &str = "weft.dev/not-meshed";
    /// Beside [`NOT_MESHED`]: the details, as in the pod's `InjectionSkipped` Event.
    pub const NOT_MESHED_MESSAGE: &str = "weft.dev/not-meshed-message";
    /// Inbound ports never captured, comma-separated (`8081,9000`). Added to the Mesh's.
    pub const SKIP_INBOUND_PORTS: &str = "config.weft.dev/skip-inbound-ports";
    /// Outbound ports never captured, comma-separated. Added to the Mesh's.
    pub const SKIP_OUTBOUND_PORTS: &str = "config.weft.dev/skip-outbound-ports";
    /// Outbound IPv4 CIDRs never captured, comma-separated. Added to the Mesh's.
    pub const SKIP_OUTBOUND_SUBNETS: &str = "config.weft.dev/skip-outbound-subnets";
    /// Inbound ports proxied as opaque TCP, comma-separated. Added to the Mesh's.
    pub const OPAQUE_PORTS: &str = "config.weft.dev/opaque-ports";
    /// The pod's default inbound policy, replacing the Mesh's.
    pub const DEFAULT_INBOUND_POLICY: &str = "config.weft.dev/default-inbound-policy";
    /// The proxy's log filter, replacing the Mesh's.
    pub const LOG_LEVEL: &str = "config.weft.dev/log-level";
    /// `true`: inbound connections reach the application on loopback rather than on
    /// the pod's address, for an application that listens on loopback only (which
    /// then exposes every loopback listener of the pod to the mesh).
    pub const INBOUND_TO_LOOPBACK: &str = "config.weft.dev/inbound-to-loopback";
    /// The proxy container's resources, replacing the Mesh's (Kubernetes quantities).
    pub const PROXY_CPU_REQUEST: &str = "config.weft.dev/proxy-cpu-request";
    pub const PROXY_CPU_LIMIT: &str = "config.weft.dev/proxy-cpu-limit";
    pub const PROXY_MEMORY_REQUEST: &str = "config.weft.dev/proxy-memory-request";
    pub const PROXY_MEMORY_LIMIT: &str = "config.weft.dev/proxy-memory-limit";
}

/// A DNS-1123 subdomain (a Kubernetes object name or a DNS name), as a schema pattern.
pub(crate) const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A DNS-1123 label (a Service or port name), as a schema pattern.
pub(crate) const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
