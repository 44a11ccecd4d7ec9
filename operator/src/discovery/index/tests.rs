use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn service(ns: &str, name: &str, ip: &str, ports: &[(u16, &str)]) -> Service {
    let ports: Vec<_> = ports
        .iter()
        .map(|(port, name)| json!({"port": port, "name": name, "protocol": "TCP"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": ports},
    }))
    .unwrap()
}

/// A slice of `service` with port `port_name` → `port`, and endpoints (ip, ready, pod).
fn slice(
    ns: &str,
    name: &str,
    service: &str,
    port: (&str, u16),
    endpoints: &[(&str, Option<bool>, &str)],
) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(ip, ready, pod)| {
            let mut e = json!({
                "addresses": [ip],
                "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
            });
            if let Some(ready) = ready {
                e["conditions"] = json!({"ready": ready});
            }
            e
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "namespace": ns, "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": port.0, "port": port.1, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn pod(ns: &str, name: &str, sa: &str, meshed: bool) -> Pod {
    let labels = json!({"app": "web", "pod-template-hash": "5985cc664"});
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "namespace": ns, "name": name, "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5985cc664",
                "uid": "u", "controller": true,
            }],
        },
        "spec": {"serviceAccountName": sa, "containers": []},
    }))
    .unwrap();
    if meshed {
        crate::inject::as_injected(pod)
    } else {
        pod
    }
}

fn index() -> Index {
    Index::new("cluster.local", "cluster.local")
}

/// An index with Service `web` (port 80 `http`) and its ready endpoints
/// (address, pod) on 8080.
fn web_index(endpoints: &[(&str, &str)]) -> Index {
    let mut idx = index();
    idx.apply_service(&service("shop", "web", "198.19.0.12", &[(80, "http")]));
    let endpoints: Vec<(&str, Option<bool>, &str)> = endpoints
        .iter()
        .map(|(ip, pod)| (*ip, None, *pod))
        .collect();
    idx.apply_slice(&slice("shop", "web-abc", "web", ("http", 8080), &endpoints));
    idx
}

fn addrs(r: &Resolution) -> Vec<String> {
    r.endpoints.iter().map(|e| e.address.to_string()).collect()
}

fn web_target() -> Target {
    parse_authority("web.shop.svc.cluster.local:80", "cluster.local").unwrap()
}

#[test]
fn authorities() {
    let d = "cluster.local";
    assert_eq!(
        parse_authority("198.19.0.12:80", d),
        Ok(Target::Address("198.19.0.12:80".parse().unwrap()))
    );
    assert_eq!(
        parse_authority("[fd00::1]:443", d),
        Ok(Target::Address("[fd00::1]:443".parse().unwrap()))
    );
    for name in [
        "web.shop.svc.cluster.local:80",
        "web.shop.svc:80",
        "web.shop:80",
        "WEB.shop.svc.cluster.local.:80",
    ] {
        assert_eq!(
            parse_authority(name, d),
            Ok(Target::Name {
                service: Key::new("shop", "web"),
                port: 80
            }),
            "{name}"
        );
    }
    for bad in [
        "web",
        "web.shop",
        "web.shop:http",
        "web.shop:0",
        "web.shop:70000",
        "web:80",
        ".shop:80",
        "we_b.shop:80",
        "-web.shop:80",
        "198.19.0.12:0",
        "",
    ] {
        assert!(parse_authority(bad, d).is_err(), "{bad}");
    }
    let long = format!("{}.shop:80", "a".repeat(300));
    assert_eq!(parse_authority(&long, d), Err(AuthorityError::TooLong));
}

