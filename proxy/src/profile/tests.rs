use weft_proxy_api::v1::{self, RetryBudget, Route as ProtoRoute};

use super::*;

fn profile(routes: Vec<ProtoRoute>, budget: Option<RetryBudget>) -> Profile {
    Profile {
        name: "web".into(),
        routes,
        retry_budget: budget,
        backends: Vec::new(),
    }
}

fn route(name: &str, method: &str, path: &str) -> ProtoRoute {
    ProtoRoute {
        name: name.into(),
        method: method.into(),
        path_regex: path.into(),
        ..ProtoRoute::default()
    }
}

#[test]
fn the_first_route_whose_method_and_whole_path_match_is_the_route() {
    let routes = Routes::compile(Some(&profile(
        vec![
            route("GET /books/{id}", "GET", "/books/[0-9]+"),
            route("any /books", "", "/books.*"),
            route("broken", "", "/(unclosed"),
        ],
        None,
    )));
    let name = |method: Method, path: &str| routes.route(&method, path).map(|r| r.name.as_str());
    assert_eq!(name(Method::GET, "/books/12"), Some("GET /books/{id}"));
    assert_eq!(name(Method::POST, "/books/12"), Some("any /books"));
    // Anchored: a match inside the path is not enough.
    assert_eq!(name(Method::GET, "/api/books/12"), None);
    assert_eq!(name(Method::GET, "/books/12/x"), Some("any /books"));
    assert_eq!(routes.routes.len(), 2, "the broken route is left out");
    assert!(Routes::compile(None).is_empty());
}

#[test]
fn response_classes_decide_failure_and_5xx_fails_by_default() {
    let mut proto = route("r", "", "/.*");
    proto.response_classes = vec![
        v1::ResponseClass {
            min: 500,
            max: 503,
            is_failure: false,
        },
        v1::ResponseClass {
            min: 404,
            max: 404,
            is_failure: true,
        },
    ];
    let routes = Routes::compile(Some(&profile(vec![proto], None)));
    let route = routes.route(&Method::GET, "/").unwrap();
    assert!(!route.is_failure(502));
    assert!(route.is_failure(404));
    assert!(route.is_failure(504));
    assert!(!route.is_failure(200));
}

#[test]
fn the_budget_allows_a_floor_plus_a_share_of_the_requests() {
    let routes = Routes::compile(Some(&profile(
        vec![route("r", "", "/.*")],
        Some(RetryBudget {
            retry_ratio: 0.2,
            min_retries_per_second: 1,
            ttl_ms: 2000,
        }),
    )));
    let budget = routes.budget().unwrap();
    // The floor: 1 per second over 2 s.
    assert!(budget.withdraw());
    assert!(budget.withdraw());
    assert!(!budget.withdraw());
    // 20% of 10 requests: two more.
    for _ in 0..10 {
        budget.deposit();
    }
    assert!(budget.withdraw());
    assert!(budget.withdraw());
    assert!(!budget.withdraw());
}
