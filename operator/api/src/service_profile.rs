//! `ServiceProfile`: what proxies know about one Service's HTTP routes.
//!
//! Routes name requests (method + path regex) so metrics, timeouts and retries apply per
//! route; response classes say which responses count as failures; the retry budget
//! bounds retries; the traffic split sends shares of the Service's traffic to others.
//! A route whose path regex does not compile cannot be judged by the API server: the
//! operator reports it in `Accepted=False` with the field named and keeps publishing
//! every valid route.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{DNS_LABEL_PATTERN, Duration};

/// Condition types of a ServiceProfile.
pub mod conditions {
    /// Every route is valid and was published.
    pub const ACCEPTED: &str = "Accepted";
    /// The Service and every traffic-split backend exist.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
}

/// Routes, retries, timeouts and traffic split for one Service in this namespace.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats keys such as type_"
)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "weft.dev",
    derive = "PartialEq",
    version = "v1alpha1",
    kind = "ServiceProfile",
    namespaced,
    status = "ServiceProfileState",
    shortname = "sp",
    category = "weft",
    doc = "Routes, retries, timeouts and traffic split for one Service.",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Routes", type_ = "integer", json_path = ".status.routeCount"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Config-Version",
        type_ = "string",
        json_path = ".status.configVersion",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.routes.all(r, self.routes.exists_one(o, o.name == r.name))")
    .message("route names must be unique")
    .field_path(".routes"))]
pub struct ServiceProfileSpec {
    /// The name of the Service (in this namespace) this profile describes.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub service: String,

    /// Named routes, matched in order: the first route whose condition matches a request
    /// is the request's route.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub routes: Vec<RouteSpec>,

    /// Bounds retries of retryable routes to a share of regular traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,

    /// Send shares of this Service's traffic to other Services in this namespace
    /// (canaries, blue/green). Empty: all traffic goes to the Service itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("size(self) == 0 || self.exists(b, b.weight > 0)")
        .message("at least one trafficSplit backend needs a weight above 0"))]
    pub traffic_split: Vec<WeightedBackend>,
}

/// One named route.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// The route's name, as it appears in metrics (`route` label), e.g. `GET /books/{id}`.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,

    /// Which requests belong to this route.
    pub condition: RequestMatch,

    /// Fail a request on this route with 504 when no response started within this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,

    /// Whether failed requests on this route may be retried (within the retry budget).
    /// Only mark idempotent routes retryable.
    #[serde(default)]
    pub retryable: bool,

    /// Which responses count as failures (for metrics and retries). By default 5xx are
    /// failures and everything else a success.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub response_classes: Vec<ResponseClass>,
}

/// A request condition: the method (if given) and the path must both match.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMatch {
    /// The HTTP method, such as `GET`. Any method when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), pattern(r"^[A-Z]+$"))]
    pub method: Option<String>,

    /// A regular expression the whole request path must match, e.g. `/books/[^/]+`.
    #[schemars(length(min = 1, max = 1024))]
    pub path_regex: String,
}

/// A class of responses.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseClass {
    /// The response statuses of this class.
    pub condition: ResponseMatch,
    /// Whether responses of this class are failures.
    #[serde(default)]
    pub is_failure: bool,
}

/// A response condition: an inclusive range of HTTP status codes.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.min <= self.max").message("status min must not exceed max"))]
pub struct ResponseMatch {
    /// The lowest status code of the range.
    #[schemars(range(min = 100, max = 599))]
    pub min: u16,
    /// The highest status code of the range.
    #[schemars(range(min = 100, max = 599))]
    pub max: u16,
}

/// A retry budget: retries may add at most `retryRatio` of regular requests, plus
/// `minRetriesPerSecond`, counted over `ttl`.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries as a share of regular requests, 0 to 1 (0.2 allows 20% extra load).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub retry_ratio: f64,
    /// Retries allowed each second regardless of the ratio.
    #[schemars(range(min = 0, max = 10000))]
    pub min_retries_per_second: u32,
    /// The window over which requests and retries are counted.
    pub ttl: Duration,
}

/// A Service that receives a share of the traffic.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    /// The name of a Service in this namespace.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub service: String,
    /// The share of traffic relative to the other backends' weights.
    #[schemars(range(min = 0, max = 100000))]
    pub weight: u32,
}

/// The observed state of a ServiceProfile: what the proxies are given.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceProfileState {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Accepted` and `ResolvedRefs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// How many routes the proxies are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_count: Option<i32>,

    /// The names of the routes the proxies are given, in match order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,

    /// The backends the proxies are given, as `service:weight`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,

    /// The version of the configuration the proxies are given for this Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,
}