#[test]
fn endpoints_come_and_go_and_follow_readiness() {
    let mut idx = index();
    idx.apply_service(&service("shop", "web", "198.19.0.12", &[(80, "http")]));
    let mut by_name = idx.subscribe(&web_target());
    let by_ip = idx.subscribe(&Target::Address("198.19.0.12:80".parse().unwrap()));
    assert!(by_name.borrow().endpoints.is_empty());
    assert_eq!(by_name.borrow().service, Some(Key::new("shop", "web")));
    by_name.mark_unchanged();

    idx.apply_slice(&slice(
        "shop",
        "web-abc",
        "web",
        ("http", 8080),
        &[
            ("198.18.0.5", None, "web-1"),
            ("198.18.0.6", Some(true), "web-2"),
        ],
    ));
    assert!(by_name.has_changed().unwrap());
    assert_eq!(
        addrs(&by_name.borrow_and_update()),
        ["198.18.0.5:8080", "198.18.0.6:8080"]
    );
    assert_eq!(
        *by_ip.borrow(),
        *by_name.borrow(),
        "both spellings share a resolution"
    );

    // A readiness flip removes the endpoint; flipping back restores it.
    let version = by_name.borrow().version.clone();
    idx.apply_slice(&slice(
        "shop",
        "web-abc",
        "web",
        ("http", 8080),
        &[
            ("198.18.0.5", None, "web-1"),
            ("198.18.0.6", Some(false), "web-2"),
        ],
    ));
    assert_eq!(addrs(&by_name.borrow_and_update()), ["198.18.0.5:8080"]);
    assert_ne!(by_name.borrow().version, version);

    // A second slice adds to the first; deleting it takes its endpoints away.
    idx.apply_slice(&slice(
        "shop",
        "web-def",
        "web",
        ("http", 8080),
        &[("198.18.0.7", None, "web-3")],
    ));
    assert_eq!(
        addrs(&by_name.borrow_and_update()),
        ["198.18.0.5:8080", "198.18.0.7:8080"]
    );
    idx.delete_slice(&Key::new("shop", "web-def"));
    assert_eq!(addrs(&by_name.borrow_and_update()), ["198.18.0.5:8080"]);

    // An unchanged apply wakes nobody.
    idx.apply_slice(&slice(
        "shop",
        "web-abc",
        "web",
        ("http", 8080),
        &[
            ("198.18.0.5", None, "web-1"),
            ("198.18.0.6", Some(false), "web-2"),
        ],
    ));
    assert!(!by_name.has_changed().unwrap());

    // Deleting the Service makes the destination unknown.
    idx.delete_service(&Key::new("shop", "web"));
    assert_eq!(by_name.borrow_and_update().service, None);
    assert!(by_ip.borrow().endpoints.is_empty());
}

#[test]
fn a_meshed_pod_gives_its_endpoint_an_identity_that_follows_its_service_account() {
    let mut idx = web_index(&[("198.18.0.5", "web-1"), ("198.18.0.6", "plain")]);
    let mut rx = idx.subscribe(&web_target());
    assert_eq!(rx.borrow().endpoints[0].identity, None, "no pod known yet");

    idx.apply_pod(&pod("shop", "web-1", "books", true));
    idx.apply_pod(&pod("shop", "plain", "books", false));
    {
        let r = rx.borrow_and_update();
        assert_eq!(
            r.endpoints[0].identity.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/books")
        );
        assert_eq!(r.endpoints[0].labels["workload"], "deployment/web");
        assert_eq!(r.endpoints[0].labels["pod"], "web-1");
        assert_eq!(r.endpoints[1].identity, None, "not meshed");
    }

    // The pod comes back under another ServiceAccount.
    idx.apply_pod(&pod("shop", "web-1", "library", true));
    assert_eq!(
        rx.borrow_and_update().endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/library")
    );
    idx.delete_pod(&Key::new("shop", "web-1"));
    assert_eq!(rx.borrow_and_update().endpoints[0].identity, None);
}

