//! A workload's identity in the mesh, as the operator certifies it and the proxies
//! check it: `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
//!
//! Plain Rust, no `kube`, so the operator and the proxy share one type. This is the
//! id's shape only (every part present, the path `/ns/<namespace>/sa/<sa>`); what
//! the operator further requires of the parts (Kubernetes names) it checks itself
//! before it certifies one.

use std::{fmt, str::FromStr};

/// The SPIFFE id of a workload: its trust domain, namespace and ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a text is not a workload SPIFFE id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotASpiffeId(pub String);

impl fmt::Display for NotASpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>",
            self.0
        )
    }
}

impl std::error::Error for NotASpiffeId {}

impl SpiffeId {
    /// The identity of ServiceAccount `service_account` in `namespace`, in
    /// `trust_domain`; the parts are taken as they are.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
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
    type Err = NotASpiffeId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (domain, path) = text
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| NotASpiffeId(text.to_string()))?;
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["ns", namespace, "sa", sa]
                if !domain.is_empty() && !namespace.is_empty() && !sa.is_empty() =>
            {
                Ok(Self::new(domain, namespace, sa))
            }
            _ => Err(NotASpiffeId(text.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_id_parses_into_its_parts_and_formats_back() {
        let text = "spiffe://cluster.local/ns/shop/sa/web.v2";
        let id: SpiffeId = text.parse().unwrap();
        assert_eq!(
            (id.trust_domain(), id.namespace(), id.service_account()),
            ("cluster.local", "shop", "web.v2")
        );
        assert_eq!(id.to_string(), text);
        for bad in [
            "",
            "https://cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local",
            "spiffe:///ns/shop/sa/web",
            "spiffe://cluster.local/ns//sa/web",
            "spiffe://cluster.local/ns/shop/sa/",
            "spiffe://cluster.local/ns/shop/sa/web/x",
            "spiffe://cluster.local/other",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}
