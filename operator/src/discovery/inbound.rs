//! The inbound view: the policy of one port of a pod, computed from what the index
//! knows of the pod, its namespace's ServerAuthorizations and the Mesh. The rules
//! themselves are in [`super::policy`]; this gathers their inputs.
//!
//! Port 0's policy (what a proxy follows for every port its pod does not declare) is
//! the default, and carries in [`Policy::ports`] the policy of every port of the pod
//! that a ServerAuthorization selects, by number or by a container port's name: a
//! ServerAuthorization may name a port the pod does not declare, and that port is
//! then judged by it, not by the default. Its version covers them all, so a change
//! of any selected port's policy is a new update of port 0.

use std::collections::{BTreeSet, HashMap};

use weft_api::ServerAuthorizationSpec;

use super::{
    key::Key,
    pods::PodInfo,
    policy::{self, MeshPolicyInputs, PodPolicyInputs, Policy},
};

/// ServerAuthorizations, with their generation.
pub(super) type Authorizations = HashMap<Key, (Option<i64>, ServerAuthorizationSpec)>;

/// The policy of `port` of `pod`, or `None` when `pods` does not hold it.
pub(super) fn policy(
    pods: &HashMap<Key, PodInfo>,
    authorizations: &Authorizations,
    mesh: &MeshPolicyInputs<'_>,
    pod: &Key,
    port: u16,
) -> Option<Policy> {
    let info = pods.get(pod)?;
    let mut authorizations: Vec<(&str, &ServerAuthorizationSpec)> = authorizations
        .iter()
        .filter(|(k, _)| k.namespace == pod.namespace)
        .map(|(k, (_, spec))| (k.name.as_str(), spec))
        .collect();
    authorizations.sort_by_key(|(name, _)| *name);
    let inputs = PodPolicyInputs {
        namespace: &pod.namespace,
        labels: &info.labels,
        ports: &info.ports,
        opaque_ports: &info.opaque_ports,
        default_policy: info.default_policy,
    };
    let mut computed = policy::compute(&inputs, port, authorizations.iter().copied(), mesh);
    if port == 0 {
        let selected: BTreeSet<u16> = authorizations
            .iter()
            .filter(|(_, spec)| policy::selector_matches(&spec.server.pod_selector, &info.labels))
            .flat_map(|(_, spec)| policy::server_ports(&spec.server.port, &info.ports))
            .filter(|port| *port != 0)
            .collect();
        computed.ports = selected
            .into_iter()
            .map(|port| {
                let policy = policy::compute(&inputs, port, authorizations.iter().copied(), mesh);
                (port, policy)
            })
            .collect();
        if !computed.ports.is_empty() {
            let mut text = computed.version.clone();
            for (port, policy) in &computed.ports {
                text.push_str(&format!("|{port}:{}", policy.version));
            }
            computed.version = crate::short_hash(text.as_bytes());
        }
    }
    Some(computed)
}