#[test]
fn a_pods_own_address_resolves_to_the_pod_with_its_identity() {
    let mut idx = index();
    let target = Target::Address("198.18.0.9:5432".parse().unwrap());
    let mut rx = idx.subscribe(&target);
    assert!(
        rx.borrow().endpoints.is_empty(),
        "no pod has the address yet"
    );

    let mut db = pod("shop", "db-0", "db", true);
    let with_ip = |p: &mut Pod, ip: &str| {
        p.status = Some(serde_json::from_value(json!({"podIPs": [{"ip": ip}]})).unwrap());
    };
    with_ip(&mut db, "198.18.0.9");
    idx.apply_pod(&db);
    {
        let r = rx.borrow_and_update();
        assert_eq!(r.service, None);
        assert_eq!(addrs(&r), ["198.18.0.9:5432"]);
        assert_eq!(
            r.endpoints[0].identity.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/db")
        );
        assert_eq!(r.endpoints[0].labels["pod"], "db-0");
    }

    // The pod moves to another address: the old one is nobody's.
    with_ip(&mut db, "198.18.0.10");
    idx.apply_pod(&db);
    assert!(rx.borrow_and_update().endpoints.is_empty());

    // A new pod takes the address; it goes when that pod is terminating or deleted.
    let mut next = pod("shop", "db-1", "db", false);
    with_ip(&mut next, "198.18.0.9");
    idx.apply_pod(&next);
    assert_eq!(
        rx.borrow_and_update().endpoints[0].identity,
        None,
        "not meshed"
    );
    idx.delete_pod(&Key::new("shop", "db-1"));
    assert!(rx.borrow_and_update().endpoints.is_empty());

    // A pod on the node's network has no address of its own.
    let mut host = pod("shop", "agent", "agent", false);
    with_ip(&mut host, "198.18.0.9");
    host.spec.as_mut().unwrap().host_network = Some(true);
    idx.apply_pod(&host);
    assert!(rx.borrow_and_update().endpoints.is_empty());
}

#[test]
fn a_service_port_change_and_a_late_service_reach_subscribers() {
    let mut idx = index();
    // Subscribed before the Service exists: unknown, then known when it appears.
    let mut rx = idx.subscribe(&Target::Address("198.19.0.12:80".parse().unwrap()));
    assert_eq!(rx.borrow_and_update().service, None);
    idx.apply_slice(&slice(
        "shop",
        "web-abc",
        "web",
        ("http", 8080),
        &[("198.18.0.5", None, "web-1")],
    ));
    assert!(!rx.has_changed().unwrap());
    idx.apply_service(&service("shop", "web", "198.19.0.12", &[(80, "http")]));
    assert_eq!(addrs(&rx.borrow_and_update()), ["198.18.0.5:8080"]);

    // The Service now serves port 80 under another name: no slice port matches.
    idx.apply_service(&service("shop", "web", "198.19.0.12", &[(80, "grpc")]));
    assert!(rx.borrow_and_update().endpoints.is_empty());
    // The Service moves to another ClusterIP: the old address is unknown.
    idx.apply_service(&service("shop", "web", "198.19.0.99", &[(80, "http")]));
    assert_eq!(rx.borrow_and_update().service, None);
}

#[test]
fn a_relist_removes_what_disappeared() {
    let mut idx = index();
    idx.apply_service(&service("shop", "web", "198.19.0.12", &[(80, "http")]));
    idx.apply_slice(&slice(
        "shop",
        "a",
        "web",
        ("http", 8080),
        &[("198.18.0.5", None, "web-1")],
    ));
    idx.apply_slice(&slice(
        "shop",
        "b",
        "web",
        ("http", 8080),
        &[("198.18.0.6", None, "web-2")],
    ));
    let mut rx = idx.subscribe(&web_target());
    assert_eq!(addrs(&rx.borrow_and_update()).len(), 2);
    idx.replace_slices(&[slice(
        "shop",
        "b",
        "web",
        ("http", 8080),
        &[("198.18.0.6", None, "web-2")],
    )]);
    assert_eq!(addrs(&rx.borrow_and_update()), ["198.18.0.6:8080"]);
    idx.replace_services(&[]);
    assert_eq!(rx.borrow_and_update().service, None);
}

