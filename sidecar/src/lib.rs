//! The contract between the injector and the proxy it injects: the `WEFT_PROXY_*`
//! environment variables the injector writes into the proxy's container and the proxy
//! reads at start, each a named constant with its default beside it (ports, the
//! proxy's uid, the paths of the files mounted for it), and the parser that says which
//! values the proxy accepts.
//!
//! Both sides use this one parser: the proxy to start, the injector to check a pod's
//! environment before patching it, so a pod is never injected with a proxy that would
//! refuse to start. It is its own small crate so that the operator depends on it and
//! not on the whole proxy.
//!
//! The proxy's `config` module re-exports this crate; only the conversion of a
//! [`DefaultPolicy`] into the proxy's own policy type stays in the proxy.
//!
//! Parsing reports every bad variable at once (the proxy then exits with code 64,
//! `EX_USAGE`), so a broken injection template is fixed in one round, not one variable
//! at a time.

use std::{fmt, net::SocketAddr, time::Duration};

pub mod probe;

pub const ENV_LOG: &str = "WEFT_PROXY_LOG";
pub const DEFAULT_LOG: &str = "warn,weft=info";

pub const ENV_LOG_FORMAT: &str = "WEFT_PROXY_LOG_FORMAT";
pub const DEFAULT_LOG_FORMAT: &str = "plain";

pub const ENV_ADMIN_LISTEN_ADDR: &str = "WEFT_PROXY_ADMIN_LISTEN_ADDR";
pub const DEFAULT_ADMIN_LISTEN_ADDR: &str = "0.0.0.0:4191";

pub const ENV_INBOUND_LISTEN_ADDR: &str = "WEFT_PROXY_INBOUND_LISTEN_ADDR";
pub const DEFAULT_INBOUND_LISTEN_ADDR: &str = "0.0.0.0:4143";

pub const ENV_OUTBOUND_LISTEN_ADDR: &str = "WEFT_PROXY_OUTBOUND_LISTEN_ADDR";
pub const DEFAULT_OUTBOUND_LISTEN_ADDR: &str = "127.0.0.1:4140";

/// The operator's proxy API, `host:port`.
pub const ENV_CONTROL_ADDR: &str = "WEFT_PROXY_CONTROL_ADDR";
pub const DEFAULT_CONTROL_ADDR: &str = "weft-proxy-api.weft-system.svc.cluster.local:8090";

/// The proxy's mesh identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`
/// (the injector builds it from the pod's namespace and ServiceAccount). Empty: the
/// proxy does not ask for a certificate and never becomes ready.
pub const ENV_IDENTITY: &str = "WEFT_PROXY_IDENTITY";
pub const DEFAULT_IDENTITY: &str = "";

/// The projected ServiceAccount token (audience `weft.dev/identity`) sent with `Certify`.
pub const ENV_IDENTITY_TOKEN_FILE: &str = "WEFT_PROXY_IDENTITY_TOKEN_FILE";
pub const DEFAULT_IDENTITY_TOKEN_FILE: &str = "/var/run/secrets/weft.dev/identity/token";

/// The trust bundle (PEM), mounted from the namespace's ConfigMap.
pub const ENV_TRUST_BUNDLE_FILE: &str = "WEFT_PROXY_TRUST_BUNDLE_FILE";
pub const DEFAULT_TRUST_BUNDLE_FILE: &str = "/var/run/weft.dev/trust/ca-bundle.pem";

/// How long protocol detection waits for a client's first bytes before treating the
/// connection as opaque TCP (so server-speaks-first protocols never hang).
pub const ENV_DETECT_TIMEOUT: &str = "WEFT_PROXY_DETECT_TIMEOUT";
pub const DEFAULT_DETECT_TIMEOUT: &str = "10s";

/// How long in-flight work may drain after SIGTERM.
pub const ENV_SHUTDOWN_GRACE_PERIOD: &str = "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD";
pub const DEFAULT_SHUTDOWN_GRACE_PERIOD: &str = "30s";

/// Inbound ports proxied as opaque TCP, comma-separated.
pub const ENV_INBOUND_OPAQUE_PORTS: &str = "WEFT_PROXY_INBOUND_OPAQUE_PORTS";
pub const DEFAULT_INBOUND_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

/// The proxy's user id: its own traffic is never captured (`weft-proxy init`).
pub const ENV_UID: &str = "WEFT_PROXY_UID";
pub const DEFAULT_UID: &str = "2102";

/// Inbound ports never captured, comma-separated (`weft-proxy init`).
pub const ENV_SKIP_INBOUND_PORTS: &str = "WEFT_PROXY_SKIP_INBOUND_PORTS";
pub const DEFAULT_SKIP_INBOUND_PORTS: &str = "";

