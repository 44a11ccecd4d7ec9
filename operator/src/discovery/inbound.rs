//! The inbound view: the policy of one port of a pod, computed from what the index
//! knows of the pod, its namespace's ServerAuthorizations and the Mesh. The rules
//! themselves are in [`super::policy`]; this gathers their inputs.

use std::collections::HashMap;

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
    Some(policy::compute(
        &PodPolicyInputs {
            namespace: &pod.namespace,
            labels: &info.labels,
            ports: &info.ports,
            opaque_ports: &info.opaque_ports,
            default_policy: info.default_policy,
        },
        port,
        authorizations,
        mesh,
    ))
}
