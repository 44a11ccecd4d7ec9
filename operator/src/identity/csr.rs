//! Checking a proxy's certificate signing request.
//!
//! A CSR is signed only when it is a well-formed PKCS#10 request whose signature
//! verifies, whose key is ECDSA P-256, and which asks for exactly one name: the SPIFFE
//! id the caller proved with its ServiceAccount token. No DNS, IP or email names, no
//! CA bit, no extension a workload certificate does not have. What the leaf finally
//! contains is decided by the operator (see [`super::ca`]), not copied from the CSR.

use x509_parser::{
    certification_request::X509CertificationRequest,
    extensions::{GeneralName, ParsedExtension},
    prelude::FromDer,
};

use super::SpiffeId;

/// A CSR that passed every check: the key to certify and the identity it may have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The DER SubjectPublicKeyInfo of the requester's key.
    pub public_key: Vec<u8>,
    /// The identity the leaf will name.
    pub identity: SpiffeId,
}

/// Why a CSR is refused. The variant names are the `reason` label of the refusal
/// metric, so they stay short and stable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is not a DER-encoded PKCS#10 request")]
    Malformed,
    #[error("the CSR's signature does not verify with its own key")]
    BadSignature,
    #[error("the CSR's key is not ECDSA P-256")]
    KeyType,
    #[error("the CSR asks to be a certificate authority")]
    CaRequested,
    #[error("the CSR names no identity; it must ask for exactly {expected}")]
    NoIdentity { expected: String },
    #[error("the CSR asks for {found}, but the caller proved {expected}")]
    WrongIdentity { expected: String, found: String },
    #[error("the CSR asks for names besides {expected}: {extra}")]
    ExtraNames { expected: String, extra: String },
    #[error("the CSR carries an extension a workload certificate does not have")]
    UnsupportedExtension,
}

impl CsrError {
    /// A short, stable name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::KeyType => "key_type",
            Self::CaRequested => "ca_requested",
            Self::NoIdentity { .. } => "no_identity",
            Self::WrongIdentity { .. } => "wrong_identity",
            Self::ExtraNames { .. } => "extra_names",
            Self::UnsupportedExtension => "unsupported_extension",
        }
    }
}

