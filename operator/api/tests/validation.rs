//! Schema validation of good and bad objects, as the API server would judge them:
//! the structural schema (types, enums, ranges, patterns) and the CEL rules.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Value, json};
use weft_api::{Mesh, MeshStatus, ServerAuthorization, ServiceProfile};

/// Every complaint the schema of `crd` has about `object`, each naming its field.
fn complaints(crd: &CustomResourceDefinition, object: &Value) -> Vec<String> {
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("every Weft CRD has a schema"),
    )
    .expect("a schema is JSON");
    let structural =
        jsonschema::validator_for(&schema).expect("the CRD schema is a valid JSON schema");
    let mut found: Vec<String> = structural
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if let Err(errors) = kube::core::cel::Validator::new().validate(&schema, object, None) {
        found.extend(
            errors
                .into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    found
}

#[track_caller]
fn assert_valid(crd: &CustomResourceDefinition, object: Value) {
    let found = complaints(crd, &object);
    assert!(
        found.is_empty(),
        "expected {object} to be valid, got {found:#?}"
    );
}

/// `object` is refused, and some complaint names `field`.
#[track_caller]
fn assert_refused(crd: &CustomResourceDefinition, object: Value, field: &str) {
    let found = complaints(crd, &object);
    assert!(
        found.iter().any(|c| c.contains(field)),
        "expected a complaint naming {field:?} about {object}, got {found:#?}"
    );
}

fn mesh(spec: Value) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"}, "spec": spec})
}

#[test]
fn mesh_minimal_and_full_are_valid() {
    let crd = Mesh::crd();
    assert_valid(&crd, mesh(json!({})));
    assert_valid(
        &crd,
        mesh(json!({
            "trustDomain": "prod.example.org",
            "identity": {
                "trustAnchor": {"mode": "External", "secretName": "weft-trust-anchor"},
                "issuerLifetime": "48h",
                "workloadCertificateLifetime": "1h30m",
                "automaticRotation": false,
            },
            "proxy": {
                "image": "weft.local/weft-proxy:dev",
                "logLevel": "info,weft=debug",
                "logFormat": "json",
                "resources": {"requests": {"cpu": "10m", "memory": "20Mi"}, "limits": {"memory": "64Mi"}},
                "ports": {"inbound": 5143, "outbound": 5140, "admin": 5191},
                "uid": 2102,
                "nativeSidecar": false,
            },
            "injection": {
                "excludedNamespaces": ["monitoring"],
                "skipInboundPorts": [22],
                "skipOutboundPorts": [443],
                "skipOutboundSubnets": ["169.254.169.254/32", "fd00::/8"],
            },
            "defaultInboundPolicy": "cluster-authenticated",
            "opaquePorts": [3306, 5432],
            "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 5},
        })),
    );
}

#[test]
fn mesh_refuses_unknown_default_policy() {
    assert_refused(
        &Mesh::crd(),
        mesh(json!({"defaultInboundPolicy": "allow-all"})),
        "defaultInboundPolicy",
    );
}

#[test]
fn mesh_refuses_negative_or_unparsable_lifetimes() {
    let crd = Mesh::crd();
    for bad in ["-5m", "soon", "24", "1d", ""] {
        assert_refused(
            &crd,
            mesh(json!({"identity": {"issuerLifetime": bad}})),
            "issuerLifetime",
        );
        assert_refused(
            &crd,
            mesh(json!({"identity": {"workloadCertificateLifetime": bad}})),
            "workloadCertificateLifetime",
        );
    }
}

#[test]
fn mesh_refuses_lifetimes_in_the_wrong_order() {
    let crd = Mesh::crd();
    assert_refused(
        &crd,
        mesh(json!({"identity": {"issuerLifetime": "2h", "workloadCertificateLifetime": "24h"}})),
        "issuerLifetime",
    );
    assert_refused(
        &crd,
        mesh(json!({"identity": {"trustAnchor": {"lifetime": "24h"}, "issuerLifetime": "48h"}})),
        "trustAnchor.lifetime",
    );
    assert_refused(
        &crd,
        mesh(json!({"identity": {"workloadCertificateLifetime": "30s"}})),
        "workloadCertificateLifetime",
    );
}

#[test]
fn mesh_refuses_a_trust_domain_that_is_not_a_dns_name() {
    let crd = Mesh::crd();
    for bad in [
        "Not A DNS Name",
        "a..b",
        "-leading.dash",
        "under_score.local",
        "",
    ] {
        assert_refused(&crd, mesh(json!({"trustDomain": bad})), "trustDomain");
    }
    assert_refused(
        &crd,
        mesh(json!({"trustDomain": "a".repeat(254)})),
        "trustDomain",
    );
}

