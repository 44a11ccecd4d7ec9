//! What the API server said about each token, kept for a while so that the same token
//! presented again (a retrying proxy, a flood of copies) costs no new TokenReview.
//!
//! Entries are keyed by the SHA-256 of the token: the token itself is never kept. An
//! accepted token is remembered until the `exp` its JWT payload states, and never
//! longer than [`MAX_ACCEPTED_TTL`]: `exp` is read without checking the signature and is
//! used for nothing but this lifetime (the TokenReview alone decides whether a token is
//! good). A refused token is remembered for [`REFUSED_TTL`], so that a flood of bad
//! tokens does not become a flood of TokenReviews. A review that could not be made is
//! not remembered at all. The cache holds at most a fixed number of entries and
//! forgets the oldest first.
//!
//! Why accepted tokens are kept for at most 30 seconds, not until their expiry: a
//! projected token bound to a pod stops being valid when the pod is deleted, which only
//! a new review finds out. The API server itself keeps a successful review for 10
//! seconds; Weft adds at most 30 to that, and a flood still costs one review per token
//! per 30 seconds.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::{ReviewError, TokenOwner};

/// The longest an accepted token is remembered (see the module's docs).
pub const MAX_ACCEPTED_TTL: Duration = Duration::from_secs(30);

/// How long a token the API server refused is remembered.
pub const REFUSED_TTL: Duration = Duration::from_secs(10);

/// The most tokens remembered at once.
pub const MAX_ENTRIES: usize = 10_000;

/// The SHA-256 of a token: what the cache keys on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut hash = [0; 32];
        hash.copy_from_slice(digest.as_ref());
        Self(hash)
    }
}

/// The outcome of a review worth remembering: whose token it is, or why it was refused.
pub type Reviewed = Result<TokenOwner, ReviewError>;

#[derive(Debug)]
struct Entry {
    reviewed: Reviewed,
    expires: Instant,
    /// Which insertion this is, to tell it from an older one of the same token still
    /// queued for eviction.
    seq: u64,
}

/// Reviewed tokens by hash, bounded (see the module's docs).
#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<TokenHash, Entry>,
    /// Insertion order, oldest first, for eviction. May hold stale pairs (entries since
    /// replaced or removed); it is compacted when it grows past twice the capacity.
    order: VecDeque<(TokenHash, u64)>,
    capacity: usize,
    next_seq: u64,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(MAX_ENTRIES)
    }
}

impl TokenCache {
    /// An empty cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            next_seq: 0,
        }
    }

    /// How many entries are held (expired ones included until they are looked up or
    /// pushed out).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What was remembered about `hash`, if it has not expired at `now`.
    pub fn get(&mut self, hash: &TokenHash, now: Instant) -> Option<Reviewed> {
        let entry = self.entries.get(hash)?;
        if now < entry.expires {
            return Some(entry.reviewed.clone());
        }
        self.entries.remove(hash);
        None
    }

    /// Remembers `reviewed` for the token with `hash`, reviewed at `now` (and
    /// `unix_now`, in seconds since the epoch, to compare with its `exp`, if known).
    /// Returns how long it will be remembered: zero for what is not remembered.
    pub fn insert(
        &mut self,
        hash: TokenHash,
        reviewed: Reviewed,
        exp: Option<u64>,
        now: Instant,
        unix_now: u64,
    ) -> Duration {
        let ttl = ttl(&reviewed, exp, unix_now);
        if ttl.is_zero() {
            self.entries.remove(&hash);
            return ttl;
        }
        while self.entries.len() >= self.capacity && !self.entries.contains_key(&hash) {
            self.evict_oldest();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(
            hash,
            Entry {
                reviewed,
                expires: now + ttl,
                seq,
            },
        );
        self.order.push_back((hash, seq));
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(hash, seq)| entries.get(hash).is_some_and(|e| e.seq == *seq));
        }
        ttl
    }

    fn evict_oldest(&mut self) {
        while let Some((hash, seq)) = self.order.pop_front() {
            if self.entries.get(&hash).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&hash);
                return;
            }
        }
        // Every entry has a queued pair, so this is not reached with entries left; be
        // safe anyway.
        self.entries.clear();
    }
}

/// How long a review's outcome is remembered.
pub fn ttl(reviewed: &Reviewed, exp: Option<u64>, unix_now: u64) -> Duration {
    match reviewed {
        Ok(_) => {
            let until_exp = exp.map_or(MAX_ACCEPTED_TTL, |exp| {
                Duration::from_secs(exp.saturating_sub(unix_now))
            });
            until_exp.min(MAX_ACCEPTED_TTL)
        }
        Err(ReviewError::Rejected(_) | ReviewError::NotAServiceAccount(_)) => REFUSED_TTL,
        Err(ReviewError::Unavailable(_) | ReviewError::TimedOut(_)) => Duration::ZERO,
    }
}

