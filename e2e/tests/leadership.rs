//! Status writes on the real cluster, read from the API server's audit log (the
//! local cluster records every write to `weft.dev` objects, see
//! `e2e/cluster/up.sh`): with two operator replicas, only the holder of the
//! `weft-operator` Lease writes MeshStatus and ServerAuthorization status, and a burst
//! of changes to one object is one write of its status.
//!
//! This scales the operator, so it is the only test in its binary (test binaries run
//! one after another); a guard scales it back even on failure, and `make install`
//! puts deploy/'s replica count back after a run that was killed.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use futures::future::join_all;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use weft_api::ServerAuthorization;
use weft_e2e::{
    RestoreOperator, app_deployment, cluster_dir, eventually, kubectl, kubectl_ok, kubectl_stdin,
    mesh_namespace, scale_operator, with_temp_ns,
};

const TIMEOUT: Duration = Duration::from_secs(120);
/// The operator's ServiceAccount, as the audit log names the writer.
const OPERATOR_USER: &str = "system:serviceaccount:weft-system:weft-operator";

/// One write the audit log recorded.
#[derive(Debug)]
struct Write {
    resource: String,
    subresource: String,
    name: String,
    source: String,
    /// When the API server received it.
    at: String,
}

/// Every write by the operator to an object in namespace `ns`, in the order the API
/// server received them.
fn writes_in(ns: &str) -> Vec<Write> {
    let path = cluster_dir().join("audit.log");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the API server's audit log {} ({e}): is the cluster up \
             with e2e/cluster/up.sh's audit policy?",
            path.display()
        )
    });
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete" && e["user"]["username"] == OPERATOR_USER)
        .filter(|e| e["objectRef"]["namespace"] == ns)
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .map(|e| Write {
            resource: e["objectRef"]["resource"]
                .as_str()
                .unwrap_or_default()
                .into(),
            subresource: e["objectRef"]["subresource"]
                .as_str()
                .unwrap_or_default()
                .into(),
            name: e["objectRef"]["name"].as_str().unwrap_or_default().into(),
            source: e["sourceIPs"][0].as_str().unwrap_or_default().into(),
            at: e["requestReceivedTimestamp"]
                .as_str()
                .unwrap_or_default()
                .into(),
        })
        .collect()
}

/// The status writes to ServerAuthorization `name` in `ns`.
fn status_writes(ns: &str, name: &str) -> Vec<Write> {
    writes_in(ns)
        .into_iter()
        .filter(|w| w.resource == "serverauthorizations" && w.subresource == "status")
        .filter(|w| w.name == name)
        .collect()
}

/// The operator's pods: (name, address), ready ones only.
fn operator_pods() -> Vec<(String, String)> {
    let out = kubectl_ok(&[
        "get",
        "pods",
        "-n",
        "weft-system",
        "-l",
        "app.kubernetes.io/name=weft-operator",
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).expect("a pod list");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or_default().into(),
                p["status"]["podIP"].as_str().unwrap_or_default().into(),
            )
        })
        .collect()
}

/// ServerAuthorization `name`'s (generation, status.observedGeneration).
fn generations(ns: &str, name: &str) -> (i64, i64) {
    let out = kubectl_ok(&["get", "serverauthorization", name, "-n", ns, "-o", "json"]);
    let saz: Value = serde_json::from_str(&out).expect("a ServerAuthorization");
    (
        saz["metadata"]["generation"].as_i64().unwrap_or_default(),
        saz["status"]["observedGeneration"].as_i64().unwrap_or(-1),
    )
}

/// Waits until the status of ServerAuthorization `name` describes its spec as it is.
async fn until_observed(ns: &str, name: &str) -> i64 {
    eventually(
        &format!("the status of {name} to observe its generation"),
        TIMEOUT,
        || async {
            match generations(ns, name) {
                (generation, observed) if generation == observed => Ok(generation),
                seen => Err(format!("{seen:?}")),
            }
        },
    )
    .await
}

