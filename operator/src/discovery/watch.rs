//! Feeds the [`Index`] from the cluster: watches of Services, EndpointSlices, Pods,
//! ServerAuthorizations, ServiceProfiles and the active Mesh, each event applied as it comes and each
//! relist replacing what the index held.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use weft_api::{ACTIVE_MESH_NAME, Mesh, ServerAuthorization, ServiceProfile};

use super::{index::Index, key::Key};

/// How often targets nobody subscribes to any more are dropped.
const SWEEP: Duration = Duration::from_secs(30);

/// Keeps `index` current until `shutdown` resolves.
pub async fn run(client: Client, index: Arc<Mutex<Index>>, shutdown: impl Future<Output = ()>) {
    let config = watcher::Config::default;
    let services = feed(
        watcher(Api::<Service>::all(client.clone()), config()),
        index.clone(),
        Index::apply_service,
        |index, s: &Service| delete(index, s, Index::delete_service),
        Index::replace_services,
    );
    let slices = feed(
        watcher(Api::<EndpointSlice>::all(client.clone()), config()),
        index.clone(),
        Index::apply_slice,
        |index, s: &EndpointSlice| delete(index, s, Index::delete_slice),
        Index::replace_slices,
    );
    let pods = feed(
        watcher(Api::<Pod>::all(client.clone()), config()),
        index.clone(),
        Index::apply_pod,
        |index, p: &Pod| delete(index, p, Index::delete_pod),
        Index::replace_pods,
    );
    let authorizations = feed(
        watcher(Api::<ServerAuthorization>::all(client.clone()), config()),
        index.clone(),
        |index, a: &ServerAuthorization| {
            if let Some(key) = key(a) {
                index.apply_authorization(key, a.metadata.generation, &a.spec);
            }
        },
        |index, a: &ServerAuthorization| delete(index, a, Index::delete_authorization),
        |index, all: &[ServerAuthorization]| {
            index.replace_authorizations(
                all.iter()
                    .filter_map(|a| Some((key(a)?, a.metadata.generation, a.spec.clone())))
                    .collect(),
            );
        },
    );
    let profiles = feed(
        watcher(Api::<ServiceProfile>::all(client.clone()), config()),
        index.clone(),
        |index, p: &ServiceProfile| {
            if let Some(key) = key(p) {
                index.apply_profile(key, p.metadata.generation, &p.spec);
            }
        },
        |index, p: &ServiceProfile| delete(index, p, Index::delete_profile),
        |index, all: &[ServiceProfile]| {
            index.replace_profiles(
                all.iter()
                    .filter_map(|p| Some((key(p)?, p.metadata.generation, p.spec.clone())))
                    .collect(),
            );
        },
    );
    let meshes = feed(
        watcher(
            Api::<Mesh>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={ACTIVE_MESH_NAME}")),
        ),
        index.clone(),
        apply_mesh,
        |_, _| {},
        |index, meshes: &[Mesh]| {
            if let Some(mesh) = meshes.first() {
                apply_mesh(index, mesh);
            }
        },
    );
    let sweep = async {
        loop {
            tokio::time::sleep(SWEEP).await;
            if let Ok(mut index) = index.lock() {
                index.forget_unused();
            }
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = futures::future::join5(
            services,
            slices,
            pods,
            futures::future::join3(authorizations, profiles, meshes),
            sweep,
        ) => {}
    }
}

fn apply_mesh(index: &mut Index, mesh: &Mesh) {
    let opaque: BTreeSet<u16> = mesh.spec.opaque_ports.iter().map(|p| p.get()).collect();
    index.set_mesh(
        &mesh.spec.trust_domain,
        opaque,
        mesh.spec.default_inbound_policy,
    );
}

fn key<K: kube::Resource>(object: &K) -> Option<Key> {
    let meta = object.meta();
    Some(Key::new(meta.namespace.as_deref()?, meta.name.as_deref()?))
}

fn delete<K: kube::Resource>(index: &mut Index, object: &K, by_key: fn(&mut Index, &Key)) {
    if let Some(key) = key(object) {
        by_key(index, &key);
    }
}

/// Applies every event of `events` to `index`.
async fn feed<K: Clone>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    index: Arc<Mutex<Index>>,
    apply: fn(&mut Index, &K),
    delete: impl Fn(&mut Index, &K),
    replace: fn(&mut Index, &[K]),
) {
    let mut events = std::pin::pin!(events.default_backoff());
    let mut relist: Vec<K> = Vec::new();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "discovery watch failed; retrying");
                continue;
            }
        };
        let Ok(mut index) = index.lock() else {
            return;
        };
        match event {
            watcher::Event::Apply(object) => apply(&mut index, &object),
            watcher::Event::Delete(object) => delete(&mut index, &object),
            watcher::Event::Init => relist.clear(),
            watcher::Event::InitApply(object) => relist.push(object),
            watcher::Event::InitDone => replace(&mut index, &std::mem::take(&mut relist)),
        }
    }
}
