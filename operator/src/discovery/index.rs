//! The discovery index: what the cluster's Services, EndpointSlices and Pods say about
//! where a proxy's traffic can go, kept current from watch events and handed to each
//! subscriber as a `watch::Receiver` of the resolution it asked for.
//!
//! Pure Rust: the watches feed it plain objects (`apply`, `delete`, `replace` after a
//! relist), and tests drive it the same way, synchronously.
//!
//! Subscriptions are per target (a ClusterIP or a Service name, and a port); every
//! subscriber of the same target shares one `watch` channel. A change recomputes only
//! the targets of the Service it touched (and targets that were unknown, which the
//! change may have made known), and a receiver wakes only when its resolution really
//! changed.
//!
//! The index holds the objects and the subscriptions; what it holds is split by what
//! it indexes ([`super::services`], [`super::pods`], [`super::profile`]'s
//! ServiceProfiles, ServerAuthorizations), and the views it hands out are computed from
//! it by [`super::outbound`] (resolutions) and [`super::inbound`] (policies), which
//! take its contents as input.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use k8s_openapi::{
    Metadata,
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use tokio::sync::watch;

use weft_api::{ServerAuthorizationSpec, ServiceProfileSpec, mesh::DefaultInboundPolicy};

pub use super::{
    authority::{AuthorityError, MAX_AUTHORITY, Target, parse_authority},
    key::Key,
    outbound::{Endpoint, Resolution},
    pods::{PodInfo, Workload, tcp_container_ports},
};
use super::{
    inbound::{self, Authorizations},
    key::key_of,
    outbound::OutboundInputs,
    pods::pod_info,
    policy::{MeshPolicyInputs, Policy},
    profile::{self, Checked, Profiles},
    services::{self, Services},
};

/// The index. See the module docs.
#[derive(Debug)]
pub struct Index {
    cluster_domain: String,
    trust_domain: String,
    opaque_ports: BTreeSet<u16>,
    services: Services,
    pods: HashMap<Key, PodInfo>,
    /// The pod of each pod address.
    pods_by_ip: HashMap<std::net::IpAddr, Key>,
    pods_synced: bool,
    default_policy: DefaultInboundPolicy,
    authorizations: Authorizations,
    profiles: Profiles,
    subscriptions: HashMap<Target, watch::Sender<Arc<Resolution>>>,
    policies: HashMap<(Key, u16), watch::Sender<Arc<Policy>>>,
    /// Told of every change to what status shows: pods, Services, ServiceProfiles,
    /// ServerAuthorizations, the Mesh (not endpoints, which only proxies see).
    changed: watch::Sender<()>,
}

impl Index {
    pub fn new(cluster_domain: &str, trust_domain: &str) -> Self {
        Self {
            cluster_domain: cluster_domain.into(),
            trust_domain: trust_domain.into(),
            opaque_ports: BTreeSet::new(),
            services: Services::default(),
            pods: HashMap::new(),
            pods_by_ip: HashMap::new(),
            pods_synced: false,
            default_policy: DefaultInboundPolicy::default(),
            authorizations: HashMap::new(),
            profiles: Profiles::default(),
            subscriptions: HashMap::new(),
            policies: HashMap::new(),
            changed: watch::Sender::new(()),
        }
    }

