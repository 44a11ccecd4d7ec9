//! Inbound authorization: whether a client may reach a port, by the rules the
//! operator streamed for it (ServerAuthorizations, or the default policy).
//!
//! A rule allows a client when the client comes from one of its networks (any, when
//! it names none) and either the rule allows unauthenticated clients or the client's
//! mesh identity is one it names (`*` for any). No rule allowing it: denied.
//!
//! Every port is judged by its own policy ([`InboundPolicies`]): a port the pod
//! declares by the update of its own stream; any other port by the update of port 0,
//! which carries the policy of every port a ServerAuthorization selects besides the
//! default of the ports none selects. Until that update has arrived, a port's policy
//! is [`PortPolicy::Unknown`], and its clients are refused
//! ([`Denial::PolicyUnknown`]) rather than judged by a policy that may not be its own.
//! Only a proxy without discovery at all (tests, benches) enforces nothing.
//!
//! [`authorize`] says which rule admitted a client, or why none did ([`Denial`]): the
//! port has no rules at all (the `deny` default, the only policy streamed without
//! any), the client has no mesh identity where every rule asks for one, or no rule
//! names this client. A [`Refusal`] is that reason at a port for one client, in the
//! words the client is told (the `weft-authz` header, a line of text), counted and
//! logged with.
//!
//! The rules are the proxy's own plain types ([`InboundPolicy`]), converted from the
//! operator's messages where the stream arrives ([`crate::discovery`]).

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use weft_proxy_api::{ConfigVersion, v1};

/// A port's inbound policy: how its connections are detected and who may connect.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboundPolicy {
    /// `detect`, or `opaque` (every connection relayed as bytes).
    pub protocol: String,
    /// The rules, in order; the first that allows a client names it.
    pub authorizations: Vec<Authorization>,
    /// Audit mode: a client no rule allows is let through, counted and logged as a
    /// would-be denial.
    pub audit: bool,
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
            audit: update.audit,
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

/// The policies of the ports an update of port 0 carries (those a ServerAuthorization
/// selects), each with the update's version.
pub fn selected_ports(update: &v1::InboundPolicyUpdate) -> BTreeMap<u16, InboundPolicy> {
    update
        .ports
        .iter()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let policy = InboundPolicy {
                protocol: p.protocol.clone(),
                authorizations: p
                    .authorizations
                    .iter()
                    .cloned()
                    .map(Authorization::from)
                    .collect(),
                audit: p.audit,
                version: update.config_version.clone().into(),
            };
            Some((port, policy))
        })
        .collect()
}

/// Every inbound policy of the pod the proxy holds now: what a connection to any port
/// is judged by. Cheap to clone (the policies are shared).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboundPolicies {
    /// Nothing is enforced: the proxy has no discovery at all (tests, benches).
    unenforced: bool,
    /// Each declared port's own policy; `None` until its stream answered.
    declared: BTreeMap<u16, Option<Arc<InboundPolicy>>>,
    /// Port 0's update: `None` until it arrived.
    undeclared: Option<Undeclared>,
}

/// What port 0's update says: the policy of each port a ServerAuthorization selects,
/// and the default of every other port.
#[derive(Clone, Debug, PartialEq)]
struct Undeclared {
    default: Arc<InboundPolicy>,
    selected: BTreeMap<u16, Arc<InboundPolicy>>,
}

/// What the proxy knows of one port's policy.
#[derive(Clone, Debug, PartialEq)]
pub enum PortPolicy {
    /// The port's own policy.
    Known(Arc<InboundPolicy>),
    /// Not known yet: a connection waits for it, then is refused.
    Unknown,
    /// Nothing is enforced (no discovery at all).
    Unenforced,
}

impl InboundPolicies {
    /// No policy known yet, for a pod that declares `declared`.
    pub fn awaiting(declared: &[u16]) -> Self {
        Self {
            unenforced: false,
            declared: declared
                .iter()
                .filter(|port| **port != 0)
                .map(|port| (*port, None))
                .collect(),
            undeclared: None,
        }
    }