#[test]
fn opaque_ports_come_from_the_mesh_and_the_pod() {
    let mut idx = index();
    idx.apply_service(&service(
        "shop",
        "db",
        "198.19.0.20",
        &[(5432, "pg"), (9000, "admin")],
    ));
    idx.apply_slice(&slice(
        "shop",
        "db-a",
        "db",
        ("pg", 5432),
        &[("198.18.0.9", None, "db-0")],
    ));
    let rx = idx.subscribe(&Target::Address("198.19.0.20:5432".parse().unwrap()));
    assert!(!rx.borrow().endpoints[0].opaque);
    idx.set_mesh("cluster.local", BTreeSet::from([5432]), Default::default());
    assert!(rx.borrow().endpoints[0].opaque);
}

#[test]
fn unused_targets_are_forgotten() {
    let mut idx = index();
    let rx = idx.subscribe(&web_target());
    let rx2 = idx.subscribe(&web_target());
    assert_eq!(idx.targets(), 1);
    drop(rx);
    idx.forget_unused();
    assert_eq!(idx.targets(), 1);
    drop(rx2);
    idx.forget_unused();
    assert_eq!(idx.targets(), 0);
}

#[test]
fn namespaces_with_meshed_pods_are_known() {
    let mut idx = index();
    idx.apply_pod(&pod("shop", "web-1", "books", true));
    idx.apply_pod(&pod("lib", "plain", "books", false));
    assert_eq!(
        idx.namespaces_with_meshed_pods(),
        BTreeSet::from(["shop".to_string()])
    );
    idx.delete_pod(&Key::new("shop", "web-1"));
    assert!(idx.namespaces_with_meshed_pods().is_empty());
}

/// A meshed pod of `web` with container ports `http` 8080 and `admin` 9000.
fn web_pod(name: &str, labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
    let mut pod = pod("shop", name, "web", false);
    let extra: BTreeMap<String, String> = serde_json::from_value(labels).unwrap();
    pod.metadata.labels.get_or_insert_default().extend(extra);
    pod.metadata.annotations = serde_json::from_value(annotations).unwrap();
    pod.spec = serde_json::from_value(json!({
        "serviceAccountName": "web",
        "containers": [{"name": "app", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "admin", "containerPort": 9000},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
        ]}],
    }))
    .unwrap();
    crate::inject::as_injected(pod)
}

fn authorization(port: serde_json::Value, selector: serde_json::Value) -> ServerAuthorizationSpec {
    serde_json::from_value(json!({
        "server": {"podSelector": selector, "port": port},
        "client": {"meshTLS": {"serviceAccounts": [{"name": "checkout"}]}},
    }))
    .unwrap()
}

fn rule_names(policy: &Policy) -> Vec<&str> {
    policy
        .authorizations
        .iter()
        .map(|a| a.name.as_str())
        .collect()
}