/// Outbound ports never captured, comma-separated (`weft-proxy init`).
pub const ENV_SKIP_OUTBOUND_PORTS: &str = "WEFT_PROXY_SKIP_OUTBOUND_PORTS";
pub const DEFAULT_SKIP_OUTBOUND_PORTS: &str = "";

/// Outbound IPv4 subnets never captured, comma-separated CIDRs (`weft-proxy init`).
pub const ENV_SKIP_OUTBOUND_SUBNETS: &str = "WEFT_PROXY_SKIP_OUTBOUND_SUBNETS";
pub const DEFAULT_SKIP_OUTBOUND_SUBNETS: &str = "";

/// The policy of inbound ports no authorization selects.
/// The proxy's pod name (set by the injector from the downward API); without it the
/// proxy streams nothing from the operator.
pub const ENV_POD_NAME: &str = "WEFT_PROXY_POD_NAME";
pub const DEFAULT_POD_NAME: &str = "";

/// The TCP ports the pod's containers declare, whose inbound policy the proxy follows.
pub const ENV_INBOUND_PORTS: &str = "WEFT_PROXY_INBOUND_PORTS";
pub const DEFAULT_INBOUND_PORTS: &str = "";

/// The pod's own address (set by the injector from the downward API): where the
/// proxy performs the application's probes, as the kubelet would.
pub const ENV_POD_IP: &str = "WEFT_PROXY_POD_IP";
pub const DEFAULT_POD_IP: &str = "";

pub use probe::{DEFAULT_PROBES, ENV_PROBES};

/// `true`: inbound connections go to the application on loopback; `false` (the
/// default): on the pod's address, so listeners bound to loopback stay private to the
/// pod.
pub const ENV_INBOUND_TO_LOOPBACK: &str = "WEFT_PROXY_INBOUND_TO_LOOPBACK";
pub const DEFAULT_INBOUND_TO_LOOPBACK: &str = "false";

/// The source address of the proxy's own connections to its application on the
/// pod's address (the probes it performs): the capture rules let connections from it
/// through, where any other connection of the proxy to its own pod goes to the
/// inbound side.
pub const PASSTHROUGH_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 6);

/// How long a destination's resolution is kept after its last use.
pub const ENV_OUTBOUND_IDLE_TIMEOUT: &str = "WEFT_PROXY_OUTBOUND_IDLE_TIMEOUT";
pub const DEFAULT_OUTBOUND_IDLE_TIMEOUT: &str = "60s";

/// How long a connection to a destination seen for the first time waits for the
/// operator's answer before it is closed (never sent in plaintext on a guess). The
/// Mesh's `proxy.resolveTimeout`.
pub const ENV_RESOLVE_TIMEOUT: &str = "WEFT_PROXY_RESOLVE_TIMEOUT";
pub const DEFAULT_RESOLVE_TIMEOUT: &str = "5s";

pub const ENV_DEFAULT_INBOUND_POLICY: &str = "WEFT_PROXY_DEFAULT_INBOUND_POLICY";
pub const DEFAULT_DEFAULT_INBOUND_POLICY: &str = "all-unauthenticated";

/// The proxy's whole configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub log: String,
    pub log_format: LogFormat,
    pub admin_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub control_addr: ControlAddr,
    pub identity: Option<String>,
    pub identity_token_file: String,
    pub trust_bundle_file: String,
    pub detect_timeout: Duration,
    pub shutdown_grace_period: Duration,
    pub inbound_opaque_ports: Vec<u16>,
    pub default_inbound_policy: DefaultPolicy,
    pub uid: u32,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_subnets: Vec<String>,
    pub pod_name: Option<String>,
    pub inbound_ports: Vec<u16>,
    pub outbound_idle_timeout: Duration,
    pub resolve_timeout: Duration,
    pub pod_ip: Option<std::net::IpAddr>,
    pub inbound_to_loopback: bool,
    pub probes: probe::Probes,
}

/// A log format.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// The default inbound policy, as the Mesh names them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    AllUnauthenticated,
    AllAuthenticated,
    ClusterAuthenticated,
    Deny,
}

/// The operator's address: a host name or IP, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlAddr {
    pub host: String,
    pub port: u16,
}

/// One bad variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidVar {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

