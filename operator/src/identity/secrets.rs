//! The CA material as the operator stores it in Secrets of its namespace: a generated
//! trust anchor set, and the issuer.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};

use super::{
    Ca, CaError,
    anchors::{self, AnchorSet},
};

/// The Secret holding a generated trust anchor.
pub const ANCHOR_SECRET: &str = "weft-trust-anchor";
/// The Secret holding the issuer.
pub const ISSUER_SECRET: &str = "weft-issuer";

/// A Secret's data and annotations.
pub(super) fn secret_parts(
    secret: &Secret,
) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, String>) {
    let data = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    (
        data,
        secret.metadata.annotations.clone().unwrap_or_default(),
    )
}

/// The Secret holding a generated anchor set, at `resource_version` when replacing.
pub(super) fn anchor_secret(set: &AnchorSet, resource_version: Option<String>) -> Secret {
    let (data, annotations) = set.to_secret();
    let mut secret = Secret {
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    };
    secret.metadata.name = Some(ANCHOR_SECRET.to_string());
    secret.metadata.annotations = Some(annotations);
    secret.metadata.resource_version = resource_version;
    secret.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/part-of".to_string(),
        "weft".to_string(),
    )]));
    secret
}

/// The CA a Secret holds (an issuer's, or a generated anchor set's current one).
pub(super) fn ca_from_secret(secret: &Secret) -> Result<Ca, CaError> {
    let (data, _) = secret_parts(secret);
    let text = |key: &str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    Ca::from_pem(&text(anchors::CURRENT_CERT), &text(anchors::CURRENT_KEY))
}

/// The Secret holding the CA `ca`, named `name`.
pub(super) fn ca_secret(name: &str, ca: &Ca) -> Secret {
    let mut data = BTreeMap::new();
    data.insert(
        "tls.crt".to_string(),
        ByteString(ca.cert_pem().as_bytes().to_vec()),
    );
    data.insert(
        "tls.key".to_string(),
        ByteString(ca.key_pem().as_bytes().to_vec()),
    );
    let mut secret = Secret {
        data: Some(data),
        type_: Some("kubernetes.io/tls".to_string()),
        ..Secret::default()
    };
    secret.metadata.name = Some(name.to_string());
    secret.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/part-of".to_string(),
        "weft".to_string(),
    )]));
    secret
}
