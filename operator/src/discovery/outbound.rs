//! The outbound view: what a proxy is told about one target (a ClusterIP or a Service
//! name, and a port), computed from the Services, their endpoints, the pods behind them
//! and the Service's ServiceProfile. Pure: the index hands it what it holds.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use super::{
    authority::Target,
    key::Key,
    pods::PodInfo,
    profile::{Profile, Profiles},
    services::Services,
};

/// A traffic split gives each backend `weight × SPLIT_SCALE` spread over its
/// endpoints, so that shares stay whole numbers however many endpoints there are.
const SPLIT_SCALE: u64 = 10_000;

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

/// What the outbound view is computed from: the index's contents.
#[derive(Debug)]
pub(super) struct OutboundInputs<'a> {
    pub(super) services: &'a Services,
    pub(super) pods: &'a HashMap<Key, PodInfo>,
    pub(super) pods_by_ip: &'a HashMap<IpAddr, Key>,
    pub(super) profiles: &'a Profiles,
    pub(super) trust_domain: &'a str,
    pub(super) opaque_ports: &'a BTreeSet<u16>,
}

impl OutboundInputs<'_> {
    /// Computes `target`'s resolution.
    pub(super) fn resolve(&self, target: &Target) -> Resolution {
        let Some((key, port)) = self.services.service_of(target) else {
            return versioned(self.pod_address(target).unwrap_or_default());
        };
        let profile = self.profiles.profile_of(&key).map(|c| c.profile.clone());
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

    /// A target that is a pod's own address (a headless Service's, a StatefulSet
    /// pod's DNS name, a pod IP) resolves to that pod, so a meshed one is reached over
    /// mTLS with its identity like any Service endpoint.
    fn pod_address(&self, target: &Target) -> Option<Resolution> {
        let Target::Address(addr) = target else {
            return None;
        };
        let key = self.pods_by_ip.get(&addr.ip())?;
        let pod = self.pods.get(key).filter(|p| !p.terminating)?;
        Some(Resolution {
            service: None,
            endpoints: vec![self.endpoint(
                &key.namespace,
                addr.ip(),
                addr.port(),
                Some((&key.name, pod)),
            )],
            profile: None,
            version: String::new(),
        })
    }

    /// The ready endpoints of `port` of `service`, each of weight 1.
    fn endpoints_of(&self, service: &Key, port: u16) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        let Some(port_name) = self
            .services
            .services
            .get(service)
            .and_then(|s| s.ports.get(&port))
        else {
            return endpoints;
        };
        for slice in self.services.slices_of.get(service).into_iter().flatten() {
            let Some(slice) = self.services.slices.get(slice) else {
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
            if info.meshed && !info.uncaptured_ports.contains(&port) {
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
