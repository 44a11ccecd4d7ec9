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

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use tokio::sync::watch;

use weft_api::{ServerAuthorizationSpec, ServiceProfileSpec, mesh::DefaultInboundPolicy};

use super::{
    policy::{self, MeshPolicyInputs, PodPolicyInputs, Policy},
    profile::{self, Checked, Profile},
};
use crate::identity::spiffe::is_dns_label;

/// A traffic split gives each backend `weight × SPLIT_SCALE` spread over its
/// endpoints, so that shares stay whole numbers however many endpoints there are.
const SPLIT_SCALE: u64 = 10_000;

/// The longest authority accepted (a DNS name is at most 253 bytes, plus a port).
pub const MAX_AUTHORITY: usize = 260;

/// A namespaced name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// What a proxy asked to resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A ClusterIP and port.
    Address(SocketAddr),
    /// A Service by name, and a port.
    Name { service: Key, port: u16 },
}

/// Why an authority cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("the authority is longer than {MAX_AUTHORITY} bytes")]
    TooLong,
    #[error("{0:?} is not host:port")]
    NoPort(String),
    #[error("{0:?} is not a port from 1 to 65535")]
    BadPort(String),
    #[error("{0:?} is neither an IP address nor <service>.<namespace>[.svc[.<cluster-domain>]]")]
    BadHost(String),
}

/// Parses `ip:port`, `[ipv6]:port` or `<service>.<namespace>[.svc[.<domain>]]:port`.
pub fn parse_authority(authority: &str, cluster_domain: &str) -> Result<Target, AuthorityError> {
    if authority.len() > MAX_AUTHORITY {
        return Err(AuthorityError::TooLong);
    }
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(AuthorityError::BadPort("0".into()));
        }
        return Ok(Target::Address(addr));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| AuthorityError::NoPort(authority.into()))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| AuthorityError::BadPort(port.into()))?;
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let bad = || AuthorityError::BadHost(host.clone());
    let rest = host
        .strip_suffix(&format!(".svc.{cluster_domain}"))
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(&host);
    let (name, namespace) = rest.split_once('.').ok_or_else(bad)?;
    if !is_dns_label(name) || !is_dns_label(namespace) {
        return Err(bad());
    }
    Ok(Target::Name {
        service: Key::new(namespace, name),
        port,
    })
}

/// What a proxy is told about one target.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Resolution {
    /// The Service behind the target, when the mesh knows one.
    pub service: Option<Key>,
    /// Ready endpoints, sorted by address: the Service's own, or its traffic split's.
    pub endpoints: Vec<Endpoint>,
    /// The Service's ServiceProfile, when it has one.
    pub profile: Option<Profile>,
    /// A hash of the above.
    pub version: String,
}

/// One ready endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// Relative weight: 1, unless a traffic split shares the traffic out.
    pub weight: u32,
    /// The SPIFFE id of its proxy, when its pod is meshed.
    pub identity: Option<String>,
    /// Whether the port is opaque (no protocol detection).
    pub opaque: bool,
    /// `namespace`, `pod`, `workload`.
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ServiceInfo {
    cluster_ips: Vec<IpAddr>,
    /// Service port → the port's name (`""` when unnamed).
    ports: BTreeMap<u16, String>,
}

#[derive(Clone, Debug, PartialEq)]
struct SliceInfo {
    service: Key,
    /// Port name → endpoint port number (TCP only).
    ports: BTreeMap<String, u16>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq)]
struct SliceEndpoint {
    addresses: Vec<IpAddr>,
    ready: bool,
    pod: Option<String>,
}

/// What the index knows of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub uid: String,
    pub service_account: String,
    /// Whether the injector gave it a proxy.
    pub meshed: bool,
    /// Whether its Ready condition is true.
    pub ready: bool,
    /// Whether it is being deleted.
    pub terminating: bool,
    /// The workload it belongs to; the pod itself when nothing controls it.
    pub workload: Option<Workload>,
    pub labels: BTreeMap<String, String>,
    /// TCP container ports: (name, number).
    pub ports: Vec<(Option<String>, u16)>,
    /// Opaque ports from its annotation.
    pub opaque_ports: BTreeSet<u16>,
    /// Its default inbound policy annotation, when valid.
    pub default_policy: Option<DefaultInboundPolicy>,
}

/// The workload a pod belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `Pod`, or another controller's
    /// kind.
    pub kind: String,
    pub name: String,
    /// The workload's UID when the pod knows it (a Deployment's is one step further,
    /// on its ReplicaSet).
    pub uid: Option<String>,
}

