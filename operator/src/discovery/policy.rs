//! Inbound policy: what may reach one port of a pod, and how the proxy treats the port.
//!
//! Pure functions over the index's view of a pod and the namespace's
//! ServerAuthorizations. A port some ServerAuthorization selects (by number, or by the
//! name of one of the pod's container ports) is governed by exactly the
//! ServerAuthorizations that select it; any other port, and port 0 (which a proxy asks
//! for to learn the policy of the ports its pod does not declare), by the default
//! policy: the pod's `config.weft.dev/default-inbound-policy` annotation, else the
//! Mesh's.
//!
//! Audit mode: a port is in audit mode (its proxy lets a client no rule allows through,
//! as a would-be denial) when at least one ServerAuthorization selecting it has `mode:
//! Audit`, or, with none selecting it, when its default policy is `audit`. So a policy
//! being rolled out is enforced on a port only once all its ServerAuthorizations say
//! `Enforce`.
//!
//! The protocol is the one a selecting ServerAuthorization declares (the first by
//! name, when several do), else `opaque` for the Mesh's and the pod's opaque ports,
//! else `detect`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use weft_api::{
    ServerAuthorizationSpec, ServerPort,
    mesh::DefaultInboundPolicy,
    server_authorization::{AuthorizationMode, ServerProtocol},
};

/// The policy of one pod port, as streamed to its proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `detect`, `opaque`, `HTTP/1`, `HTTP/2` or `gRPC`.
    pub protocol: String,
    /// Who may connect; empty denies everyone.
    pub authorizations: Vec<Authorization>,
    /// Audit mode: a client no rule allows is let through, as a would-be denial.
    pub audit: bool,
    /// Only in port 0's policy: the policy of every port of the pod a
    /// ServerAuthorization selects (declared or not), so that the proxy judges each
    /// by its own policy rather than by the default ([`super::inbound`]).
    pub ports: BTreeMap<u16, Policy>,
    /// A hash of the above.
    pub version: String,
}

/// One rule allowing clients in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// `serverauthorization/<name>` or `default:<policy>`.
    pub name: String,
    /// Mesh identities allowed (`*` for any); empty for none.
    pub identities: Vec<String>,
    /// Whether clients without a mesh identity are allowed.
    pub unauthenticated: bool,
    /// Where clients may come from; empty means anywhere.
    pub networks: Vec<Network>,
}

/// A CIDR and the CIDRs inside it that are excluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub cidr: String,
    pub except: Vec<String>,
}

/// What the policy of a pod depends on, apart from its namespace's authorizations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPolicyInputs<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// Container ports: (name, number).
    pub ports: &'a [(Option<String>, u16)],
    pub opaque_ports: &'a std::collections::BTreeSet<u16>,
    /// The pod's own default, from its annotation.
    pub default_policy: Option<DefaultInboundPolicy>,
}

/// The mesh-wide inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshPolicyInputs<'a> {
    pub trust_domain: &'a str,
    pub default_policy: DefaultInboundPolicy,
    pub opaque_ports: &'a std::collections::BTreeSet<u16>,
}

/// The policy of `port` (0: the ports the pod does not declare) of `pod`, given the
/// ServerAuthorizations of its namespace, sorted by name.
pub fn compute<'a>(
    pod: &PodPolicyInputs<'_>,
    port: u16,
    authorizations: impl IntoIterator<Item = (&'a str, &'a ServerAuthorizationSpec)>,
    mesh: &MeshPolicyInputs<'_>,
) -> Policy {
    let selecting: Vec<(&str, &ServerAuthorizationSpec)> = if port == 0 {
        Vec::new()
    } else {
        authorizations
            .into_iter()
            .filter(|(_, spec)| {
                selects_port(&spec.server.port, port, pod.ports)
                    && selector_matches(&spec.server.pod_selector, pod.labels)
            })
            .collect()
    };
    let declared = selecting
        .iter()
        .find_map(|(_, spec)| spec.server.protocol)
        .map(protocol_name);
    let opaque =
        port != 0 && (mesh.opaque_ports.contains(&port) || pod.opaque_ports.contains(&port));
    let protocol = declared
        .unwrap_or(if opaque { "opaque" } else { "detect" })
        .to_string();
    let default = pod.default_policy.unwrap_or(mesh.default_policy);
    let audit = if selecting.is_empty() {
        default == DefaultInboundPolicy::Audit
    } else {
        selecting
            .iter()
            .any(|(_, spec)| spec.mode == AuthorizationMode::Audit)
    };
    let authorizations = if selecting.is_empty() {
        default_authorizations(default)
    } else {
        selecting
            .iter()
            .map(|(name, spec)| authorization(name, spec, pod.namespace, mesh.trust_domain))
            .collect()
    };
    versioned(Policy {
        protocol,
        authorizations,
        audit,
        ports: BTreeMap::new(),
        version: String::new(),
    })
}