/// The `exp` claim of a JWT's payload, in seconds since the epoch, read without
/// checking anything else: `None` for a token that is not a JWT or states no `exp`.
pub fn jwt_expiry(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    // A JWT payload is small; a long one is not worth decoding.
    if payload.len() > 16 * 1024 {
        return None;
    }
    let json = base64url_decode(payload)?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    match claims.get("exp")? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

/// Unpadded (or padded) base64url, as JWTs use it.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(sa: &str) -> Reviewed {
        Ok(TokenOwner {
            namespace: "shop".into(),
            service_account: sa.into(),
        })
    }

    fn rejected() -> Reviewed {
        Err(ReviewError::Rejected("token has expired".into()))
    }

    const UNIX: u64 = 1_800_000_000;

    #[test]
    fn the_token_itself_is_not_the_key() {
        let hash = TokenHash::of("secret-token");
        assert_eq!(hash, TokenHash::of("secret-token"));
        assert_ne!(hash, TokenHash::of("secret-token2"));
        assert!(!format!("{hash:?}").contains("secret"));
    }

    #[test]
    fn an_accepted_token_is_remembered_until_its_exp_at_most_the_cap() {
        let t0 = Instant::now();
        let mut cache = TokenCache::new(10);
        let (soon, later, none) = (
            TokenHash::of("soon"),
            TokenHash::of("later"),
            TokenHash::of("none"),
        );
        // exp in 5 s: remembered for 5 s.
        assert_eq!(
            cache.insert(soon, owner("web"), Some(UNIX + 5), t0, UNIX),
            Duration::from_secs(5)
        );
        // exp in an hour, or no exp: remembered for the cap.
        assert_eq!(
            cache.insert(later, owner("web"), Some(UNIX + 3600), t0, UNIX),
            MAX_ACCEPTED_TTL
        );
        assert_eq!(
            cache.insert(none, owner("web"), None, t0, UNIX),
            MAX_ACCEPTED_TTL
        );
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(cache.get(&soon, at(4)), Some(owner("web")));
        assert_eq!(cache.get(&soon, at(5)), None);
        assert_eq!(cache.get(&later, at(29)), Some(owner("web")));
        assert_eq!(cache.get(&later, at(30)), None);
        assert_eq!(cache.get(&none, at(30)), None);
        // An exp already past: not remembered at all.
        let past = TokenHash::of("past");
        assert_eq!(
            cache.insert(past, owner("web"), Some(UNIX - 1), t0, UNIX),
            Duration::ZERO
        );
        assert_eq!(cache.get(&past, t0), None);
    }

    #[test]
    fn refusals_are_remembered_briefly_and_unavailability_not_at_all() {
        let t0 = Instant::now();
        let mut cache = TokenCache::new(10);
        let bad = TokenHash::of("bad");
        // The exp a refused token claims changes nothing.
        assert_eq!(
            cache.insert(bad, rejected(), Some(UNIX + 3600), t0, UNIX),
            REFUSED_TTL
        );
        assert_eq!(
            cache.get(&bad, t0 + Duration::from_secs(9)),
            Some(rejected())
        );
        assert_eq!(cache.get(&bad, t0 + REFUSED_TTL), None);
        let not_sa = TokenHash::of("alice");
        let alice = Err(ReviewError::NotAServiceAccount("alice".into()));
        assert_eq!(
            cache.insert(not_sa, alice.clone(), None, t0, UNIX),
            REFUSED_TTL
        );
        assert_eq!(cache.get(&not_sa, t0), Some(alice));
        let flaky = TokenHash::of("flaky");
        let unavailable = Err(ReviewError::Unavailable("timeout".into()));
        assert_eq!(
            cache.insert(flaky, unavailable, None, t0, UNIX),
            Duration::ZERO
        );
        assert_eq!(cache.get(&flaky, t0), None);
        assert_eq!(cache.len(), 1, "only alice is left: bad has expired");
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_the_oldest_first() {
        let t0 = Instant::now();
        let mut cache = TokenCache::new(3);
        let hash = |i: u32| TokenHash::of(&format!("token-{i}"));
        for i in 0..3 {
            cache.insert(hash(i), owner("web"), None, t0, UNIX);
        }
        // Replacing token-0 makes it the newest.
        cache.insert(hash(0), owner("admin"), None, t0, UNIX);
        assert_eq!(cache.len(), 3);
        cache.insert(hash(3), owner("web"), None, t0, UNIX);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&hash(1), t0), None, "token-1 was the oldest");
        assert_eq!(cache.get(&hash(0), t0), Some(owner("admin")));
        assert!(cache.get(&hash(2), t0).is_some());
        assert!(cache.get(&hash(3), t0).is_some());
        // Many more than the capacity: never more than 3 held.
        for i in 10..10_000 {
            cache.insert(hash(i), rejected(), None, t0, UNIX);
            assert!(cache.len() <= 3);
        }
        assert!(cache.order.len() <= 6, "the eviction queue stays bounded");
        assert!(cache.get(&hash(9_999), t0).is_some());
    }

    #[test]
    fn exp_is_read_from_the_payload_and_nothing_else() {
        // {"alg":"RS256"}.{"exp":1800000123,"sub":"system:serviceaccount:shop:web"}.sig
        let token = "eyJhbGciOiJSUzI1NiJ9.\
                     eyJleHAiOjE4MDAwMDAxMjMsInN1YiI6InN5c3RlbTpzZXJ2aWNlYWNjb3VudDpzaG9wOndlYiJ9.\
                     c2ln";
        assert_eq!(jwt_expiry(token), Some(1_800_000_123));
        // No exp, not a JWT, not base64url, not JSON, exp not a number: none.
        assert_eq!(
            jwt_expiry("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
            None
        );
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
        assert_eq!(jwt_expiry("a.bm90IGpzb24.c"), None);
        assert_eq!(jwt_expiry("a.eyJleHAiOiJzb29uIn0.c"), None);
        assert_eq!(jwt_expiry(""), None);
    }
}
