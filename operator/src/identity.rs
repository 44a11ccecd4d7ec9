//! Identity: the mesh's certificate authority.
//!
//! The chain is trust anchor → issuer → workload leaf:
//!
//! - The **trust anchor** is a self-signed ECDSA P-256 CA, long-lived, either brought by
//!   the user (a Secret a GitOps tool owns) or generated and kept by the operator. The
//!   trust bundle, every anchor currently valid, is what proxies verify peers against.
//! - The **issuer** is an intermediate CA signed by the anchor, rotated well before it
//!   expires. Only it signs workload certificates, so the anchor's key is used rarely.
//! - A **workload leaf** names exactly one SPIFFE identity
//!   (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`) in its only SAN. The proxy makes the key
//!   in memory and sends a CSR; the leaf is built from the operator's own parameters,
//!   never from what the CSR asks for beyond its public key and its one identity.

pub mod anchors;
pub mod authority;
pub mod bundle;
pub mod ca;
pub mod certify;
pub mod controller;
pub mod csr;
pub mod readiness;
pub mod rotation;
pub mod secrets;
pub mod spiffe;
#[cfg(any(test, feature = "testing"))]
pub mod test_util;

pub use self::{
    authority::{Authority, CurrentAuthority},
    ca::{Ca, CaError, Leaf},
    csr::{CheckedCsr, CsrError},
    spiffe::{SpiffeId, SpiffeIdError},
};

/// Whether a public key is ECDSA on P-256, the only key type in the mesh.
fn is_p256(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> bool {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_EC_P256)
}
