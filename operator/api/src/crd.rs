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

/// The YAML of one CRD, exactly as `crds/` holds it.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    let body = serde_saphyr::to_string(crd)?;
    Ok(format!(
        "# Generated from the Rust types in operator/api by `make crds`; do not edit.\n{body}"
    ))
}
