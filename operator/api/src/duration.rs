//! A non-negative duration written the way Kubernetes writes them (`90s`, `1h30m`, `24h`).
//!
//! The schema restricts the text to Go `time.Duration` syntax without a sign, so the API
//! server refuses negative or unparsable values with the field named, and CEL rules can
//! compare fields with `duration(...)`. The original text is kept, so a resource
//! round-trips unchanged (a GitOps tool never sees `24h` come back as `86400s`).

use std::{borrow::Cow, fmt, str::FromStr, time};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The schema pattern of a [`Duration`]: one or more `<number><unit>` with the units of
/// Go's `time.ParseDuration`, and no sign.
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// A non-negative duration in Go `time.Duration` syntax, such as `30s` or `1h30m`.
#[derive(Clone, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: time::Duration,
}

/// Why a text is not a [`Duration`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is negative; a duration here must be zero or more")]
    Negative(String),
    #[error("{text:?} is not a duration like 30s or 1h30m: {reason}")]
    Invalid { text: String, reason: String },
}

impl Duration {
    /// The duration as a [`std::time::Duration`].
    pub fn get(&self) -> time::Duration {
        self.value
    }

    /// The text the duration was written as.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A duration of whole hours, written `<n>h`.
    pub fn from_hours(hours: u64) -> Self {
        Self {
            text: format!("{hours}h"),
            value: time::Duration::from_secs(hours * 3600),
        }
    }

    /// A duration of whole seconds, written `<n>s`.
    pub fn from_secs(secs: u64) -> Self {
        Self {
            text: format!("{secs}s"),
            value: time::Duration::from_secs(secs),
        }
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // Like the schema pattern: every number carries its unit (Go takes a bare `0`).
        if !text.ends_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(DurationError::Invalid {
                text: text.to_string(),
                reason: "missing a unit (ns, us, ms, s, m or h)".to_string(),
            });
        }
        let parsed = kube::core::Duration::from_str(text).map_err(|e| DurationError::Invalid {
            text: text.to_string(),
            reason: e.to_string(),
        })?;
        if parsed.is_negative() {
            return Err(DurationError::Negative(text.to_string()));
        }
        Ok(Self {
            text: text.to_string(),
            value: parsed.into(),
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({})", self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations_and_keeps_the_text() {
        let d: Duration = "1h30m".parse().unwrap();
        assert_eq!(d.get(), time::Duration::from_secs(5400));
        assert_eq!(d.to_string(), "1h30m");
        let d: Duration = "250ms".parse().unwrap();
        assert_eq!(d.get(), time::Duration::from_millis(250));
    }

    #[test]
    fn refuses_negative_and_garbage() {
        assert!(matches!(
            "-5m".parse::<Duration>(),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            "soon".parse::<Duration>(),
            Err(DurationError::Invalid { .. })
        ));
        assert!(matches!(
            "10".parse::<Duration>(),
            Err(DurationError::Invalid { .. })
        ));
        assert!(matches!(
            "".parse::<Duration>(),
            Err(DurationError::Invalid { .. })
        ));
    }

    #[test]
    fn serde_round_trips_the_text() {
        let d: Duration = serde_json::from_str("\"24h\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"24h\"");
        assert!(serde_json::from_str::<Duration>("\"-1h\"").is_err());
    }
}
