//! Token buckets for Certify: how many certificates one ServiceAccount and the whole
//! operator may be issued per second, and how many TokenReviews one peer address and
//! the whole operator may cause. Plain values with the time passed in, so tests drive
//! the clock.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    time::{Duration, Instant},
};

/// A sustained rate with a burst: a bucket of `burst` tokens refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s, burst {}", self.per_second, self.burst)
    }
}

/// One token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Refills for the time since it was last looked at.
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.at = self.at.max(now);
    }

    fn has_one(&self) -> bool {
        self.tokens >= 1.0
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// Whether it would be full at `now`: then it is the same as no bucket at all.
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= f64::from(rate.burst)
    }
}

/// Token buckets by key, created full on first use. Buckets that have refilled
/// completely are forgotten once more than [`MAX_KEYS`] are held, so the map holds
/// only keys that were busy recently.
#[derive(Debug)]
struct Keyed<K> {
    rate: Rate,
    buckets: HashMap<K, Bucket>,
}

/// Past this many keys, full buckets are dropped.
pub const MAX_KEYS: usize = 10_000;

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
        }
    }

    fn bucket(&mut self, key: &K, now: Instant) -> &mut Bucket {
        if self.buckets.len() >= MAX_KEYS && !self.buckets.contains_key(key) {
            let rate = self.rate;
            self.buckets.retain(|_, b| !b.is_full(rate, now));
        }
        let rate = self.rate;
        let bucket = self
            .buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(rate, now));
        bucket.refill(rate, now);
        bucket
    }
}

/// The limits of Certify.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Certificates issued to the pods of one ServiceAccount.
    pub per_service_account: Rate,
    /// Certificates issued by this operator.
    pub global: Rate,
    /// TokenReviews caused by the Certify calls from one peer address (tokens the
    /// cache knows cause none).
    pub reviews_per_peer: Rate,
    /// TokenReviews caused by Certify calls on this operator.
    pub reviews: Rate,
    /// The longest one Certify call may take; past it, it fails with DEADLINE_EXCEEDED.
    pub deadline: Duration,
    /// The longest one TokenReview may take; past it, the call fails with UNAVAILABLE.
    pub review_timeout: Duration,
}

/// The default issuance rate of one ServiceAccount: a Deployment of 100 replicas
/// starting at once, then a rollout's pace.
pub const PER_SERVICE_ACCOUNT: Rate = Rate::new(20.0, 100);
/// The default issuance rate of the operator.
pub const GLOBAL: Rate = Rate::new(500.0, 1000);
/// The default TokenReview rate of one peer address (a pod's proxy needs one review
/// per certificate; the node's clients share the node's address).
pub const REVIEWS_PER_PEER: Rate = Rate::new(20.0, 100);
/// The default TokenReview rate of the operator.
pub const REVIEWS: Rate = Rate::new(200.0, 400);
/// The longest one Certify call may take.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The longest one TokenReview may take.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_service_account: PER_SERVICE_ACCOUNT,
            global: GLOBAL,
            reviews_per_peer: REVIEWS_PER_PEER,
            reviews: REVIEWS,
            deadline: DEADLINE,
            review_timeout: REVIEW_TIMEOUT,
        }
    }
}

/// Which limit refused a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    #[error(
        "ServiceAccount {namespace}/{service_account} is over its Certify rate limit ({rate}); retry later"
    )]
    ServiceAccount {
        namespace: String,
        service_account: String,
        rate: String,
    },
    #[error("this operator is over its Certify rate limit ({rate}); retry later")]
    Global { rate: String },
    #[error(
        "Certify calls from {peer} are over their TokenReview rate limit ({rate}); retry later"
    )]
    PeerReviews { peer: IpAddr, rate: String },
    #[error("this operator is over its TokenReview rate limit ({rate}); retry later")]
    Reviews { rate: String },
}

impl Limited {
    /// The `reason` label of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ServiceAccount { .. } => "service_account_rate_limit",
            Self::Global { .. } => "global_rate_limit",
            Self::PeerReviews { .. } => "peer_review_rate_limit",
            Self::Reviews { .. } => "review_rate_limit",
        }
    }
}

/// The buckets of Certify.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    per_service_account: Keyed<(String, String)>,
    global: Bucket,
    reviews_per_peer: Keyed<IpAddr>,
    reviews: Bucket,
}

impl Limiter {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            per_service_account: Keyed::new(limits.per_service_account),
            global: Bucket::full(limits.global, now),
            reviews_per_peer: Keyed::new(limits.reviews_per_peer),
            reviews: Bucket::full(limits.reviews, now),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes one issuance for `namespace/service_account` from its bucket and the
    /// global one, or from neither.
    pub fn issue(
        &mut self,
        namespace: &str,
        service_account: &str,
        now: Instant,
    ) -> Result<(), Limited> {
        let key = (namespace.to_string(), service_account.to_string());
        let sa = self.per_service_account.bucket(&key, now);
        if !sa.has_one() {
            return Err(Limited::ServiceAccount {
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
                rate: self.limits.per_service_account.to_string(),
            });
        }
        self.global.refill(self.limits.global, now);
        if !self.global.has_one() {
            return Err(Limited::Global {
                rate: self.limits.global.to_string(),
            });
        }
        self.global.take();
        // Looked up again: the global bucket was borrowed in between.
        self.per_service_account.bucket(&key, now).take();
        Ok(())
    }