#[tokio::test]
async fn only_the_lease_holder_writes_status_and_a_burst_is_one_write() {
    let _restore = RestoreOperator;
    scale_operator(2);
    with_temp_ns("leadership", |client, ns| async move {
        let replicas = eventually("two ready operator replicas", TIMEOUT, || async {
            let pods = operator_pods();
            if pods.len() == 2 {
                Ok(pods)
            } else {
                Err(format!("{pods:?}"))
            }
        })
        .await;
        mesh_namespace(&client, &ns).await;
        let applied = kubectl_stdin(&["apply", "-f", "-"], &app_deployment(&ns, "web", 1));
        assert!(applied.success, "{}", applied.stderr);
        eventually("MeshStatus web with its pod", TIMEOUT, || async {
            let out = kubectl(&[
                "get",
                "meshstatus",
                "web",
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.summary.meshed}",
            ]);
            if out.success && out.stdout == "1/1" {
                Ok(())
            } else {
                Err(out.stdout + &out.stderr)
            }
        })
        .await;

        // A ServerAuthorization that selects no pod: its status depends on its spec
        // alone, not on what proxies acknowledge.
        let authorization = format!(
            r#"
apiVersion: weft.dev/v1alpha1
kind: ServerAuthorization
metadata: {{name: burst, namespace: {ns}}}
spec:
  server: {{podSelector: {{matchLabels: {{app: nobody}}}}, port: 8080}}
  client: {{networks: [{{cidr: 198.18.0.0/24}}]}}
"#
        );
        let applied = kubectl_stdin(&["apply", "-f", "-"], &authorization);
        assert!(applied.success, "{}", applied.stderr);
        until_observed(&ns, "burst").await;

        // Five changes at once: one status write. The publisher holds a changed
        // status back until it has stayed the same for 250 ms, however busy the rest
        // of the mesh is; a burst the API server spread over longer is sent again.
        let api = Api::<ServerAuthorization>::namespaced(client.clone(), &ns);
        let mut attempt = 0;
        let (before, generation) = loop {
            attempt += 1;
            let before = status_writes(&ns, "burst").len();
            let started = Instant::now();
            let patches = (1..=5).map(|i| {
                let api = api.clone();
                async move {
                    let patch = json!({"spec": {"client": {"networks": [
                        {"cidr": format!("198.18.{}.0/24", attempt * 10 + i)}
                    ]}}});
                    api.patch("burst", &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .expect("a change to the ServerAuthorization")
                }
            });
            join_all(patches).await;
            let took = started.elapsed();
            let generation = until_observed(&ns, "burst").await;
            if took < Duration::from_millis(150) {
                break (before, generation);
            }
            assert!(
                attempt < 5,
                "five patches never fit in 150 ms (last: {took:?})"
            );
        };
        // Any later write (a resync) would show in the log by now.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let after = status_writes(&ns, "burst");
        assert_eq!(
            after.len() - before,
            1,
            "a burst of 5 changes (to generation {generation}) was written {} times, at {:?}",
            after.len() - before,
            after[before..].iter().map(|w| &w.at).collect::<Vec<_>>()
        );

        // Every write the operator made in this namespace came from the Lease holder.
        let holder = kubectl_ok(&[
            "get",
            "lease",
            "weft-operator",
            "-n",
            "weft-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        let leader = replicas
            .iter()
            .find(|(name, _)| *name == holder)
            .unwrap_or_else(|| panic!("the Lease holder {holder:?} is not one of {replicas:?}"));
        let writes: Vec<Write> = writes_in(&ns)
            .into_iter()
            .filter(|w| w.subresource == "status" || w.resource == "meshstatuses")
            .collect();
        let kinds: BTreeSet<&str> = writes.iter().map(|w| w.resource.as_str()).collect();
        assert!(
            kinds.contains("meshstatuses") && kinds.contains("serverauthorizations"),
            "no MeshStatus or ServerAuthorization status writes to look at: {writes:?}"
        );
        let strangers: Vec<&Write> = writes.iter().filter(|w| w.source != leader.1).collect();
        assert!(
            strangers.is_empty(),
            "writes from a replica that does not hold the Lease ({leader:?} does): {strangers:?}"
        );
    })
    .await;
}
