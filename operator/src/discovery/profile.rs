//! ServiceProfiles as the proxies get them: the routes, retry budget and traffic split
//! of one Service, checked once when the ServiceProfile changes.
//!
//! The API server checks a ServiceProfile's shape; only the operator can tell whether a
//! route's path regex compiles. A route whose regex does not is left out, and named in
//! the ServiceProfile's `Accepted` condition; every other route is still published, so
//! one typo does not take a Service's routes away.
//!
//! Several ServiceProfiles naming the same Service: the first by name applies, the
//! others are not accepted (reason `Conflicted`).

use std::collections::{BTreeSet, HashMap};

use weft_api::ServiceProfileSpec;

use super::key::Key;

/// The largest compiled size of a path regex, so that no route can make the operator
/// (or a proxy, which compiles the same text) use much memory.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// What a proxy is given for the Service a ServiceProfile describes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Profile {
    /// The ServiceProfile's name.
    pub name: String,
    /// Valid routes, in match order.
    pub routes: Vec<Route>,
    pub retry_budget: Option<RetryBudget>,
    /// Where the traffic goes, when the ServiceProfile splits it; empty: to the
    /// Service itself.
    pub backends: Vec<Backend>,
}

/// One route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub name: String,
    /// The request method, or any.
    pub method: Option<String>,
    /// The regex the whole path must match, as written.
    pub path_regex: String,
    /// Fail a request with no response started after this long.
    pub timeout_ms: Option<u64>,
    pub retryable: bool,
    pub response_classes: Vec<ResponseClass>,
}

/// An inclusive range of status codes, and whether it means failure.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResponseClass {
    pub min: u16,
    pub max: u16,
    pub is_failure: bool,
}

/// How many retries a Service's clients may add.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RetryBudget {
    /// The retry ratio in millionths (kept whole so profiles compare and hash exactly).
    pub retry_ratio_ppm: u32,
    pub min_retries_per_second: u32,
    pub ttl_ms: u64,
}

/// A Service that gets a share of the traffic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub service: Key,
    pub weight: u32,
}

/// A ServiceProfile as the index keeps it: the profile, and what is wrong with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub generation: Option<i64>,
    /// The Service it describes.
    pub service: Key,
    pub profile: Profile,
    /// Routes left out, each as `spec.routes[i].condition.pathRegex: <why>`.
    pub problems: Vec<String>,
    /// The spec it was made from, to tell a real change from a resync.
    pub spec: ServiceProfileSpec,
}

