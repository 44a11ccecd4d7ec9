//! The authority the operator signs with right now: the issuer, the chain it hands out,
//! and the trust bundle. The identity controller replaces it whole on every rotation;
//! the Certify service and the proxy API's TLS read whichever is current.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;

use super::{Ca, CaError, CheckedCsr, Leaf, SpiffeId, ca};

/// The issuer with everything needed to sign and to be verified.
#[derive(Debug)]
pub struct Authority {
    issuer: Ca,
    /// PEM of every trust anchor currently valid (what proxies verify against).
    bundle_pem: String,
    trust_domain: String,
    workload_lifetime: Duration,
}

/// The current authority, or `None` before the first one is ready.
pub type CurrentAuthority = tokio::sync::watch::Receiver<Option<Arc<Authority>>>;

impl Authority {
    /// An authority signing with `issuer`, whose leaves verify against `bundle_pem`.
    pub fn new(
        issuer: Ca,
        bundle_pem: String,
        trust_domain: &str,
        workload_lifetime: Duration,
    ) -> Self {
        Self {
            issuer,
            bundle_pem,
            trust_domain: trust_domain.to_string(),
            workload_lifetime,
        }
    }

    /// Signs a checked CSR for the configured workload lifetime.
    pub fn sign(&self, csr: &CheckedCsr, now: OffsetDateTime) -> Result<Leaf, CaError> {
        self.issuer.sign(csr, self.workload_lifetime, now)
    }

    /// The chain a leaf is handed with: the issuer's certificate.
    pub fn chain(&self) -> Vec<Vec<u8>> {
        vec![self.issuer.cert_der().to_vec()]
    }

    pub fn issuer(&self) -> &Ca {
        &self.issuer
    }

    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// A serving certificate for the operator itself (the proxy API): its own SPIFFE id
    /// plus the DNS names proxies connect to, with a fresh key.
    pub fn serving_certificate(
        &self,
        identity: &SpiffeId,
        dns_names: &[String],
        now: OffsetDateTime,
    ) -> Result<(Leaf, String), CaError> {
        ca::serving_certificate(
            &self.issuer,
            identity,
            dns_names,
            self.workload_lifetime,
            now,
        )
    }
}