/// Checks that `der` is a CSR for exactly `expected`.
pub fn check(der: &[u8], expected: &SpiffeId) -> Result<CheckedCsr, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    if !super::is_p256(spki) {
        return Err(CsrError::KeyType);
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let expected_text = expected.to_string();
    let mut uris = Vec::new();
    let mut others = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => uris.push(uri.to_string()),
                        other => others.push(other.to_string()),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::CaRequested),
            ParsedExtension::BasicConstraints(_)
            | ParsedExtension::KeyUsage(_)
            | ParsedExtension::ExtendedKeyUsage(_) => {}
            _ => return Err(CsrError::UnsupportedExtension),
        }
    }
    let (first, rest) = match uris.split_first() {
        Some(split) => split,
        None if others.is_empty() => {
            return Err(CsrError::NoIdentity {
                expected: expected_text,
            });
        }
        None => {
            return Err(CsrError::ExtraNames {
                expected: expected_text,
                extra: others.join(", "),
            });
        }
    };
    if *first != expected_text {
        return Err(CsrError::WrongIdentity {
            expected: expected_text,
            found: first.clone(),
        });
    }
    let extra: Vec<String> = rest.iter().cloned().chain(others).collect();
    if !extra.is_empty() {
        return Err(CsrError::ExtraNames {
            expected: expected_text,
            extra: extra.join(", "),
        });
    }
    Ok(CheckedCsr {
        public_key: spki.raw.to_vec(),
        identity: expected.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
        PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PublicKeyData, SanType,
    };

    fn web() -> SpiffeId {
        crate::identity::spiffe::workload("cluster.local", "shop", "web").unwrap()
    }

    fn csr_with(key: &KeyPair, sans: Vec<SanType>, ca: bool) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.serialize_request(key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn p256() -> KeyPair {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
    }

    #[test]
    fn a_csr_for_exactly_the_proved_identity_passes() {
        let key = p256();
        let der = csr_with(
            &key,
            vec![uri("spiffe://cluster.local/ns/shop/sa/web")],
            false,
        );
        let checked = check(&der, &web()).unwrap();
        assert_eq!(checked.identity, web());
        assert_eq!(checked.public_key, key.subject_public_key_info());
    }

    #[test]
    fn a_csr_for_another_identity_is_refused() {
        let der = csr_with(
            &p256(),
            vec![uri("spiffe://cluster.local/ns/shop/sa/admin")],
            false,
        );
        let err = check(&der, &web()).unwrap_err();
        assert_eq!(err.reason(), "wrong_identity");
        assert!(
            err.to_string().contains("sa/admin") && err.to_string().contains("sa/web"),
            "{err}"
        );
    }

    #[test]
    fn extra_sans_of_any_kind_are_refused() {
        let id = uri("spiffe://cluster.local/ns/shop/sa/web");
        for extra in [
            uri("spiffe://cluster.local/ns/shop/sa/admin"),
            SanType::DnsName("web.shop.svc.cluster.local".try_into().unwrap()),
            SanType::IpAddress("198.18.0.5".parse().unwrap()),
            SanType::Rfc822Name("web@shop.example".try_into().unwrap()),
        ] {
            let der = csr_with(&p256(), vec![id.clone(), extra.clone()], false);
            assert_eq!(
                check(&der, &web()).unwrap_err().reason(),
                "extra_names",
                "{extra:?}"
            );
        }
        let only_dns = csr_with(
            &p256(),
            vec![SanType::DnsName("web".try_into().unwrap())],
            false,
        );
        assert_eq!(
            check(&only_dns, &web()).unwrap_err().reason(),
            "extra_names"
        );
        let none = csr_with(&p256(), vec![], false);
        assert_eq!(check(&none, &web()).unwrap_err().reason(), "no_identity");
    }

    #[test]
    fn only_p256_keys_are_signed() {
        for alg in [&PKCS_ECDSA_P384_SHA384, &PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let der = csr_with(
                &key,
                vec![uri("spiffe://cluster.local/ns/shop/sa/web")],
                false,
            );
            assert_eq!(check(&der, &web()).unwrap_err(), CsrError::KeyType);
        }
    }

    /// The children of a DER SEQUENCE (short or long form lengths).
    fn children(der: &[u8]) -> Vec<&[u8]> {
        fn tlv(b: &[u8]) -> (usize, usize) {
            // (header length, content length)
            if b[1] < 0x80 {
                (2, b[1] as usize)
            } else {
                let n = (b[1] & 0x7f) as usize;
                (
                    2 + n,
                    b[2..2 + n].iter().fold(0, |acc, x| acc * 256 + *x as usize),
                )
            }
        }
        let (h, len) = tlv(der);
        let mut body = &der[h..h + len];
        let mut out = Vec::new();
        while !body.is_empty() {
            let (h, len) = tlv(body);
            out.push(&body[..h + len]);
            body = &body[h + len..];
        }
        out
    }

    fn sequence(parts: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        let mut out = vec![0x30];
        if body.len() < 0x80 {
            out.push(body.len() as u8);
        } else {
            out.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
        }
        out.extend(body);
        out
    }

    #[test]
    fn a_csr_signed_by_another_key_than_it_carries_is_refused() {
        let id = || vec![uri("spiffe://cluster.local/ns/shop/sa/web")];
        let mine = csr_with(&p256(), id(), false);
        let theirs = csr_with(&p256(), id(), false);
        let (a, b) = (children(&mine), children(&theirs));
        // My request info and algorithm, their signature.
        let spliced = sequence(&[a[0], a[1], b[2]]);
        assert_eq!(check(&spliced, &web()).unwrap_err(), CsrError::BadSignature);
        // Reassembling my own parts gives my request back, so the splice is sound.
        assert_eq!(sequence(&[a[0], a[1], a[2]]), mine);
    }

    #[test]
    fn a_csr_asking_to_be_a_ca_is_refused() {
        let der = csr_with(
            &p256(),
            vec![uri("spiffe://cluster.local/ns/shop/sa/web")],
            true,
        );
        assert_eq!(check(&der, &web()).unwrap_err(), CsrError::CaRequested);
    }

    #[test]
    fn garbage_and_tampered_bytes_are_refused() {
        assert_eq!(check(b"", &web()).unwrap_err(), CsrError::Malformed);
        assert_eq!(
            check(b"not a csr at all", &web()).unwrap_err(),
            CsrError::Malformed
        );
        let mut der = csr_with(
            &p256(),
            vec![uri("spiffe://cluster.local/ns/shop/sa/web")],
            false,
        );
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(check(&trailing, &web()).unwrap_err(), CsrError::Malformed);
        // Flip a bit of the signature (the DER's last byte): the request no longer verifies.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert_eq!(check(&der, &web()).unwrap_err(), CsrError::BadSignature);
        for len in [1, 10, 50, der.len() / 2] {
            assert!(check(&der[..len], &web()).is_err());
        }
    }
}