    /// Wakes on every change to what status shows (see `changed`).
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The cluster's DNS domain, for parsing authorities.
    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }

    /// A receiver of `target`'s resolution, current at once and updated on change.
    pub fn subscribe(&mut self, target: &Target) -> watch::Receiver<Arc<Resolution>> {
        if let Some(tx) = self.subscriptions.get(target) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(self.resolve(target)));
        self.subscriptions.insert(target.clone(), tx);
        rx
    }

    /// Distinct targets with at least one subscriber.
    pub fn targets(&self) -> usize {
        self.subscriptions.len()
    }

    /// Drops targets and pod ports nobody listens to any more.
    pub fn forget_unused(&mut self) {
        self.subscriptions.retain(|_, tx| tx.receiver_count() > 0);
        self.policies.retain(|_, tx| tx.receiver_count() > 0);
    }

    /// The current resolution of `target`, when someone subscribes to it.
    pub fn current(&self, target: &Target) -> Option<Arc<Resolution>> {
        self.subscriptions.get(target).map(|tx| tx.borrow().clone())
    }

    /// A pod, when the index knows it.
    pub fn pod(&self, key: &Key) -> Option<&PodInfo> {
        self.pods.get(key)
    }

    /// Every pod.
    pub fn pods(&self) -> impl Iterator<Item = (&Key, &PodInfo)> {
        self.pods.iter()
    }

    /// Whether the pods have been listed once, so that a pod missing from the index is
    /// really gone.
    pub fn pods_synced(&self) -> bool {
        self.pods_synced
    }

    /// The SPIFFE id of a pod's ServiceAccount.
    pub fn identity_of(&self, pod: &Key) -> Option<String> {
        self.pods.get(pod).map(|info| {
            format!(
                "spiffe://{}/ns/{}/sa/{}",
                self.trust_domain, pod.namespace, info.service_account
            )
        })
    }

    /// A receiver of the policy of `port` of `pod` (0: the ports it does not declare),
    /// or `None` when the index does not know the pod.
    pub fn subscribe_policy(
        &mut self,
        pod: &Key,
        port: u16,
    ) -> Option<watch::Receiver<Arc<Policy>>> {
        let key = (pod.clone(), port);
        if let Some(tx) = self.policies.get(&key) {
            return Some(tx.subscribe());
        }
        let policy = self.policy(pod, port)?;
        let (tx, rx) = watch::channel(Arc::new(policy));
        self.policies.insert(key, tx);
        Some(rx)
    }

    /// Computes the policy of `port` of `pod` from the index.
    pub fn policy(&self, pod: &Key, port: u16) -> Option<Policy> {
        inbound::policy(
            &self.pods,
            &self.authorizations,
            &MeshPolicyInputs {
                trust_domain: &self.trust_domain,
                default_policy: self.default_policy,
                opaque_ports: &self.opaque_ports,
            },
            pod,
            port,
        )
    }

    pub fn apply_authorization(
        &mut self,
        key: Key,
        generation: Option<i64>,
        spec: &ServerAuthorizationSpec,
    ) {
        let value = (generation, spec.clone());
        if self.authorizations.get(&key) == Some(&value) {
            return;
        }
        self.authorizations.insert(key.clone(), value);
        self.refresh_policies(|pod| pod.namespace == key.namespace);
    }

    /// Every ServerAuthorization, with its generation.
    pub fn authorizations(
        &self,
    ) -> impl Iterator<Item = (&Key, Option<i64>, &ServerAuthorizationSpec)> {
        self.authorizations
            .iter()
            .map(|(key, (generation, spec))| (key, *generation, spec))
    }

    pub fn delete_authorization(&mut self, key: &Key) {
        if self.authorizations.remove(key).is_some() {
            self.refresh_policies(|pod| pod.namespace == key.namespace);
        }
    }

    /// Replaces every ServerAuthorization after a relist.
    pub fn replace_authorizations(
        &mut self,
        all: Vec<(Key, Option<i64>, ServerAuthorizationSpec)>,
    ) {
        let all: Authorizations = all
            .into_iter()
            .map(|(key, generation, spec)| (key, (generation, spec)))
            .collect();
        if all != self.authorizations {
            self.authorizations = all;
            self.refresh_policies(|_| true);
        }
    }

    pub fn apply_profile(&mut self, key: Key, generation: Option<i64>, spec: &ServiceProfileSpec) {
        if let Some(old) = self.profiles.get(&key)
            && old.generation == generation
            && old.spec == *spec
        {
            return;
        }
        self.changed.send_replace(());
        let checked = profile::check(&key, generation, spec);
        let service = checked.service.clone();
        if let Some(old_service) = self.profiles.insert(&key, checked) {
            self.refresh(&old_service);
        }
        self.profiles.link(service.clone(), key.name);
        self.refresh(&service);
    }

    pub fn delete_profile(&mut self, key: &Key) {
        if let Some(old_service) = self.profiles.remove(key) {
            self.changed.send_replace(());
            self.refresh(&old_service);
        }
    }

    /// Replaces every ServiceProfile after a relist.
    pub fn replace_profiles(&mut self, all: Vec<(Key, Option<i64>, ServiceProfileSpec)>) {
        let keep: BTreeSet<&Key> = all.iter().map(|(key, _, _)| key).collect();
        let gone: Vec<Key> = self
            .profiles
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for key in gone {
            self.delete_profile(&key);
        }
        for (key, generation, spec) in all {
            self.apply_profile(key, generation, &spec);
        }
    }

    /// Every ServiceProfile, checked.
    pub fn profiles(&self) -> impl Iterator<Item = (&Key, &Checked)> {
        self.profiles.iter()
    }

    /// The ServiceProfile that applies to `service`: the first by name of those naming
    /// it.
    pub fn profile_of(&self, service: &Key) -> Option<&Checked> {
        self.profiles.profile_of(service)
    }

    /// Whether the index knows the Service `key`.
    pub fn has_service(&self, key: &Key) -> bool {
        self.services.contains(key)
    }

    /// Recomputes the policies of the pods `which` picks.
    fn refresh_policies(&mut self, which: impl Fn(&Key) -> bool) {
        self.changed.send_replace(());
        let keys: Vec<(Key, u16)> = self
            .policies
            .keys()
            .filter(|(pod, _)| which(pod))
            .cloned()
            .collect();
        for (pod, port) in keys {
            // A pod that is gone keeps its last policy until its proxy disconnects.
            let Some(policy) = self.policy(&pod, port) else {
                continue;
            };
            if let Some(tx) = self.policies.get(&(pod, port)) {
                tx.send_if_modified(|current| {
                    if **current == policy {
                        false
                    } else {
                        *current = Arc::new(policy);
                        true
                    }
                });
            }
        }
    }

    /// Namespaces holding at least one meshed pod.
    pub fn namespaces_with_meshed_pods(&self) -> BTreeSet<String> {
        self.pods
            .iter()
            .filter(|(_, pod)| pod.meshed)
            .map(|(key, _)| key.namespace.clone())
            .collect()
    }

    /// The mesh's settings that resolutions depend on.
    pub fn set_mesh(
        &mut self,
        trust_domain: &str,
        opaque_ports: BTreeSet<u16>,
        default_policy: DefaultInboundPolicy,
    ) {
        if self.trust_domain != trust_domain
            || self.opaque_ports != opaque_ports
            || self.default_policy != default_policy
        {
            self.trust_domain = trust_domain.into();
            self.opaque_ports = opaque_ports;
            self.default_policy = default_policy;
            self.refresh_all();
            self.refresh_policies(|_| true);
        }
    }

    pub fn apply_service(&mut self, service: &Service) {
        let Some((key, info)) = services::service_info(service) else {
            return;
        };
        if self.services.insert_service(&key, info) {
            self.changed.send_replace(());
            self.refresh(&key);
        }
    }

    pub fn delete_service(&mut self, key: &Key) {
        if self.services.remove_service(key) {
            self.changed.send_replace(());
            self.refresh(key);
        }
    }

    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let Some((key, info)) = services::slice_info(slice) else {
            return;
        };
        let service = info.service.clone();
        let Some(left) = self.services.insert_slice(&key, info) else {
            return;
        };
        if let Some(old_service) = left {
            self.refresh(&old_service);
        }
        self.services.link_slice(service.clone(), key);
        self.refresh(&service);
    }

    pub fn delete_slice(&mut self, key: &Key) {
        if let Some(service) = self.services.remove_slice(key) {
            self.refresh(&service);
        }
    }

    pub fn apply_pod(&mut self, pod: &Pod) {
        let Some(key) = key_of(&pod.metadata) else {
            return;
        };
        let info = pod_info(pod);
        if self.pods.get(&key) == Some(&info) {
            return;
        }
        let mut ips = info.ips.clone();
        for ip in &info.ips {
            self.pods_by_ip.insert(*ip, key.clone());
        }
        if let Some(old) = self.pods.insert(key.clone(), info) {
            ips.extend(self.forget_ips(&key, &old));
        }
        self.refresh_pod(&key);
        self.refresh_addresses(&ips);
        self.refresh_policies(|pod| *pod == key);
    }

    pub fn delete_pod(&mut self, key: &Key) {
        if let Some(old) = self.pods.remove(key) {
            let ips = self.forget_ips(key, &old);
            self.changed.send_replace(());
            self.refresh_pod(key);
            self.refresh_addresses(&ips);
        }
    }

    /// Forgets the addresses of `old` (pod `key` as it was) that are no longer its,
    /// unless another pod has taken them; returns them.
    fn forget_ips(&mut self, key: &Key, old: &PodInfo) -> Vec<std::net::IpAddr> {
        let now = self
            .pods
            .get(key)
            .map(|p| p.ips.clone())
            .unwrap_or_default();
        let gone: Vec<std::net::IpAddr> = old
            .ips
            .iter()
            .filter(|ip| !now.contains(ip))
            .copied()
            .collect();
        for ip in &gone {
            if self.pods_by_ip.get(ip) == Some(key) {
                self.pods_by_ip.remove(ip);
            }
        }
        gone
    }

    /// Recomputes the targets that are `ips` (a pod's own addresses), port any.
    fn refresh_addresses(&mut self, ips: &[std::net::IpAddr]) {
        if ips.is_empty() {
            return;
        }
        let affected: Vec<Target> = self
            .subscriptions
            .keys()
            .filter(|t| matches!(t, Target::Address(a) if ips.contains(&a.ip())))
            .cloned()
            .collect();
        self.publish(affected);
    }

    /// Replaces every Service after a relist.
    pub fn replace_services(&mut self, services: &[Service]) {
        self.relist(
            services,
            |index| index.services.service_keys().cloned().collect(),
            Self::delete_service,
            Self::apply_service,
        );
    }

    /// Replaces every EndpointSlice after a relist.
    pub fn replace_slices(&mut self, slices: &[EndpointSlice]) {
        self.relist(
            slices,
            |index| index.services.slice_keys().cloned().collect(),
            Self::delete_slice,
            Self::apply_slice,
        );
    }

    /// Replaces every Pod after a relist.
    pub fn replace_pods(&mut self, pods: &[Pod]) {
        self.relist(
            pods,
            |index| index.pods.keys().cloned().collect(),
            Self::delete_pod,
            Self::apply_pod,
        );
        self.pods_synced = true;
    }

    /// Deletes the objects of `known` that a relist of `objects` no longer holds, then
    /// applies each of `objects`.
    fn relist<T: Metadata<Ty = ObjectMeta>>(
        &mut self,
        objects: &[T],
        known: fn(&Self) -> Vec<Key>,
        delete: fn(&mut Self, &Key),
        apply: fn(&mut Self, &T),
    ) {
        let keep: BTreeSet<Key> = objects
            .iter()
            .filter_map(|o| key_of(o.metadata()))
            .collect();
        let gone: Vec<Key> = known(self)
            .into_iter()
            .filter(|k| !keep.contains(k))
            .collect();
        for key in gone {
            delete(self, &key);
        }
        for object in objects {
            apply(self, object);
        }
    }

    /// What the outbound view is computed from.
    fn outbound(&self) -> OutboundInputs<'_> {
        OutboundInputs {
            services: &self.services,
            pods: &self.pods,
            pods_by_ip: &self.pods_by_ip,
            profiles: &self.profiles,
            trust_domain: &self.trust_domain,
            opaque_ports: &self.opaque_ports,
        }
    }

    /// Computes `target`'s resolution from the index.
    pub fn resolve(&self, target: &Target) -> Resolution {
        self.outbound().resolve(target)
    }

    /// Recomputes the targets of `service` (and of Services splitting traffic to it),
    /// and the unknown ones it may now answer.
    fn refresh(&mut self, service: &Key) {
        let affected: Vec<Target> = self
            .subscriptions
            .iter()
            .filter(|(target, tx)| {
                let now = self.services.service_of(target).map(|(k, _)| k);
                let current = tx.borrow();
                now.as_ref() == Some(service)
                    || current.service.as_ref() == Some(service)
                    || current
                        .profile
                        .iter()
                        .flat_map(|p| &p.backends)
                        .any(|b| b.service == *service)
            })
            .map(|(target, _)| target.clone())
            .collect();
        self.publish(affected);
    }

    /// Recomputes the targets whose endpoints include pod `key`.
    fn refresh_pod(&mut self, pod: &Key) {
        for service in self.services.services_with_pod(pod) {
            self.refresh(&service);
        }
    }

    fn refresh_all(&mut self) {
        let all: Vec<Target> = self.subscriptions.keys().cloned().collect();
        self.publish(all);
    }

    fn publish(&mut self, targets: Vec<Target>) {
        for target in targets {
            let resolution = self.resolve(&target);
            if let Some(tx) = self.subscriptions.get(&target) {
                tx.send_if_modified(|current| {
                    if **current == resolution {
                        false
                    } else {
                        *current = Arc::new(resolution);
                        true
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