impl Workload {
    /// `deployment/web`, as metric labels show it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }
}

/// The index. See the module docs.
#[derive(Debug)]
pub struct Index {
    cluster_domain: String,
    trust_domain: String,
    opaque_ports: BTreeSet<u16>,
    services: HashMap<Key, ServiceInfo>,
    by_cluster_ip: HashMap<IpAddr, Key>,
    slices: HashMap<Key, SliceInfo>,
    slices_of: HashMap<Key, BTreeSet<Key>>,
    pods: HashMap<Key, PodInfo>,
    pods_synced: bool,
    default_policy: DefaultInboundPolicy,
    /// ServerAuthorizations, with their generation.
    authorizations: HashMap<Key, (Option<i64>, ServerAuthorizationSpec)>,
    profiles: HashMap<Key, Checked>,
    /// Service → the names of the ServiceProfiles describing it.
    profiles_of: HashMap<Key, BTreeSet<String>>,
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
            services: HashMap::new(),
            by_cluster_ip: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            pods: HashMap::new(),
            pods_synced: false,
            default_policy: DefaultInboundPolicy::default(),
            authorizations: HashMap::new(),
            profiles: HashMap::new(),
            profiles_of: HashMap::new(),
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
        let info = self.pods.get(pod)?;
        let mut authorizations: Vec<(&str, &ServerAuthorizationSpec)> = self
            .authorizations
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
            &MeshPolicyInputs {
                trust_domain: &self.trust_domain,
                default_policy: self.default_policy,
                opaque_ports: &self.opaque_ports,
            },
        ))
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
        let all: HashMap<Key, (Option<i64>, ServerAuthorizationSpec)> = all
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
        if let Some(old) = self.profiles.insert(key.clone(), checked) {
            self.unlink_profile(&old.service, &key.name);
            self.refresh(&old.service);
        }
        self.profiles_of
            .entry(service.clone())
            .or_default()
            .insert(key.name);
        self.refresh(&service);
    }

    pub fn delete_profile(&mut self, key: &Key) {
        if let Some(old) = self.profiles.remove(key) {
            self.changed.send_replace(());
            self.unlink_profile(&old.service, &key.name);
            self.refresh(&old.service);
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
        let name = self.profiles_of.get(service)?.first()?;
        self.profiles.get(&Key::new(&service.namespace, name))
    }

    /// Whether the index knows the Service `key`.
    pub fn has_service(&self, key: &Key) -> bool {
        self.services.contains_key(key)
    }

    fn unlink_profile(&mut self, service: &Key, name: &str) {
        if let Some(set) = self.profiles_of.get_mut(service) {
            set.remove(name);
            if set.is_empty() {
                self.profiles_of.remove(service);
            }
        }
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
        let Some(key) = key_of(&service.metadata) else {
            return;
        };
        let spec = service.spec.as_ref();
        let cluster_ips: Vec<IpAddr> = spec
            .and_then(|s| {
                s.cluster_ips
                    .clone()
                    .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
            })
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                Some((port, p.name.clone().unwrap_or_default()))
            })
            .collect();
        let info = ServiceInfo { cluster_ips, ports };
        if self.services.get(&key) == Some(&info) {
            return;
        }
        self.changed.send_replace(());
        if let Some(old) = self.services.insert(key.clone(), info.clone()) {
            for ip in old.cluster_ips {
                self.by_cluster_ip.remove(&ip);
            }
        }
        for ip in info.cluster_ips {
            self.by_cluster_ip.insert(ip, key.clone());
        }
        self.refresh(&key);
    }

    pub fn delete_service(&mut self, key: &Key) {
        if let Some(old) = self.services.remove(key) {
            self.changed.send_replace(());
            for ip in old.cluster_ips {
                self.by_cluster_ip.remove(&ip);
            }
            self.refresh(key);
        }
    }

    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let Some(key) = key_of(&slice.metadata) else {
            return;
        };
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .map(|name| Key::new(&key.namespace, name))
        else {
            return;
        };
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .map(|e| SliceEndpoint {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                // Unset means ready, per the API.
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                pod: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone()),
            })
            .collect();
        let info = SliceInfo {
            service: service.clone(),
            ports,
            endpoints,
        };
        if self.slices.get(&key) == Some(&info) {
            return;
        }
        if let Some(old) = self.slices.insert(key.clone(), info)
            && old.service != service
        {
            self.unlink_slice(&old.service, &key);
            self.refresh(&old.service);
        }
        self.slices_of
            .entry(service.clone())
            .or_default()
            .insert(key);
        self.refresh(&service);
    }

    pub fn delete_slice(&mut self, key: &Key) {
        if let Some(old) = self.slices.remove(key) {
            self.unlink_slice(&old.service, key);
            self.refresh(&old.service);
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
        self.pods.insert(key.clone(), info);
        self.refresh_pod(&key);
        self.refresh_policies(|pod| *pod == key);
    }

    pub fn delete_pod(&mut self, key: &Key) {
        if self.pods.remove(key).is_some() {
            self.changed.send_replace(());
            self.refresh_pod(key);
        }
    }

    /// Replaces every Service after a relist.
    pub fn replace_services(&mut self, services: &[Service]) {
        let keep: BTreeSet<Key> = services
            .iter()
            .filter_map(|s| key_of(&s.metadata))
            .collect();
        let gone: Vec<Key> = self
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.delete_service(&key);
        }
        for service in services {
            self.apply_service(service);
        }
    }

    /// Replaces every EndpointSlice after a relist.
    pub fn replace_slices(&mut self, slices: &[EndpointSlice]) {
        let keep: BTreeSet<Key> = slices.iter().filter_map(|s| key_of(&s.metadata)).collect();
        let gone: Vec<Key> = self
            .slices
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.delete_slice(&key);
        }
        for slice in slices {
            self.apply_slice(slice);
        }
    }

    /// Replaces every Pod after a relist.
    pub fn replace_pods(&mut self, pods: &[Pod]) {
        let keep: BTreeSet<Key> = pods.iter().filter_map(|p| key_of(&p.metadata)).collect();
        let gone: Vec<Key> = self
            .pods
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.delete_pod(&key);
        }
        for pod in pods {
            self.apply_pod(pod);
        }
        self.pods_synced = true;
    }

    fn unlink_slice(&mut self, service: &Key, slice: &Key) {
        if let Some(set) = self.slices_of.get_mut(service) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_of.remove(service);
            }
        }
    }

    /// The Service `target` points at.
    fn service_of(&self, target: &Target) -> Option<(Key, u16)> {
        match target {
            Target::Address(addr) => self
                .by_cluster_ip
                .get(&addr.ip())
                .map(|key| (key.clone(), addr.port())),
            Target::Name { service, port } => self
                .services
                .contains_key(service)
                .then(|| (service.clone(), *port)),
        }
    }

    /// Computes `target`'s resolution from the index.
    pub fn resolve(&self, target: &Target) -> Resolution {
        let Some((key, port)) = self.service_of(target) else {
            return versioned(Resolution::default());
        };
        let profile = self.profile_of(&key).map(|c| c.profile.clone());
        let mut endpoints = match profile.as_ref().filter(|p| !p.backends.is_empty()) {
            None => self.endpoints_of(&key, port),
            Some(split) => {
                // Each backend's share is spread evenly over its endpoints.
                let mut endpoints = Vec::new();
                for backend in split.backends.iter().filter(|b| b.weight > 0) {
                    let mine = self.endpoints_of(&backend.service, port);
                    let count = mine.len() as u64;
                    for mut e in mine {
                        let share = u64::from(backend.weight) * SPLIT_SCALE / count;
                        e.weight = u32::try_from(share.max(1)).unwrap_or(u32::MAX);
                        endpoints.push(e);
                    }
                }
                endpoints
            }
        };
        endpoints.sort();
        // An address in two backends gets both shares.
        endpoints.dedup_by(|later, kept| {
            let same = later.address == kept.address;
            if same {
                kept.weight = kept.weight.saturating_add(later.weight);
            }
            same
        });
        versioned(Resolution {
            service: Some(key),
            endpoints,
            profile,
            version: String::new(),
        })
    }

    /// The ready endpoints of `port` of `service`, each of weight 1.
    fn endpoints_of(&self, service: &Key, port: u16) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        let Some(port_name) = self.services.get(service).and_then(|s| s.ports.get(&port)) else {
            return endpoints;
        };
        for slice in self.slices_of.get(service).into_iter().flatten() {
            let Some(slice) = self.slices.get(slice) else {
                continue;
            };
            let Some(&target_port) = slice.ports.get(port_name) else {
                continue;
            };
            for e in slice.endpoints.iter().filter(|e| e.ready) {
                let pod = e.pod.as_ref().and_then(|name| {
                    self.pods
                        .get(&Key::new(&service.namespace, name))
                        .map(|p| (name, p))
                });
                for ip in &e.addresses {
                    endpoints.push(self.endpoint(&service.namespace, *ip, target_port, pod));
                }
            }
        }
        endpoints
    }

    fn endpoint(
        &self,
        namespace: &str,
        ip: IpAddr,
        port: u16,
        pod: Option<(&String, &PodInfo)>,
    ) -> Endpoint {
        let mut labels = BTreeMap::from([("namespace".to_string(), namespace.to_string())]);
        let mut identity = None;
        let mut opaque = self.opaque_ports.contains(&port);
        if let Some((name, info)) = pod {
            labels.insert("pod".into(), name.clone());
            if let Some(workload) = &info.workload {
                labels.insert("workload".into(), workload.label());
            }
            if info.meshed {
                identity = Some(format!(
                    "spiffe://{}/ns/{namespace}/sa/{}",
                    self.trust_domain, info.service_account
                ));
            }
            opaque |= info.opaque_ports.contains(&port);
        }
        Endpoint {
            address: SocketAddr::new(ip, port),
            weight: 1,
            identity,
            opaque,
            labels,
        }
    }

    /// Recomputes the targets of `service` (and of Services splitting traffic to it),
    /// and the unknown ones it may now answer.
    fn refresh(&mut self, service: &Key) {
        let affected: Vec<Target> = self
            .subscriptions
            .iter()
            .filter(|(target, tx)| {
                let now = self.service_of(target).map(|(k, _)| k);
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
        let services: BTreeSet<Key> = self
            .slices
            .values()
            .filter(|s| {
                s.service.namespace == pod.namespace
                    && s.endpoints
                        .iter()
                        .any(|e| e.pod.as_deref() == Some(pod.name.as_str()))
            })
            .map(|s| s.service.clone())
            .collect();
        for service in services {
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

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Key> {
    Some(Key::new(meta.namespace.as_deref()?, meta.name.as_deref()?))
}

fn pod_info(pod: &Pod) -> PodInfo {
    let labels = pod.metadata.labels.as_ref();
    let meshed = labels
        .and_then(|l| l.get(weft_api::annotations::INJECTED))
        .is_some_and(|v| v == "true");
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let workload = match crate::controller_of(&pod.metadata) {
        Some(o) => {
            // A ReplicaSet of a Deployment is named `<deployment>-<pod-template-hash>`.
            let hash = labels.and_then(|l| l.get("pod-template-hash"));
            Some(
                match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                    Some(deployment) if o.kind == "ReplicaSet" => Workload {
                        kind: "Deployment".into(),
                        name: deployment.into(),
                        uid: None,
                    },
                    _ => Workload {
                        kind: o.kind.clone(),
                        name: o.name.clone(),
                        uid: Some(o.uid.clone()),
                    },
                },
            )
        }
        None => pod.metadata.name.clone().map(|name| Workload {
            kind: "Pod".into(),
            name,
            uid: Some(uid.clone()),
        }),
    };
    let annotations = pod.metadata.annotations.as_ref();
    let opaque_ports = annotations
        .and_then(|a| a.get(weft_api::annotations::OPAQUE_PORTS))
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default();
    let spec = pod.spec.as_ref();
    let ports = tcp_container_ports(pod);
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    PodInfo {
        uid,
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        meshed,
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        workload,
        labels: labels.cloned().unwrap_or_default(),
        ports,
        opaque_ports,
        default_policy: annotations
            .and_then(|a| a.get(weft_api::annotations::DEFAULT_INBOUND_POLICY))
            .and_then(|v| policy::parse_default_policy(v)),
    }
}

/// The TCP ports a pod's containers declare, (name, number), sorted and deduplicated.
pub fn tcp_container_ports(pod: &Pod) -> Vec<(Option<String>, u16)> {
    let mut ports: Vec<(Option<String>, u16)> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| Some((p.name.clone(), u16::try_from(p.container_port).ok()?)))
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// `resolution` with its version: a hash of its content.
fn versioned(mut resolution: Resolution) -> Resolution {
    let mut text = format!("{:?}|{:?}", resolution.service, resolution.profile);
    for e in &resolution.endpoints {
        text.push_str(&format!(
            "|{}|{}|{:?}|{}|{:?}",
            e.address, e.weight, e.identity, e.opaque, e.labels
        ));
    }
    resolution.version = crate::short_hash(text.as_bytes());
    resolution
}

#[cfg(test)]
mod tests;
