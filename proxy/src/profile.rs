//! ServiceProfile routes on the client side.
//!
//! A request's route is the first of the profile's routes whose method (when set) and
//! path regex (matched against the whole path) match; a request no route matches has
//! none. A route names its requests in the `route_*` metrics, bounds each with its
//! timeout (the client then gets 504), classifies its responses (by default 5xx is a
//! failure), and, when retryable, sends a failed request again — within the profile's
//! retry budget, and only a request without a body, which can be replayed exactly.
//!
//! [`Routes::compile`] is where the operator's `Profile` message becomes the proxy's
//! own types; nothing past it reads the message.
//!
//! The operator already checked every regex the way it is compiled here (anchored,
//! with the same size limit); a route that does not compile anyway is left out.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use http::Method;
use regex::Regex;
use weft_proxy_api::v1::Profile;

/// The compiled size limit of a route's path regex, as the operator checks it.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// The longest window a retry budget counts over.
const MAX_BUDGET_TTL: Duration = Duration::from_secs(60);

/// A profile's routes, compiled, and its retry budget.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    budget: Option<Budget>,
}

/// One route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    method: Option<Method>,
    path: Regex,
    /// How long a request may wait for its response head, retries included.
    pub timeout: Option<Duration>,
    pub retryable: bool,
    classes: Vec<ResponseClass>,
}

/// A range of statuses and whether a response in it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ResponseClass {
    min: u32,
    max: u32,
    is_failure: bool,
}

impl Routes {
    /// The routes of `profile` (none without one).
    pub fn compile(profile: Option<&Profile>) -> Self {
        let Some(profile) = profile else {
            return Self::default();
        };
        let routes = profile
            .routes
            .iter()
            .filter_map(|route| {
                let path = regex::RegexBuilder::new(&format!("^(?:{})$", route.path_regex))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .inspect_err(|error| {
                        tracing::warn!(route = %route.name, %error, "leaving out a route whose regex does not compile");
                    })
                    .ok()?;
                Some(Route {
                    name: route.name.clone(),
                    method: (!route.method.is_empty())
                        .then(|| Method::from_bytes(route.method.as_bytes()).ok())
                        .flatten(),
                    path,
                    timeout: (route.timeout_ms > 0).then(|| Duration::from_millis(route.timeout_ms)),
                    retryable: route.retryable,
                    classes: route
                        .response_classes
                        .iter()
                        .map(|c| ResponseClass {
                            min: c.min,
                            max: c.max,
                            is_failure: c.is_failure,
                        })
                        .collect(),
                })
            })
            .collect();
        let budget = profile.retry_budget.as_ref().map(|b| Budget {
            ratio: b.retry_ratio.clamp(0.0, 1.0),
            min_per_second: b.min_retries_per_second,
            ttl: Duration::from_millis(b.ttl_ms).clamp(Duration::from_secs(1), MAX_BUDGET_TTL),
            window: Mutex::default(),
        });
        Self { routes, budget }
    }

    /// The route of a request for `path` with `method`.
    pub fn route(&self, method: &Method, path: &str) -> Option<&Route> {
        self.routes.iter().find(|route| {
            route.method.as_ref().is_none_or(|m| m == method) && route.path.is_match(path)
        })
    }

    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Route {
    /// Whether a response with `status` failed: the first response class holding it
    /// says; without one, 5xx fails.
    pub fn is_failure(&self, status: u16) -> bool {
        let status = u32::from(status);
        self.classes
            .iter()
            .find(|c| (c.min..=c.max).contains(&status))
            .map_or(status >= 500, |c| c.is_failure)
    }
}

/// A retry budget: over the last `ttl`, retries may number `min_per_second` per
/// second plus `ratio` of the requests.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    ttl: Duration,
    window: Mutex<Window>,
}

/// Requests and retries per second, the last `ttl` of them.
#[derive(Debug, Default)]
struct Window {
    /// (second since `origin`, requests, retries), oldest first.
    seconds: std::collections::VecDeque<(u64, u64, u64)>,
    origin: Option<Instant>,
}

impl Budget {
    /// Records a request (it adds to what may be retried).
    pub fn deposit(&self) {
        self.update(|slot| slot.1 += 1);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.current(&mut window);
        let (requests, retries) = window
            .seconds
            .iter()
            .fold((0, 0), |(q, r), (_, dq, dr)| (q + dq, r + dr));
        let allowed =
            f64::from(self.min_per_second) * self.ttl.as_secs_f64() + self.ratio * requests as f64;
        if (retries as f64) < allowed {
            slot(&mut window, now).2 += 1;
            true
        } else {
            false
        }
    }

    fn update(&self, change: impl FnOnce(&mut (u64, u64, u64))) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.current(&mut window);
        change(slot(&mut window, now));
    }

    /// The current second, with the seconds older than `ttl` dropped.
    fn current(&self, window: &mut Window) -> u64 {
        let origin = *window.origin.get_or_insert_with(Instant::now);
        let now = origin.elapsed().as_secs();
        let oldest = now.saturating_sub(self.ttl.as_secs().saturating_sub(1));
        while window.seconds.front().is_some_and(|(s, _, _)| *s < oldest) {
            window.seconds.pop_front();
        }
        now
    }
}

/// The counts of second `now`, added at the end when new.
fn slot(window: &mut Window, now: u64) -> &mut (u64, u64, u64) {
    if window.seconds.back().is_none_or(|(s, _, _)| *s != now) {
        window.seconds.push_back((now, 0, 0));
    }
    window.seconds.back_mut().expect("just pushed")
}

#[cfg(test)]
mod tests;