    /// Nothing enforced on any port.
    pub fn unenforced() -> Self {
        Self {
            unenforced: true,
            ..Self::default()
        }
    }

    /// `policy` on every port (tests, benches).
    pub fn every_port(policy: InboundPolicy) -> Self {
        Self {
            undeclared: Some(Undeclared {
                default: Arc::new(policy),
                selected: BTreeMap::new(),
            }),
            ..Self::default()
        }
    }

    /// Applies the update of `port`'s stream: a declared port's own policy, or for
    /// port 0 the default and the `selected` ports' policies.
    pub fn apply(
        &mut self,
        port: u16,
        policy: InboundPolicy,
        selected: BTreeMap<u16, InboundPolicy>,
    ) {
        if port == 0 {
            self.undeclared = Some(Undeclared {
                default: Arc::new(policy),
                selected: selected
                    .into_iter()
                    .map(|(port, policy)| (port, Arc::new(policy)))
                    .collect(),
            });
        } else {
            self.declared.insert(port, Some(Arc::new(policy)));
        }
    }

    /// The policy `port` is judged by now: a declared port's own; else the one port
    /// 0's update carries for it (it carries every port a ServerAuthorization
    /// selects), or, for a port the pod does not declare, that update's default.
    pub fn policy(&self, port: u16) -> PortPolicy {
        if self.unenforced {
            return PortPolicy::Unenforced;
        }
        let declared = match self.declared.get(&port) {
            Some(Some(own)) => return PortPolicy::Known(own.clone()),
            Some(None) => true,
            None => false,
        };
        let Some(undeclared) = &self.undeclared else {
            return PortPolicy::Unknown;
        };
        match undeclared.selected.get(&port) {
            Some(selected) => PortPolicy::Known(selected.clone()),
            // A declared port's own stream has not answered: the default may not be
            // its policy.
            None if declared => PortPolicy::Unknown,
            None => PortPolicy::Known(undeclared.default.clone()),
        }
    }

    /// The streams whose update has not arrived yet: declared ports, and 0.
    pub fn missing(&self) -> Vec<u16> {
        if self.unenforced {
            return Vec::new();
        }
        let undeclared = self.undeclared.is_none().then_some(0);
        undeclared
            .into_iter()
            .chain(
                self.declared
                    .iter()
                    .filter(|(_, policy)| policy.is_none())
                    .map(|(port, _)| *port),
            )
            .collect()
    }
}

/// Who is connecting.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// The SPIFFE id its proxy presented over mTLS; `None` for plaintext.
    pub identity: Option<&'a str>,
    pub ip: IpAddr,
}

/// What a port's policy says about a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision<'p> {
    /// Admitted by the first rule that allows the client, named.
    Allowed { authorization: &'p str },
    /// Refused, and why.
    Denied(Denial),
}

/// Why a port's policy refused a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The port has no rules: it is under the `deny` default, which admits no one.
    DefaultDeny,
    /// The client has no mesh identity, and every rule of the port (named) asks for one.
    Unauthenticated { authorizations: Vec<String> },
    /// No rule of the port (named) admits this client: its identity is not one they
    /// name, or it comes from outside their networks.
    NoMatch { authorizations: Vec<String> },
    /// The port's policy was not known within the wait: nothing may be admitted by a
    /// policy that may not be its own.
    PolicyUnknown,
}

/// The name a port under the `deny` default has for its policy.
pub const DEFAULT_DENY: &str = "default:deny";

/// The name of the policy of a port whose policy is not known.
pub const UNKNOWN_POLICY: &str = "unknown";

/// How the proxy names a client without a mesh identity.
pub const UNAUTHENTICATED: &str = "unauthenticated";

