//! Service authorities: what a proxy may ask the index to resolve, parsed from the
//! `host:port` it names.

use std::net::SocketAddr;

use super::key::Key;
use crate::identity::spiffe::is_dns_label;

/// The longest authority accepted (a DNS name is at most 253 bytes, plus a port).
pub const MAX_AUTHORITY: usize = 260;

/// What a proxy asked to resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A ClusterIP and port.
    Address(SocketAddr),
    /// A Service by name, and a port.
    Name { service: Key, port: u16 },
}

/// Why an authority cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("the authority is longer than {MAX_AUTHORITY} bytes")]
    TooLong,
    #[error("{0:?} is not host:port")]
    NoPort(String),
    #[error("{0:?} is not a port from 1 to 65535")]
    BadPort(String),
    #[error("{0:?} is neither an IP address nor <service>.<namespace>[.svc[.<cluster-domain>]]")]
    BadHost(String),
}

/// Parses `ip:port`, `[ipv6]:port` or `<service>.<namespace>[.svc[.<domain>]]:port`.
pub fn parse_authority(authority: &str, cluster_domain: &str) -> Result<Target, AuthorityError> {
    if authority.len() > MAX_AUTHORITY {
        return Err(AuthorityError::TooLong);
    }
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(AuthorityError::BadPort("0".into()));
        }
        return Ok(Target::Address(addr));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| AuthorityError::NoPort(authority.into()))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| AuthorityError::BadPort(port.into()))?;
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let bad = || AuthorityError::BadHost(host.clone());
    let rest = host
        .strip_suffix(&format!(".svc.{cluster_domain}"))
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(&host);
    let (name, namespace) = rest.split_once('.').ok_or_else(bad)?;
    if !is_dns_label(name) || !is_dns_label(namespace) {
        return Err(bad());
    }
    Ok(Target::Name {
        service: Key::new(namespace, name),
        port,
    })
}
