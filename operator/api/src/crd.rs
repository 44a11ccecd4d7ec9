//! Rendering the CustomResourceDefinitions, for `crds/` and for tests.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{Mesh, MeshStatus, ServerAuthorization, ServiceProfile};

/// Every Weft CRD, each with the file name it has in `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("mesh.yaml", Mesh::crd()),
        ("serviceprofile.yaml", ServiceProfile::crd()),
        ("serverauthorization.yaml", ServerAuthorization::crd()),
        ("meshstatus.yaml", MeshStatus::crd()),
    ]
}

/// `crds/kustomization.yaml`, listing every CRD file, so `deploy/` can include `../crds`.
pub fn kustomization() -> String {
    let mut out = String::from(
        "# Generated from the Rust types in operator/api by `make crds`; do not edit.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for (file, _) in all() {
        out.push_str("- ");
        out.push_str(file);
        out.push('\n');
    }
    out
}

/// The YAML of one CRD, exactly as `crds/` holds it.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    let body = serde_saphyr::to_string(crd)?;
    Ok(format!(
        "# Generated from the Rust types in operator/api by `make crds`; do not edit.\n{body}"
    ))
}