/// Every bad variable found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<InvalidVar>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} bad variables):", self.0.len())?;
        for var in &self.0 {
            writeln!(f, "  {}={:?}: {}", var.name, var.value, var.reason)?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::parse(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, reporting every bad variable.
    pub fn parse(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut vars = Vars {
            lookup,
            invalid: Vec::new(),
        };
        let log = vars.get(ENV_LOG, DEFAULT_LOG, parse_log);
        let log_format = vars.get(ENV_LOG_FORMAT, DEFAULT_LOG_FORMAT, parse_log_format);
        let admin_addr = vars.get(
            ENV_ADMIN_LISTEN_ADDR,
            DEFAULT_ADMIN_LISTEN_ADDR,
            parse_socket_addr,
        );
        let inbound_addr = vars.get(
            ENV_INBOUND_LISTEN_ADDR,
            DEFAULT_INBOUND_LISTEN_ADDR,
            parse_socket_addr,
        );
        let outbound_addr = vars.get(
            ENV_OUTBOUND_LISTEN_ADDR,
            DEFAULT_OUTBOUND_LISTEN_ADDR,
            parse_socket_addr,
        );
        let control_addr = vars.get(ENV_CONTROL_ADDR, DEFAULT_CONTROL_ADDR, parse_control_addr);
        let identity = vars.get(ENV_IDENTITY, DEFAULT_IDENTITY, parse_identity);
        let identity_token_file = vars.get(
            ENV_IDENTITY_TOKEN_FILE,
            DEFAULT_IDENTITY_TOKEN_FILE,
            parse_path,
        );
        let trust_bundle_file =
            vars.get(ENV_TRUST_BUNDLE_FILE, DEFAULT_TRUST_BUNDLE_FILE, parse_path);
        let detect_timeout = vars.get(ENV_DETECT_TIMEOUT, DEFAULT_DETECT_TIMEOUT, parse_duration);
        let shutdown_grace_period = vars.get(
            ENV_SHUTDOWN_GRACE_PERIOD,
            DEFAULT_SHUTDOWN_GRACE_PERIOD,
            parse_duration,
        );
        let inbound_opaque_ports = vars.get(
            ENV_INBOUND_OPAQUE_PORTS,
            DEFAULT_INBOUND_OPAQUE_PORTS,
            parse_ports,
        );
        let default_inbound_policy = vars.get(
            ENV_DEFAULT_INBOUND_POLICY,
            DEFAULT_DEFAULT_INBOUND_POLICY,
            parse_default_policy,
        );

        let uid = vars.get(ENV_UID, DEFAULT_UID, parse_uid);
        let skip_inbound_ports = vars.get(
            ENV_SKIP_INBOUND_PORTS,
            DEFAULT_SKIP_INBOUND_PORTS,
            parse_ports,
        );
        let skip_outbound_ports = vars.get(
            ENV_SKIP_OUTBOUND_PORTS,
            DEFAULT_SKIP_OUTBOUND_PORTS,
            parse_ports,
        );
        let skip_outbound_subnets = vars.get(
            ENV_SKIP_OUTBOUND_SUBNETS,
            DEFAULT_SKIP_OUTBOUND_SUBNETS,
            parse_subnets,
        );
        let pod_name = vars.get(ENV_POD_NAME, DEFAULT_POD_NAME, parse_pod_name);
        let inbound_ports = vars.get(ENV_INBOUND_PORTS, DEFAULT_INBOUND_PORTS, parse_ports);
        let outbound_idle_timeout = vars.get(
            ENV_OUTBOUND_IDLE_TIMEOUT,
            DEFAULT_OUTBOUND_IDLE_TIMEOUT,
            parse_duration,
        );

        let resolve_timeout =
            vars.get(ENV_RESOLVE_TIMEOUT, DEFAULT_RESOLVE_TIMEOUT, parse_duration);
        let pod_ip = vars.get(ENV_POD_IP, DEFAULT_POD_IP, parse_optional_ip);
        let inbound_to_loopback = vars.get(
            ENV_INBOUND_TO_LOOPBACK,
            DEFAULT_INBOUND_TO_LOOPBACK,
            |s| match s {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err("expected true or false".into()),
            },
        );
        let probes = vars.get(ENV_PROBES, DEFAULT_PROBES, probe::parse);

        if let (Some(admin), Some(inbound), Some(outbound)) =
            (admin_addr, inbound_addr, outbound_addr)
        {
            let ports = [admin.port(), inbound.port(), outbound.port()];
            if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
                vars.invalid.push(InvalidVar {
                    name: ENV_ADMIN_LISTEN_ADDR,
                    value: admin.to_string(),
                    reason: format!(
                        "the admin, inbound and outbound ports must differ (have {}, {}, {})",
                        ports[0], ports[1], ports[2]
                    ),
                });
            }
        }

        if !vars.invalid.is_empty() {
            return Err(ConfigError(vars.invalid));
        }
        // Every variable parsed (a bad one was recorded above), so each is `Some`.
        let config = (|| {
            Some(Config {
                log: log?,
                log_format: log_format?,
                admin_addr: admin_addr?,
                inbound_addr: inbound_addr?,
                outbound_addr: outbound_addr?,
                control_addr: control_addr?,
                identity: identity?,
                identity_token_file: identity_token_file?,
                trust_bundle_file: trust_bundle_file?,
                detect_timeout: detect_timeout?,
                shutdown_grace_period: shutdown_grace_period?,
                inbound_opaque_ports: inbound_opaque_ports?,
                default_inbound_policy: default_inbound_policy?,
                uid: uid?,
                skip_inbound_ports: skip_inbound_ports?,
                skip_outbound_ports: skip_outbound_ports?,
                skip_outbound_subnets: skip_outbound_subnets?,
                pod_name: pod_name?,
                inbound_ports: inbound_ports?,
                outbound_idle_timeout: outbound_idle_timeout?,
                resolve_timeout: resolve_timeout?,
                pod_ip: pod_ip?,
                inbound_to_loopback: inbound_to_loopback?,
                probes: probes?,
            })
        })();
        config.ok_or(ConfigError(vars.invalid))
    }
}

