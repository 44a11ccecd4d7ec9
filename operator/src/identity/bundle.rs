//! Trust-bundle publication: the ConfigMap `weft-trust-bundle` (key `ca-bundle.pem`)
//! that proxies mount, in every meshed namespace, kept equal to the current bundle.
//!
//! Each namespace stands alone, so no tenant can stop publication for the others:
//! - A namespace whose write fails (a quota, a terminating namespace, an API error) is
//!   reported — the Mesh's `TrustBundlePublished` condition names it, and a Warning
//!   Event goes to the Mesh — and retried on the next pass; every other namespace is
//!   still published.
//! - A `weft-trust-bundle` ConfigMap that Weft does not own (it lacks the label
//!   `app.kubernetes.io/managed-by: weft-operator`, and was not written by one of the
//!   operator's field managers, as bundles were before the label) is never adopted or
//!   overwritten.
//!   The namespace is reported, and the injector leaves its new pods unmeshed with the
//!   reason `TrustBundleNotWefts`, rather than let them run with roots Weft does not
//!   control. Labelling a ConfigMap as Weft's hands it over: the next pass overwrites
//!   it.
//! - An immutable ConfigMap Weft owns that holds an old bundle is deleted and created
//!   again.
//! - The ConfigMaps are watched (every replica caches them, by name), and the Lease
//!   holder compares what is there with what should be every [`PASS`]: a deleted or
//!   edited bundle, or a namespace deleted and created again under the same name, is
//!   back within seconds.
//!
//! The Mesh's `status.trustBundle` counts the meshed namespaces and those holding the
//! current bundle. Only the Lease holder writes.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{api::core::v1::ConfigMap, jiff::Timestamp};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        events::{Event, EventType, Recorder},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;
use tokio::sync::watch;
use weft_api::{
    ACTIVE_MESH_NAME, Mesh,
    condition::{ConditionStatus, condition},
};

use super::Authority;

/// The ConfigMap holding the trust bundle in meshed namespaces, and its key.
pub const BUNDLE_CONFIG_MAP: &str = "weft-trust-bundle";
pub const BUNDLE_KEY: &str = "ca-bundle.pem";
/// The label that makes a bundle ConfigMap Weft's.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "weft-operator");
/// The Mesh condition that says where the bundle could not be published.
pub const CONDITION: &str = "TrustBundlePublished";
/// The field manager of the bundle ConfigMaps and of the Mesh's bundle status.
const FIELD_MANAGER: &str = "weft-operator/bundle";
/// How often the Lease holder compares the ConfigMaps with the bundle.
pub const PASS: Duration = Duration::from_secs(1);
/// The most namespaces a condition message names.
const NAMED: usize = 10;
/// The most bytes of an error kept in a message.
const ERROR_BYTES: usize = 200;

/// The namespaces the trust bundle must be published in: those annotated
/// `weft.dev/inject=enabled`, and those holding a pod labelled `weft.dev/injected=true`
/// (meshed by its own annotation), except those being deleted. The operator answers
/// from its watch caches.
pub type MeshedNamespaces = Arc<dyn Fn() -> BTreeSet<String> + Send + Sync>;

/// What a namespace holds under the bundle's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Missing,
    Wefts {
        bundle: Option<String>,
        immutable: bool,
    },
    /// A ConfigMap Weft does not own.
    Foreign,
}

impl Found {
    pub fn of(config_map: Option<&ConfigMap>) -> Self {
        let Some(config_map) = config_map else {
            return Self::Missing;
        };
        let labelled = config_map
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY.0))
            .is_some_and(|v| v == MANAGED_BY.1);
        // Bundles published before the label existed were written by the operator's
        // own field managers.
        let written_by_weft = config_map
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|f| {
                f.manager
                    .as_deref()
                    .is_some_and(|m| m.starts_with("weft-operator/"))
            });
        let wefts = labelled || written_by_weft;
        if !wefts {
            return Self::Foreign;
        }
        Self::Wefts {
            bundle: config_map
                .data
                .as_ref()
                .and_then(|d| d.get(BUNDLE_KEY))
                .cloned(),
            immutable: config_map.immutable == Some(true),
        }
    }
}

