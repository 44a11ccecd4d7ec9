//! Inbound authorization: whether a client may reach a port, by the rules the
//! operator streamed for it (ServerAuthorizations, or the default policy).
//!
//! A rule allows a client when the client comes from one of its networks (any, when
//! it names none) and either the rule allows unauthenticated clients or the client's
//! mesh identity is one it names (`*` for any). No rule allowing it: denied. A port
//! whose policy has not arrived yet is governed by the pod's policy for undeclared
//! ports; with no policy at all (the operator never answered) nothing is enforced,
//! which the proxy logs.
//!
//! The rules are the proxy's own plain types ([`InboundPolicy`]), converted from the
//! operator's messages where the stream arrives ([`crate::discovery`]).

use std::net::IpAddr;

use weft_proxy_api::{ConfigVersion, v1};

/// A port's inbound policy: how its connections are detected and who may connect.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboundPolicy {
    /// `detect`, or `opaque` (every connection relayed as bytes).
    pub protocol: String,
    /// The rules, in order; the first that allows a client names it.
    pub authorizations: Vec<Authorization>,
    pub version: ConfigVersion,
}

/// One rule (a ServerAuthorization, or the default policy's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorization {
    pub name: String,
    /// The mesh identities it allows; `*` for any.
    pub identities: Vec<String>,
    /// It allows clients without a mesh identity too.
    pub unauthenticated: bool,
    /// The networks clients must come from; any, when empty.
    pub networks: Vec<Network>,
}

/// A network: a CIDR, less the ones in `except`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Network {
    pub cidr: String,
    pub except: Vec<String>,
}

impl InboundPolicy {
    /// Every connection to the port is relayed as bytes.
    pub fn is_opaque(&self) -> bool {
        self.protocol == "opaque"
    }
}

impl From<v1::InboundPolicyUpdate> for InboundPolicy {
    fn from(update: v1::InboundPolicyUpdate) -> Self {
        Self {
            protocol: update.protocol,
            authorizations: update
                .authorizations
                .into_iter()
                .map(Authorization::from)
                .collect(),
            version: update.config_version.into(),
        }
    }
}

impl From<v1::Authorization> for Authorization {
    fn from(rule: v1::Authorization) -> Self {
        Self {
            name: rule.name,
            identities: rule.identities,
            unauthenticated: rule.unauthenticated,
            networks: rule
                .networks
                .into_iter()
                .map(|n| Network {
                    cidr: n.cidr,
                    except: n.except,
                })
                .collect(),
        }
    }
}

/// Who is connecting.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// The SPIFFE id its proxy presented over mTLS; `None` for plaintext.
    pub identity: Option<&'a str>,
    pub ip: IpAddr,
}

/// The first rule of `policy` that allows `client`, by name; `None`: denied.
pub fn authorize<'p>(policy: &'p InboundPolicy, client: Client<'_>) -> Option<&'p str> {
    policy
        .authorizations
        .iter()
        .find(|rule| allows(rule, client))
        .map(|rule| rule.name.as_str())
}

fn allows(rule: &Authorization, client: Client<'_>) -> bool {
    let from_network = rule.networks.is_empty()
        || rule.networks.iter().any(|n| {
            in_cidr(client.ip, &n.cidr) && !n.except.iter().any(|e| in_cidr(client.ip, e))
        });
    let who = rule.unauthenticated
        || client.identity.is_some_and(|id| {
            rule.identities
                .iter()
                .any(|allowed| allowed == "*" || allowed == id)
        });
    from_network && who
}

/// Whether `ip` is in `cidr` (`10.0.0.0/8`, `fd00::/8`, or a bare address). A CIDR
/// that does not parse holds nothing.
pub fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (addr, len) = match cidr.split_once('/') {
        Some((addr, len)) => (addr, len.parse::<u8>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = addr.trim().parse::<IpAddr>() else {
        return false;
    };
    // An IPv4 client seen on a dual-stack socket.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let len = u32::from(len.unwrap_or(32));
            if len > 32 {
                return false;
            }
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let len = u32::from(len.unwrap_or(128));
            if len > 128 {
                return false;
            }
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
