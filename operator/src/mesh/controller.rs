//! The Mesh controller: watches every Mesh and writes its verdict to `status` with
//! server-side apply, plus an Event whenever the verdict changes.

use std::{sync::Arc, time::Instant};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::watch;
use weft_api::Mesh;

use super::{ReadyStatus, is_current, is_transition, judge, ready_status};
use crate::metrics::Metrics;

/// The field manager of the Mesh controller's status writes.
const FIELD_MANAGER: &str = "weft-operator/mesh";
const CONTROLLER: &str = "mesh";
/// How often readiness re-checks whether the Mesh watch has synced.
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// A Mesh is re-checked this often even when nothing changes.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(300);

/// Why a Mesh reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of Mesh {name}: {source}")]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    metrics: Arc<Metrics>,
    recorder: Recorder,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, pod_name: &str) -> Arc<Self> {
        let recorder = Recorder::new(client.clone(), crate::reporter(pod_name));
        Arc::new(Self {
            client,
            metrics,
            recorder,
        })
    }
}

/// Runs the controller until `shutdown` resolves; `ready` turns true once the Mesh
/// watch has synced.
pub async fn run(
    ctx: Arc<Context>,
    ready: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let meshes = Api::<Mesh>::all(ctx.client.clone());
    let controller = Controller::new(meshes, watcher::Config::default());
    let store = controller.store();
    tokio::spawn(async move {
        // The store's readiness is a oneshot that wakes only its most recent waiter, and
        // the controller itself waits on it too: poll again every so often instead of
        // trusting a wake-up.
        loop {
            match tokio::time::timeout(READY_POLL, store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    let _ = ready.send(true);
                    tracing::info!("mesh watch synced");
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
    });
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "mesh reconcile did not complete");
            }
        })
        .await;
}

async fn reconcile(mesh: Arc<Mesh>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = apply_verdict(&mesh, &ctx).await;
    ctx.metrics
        .reconciled(CONTROLLER, result.is_ok(), started.elapsed().as_secs_f64());
    result.map(|()| Action::requeue(RESYNC))
}

async fn apply_verdict(mesh: &Mesh, ctx: &Context) -> Result<(), Error> {
    let name = mesh.name_any();
    let conditions = mesh
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let verdict = judge(&name, &mesh.spec, conditions);
    let desired = ready_status(mesh, &verdict, Timestamp::now());
    if is_current(mesh, &desired) {
        return Ok(());
    }
    let transition = is_transition(mesh, &desired);
    write_status(&ctx.client, &name, &desired)
        .await
        .map_err(|source| Error::WriteStatus {
            name: name.clone(),
            source,
        })?;
    tracing::info!(mesh = %name, ready = verdict.ready, reason = verdict.reason, "mesh status written");
    if transition {
        let event = Event {
            type_: if verdict.ready {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: verdict.reason.to_string(),
            note: Some(verdict.message),
            action: "Reconcile".into(),
            secondary: None,
        };
        // An Event is best effort: the status already says it.
        if let Err(error) = ctx.recorder.publish(&event, &mesh.object_ref(&())).await {
            tracing::warn!(mesh = %name, %error, "could not publish event");
        }
    }
    Ok(())
}

async fn write_status(
    client: &Client,
    name: &str,
    status: &ReadyStatus,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": Mesh::api_version(&()),
        "kind": Mesh::kind(&()),
        "status": {
            "observedGeneration": status.observed_generation,
            "conditions": [status.ready],
        },
    });
    Api::<Mesh>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

fn error_policy(mesh: Arc<Mesh>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(mesh = %mesh.name_any(), %error, "mesh reconcile failed; retrying");
    Action::requeue(std::time::Duration::from_secs(5))
}