/// An IP address, or none when empty.
fn parse_optional_ip(s: &str) -> Result<Option<std::net::IpAddr>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        s.parse()
            .map(Some)
            .map_err(|_| "expected an IP address".to_string())
    }
}

/// The variables, and the bad ones found so far.
struct Vars<L> {
    lookup: L,
    invalid: Vec<InvalidVar>,
}

impl<L: Fn(&str) -> Option<String>> Vars<L> {
    /// The parsed value of `name`, or of `default` when unset; `None` (and the variable
    /// recorded as bad) when the value does not parse.
    fn get<T>(
        &mut self,
        name: &'static str,
        default: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = (self.lookup)(name).unwrap_or_else(|| default.to_string());
        match parse(&value) {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                self.invalid.push(InvalidVar {
                    name,
                    value,
                    reason,
                });
                None
            }
        }
    }
}

fn parse_log(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_:=,.-[]{}".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected a log filter such as `info` or `warn,weft=debug`".into())
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "plain" => Ok(LogFormat::Plain),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected `plain` or `json`".into()),
    }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "expected an address and port such as 0.0.0.0:4143 or [::]:4143".into())
}

fn parse_control_addr(s: &str) -> Result<ControlAddr, String> {
    let err = || {
        "expected host:port, such as weft-proxy-api.weft-system.svc.cluster.local:8090".to_string()
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
    match port.parse::<u16>() {
        Ok(port) if port != 0 && valid_host => Ok(ControlAddr {
            host: host.to_string(),
            port,
        }),
        _ => Err(err()),
    }
}

/// A workload SPIFFE id, or nothing.
fn parse_pod_name(s: &str) -> Result<Option<String>, String> {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.is_empty() {
        Ok(None)
    } else if s.len() <= 253 && s.split('.').all(label) {
        Ok(Some(s.to_string()))
    } else {
        Err("expected a pod name (a DNS subdomain)".into())
    }
}

fn parse_identity(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.parse::<weft_proxy_api::SpiffeId>().is_ok() {
        Ok(Some(s.to_string()))
    } else {
        Err("expected spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>".into())
    }
}

fn parse_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_string())
    } else {
        Err("expected an absolute path".into())
    }
}

/// A duration as `<number><unit>`, with unit `ms`, `s`, `m` or `h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || "expected a duration such as 500ms, 10s, 5m or 1h".to_string();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| err())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(err)
}

fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|p| match p.trim().parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(format!(
                "{:?} is not a port from 1 to 65535 (expected a list such as 3306,5432)",
                p.trim()
            )),
        })
        .collect()
}

fn parse_uid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(uid) if uid != 0 => Ok(uid),
        _ => Err("expected a non-root user id such as 2102".into()),
    }
}

/// IPv4 CIDRs, comma-separated.
fn parse_subnets(s: &str) -> Result<Vec<String>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|cidr| {
            let cidr = cidr.trim();
            let valid = cidr.split_once('/').is_some_and(|(ip, len)| {
                ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
            });
            if valid {
                Ok(cidr.to_string())
            } else {
                Err(format!("{cidr:?} is not an IPv4 CIDR such as 10.0.0.0/8"))
            }
        })
        .collect()
}

impl DefaultPolicy {
    /// The policy's name, as the Mesh spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::Deny => "deny",
        }
    }
}

fn parse_default_policy(s: &str) -> Result<DefaultPolicy, String> {
    match s {
        "all-unauthenticated" => Ok(DefaultPolicy::AllUnauthenticated),
        "all-authenticated" => Ok(DefaultPolicy::AllAuthenticated),
        "cluster-authenticated" => Ok(DefaultPolicy::ClusterAuthenticated),
        "deny" => Ok(DefaultPolicy::Deny),
        _ => Err(
            "expected all-unauthenticated, all-authenticated, cluster-authenticated or deny".into(),
        ),
    }
}

#[cfg(test)]
mod tests;