#[test]
fn a_server_authorization_selects_a_port_by_its_name() {
    let mut idx = index();
    let web = Key::new("shop", "web-1");
    assert!(idx.subscribe_policy(&web, 8080).is_none(), "unknown pod");
    idx.apply_pod(&web_pod("web-1", json!({}), json!({})));
    let mut http = idx.subscribe_policy(&web, 8080).unwrap();
    let mut admin = idx.subscribe_policy(&web, 9000).unwrap();
    let mut undeclared = idx.subscribe_policy(&web, 0).unwrap();
    assert_eq!(
        rule_names(&http.borrow_and_update()),
        ["default:all-unauthenticated"]
    );
    admin.mark_unchanged();
    undeclared.mark_unchanged();

    // Appears after the proxy subscribed; selects the `http` port by name.
    idx.apply_authorization(
        Key::new("shop", "web-http"),
        None,
        &authorization(json!("http"), json!({"matchLabels": {"app": "web"}})),
    );
    {
        let policy = http.borrow_and_update();
        assert_eq!(rule_names(&policy), ["serverauthorization/web-http"]);
        let rule = &policy.authorizations[0];
        assert_eq!(
            rule.identities,
            ["spiffe://cluster.local/ns/shop/sa/checkout"]
        );
        assert!(!rule.unauthenticated);
        assert_eq!(policy.protocol, "detect");
    }
    assert!(!admin.has_changed().unwrap(), "9000 is not named http");
    {
        // Port 0 keeps the default, and carries the selected port's policy.
        let undeclared = undeclared.borrow_and_update();
        assert_eq!(rule_names(&undeclared), ["default:all-unauthenticated"]);
        let selected: Vec<u16> = undeclared.ports.keys().copied().collect();
        assert_eq!(selected, [8080]);
        assert_eq!(
            rule_names(&undeclared.ports[&8080]),
            ["serverauthorization/web-http"]
        );
    }

    // The same port by number, in another namespace: no effect.
    idx.apply_authorization(
        Key::new("other", "web-http"),
        None,
        &authorization(json!(9000), json!({})),
    );
    assert!(!admin.has_changed().unwrap());

    // The pod's labels change so the selector no longer matches: back to the default.
    idx.apply_pod(&web_pod("web-1", json!({"app": "web-v2"}), json!({})));
    assert_eq!(
        rule_names(&http.borrow_and_update()),
        ["default:all-unauthenticated"]
    );

    // A matchExpressions selector, and a declared protocol.
    let mut spec = authorization(
        json!(9000),
        json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web-v2"]}]}),
    );
    spec.server.protocol = Some(weft_api::server_authorization::ServerProtocol::Grpc);
    idx.apply_authorization(Key::new("shop", "admin"), None, &spec);
    {
        let policy = admin.borrow_and_update();
        assert_eq!(rule_names(&policy), ["serverauthorization/admin"]);
        assert_eq!(policy.protocol, "gRPC");
    }
    idx.delete_authorization(&Key::new("shop", "admin"));
    assert_eq!(
        rule_names(&admin.borrow_and_update()),
        ["default:all-unauthenticated"]
    );
}

#[test]
fn the_default_policy_comes_from_the_pod_or_the_mesh_and_opaque_ports_are_opaque() {
    let mut idx = index();
    let web = Key::new("shop", "web-1");
    idx.apply_pod(&web_pod("web-1", json!({}), json!({})));
    let mut undeclared = idx.subscribe_policy(&web, 0).unwrap();
    let mut postgres = idx.subscribe_policy(&web, 5432).unwrap();
    assert_eq!(postgres.borrow_and_update().protocol, "detect");

    idx.set_mesh(
        "cluster.local",
        BTreeSet::from([5432]),
        DefaultInboundPolicy::Deny,
    );
    assert!(
        undeclared.borrow_and_update().authorizations.is_empty(),
        "deny"
    );
    assert_eq!(postgres.borrow_and_update().protocol, "opaque");

    idx.apply_pod(&web_pod(
        "web-1",
        json!({}),
        json!({"config.weft.dev/default-inbound-policy": "all-authenticated"}),
    ));
    let policy = undeclared.borrow_and_update().clone();
    assert_eq!(rule_names(&policy), ["default:all-authenticated"]);
    assert_eq!(policy.authorizations[0].identities, ["*"]);
    assert!(!policy.authorizations[0].unauthenticated);
    assert_ne!(policy.version, postgres.borrow().version);
}

