//! The injected proxy's environment: every `WEFT_PROXY_*` variable from the Mesh and
//! the pod's `config.weft.dev/*` annotations, checked with the proxy's own parser (the
//! sidecar contract) before any pod is patched with it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use weft_api::{MeshSpec, Port, annotations, mesh::LogFormat};
use weft_sidecar as proxy;

/// The proxy's `WEFT_PROXY_*` environment (all but the control address), checked
/// with the proxy's own parser.
pub(super) fn proxy_env(
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
