//! Certificate authorities: generating a trust anchor, issuing an issuer from it, and
//! signing workload leaves with the issuer.
//!
//! Every certificate is ECDSA P-256. Validity starts a minute in the past so a peer
//! whose clock is slightly behind still accepts a fresh certificate. Serial numbers are
//! 128 random bits.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CheckedCsr;

/// How far in the past a certificate's validity starts, for peers with slow clocks.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("generating a key or certificate failed: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("the CA certificate is not PEM or DER X.509")]
    CertificateEncoding,
    #[error("the CA key is not a PEM PKCS#8 ECDSA P-256 key")]
    KeyEncoding,
    #[error("the CA certificate is not a CA (basicConstraints cA is not set)")]
    NotACa,
    #[error("the CA certificate's key is not ECDSA P-256")]
    KeyType,
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    #[error("the requested lifetime {0:?} is too long to represent")]
    Lifetime(Duration),
}

/// A certificate authority: its certificate and its signing key.
pub struct Ca {
    cert_der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A signed workload certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub not_after: OffsetDateTime,
}

impl Ca {
    /// A new self-signed trust anchor for `trust_domain`, valid for `lifetime` from `now`.
    pub fn generate_anchor(
        trust_domain: &str,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let params = ca_params(&format!("root.weft.{trust_domain}"), 1, lifetime, now)?;
        let cert = params.self_signed(&key).map_err(CaError::Generate)?;
        Self::assemble(cert.der().to_vec(), key)
    }

    /// A new issuer (intermediate CA) for `trust_domain`, signed by this anchor.
    pub fn issue_intermediate(
        &self,
        trust_domain: &str,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let params = ca_params(&format!("issuer.weft.{trust_domain}"), 0, lifetime, now)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(CaError::Generate)?;
        Self::assemble(cert.der().to_vec(), key)
    }

