//! Services and their EndpointSlices as the discovery index keeps them: ClusterIPs and
//! ports, and the endpoints behind each port name. The outbound view
//! ([`super::outbound`]) resolves targets from this.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    authority::Target,
    key::{Key, key_of},
};

#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct ServiceInfo {
    pub(super) cluster_ips: Vec<IpAddr>,
    /// Service port → the port's name (`""` when unnamed).
    pub(super) ports: BTreeMap<u16, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct SliceInfo {
    pub(super) service: Key,
    /// Port name → endpoint port number (TCP only).
    pub(super) ports: BTreeMap<String, u16>,
    pub(super) endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct SliceEndpoint {
    pub(super) addresses: Vec<IpAddr>,
    pub(super) ready: bool,
    pub(super) pod: Option<String>,
}

/// The Services and EndpointSlices of the cluster, and the links between them.
#[derive(Debug, Default)]
pub(super) struct Services {
    pub(super) services: HashMap<Key, ServiceInfo>,
    by_cluster_ip: HashMap<IpAddr, Key>,
    pub(super) slices: HashMap<Key, SliceInfo>,
    pub(super) slices_of: HashMap<Key, BTreeSet<Key>>,
}

impl Services {
    /// Whether the Service `key` is known.
    pub(super) fn contains(&self, key: &Key) -> bool {
        self.services.contains_key(key)
    }

    /// The keys of every Service.
    pub(super) fn service_keys(&self) -> impl Iterator<Item = &Key> {
        self.services.keys()
    }

    /// The keys of every EndpointSlice.
    pub(super) fn slice_keys(&self) -> impl Iterator<Item = &Key> {
        self.slices.keys()
    }

    /// Keeps `info` for the Service `key`; false when it held exactly that already.
    pub(super) fn insert_service(&mut self, key: &Key, info: ServiceInfo) -> bool {
        if self.services.get(key) == Some(&info) {
            return false;
        }
        if let Some(old) = self.services.insert(key.clone(), info.clone()) {
            for ip in old.cluster_ips {
                self.by_cluster_ip.remove(&ip);
            }
        }
        for ip in info.cluster_ips {
            self.by_cluster_ip.insert(ip, key.clone());
        }
        true
    }

    /// Forgets the Service `key`; false when it was not known.
    pub(super) fn remove_service(&mut self, key: &Key) -> bool {
        let Some(old) = self.services.remove(key) else {
            return false;
        };
        for ip in old.cluster_ips {
            self.by_cluster_ip.remove(&ip);
        }
        true
    }

    /// Keeps `info` for the EndpointSlice `key`, not yet linked to its Service (see
    /// [`Services::link_slice`]). Returns `None` when it held exactly that already,
    /// else the Service it left, when it moved to another.
    pub(super) fn insert_slice(&mut self, key: &Key, info: SliceInfo) -> Option<Option<Key>> {
        if self.slices.get(key) == Some(&info) {
            return None;
        }
        let service = info.service.clone();
        match self.slices.insert(key.clone(), info) {
            Some(old) if old.service != service => {
                self.unlink_slice(&old.service, key);
                Some(Some(old.service))
            }
            _ => Some(None),
        }
    }

    /// Records that the EndpointSlice `slice` belongs to `service`.
    pub(super) fn link_slice(&mut self, service: Key, slice: Key) {
        self.slices_of.entry(service).or_default().insert(slice);
    }

    /// Forgets the EndpointSlice `key`; returns the Service it belonged to.
    pub(super) fn remove_slice(&mut self, key: &Key) -> Option<Key> {
        let old = self.slices.remove(key)?;
        self.unlink_slice(&old.service, key);
        Some(old.service)
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
    pub(super) fn service_of(&self, target: &Target) -> Option<(Key, u16)> {
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

    /// The Services with an endpoint on pod `pod`.
    pub(super) fn services_with_pod(&self, pod: &Key) -> BTreeSet<Key> {
        self.slices
            .values()
            .filter(|s| {
                s.service.namespace == pod.namespace
                    && s.endpoints
                        .iter()
                        .any(|e| e.pod.as_deref() == Some(pod.name.as_str()))
            })
            .map(|s| s.service.clone())
            .collect()
    }
}

/// What the index keeps of a Service: its ClusterIPs and TCP ports.
pub(super) fn service_info(service: &Service) -> Option<(Key, ServiceInfo)> {
    let key = key_of(&service.metadata)?;
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
    Some((key, ServiceInfo { cluster_ips, ports }))
}

/// What the index keeps of an EndpointSlice: its Service, TCP ports and endpoints.
pub(super) fn slice_info(slice: &EndpointSlice) -> Option<(Key, SliceInfo)> {
    let key = key_of(&slice.metadata)?;
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .map(|name| Key::new(&key.namespace, name))?;
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
    Some((
        key,
        SliceInfo {
            service,
            ports,
            endpoints,
        },
    ))
}