impl Denial {
    /// Why, in a word: `default-deny`, `unauthenticated` or `no-match`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DefaultDeny => "default-deny",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::NoMatch { .. } => "no-match",
            Self::PolicyUnknown => "policy-unknown",
        }
    }

    /// The policy the client was refused by: its rules' names, comma-separated, or
    /// [`DEFAULT_DENY`], or [`UNKNOWN_POLICY`].
    pub fn policy(&self) -> String {
        match self {
            Self::DefaultDeny => DEFAULT_DENY.to_string(),
            Self::PolicyUnknown => UNKNOWN_POLICY.to_string(),
            Self::Unauthenticated { authorizations } | Self::NoMatch { authorizations } => {
                authorizations.join(",")
            }
        }
    }
}

/// The decision of `policy` on `client`: the first rule that allows it, or why none
/// does.
pub fn authorize<'p>(policy: &'p InboundPolicy, client: Client<'_>) -> Decision<'p> {
    if let Some(rule) = policy
        .authorizations
        .iter()
        .find(|rule| allows(rule, client))
    {
        return Decision::Allowed {
            authorization: rule.name.as_str(),
        };
    }
    if policy.authorizations.is_empty() {
        return Decision::Denied(Denial::DefaultDeny);
    }
    let authorizations = policy
        .authorizations
        .iter()
        .map(|rule| rule.name.clone())
        .collect();
    let identity_required = policy
        .authorizations
        .iter()
        .all(|rule| !rule.unauthenticated);
    Decision::Denied(if client.identity.is_none() && identity_required {
        Denial::Unauthenticated { authorizations }
    } else {
        Denial::NoMatch { authorizations }
    })
}

/// A client refused at a port: what it is told, and what the refusal is counted and
/// logged with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The port the client connected to.
    pub server: u16,
    /// The client's SPIFFE id; `None` for a client without one.
    pub client: Option<String>,
    pub denial: Denial,
}

impl Refusal {
    /// The client as the proxy names it: its SPIFFE id, or [`UNAUTHENTICATED`].
    pub fn client_name(&self) -> &str {
        self.client.as_deref().unwrap_or(UNAUTHENTICATED)
    }

    /// The value of the `weft-authz` header of a refused request:
    /// `denied; server=<port>; policy=<rules, comma-separated, default:deny, or
    /// unknown>; client=<SPIFFE id, or unauthenticated>`. Visible ASCII only: any other
    /// character, and the separators `;` `,` `"` `\` within a name, read `_`.
    pub fn header(&self) -> String {
        let policy = match &self.denial {
            Denial::DefaultDeny => DEFAULT_DENY.to_string(),
            Denial::PolicyUnknown => UNKNOWN_POLICY.to_string(),
            Denial::Unauthenticated { authorizations } | Denial::NoMatch { authorizations } => {
                authorizations
                    .iter()
                    .map(|name| plain(name))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        format!(
            "denied; server={}; policy={policy}; client={}",
            self.server,
            plain(self.client_name())
        )
    }

    /// The refusal in words, one line of visible ASCII (and spaces).
    pub fn message(&self) -> String {
        let port = self.server;
        let names = |authorizations: &[String]| {
            authorizations
                .iter()
                .map(|name| plain(name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.denial {
            Denial::DefaultDeny => format!(
                "Weft denied the request: port {port} is under the default policy \
                 {DEFAULT_DENY}, which admits no client (this one is {}).",
                plain(self.client_name())
            ),
            Denial::Unauthenticated { authorizations } => format!(
                "Weft denied the request: port {port} admits only meshed clients \
                 (authorizations: {}), and this client has no mesh identity.",
                names(authorizations)
            ),
            Denial::NoMatch { authorizations } => format!(
                "Weft denied the request: no authorization of port {port} ({}) admits \
                 client {}.",
                names(authorizations),
                plain(self.client_name())
            ),
            Denial::PolicyUnknown => format!(
                "Weft denied the request: the policy of port {port} is not known yet (the \
                 operator has not sent it), and no client is admitted without it."
            ),
        }
    }
}

/// `text` with every character that is not visible ASCII, or is a separator of the
/// `weft-authz` header (`;` `,` `"` `\`), as `_`.
fn plain(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, ';' | ',' | '"' | '\\') {
                c
            } else {
                '_'
            }
        })
        .collect()
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
