//! `Mesh`: the whole configuration of the mesh, in one cluster-scoped resource.
//!
//! Only the Mesh named `default` is active; the operator reports any other as
//! `Ready=False, reason=NotTheActiveMesh`. Every field has a default, so
//! `metadata.name: default` and an empty spec is a complete, working mesh.

use k8s_openapi::{api::core::v1::ResourceRequirements, apimachinery::pkg::apis::meta::v1::Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{DNS_SUBDOMAIN_PATTERN, Duration, Port, condition::Condition};

/// Condition types of a Mesh.
pub mod conditions {
    /// The mesh's configuration is accepted and this is the active Mesh.
    pub const READY: &str = "Ready";
    /// The trust anchor and issuer are valid and workload certificates can be issued.
    pub const IDENTITY_READY: &str = "IdentityReady";
    /// The injection webhook is registered and serving.
    pub const INJECTOR_READY: &str = "InjectorReady";
    /// Discovery is publishing to proxies.
    pub const DISCOVERY_READY: &str = "DiscoveryReady";
}

/// The configuration of the Weft service mesh. The active Mesh is the one named `default`.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats keys such as type_"
)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "weft.dev",
    derive = "PartialEq",
    version = "v1alpha1",
    kind = "Mesh",
    plural = "meshes",
    status = "MeshState",
    shortname = "wm",
    category = "weft",
    doc = "The configuration of the Weft service mesh. The active Mesh is named `default`; \
           any other Mesh is reported as Ready=False with reason NotTheActiveMesh.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Trust-Domain",
        type_ = "string",
        json_path = ".spec.trustDomain"
    ),
    printcolumn(
        name = "Meshed-Pods",
        type_ = "integer",
        json_path = ".status.meshedPods"
    ),
    printcolumn(
        name = "Proxies",
        type_ = "integer",
        json_path = ".status.connectedProxies"
    ),
    printcolumn(
        name = "Issuer-Expiry",
        type_ = "string",
        json_path = ".status.issuer.notAfter",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// Every field has a default, so the spec has one too: an apply that leaves the spec
// null (a server-side apply over a client-side one merges `spec: {}` into null) or a
// Mesh without a spec is stored with the empty spec, and so with every default.
#[schemars(extend("default" = {}))]
pub struct MeshSpec {
    /// The trust domain of mesh identities: every workload is
    /// `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceaccount>`. A DNS name.
    #[serde(default = "default_trust_domain")]
    #[schemars(length(min = 1, max = 253), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub trust_domain: String,

    /// Certificates: where the trust anchor comes from, the lifetimes of the issuer and
    /// of workload certificates, and automatic rotation.
    #[serde(default)]
    pub identity: IdentitySpec,

    /// Defaults for every injected proxy. Pod annotations `config.weft.dev/*` override
    /// some of them per workload.
    #[serde(default)]
    pub proxy: ProxySpec,

    /// Defaults of the sidecar injector.
    #[serde(default)]
    pub injection: InjectionSpec,

    /// The inbound policy of a pod port that no ServerAuthorization selects:
    /// `all-unauthenticated` (anyone), `all-authenticated` (any mesh identity),
    /// `cluster-authenticated` (mesh identities and the cluster's pod network), `deny`,
    /// or `audit`: like `deny`, no rule allows anyone, but in audit mode, so every client
    /// is let through and counted and logged as a would-be denial (a way to see what
    /// `deny` would refuse before turning it on). A pod can override it with the
    /// `config.weft.dev/default-inbound-policy` annotation.
    #[serde(default)]
    pub default_inbound_policy: DefaultInboundPolicy,

    /// Ports whose traffic is proxied as opaque TCP, without protocol detection, because
    /// their servers speak first or their protocols are not HTTP (SMTP, MySQL,
    /// PostgreSQL, Redis, memcached...). Pods can add ports with the
    /// `config.weft.dev/opaque-ports` annotation.
    #[serde(default = "default_opaque_ports")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub opaque_ports: Vec<Port>,

    /// The injection webhook's registration with the API server.
    #[serde(default)]
    pub webhook: WebhookSpec,
}

/// The identity configuration: trust anchor, issuer, workload certificates.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.issuerLifetime) > duration(self.workloadCertificateLifetime)")
        .message("issuerLifetime must be longer than workloadCertificateLifetime")
        .field_path(".issuerLifetime"),
    validation = Rule::new("self.trustAnchor.mode != 'Generated' || duration(self.trustAnchor.lifetime) > duration(self.issuerLifetime)")
        .message("trustAnchor.lifetime must be longer than issuerLifetime")
        .field_path(".trustAnchor.lifetime"),
)]
pub struct IdentitySpec {
    /// Where the trust anchor (root CA) comes from.
    #[serde(default)]
    pub trust_anchor: TrustAnchorSpec,

