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
};
use weft_sidecar as proxy;

use env::proxy_env;
pub use meshed::injected;
use resources::proxy_resources;

mod env;
mod meshed;
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
