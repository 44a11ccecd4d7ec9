//! Endpoint selection: power of two choices over peak-EWMA latency.
//!
//! Two endpoints are drawn at random (in proportion to their weight, so a traffic
//! split holds), and the one with the lower cost wins:
//! `latency × (in flight + 1) / weight`, where latency is a peak-sensitive moving
//! average — it jumps to a slower observation at once and decays towards faster ones
//! over [`DECAY`]. Unobserved, the estimate also decays towards zero over [`DECAY`],
//! so an endpoint passed over for being slow is tried again later. A slow or
//! overloaded endpoint thus gets less traffic without being starved for good, and an
//! endpoint never observed starts at [`DEFAULT_RTT`].
//!
//! Loads are kept per address for as long as a resolution names it; the caller
//! [`Balancer::retain`]s the current endpoints when a resolution changes.
//!
//! The endpoints it picks among come prepared from a resolution (`endpoints`).

mod endpoints;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

pub(crate) use self::endpoints::label_endpoint;
pub use self::endpoints::{Prepared, PreparedCache};

/// The latency assumed for an endpoint before it is observed.
pub const DEFAULT_RTT: Duration = Duration::from_millis(10);
/// How fast a latency observation fades.
pub const DECAY: Duration = Duration::from_secs(10);

/// The load of one endpoint.
#[derive(Debug)]
pub struct Load {
    in_flight: AtomicUsize,
    latency: Mutex<(f64, Instant)>,
}

impl Load {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            latency: Mutex::new((DEFAULT_RTT.as_secs_f64(), Instant::now())),
        }
    }

    /// Records a latency observation (a connect, or a response's first byte).
    pub fn observe(&self, rtt: Duration) {
        let rtt = rtt.as_secs_f64();
        let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let w = decay(now.duration_since(latency.1));
        if rtt > latency.0 {
            *latency = (rtt, now);
        } else {
            *latency = (latency.0 * w + rtt * (1.0 - w), now);
        }
    }

    fn cost(&self, weight: u32) -> f64 {
        let (estimate, at) = *self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let latency = estimate * decay(at.elapsed());
        let in_flight = self.in_flight.load(Ordering::Relaxed) as f64;
        latency * (in_flight + 1.0) / f64::from(weight.max(1))
    }
}

/// How much of an estimate `elapsed` leaves.
fn decay(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

/// Counts one connection or request in flight on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Load>);

impl InFlight {
    pub fn load(&self) -> &Load {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks endpoints. Cheap to share.
#[derive(Debug)]
pub struct Balancer {
    loads: Mutex<HashMap<SocketAddr, Arc<Load>>>,
    rng: AtomicU64,
}

impl Default for Balancer {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
            | 1;
        Self {
            loads: Mutex::default(),
            rng: AtomicU64::new(seed),
        }
    }
}

impl Balancer {
    /// Chooses among `endpoints` (address, weight); `None` when there are none. The
    /// choice counts as in flight until the returned guard is dropped.
    pub fn pick(&self, endpoints: &[(SocketAddr, u32)]) -> Option<(usize, InFlight)> {
        let chosen = match endpoints.len() {
            0 => return None,
            1 => 0,
            _ => {
                let a = self.weighted_index(endpoints);
                let mut b = self.weighted_index(endpoints);
                if b == a {
                    b = (a + 1 + self.next() as usize % (endpoints.len() - 1)) % endpoints.len();
                }
                let cost = |i: usize| self.load(endpoints[i].0).cost(endpoints[i].1);
                if cost(b) < cost(a) { b } else { a }
            }
        };
        let load = self.load(endpoints[chosen].0);
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((chosen, InFlight(load)))
    }

    /// Forgets the loads of addresses no longer among `current`.
    pub fn retain(&self, current: &[SocketAddr]) {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        loads.retain(|addr, load| {
            current.contains(addr) || load.in_flight.load(Ordering::Relaxed) > 0
        });
    }

    fn load(&self, addr: SocketAddr) -> Arc<Load> {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        loads
            .entry(addr)
            .or_insert_with(|| Arc::new(Load::new()))
            .clone()
    }

    fn weighted_index(&self, endpoints: &[(SocketAddr, u32)]) -> usize {
        let total: u64 = endpoints.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
        let mut point = self.next() % total;
        for (i, (_, w)) in endpoints.iter().enumerate() {
            let w = u64::from((*w).max(1));
            if point < w {
                return i;
            }
            point -= w;
        }
        endpoints.len() - 1
    }

    /// xorshift64*: fast, and good enough to spread load.
    fn next(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| (SocketAddr::from(([127, 0, 0, 1], 9000 + i)), 1))
            .collect()
    }

    #[test]
    fn a_slow_endpoint_gets_less_traffic() {
        let balancer = Balancer::default();
        let endpoints = addrs(3);
        balancer
            .load(endpoints[2].0)
            .observe(Duration::from_millis(200));
        // The other two keep the default latency.
        let mut counts = [0; 3];
        for _ in 0..3000 {
            let (i, _guard) = balancer.pick(&endpoints).unwrap();
            counts[i] += 1;
        }
        // Between the two fast ones, the cheaper by a hair wins each sequential pick;
        // what matters is that the slow one is left out.
        assert!(counts[2] < 300, "{counts:?}");
    }

    #[test]
    fn weights_share_the_traffic() {
        let balancer = Balancer::default();
        let mut endpoints = addrs(2);
        endpoints[0].1 = 9;
        let mut heavy = 0;
        for _ in 0..2000 {
            let (i, _guard) = balancer.pick(&endpoints).unwrap();
            heavy += usize::from(i == 0);
        }
        assert!(heavy > 1500, "{heavy}");
    }

    #[test]
    fn in_flight_work_counts_until_dropped() {
        let balancer = Balancer::default();
        let endpoints = addrs(2);
        let held: Vec<_> = (0..10)
            .map(|_| balancer.pick(&endpoints).unwrap())
            .collect();
        let in_flight: usize = endpoints
            .iter()
            .map(|(a, _)| balancer.load(*a).in_flight.load(Ordering::Relaxed))
            .sum();
        assert_eq!(in_flight, 10);
        drop(held);
        balancer.retain(&[endpoints[0].0]);
        assert_eq!(balancer.loads.lock().unwrap().len(), 1);
        assert!(balancer.pick(&[]).is_none());
    }
}
