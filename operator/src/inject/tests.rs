use super::{resources::is_quantity, *};

fn settings() -> Settings {
    Settings {
        proxy_image: "weft.local/weft-proxy:dev".into(),
        control_addr: "weft-proxy-api.weft-system.svc.cluster.local:8090".into(),
        operator_namespace: "weft-system".into(),
        native_sidecars_supported: true,
    }
}

fn mesh(spec: Value) -> MeshSpec {
    serde_json::from_value(spec).unwrap()
}

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

fn app() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "books-7d9c-", "labels": {"app": "books"}},
        "spec": {
            "serviceAccountName": "books",
            "containers": [{"name": "app", "image": "books:1", "ports": [{"containerPort": 8080}]}],
        },
    })
}

fn enabled() -> BTreeMap<String, String> {
    BTreeMap::from([(INJECT.to_string(), "enabled".to_string())])
}

fn with_annotations(mut pod: Value, annotations: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    pod["metadata"]["annotations"] = Value::Object(map);
    pod
}

/// Decides for `pod` in namespace `shop` and applies the patch, like the API server.
fn injected(pod_json: Value, ns: &BTreeMap<String, String>, mesh: &MeshSpec) -> Value {
    let decision = decide(&pod(pod_json.clone()), "shop", ns, mesh, &settings());
    let Decision::Inject { patch, .. } = decision else {
        panic!("expected an injection, got {decision:?}");
    };
    let mut doc = pod_json;
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

fn env(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn a_pod_in_an_enabled_namespace_gets_a_native_sidecar_and_the_capture_init_container() {
    let doc = injected(app(), &enabled(), &mesh(json!({})));
    let spec = &doc["spec"];
    assert_eq!(names(&spec["initContainers"]), ["weft-init", "weft-proxy"]);
    assert_eq!(names(&spec["containers"]), ["app"]);

    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 4191);
    assert_eq!(proxy["image"], "weft.local/weft-proxy:dev");
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        proxy["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        env(proxy, "WEFT_PROXY_IDENTITY").as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/books")
    );
    assert_eq!(
        env(proxy, "WEFT_PROXY_CONTROL_ADDR").as_deref(),
        Some("weft-proxy-api.weft-system.svc.cluster.local:8090")
    );
    assert_eq!(
        env(proxy, "WEFT_PROXY_INBOUND_OPAQUE_PORTS").as_deref(),
        Some("25,587,3306,4444,5432,6379,9300,11211")
    );
    let mounts: Vec<&str> = proxy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts,
        [
            "/var/run/secrets/weft.dev/identity",
            "/var/run/weft.dev/trust"
        ]
    );

    let init = &spec["initContainers"][0];
    assert_eq!(init["args"], json!(["init"]));
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert_eq!(
        init["securityContext"]["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]})
    );
    assert_eq!(init["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(init.get("restartPolicy").is_none());

    let volumes = &spec["volumes"];
    assert_eq!(names(volumes), ["weft-identity-token", "weft-trust-bundle"]);
    let token = &volumes[0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "weft.dev/identity");
    assert_eq!(volumes[1]["configMap"]["name"], "weft-trust-bundle");

    assert_eq!(doc["metadata"]["labels"]["weft.dev/injected"], "true");
    assert_eq!(doc["metadata"]["labels"]["app"], "books");
    let version = doc["metadata"]["annotations"]["weft.dev/config-version"]
        .as_str()
        .unwrap();
    assert_eq!(version.len(), 12);

    // The result is a valid Pod.
    let _: Pod = serde_json::from_value(doc).unwrap();
}

#[test]
fn the_patch_adds_and_never_rewrites_what_the_user_wrote() {
    let mut user = app();
    user["spec"]["initContainers"] = json!([{"name": "migrate", "image": "books:1"}]);
    user["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    user = with_annotations(user, &[("team", "books")]);
    let decision = decide(
        &pod(user.clone()),
        "shop",
        &enabled(),
        &mesh(json!({})),
        &settings(),
    );
    let Decision::Inject { patch, .. } = decision else {
        panic!("{decision:?}")
    };
    for op in &patch.0 {
        assert!(
            matches!(op, json_patch::PatchOperation::Add(_)),
            "only adds: {op:?}"
        );
    }
    let mut doc = user.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    let spec = &doc["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["weft-init", "weft-proxy", "migrate"]
    );
    assert_eq!(
        names(&spec["volumes"]),
        ["data", "weft-identity-token", "weft-trust-bundle"]
    );
    assert_eq!(doc["metadata"]["annotations"]["team"], "books");
    assert!(
        doc["metadata"]["annotations"]
            .get("weft.dev/config-version")
            .is_some()
    );
}

#[test]
fn injecting_an_injected_pod_changes_nothing() {
    let m = mesh(json!({}));
    let once = injected(app(), &enabled(), &m);
    assert_eq!(
        decide(&pod(once), "shop", &enabled(), &m, &settings()),
        Decision::AlreadyInjected
    );
}

#[test]
fn the_pod_annotation_wins_over_the_namespace() {
    let m = mesh(json!({}));
    let disabled = with_annotations(app(), &[(INJECT, "disabled")]);
    assert!(matches!(
        decide(&pod(disabled.clone()), "shop", &enabled(), &m, &settings()),
        Decision::Skip {
            reason: SkipReason::Disabled,
            ..
        }
    ));
    // Disabled in a namespace that never asked: nothing to report.
    assert_eq!(
        decide(&pod(disabled), "shop", &BTreeMap::new(), &m, &settings()),
        Decision::NotRequested
    );
    // Enabled on the pod alone is enough.
    let alone = with_annotations(app(), &[(INJECT, "enabled")]);
    let doc = injected(alone, &BTreeMap::new(), &m);
    assert_eq!(names(&doc["spec"]["initContainers"]).len(), 2);
    // Neither asks.
    assert_eq!(
        decide(&pod(app()), "shop", &BTreeMap::new(), &m, &settings()),
        Decision::NotRequested
    );
    let ns_disabled = BTreeMap::from([(INJECT.to_string(), "disabled".to_string())]);
    assert_eq!(
        decide(&pod(app()), "shop", &ns_disabled, &m, &settings()),
        Decision::NotRequested
    );
}

#[test]
fn system_and_excluded_namespaces_are_never_injected() {
    let m = mesh(json!({"injection": {"excludedNamespaces": ["monitoring"]}}));
    let asked = with_annotations(app(), &[(INJECT, "enabled")]);
    for ns in ["kube-system", "weft-system", "monitoring"] {
        let decision = decide(&pod(asked.clone()), ns, &enabled(), &m, &settings());
        assert!(
            matches!(
                decision,
                Decision::Skip {
                    reason: SkipReason::ExcludedNamespace,
                    ..
                }
            ),
            "{ns}: {decision:?}"
        );
    }
}

#[test]
fn host_network_pods_are_left_alone_with_the_reason() {
    let mut host = app();
    host["spec"]["hostNetwork"] = json!(true);
    let decision = decide(
        &pod(host),
        "shop",
        &enabled(),
        &mesh(json!({})),
        &settings(),
    );
    let Decision::Skip { reason, message } = decision else {
        panic!("{decision:?}")
    };
    assert_eq!(reason, SkipReason::HostNetwork);
    assert!(message.contains("hostNetwork"), "{message}");
}

#[test]
fn pods_running_as_the_proxy_user_are_left_alone_with_the_reason() {
    let skipped = |pod_json: Value, mesh_spec: Value| match decide(
        &pod(pod_json),
        "shop",
        &enabled(),
        &mesh(mesh_spec),
        &settings(),
    ) {
        Decision::Skip { reason, message } => Some((reason, message)),
        _ => None,
    };
    let mut by_container = app();
    by_container["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 2102});
    let (reason, message) = skipped(by_container.clone(), json!({})).expect("skipped");
    assert_eq!(reason, SkipReason::ProxyUid);
    assert!(
        message.contains("container app runs as user 2102"),
        "{message}"
    );

    let mut by_pod = app();
    by_pod["spec"]["securityContext"] = json!({"runAsUser": 2102});
    assert!(skipped(by_pod.clone(), json!({})).is_some());
    // A container's own user wins over the pod's.
    by_pod["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 1000});
    assert!(skipped(by_pod, json!({})).is_none());

    // The proxy's user is the Mesh's.
    assert!(skipped(by_container.clone(), json!({"proxy": {"uid": 3000}})).is_none());
    by_container["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 3000});
    assert!(skipped(by_container, json!({"proxy": {"uid": 3000}})).is_some());
}

#[test]
fn a_classic_sidecar_goes_first_and_holds_the_app_until_ready() {
    for (spec, supported) in [
        (json!({"proxy": {"nativeSidecar": false}}), true),
        (json!({}), false),
    ] {
        let mut s = settings();
        s.native_sidecars_supported = supported;
        let m = mesh(spec);
        let decision = decide(&pod(app()), "shop", &enabled(), &m, &s);
        let Decision::Inject {
            patch,
            native_sidecar,
            ..
        } = decision
        else {
            panic!("{decision:?}")
        };
        assert!(!native_sidecar);
        let mut doc = app();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(names(&doc["spec"]["initContainers"]), ["weft-init"]);
        assert_eq!(names(&doc["spec"]["containers"]), ["weft-proxy", "app"]);
        let proxy = &doc["spec"]["containers"][0];
        assert!(proxy.get("restartPolicy").is_none());
        assert_eq!(
            proxy["lifecycle"]["postStart"]["exec"]["command"],
            json!(["/usr/local/bin/weft-proxy", "await-ready"])
        );
        assert_eq!(
            doc["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
            "app"
        );
    }
}

#[test]
fn annotations_add_to_the_mesh_defaults() {
    let m = mesh(json!({
        "proxy": {"logLevel": "info", "resources": {"requests": {"cpu": "10m"}}},
        "injection": {"skipInboundPorts": [9000], "skipOutboundSubnets": ["10.1.0.0/16"]},
        "defaultInboundPolicy": "all-authenticated",
    }));
    let annotated = with_annotations(
        app(),
        &[
            (annotations::SKIP_INBOUND_PORTS, "8081, 8082"),
            (annotations::SKIP_OUTBOUND_PORTS, "5432"),
            (annotations::SKIP_OUTBOUND_SUBNETS, "10.2.0.0/16"),
            (annotations::OPAQUE_PORTS, "7000"),
            (annotations::DEFAULT_INBOUND_POLICY, "deny"),
            (annotations::LOG_LEVEL, "debug"),
            (annotations::PROXY_MEMORY_LIMIT, "128Mi"),
        ],
    );
    let doc = injected(annotated, &enabled(), &m);
    let proxy = &doc["spec"]["initContainers"][1];
    let init = &doc["spec"]["initContainers"][0];
    for container in [proxy, init] {
        assert_eq!(
            env(container, "WEFT_PROXY_SKIP_INBOUND_PORTS").as_deref(),
            Some("9000,8081, 8082")
        );
        assert_eq!(
            env(container, "WEFT_PROXY_SKIP_OUTBOUND_PORTS").as_deref(),
            Some("5432")
        );
        assert_eq!(
            env(container, "WEFT_PROXY_SKIP_OUTBOUND_SUBNETS").as_deref(),
            Some("10.1.0.0/16,10.2.0.0/16")
        );
    }
    assert!(
        env(proxy, "WEFT_PROXY_INBOUND_OPAQUE_PORTS")
            .unwrap()
            .ends_with(",11211,7000")
    );
    assert_eq!(
        env(proxy, "WEFT_PROXY_DEFAULT_INBOUND_POLICY").as_deref(),
        Some("deny")
    );
    assert_eq!(env(proxy, "WEFT_PROXY_LOG").as_deref(), Some("debug"));
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "10m"}, "limits": {"memory": "128Mi"}})
    );
}

#[test]
fn a_bad_annotation_leaves_the_pod_alone_and_names_the_annotation() {
    let m = mesh(json!({}));
    for (annotation, value) in [
        (annotations::SKIP_INBOUND_PORTS, "abc"),
        (annotations::SKIP_INBOUND_PORTS, "-1"),
        (annotations::SKIP_OUTBOUND_PORTS, "80,,443"),
        (annotations::OPAQUE_PORTS, "99999"),
        (annotations::SKIP_OUTBOUND_SUBNETS, "10.0.0.0/33"),
        (annotations::DEFAULT_INBOUND_POLICY, "maybe"),
        (annotations::PROXY_CPU_REQUEST, "lots"),
        (annotations::PROXY_MEMORY_LIMIT, "-64Mi"),
        (INJECT, "yes"),
    ] {
        let bad = with_annotations(app(), &[(INJECT, "enabled"), (annotation, value)]);
        let decision = decide(&pod(bad), "shop", &enabled(), &m, &settings());
        let Decision::Skip { reason, message } = decision else {
            panic!("{annotation}={value}: {decision:?}")
        };
        assert_eq!(
            reason,
            SkipReason::InvalidAnnotation,
            "{annotation}={value}"
        );
        assert!(message.contains(annotation), "{annotation}: {message}");
        assert!(message.contains(value), "{value}: {message}");
    }
}

#[test]
fn quantities() {
    for good in ["1", "100m", "0.5", "64Mi", "1G", "2E", "1.5Gi"] {
        assert!(is_quantity(good), "{good}");
    }
    for bad in ["", "m", "-1", "1.", ".5", "1e3", "lots", "64 Mi", "1Z"] {
        assert!(!is_quantity(bad), "{bad}");
    }
}

#[test]
fn the_config_version_follows_the_mesh() {
    let a = injected(app(), &enabled(), &mesh(json!({})));
    let b = injected(app(), &enabled(), &mesh(json!({})));
    let c = injected(
        app(),
        &enabled(),
        &mesh(json!({"proxy": {"logLevel": "debug"}})),
    );
    let version = |doc: &Value| doc["metadata"]["annotations"]["weft.dev/config-version"].clone();
    assert_eq!(version(&a), version(&b));
    assert_ne!(version(&a), version(&c));
}

#[test]
fn what_the_injector_gives_is_meshed_and_look_alikes_are_not() {
    for native in [true, false] {
        let m = mesh(json!({"proxy": {"nativeSidecar": native}}));
        let doc = injected(app(), &enabled(), &m);
        assert_eq!(super::injected(&pod(doc.clone()), "shop"), Ok(()));

        // Its identity belongs to its own namespace and ServiceAccount.
        let why = super::injected(&pod(doc.clone()), "other").unwrap_err();
        assert!(why.contains("WEFT_PROXY_IDENTITY"), "{why}");
        let mut other_sa = doc.clone();
        other_sa["spec"]["serviceAccountName"] = json!("admin");
        assert!(super::injected(&pod(other_sa), "shop").is_err());

        // An application container running as the proxy's user, added by hand.
        let mut as_proxy = doc.clone();
        let app_index = if native { 0 } else { 1 };
        as_proxy["spec"]["containers"][app_index]["securityContext"] = json!({"runAsUser": 2102});
        let why = super::injected(&pod(as_proxy), "shop").unwrap_err();
        assert!(why.contains("runs as the proxy's user"), "{why}");

        // No capture step.
        let mut no_init = doc.clone();
        no_init["spec"]["initContainers"]
            .as_array_mut()
            .unwrap()
            .retain(|c| c["name"] != "weft-init");
        let why = super::injected(&pod(no_init), "shop").unwrap_err();
        assert!(why.contains("no weft-init"), "{why}");
    }

    // A label, or a container of one's own that is named like the proxy.
    let mut labelled = app();
    labelled["metadata"]["labels"]["weft.dev/injected"] = json!("true");
    assert!(super::injected(&pod(labelled), "shop").is_err());
    let mut named = app();
    named["spec"]["containers"][0]["name"] = json!("weft-proxy");
    let why = super::injected(&pod(named.clone()), "shop").unwrap_err();
    assert!(why.contains("no weft-init"), "{why}");

    // The injector does not take such a pod for an injected one.
    let Decision::Skip { reason, message } = decide(
        &pod(named),
        "shop",
        &enabled(),
        &mesh(json!({})),
        &settings(),
    ) else {
        panic!("a look-alike is skipped")
    };
    assert_eq!(reason, SkipReason::NotInjected);
    assert!(message.contains("own weft-proxy container"), "{message}");
}

#[test]
fn a_skipped_pod_is_annotated_with_why() {
    for pod_json in [app(), with_annotations(app(), &[("a", "b")])] {
        let patch = not_meshed_patch(&pod(pod_json.clone()), SkipReason::HostNetwork, "why");
        let mut doc = pod_json;
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc["metadata"]["annotations"]["weft.dev/not-meshed"],
            "HostNetwork"
        );
        assert_eq!(
            doc["metadata"]["annotations"]["weft.dev/not-meshed-message"],
            "why"
        );
    }
}

#[test]
fn the_audit_default_policy_reaches_the_proxy_as_its_fallback_deny() {
    let doc = injected(
        app(),
        &enabled(),
        &mesh(json!({"defaultInboundPolicy": "audit"})),
    );
    let proxy = &doc["spec"]["initContainers"][1];
    assert_eq!(
        env(proxy, "WEFT_PROXY_DEFAULT_INBOUND_POLICY").as_deref(),
        Some("deny")
    );
    let annotated = with_annotations(app(), &[(annotations::DEFAULT_INBOUND_POLICY, "audit")]);
    let doc = injected(annotated, &enabled(), &mesh(json!({})));
    let proxy = &doc["spec"]["initContainers"][1];
    assert_eq!(
        env(proxy, "WEFT_PROXY_DEFAULT_INBOUND_POLICY").as_deref(),
        Some("deny")
    );
}