/// The ports of a pod that `port` of a ServerAuthorization names: the number itself, or
/// every container port of that name.
pub fn server_ports(port: &ServerPort, ports: &[(Option<String>, u16)]) -> Vec<u16> {
    match port {
        ServerPort::Number(p) => vec![p.get()],
        ServerPort::Name(name) => ports
            .iter()
            .filter(|(n, _)| n.as_deref() == Some(name.as_str()))
            .map(|(_, p)| *p)
            .collect(),
    }
}

/// Whether `port` of a ServerAuthorization names container port `number`.
fn selects_port(port: &ServerPort, number: u16, ports: &[(Option<String>, u16)]) -> bool {
    match port {
        ServerPort::Number(p) => p.get() == number,
        ServerPort::Name(name) => ports
            .iter()
            .any(|(n, p)| *p == number && n.as_deref() == Some(name.as_str())),
    }
}

/// Whether `labels` satisfy `selector` (an empty selector selects everything).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // The API server refuses other operators; select nothing rather than all.
            _ => false,
        }
    });
    labels_match && expressions_match
}

fn protocol_name(protocol: ServerProtocol) -> &'static str {
    match protocol {
        ServerProtocol::Http1 => "HTTP/1",
        ServerProtocol::Http2 => "HTTP/2",
        ServerProtocol::Grpc => "gRPC",
        ServerProtocol::Opaque => "opaque",
    }
}

/// The name of a default policy, as annotations and the Mesh spell it.
pub fn default_policy_name(policy: DefaultInboundPolicy) -> &'static str {
    match policy {
        DefaultInboundPolicy::AllUnauthenticated => "all-unauthenticated",
        DefaultInboundPolicy::AllAuthenticated => "all-authenticated",
        DefaultInboundPolicy::ClusterAuthenticated => "cluster-authenticated",
        DefaultInboundPolicy::Deny => "deny",
        DefaultInboundPolicy::Audit => "audit",
    }
}

/// Parses a default policy's name.
pub fn parse_default_policy(name: &str) -> Option<DefaultInboundPolicy> {
    [
        DefaultInboundPolicy::AllUnauthenticated,
        DefaultInboundPolicy::AllAuthenticated,
        DefaultInboundPolicy::ClusterAuthenticated,
        DefaultInboundPolicy::Deny,
        DefaultInboundPolicy::Audit,
    ]
    .into_iter()
    .find(|p| default_policy_name(*p) == name.trim())
}

/// The rules a default policy stands for (`audit` stands for `deny`'s, none, in audit
/// mode). `cluster-authenticated` allows any mesh
/// identity, like `all-authenticated`: mesh identities are only issued inside the
/// cluster, and the Mesh names no cluster networks to narrow it further.
fn default_authorizations(policy: DefaultInboundPolicy) -> Vec<Authorization> {
    let name = format!("default:{}", default_policy_name(policy));
    let rule = |unauthenticated| {
        vec![Authorization {
            name: name.clone(),
            identities: vec!["*".into()],
            unauthenticated,
            networks: Vec::new(),
        }]
    };
    match policy {
        DefaultInboundPolicy::AllUnauthenticated => rule(true),
        DefaultInboundPolicy::AllAuthenticated | DefaultInboundPolicy::ClusterAuthenticated => {
            rule(false)
        }
        DefaultInboundPolicy::Deny | DefaultInboundPolicy::Audit => Vec::new(),
    }
}

fn authorization(
    name: &str,
    spec: &ServerAuthorizationSpec,
    namespace: &str,
    trust_domain: &str,
) -> Authorization {
    let client = &spec.client;
    let mut identities: Vec<String> = client
        .mesh_tls
        .iter()
        .flat_map(|m| {
            m.identities
                .iter()
                .cloned()
                .chain(m.service_accounts.iter().map(|sa| {
                    format!(
                        "spiffe://{trust_domain}/ns/{}/sa/{}",
                        sa.namespace.as_deref().unwrap_or(namespace),
                        sa.name
                    )
                }))
        })
        .collect();
    identities.sort();
    identities.dedup();
    Authorization {
        name: format!("serverauthorization/{name}"),
        identities,
        unauthenticated: client.unauthenticated,
        networks: client
            .networks
            .iter()
            .map(|n| Network {
                cidr: n.cidr.clone(),
                except: n.except.clone(),
            })
            .collect(),
    }
}

