//! Serialization round-trips: what a user writes is what comes back, defaults included.

use weft_api::{
    Duration, Mesh, MeshStatus, Port, ServerAuthorization, ServerPort, ServiceProfile,
    mesh::{DefaultInboundPolicy, FailurePolicy, TrustAnchorMode},
};

#[track_caller]
fn round_trip<T>(yaml: &str) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let parsed: T = serde_saphyr::from_str(yaml).expect("example parses");
    let json = serde_json::to_value(&parsed).expect("serializes");
    let again: T = serde_json::from_value(json).expect("deserializes what it serialized");
    assert_eq!(parsed, again);
    parsed
}

#[test]
fn minimal_mesh_gets_every_default() {
    let mesh: Mesh = round_trip(
        "apiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {}\n",
    );
    let spec = &mesh.spec;
    assert_eq!(spec.trust_domain, "cluster.local");
    assert_eq!(spec.identity.trust_anchor.mode, TrustAnchorMode::Generated);
    assert_eq!(
        spec.identity.workload_certificate_lifetime.get(),
        std::time::Duration::from_secs(24 * 3600)
    );
    assert!(spec.identity.automatic_rotation);
    assert_eq!(
        spec.default_inbound_policy,
        DefaultInboundPolicy::AllUnauthenticated
    );
    let opaque: Vec<u16> = spec.opaque_ports.iter().map(|p| p.get()).collect();
    assert_eq!(opaque, [25, 587, 3306, 4444, 5432, 6379, 9300, 11211]);
    assert_eq!(spec.proxy.ports.inbound.get(), 4143);
    assert_eq!(spec.proxy.ports.outbound.get(), 4140);
    assert_eq!(spec.proxy.ports.admin.get(), 4191);
    assert_eq!(spec.webhook.failure_policy, FailurePolicy::Ignore);
    assert_eq!(spec.webhook.timeout_seconds, 10);
}

#[test]
fn examples_mesh_yaml_parses() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/mesh.yaml"
    ))
    .unwrap();
    let mesh: Mesh = round_trip(&text);
    assert_eq!(
        mesh.metadata.name.as_deref(),
        Some(weft_api::ACTIVE_MESH_NAME)
    );
}

#[test]
fn durations_keep_their_text_through_a_round_trip() {
    let mesh: Mesh = round_trip(
        "apiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
         spec: {identity: {issuerLifetime: 1h30m, workloadCertificateLifetime: 10m}}\n",
    );
    let out = serde_json::to_value(&mesh).unwrap();
    assert_eq!(out["spec"]["identity"]["issuerLifetime"], "1h30m");
    assert_eq!(
        mesh.spec.identity.issuer_lifetime,
        "1h30m".parse::<Duration>().unwrap()
    );
}

#[test]
fn a_negative_duration_does_not_deserialize() {
    let err = serde_saphyr::from_str::<Mesh>(
        "apiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {identity: {issuerLifetime: -1h}}\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("negative"), "{err}");
}

#[test]
fn service_profile_round_trips() {
    let sp: ServiceProfile = round_trip(
        r#"
apiVersion: weft.dev/v1alpha1
kind: ServiceProfile
metadata: {name: books, namespace: shop}
spec:
  service: books
  routes:
  - name: GET /books/{id}
    condition: {method: GET, pathRegex: "/books/[^/]+"}
    timeout: 300ms
    retryable: true
    responseClasses:
    - condition: {min: 500, max: 599}
      isFailure: true
  retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
  trafficSplit:
  - {service: books-v2, weight: 10}
"#,
    );
    assert_eq!(
        sp.spec.routes[0]
            .timeout
            .as_ref()
            .map(|t| t.get().as_millis()),
        Some(300)
    );
    assert_eq!(sp.spec.traffic_split[0].weight, 10);
}

#[test]
fn server_authorization_round_trips_ports_by_number_and_name() {
    let by_number: ServerAuthorization = round_trip(
        "apiVersion: weft.dev/v1alpha1\nkind: ServerAuthorization\nmetadata: {name: a, namespace: shop}\n\
         spec: {server: {podSelector: {matchLabels: {app: books}}, port: 8080}, client: {unauthenticated: true}}\n",
    );
    assert_eq!(
        by_number.spec.server.port,
        ServerPort::Number(Port::new(8080).unwrap())
    );
    let by_name: ServerAuthorization = round_trip(
        "apiVersion: weft.dev/v1alpha1\nkind: ServerAuthorization\nmetadata: {name: a, namespace: shop}\n\
         spec: {server: {podSelector: {}, port: http}, client: {meshTLS: {identities: ['*']}}}\n",
    );
    assert_eq!(by_name.spec.server.port, ServerPort::Name("http".into()));
}

#[test]
fn mesh_status_round_trips() {
    let ms: MeshStatus = round_trip(
        r#"
apiVersion: weft.dev/v1alpha1
kind: MeshStatus
metadata: {name: deployment-books, namespace: shop}
spec:
  workload: {apiVersion: apps/v1, kind: Deployment, name: books}
status:
  pods: {total: 3, meshed: 3, ready: 2}
  summary: {meshed: 3/3, ready: 2/3, inSync: 3/3}
  identity: spiffe://cluster.local/ns/shop/sa/books
"#,
    );
    assert_eq!(ms.status.unwrap().pods.ready, 2);
}
