//! `crds/` must be exactly what the Rust types generate (`make crds` regenerates it).

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let mut stale = Vec::new();
    for (file, crd) in weft_api::crd::all() {
        let want = weft_api::crd::to_yaml(&crd).expect("CRD renders as YAML");
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if have != want {
            stale.push(file);
        }
    }
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap_or_default();
    if kustomization != weft_api::crd::kustomization() {
        stale.push("kustomization.yaml");
    }
    assert!(
        stale.is_empty(),
        "crds/{stale:?} differ from the Rust types; run `make crds` and commit the result"
    );
    let mut on_disk: Vec<_> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut generated: Vec<_> = weft_api::crd::all()
        .into_iter()
        .map(|(f, _)| f.to_string())
        .chain(["kustomization.yaml".to_string()])
        .collect();
    generated.sort();
    assert_eq!(
        on_disk, generated,
        "crds/ holds a file the types do not generate"
    );
}

#[test]
fn every_crd_has_status_category_and_printer_columns() {
    for (file, crd) in weft_api::crd::all() {
        assert_eq!(crd.spec.group, weft_api::GROUP, "{file}");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["weft".to_string()][..]),
            "{file}"
        );
        assert!(
            !crd.spec
                .names
                .short_names
                .clone()
                .unwrap_or_default()
                .is_empty(),
            "{file}"
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, weft_api::VERSION);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{file}"
        );
        let columns = version
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        assert!(columns.iter().any(|c| c.name == "Age"), "{file}");
        let schema = serde_json::to_value(&version.schema).unwrap();
        let conditions =
            &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{file}");
    }
}