/// What a pass does in one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    /// Delete the immutable ConfigMap, then create it.
    Replace,
    /// Touch nothing; report the namespace.
    Foreign,
}

/// What each meshed namespace needs for `bundle` to be published in it; those that
/// hold it already are left out.
pub fn plan(
    bundle: &str,
    meshed: &BTreeSet<String>,
    found: impl Fn(&str) -> Found,
) -> BTreeMap<String, Action> {
    meshed
        .iter()
        .filter_map(|ns| {
            let action = match found(ns) {
                Found::Missing => Action::Create,
                Found::Foreign => Action::Foreign,
                Found::Wefts {
                    bundle: Some(b), ..
                } if b == bundle => return None,
                Found::Wefts {
                    immutable: true, ..
                } => Action::Replace,
                Found::Wefts { .. } => Action::Update,
            };
            Some((ns.clone(), action))
        })
        .collect()
}

/// The bundle ConfigMaps every replica caches.
#[derive(Clone)]
pub struct Bundles {
    store: Store<ConfigMap>,
}

impl std::fmt::Debug for Bundles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundles")
            .field("cached", &self.store.state().len())
            .finish()
    }
}

impl Bundles {
    pub fn new(store: Store<ConfigMap>) -> Self {
        Self { store }
    }

    /// What `namespace` holds.
    pub fn found(&self, namespace: &str) -> Found {
        let config_map = self
            .store
            .get(&ObjectRef::new(BUNDLE_CONFIG_MAP).within(namespace));
        Found::of(config_map.as_deref())
    }

    /// Why pods in `namespace` cannot get Weft's bundle, if they cannot: a ConfigMap
    /// of the bundle's name that Weft does not own.
    pub fn blocked(&self, namespace: &str) -> Option<String> {
        (self.found(namespace) == Found::Foreign).then(|| foreign_message(namespace))
    }
}

fn foreign_message(namespace: &str) -> String {
    format!(
        "ConfigMap {namespace}/{BUNDLE_CONFIG_MAP} is not Weft's (no label {}={}); Weft \
         does not overwrite it, so it cannot publish the trust bundle there",
        MANAGED_BY.0, MANAGED_BY.1
    )
}

