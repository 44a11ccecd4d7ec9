//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.

pub use weft_proxy_api::SpiffeId;

/// Why a text is not a workload SPIFFE id the operator certifies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a workload identity spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>: {reason}"
)]
pub struct SpiffeIdError {
    text: String,
    reason: &'static str,
}

/// The identity of ServiceAccount `service_account` in `namespace`. The shared
/// [`SpiffeId`] checks only the id's shape; the operator also requires every part to
/// be a DNS-1123 name (what Kubernetes allows for these objects) before it certifies
/// one.
pub fn workload(
    trust_domain: &str,
    namespace: &str,
    service_account: &str,
) -> Result<SpiffeId, SpiffeIdError> {
    let err = |reason| SpiffeIdError {
        text: format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"),
        reason,
    };
    if !is_dns_subdomain(trust_domain) {
        return Err(err("the trust domain is not a DNS name"));
    }
    if !is_dns_label(namespace) {
        return Err(err("the namespace is not a Kubernetes namespace name"));
    }
    if !is_dns_subdomain(service_account) {
        return Err(err("the ServiceAccount is not a Kubernetes object name"));
    }
    Ok(SpiffeId::new(trust_domain, namespace, service_account))
}

/// `text` as a workload identity, with [`workload`]'s checks of its parts.
pub fn parse(text: &str) -> Result<SpiffeId, SpiffeIdError> {
    let err = |reason| SpiffeIdError {
        text: text.to_string(),
        reason,
    };
    let rest = text
        .strip_prefix("spiffe://")
        .ok_or_else(|| err("it does not start with spiffe://"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [td, "ns", ns, "sa", sa] => workload(td, ns, sa),
        _ => Err(err("the path is not /ns/<namespace>/sa/<serviceaccount>")),
    }
}

/// A DNS-1123 label: what Kubernetes namespaces, names of Services and
/// ServiceAccounts are.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: what names of most Kubernetes objects, pods included, are.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let id = workload("cluster.local", "shop", "web").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(parse("spiffe://cluster.local/ns/shop/sa/web").unwrap(), id);
    }

    #[test]
    fn refuses_what_is_not_a_workload_identity() {
        for bad in [
            "",
            "https://cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/web/extra",
            "spiffe://cluster.local/sa/web/ns/shop",
            "spiffe://Cluster.Local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/Shop/sa/web",
            "spiffe://cluster.local/ns/shop/sa/",
            "spiffe://cluster.local/ns/-shop/sa/web",
            "spiffe:///ns/shop/sa/web",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
