//! The Weft operator: the whole control plane in one reconciling process.
//!
//! Domain logic (what a Mesh's status should say, and later certificate signing,
//! policy resolution, the injection patch) is plain Rust tested without a cluster; the
//! Kubernetes watches, controllers and servers are thin layers over it.
//!
//! Threading: one multi-threaded tokio runtime runs the controllers and the admin
//! server; a SIGTERM or SIGINT stops the controllers after their in-flight reconciles
//! and then the admin server.

#![forbid(unsafe_code)]

pub mod admin;
mod config;
pub mod denials;
pub mod discovery;
pub mod identity;
pub mod inject;
pub mod lease;
pub mod mesh;
pub mod metrics;
pub mod proxy_api;
pub mod serving;
pub mod status;
pub mod telemetry;
pub mod webhook;

use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::watch;
use weft_api::Mesh;

pub use self::config::{Args, LogFormat};

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG or run in a pod")?;
    let metrics = Arc::new(metrics::Metrics::new());
    let (ready_tx, ready_rx) = watch::channel(false);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let (mesh_ready_tx, mesh_ready_rx) = watch::channel(false);
    let admin = admin::serve(
        args.admin_addr,
        metrics.clone(),
        ready_rx,
        shutdown_rx.clone(),
    )
    .await?;
    tracing::info!(addr = %args.admin_addr, "admin server listening");

    // Watch caches: the Mesh and every namespace's metadata (the injector, the
    // identity controller), and the discovery index (proxies, the identity controller).
    let (meshes, mesh_writer) = reflector::store::<Mesh>();
    let (namespaces, namespace_writer) = reflector::store();
    tokio::spawn(until(
        wait_for(shutdown_rx.clone()),
        reflector(
            mesh_writer,
            watcher(Api::<Mesh>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .for_each(|_| std::future::ready(())),
    ));
    tokio::spawn(until(
        wait_for(shutdown_rx.clone()),
        reflector(
            namespace_writer,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .for_each(|_| std::future::ready(())),
    ));
    let index = Arc::new(std::sync::Mutex::new(discovery::index::Index::new(
        &args.cluster_domain,
        "cluster.local",
    )));
    tokio::spawn(discovery::watch::run(
        client.clone(),
        index.clone(),
        wait_for(shutdown_rx.clone()),
    ));
    let meshed_namespaces: identity::bundle::MeshedNamespaces = {
        let (namespaces, index) = (namespaces.clone(), index.clone());
        Arc::new(move || {
            let namespaces = namespaces.state();
            let mut meshed: std::collections::BTreeSet<String> = namespaces
                .iter()
                .filter(|ns| {
                    ns.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(weft_api::annotations::INJECT))
                        .is_some_and(|v| v == "enabled")
                })
                .filter_map(|ns| ns.metadata.name.clone())
                .collect();
            if let Ok(index) = index.lock() {
                meshed.extend(index.namespaces_with_meshed_pods());
            }
            for ns in namespaces.iter() {
                if ns.metadata.deletion_timestamp.is_some()
                    && let Some(name) = &ns.metadata.name
                {
                    meshed.remove(name);
                }
            }
            meshed
        })
    };
    // Every replica caches the trust-bundle ConfigMaps (the injector reads them); the
    // Lease holder publishes.
    let (bundle_maps, bundle_writer) = reflector::store::<ConfigMap>();
    tokio::spawn(until(
        wait_for(shutdown_rx.clone()),
        reflector(
            bundle_writer,
            watcher(
                Api::<ConfigMap>::all(client.clone()),
                watcher::Config::default().fields(&format!(
                    "metadata.name={}",
                    identity::bundle::BUNDLE_CONFIG_MAP
                )),
            ),
        )
        .default_backoff()
        .for_each(|_| std::future::ready(())),
    ));
    let bundles = identity::bundle::Bundles::new(bundle_maps);
    // Status that replicas would fight over, and CA generation and rotation, are done
    // by the Lease holder only.
    let (leader_tx, leader_rx) = watch::channel(false);
    let (authority_tx, authority_rx) = watch::channel(None);
    let identity = tokio::spawn(
        identity::controller::IdentityController::new(
            client.clone(),
            &args.namespace,
            std::time::Duration::from_secs(args.bundle_propagation_seconds),
            reporter(&args.pod_name),
            authority_tx,
            leader_rx.clone(),
        )
        .run(wait_for(shutdown_rx.clone())),
    );
    tokio::spawn(identity::bundle::run(
        client.clone(),
        bundles.clone(),
        meshed_namespaces,
        authority_rx.clone(),
        leader_rx.clone(),
        kube::runtime::events::Recorder::new(client.clone(), reporter(&args.pod_name)),
        wait_for(shutdown_rx.clone()),
    ));
    let certify = identity::certify::Certify::with_limits(
        authority_rx.clone(),
        identity::certify::KubeTokenReviewer::new(client.clone()),
        metrics.clone(),
        args.certify_limits(),
    );
    let serving_as = |service: &str| {
        let service = format!("{service}.{}.svc", args.namespace);
        serving::ServingIdentity {
            namespace: args.namespace.clone(),
            service_account: args.service_account.clone(),
            dns_names: vec![
                service.clone(),
                format!("{service}.{}", args.cluster_domain),
            ],
        }
    };
    let proxies = discovery::proxies::Proxies::with_limits(args.stream_limits());
    let destination =
        discovery::server::DestinationService::new(index.clone(), proxies.clone(), metrics.clone());
    let lease = {
        let (client, namespace, shutdown) =
            (client.clone(), args.namespace.clone(), shutdown_rx.clone());
        let identity = if args.pod_name.is_empty() {
            format!("weft-operator-{}", std::process::id())
        } else {
            args.pod_name.clone()
        };
        tokio::spawn(async move {
            lease::run(client, &namespace, &identity, leader_tx, wait_for(shutdown)).await;
        })
    };
    tokio::spawn(status::run(
        client.clone(),
        index.clone(),
        proxies,
        leader_rx,
        wait_for(shutdown_rx.clone()),
    ));
    let proxy_api = proxy_api::serve(
        args.proxy_api_addr,
        authority_rx.clone(),
        serving_as("weft-proxy-api"),
        certify,
        destination,
        wait_for(shutdown_rx.clone()),
    )
    .await
    .with_context(|| format!("cannot listen on {}", args.proxy_api_addr))?;
    tracing::info!(addr = %args.proxy_api_addr, "proxy API listening");

    let settings = inject::Settings {
        proxy_image: args.proxy_image.clone(),
        control_addr: format!(
            "weft-proxy-api.{}.svc.{}:{}",
            args.namespace,
            args.cluster_domain,
            args.proxy_api_addr.port()
        ),
        operator_namespace: args.namespace.clone(),
        native_sidecars_supported: native_sidecars_supported(&client).await,
    };
    let injector = webhook::Injector::new(
        meshes.clone(),
        namespaces.clone(),
        settings,
        metrics.clone(),
        Some((
            client.clone(),
            kube::runtime::events::Recorder::new(client.clone(), reporter(&args.pod_name)),
        )),
    )
    .with_bundles(bundles);
    let (_, webhook) = webhook::serve(
        args.webhook_addr,
        authority_rx.clone(),
        serving_as(webhook::registration::SERVICE),
        injector,
        wait_for(shutdown_rx.clone()),
    )
    .await
    .with_context(|| format!("cannot listen on {}", args.webhook_addr))?;
    tracing::info!(addr = %args.webhook_addr, "injection webhook listening");
    let registration = tokio::spawn(webhook::registration::run(
        client.clone(),
        meshes.clone(),
        authority_rx,
        args.namespace.clone(),
        wait_for(shutdown_rx.clone()),
    ));

    // Ready (and so behind the webhook Service) once the Mesh controller and the
    // injector's caches have synced.
    tokio::spawn(async move {
        let _ = meshes.wait_until_ready().await;
        let _ = namespaces.wait_until_ready().await;
        wait_for(mesh_ready_rx).await;
        let _ = ready_tx.send(true);
    });

    let mesh = tokio::spawn(mesh::controller::run(
        mesh::controller::Context::new(client, metrics, &args.pod_name),
        mesh_ready_tx,
        wait_for(shutdown_rx),
    ));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    mesh.await.context("mesh controller panicked")?;
    identity.await.context("identity controller panicked")?;
    proxy_api.await.context("proxy API panicked")?;
    webhook.await.context("webhook panicked")?;
    registration
        .await
        .context("webhook registration panicked")?;
    admin.await.context("admin server panicked")?;
    lease.await.context("leader election panicked")?;
    Ok(())
}

/// A config version of `bytes`, derived as the proxies derive it
/// ([`weft_proxy_api::ConfigVersion::of`]), in the form it travels in messages.
pub fn short_hash(bytes: &[u8]) -> String {
    weft_proxy_api::ConfigVersion::of(bytes).into()
}

/// The owner that controls an object (a pod's ReplicaSet or Job), if any.
pub fn controller_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// Who the operator's Events come from.
pub fn reporter(pod_name: &str) -> kube::runtime::events::Reporter {
    kube::runtime::events::Reporter {
        controller: "weft-operator".into(),
        instance: (!pod_name.is_empty()).then(|| pod_name.to_string()),
    }
}

/// Whether the API server runs native sidecars (init containers with `restartPolicy:
/// Always`, on by default since Kubernetes 1.29). When the version cannot be read, the
/// answer is yes: every Kubernetes release still supported upstream has them.
async fn native_sidecars_supported(client: &kube::Client) -> bool {
    match client.apiserver_version().await {
        Ok(info) => {
            let minor: u32 = info
                .minor
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap_or(u32::MAX);
            info.major != "1" || minor >= 29
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the API server's version; assuming native sidecars");
            true
        }
    }
}

/// Runs `work` until `shutdown` resolves.
async fn until(shutdown: impl Future<Output = ()>, work: impl Future<Output = ()>) {
    tokio::select! {
        _ = shutdown => {}
        _ = work => {}
    }
}

/// Resolves once `shutdown` turns true.
async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stopping");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