    /// How long an issuer (intermediate CA) certificate is valid. The operator issues a
    /// new one well before expiry. At least 1m.
    #[serde(default = "default_issuer_lifetime")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("issuerLifetime must be at least 1m"))]
    pub issuer_lifetime: Duration,

    /// How long a workload (proxy) certificate is valid. Proxies renew at 70% of it.
    #[serde(default = "default_workload_lifetime")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("workloadCertificateLifetime must be at least 1m"))]
    pub workload_certificate_lifetime: Duration,

    /// Rotate the generated trust anchor and the issuer automatically, with overlap, so
    /// no certificate in the mesh ever expires unattended.
    #[serde(default = "default_true")]
    pub automatic_rotation: bool,
}

/// The source of the trust anchor.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'External' || has(self.secretName)")
        .message("secretName is required when mode is External")
        .field_path(".secretName"),
    validation = Rule::new("self.mode != 'Generated' || !has(self.secretName)")
        .message("secretName is only allowed when mode is External")
        .field_path(".secretName"),
)]
pub struct TrustAnchorSpec {
    /// `Generated`: the operator creates the anchor and keeps it in a Secret it owns in
    /// its own namespace. `External`: the anchor is read from `secretName` (keys
    /// `tls.crt` and `tls.key`, an ECDSA P-256 CA), so a GitOps tool can own it.
    #[serde(default)]
    pub mode: TrustAnchorMode,

    /// With mode `External`: the name of the Secret in the operator's namespace
    /// (`weft-system`) holding the trust anchor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: Option<String>,

    /// With mode `Generated`: how long a generated trust anchor is valid.
    #[serde(default = "default_anchor_lifetime")]
    pub lifetime: Duration,
}

/// Where the trust anchor comes from: `Generated` or `External`.
#[derive(
    schemars::JsonSchema, Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub enum TrustAnchorMode {
    #[default]
    Generated,
    External,
}

/// Defaults for every injected proxy.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// The proxy image. When unset, the operator injects the proxy image of its own
    /// release, so proxies and operator are upgraded together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// The proxy's log filter, in `tracing` directive syntax (`info`, `warn,weft=debug`).
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1, max = 256), pattern(r"^[A-Za-z0-9_:=,.\-\[\]{}]+$"))]
    pub log_level: String,

    /// The proxy's log format: `plain` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,

    /// Compute resources of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The proxy's ports.
    #[serde(default)]
    pub ports: ProxyPorts,

    /// The user id the proxy runs as. Traffic of this user is never captured, which is
    /// how the proxy's own outbound connections escape the capture rules; so a pod with
    /// a container that runs as this user is not meshed (reason `ProxyUid`).
    #[serde(default = "default_proxy_uid")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub uid: i64,

    /// Inject the proxy as a native sidecar (an init container with `restartPolicy:
    /// Always`), so the application starts only once the proxy is ready and Jobs
    /// complete. When false, the proxy is a regular container placed first.
    #[serde(default = "default_true")]
    pub native_sidecar: bool,

    /// How long a connection to a destination the proxy sees for the first time waits
    /// for the operator's answer (is it meshed, and with which identity?). With no
    /// answer in that time the connection is closed and counted in the proxy's
    /// `outbound_resolve_failed_total{reason="timeout"}`: it could be a meshed pod, and
    /// plaintext on a guess would break the mesh's promise. 100ms to 1m.
    #[serde(default = "default_resolve_timeout")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('1m')").message("resolveTimeout must be between 100ms and 1m"))]
    pub resolve_timeout: Duration,
}

/// A proxy log format.
#[derive(
    schemars::JsonSchema, Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// The ports a proxy listens on.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.inbound != self.outbound && self.inbound != self.admin && self.outbound != self.admin")
    .message("inbound, outbound and admin ports must differ"))]
pub struct ProxyPorts {
    /// Where captured inbound connections arrive.
    #[serde(default = "default_inbound_port")]
    pub inbound: Port,
    /// Where captured outbound connections arrive.
    #[serde(default = "default_outbound_port")]
    pub outbound: Port,
    /// The admin server: `/live`, `/ready`, `/metrics`, `/config`, `/shutdown`.
    #[serde(default = "default_admin_port")]
    pub admin: Port,
}

/// Defaults of the sidecar injector.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectionSpec {
    /// Namespaces never injected, in addition to `kube-system` and the operator's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 63), pattern(crate::DNS_LABEL_PATTERN))
    )]
    pub excluded_namespaces: Vec<String>,

    /// Inbound ports never captured (the traffic reaches the application directly).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub skip_inbound_ports: Vec<Port>,

    /// Outbound ports never captured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub skip_outbound_ports: Vec<Port>,

    /// Outbound destinations (CIDRs) never captured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("skipOutboundSubnets must be CIDRs such as 10.0.0.0/8"))]
    pub skip_outbound_subnets: Vec<String>,
}

