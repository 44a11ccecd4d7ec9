//! GitOps-clean: what `examples/` holds can be applied client-side (`kubectl apply`, as
//! the quick start does), server-side (Flux; Argo CD with `ServerSideApply=true`), and
//! switched from one to the other in either order, without an error, a warning or a
//! drift (a repeated server-side apply writes nothing).
//!
//! Each order starts from a new object: namespaced examples go into a fresh namespace,
//! cluster-scoped ones get a name of their own (a Mesh other than `default` is only
//! reported `NotTheActiveMesh`) and are deleted at the end of the test, even when it
//! fails. The Mesh `default` that install applied is also applied again both ways (the
//! same content, so nothing changes), and never deleted.

use serde_json::Value;
use weft_e2e::{kubectl, kubectl_ok, kubectl_stdin, repo_root, with_temp_ns};

/// kubectl's notice when a client-side apply meets an object that a server-side apply
/// made (it adds the annotation itself): expected when switching to client-side.
const MISSING_ANNOTATION: &str = "is missing the kubectl.kubernetes.io/last-applied-configuration annotation which is required by kubectl apply";

/// Every example file, with the objects it holds as kubectl reads them for `ns`
/// (namespaced objects get `ns`; cluster-scoped ones have no namespace).
fn examples(ns: &str) -> Vec<(String, Vec<Value>)> {
    let dir = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no example in {}", dir.display());
    files
        .into_iter()
        .map(|file| {
            let path = file.display().to_string();
            let name = format!(
                "examples/{}",
                file.file_name().expect("a file name").to_string_lossy()
            );
            let json = kubectl_ok(&[
                "create",
                "--dry-run=client",
                "-n",
                ns,
                "-o",
                "json",
                "-f",
                &path,
            ]);
            let mut objects = Vec::new();
            for value in serde_json::Deserializer::from_str(&json).into_iter::<Value>() {
                let value = value.unwrap_or_else(|e| panic!("{name}: {e}: {json}"));
                match value["kind"].as_str() {
                    Some("List") => objects.extend(
                        value["items"]
                            .as_array()
                            .cloned()
                            .expect("a List has items"),
                    ),
                    _ => objects.push(value),
                }
            }
            assert!(!objects.is_empty(), "{name} holds no object");
            (name, objects)
        })
        .collect()
}

/// `kind/name`, and `-n namespace` for a namespaced object.
fn reference(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().expect("a kind").to_lowercase();
    let group = object["apiVersion"]
        .as_str()
        .expect("an apiVersion")
        .rsplit_once('/')
        .map(|(group, _)| format!(".{group}"))
        .unwrap_or_default();
    let name = object["metadata"]["name"].as_str().expect("a name");
    let mut reference = vec![format!("{kind}{group}/{name}")];
    if let Some(ns) = object["metadata"]["namespace"].as_str() {
        reference.extend(["-n".to_string(), ns.to_string()]);
    }
    reference
}

fn describe(object: &Value) -> String {
    reference(object).join(" ")
}

fn resource_version(object: &Value) -> String {
    let reference = reference(object);
    let mut args = vec!["get", "-o", "jsonpath={.metadata.resourceVersion}"];
    args.extend(reference.iter().map(String::as_str));
    kubectl_ok(&args)
}

fn exists(object: &Value) -> bool {
    let reference = reference(object);
    let mut args = vec!["get", "--ignore-not-found", "-o", "name"];
    args.extend(reference.iter().map(String::as_str));
    !kubectl_ok(&args).trim().is_empty()
}

/// Applies `object`, client-side or server-side, and returns its resourceVersion
/// after the apply. Fails on an error or on any warning but `allowed`.
fn apply(object: &Value, server_side: bool, allowed: Option<&str>) -> String {
    let mut args = vec!["apply"];
    if server_side {
        args.push("--server-side");
    }
    args.extend(["-f", "-", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let how = if server_side {
        "server-side"
    } else {
        "client-side"
    };
    let out = kubectl_stdin(&args, &object.to_string());
    assert!(
        out.success,
        "applying {} {how} failed:\n{}",
        describe(object),
        out.stderr
    );
    let unexpected: Vec<_> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| allowed.is_none_or(|a| !l.contains(a)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "applying {} {how} said:\n{}",
        describe(object),
        unexpected.join("\n")
    );
    out.stdout.trim().to_string()
}

/// A server-side apply of what is already applied writes nothing: the resourceVersion
/// stays. The operator may write the object's status meanwhile, which moves the
/// resourceVersion too, so a few tries are allowed; an apply that drifts writes on
/// every one of them.
fn no_drift(object: &Value) {
    let mut seen = Vec::new();
    for _ in 0..5 {
        let before = resource_version(object);
        let after = apply(object, true, None);
        if before == after {
            return;
        }
        seen.push(format!("{before} -> {after}"));
    }
    panic!(
        "every server-side apply of {} wrote it again: {seen:?}",
        describe(object)
    );
}

/// Deletes the objects a test created, when dropped.
#[derive(Default)]
struct Created(Vec<Value>);

impl Drop for Created {
    fn drop(&mut self) {
        for object in &self.0 {
            let reference = reference(object);
            let mut args = vec!["delete", "--ignore-not-found", "--wait=false"];
            args.extend(reference.iter().map(String::as_str));
            let out = kubectl(&args);
            if !out.success {
                eprintln!("cannot delete {}: {}", describe(object), out.stderr);
            }
        }
    }
}

/// `object` as a new object: a cluster-scoped one under a name of its own (deleted at the
/// end of the test), a namespaced one as it is, in the test's fresh namespace.
fn fresh(mut object: Value, order: &str) -> Value {
    if object["metadata"]["namespace"].is_null() {
        let name = object["metadata"]["name"].as_str().expect("a name");
        object["metadata"]["name"] = Value::from(format!("{name}-{order}-{}", std::process::id()));
    }
    assert!(!exists(&object), "{} exists already", describe(&object));
    object
}

#[tokio::test]
async fn every_example_applies_client_side_then_server_side_without_drift() {
    with_temp_ns("gitops-csa", |_, ns| async move {
        let mut created = Created::default();
        for (file, objects) in examples(&ns) {
            for object in objects {
                // As the quick start does: created client-side, then applied server-side.
                let new = fresh(object.clone(), "csa");
                eprintln!("{file}: {}", describe(&new));
                created.0.push(new.clone());
                apply(&new, false, None);
                apply(&new, true, None);
                no_drift(&new);
                // What install applied (the Mesh `default`), applied again both ways:
                // the same content, so nothing changes. Install applies it server-side,
                // so kubectl may note that it adds its client-side annotation.
                if object["metadata"]["namespace"].is_null() && exists(&object) {
                    eprintln!("{file}: {}", describe(&object));
                    apply(&object, false, Some(MISSING_ANNOTATION));
                    apply(&object, true, None);
                    no_drift(&object);
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn every_example_applies_server_side_then_client_side_without_drift() {
    with_temp_ns("gitops-ssa", |_, ns| async move {
        let mut created = Created::default();
        for (file, objects) in examples(&ns) {
            for object in objects {
                let new = fresh(object, "ssa");
                eprintln!("{file}: {}", describe(&new));
                created.0.push(new.clone());
                apply(&new, true, None);
                apply(&new, false, Some(MISSING_ANNOTATION));
                apply(&new, true, None);
                no_drift(&new);
            }
        }
    })
    .await;
}
