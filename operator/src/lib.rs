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
pub mod identity;
pub mod inject;
pub mod mesh;
pub mod metrics;
pub mod proxy_api;
pub mod telemetry;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

pub use self::config::{Args, LogFormat};

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG or run in a pod")?;
    let metrics = Arc::new(metrics::Metrics::new());
    let (ready_tx, ready_rx) = watch::channel(false);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let admin = admin::serve(
        args.admin_addr,
        metrics.clone(),
        ready_rx,
        shutdown_rx.clone(),
    )
    .await?;
    tracing::info!(addr = %args.admin_addr, "admin server listening");

    let (authority_tx, authority_rx) = watch::channel(None);
    let identity = tokio::spawn(
        identity::controller::IdentityController::new(
            client.clone(),
            &args.namespace,
            std::time::Duration::from_secs(args.bundle_propagation_seconds),
            reporter(&args.pod_name),
            authority_tx,
        )
        .run(wait_for(shutdown_rx.clone())),
    );
    let certify = identity::certify::Certify::new(
        authority_rx.clone(),
        identity::certify::KubeTokenReviewer::new(client.clone()),
        metrics.clone(),
    );
    let service = format!("weft-proxy-api.{}.svc", args.namespace);
    let serving = proxy_api::ServingIdentity {
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
        dns_names: vec![
            service.clone(),
            format!("{service}.{}", args.cluster_domain),
        ],
    };
    let proxy_api = proxy_api::serve(
        args.proxy_api_addr,
        authority_rx,
        serving,
        certify,
        wait_for(shutdown_rx.clone()),
    )
    .await
    .with_context(|| format!("cannot listen on {}", args.proxy_api_addr))?;
    tracing::info!(addr = %args.proxy_api_addr, "proxy API listening");

    let mesh = tokio::spawn(mesh::controller::run(
        mesh::controller::Context::new(client, metrics, &args.pod_name),
        ready_tx,
        wait_for(shutdown_rx),
    ));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    mesh.await.context("mesh controller panicked")?;
    identity.await.context("identity controller panicked")?;
    proxy_api.await.context("proxy API panicked")?;
    admin.await.context("admin server panicked")?;
    Ok(())
}

/// Who the operator's Events come from.
pub fn reporter(pod_name: &str) -> kube::runtime::events::Reporter {
    kube::runtime::events::Reporter {
        controller: "weft-operator".into(),
        instance: (!pod_name.is_empty()).then(|| pod_name.to_string()),
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
