//! The injection patch: what the injector does to one pod, as a pure function.
//!
//! [`decide`] takes the pod from the AdmissionReview, its namespace's annotations, the
//! Mesh and the operator's [`Settings`], and returns either a JSON patch that meshes
//! the pod or why it is left alone. It never touches the cluster; the webhook server
//! ([`crate::webhook`]) is a thin layer over it.
//!
//! What an injected pod gets:
//! - `weft-init`, an init container running `weft-proxy init`, which writes the capture
//!   rules (root, with NET_ADMIN and NET_RAW only; every other capability dropped).
//! - `weft-proxy`, the proxy. As a native sidecar (an init container with
//!   `restartPolicy: Always` and a startup probe on `/ready`) when the Mesh asks for it
//!   and the cluster supports it: the application then starts only once the proxy holds
//!   its certificate, and Jobs complete. Otherwise it is the first regular container,
//!   with a `postStart` hook (`weft-proxy await-ready`) that holds back the kubelet's
//!   start of the next container until the proxy is ready; Jobs then never complete,
//!   as with any classic sidecar.
//! - A projected ServiceAccount token with the identity audience, and the trust-bundle
//!   ConfigMap, as volumes of the proxy.
//! - The label `weft.dev/injected=true` and the annotation `weft.dev/config-version`
//!   (a hash of the Mesh and settings the pod was injected with).
//!
//! The proxy's environment comes from the Mesh and from `config.weft.dev/*` pod
//! annotations. Before patching, the whole environment is checked with the proxy's own
//! parser (the sidecar contract, `weft-sidecar`), so a pod is never injected with a proxy that would refuse to start; a bad
//! annotation leaves the pod unmeshed, with a warning naming the annotation.
//!
//! The patch is written operation by operation (rather than by diffing two pods), so
//! it adds exactly the proxy's parts and rewrites nothing the user wrote but the
//! application's probes, which go to the proxy's admin port so that they check the
//! application itself rather than the proxy ([`probes`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ResourceRequirements};
use serde_json::{Value, json};
use weft_api::{
    MeshSpec, Port,
    annotations::{self, INJECT},
    mesh::LogFormat,
};
use weft_sidecar as proxy;

use resources::proxy_resources;

mod probes;
mod resources;

/// Name of the proxy container.
pub const PROXY_CONTAINER: &str = "weft-proxy";
/// Name of the capture init container.
pub const INIT_CONTAINER: &str = "weft-init";
/// The proxy binary in the proxy image.
const PROXY_BINARY: &str = "/usr/local/bin/weft-proxy";
/// How long the projected token lives; the kubelet refreshes it at 80%.
const TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// What the operator knows that the pod and the Mesh do not say.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The proxy image when the Mesh names none: the operator's own release's.
    pub proxy_image: String,
    /// Where proxies reach the proxy API (`host:port`).
    pub control_addr: String,
    /// The operator's namespace, never injected.
    pub operator_namespace: String,
    /// Whether the cluster runs native sidecars (init containers with
    /// `restartPolicy: Always`; Kubernetes 1.29 and later).
    pub native_sidecars_supported: bool,
}

/// Why a pod that asked to be meshed, or might have, is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// `weft.dev/inject: disabled` on the pod, in an enabled namespace.
    Disabled,
    /// The pod shares the node's network; capturing it would capture the node.
    HostNetwork,
    /// A container runs as the proxy's user, whose traffic is never captured: it would
    /// bypass the mesh.
    ProxyUid,
    /// `kube-system`, the operator's namespace, or one the Mesh excludes.
    ExcludedNamespace,
    /// An annotation the proxy could not run with.
    InvalidAnnotation,
    /// The namespace holds a `weft-trust-bundle` ConfigMap Weft does not own, so the
    /// proxy could not get Weft's trust bundle.
    TrustBundleNotWefts,
    /// The pod brings its own container named `weft-proxy` (so the injector leaves it
    /// alone) but not the proxy the injector gives ([`injected`]).
    NotInjected,
}

impl SkipReason {
    /// The reason as Events and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "Disabled",
            Self::HostNetwork => "HostNetwork",
            Self::ProxyUid => "ProxyUid",
            Self::ExcludedNamespace => "ExcludedNamespace",
            Self::InvalidAnnotation => "InvalidAnnotation",
            Self::TrustBundleNotWefts => "TrustBundleNotWefts",
            Self::NotInjected => "NotInjected",
        }
    }
}

