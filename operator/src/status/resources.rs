//! The status of the resources users write: what each ServiceProfile gives the proxies
//! and what each ServerAuthorization selects, computed from the discovery index.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use weft_api::{
    ServerAuthorizationState, ServiceProfileState,
    condition::{ConditionStatus, condition},
    server_authorization, service_profile,
};

use crate::discovery::{
    index::Index,
    key::Key,
    policy::{selector_matches, server_ports},
};

/// Every ServiceProfile's status.
pub fn profiles(index: &Index, now: Timestamp) -> BTreeMap<Key, ServiceProfileState> {
    let mut states = BTreeMap::new();
    for (key, checked) in index.profiles() {
        let generation = checked.generation;
        let winner = index
            .profile_of(&checked.service)
            .map(|w| w.profile.name.as_str());
        let applies = winner == Some(key.name.as_str());
        let accepted = if !applies {
            let winner = winner.unwrap_or_default();
            condition(
                service_profile::conditions::ACCEPTED,
                ConditionStatus::False,
                "Conflicted",
                format!(
                    "ServiceProfile {winner} also describes Service {} and comes first by \
                     name; this one is not given to proxies",
                    checked.service.name
                ),
                generation,
                now,
            )
        } else if checked.problems.is_empty() {
            condition(
                service_profile::conditions::ACCEPTED,
                ConditionStatus::True,
                "Accepted",
                format!("{} routes given to proxies", checked.profile.routes.len()),
                generation,
                now,
            )
        } else {
            condition(
                service_profile::conditions::ACCEPTED,
                ConditionStatus::False,
                "InvalidRoute",
                format!(
                    "{}; every other route is given to proxies",
                    checked.problems.join("; ")
                ),
                generation,
                now,
            )
        };
        let missing: Vec<String> = std::iter::once(&checked.service)
            .chain(checked.profile.backends.iter().map(|b| &b.service))
            .filter(|s| !index.has_service(s))
            .map(|s| s.name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let resolved = if missing.is_empty() {
            condition(
                service_profile::conditions::RESOLVED_REFS,
                ConditionStatus::True,
                "Resolved",
                "the Service and every traffic-split backend exist",
                generation,
                now,
            )
        } else {
            condition(
                service_profile::conditions::RESOLVED_REFS,
                ConditionStatus::False,
                "ServiceNotFound",
                format!("no Service {} in this namespace", missing.join(", ")),
                generation,
                now,
            )
        };
        let given = applies.then_some(&checked.profile);
        states.insert(
            key.clone(),
            ServiceProfileState {
                observed_generation: generation,
                conditions: vec![accepted, resolved],
                route_count: Some(given.map_or(0, |p| p.routes.len() as i32)),
                routes: given
                    .iter()
                    .flat_map(|p| &p.routes)
                    .map(|r| r.name.clone())
                    .collect(),
                backends: given
                    .iter()
                    .flat_map(|p| &p.backends)
                    .map(|b| format!("{}:{}", b.service.name, b.weight))
                    .collect(),
                config_version: given.map(|p| p.version()),
            },
        );
    }
    states
}

/// Every ServerAuthorization's status: the meshed pods and ports it selects.
pub fn authorizations(index: &Index, now: Timestamp) -> BTreeMap<Key, ServerAuthorizationState> {
    let mut states = BTreeMap::new();
    for (key, generation, spec) in index.authorizations() {
        let mut pods = 0;
        let mut ports = BTreeSet::new();
        for (pod_key, pod) in index.pods() {
            if pod_key.namespace != key.namespace
                || !pod.meshed
                || pod.terminating
                || !selector_matches(&spec.server.pod_selector, &pod.labels)
            {
                continue;
            }
            let numbers = server_ports(&spec.server.port, &pod.ports);
            if !numbers.is_empty() {
                pods += 1;
                ports.extend(numbers);
            }
        }
        let message = if pods == 0 {
            "selects no meshed pod yet; it applies to the ones it will select".to_string()
        } else {
            format!("applied by the proxies of {pods} meshed pods")
        };
        states.insert(
            key.clone(),
            ServerAuthorizationState {
                observed_generation: generation,
                conditions: vec![condition(
                    server_authorization::conditions::ACCEPTED,
                    ConditionStatus::True,
                    "Accepted",
                    message,
                    generation,
                    now,
                )],
                matched_pods: Some(pods),
                matched_ports: ports.into_iter().map(i32::from).collect(),
            },
        );
    }
    states
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Pod, Service};
    use serde_json::json;

    use super::*;

    fn status_of<'a>(conditions: &'a [weft_api::Condition], type_: &str) -> (&'a str, &'a str) {
        let c = conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("the condition");
        (c.status.as_str(), c.reason.as_str())
    }

    fn service(name: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name},
            "spec": {"clusterIP": "198.19.0.12", "ports": [{"port": 80, "name": "http"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_service_profile_says_what_proxies_get_and_what_is_wrong() {
        let mut index = Index::new("cluster.local", "cluster.local");
        index.apply_service(&service("web"));
        let spec = serde_json::from_value(json!({
            "service": "web",
            "routes": [
                {"name": "GET /books", "condition": {"method": "GET", "pathRegex": "/books"}},
                {"name": "broken", "condition": {"pathRegex": "/books/[0-9"}},
            ],
            "trafficSplit": [{"service": "web", "weight": 9}, {"service": "web-canary", "weight": 1}],
        }))
        .unwrap();
        index.apply_profile(Key::new("shop", "web"), Some(4), &spec);
        index.apply_profile(
            Key::new("shop", "web-two"),
            Some(1),
            &serde_json::from_value(json!({"service": "web"})).unwrap(),
        );

        let states = profiles(&index, Timestamp::now());
        let web = &states[&Key::new("shop", "web")];
        assert_eq!(web.observed_generation, Some(4));
        assert_eq!(
            status_of(&web.conditions, "Accepted"),
            ("False", "InvalidRoute")
        );
        let accepted = &web.conditions[0].message;
        assert!(
            accepted.contains("spec.routes[1].condition.pathRegex"),
            "{accepted}"
        );
        assert_eq!(web.routes, ["GET /books"]);
        assert_eq!(web.route_count, Some(1));
        assert_eq!(web.backends, ["web:9", "web-canary:1"]);
        assert_eq!(
            status_of(&web.conditions, "ResolvedRefs"),
            ("False", "ServiceNotFound")
        );
        assert!(web.conditions[1].message.contains("web-canary"));
        assert!(web.config_version.is_some());

        let two = &states[&Key::new("shop", "web-two")];
        assert_eq!(
            status_of(&two.conditions, "Accepted"),
            ("False", "Conflicted")
        );
        assert_eq!(two.route_count, Some(0));
        assert_eq!(two.config_version, None);

        // The canary Service appears: every reference resolves.
        index.apply_service(&service("web-canary"));
        let states = profiles(&index, Timestamp::now());
        assert_eq!(
            status_of(&states[&Key::new("shop", "web")].conditions, "ResolvedRefs"),
            ("True", "Resolved")
        );
    }

    #[test]
    fn a_server_authorization_counts_the_meshed_pods_and_ports_it_selects() {
        let mut index = Index::new("cluster.local", "cluster.local");
        let pod = |name: &str, app: &str, meshed: bool| -> Pod {
            let pod = serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": name, "labels": {"app": app}},
                "spec": {"containers": [{"name": "app", "ports": [
                    {"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9000},
                ]}]},
            }))
            .unwrap();
            if meshed {
                crate::inject::as_injected(pod)
            } else {
                pod
            }
        };
        index.replace_pods(&[
            pod("web-1", "web", true),
            pod("web-2", "web", true),
            pod("web-3", "web", false),
            pod("api-1", "api", true),
        ]);
        index.apply_authorization(
            Key::new("shop", "web-http"),
            Some(2),
            &serde_json::from_value(json!({
                "server": {"podSelector": {"matchLabels": {"app": "web"}}, "port": "http"},
                "client": {"unauthenticated": true},
            }))
            .unwrap(),
        );
        index.apply_authorization(
            Key::new("shop", "nothing"),
            Some(1),
            &serde_json::from_value(json!({
                "server": {"podSelector": {"matchLabels": {"app": "web"}}, "port": "grpc"},
                "client": {"unauthenticated": true},
            }))
            .unwrap(),
        );
        let states = authorizations(&index, Timestamp::now());
        let web = &states[&Key::new("shop", "web-http")];
        assert_eq!(web.matched_pods, Some(2), "the unmeshed pod is not counted");
        assert_eq!(web.matched_ports, [8080]);
        assert_eq!(web.observed_generation, Some(2));
        assert_eq!(status_of(&web.conditions, "Accepted"), ("True", "Accepted"));
        let nothing = &states[&Key::new("shop", "nothing")];
        assert_eq!(nothing.matched_pods, Some(0));
        assert!(nothing.matched_ports.is_empty());
    }
}