#[test]
fn a_pod_knows_its_workload_readiness_and_identity() {
    let mut idx = index();
    let mut pod = web_pod("web-1", json!({}), json!({}));
    pod.status = serde_json::from_value(json!({
        "conditions": [{"type": "Ready", "status": "True"}],
    }))
    .unwrap();
    idx.apply_pod(&pod);
    let key = Key::new("shop", "web-1");
    let info = idx.pod(&key).unwrap();
    assert!(info.ready && info.meshed && !info.terminating);
    assert_eq!(info.workload.as_ref().unwrap().label(), "deployment/web");
    assert_eq!(
        idx.identity_of(&key).as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web")
    );

    // A bare pod is its own workload.
    let mut bare = web_pod("solo", json!({}), json!({}));
    bare.metadata.owner_references = None;
    bare.metadata.uid = Some("pod-uid".into());
    idx.apply_pod(&bare);
    let workload = idx.pod(&Key::new("shop", "solo")).unwrap().workload.clone();
    assert_eq!(
        workload,
        Some(Workload {
            kind: "Pod".into(),
            name: "solo".into(),
            uid: Some("pod-uid".into())
        })
    );
    assert!(!idx.pods_synced());
    idx.replace_pods(&[pod]);
    assert!(idx.pods_synced());
    assert!(idx.pod(&Key::new("shop", "solo")).is_none());
}

#[test]
fn a_service_selector_change_moves_its_endpoints_to_the_newly_selected_pods() {
    let mut idx = index();
    idx.apply_service(&service("shop", "web", "198.19.0.12", &[(80, "http")]));
    idx.apply_pod(&pod("shop", "web-1", "web", true));
    idx.apply_pod(&pod("shop", "api-1", "api", true));
    idx.apply_slice(&slice(
        "shop",
        "web-abc",
        "web",
        ("http", 8080),
        &[("198.18.0.5", None, "web-1")],
    ));
    let mut rx = idx.subscribe(&web_target());
    assert_eq!(addrs(&rx.borrow_and_update()), ["198.18.0.5:8080"]);

    // The selector now picks `api` pods: the EndpointSlice controller rewrites the
    // slice, and subscribers follow, identities included.
    idx.apply_slice(&slice(
        "shop",
        "web-abc",
        "web",
        ("http", 8080),
        &[("198.18.0.9", None, "api-1")],
    ));
    let r = rx.borrow_and_update();
    assert_eq!(addrs(&r), ["198.18.0.9:8080"]);
    assert_eq!(
        r.endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/api")
    );
}

fn profile(value: serde_json::Value) -> ServiceProfileSpec {
    serde_json::from_value(value).unwrap()
}

#[test]
fn a_service_profile_appearing_after_a_proxy_subscribed_reaches_it() {
    let mut idx = web_index(&[("198.18.0.5", "web-1"), ("198.18.0.6", "web-2")]);
    let mut rx = idx.subscribe(&web_target());
    assert_eq!(rx.borrow_and_update().profile, None);
    let before = rx.borrow().version.clone();

    idx.apply_profile(
        Key::new("shop", "web"),
        Some(1),
        &profile(json!({
            "service": "web",
            "routes": [{"name": "GET /books", "condition": {"method": "GET", "pathRegex": "/books"},
                        "timeout": "250ms", "retryable": true}],
        })),
    );
    assert!(
        rx.has_changed().unwrap(),
        "the profile reaches the subscriber"
    );
    {
        let resolution = rx.borrow_and_update();
        let routes = &resolution.profile.as_ref().expect("a profile").routes;
        assert_eq!(routes.len(), 1);
        assert_eq!(
            (routes[0].name.as_str(), routes[0].timeout_ms),
            ("GET /books", Some(250))
        );
        assert_ne!(resolution.version, before, "a new version");
        assert_eq!(addrs(&resolution), ["198.18.0.5:8080", "198.18.0.6:8080"]);
    }

    // A second profile for the same Service, later by name, changes nothing; the
    // same resource seen again (a resync) wakes nobody.
    idx.apply_profile(
        Key::new("shop", "web-other"),
        Some(1),
        &profile(json!({"service": "web"})),
    );
    idx.apply_profile(
        Key::new("shop", "web"),
        Some(1),
        &profile(json!({
            "service": "web",
            "routes": [{"name": "GET /books", "condition": {"method": "GET", "pathRegex": "/books"},
                        "timeout": "250ms", "retryable": true}],
        })),
    );
    assert!(!rx.has_changed().unwrap());

    // Deleted: the other profile takes over.
    idx.delete_profile(&Key::new("shop", "web"));
    assert_eq!(
        rx.borrow_and_update()
            .profile
            .as_ref()
            .map(|p| p.name.as_str()),
        Some("web-other")
    );
    idx.delete_profile(&Key::new("shop", "web-other"));
    assert_eq!(rx.borrow_and_update().profile, None);
}

