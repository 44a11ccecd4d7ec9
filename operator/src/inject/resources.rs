//! The proxy container's resources: the Mesh's, with single values replaced by the
//! pod's `config.weft.dev/proxy-*` annotations, each checked to be a Kubernetes
//! quantity.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use weft_api::annotations;

/// The proxy's resources: the Mesh's, with the `config.weft.dev/proxy-*` annotations
/// replacing single values.
pub(super) fn proxy_resources(
    annotations: &BTreeMap<String, String>,
    mesh: Option<&ResourceRequirements>,
) -> Result<Option<ResourceRequirements>, String> {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let mut resources = mesh.cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for (annotation, limit, resource) in [
        (annotations::PROXY_CPU_REQUEST, false, "cpu"),
        (annotations::PROXY_CPU_LIMIT, true, "cpu"),
        (annotations::PROXY_MEMORY_REQUEST, false, "memory"),
        (annotations::PROXY_MEMORY_LIMIT, true, "memory"),
    ] {
        let Some(value) = annotations.get(annotation) else {
            continue;
        };
        if !is_quantity(value) {
            problems.push(format!(
                "annotation {annotation}: {value:?} is not a Kubernetes quantity such as 100m or 64Mi"
            ));
            continue;
        }
        let map = if limit {
            &mut resources.limits
        } else {
            &mut resources.requests
        };
        map.get_or_insert_with(BTreeMap::new)
            .insert(resource.to_string(), Quantity(value.clone()));
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let empty = resources.limits.as_ref().is_none_or(BTreeMap::is_empty)
        && resources.requests.as_ref().is_none_or(BTreeMap::is_empty);
    Ok((!empty).then_some(resources))
}

/// A Kubernetes quantity: a non-negative decimal number with an optional SI or binary
/// suffix (`100m`, `0.5`, `64Mi`, `1G`). Exponent forms (`1e3`) are not accepted.
pub(super) fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|suffix| s.strip_suffix(suffix))
        .or_else(|| s.strip_suffix('E'))
        .unwrap_or(s);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    !whole.is_empty()
        && !fraction.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}