/// Publishes the bundle while this replica leads, until `shutdown` resolves.
pub async fn run(
    client: Client,
    bundles: Bundles,
    meshed: MeshedNamespaces,
    authority: watch::Receiver<Option<Arc<Authority>>>,
    mut leader: watch::Receiver<bool>,
    recorder: Recorder,
    shutdown: impl Future<Output = ()>,
) {
    let mut publisher = Publisher {
        client,
        bundles,
        recorder,
        problems: BTreeMap::new(),
        status: None,
        since: None,
    };
    let work = async {
        loop {
            if leader.wait_for(|l| *l).await.is_err() {
                return;
            }
            while *leader.borrow() {
                let bundle = authority
                    .borrow()
                    .as_ref()
                    .map(|a| a.bundle_pem().to_string());
                if let Some(bundle) = bundle {
                    publisher.pass(&bundle, &meshed()).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(PASS) => {}
                    _ = leader.changed() => {}
                }
            }
            // The next leader reports afresh.
            publisher.problems.clear();
            publisher.status = None;
            publisher.since = None;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = work => {}
    }
}

struct Publisher {
    client: Client,
    bundles: Bundles,
    recorder: Recorder,
    /// Why each namespace could not be published in, as last reported.
    problems: BTreeMap<String, String>,
    /// The Mesh status last written.
    status: Option<serde_json::Value>,
    /// Whether every namespace had the bundle at the last pass, and since when.
    since: Option<(bool, Timestamp)>,
}

impl Publisher {
    async fn pass(&mut self, bundle: &str, meshed: &BTreeSet<String>) {
        let actions = plan(bundle, meshed, |ns| self.bundles.found(ns));
        let mut problems = BTreeMap::new();
        for (ns, action) in &actions {
            let result = match action {
                Action::Foreign => Err(foreign_message(ns)),
                action => self.write(ns, *action, bundle).await.map_err(|error| {
                    format!(
                        "cannot write ConfigMap {ns}/{BUNDLE_CONFIG_MAP}: {}",
                        bounded(&error.to_string())
                    )
                }),
            };
            match result {
                Ok(()) => tracing::info!(namespace = %ns, ?action, "trust bundle published"),
                Err(problem) => {
                    problems.insert(ns.clone(), problem);
                }
            }
        }
        for (ns, problem) in &problems {
            if self.problems.get(ns) != Some(problem) {
                tracing::warn!(namespace = %ns, %problem, "trust bundle not published");
                self.event(problem).await;
            }
        }
        let healthy = problems.is_empty();
        if self.since.is_none_or(|(was, _)| was != healthy) {
            self.since = Some((healthy, Timestamp::now()));
        }
        self.problems = problems;
        let since = self.since.map_or_else(Timestamp::now, |(_, at)| at);
        let status = bundle_status(meshed.len(), &self.problems, since);
        if self.status.as_ref() != Some(&status) {
            let patch = json!({
                "apiVersion": Mesh::api_version(&()),
                "kind": Mesh::kind(&()),
                "status": status,
            });
            match Api::<Mesh>::all(self.client.clone())
                .patch_status(
                    ACTIVE_MESH_NAME,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => self.status = Some(status),
                Err(error) => tracing::warn!(%error, "cannot write the Mesh's bundle status"),
            }
        }
    }

    async fn write(&self, ns: &str, action: Action, bundle: &str) -> kube::Result<()> {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), ns);
        let config_map = || ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(BUNDLE_CONFIG_MAP.into()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
                    ("app.kubernetes.io/part-of".into(), "weft".into()),
                ])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(BUNDLE_KEY.into(), bundle.into())])),
            ..Default::default()
        };
        match action {
            Action::Create => {
                api.create(&PostParams::default(), &config_map()).await?;
            }
            Action::Update => {
                let mut patch =
                    serde_json::to_value(config_map()).map_err(kube::Error::SerdeError)?;
                patch["apiVersion"] = "v1".into();
                patch["kind"] = "ConfigMap".into();
                api.patch(
                    BUNDLE_CONFIG_MAP,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await?;
            }
            Action::Replace => {
                api.delete(BUNDLE_CONFIG_MAP, &DeleteParams::default())
                    .await?;
                api.create(&PostParams::default(), &config_map()).await?;
            }
            Action::Foreign => {}
        }
        Ok(())
    }

    async fn event(&self, problem: &str) {
        let mesh = Api::<Mesh>::all(self.client.clone());
        let Ok(Some(mesh)) = mesh.get_opt(ACTIVE_MESH_NAME).await else {
            return;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "TrustBundleNotPublished".into(),
            note: Some(problem.into()),
            action: "PublishTrustBundle".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &mesh.object_ref(&())).await {
            tracing::warn!(%error, "could not publish event");
        }
    }
}