#[test]
fn a_traffic_split_shares_the_traffic_by_weight_and_follows_its_backends() {
    let mut idx = index();
    idx.apply_service(&service("shop", "web", "198.19.0.12", &[(80, "http")]));
    idx.apply_service(&service(
        "shop",
        "web-canary",
        "198.19.0.13",
        &[(80, "http")],
    ));
    idx.apply_slice(&slice(
        "shop",
        "web-abc",
        "web",
        ("http", 8080),
        &[("198.18.0.5", None, "web-1"), ("198.18.0.6", None, "web-2")],
    ));
    let mut rx = idx.subscribe(&web_target());
    idx.apply_profile(
        Key::new("shop", "web"),
        None,
        &profile(json!({
            "service": "web",
            "trafficSplit": [{"service": "web", "weight": 90}, {"service": "web-canary", "weight": 10}],
        })),
    );
    // The canary has no endpoints yet: the Service's own take everything.
    assert_eq!(
        addrs(&rx.borrow_and_update()),
        ["198.18.0.5:8080", "198.18.0.6:8080"]
    );

    // The canary's endpoints appear: the subscriber of `web` hears of it.
    idx.apply_slice(&slice(
        "shop",
        "web-canary-abc",
        "web-canary",
        ("http", 8080),
        &[("198.18.0.9", None, "web-canary-1")],
    ));
    assert!(rx.has_changed().unwrap());
    let resolution = rx.borrow_and_update().clone();
    let weights: Vec<(String, u32)> = resolution
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("198.18.0.5:8080".to_string(), 450_000),
            ("198.18.0.6:8080".to_string(), 450_000),
            ("198.18.0.9:8080".to_string(), 100_000),
        ],
        "90:10 between the backends, spread evenly inside each"
    );
    assert_eq!(resolution.service, Some(Key::new("shop", "web")));
}

