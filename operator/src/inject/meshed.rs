//! Whether a pod runs the proxy the injector gives: what "meshed" means to the
//! operator (discovery identities, MeshStatus, trust-bundle namespaces), decided from
//! the pod's containers, never from a label or a container's name.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use weft_sidecar as proxy;

use super::{INIT_CONTAINER, PROXY_CONTAINER, runs_as};

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
