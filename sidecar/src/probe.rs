//! The application's probes, as the proxy performs them.
//!
//! A kubelet probe that reaches the application through the proxy's inbound side means
//! little: the proxy accepts every captured port, so a `tcpSocket` probe passes with
//! the application dead, and the node would need an exemption from the port's policy.
//! So the injector rewrites each `httpGet` (scheme HTTP), `tcpSocket` and `grpc` probe
//! of the application's containers into an `httpGet` of the proxy's admin port, path
//! [`path`]`(container, kind)`, keeping its timings; it hands the original checks to the
//! proxy in [`ENV_PROBES`], and the proxy performs each against the application itself
//! (a TCP connect, an HTTP GET with the original headers, a gRPC health check) and
//! answers with the result. `exec` probes, HTTPS probes and probes of another host are
//! left as they are.
//!
//! The proxy performs only the checks listed here: the admin port cannot be made to
//! probe anything else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The checks, by [`key`]: JSON of [`Probes`].
pub const ENV_PROBES: &str = "WEFT_PROXY_PROBES";
pub const DEFAULT_PROBES: &str = "";

/// Where the admin port answers probes.
pub const PATH_PREFIX: &str = "/probe/";

/// The checks, by [`key`].
pub type Probes = BTreeMap<String, Probe>;

/// One original probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub check: Check,
    /// The probe's `timeoutSeconds` (the kubelet's default, 1, when unset).
    pub timeout_seconds: u32,
}

/// What a probe checks, on the application's pod address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Check {
    /// A TCP connection can be made.
    Tcp { port: u16 },
    /// A GET of `path` answers 200–399.
    Http {
        port: u16,
        path: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
    },
    /// `grpc.health.v1.Health/Check` of `service` answers SERVING.
    Grpc {
        port: u16,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        service: String,
    },
}

/// The key of `container`'s probe of `kind` (`liveness`, `readiness`, `startup`).
pub fn key(container: &str, kind: &str) -> String {
    format!("{container}/{kind}")
}

/// The admin path the rewritten probe asks.
pub fn path(container: &str, kind: &str) -> String {
    format!("{PATH_PREFIX}{}", key(container, kind))
}

/// The checks in `text` (empty: none).
pub fn parse(text: &str) -> Result<Probes, String> {
    if text.trim().is_empty() {
        return Ok(Probes::new());
    }
    serde_json::from_str(text).map_err(|e| format!("expected the probes as JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_through_the_environment() {
        let probes = Probes::from([
            (
                key("app", "readiness"),
                Probe {
                    check: Check::Http {
                        port: 8080,
                        path: "/healthz?full=1".into(),
                        headers: vec![("X-Probe".into(), "yes".into())],
                    },
                    timeout_seconds: 3,
                },
            ),
            (
                key("app", "liveness"),
                Probe {
                    check: Check::Tcp { port: 8080 },
                    timeout_seconds: 1,
                },
            ),
            (
                key("grpc", "startup"),
                Probe {
                    check: Check::Grpc {
                        port: 9090,
                        service: String::new(),
                    },
                    timeout_seconds: 1,
                },
            ),
        ]);
        let text = serde_json::to_string(&probes).unwrap();
        assert_eq!(parse(&text), Ok(probes));
        assert_eq!(parse(""), Ok(Probes::new()));
        assert!(parse("{\"app/readiness\": {\"check\": {\"type\": \"exec\"}}}").is_err());
        assert_eq!(path("app", "readiness"), "/probe/app/readiness");
    }
}