/// What to do with one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Mesh it with `patch`.
    Inject {
        patch: json_patch::Patch,
        config_version: String,
        native_sidecar: bool,
    },
    /// Neither the pod nor its namespace asks for injection.
    NotRequested,
    /// It already has a proxy: nothing to change.
    AlreadyInjected,
    /// Injection was asked for but is not done, for `reason`.
    Skip { reason: SkipReason, message: String },
}

/// Decides what the injector does to `pod`, created in `namespace` whose annotations
/// are `namespace_annotations`, under `mesh`.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_annotations: &BTreeMap<String, String>,
    mesh: &MeshSpec,
    settings: &Settings,
) -> Decision {
    let empty = BTreeMap::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let skip = |reason, message: String| Decision::Skip { reason, message };

    let requested = match (
        pod_annotations.get(INJECT).map(String::as_str),
        namespace_annotations.get(INJECT).map(String::as_str),
    ) {
        (Some("enabled"), _) => true,
        (Some("disabled"), Some("enabled")) => {
            return skip(
                SkipReason::Disabled,
                format!(
                    "the pod's annotation {INJECT}=disabled opts it out of its namespace's injection"
                ),
            );
        }
        (Some("disabled"), _) => false,
        (Some(other), _) => {
            return skip(
                SkipReason::InvalidAnnotation,
                format!("annotation {INJECT}: {other:?} is neither \"enabled\" nor \"disabled\""),
            );
        }
        (None, ns) => ns == Some("enabled"),
    };
    if !requested {
        return Decision::NotRequested;
    }
    if namespace == "kube-system"
        || namespace == settings.operator_namespace
        || mesh
            .injection
            .excluded_namespaces
            .iter()
            .any(|n| n == namespace)
    {
        return skip(
            SkipReason::ExcludedNamespace,
            format!("namespace {namespace} is never injected"),
        );
    }
    let spec = pod.spec.as_ref();
    let has_proxy = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
    });
    if has_proxy {
        return match injected(pod, namespace) {
            Ok(()) => Decision::AlreadyInjected,
            Err(why) => skip(
                SkipReason::NotInjected,
                format!(
                    "the pod has its own {PROXY_CONTAINER} container, which is not the proxy \
                     the injector gives ({why}): it is not meshed"
                ),
            ),
        };
    }
    if spec.is_some_and(|s| s.host_network == Some(true)) {
        return skip(
            SkipReason::HostNetwork,
            "the pod uses the node's network (hostNetwork: true); capturing its traffic would capture the node's".into(),
        );
    }

    if let Some(container) = spec.and_then(|s| runs_as(s, mesh.proxy.uid)) {
        return skip(
            SkipReason::ProxyUid,
            format!(
                "container {container} runs as user {}, the proxy's (the Mesh's spec.proxy.uid), \
                 whose traffic is never captured: it would bypass the mesh",
                mesh.proxy.uid
            ),
        );
    }

    let env = match proxy_env(pod, namespace, pod_annotations, mesh) {
        Ok(env) => env,
        Err(message) => return skip(SkipReason::InvalidAnnotation, message),
    };
    let resources = match proxy_resources(pod_annotations, mesh.proxy.resources.as_ref()) {
        Ok(resources) => resources,
        Err(message) => return skip(SkipReason::InvalidAnnotation, message),
    };
    let native = mesh.proxy.native_sidecar && settings.native_sidecars_supported;
    let config_version = config_version(mesh, settings, native);
    let image = mesh
        .proxy
        .image
        .clone()
        .unwrap_or_else(|| settings.proxy_image.clone());
    let (probes, probe_ops) = spec.map_or_else(Default::default, |spec| {
        probes::rewrite(spec, mesh.proxy.ports.admin.get())
    });
    let probes = (!probes.is_empty())
        .then(|| serde_json::to_string(&probes).ok())
        .flatten()
        .map(|json| (proxy::ENV_PROBES, json));
    let env = env
        .into_iter()
        .chain([(proxy::ENV_CONTROL_ADDR, settings.control_addr.clone())])
        .chain(probes)
        .map(|(name, value)| json!({"name": name, "value": value}))
        .chain([
            json!({
                "name": proxy::ENV_POD_NAME,
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            }),
            json!({
                "name": proxy::ENV_POD_IP,
                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
            }),
        ])
        .collect::<Vec<_>>();
    let parts = Parts {
        image,
        env,
        resources,
        admin: mesh.proxy.ports.admin,
        uid: mesh.proxy.uid,
        probe_ops,
    };
    Decision::Inject {
        patch: patch(pod, &parts, native, &config_version),
        config_version,
        native_sidecar: native,
    }
}

