//! The operator's own serving certificates (proxy API, injection webhook).
//!
//! Each is issued from the current authority for the operator's SPIFFE id and the
//! Service's DNS names, so clients verify it against the trust bundle: proxies with the
//! one they mount, the API server with the webhook's `caBundle`. It is replaced when the
//! issuer changes and at 70% of its life, without restarting the listener.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    crypto::ring::sign::any_ecdsa_type,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use time::OffsetDateTime;

use crate::identity::CurrentAuthority;

/// How often a serving certificate is checked for renewal.
const RENEW_CHECK: Duration = Duration::from_secs(30);

/// Who the operator is to its clients: its service account and the DNS names they
/// dial.
#[derive(Clone, Debug)]
pub struct ServingIdentity {
    pub namespace: String,
    pub service_account: String,
    pub dns_names: Vec<String>,
}

/// The serving certificate of the moment.
#[derive(Debug, Default)]
pub struct ServingCert(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok()?.clone()
    }
}

/// Keeps `cert` issued by the current authority: at once when the authority changes,
/// and when 70% of the certificate's life has passed.
pub async fn keep_issued(
    cert: Arc<ServingCert>,
    mut authority: CurrentAuthority,
    serving: ServingIdentity,
    server: &'static str,
) {
    let mut renew_at: Option<OffsetDateTime> = None;
    loop {
        let current = authority.borrow_and_update().clone();
        if let Some(current) = current {
            let due = renew_at.is_none_or(|at| OffsetDateTime::now_utc() >= at);
            if due {
                match issue(&current, &serving) {
                    Ok((key, not_after)) => {
                        if let Ok(mut slot) = cert.0.write() {
                            *slot = Some(key);
                        }
                        let now = OffsetDateTime::now_utc();
                        renew_at = Some(now + (not_after - now) * 0.7);
                        tracing::info!(%not_after, server, "serving certificate issued");
                    }
                    Err(error) => {
                        tracing::warn!(%error, server, "cannot issue a serving certificate")
                    }
                }
            }
        }
        // Wake at the renewal time; after a failure, retry every RENEW_CHECK.
        let sleep = renew_at
            .and_then(|at| Duration::try_from(at - OffsetDateTime::now_utc()).ok())
            .filter(|left| !left.is_zero())
            .map_or(RENEW_CHECK, |left| left.min(RENEW_CHECK));
        tokio::select! {
            changed = authority.changed() => {
                if changed.is_err() {
                    return;
                }
                renew_at = None;
            }
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

fn issue(
    authority: &crate::identity::Authority,
    serving: &ServingIdentity,
) -> Result<(Arc<CertifiedKey>, OffsetDateTime), String> {
    let id = crate::identity::spiffe::workload(
        authority.trust_domain(),
        &serving.namespace,
        &serving.service_account,
    )
    .map_err(|e| e.to_string())?;
    let (leaf, key_pem) = authority
        .serving_certificate(&id, &serving.dns_names, OffsetDateTime::now_utc())
        .map_err(|e| e.to_string())?;
    let key_der = crate::identity::ca::first_pem_block(&key_pem, "PRIVATE KEY").ok_or("no key")?;
    let signing_key = any_ecdsa_type(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)))
        .map_err(|e| e.to_string())?;
    let mut chain = vec![CertificateDer::from(leaf.cert_der)];
    chain.extend(authority.chain().into_iter().map(CertificateDer::from));
    Ok((
        Arc::new(CertifiedKey::new(chain, signing_key)),
        leaf.not_after,
    ))
}