#[test]
fn mesh_external_anchor_needs_a_secret_and_generated_has_none() {
    let crd = Mesh::crd();
    assert_refused(
        &crd,
        mesh(json!({"identity": {"trustAnchor": {"mode": "External"}}})),
        "secretName",
    );
    assert_refused(
        &crd,
        mesh(json!({"identity": {"trustAnchor": {"secretName": "x"}}})),
        "secretName",
    );
    assert_refused(
        &crd,
        mesh(json!({"identity": {"trustAnchor": {"mode": "Imported"}}})),
        "mode",
    );
}

#[test]
fn mesh_refuses_bad_ports_and_webhook_settings() {
    let crd = Mesh::crd();
    assert_refused(&crd, mesh(json!({"opaquePorts": [0]})), "opaquePorts");
    assert_refused(&crd, mesh(json!({"opaquePorts": [70000]})), "opaquePorts");
    assert_refused(
        &crd,
        mesh(json!({"proxy": {"ports": {"inbound": 4140}}})),
        "ports",
    );
    assert_refused(&crd, mesh(json!({"proxy": {"uid": 0}})), "uid");
    assert_refused(
        &crd,
        mesh(json!({"proxy": {"logFormat": "xml"}})),
        "logFormat",
    );
    assert_refused(
        &crd,
        mesh(json!({"webhook": {"timeoutSeconds": 0}})),
        "timeoutSeconds",
    );
    assert_refused(
        &crd,
        mesh(json!({"webhook": {"timeoutSeconds": 31}})),
        "timeoutSeconds",
    );
    assert_refused(
        &crd,
        mesh(json!({"webhook": {"failurePolicy": "Maybe"}})),
        "failurePolicy",
    );
    assert_refused(
        &crd,
        mesh(json!({"injection": {"skipOutboundSubnets": ["nope"]}})),
        "skipOutboundSubnets",
    );
}

fn profile(spec: Value) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "ServiceProfile",
           "metadata": {"name": "books", "namespace": "shop"}, "spec": spec})
}

fn route(name: &str) -> Value {
    json!({"name": name, "condition": {"method": "GET", "pathRegex": "/books/[^/]+"}})
}

#[test]
fn service_profile_good_example_is_valid() {
    assert_valid(
        &ServiceProfile::crd(),
        profile(json!({
            "service": "books",
            "routes": [
                {"name": "GET /books/{id}", "condition": {"method": "GET", "pathRegex": "/books/[^/]+"},
                 "timeout": "300ms", "retryable": true,
                 "responseClasses": [{"condition": {"min": 500, "max": 599}, "isFailure": true}]},
                {"name": "any", "condition": {"pathRegex": ".*"}},
            ],
            "retryBudget": {"retryRatio": 0.2, "minRetriesPerSecond": 10, "ttl": "10s"},
            "trafficSplit": [{"service": "books-v1", "weight": 90}, {"service": "books-v2", "weight": 10}],
        })),
    );
}

#[test]
fn service_profile_refuses_bad_routes_and_budgets() {
    let crd = ServiceProfile::crd();
    assert_refused(
        &crd,
        profile(json!({"service": "books", "routes": [route("a"), route("a")]})),
        "routes",
    );
    assert_refused(&crd, profile(json!({"service": "Books_Svc"})), "service");
    assert_refused(
        &crd,
        profile(
            json!({"service": "b", "routes": [{"name": "x", "condition": {"method": "get", "pathRegex": "/"}}]}),
        ),
        "method",
    );
    assert_refused(
        &crd,
        profile(
            json!({"service": "b", "routes": [{"name": "x", "condition": {"pathRegex": "/"},
            "responseClasses": [{"condition": {"min": 599, "max": 500}}]}]}),
        ),
        "responseClasses",
    );
    assert_refused(
        &crd,
        profile(
            json!({"service": "b", "routes": [{"name": "x", "condition": {"pathRegex": "/"}, "timeout": "-1s"}]}),
        ),
        "timeout",
    );
    assert_refused(
        &crd,
        profile(
            json!({"service": "b", "retryBudget": {"retryRatio": 2.0, "minRetriesPerSecond": 1, "ttl": "10s"}}),
        ),
        "retryRatio",
    );
    assert_refused(
        &crd,
        profile(json!({"service": "b", "trafficSplit": [{"service": "b1", "weight": 0}]})),
        "trafficSplit",
    );
}

fn authorization(spec: Value) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "ServerAuthorization",
           "metadata": {"name": "books-web", "namespace": "shop"}, "spec": spec})
}

fn server(port: Value) -> Value {
    json!({"podSelector": {"matchLabels": {"app": "books"}}, "port": port})
}

#[test]
fn server_authorization_good_examples_are_valid() {
    let crd = ServerAuthorization::crd();
    assert_valid(
        &crd,
        authorization(json!({
            "server": {"podSelector": {"matchLabels": {"app": "books"}}, "port": 8080, "protocol": "HTTP/1"},
            "client": {"meshTLS": {"serviceAccounts": [{"name": "web"}, {"name": "admin", "namespace": "ops"}],
                                   "identities": ["spiffe://cluster.local/ns/shop/sa/web"]}},
        })),
    );
    assert_valid(
        &crd,
        authorization(json!({
            "server": server(json!("http")),
            "client": {"unauthenticated": true,
                       "networks": [{"cidr": "198.18.0.0/16", "except": ["198.18.5.0/24"]}, {"cidr": "fd00::/8"}]},
        })),
    );
    assert_valid(
        &crd,
        authorization(
            json!({"server": server(json!(9090)), "client": {"meshTLS": {"identities": ["*"]}}}),
        ),
    );
}