/// The values both injected containers are built from.
struct Parts {
    image: String,
    env: Vec<Value>,
    resources: Option<ResourceRequirements>,
    admin: Port,
    uid: i64,
    /// The operations that point the application's probes at the admin port; first,
    /// while the containers' indexes are still the user's.
    probe_ops: Vec<Value>,
}

/// The first container of `spec` that runs as user `uid`, by its own securityContext or
/// the pod's. (A user set only in the image cannot be seen here.)
fn runs_as(spec: &k8s_openapi::api::core::v1::PodSpec, uid: i64) -> Option<String> {
    let pod_user = spec.security_context.as_ref().and_then(|c| c.run_as_user);
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| {
            c.security_context
                .as_ref()
                .and_then(|c| c.run_as_user)
                .or(pod_user)
                == Some(uid)
        })
        .map(|c| c.name.clone())
}

/// The proxy's `WEFT_PROXY_*` environment (all but the control address), checked
/// with the proxy's own parser.
fn proxy_env(
    pod: &Pod,
    namespace: &str,
    annotations: &BTreeMap<String, String>,
    mesh: &MeshSpec,
) -> Result<Vec<(&'static str, String)>, String> {
    let ports = &mesh.proxy.ports;
    let list = |ports: &[Port]| {
        ports
            .iter()
            .map(Port::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let joined = |base: String, annotation: &str| match annotations.get(annotation) {
        Some(extra) if base.is_empty() => extra.trim().to_string(),
        Some(extra) if !extra.trim().is_empty() => format!("{base},{}", extra.trim()),
        _ => base,
    };
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let policy = annotations
        .get(annotations::DEFAULT_INBOUND_POLICY)
        .cloned()
        .unwrap_or_else(|| {
            crate::discovery::policy::default_policy_name(mesh.default_inbound_policy).to_string()
        });
    // The proxy's own default is only what it falls back on before the operator's
    // policy for a port arrives, and a fallback never lets a client through that the
    // policy might refuse: `audit` (which only the operator's policy carries) falls back
    // on `deny`, its rules.
    let policy = if policy.trim() == "audit" {
        "deny".to_string()
    } else {
        policy
    };
    let log = annotations
        .get(annotations::LOG_LEVEL)
        .cloned()
        .unwrap_or_else(|| mesh.proxy.log_level.clone());
    // The TCP ports the pod's containers declare: the proxy follows their policy.
    let mut declared: Vec<u16> = crate::discovery::pods::tcp_container_ports(pod)
        .into_iter()
        .map(|(_, number)| number)
        .collect();
    declared.sort_unstable();
    declared.dedup();
    let declared = declared
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // (variable, value, the annotation it may come from)
    let vars: Vec<(&'static str, String, Option<&str>)> = vec![
        (proxy::ENV_INBOUND_PORTS, declared, None),
        (proxy::ENV_LOG, log, Some(annotations::LOG_LEVEL)),
        (
            proxy::ENV_LOG_FORMAT,
            match mesh.proxy.log_format {
                LogFormat::Plain => "plain",
                LogFormat::Json => "json",
            }
            .into(),
            None,
        ),
        (
            proxy::ENV_IDENTITY,
            format!(
                "spiffe://{}/ns/{namespace}/sa/{service_account}",
                mesh.trust_domain
            ),
            None,
        ),
        (
            proxy::ENV_INBOUND_LISTEN_ADDR,
            format!("0.0.0.0:{}", ports.inbound),
            None,
        ),
        (
            proxy::ENV_OUTBOUND_LISTEN_ADDR,
            format!("127.0.0.1:{}", ports.outbound),
            None,
        ),
        (
            proxy::ENV_ADMIN_LISTEN_ADDR,
            format!("0.0.0.0:{}", ports.admin),
            None,
        ),
        (
            proxy::ENV_INBOUND_OPAQUE_PORTS,
            joined(list(&mesh.opaque_ports), annotations::OPAQUE_PORTS),
            Some(annotations::OPAQUE_PORTS),
        ),
        (
            proxy::ENV_DEFAULT_INBOUND_POLICY,
            policy,
            Some(annotations::DEFAULT_INBOUND_POLICY),
        ),
        (
            proxy::ENV_INBOUND_TO_LOOPBACK,
            annotations
                .get(annotations::INBOUND_TO_LOOPBACK)
                .cloned()
                .unwrap_or_else(|| proxy::DEFAULT_INBOUND_TO_LOOPBACK.into()),
            Some(annotations::INBOUND_TO_LOOPBACK),
        ),
        (proxy::ENV_UID, mesh.proxy.uid.to_string(), None),
        (
            proxy::ENV_RESOLVE_TIMEOUT,
            format!("{}ms", mesh.proxy.resolve_timeout.get().as_millis()),
            None,
        ),
        (
            proxy::ENV_SKIP_INBOUND_PORTS,
            joined(
                list(&mesh.injection.skip_inbound_ports),
                annotations::SKIP_INBOUND_PORTS,
            ),
            Some(annotations::SKIP_INBOUND_PORTS),
        ),
        (
            proxy::ENV_SKIP_OUTBOUND_PORTS,
            joined(
                list(&mesh.injection.skip_outbound_ports),
                annotations::SKIP_OUTBOUND_PORTS,
            ),
            Some(annotations::SKIP_OUTBOUND_PORTS),
        ),
        (
            proxy::ENV_SKIP_OUTBOUND_SUBNETS,
            joined(
                mesh.injection.skip_outbound_subnets.join(","),
                annotations::SKIP_OUTBOUND_SUBNETS,
            ),
            Some(annotations::SKIP_OUTBOUND_SUBNETS),
        ),
    ];
    let lookup = |name: &str| {
        vars.iter()
            .find(|(var, _, _)| *var == name)
            .map(|(_, value, _)| value.clone())
    };
    if let Err(error) = proxy::Config::parse(lookup) {
        let problems = error
            .0
            .iter()
            .map(|invalid| {
                let source = vars
                    .iter()
                    .find(|(var, _, _)| *var == invalid.name)
                    .and_then(|(_, _, annotation)| *annotation)
                    .filter(|a| annotations.contains_key(*a));
                match source {
                    Some(annotation) => format!(
                        "annotation {annotation}: {:?}: {}",
                        annotations.get(annotation).map_or("", String::as_str),
                        invalid.reason
                    ),
                    None => format!("{}={:?}: {}", invalid.name, invalid.value, invalid.reason),
                }
            })
            .collect::<Vec<_>>();
        return Err(problems.join("; "));
    }
    Ok(vars
        .into_iter()
        .filter(|(_, value, _)| !value.is_empty())
        .map(|(name, value, _)| (name, value))
        .collect())
}

/// A short hash of everything the injection depends on besides the pod.
fn config_version(mesh: &MeshSpec, settings: &Settings, native: bool) -> String {
    let input = json!({
        "mesh": mesh,
        "image": settings.proxy_image,
        "control": settings.control_addr,
        "native": native,
    });
    crate::short_hash(input.to_string().as_bytes())
}

/// The JSON patch that adds the proxy's parts to `pod`.
fn patch(pod: &Pod, parts: &Parts, native: bool, config_version: &str) -> json_patch::Patch {
    let spec = pod.spec.as_ref();
    let mut ops = parts.probe_ops.clone();

    let init = init_container(parts);
    let mut proxy = proxy_container(parts);
    let has_init_containers = spec.is_some_and(|s| s.init_containers.is_some());
    if native {
        proxy["restartPolicy"] = json!("Always");
        proxy["startupProbe"] = json!({
            "httpGet": {"path": "/ready", "port": parts.admin.get()},
            "periodSeconds": 1,
            "failureThreshold": 120,
        });
        // Both go first, so the application's own init containers already run
        // captured and with the proxy up.
        if has_init_containers {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": proxy}));
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init, proxy]}));
        }
    } else {
        proxy["lifecycle"] = json!({
            "postStart": {"exec": {"command": [PROXY_BINARY, "await-ready"]}},
        });
        if has_init_containers {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]}));
        }
        ops.push(json!({"op": "add", "path": "/spec/containers/0", "value": proxy}));
    }

    let volumes = [
        json!({
            "name": "weft-identity-token",
            "projected": {"sources": [{"serviceAccountToken": {
                "path": "token",
                "audience": weft_proxy_api::IDENTITY_TOKEN_AUDIENCE,
                "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
            }}]},
        }),
        json!({
            "name": "weft-trust-bundle",
            "configMap": {"name": crate::identity::controller::BUNDLE_CONFIG_MAP},
        }),
    ];
    if spec.is_some_and(|s| s.volumes.is_some()) {
        for volume in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }

    let mut labels = vec![(annotations::INJECTED, "true".to_string())];
    let mut notes = vec![(annotations::CONFIG_VERSION, config_version.to_string())];
    let default_container = "kubectl.kubernetes.io/default-container";
    let has_default = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(default_container));
    if !native
        && !has_default
        && let Some(app) = spec.and_then(|s| s.containers.first())
    {
        // `kubectl logs` and `exec` keep going to the application, not the proxy.
        notes.push((default_container, app.name.clone()));
    }
    for (path, entries, present) in [
        (
            "/metadata/labels",
            &mut labels,
            pod.metadata.labels.is_some(),
        ),
        (
            "/metadata/annotations",
            &mut notes,
            pod.metadata.annotations.is_some(),
        ),
    ] {
        if present {
            for (key, value) in entries.drain(..) {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                ops.push(json!({"op": "add", "path": format!("{path}/{escaped}"), "value": value}));
            }
        } else {
            let map: BTreeMap<_, _> = entries.drain(..).collect();
            ops.push(json!({"op": "add", "path": path, "value": map}));
        }
    }
    // Every value above is built here from strings and numbers: it always converts.
    serde_json::from_value(Value::Array(ops)).unwrap_or_default()
}