#[test]
fn a_pod_is_meshed_by_what_the_injector_gave_it_not_by_what_it_says() {
    let mut idx = index();
    let ip = |p: &mut Pod, ip: &str| {
        p.status = Some(serde_json::from_value(json!({"podIPs": [{"ip": ip}]})).unwrap());
    };
    let mut real = pod("shop", "real", "web", true);
    ip(&mut real, "198.18.0.20");
    // Claims: the label, or a container of its own named like the proxy.
    let mut labelled = pod("shop", "labelled", "web", false);
    labelled
        .metadata
        .labels
        .get_or_insert_default()
        .insert("weft.dev/injected".into(), "true".into());
    ip(&mut labelled, "198.18.0.21");
    let mut named = pod("shop", "named", "web", false);
    named.spec.as_mut().unwrap().containers = vec![
        serde_json::from_value(json!({"name": "weft-proxy", "image": "evil", "env": [
            {"name": "WEFT_PROXY_IDENTITY", "value": "spiffe://cluster.local/ns/shop/sa/web"},
        ]}))
        .unwrap(),
    ];
    ip(&mut named, "198.18.0.22");
    // Injected, but the pod has an IPv6 address the capture rules do not cover.
    let mut dual = pod("shop", "dual", "web", true);
    dual.status = Some(
        serde_json::from_value(json!({"podIPs": [{"ip": "198.18.0.23"}, {"ip": "fd00::23"}]}))
            .unwrap(),
    );
    // Skipped by the injector, which said why.
    let mut skipped = pod("shop", "skipped", "web", false);
    skipped.metadata.annotations = Some(
        [
            ("weft.dev/not-meshed".to_string(), "ProxyUid".to_string()),
            (
                "weft.dev/not-meshed-message".to_string(),
                "app runs as 2102".to_string(),
            ),
        ]
        .into(),
    );
    for p in [&real, &labelled, &named, &dual, &skipped] {
        idx.apply_pod(p);
    }
    let info = |name: &str| idx.pod(&Key::new("shop", name)).unwrap().clone();
    assert!(info("real").meshed && info("real").not_meshed.is_none());
    for (name, reason) in [
        ("labelled", "NotInjected"),
        ("named", "NotInjected"),
        ("dual", "IPv6"),
        ("skipped", "ProxyUid"),
    ] {
        let info = info(name);
        assert!(!info.meshed, "{name} is not meshed");
        assert_eq!(info.not_meshed.as_ref().unwrap().reason, reason, "{name}");
    }
    assert!(
        info("labelled")
            .not_meshed
            .unwrap()
            .message
            .contains("no weft-proxy")
    );
    assert!(
        info("named")
            .not_meshed
            .unwrap()
            .message
            .contains("no weft-init")
    );
    assert_eq!(
        info("skipped").not_meshed.unwrap().message,
        "app runs as 2102"
    );

    // Only the real one is handed out with an identity.
    for (address, identity) in [
        ("198.18.0.20", Some("spiffe://cluster.local/ns/shop/sa/web")),
        ("198.18.0.21", None),
        ("198.18.0.22", None),
    ] {
        let target = parse_authority(&format!("{address}:8080"), "cluster.local").unwrap();
        let rx = idx.subscribe(&target);
        let resolution = rx.borrow();
        assert_eq!(
            resolution.endpoints[0].identity.as_deref(),
            identity,
            "{address}"
        );
    }
    assert_eq!(
        idx.namespaces_with_meshed_pods().len(),
        1,
        "the real pod's namespace"
    );
}

#[test]
fn port_0_carries_the_policy_of_every_port_a_server_authorization_selects() {
    let mut idx = index();
    let web = Key::new("shop", "web-1");
    idx.apply_pod(&web_pod("web-1", json!({}), json!({})));
    let mut undeclared = idx.subscribe_policy(&web, 0).unwrap();
    let before = undeclared.borrow_and_update().version.clone();
    assert!(undeclared.borrow().ports.is_empty());

    // A port the pod does not declare, by number.
    idx.apply_authorization(
        Key::new("shop", "metrics"),
        None,
        &authorization(json!(9100), json!({"matchLabels": {"app": "web"}})),
    );
    {
        let policy = undeclared.borrow_and_update();
        assert_eq!(rule_names(&policy), ["default:all-unauthenticated"]);
        let selected: Vec<u16> = policy.ports.keys().copied().collect();
        assert_eq!(selected, [9100]);
        let metrics = &policy.ports[&9100];
        assert_eq!(rule_names(metrics), ["serverauthorization/metrics"]);
        assert_eq!(
            metrics.authorizations[0].identities,
            ["spiffe://cluster.local/ns/shop/sa/checkout"]
        );
        assert_ne!(
            policy.version, before,
            "a new version for the proxy to apply"
        );
    }
    // Another pod's, or another namespace's: not this pod's port.
    idx.apply_authorization(
        Key::new("shop", "other"),
        None,
        &authorization(json!(9200), json!({"matchLabels": {"app": "books"}})),
    );
    idx.apply_authorization(
        Key::new("other", "metrics"),
        None,
        &authorization(json!(9300), json!({})),
    );
    let selected: Vec<u16> = undeclared
        .borrow_and_update()
        .ports
        .keys()
        .copied()
        .collect();
    assert_eq!(selected, [9100]);
    // Gone: the port takes the default again.
    idx.delete_authorization(&Key::new("shop", "metrics"));
    let policy = undeclared.borrow_and_update();
    assert!(policy.ports.is_empty());
    assert_eq!(policy.version, before);
}
