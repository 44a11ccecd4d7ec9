//! The proxy's configuration, read from `WEFT_PROXY_*` environment variables: the
//! contract with the injector, which lives in the `weft-sidecar` crate so that the
//! operator shares it without depending on the proxy. Every variable is a named
//! constant with its default beside it; parsing reports every bad variable at once
//! (the binary then exits with code 64, `EX_USAGE`).

pub use weft_sidecar::*;

use crate::authz::{Authorization, InboundPolicy};

impl From<DefaultPolicy> for InboundPolicy {
    /// The inbound policy a default stands for, as the operator would stream it: any
    /// mesh identity, and unauthenticated clients too for `all-unauthenticated`; nobody
    /// for `deny`.
    fn from(policy: DefaultPolicy) -> Self {
        let rule = |unauthenticated| Authorization {
            name: format!("default:{}", policy.name()),
            identities: vec!["*".into()],
            unauthenticated,
            networks: Vec::new(),
        };
        InboundPolicy {
            protocol: "detect".into(),
            authorizations: match policy {
                DefaultPolicy::AllUnauthenticated => vec![rule(true)],
                DefaultPolicy::AllAuthenticated | DefaultPolicy::ClusterAuthenticated => {
                    vec![rule(false)]
                }
                DefaultPolicy::Deny => Vec::new(),
            },
            audit: false,
            version: weft_proxy_api::ConfigVersion::default(),
        }
    }
}