/// The capture init container: root with NET_ADMIN and NET_RAW, nothing else.
fn init_container(parts: &Parts) -> Value {
    json!({
        "name": INIT_CONTAINER,
        "image": parts.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["init"],
        "env": parts.env,
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// The proxy container, without what differs between native and classic sidecars.
fn proxy_container(parts: &Parts) -> Value {
    let admin = parts.admin.get();
    // Mounted where the proxy looks by default, so neither path is set in its env.
    let dir = |file: &'static str| file.rsplit_once('/').map_or(file, |(dir, _)| dir);
    let mut proxy = json!({
        "name": PROXY_CONTAINER,
        "image": parts.image,
        "imagePullPolicy": "IfNotPresent",
        "env": parts.env,
        "ports": [{"name": "weft-admin", "containerPort": admin}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": admin}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/live", "port": admin}, "periodSeconds": 10},
        "securityContext": {
            "runAsUser": parts.uid,
            "runAsGroup": parts.uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "weft-identity-token", "mountPath": dir(proxy::DEFAULT_IDENTITY_TOKEN_FILE), "readOnly": true},
            {"name": "weft-trust-bundle", "mountPath": dir(proxy::DEFAULT_TRUST_BUNDLE_FILE), "readOnly": true},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let Some(resources) = &parts.resources {
        proxy["resources"] = json!(resources);
    }
    proxy
}

/// Whether `pod`, in `namespace`, runs the proxy the injector gives, which is what "meshed" means to
/// the operator (discovery hands out a pod's identity, and counts it meshed, only then).
/// `Err` says what is missing.
///
/// A label (`weft.dev/injected`) or a container's name alone is no proof: anyone who
/// can create a pod can write them. What the operator checks instead is the contract
/// that makes a pod covered, all of it read from the pod spec, which cannot change
/// once the pod exists:
/// - the capture init container `weft-init` (`weft-proxy init`) and the proxy
///   `weft-proxy`, both from one image;
/// - the proxy's whole `WEFT_PROXY_*` environment accepted by the proxy's own parser
///   (the sidecar contract), the init container's naming the same user;
/// - the proxy's identity (`WEFT_PROXY_IDENTITY`) being the SPIFFE id of the pod's own
///   namespace and ServiceAccount;
/// - the proxy running as that user (`WEFT_PROXY_UID`), the one the capture rules
///   exempt, and no other container running as it (it would bypass the capture);
/// - the pod not on the node's network.
///
/// The image itself is not pinned (proxies injected before an upgrade keep theirs), so
/// someone could write this shape by hand with an image of their own: the pod is then
/// covered by capture rules that send its traffic to that program, and it still gets no
/// other identity than its own ServiceAccount's (`Certify` checks the token). What the
/// check rules out is a pod counted as meshed, and trusted to terminate mutual TLS,
/// because it says so.
pub fn injected(pod: &Pod, namespace: &str) -> Result<(), String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Err("the pod has no spec".into());
    };
    let all = || {
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
    };
    let proxy = all()
        .find(|c| c.name == PROXY_CONTAINER)
        .ok_or_else(|| format!("no {PROXY_CONTAINER} container"))?;
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == INIT_CONTAINER)
        .ok_or_else(|| format!("no {INIT_CONTAINER} init container"))?;
    if init.args.as_deref() != Some(&["init".to_string()][..]) || init.image != proxy.image {
        return Err(format!(
            "{INIT_CONTAINER} is not the proxy image's capture step (`init`, the image of {PROXY_CONTAINER})"
        ));
    }
    if spec.host_network == Some(true) {
        return Err("the pod uses the node's network (hostNetwork: true)".into());
    }
    let env = |container: &k8s_openapi::api::core::v1::Container| {
        let vars: BTreeMap<String, String> = container
            .env
            .iter()
            .flatten()
            .filter_map(|v| Some((v.name.clone(), v.value.clone()?)))
            .collect();
        proxy::Config::parse(|name| vars.get(name).cloned())
    };
    let config = env(proxy).map_err(|e| {
        format!(
            "the environment of {PROXY_CONTAINER} is not the proxy's: {}",
            e.to_string().trim()
        )
    })?;
    let init_config = env(init).map_err(|e| {
        format!(
            "the environment of {INIT_CONTAINER} is not the proxy's: {}",
            e.to_string().trim()
        )
    })?;
    let service_account = spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let identity: Option<weft_proxy_api::SpiffeId> =
        config.identity.as_deref().and_then(|i| i.parse().ok());
    if !identity
        .as_ref()
        .is_some_and(|i| i.namespace() == namespace && i.service_account() == service_account)
    {
        return Err(format!(
            "{PROXY_CONTAINER}'s {} is {:?}, not the identity of ServiceAccount {namespace}/{service_account}",
            proxy::ENV_IDENTITY,
            config.identity.as_deref().unwrap_or_default()
        ));
    }
    let uid = i64::from(config.uid);
    let proxy_user = proxy
        .security_context
        .as_ref()
        .and_then(|c| c.run_as_user)
        .or_else(|| spec.security_context.as_ref().and_then(|c| c.run_as_user));
    if proxy_user != Some(uid) || init_config.uid != config.uid {
        return Err(format!(
            "{PROXY_CONTAINER} does not run as the user its capture rules exempt ({}={uid})",
            proxy::ENV_UID
        ));
    }
    let mut others = spec.clone();
    others.containers.retain(|c| c.name != PROXY_CONTAINER);
    if let Some(init) = others.init_containers.as_mut() {
        init.retain(|c| c.name != PROXY_CONTAINER && c.name != INIT_CONTAINER);
    }
    if let Some(container) = runs_as(&others, uid) {
        return Err(format!(
            "container {container} runs as the proxy's user {uid}, whose traffic is never captured"
        ));
    }
    Ok(())
}

/// The patch that records on a pod the injector was asked to mesh why it did not:
/// [`annotations::NOT_MESHED`] and [`annotations::NOT_MESHED_MESSAGE`].
pub fn not_meshed_patch(pod: &Pod, reason: SkipReason, message: &str) -> json_patch::Patch {
    let notes = [
        (annotations::NOT_MESHED, reason.as_str().to_string()),
        (annotations::NOT_MESHED_MESSAGE, message.to_string()),
    ];
    let ops: Vec<Value> = if pod.metadata.annotations.is_some() {
        notes
            .into_iter()
            .map(|(key, value)| {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                json!({"op": "add", "path": format!("/metadata/annotations/{escaped}"), "value": value})
            })
            .collect()
    } else {
        let map: BTreeMap<_, _> = notes.into_iter().collect();
        vec![json!({"op": "add", "path": "/metadata/annotations", "value": map})]
    };
    // Strings only: it always converts.
    serde_json::from_value(Value::Array(ops)).unwrap_or_default()
}

/// `pod` as the injector meshes it in an enabled namespace under the default Mesh, for
/// the tests of what reads injected pods.
#[cfg(test)]
pub(crate) fn as_injected(pod: Pod) -> Pod {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let enabled = BTreeMap::from([(INJECT.to_string(), "enabled".to_string())]);
    let settings = Settings {
        proxy_image: "weft.local/weft-proxy:dev".into(),
        control_addr: "weft-proxy-api.weft-system.svc.cluster.local:8090".into(),
        operator_namespace: "weft-system".into(),
        native_sidecars_supported: true,
    };
    let Decision::Inject { patch, .. } =
        decide(&pod, &namespace, &enabled, &MeshSpec::default(), &settings)
    else {
        panic!("the pod is not injected")
    };
    let mut doc = serde_json::to_value(&pod).expect("a pod");
    json_patch::patch(&mut doc, &patch).expect("the patch applies");
    serde_json::from_value(doc).expect("a pod")
}

#[cfg(test)]
mod tests;