    /// Takes one TokenReview for `peer` from its bucket and the global one, or from
    /// neither.
    pub fn review(&mut self, peer: IpAddr, now: Instant) -> Result<(), Limited> {
        let bucket = self.reviews_per_peer.bucket(&peer, now);
        if !bucket.has_one() {
            return Err(Limited::PeerReviews {
                peer,
                rate: self.limits.reviews_per_peer.to_string(),
            });
        }
        self.reviews.refill(self.limits.reviews, now);
        if !self.reviews.has_one() {
            return Err(Limited::Reviews {
                rate: self.limits.reviews.to_string(),
            });
        }
        self.reviews.take();
        self.reviews_per_peer.bucket(&peer, now).take();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(sa: Rate, global: Rate) -> Limits {
        Limits {
            per_service_account: sa,
            global,
            reviews_per_peer: Rate::new(1.0, 2),
            reviews: Rate::new(2.0, 3),
            ..Limits::default()
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_service_account_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(Rate::new(2.0, 3), Rate::new(100.0, 100)), t0);
        for _ in 0..3 {
            limiter.issue("shop", "web", t0).unwrap();
        }
        let refused = limiter.issue("shop", "web", t0).unwrap_err();
        assert_eq!(refused.reason(), "service_account_rate_limit");
        assert_eq!(
            refused.to_string(),
            "ServiceAccount shop/web is over its Certify rate limit (2/s, burst 3); retry later"
        );
        // Another ServiceAccount, even of the same namespace, has its own bucket.
        limiter.issue("shop", "admin", t0).unwrap();
        // 2/s: one more after 500 ms, not before.
        assert!(limiter.issue("shop", "web", ms(t0, 499)).is_err());
        limiter.issue("shop", "web", ms(t0, 500)).unwrap();
        assert!(limiter.issue("shop", "web", ms(t0, 500)).is_err());
        // Idle for a long time: back to the burst, not more.
        let later = ms(t0, 60_000);
        for _ in 0..3 {
            limiter.issue("shop", "web", later).unwrap();
        }
        assert!(limiter.issue("shop", "web", later).is_err());
    }

    #[test]
    fn the_global_bucket_bounds_all_service_accounts_together() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(Rate::new(10.0, 10), Rate::new(1.0, 4)), t0);
        for sa in ["a", "b", "c", "d"] {
            limiter.issue("shop", sa, t0).unwrap();
        }
        let refused = limiter.issue("shop", "e", t0).unwrap_err();
        assert_eq!(refused.reason(), "global_rate_limit");
        assert!(refused.to_string().contains("(1/s, burst 4)"), "{refused}");
        // A call refused by the global bucket takes nothing from its ServiceAccount's
        // (which never refills here), and one refused by its ServiceAccount's bucket
        // takes nothing from the global one.
        let mut limiter = Limiter::new(limits(Rate::new(0.0, 1), Rate::new(1.0, 1)), t0);
        limiter.issue("shop", "a", t0).unwrap();
        assert_eq!(
            limiter.issue("shop", "b", t0).unwrap_err().reason(),
            "global_rate_limit"
        );
        let t1 = ms(t0, 1_000);
        assert_eq!(
            limiter.issue("shop", "a", t1).unwrap_err().reason(),
            "service_account_rate_limit"
        );
        limiter.issue("shop", "b", t1).unwrap();
    }

    #[test]
    fn reviews_are_limited_per_peer_and_in_total() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(Rate::new(1.0, 1), Rate::new(1.0, 1)), t0);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "198.18.0.10".parse().unwrap(),
            "198.18.0.11".parse().unwrap(),
            "198.18.0.12".parse().unwrap(),
        );
        limiter.review(a, t0).unwrap();
        limiter.review(a, t0).unwrap();
        let refused = limiter.review(a, t0).unwrap_err();
        assert_eq!(refused.reason(), "peer_review_rate_limit");
        assert!(refused.to_string().contains("198.18.0.10"), "{refused}");
        limiter.review(b, t0).unwrap();
        // Three in total (burst 3): c is refused by the global bucket.
        assert_eq!(
            limiter.review(c, t0).unwrap_err().reason(),
            "review_rate_limit"
        );
        // Half a second later the global bucket has one more (2/s); c takes it.
        limiter.review(c, ms(t0, 500)).unwrap();
    }

    #[test]
    fn idle_keys_are_forgotten_past_the_bound() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(
            limits(Rate::new(1.0, 5), Rate::new(1_000_000.0, 1_000_000)),
            t0,
        );
        for i in 0..MAX_KEYS {
            limiter.issue("ns", &format!("sa-{i}"), t0).unwrap();
        }
        assert_eq!(limiter.per_service_account.buckets.len(), MAX_KEYS);
        // Ten seconds on, every bucket is full again: adding one more key drops them.
        limiter.issue("ns", "one-more", ms(t0, 10_000)).unwrap();
        assert_eq!(limiter.per_service_account.buckets.len(), 1);
    }
}
