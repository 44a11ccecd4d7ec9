//! What a config version is: a short hash of what was sent, so the operator and a
//! proxy agree that an acknowledgement names the update it answers, and an update
//! that changes nothing keeps its version.

use std::fmt;

/// The version of one streamed update (a policy, a resolution), as the operator
/// derives it and a proxy acknowledges it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigVersion(String);

impl ConfigVersion {
    /// The version of content `bytes`: the first six bytes of their SHA-256, in hex.
    pub fn of(bytes: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        Self(
            digest.as_ref()[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for ConfigVersion {
    /// A version as it travels in a message.
    fn from(version: String) -> Self {
        Self(version)
    }
}

impl From<ConfigVersion> for String {
    fn from(version: ConfigVersion) -> Self {
        version.0
    }
}

impl fmt::Display for ConfigVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_a_short_hash_of_the_content() {
        let one = ConfigVersion::of(b"policy");
        assert_eq!(one.as_str().len(), 12);
        assert_eq!(one, ConfigVersion::of(b"policy"));
        assert_ne!(one, ConfigVersion::of(b"policy 2"));
    }
}
