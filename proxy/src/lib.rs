//! The Weft proxy: a sidecar that captures a pod's traffic, speaks mTLS to other
//! proxies, and is configured only by what it streams from the operator.
//!
//! It keeps its identity (a certificate from the operator), streams its configuration
//! from the operator ([`control`]), forwards the pod's captured TCP connections —
//! balanced over the destination's endpoints, mTLS between meshed pods, inbound
//! policy enforced — and runs its admin server; `/ready` turns true once it holds a
//! valid certificate and the inbound policy of every port. This file only wires the
//! parts together.
//!
//! The rooms, following the data:
//! - [`accept`]: the listeners, and each connection's original destination;
//! - [`outbound`] (4140) and [`inbound`] (4143): each side's pipeline and context;
//! - [`detect`]: what a connection's first bytes are; [`transport`]: TCP and mTLS
//!   connect and accept ([`tls`]: configs and identity checks); [`tcp`]: bytes
//!   relayed and counted;
//! - [`balance`]: endpoint selection; [`http`]: server, client, pool, bodies, and
//!   the inbound HTTP/1 relay with its framing;
//! - [`authz`] and [`profile`]: policy and route logic on the proxy's own types;
//! - [`control`]: the control-plane client ([`identity`], [`discovery`], the denial
//!   report);
//! - [`state`]: what the admin server reads; [`admin`]; [`metrics`];
//! - [`config`], [`telemetry`], [`init`] (the capture rules).
//!
//! Threading: one multi-threaded tokio runtime. SIGTERM or SIGINT starts a graceful
//! shutdown: stop accepting, let in-flight work drain within the grace period, exit.

#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod authz;
pub mod balance;
pub mod config;
pub mod control;
pub mod denials;
pub mod detect;
pub mod http;
pub mod inbound;
pub mod init;
pub mod metrics;
pub mod outbound;
pub mod probe;
pub mod profile;
pub mod state;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod transport;

use std::sync::Arc;

use tokio::sync::watch;

use self::metrics::Direction;

pub use self::{
    config::Config,
    control::{discovery, identity},
};

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on the {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the proxy until SIGTERM or SIGINT, then drains within the grace period.
pub async fn run(config: Config) -> Result<(), Error> {
    let metrics = Arc::new(metrics::Metrics::new());
    let readiness = state::Readiness::default();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (credentials, credentials_rx) = watch::channel(None);
    let tls = tls::Tls::new(credentials_rx.clone());
    let discovery = match (&config.identity, &config.pod_name) {
        (Some(_), Some(pod)) => Some(discovery::Discovery::start(
            discovery::Settings {
                control: config.control_addr.clone(),
                trust_bundle_file: config.trust_bundle_file.clone(),
                pod: pod.clone(),
                inbound_ports: config.inbound_ports.clone(),
                idle: config.outbound_idle_timeout,
                max_resolutions: 256,
                readiness: readiness.clone(),
            },
            credentials_rx,
        )),
        _ => {
            tracing::warn!(
                "WEFT_PROXY_IDENTITY or WEFT_PROXY_POD_NAME is not set: nothing is streamed from the operator"
            );
            None
        }
    };
    if let (Some(discovery), Some(pod)) = (&discovery, &config.pod_name) {
        let denials = metrics.denials().clone();
        tokio::spawn(control::report::run(
            discovery.clone(),
            pod.clone(),
            denials,
        ));
    }
    if let Some(identity) = config.identity.clone() {
        let settings = identity::Settings {
            identity,
            token_file: config.identity_token_file.clone(),
            trust_bundle_file: config.trust_bundle_file.clone(),
            control: config.control_addr.clone(),
        };
        tokio::spawn(identity::run(
            settings,
            readiness.clone(),
            metrics.clone(),
            credentials,
        ));
    } else {
        tracing::warn!("WEFT_PROXY_IDENTITY is not set: no certificate, never ready");
    }
    let bind_error = |what, addr| move |source| Error::Bind { what, addr, source };
    let mut forwarders = Vec::new();
    for (direction, addr, what) in [
        (Direction::Inbound, config.inbound_addr, "inbound"),
        (Direction::Outbound, config.outbound_addr, "outbound"),
    ] {
        let forwarder = accept::Forwarder::bind(direction, addr)
            .await
            .map_err(bind_error(what, addr))?
            .with_discovery(discovery.clone())
            .with_tls(tls.clone())
            .with_resolve_timeout(config.resolve_timeout)
            .with_inbound_settings(inbound::InboundSettings {
                detect_timeout: config.detect_timeout,
                opaque_ports: config.inbound_opaque_ports.clone(),
                to_loopback: config.inbound_to_loopback,
                ..inbound::InboundSettings::default()
            });
        tracing::info!(%addr, "{what} listener ready");
        forwarders.push(forwarder.spawn(metrics.clone(), shutdown_rx.clone()));
    }
    let state = state::State {
        readiness,
        config: discovery.as_ref().map(discovery::Discovery::applied),
        probes: probe::Prober::new(config.probes.clone(), config.pod_ip),
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let admin = admin::serve(config.admin_addr, metrics, state, stop.clone(), shutdown_rx)
        .await
        .map_err(bind_error("admin", config.admin_addr))?;
    tracing::info!(addr = %config.admin_addr, "admin server listening");

    tokio::select! {
        () = shutdown_signal() => {}
        () = stop.notified() => {}
    }
    tracing::info!(grace_period = ?config.shutdown_grace_period, "shutting down");
    let _ = shutdown_tx.send(true);
    let drained = async {
        for forwarder in forwarders {
            let _ = forwarder.await;
        }
        let _ = admin.await;
    };
    if tokio::time::timeout(config.shutdown_grace_period, drained)
        .await
        .is_err()
    {
        tracing::warn!("grace period over; exiting with connections still open");
    }
    Ok(())
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
