//! A webhook in-process, and a client for it, shared by the integration tests and the
//! benchmark.

use std::{net::SocketAddr, sync::Arc};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    core::PartialObjectMeta,
    runtime::{reflector, watcher},
};
use serde_json::{Value, json};
use weft_api::Mesh;

use crate::{inject::Settings, metrics::Metrics, serving::ServingIdentity};

/// A webhook on a free loopback port, with a fresh authority, the Mesh `default`, the
/// namespace `shop` annotated `weft.dev/inject=enabled`, and `tenant`, annotated too
/// but holding a `weft-trust-bundle` ConfigMap that is not Weft's. It stops when
/// dropped.
#[derive(Debug)]
pub struct TestWebhook {
    pub addr: SocketAddr,
    /// The trust bundle (PEM) that verifies the webhook, as the `caBundle` would.
    pub bundle: String,
    pub metrics: Arc<Metrics>,
    _authority: tokio::sync::watch::Sender<Option<Arc<crate::identity::Authority>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts a [`TestWebhook`].
pub async fn webhook() -> TestWebhook {
    let (anchor, authority) = crate::identity::test_util::authority();
    let (authority_tx, authority_rx) = tokio::sync::watch::channel(Some(authority));

    let (meshes, mut mesh_writer) = reflector::store::<Mesh>();
    let mesh: Mesh = serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "Mesh",
        "metadata": {"name": "default"},
        "spec": {},
    }))
    .expect("a Mesh");
    mesh_writer.apply_watcher_event(&watcher::Event::Apply(mesh));
    let (namespaces, mut ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let shop: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "annotations": {"weft.dev/inject": "enabled"}},
    }))
    .expect("a namespace");
    ns_writer.apply_watcher_event(&watcher::Event::Apply(shop));
    let tenant: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "tenant", "annotations": {"weft.dev/inject": "enabled"}},
    }))
    .expect("a namespace");
    ns_writer.apply_watcher_event(&watcher::Event::Apply(tenant));
    let (bundles, mut bundle_writer) = reflector::store::<ConfigMap>();
    let foreign: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "weft-trust-bundle", "namespace": "tenant"},
        "data": {"ca-bundle.pem": "the tenant's own"},
    }))
    .expect("a ConfigMap");
    bundle_writer.apply_watcher_event(&watcher::Event::Apply(foreign));

    let metrics = Arc::new(Metrics::new());
    let settings = Settings {
        proxy_image: "weft.local/weft-proxy:dev".into(),
        control_addr: "weft-proxy-api.weft-system.svc.cluster.local:8090".into(),
        operator_namespace: "weft-system".into(),
        native_sidecars_supported: true,
    };
    let injector = super::Injector::new(meshes, namespaces, settings, metrics.clone(), None)
        .with_bundles(crate::identity::bundle::Bundles::new(bundles));
    let serving = ServingIdentity {
        namespace: "weft-system".into(),
        service_account: "weft-operator".into(),
        dns_names: vec!["localhost".into()],
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, _) = super::serve(
        "127.0.0.1:0".parse().expect("an address"),
        authority_rx,
        serving,
        injector,
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .expect("the webhook listens");
    TestWebhook {
        addr,
        bundle: anchor.cert_pem().to_string(),
        metrics,
        _authority: authority_tx,
        _stop: stop,
    }
}

/// A realistic Deployment pod: two containers, probes, resources, a volume, owned by a
/// ReplicaSet, as the API server sends it to the webhook.
pub fn deployment_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "books-7d9c5b6f4-",
            "namespace": "shop",
            "labels": {"app": "books", "pod-template-hash": "7d9c5b6f4"},
            "annotations": {"prometheus.io/scrape": "true"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "books-7d9c5b6f4",
                "uid": "6f1c2f5e-1a2b-4c3d-8e9f-0a1b2c3d4e5f", "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "serviceAccountName": "books",
            "containers": [
                {
                    "name": "app", "image": "books:1.4.2",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [{"name": "DATABASE_URL", "value": "postgres://db:5432/books"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                    "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                },
                {"name": "metrics", "image": "exporter:2", "ports": [{"containerPort": 9100}]},
            ],
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
        },
    })
}

/// An AdmissionReview v1 asking about `object` (of `kind`) in `namespace`.
pub fn review(kind: &str, namespace: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "dryRun": false,
        },
    })
}

/// An HTTP/1.1 connection to a webhook over TLS, trusting `bundle`.
#[derive(Debug)]
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Client {
    /// Connects, retrying for a moment while the serving certificate is issued.
    pub async fn connect(addr: SocketAddr, bundle: &str) -> Self {
        let tls = tls(addr, bundle).await;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .expect("an HTTP connection");
        tokio::spawn(conn);
        Self { sender, addr }
    }

    /// POSTs `body` to `path`; the status and the body of the answer.
    pub async fn post(&mut self, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let request = http::Request::builder()
            .method("POST")
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a request");
        let response = self.sender.send_request(request).await.expect("a response");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes()
            .to_vec();
        (status, body)
    }
}

/// A TLS connection to a webhook, trusting `bundle`, retrying for a moment while the
/// serving certificate is issued.
pub async fn tls(
    addr: SocketAddr,
    bundle: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for der in crate::identity::ca::pem_blocks(bundle, "CERTIFICATE") {
        roots.add(der.into()).expect("a trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let mut last = String::new();
    for _ in 0..50 {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("the webhook accepts");
        let _ = tcp.set_nodelay(true);
        match connector.connect(name.clone(), tcp).await {
            Ok(tls) => return tls,
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("cannot connect to the webhook: {last}");
}