#[test]
fn server_authorization_refuses_bad_clients_and_ports() {
    let crd = ServerAuthorization::crd();
    assert_refused(
        &crd,
        authorization(json!({"server": server(json!(8080)), "client": {}})),
        "client",
    );
    assert_refused(
        &crd,
        authorization(json!({"server": server(json!(8080)), "client": {"meshTLS": {}}})),
        "meshTLS",
    );
    assert_refused(
        &crd,
        authorization(
            json!({"server": server(json!(8080)), "client": {"networks": [{"cidr": "10.0.0.0/33"}]}}),
        ),
        "cidr",
    );
    assert_refused(
        &crd,
        authorization(json!({"server": server(json!(8080)),
            "client": {"networks": [{"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}]}})),
        "except",
    );
    assert_refused(
        &crd,
        authorization(
            json!({"server": server(json!(8080)), "client": {"meshTLS": {"identities": ["bob"]}}}),
        ),
        "identities",
    );
    assert_refused(
        &crd,
        authorization(json!({"server": server(json!(0)), "client": {"unauthenticated": true}})),
        "port",
    );
    assert_refused(
        &crd,
        authorization(
            json!({"server": server(json!("Http_Port")), "client": {"unauthenticated": true}}),
        ),
        "port",
    );
    assert_refused(
        &crd,
        authorization(
            json!({"server": {"podSelector": {}, "port": 80, "protocol": "HTTP/3"},
            "client": {"unauthenticated": true}}),
        ),
        "protocol",
    );
}

#[test]
fn mesh_status_good_example_is_valid() {
    assert_valid(
        &MeshStatus::crd(),
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshStatus",
               "metadata": {"name": "deployment-books", "namespace": "shop"},
               "spec": {"workload": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "books"}},
               "status": {"observedGeneration": 1, "pods": {"total": 3, "meshed": 3, "ready": 3},
                          "summary": {"meshed": "3/3", "ready": "3/3", "inSync": "3/3"},
                          "inboundPorts": [{"port": 8080, "protocol": "HTTP/1", "policy": "default:all-unauthenticated"}]}}),
    );
    assert_refused(
        &MeshStatus::crd(),
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshStatus", "metadata": {"name": "x"},
               "spec": {"workload": {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "books"}}}),
        "kind",
    );
}

/// `object` as the API server stores it: a null in a field that is not nullable takes
/// the field's default, or is dropped when there is none, and every missing field with
/// a default gets it (structural schema defaulting, which runs after an apply's merge).
fn defaulted(crd: &CustomResourceDefinition, mut object: Value) -> Value {
    fn default(value: &mut Value, schema: &Value) {
        match value {
            Value::Object(fields) => {
                let properties = schema["properties"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for (name, property) in &properties {
                    let nullable = property["nullable"] == true;
                    let null = fields.get(name).is_some_and(Value::is_null);
                    match property.get("default") {
                        Some(d) if !fields.contains_key(name) || (null && !nullable) => {
                            fields.insert(name.clone(), d.clone());
                        }
                        None if null && !nullable => {
                            fields.remove(name);
                        }
                        _ => {}
                    }
                }
                for (name, field) in fields.iter_mut() {
                    match properties.get(name) {
                        Some(property) => default(field, property),
                        None => default(field, &schema["additionalProperties"]),
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    default(item, &schema["items"]);
                }
            }
            _ => {}
        }
    }
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("every Weft CRD has a schema"),
    )
    .expect("a schema is JSON");
    default(&mut object, &schema);
    object
}

/// A Mesh applied client-side (`spec: {}`) and then server-side: the merge of the two
/// field managers leaves `spec: null` (an empty map it no longer owns fields of), which
/// the API server must default to an empty spec, and so to every default.
#[test]
fn mesh_whose_spec_an_apply_left_null_is_defaulted_to_an_empty_spec() {
    let crd = Mesh::crd();
    let stored = defaulted(&crd, mesh(Value::Null));
    assert_valid(&crd, stored.clone());
    let applied: Mesh = serde_json::from_value(stored).expect("a Mesh");
    assert_eq!(applied.spec, weft_api::MeshSpec::default());
    // So is a Mesh with no spec at all, and the example's empty one.
    let mut missing = mesh(Value::Null);
    missing.as_object_mut().expect("an object").remove("spec");
    assert_valid(&crd, defaulted(&crd, missing));
    assert_valid(&crd, defaulted(&crd, mesh(json!({}))));
}