fn versioned(mut policy: Policy) -> Policy {
    let mut text = format!("{}|{:?}", policy.protocol, policy.authorizations);
    // Only in audit mode, so an enforced policy keeps the version it had before audit
    // mode existed.
    if policy.audit {
        text.push_str("|audit");
    }
    policy.version = crate::short_hash(text.as_bytes());
    policy
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::json;

    use super::*;

    fn authorization(mode: &str, service_account: &str) -> ServerAuthorizationSpec {
        serde_json::from_value(json!({
            "server": {"podSelector": {}, "port": 8080},
            "client": {"meshTLS": {"serviceAccounts": [{"name": service_account}]}},
            "mode": mode,
        }))
        .unwrap()
    }

    fn policy(
        port: u16,
        authorizations: &[(&str, ServerAuthorizationSpec)],
        pod_default: Option<DefaultInboundPolicy>,
        mesh_default: DefaultInboundPolicy,
    ) -> Policy {
        let (labels, opaque) = (BTreeMap::new(), BTreeSet::new());
        compute(
            &PodPolicyInputs {
                namespace: "shop",
                labels: &labels,
                ports: &[(Some("http".into()), 8080)],
                opaque_ports: &opaque,
                default_policy: pod_default,
            },
            port,
            authorizations.iter().map(|(n, s)| (*n, s)),
            &MeshPolicyInputs {
                trust_domain: "cluster.local",
                default_policy: mesh_default,
                opaque_ports: &opaque,
            },
        )
    }

    #[test]
    fn a_port_is_in_audit_mode_while_any_of_its_authorizations_audits() {
        let mesh = DefaultInboundPolicy::AllUnauthenticated;
        let enforce = policy(8080, &[("a", authorization("Enforce", "a"))], None, mesh);
        assert!(!enforce.audit);

        let audit = policy(
            8080,
            &[
                ("a", authorization("Enforce", "a")),
                ("b", authorization("Audit", "b")),
            ],
            None,
            mesh,
        );
        assert!(
            audit.audit,
            "one Audit authorization puts the port in audit mode"
        );
        assert_eq!(
            audit.authorizations.len(),
            2,
            "the rules are kept as they are"
        );
        assert_ne!(audit.version, enforce.version);

        let unset: ServerAuthorizationSpec = serde_json::from_value(json!({
            "server": {"podSelector": {}, "port": 8080},
            "client": {"unauthenticated": true},
        }))
        .unwrap();
        assert_eq!(unset.mode, AuthorizationMode::Enforce);
        assert!(!policy(8080, &[("a", unset)], None, mesh).audit);

        // Another port, and the port-0 default, are not in audit mode.
        assert!(!policy(9090, &[("b", authorization("Audit", "b"))], None, mesh).audit);
        assert!(!policy(0, &[("b", authorization("Audit", "b"))], None, mesh).audit);
    }

    #[test]
    fn the_audit_default_policy_allows_no_one_in_audit_mode() {
        assert_eq!(
            parse_default_policy("audit"),
            Some(DefaultInboundPolicy::Audit)
        );
        assert_eq!(default_policy_name(DefaultInboundPolicy::Audit), "audit");

        let audit = policy(8080, &[], None, DefaultInboundPolicy::Audit);
        assert!(audit.audit);
        assert!(audit.authorizations.is_empty(), "deny's rules: none");
        let deny = policy(8080, &[], None, DefaultInboundPolicy::Deny);
        assert!(!deny.audit);
        assert_ne!(audit.version, deny.version);
        assert!(policy(0, &[], None, DefaultInboundPolicy::Audit).audit);

        // The pod's annotation wins over the Mesh, both ways.
        assert!(
            policy(
                8080,
                &[],
                Some(DefaultInboundPolicy::Audit),
                DefaultInboundPolicy::AllUnauthenticated
            )
            .audit
        );
        assert!(
            !policy(
                8080,
                &[],
                Some(DefaultInboundPolicy::Deny),
                DefaultInboundPolicy::Audit
            )
            .audit
        );
        // A ServerAuthorization that enforces overrides an audit default.
        assert!(
            !policy(
                8080,
                &[("a", authorization("Enforce", "a"))],
                None,
                DefaultInboundPolicy::Audit
            )
            .audit
        );
    }
}