/// The Mesh status this module owns: the counts and the condition, whose transition
/// time is `since` (when the verdict last changed).
fn bundle_status(
    meshed: usize,
    problems: &BTreeMap<String, String>,
    since: Timestamp,
) -> serde_json::Value {
    let current = meshed.saturating_sub(problems.len());
    let condition = if problems.is_empty() {
        condition(
            CONDITION,
            ConditionStatus::True,
            "Published",
            format!("the trust bundle is current in all {meshed} meshed namespaces"),
            None,
            since,
        )
    } else {
        let mut named: Vec<String> = problems
            .iter()
            .take(NAMED)
            .map(|(ns, p)| format!("{ns}: {p}"))
            .collect();
        if problems.len() > NAMED {
            named.push(format!("and {} more", problems.len() - NAMED));
        }
        condition(
            CONDITION,
            ConditionStatus::False,
            "NotPublished",
            format!(
                "{} of {meshed} meshed namespaces lack the current trust bundle; {}",
                problems.len(),
                named.join("; ")
            ),
            None,
            since,
        )
    };
    json!({
        "trustBundle": {"namespaces": meshed, "current": current},
        "conditions": [condition],
    })
}

/// `text`, cut to [`ERROR_BYTES`] at a character boundary.
fn bounded(text: &str) -> String {
    match text.char_indices().nth(ERROR_BYTES) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_namespace_gets_what_it_needs_and_foreign_ones_are_left_alone() {
        let found = |ns: &str| match ns {
            "aaa" => Found::Foreign,
            "current" => Found::Wefts {
                bundle: Some("B".into()),
                immutable: true,
            },
            "stale" => Found::Wefts {
                bundle: Some("A".into()),
                immutable: false,
            },
            "frozen" => Found::Wefts {
                bundle: Some("A".into()),
                immutable: true,
            },
            "emptied" => Found::Wefts {
                bundle: None,
                immutable: false,
            },
            _ => Found::Missing,
        };
        let meshed = set(&["aaa", "current", "stale", "frozen", "emptied", "new"]);
        assert_eq!(
            plan("B", &meshed, found),
            BTreeMap::from([
                ("aaa".to_string(), Action::Foreign),
                ("emptied".to_string(), Action::Update),
                ("frozen".to_string(), Action::Replace),
                ("new".to_string(), Action::Create),
                ("stale".to_string(), Action::Update),
            ])
        );
    }

    #[test]
    fn only_the_label_or_wefts_own_writes_make_a_config_map_wefts() {
        let mut config_map = ConfigMap {
            data: Some(BTreeMap::from([(BUNDLE_KEY.into(), "B".into())])),
            ..Default::default()
        };
        config_map.metadata.labels = Some(BTreeMap::from([(
            "app.kubernetes.io/part-of".into(),
            "weft".into(),
        )]));
        assert_eq!(Found::of(Some(&config_map)), Found::Foreign);
        let mut written = config_map.clone();
        written.metadata.managed_fields = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some("weft-operator/identity".into()),
                ..Default::default()
            },
        ]);
        assert!(matches!(Found::of(Some(&written)), Found::Wefts { .. }));
        config_map
            .metadata
            .labels
            .get_or_insert_default()
            .insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        assert_eq!(
            Found::of(Some(&config_map)),
            Found::Wefts {
                bundle: Some("B".into()),
                immutable: false
            }
        );
        assert_eq!(Found::of(None), Found::Missing);
    }

    #[test]
    fn the_status_counts_and_names_the_namespaces_without_the_bundle() {
        let now = Timestamp::now();
        let ok = bundle_status(3, &BTreeMap::new(), now);
        assert_eq!(ok["trustBundle"], json!({"namespaces": 3, "current": 3}));
        assert_eq!(ok["conditions"][0]["status"], "True");
        let problems: BTreeMap<String, String> = (0..12)
            .map(|i| (format!("ns{i:02}"), "quota".to_string()))
            .collect();
        let failing = bundle_status(15, &problems, now);
        assert_eq!(
            failing["trustBundle"],
            json!({"namespaces": 15, "current": 3})
        );
        let message = failing["conditions"][0]["message"].as_str().unwrap();
        assert!(
            message.starts_with("12 of 15 meshed namespaces"),
            "{message}"
        );
        assert!(message.contains("ns00: quota") && message.ends_with("and 2 more"));
        assert!(!message.contains("ns11"));
    }
}
