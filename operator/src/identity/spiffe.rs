//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.

use std::{fmt, str::FromStr};

/// The SPIFFE id of a workload: its trust domain, namespace and ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a text is not a workload SPIFFE id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a workload identity spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>: {reason}"
)]
pub struct SpiffeIdError {
    text: String,
    reason: &'static str,
}

impl SpiffeId {
    /// The identity of ServiceAccount `service_account` in `namespace`. Every part must
    /// be a DNS-1123 name (what Kubernetes allows for these objects).
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let text = || format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        let err = |reason| SpiffeIdError {
            text: text(),
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
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| SpiffeIdError {
            text: text.to_string(),
            reason,
        };
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("it does not start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa),
            _ => Err(err("the path is not /ns/<namespace>/sa/<serviceaccount>")),
        }
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
        let id = SpiffeId::new("cluster.local", "shop", "web").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(
            "spiffe://cluster.local/ns/shop/sa/web"
                .parse::<SpiffeId>()
                .unwrap(),
            id
        );
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
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad:?} was accepted");
        }
    }
}