/// The default inbound policy of pod ports no ServerAuthorization selects.
#[derive(
    schemars::JsonSchema, Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultInboundPolicy {
    #[default]
    AllUnauthenticated,
    AllAuthenticated,
    ClusterAuthenticated,
    Deny,
    /// `deny`'s rules (none) in audit mode: everyone is let through, as a would-be
    /// denial.
    Audit,
}

/// The registration of the injection webhook.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// What the API server does when the webhook cannot be reached: `Ignore` (create
    /// the pod unmeshed) or `Fail` (refuse it). `kube-system` and the operator's
    /// namespace are never subject to the webhook either way.
    #[serde(default)]
    pub failure_policy: FailurePolicy,

    /// How long the API server waits for the webhook, 1 to 30 seconds.
    #[serde(default = "default_webhook_timeout")]
    #[schemars(range(min = 1, max = 30))]
    pub timeout_seconds: i32,
}

/// A webhook failure policy: `Ignore` or `Fail`.
#[derive(
    schemars::JsonSchema, Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub enum FailurePolicy {
    #[default]
    Ignore,
    Fail,
}

/// The observed state of a Mesh.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshState {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `IdentityReady`, `InjectorReady`, `DiscoveryReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The trust anchors in the published trust bundle (more than one during rotation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_anchors: Vec<CertificateSummary>,

    /// The issuer currently signing workload certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<CertificateSummary>,

    /// Pods running a Weft proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meshed_pods: Option<i64>,

    /// Proxies connected to the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_proxies: Option<i64>,

    /// Where the trust bundle is published (the `TrustBundlePublished` condition names
    /// the namespaces that lack it, and why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<TrustBundleSummary>,
}

/// How many meshed namespaces hold the current trust bundle.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustBundleSummary {
    /// The namespaces the bundle must be in.
    pub namespaces: i64,
    /// Those that hold the current bundle.
    pub current: i64,
}

/// What status shows of a certificate: never the key, only what identifies it.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSummary {
    /// SHA-256 of the DER certificate, hex.
    pub fingerprint: String,
    /// The certificate's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the certificate expires.
    pub not_after: Time,
}

fn default_trust_domain() -> String {
    "cluster.local".to_string()
}

fn default_true() -> bool {
    true
}

fn default_anchor_lifetime() -> Duration {
    Duration::from_hours(24 * 365)
}

fn default_issuer_lifetime() -> Duration {
    Duration::from_hours(24 * 30)
}

fn default_workload_lifetime() -> Duration {
    Duration::from_hours(24)
}

fn default_resolve_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_log_level() -> String {
    "warn,weft=info".to_string()
}

fn default_proxy_uid() -> i64 {
    2102
}

fn default_inbound_port() -> Port {
    Port::known(4143)
}

fn default_outbound_port() -> Port {
    Port::known(4140)
}

fn default_admin_port() -> Port {
    Port::known(4191)
}

fn default_opaque_ports() -> Vec<Port> {
    [25, 587, 3306, 4444, 5432, 6379, 9300, 11211]
        .into_iter()
        .map(Port::known)
        .collect()
}

fn default_webhook_timeout() -> i32 {
    10
}

impl Default for MeshSpec {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            identity: IdentitySpec::default(),
            proxy: ProxySpec::default(),
            injection: InjectionSpec::default(),
            default_inbound_policy: DefaultInboundPolicy::default(),
            opaque_ports: default_opaque_ports(),
            webhook: WebhookSpec::default(),
        }
    }
}

impl Default for IdentitySpec {
    fn default() -> Self {
        Self {
            trust_anchor: TrustAnchorSpec::default(),
            issuer_lifetime: default_issuer_lifetime(),
            workload_certificate_lifetime: default_workload_lifetime(),
            automatic_rotation: true,
        }
    }
}

impl Default for TrustAnchorSpec {
    fn default() -> Self {
        Self {
            mode: TrustAnchorMode::default(),
            secret_name: None,
            lifetime: default_anchor_lifetime(),
        }
    }
}

impl Default for ProxySpec {
    fn default() -> Self {
        Self {
            image: None,
            log_level: default_log_level(),
            log_format: LogFormat::default(),
            resources: None,
            ports: ProxyPorts::default(),
            uid: default_proxy_uid(),
            native_sidecar: true,
            resolve_timeout: default_resolve_timeout(),
        }
    }
}

impl Default for ProxyPorts {
    fn default() -> Self {
        Self {
            inbound: default_inbound_port(),
            outbound: default_outbound_port(),
            admin: default_admin_port(),
        }
    }
}

impl Default for WebhookSpec {
    fn default() -> Self {
        Self {
            failure_policy: FailurePolicy::default(),
            timeout_seconds: default_webhook_timeout(),
        }
    }
}
