//! The endpoints of a destination as the balancer picks among them: a resolution
//! prepared once per update ([`Prepared`]: addresses parsed, weights, the profile's
//! routes compiled), the endpoint picked for a connection or a request, and the
//! labels and identity that endpoint gives the hop.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use weft_proxy_api::v1::{Endpoint, Resolution};

use super::{Balancer, InFlight};
use crate::{metrics::TcpLabels, profile::Routes};

/// A resolution as requests use it, prepared once: its endpoints' addresses parsed
/// (with their weights, for the balancer) and its profile's routes compiled.
#[derive(Debug)]
pub struct Prepared {
    resolution: Arc<Resolution>,
    /// The endpoints whose address parses, and their weights.
    pub(crate) weighted: Vec<(SocketAddr, u32)>,
    /// The index in `resolution.endpoints` of each of `weighted`.
    indices: Vec<usize>,
    pub(crate) routes: Routes,
}

impl Prepared {
    /// An endpoint chosen by `balancer`: its index among the usable endpoints, its
    /// address, its entry in the resolution, and the in-flight mark to feed the
    /// balancer; `None` without a usable endpoint.
    pub fn pick(&self, balancer: &Balancer) -> Option<(usize, SocketAddr, &Endpoint, InFlight)> {
        let (chosen, in_flight) = balancer.pick(&self.weighted)?;
        let endpoint = &self.resolution.endpoints[self.indices[chosen]];
        Some((chosen, self.weighted[chosen].0, endpoint, in_flight))
    }

    /// The addresses of the usable endpoints.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.weighted.iter().map(|(addr, _)| *addr).collect()
    }
}

/// The latest [`Prepared`] resolution of one destination. Discovery hands every
/// follower of a destination the same `Arc` for one update, so a resolution is
/// prepared once per update, whatever the number of connections and requests.
#[derive(Debug, Default)]
pub struct PreparedCache(Mutex<Option<Arc<Prepared>>>);

impl PreparedCache {
    /// `resolution`, prepared (again only when it is a new one).
    pub fn get(&self, resolution: Arc<Resolution>) -> Arc<Prepared> {
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prepared) = cached.as_ref()
            && Arc::ptr_eq(&prepared.resolution, &resolution)
        {
            return prepared.clone();
        }
        let endpoints = endpoint_addrs(&resolution);
        let prepared = Arc::new(Prepared {
            weighted: endpoints.iter().map(|(a, w, _)| (*a, *w)).collect(),
            indices: endpoints.iter().map(|(_, _, i)| *i).collect(),
            routes: Routes::compile(resolution.profile.as_ref()),
            resolution,
        });
        *cached = Some(prepared.clone());
        prepared
    }
}

/// Labels a connection or request to `endpoint` (its workload, and whether the hop is
/// mTLS, given whether this proxy has TLS); returns the endpoint's identity.
pub(crate) fn label_endpoint(
    labels: &mut TcpLabels,
    endpoint: &Endpoint,
    have_tls: bool,
) -> Option<String> {
    let identity = Some(endpoint.identity.clone()).filter(|i| !i.is_empty());
    labels.tls = Some(match (&identity, have_tls) {
        (Some(_), true) => "true",
        (Some(_), false) => "no_identity",
        (None, _) => "false",
    });
    labels.server_id = identity.clone().filter(|_| have_tls);
    labels.dst_namespace = endpoint.labels.get("namespace").cloned();
    labels.dst_workload = endpoint.labels.get("workload").cloned();
    identity
}

/// The endpoints of `resolution` that parse: address, weight, and their index.
fn endpoint_addrs(resolution: &Resolution) -> Vec<(SocketAddr, u32, usize)> {
    resolution
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((e.address.parse().ok()?, e.weight, i)))
        .collect()
}
