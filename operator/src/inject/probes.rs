//! Rewriting the application's probes to the proxy's admin port
//! ([`weft_sidecar::probe`] says why): each `httpGet` (HTTP), `tcpSocket` and `grpc`
//! probe of a regular container becomes an `httpGet` of `/probe/<container>/<kind>` on
//! the admin port, with the user's timings kept, and its original check goes to the
//! proxy. `exec` probes, HTTPS probes, probes of another host and probes whose port
//! cannot be resolved are left as they are.

use k8s_openapi::{
    api::core::v1::{Container, PodSpec, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::{Value, json};
use weft_sidecar::probe::{self, Check, Probes};

/// The probes of `spec` the proxy performs, and the patch operations that point the
/// kubelet at them (to be applied before any container is inserted).
pub fn rewrite(spec: &PodSpec, admin: u16) -> (Probes, Vec<Value>) {
    let mut probes = Probes::new();
    let mut ops = Vec::new();
    for (i, container) in spec.containers.iter().enumerate() {
        for (field, kind, original) in [
            ("livenessProbe", "liveness", &container.liveness_probe),
            ("readinessProbe", "readiness", &container.readiness_probe),
            ("startupProbe", "startup", &container.startup_probe),
        ] {
            let Some(original) = original else { continue };
            let Some(check) = check_of(container, original) else {
                continue;
            };
            let Ok(mut rewritten) = serde_json::to_value(original) else {
                continue;
            };
            if let Some(fields) = rewritten.as_object_mut() {
                for handler in ["httpGet", "tcpSocket", "grpc", "exec"] {
                    fields.remove(handler);
                }
                fields.insert(
                    "httpGet".into(),
                    json!({"path": probe::path(&container.name, kind), "port": admin}),
                );
            }
            probes.insert(
                probe::key(&container.name, kind),
                probe::Probe {
                    check,
                    timeout_seconds: original
                        .timeout_seconds
                        .and_then(|t| u32::try_from(t).ok())
                        .unwrap_or(1),
                },
            );
            ops.push(json!({
                "op": "replace",
                "path": format!("/spec/containers/{i}/{field}"),
                "value": rewritten,
            }));
        }
    }
    (probes, ops)
}

/// The check `probe` of `container` makes, if the proxy can make it.
fn check_of(container: &Container, probe: &Probe) -> Option<Check> {
    let elsewhere = |host: &Option<String>| host.as_deref().is_some_and(|h| !h.is_empty());
    if let Some(get) = &probe.http_get {
        let https = get
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        if https || elsewhere(&get.host) {
            return None;
        }
        return Some(Check::Http {
            port: port_of(container, &get.port)?,
            path: get
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            headers: get
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        if elsewhere(&tcp.host) {
            return None;
        }
        return Some(Check::Tcp {
            port: port_of(container, &tcp.port)?,
        });
    }
    if let Some(grpc) = &probe.grpc {
        return Some(Check::Grpc {
            port: u16::try_from(grpc.port).ok().filter(|p| *p != 0)?,
            service: grpc.service.clone().unwrap_or_default(),
        });
    }
    None
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port_of(container: &Container, port: &IntOrString) -> Option<u16> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => {
                container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))?
                    .container_port
            }
        },
    };
    u16::try_from(number).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(containers: Value) -> PodSpec {
        serde_json::from_value(json!({ "containers": containers })).unwrap()
    }

    #[test]
    fn http_tcp_and_grpc_probes_go_to_the_admin_port_with_their_timings() {
        let spec = spec(json!([
            {"name": "sidecar", "image": "s"},
            {
                "name": "app",
                "image": "a",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http",
                                "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                    "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 4,
                },
                "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 5},
                "startupProbe": {"grpc": {"port": 9090, "service": "books"}},
            },
        ]));
        let (probes, ops) = rewrite(&spec, 4191);
        assert_eq!(
            probes["app/readiness"],
            probe::Probe {
                check: Check::Http {
                    port: 8080,
                    path: "/healthz".into(),
                    headers: vec![("X-Probe".into(), "1".into())],
                },
                timeout_seconds: 3,
            }
        );
        assert_eq!(probes["app/liveness"].check, Check::Tcp { port: 8080 });
        assert_eq!(
            probes["app/startup"].check,
            Check::Grpc {
                port: 9090,
                service: "books".into()
            }
        );
        assert_eq!(ops.len(), 3);
        let readiness = ops
            .iter()
            .find(|op| op["path"] == "/spec/containers/1/readinessProbe")
            .expect("the readiness probe's operation");
        assert_eq!(readiness["op"], "replace");
        assert_eq!(
            readiness["value"],
            json!({
                "httpGet": {"path": "/probe/app/readiness", "port": 4191},
                "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 4,
            })
        );
    }

    #[test]
    fn exec_https_other_host_and_unknown_port_probes_are_left_alone() {
        let spec = spec(json!([{
            "name": "app",
            "image": "a",
            "readinessProbe": {"exec": {"command": ["true"]}},
            "livenessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}},
            "startupProbe": {"tcpSocket": {"port": "missing"}},
        }, {
            "name": "other",
            "image": "o",
            "readinessProbe": {"httpGet": {"port": 80, "host": "example.internal"}},
        }]));
        let (probes, ops) = rewrite(&spec, 4191);
        assert!(probes.is_empty(), "{probes:?}");
        assert!(ops.is_empty(), "{ops:?}");
    }
}