    /// A CA from a PEM certificate and PEM PKCS#8 key, as a Secret holds them
    /// (`tls.crt`, `tls.key`). The certificate must be a P-256 CA matching the key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let cert_der =
            first_pem_block(cert_pem, "CERTIFICATE").ok_or(CaError::CertificateEncoding)?;
        let key = KeyPair::from_pem(key_pem).map_err(|_| CaError::KeyEncoding)?;
        if !key.is_compatible(&PKCS_ECDSA_P256_SHA256) {
            return Err(CaError::KeyEncoding);
        }
        Self::assemble(cert_der, key)
    }

    fn assemble(cert_der: Vec<u8>, key: KeyPair) -> Result<Self, CaError> {
        let (_, cert) =
            X509Certificate::from_der(&cert_der).map_err(|_| CaError::CertificateEncoding)?;
        if !cert.is_ca() {
            return Err(CaError::NotACa);
        }
        let spki = cert.public_key();
        if !super::is_p256(spki) {
            return Err(CaError::KeyType);
        }
        if spki.raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        let cert_pem = pem_encode("CERTIFICATE", &cert_der);
        let key_pem = key.serialize_pem();
        let issuer =
            Issuer::from_ca_cert_der(&cert_der.clone().into(), key).map_err(CaError::Generate)?;
        Ok(Self {
            cert_der,
            cert_pem,
            key_pem,
            not_before,
            not_after,
            issuer,
        })
    }

    /// Signs a leaf for a checked CSR, valid for `lifetime` from `now`.
    pub fn sign(
        &self,
        csr: &CheckedCsr,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Leaf, CaError> {
        let public_key =
            SubjectPublicKeyInfo::from_der(&csr.public_key).map_err(CaError::Generate)?;
        let params = leaf_params(&csr.identity, lifetime, now)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(CaError::Generate)?;
        Ok(Leaf {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            not_after: params.not_after,
        })
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM PKCS#8: only ever written to the CA's own Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// SHA-256 of the DER certificate, lowercase hex: what status shows.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }
}

/// Whether `cert` was signed by `by`'s key.
pub fn issued_by(cert: &Ca, by: &Ca) -> bool {
    let (Ok((_, cert)), Ok((_, by))) = (
        X509Certificate::from_der(cert.cert_der()),
        X509Certificate::from_der(by.cert_der()),
    ) else {
        return false;
    };
    cert.verify_signature(Some(by.public_key())).is_ok()
}

/// A serving certificate with a fresh key, signed by `issuer`: `identity` plus
/// `dns_names` as SANs, for the operator's own TLS endpoints. Returns the leaf and its
/// key (PEM PKCS#8), which stays in memory.
pub fn serving_certificate(
    issuer: &Ca,
    identity: &super::SpiffeId,
    dns_names: &[String],
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<(Leaf, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
    let mut params = leaf_params(identity, lifetime, now)?;
    for name in dns_names {
        let name = name.clone().try_into().map_err(CaError::Generate)?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    let cert = params
        .signed_by(&key, &issuer.issuer)
        .map_err(CaError::Generate)?;
    let leaf = Leaf {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        not_after: params.not_after,
    };
    Ok((leaf, key.serialize_pem()))
}

/// The parameters of a workload leaf naming `identity`.
fn leaf_params(
    identity: &super::SpiffeId,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut params = validity(lifetime, now)?;
    params.distinguished_name = DistinguishedName::new();
    let uri = identity.to_string().try_into().map_err(CaError::Generate)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Parameters valid from a little before `now` for `lifetime`, with a random serial.
fn validity(lifetime: Duration, now: OffsetDateTime) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = after(now, lifetime)?;
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// SHA-256 of `der`, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ca_params(
    common_name: &str,
    path_len: u8,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut params = validity(lifetime, now)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn after(now: OffsetDateTime, lifetime: Duration) -> Result<OffsetDateTime, CaError> {
    let span = time::Duration::try_from(lifetime).map_err(|_| CaError::Lifetime(lifetime))?;
    now.checked_add(span).ok_or(CaError::Lifetime(lifetime))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The system RNG failing leaves the serial all zeros but still unique enough with the
    // key identifiers; it only happens when the OS has no entropy source at all.
    let _ = SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f; // a positive INTEGER
    SerialNumber::from_slice(&bytes)
}

/// The DER content of the first PEM block labelled `label` in `text`.
pub fn first_pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    pem_blocks(text, label).into_iter().next()
}

/// The DER contents of every PEM block labelled `label` in `text`; nothing when the text
/// is not PEM.
pub fn pem_blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|block| block.tag() == label)
        .map(pem::Pem::into_contents)
        .collect()
}

/// PEM-encodes `der` under `label`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{SpiffeId, csr};
    use rustls::{
        RootCertStore,
        pki_types::{CertificateDer, UnixTime},
        server::WebPkiClientVerifier,
    };
    use x509_parser::extensions::GeneralName;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// A fresh anchor and an issuer signed by it.
    fn chain() -> (Ca, Ca) {
        let anchor = Ca::generate_anchor("cluster.local", 365 * DAY, now()).unwrap();
        let issuer = anchor
            .issue_intermediate("cluster.local", 30 * DAY, now())
            .unwrap();
        (anchor, issuer)
    }

    /// A leaf for `spiffe://cluster.local/ns/a/sa/b` signed by `issuer`.
    fn leaf(issuer: &Ca, lifetime: Duration, at: OffsetDateTime) -> Leaf {
        let id = crate::identity::spiffe::workload("cluster.local", "a", "b").unwrap();
        issuer.sign(&csr_for(&id), lifetime, at).unwrap()
    }

    fn csr_for(id: &SpiffeId) -> CheckedCsr {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
        let der = params.serialize_request(&key).unwrap().der().to_vec();
        csr::check(&der, id).unwrap()
    }

    /// Verifies `leaf` + `issuer` against `anchors` with rustls, as a proxy would.
    fn verify(leaf: &Leaf, issuer: &Ca, anchors: &[&Ca]) -> Result<(), rustls::Error> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for anchor in anchors {
            roots
                .add(CertificateDer::from(anchor.cert_der().to_vec()))
                .unwrap();
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        verifier
            .verify_client_cert(
                &CertificateDer::from(leaf.cert_der.clone()),
                &[CertificateDer::from(issuer.cert_der().to_vec())],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn a_signed_leaf_chains_to_its_anchor_and_names_only_its_identity() {
        let anchor = Ca::generate_anchor("cluster.local", 365 * DAY, now()).unwrap();
        let issuer = anchor
            .issue_intermediate("cluster.local", 30 * DAY, now())
            .unwrap();
        let id = crate::identity::spiffe::workload("cluster.local", "shop", "web").unwrap();
        let leaf = issuer.sign(&csr_for(&id), DAY, now()).unwrap();
        verify(&leaf, &issuer, &[&anchor]).unwrap();

        let (_, cert) = X509Certificate::from_der(&leaf.cert_der).unwrap();
        let sans = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .clone();
        assert_eq!(
            sans,
            vec![GeneralName::URI("spiffe://cluster.local/ns/shop/sa/web")]
        );
        assert!(!cert.is_ca());
        let lifetime = leaf.not_after - now();
        assert!(lifetime <= time::Duration::hours(24) && lifetime > time::Duration::hours(23));
    }

    #[test]
    fn a_leaf_does_not_verify_against_another_anchor() {
        let (anchor, issuer) = chain();
        let (other, _) = chain();
        let leaf = leaf(&issuer, DAY, now());
        assert!(verify(&leaf, &issuer, &[&other]).is_err());
        // During rotation the bundle holds both anchors, and the old chain still verifies.
        verify(&leaf, &issuer, &[&other, &anchor]).unwrap();
    }

    #[test]
    fn issued_by_tells_which_anchor_signed_an_issuer() {
        let (anchor, issuer) = chain();
        let (other, _) = chain();
        assert!(issued_by(&issuer, &anchor));
        assert!(!issued_by(&issuer, &other));
    }

    #[test]
    fn an_expired_leaf_does_not_verify() {
        let (anchor, issuer) = chain();
        let expired = leaf(
            &issuer,
            Duration::from_secs(60),
            now() - time::Duration::hours(2),
        );
        assert!(verify(&expired, &issuer, &[&anchor]).is_err());
    }

    #[test]
    fn a_ca_round_trips_through_pem_and_keeps_signing() {
        let (anchor, _) = chain();
        let again = Ca::from_pem(anchor.cert_pem(), anchor.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), anchor.fingerprint());
        assert_eq!(again.not_after(), anchor.not_after());
        let issuer = again
            .issue_intermediate("cluster.local", 30 * DAY, now())
            .unwrap();
        verify(&leaf(&issuer, DAY, now()), &issuer, &[&anchor]).unwrap();
    }

    #[test]
    fn from_pem_refuses_a_mismatched_key_a_leaf_and_garbage() {
        let (a, issuer) = chain();
        let (b, _) = chain();
        assert!(matches!(
            Ca::from_pem(a.cert_pem(), b.key_pem()),
            Err(CaError::KeyMismatch)
        ));
        assert!(matches!(
            Ca::from_pem("garbage", a.key_pem()),
            Err(CaError::CertificateEncoding)
        ));
        assert!(matches!(
            Ca::from_pem(a.cert_pem(), "garbage"),
            Err(CaError::KeyEncoding)
        ));
        let leaf = leaf(&issuer, DAY, now());
        assert!(matches!(
            Ca::from_pem(&leaf.cert_pem, a.key_pem()),
            Err(CaError::NotACa)
        ));
        let rsa_like = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            Ca::from_pem(a.cert_pem(), rsa_like),
            Err(CaError::KeyEncoding)
        ));
    }

    #[test]
    fn an_absurd_lifetime_is_an_error_not_a_panic() {
        let err =
            Ca::generate_anchor("cluster.local", Duration::from_secs(u64::MAX), now()).unwrap_err();
        assert!(matches!(err, CaError::Lifetime(_)));
    }

    #[test]
    fn pem_round_trips() {
        let pem = pem_encode(
            "CERTIFICATE",
            b"hello world, this is longer than one line of base64 text!!",
        );
        assert_eq!(
            pem_blocks(&format!("{pem}{pem}"), "CERTIFICATE"),
            vec![b"hello world, this is longer than one line of base64 text!!".to_vec(); 2]
        );
        assert!(
            first_pem_block(
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----",
                "CERTIFICATE"
            )
            .is_none()
        );
    }
}
