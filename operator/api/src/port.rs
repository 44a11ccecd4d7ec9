//! Port numbers and port references.

use std::{borrow::Cow, fmt, num::NonZeroU16, str::FromStr};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::DNS_LABEL_PATTERN;

/// A TCP port number, 1 to 65535.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(NonZeroU16);

/// Why a value is not a port.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a port number from 1 to 65535")]
pub struct PortError(String);

impl Port {
    /// A port from a non-zero number; `None` for zero.
    pub const fn new(port: u16) -> Option<Self> {
        match NonZeroU16::new(port) {
            Some(p) => Some(Self(p)),
            None => None,
        }
    }

    /// The port number.
    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// A port from a compile-time constant, for defaults.
    pub(crate) const fn known(port: u16) -> Self {
        match Self::new(port) {
            Some(p) => p,
            None => panic!("port 0 is not a port"),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Port {
    type Err = PortError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u16>()
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| PortError(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(deserializer)?;
        u16::try_from(n)
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| serde::de::Error::custom(PortError(n.to_string())))
    }
}

impl JsonSchema for Port {
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "format": "int32",
            "minimum": 1,
            "maximum": 65535,
        })
    }
}

/// A server's port, by number (`8080`) or by the name of a container port (`http`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerPort {
    /// A port number.
    Number(Port),
    /// The name of a container port of the selected pods.
    Name(String),
}

impl fmt::Display for ServerPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(p) => p.fmt(f),
            Self::Name(n) => f.write_str(n),
        }
    }
}

impl JsonSchema for ServerPort {
    fn schema_name() -> Cow<'static, str> {
        "ServerPort".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // An int-or-string: Kubernetes allows `anyOf` of exactly these two types here.
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": DNS_LABEL_PATTERN, "maxLength": 15},
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_one_to_65535() {
        assert_eq!("8080".parse::<Port>().unwrap().get(), 8080);
        assert!("0".parse::<Port>().is_err());
        assert!("65536".parse::<Port>().is_err());
        assert!(serde_json::from_str::<Port>("0").is_err());
        assert!(serde_json::from_str::<Port>("70000").is_err());
        assert!(serde_json::from_str::<Port>("-1").is_err());
    }

    #[test]
    fn server_ports_are_numbers_or_names() {
        let n: ServerPort = serde_json::from_str("8080").unwrap();
        assert_eq!(n, ServerPort::Number(Port::known(8080)));
        let s: ServerPort = serde_json::from_str("\"http\"").unwrap();
        assert_eq!(s, ServerPort::Name("http".into()));
    }
}