/// Checks the ServiceProfile `key` and builds what proxies are given.
pub fn check(key: &Key, generation: Option<i64>, spec: &ServiceProfileSpec) -> Checked {
    let mut problems = Vec::new();
    let mut routes = Vec::new();
    for (i, route) in spec.routes.iter().enumerate() {
        if let Err(error) = compile_path_regex(&route.condition.path_regex) {
            problems.push(format!("spec.routes[{i}].condition.pathRegex: {error}"));
            continue;
        }
        let response_classes = route
            .response_classes
            .iter()
            .map(|c| ResponseClass {
                min: c.condition.min,
                max: c.condition.max,
                is_failure: c.is_failure,
            })
            .collect();
        routes.push(Route {
            name: route.name.clone(),
            method: route.condition.method.clone(),
            path_regex: route.condition.path_regex.clone(),
            timeout_ms: route
                .timeout
                .as_ref()
                .map(|t| u64::try_from(t.get().as_millis()).unwrap_or(u64::MAX)),
            retryable: route.retryable,
            response_classes,
        });
    }
    let retry_budget = spec.retry_budget.as_ref().map(|b| RetryBudget {
        retry_ratio_ppm: (b.retry_ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u32,
        min_retries_per_second: b.min_retries_per_second,
        ttl_ms: u64::try_from(b.ttl.get().as_millis()).unwrap_or(u64::MAX),
    });
    let backends = spec
        .traffic_split
        .iter()
        .map(|b| Backend {
            service: Key::new(&key.namespace, &b.service),
            weight: b.weight,
        })
        .collect();
    Checked {
        generation,
        service: Key::new(&key.namespace, &spec.service),
        profile: Profile {
            name: key.name.clone(),
            routes,
            retry_budget,
            backends,
        },
        problems,
        spec: spec.clone(),
    }
}

/// Compiles a route's path regex the way proxies match it: against the whole path.
pub fn compile_path_regex(text: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{text})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Every ServiceProfile, checked, and the Service each describes.
#[derive(Debug, Default)]
pub(super) struct Profiles {
    profiles: HashMap<Key, Checked>,
    /// Service → the names of the ServiceProfiles describing it.
    profiles_of: HashMap<Key, BTreeSet<String>>,
}

impl Profiles {
    pub(super) fn get(&self, key: &Key) -> Option<&Checked> {
        self.profiles.get(key)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Key, &Checked)> {
        self.profiles.iter()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &Key> {
        self.profiles.keys()
    }

    /// Keeps `checked` as the ServiceProfile `key`, not yet linked to its Service (see
    /// [`Profiles::link`]). Returns the Service its previous version described, which
    /// it no longer does.
    pub(super) fn insert(&mut self, key: &Key, checked: Checked) -> Option<Key> {
        let old = self.profiles.insert(key.clone(), checked)?;
        self.unlink(&old.service, &key.name);
        Some(old.service)
    }

    /// Records that the ServiceProfile `name` describes `service`.
    pub(super) fn link(&mut self, service: Key, name: String) {
        self.profiles_of.entry(service).or_default().insert(name);
    }

    /// Forgets the ServiceProfile `key`; returns the Service it described.
    pub(super) fn remove(&mut self, key: &Key) -> Option<Key> {
        let old = self.profiles.remove(key)?;
        self.unlink(&old.service, &key.name);
        Some(old.service)
    }

    /// The ServiceProfile that applies to `service`: the first by name of those naming
    /// it.
    pub(super) fn profile_of(&self, service: &Key) -> Option<&Checked> {
        let name = self.profiles_of.get(service)?.first()?;
        self.profiles.get(&Key::new(&service.namespace, name))
    }

    fn unlink(&mut self, service: &Key, name: &str) {
        if let Some(set) = self.profiles_of.get_mut(service) {
            set.remove(name);
            if set.is_empty() {
                self.profiles_of.remove(service);
            }
        }
    }
}

impl Profile {
    /// A hash of what proxies are given.
    pub fn version(&self) -> String {
        crate::short_hash(format!("{self:?}").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: serde_json::Value) -> ServiceProfileSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_route_whose_regex_does_not_compile_is_left_out_and_named() {
        let checked = check(
            &Key::new("shop", "web"),
            Some(3),
            &spec(json!({
                "service": "web",
                "routes": [
                    {"name": "bad", "condition": {"pathRegex": "/books/("}},
                    {"name": "GET /books/{id}", "condition": {"method": "GET", "pathRegex": "/books/[^/]+"},
                     "timeout": "2s", "retryable": true,
                     "responseClasses": [{"condition": {"min": 500, "max": 599}, "isFailure": true}]},
                ],
                "retryBudget": {"retryRatio": 0.2, "minRetriesPerSecond": 10, "ttl": "10s"},
                "trafficSplit": [{"service": "web", "weight": 90}, {"service": "web-canary", "weight": 10}],
            })),
        );
        assert_eq!(checked.service, Key::new("shop", "web"));
        assert_eq!(checked.problems.len(), 1);
        assert!(
            checked.problems[0].starts_with("spec.routes[0].condition.pathRegex: "),
            "{:?}",
            checked.problems
        );
        let route = &checked.profile.routes[..];
        assert_eq!(route.len(), 1);
        assert_eq!(route[0].name, "GET /books/{id}");
        assert_eq!(route[0].timeout_ms, Some(2000));
        assert!(route[0].retryable);
        assert_eq!(
            checked.profile.retry_budget,
            Some(RetryBudget {
                retry_ratio_ppm: 200_000,
                min_retries_per_second: 10,
                ttl_ms: 10_000
            })
        );
        assert_eq!(
            checked.profile.backends[1],
            Backend {
                service: Key::new("shop", "web-canary"),
                weight: 10
            }
        );
    }

    #[test]
    fn a_path_regex_matches_the_whole_path() {
        let re = compile_path_regex("/books/[^/]+").unwrap();
        assert!(re.is_match("/books/42"));
        assert!(!re.is_match("/books/42/reviews"));
        assert!(!re.is_match("/x/books/42"));
    }

    #[test]
    fn a_huge_regex_is_refused() {
        assert!(compile_path_regex("(a{1000}){1000}").is_err());
    }
}
