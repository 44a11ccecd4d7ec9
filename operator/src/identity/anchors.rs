//! The set of trust anchors: the current one (which signs the issuer), the next one
//! during a rotation, and the previous one until its last leaf has expired. The trust
//! bundle is all of them.
//!
//! A generated set is kept in one Secret, so every change is a single atomic write:
//! `tls.crt`/`tls.key` (current), `next.crt`/`next.key`, `previous.crt` (no key: it
//! signs nothing any more), and the times of the rotation as annotations.

use std::{collections::BTreeMap, time::Duration};

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    Ca, CaError,
    rotation::{AnchorTimes, Policy, Step, retire_delay},
};

pub const CURRENT_CERT: &str = "tls.crt";
pub const CURRENT_KEY: &str = "tls.key";
pub const NEXT_CERT: &str = "next.crt";
pub const NEXT_KEY: &str = "next.key";
pub const PREVIOUS_CERT: &str = "previous.crt";
pub const NEXT_PUBLISHED_AT: &str = "weft.dev/next-anchor-published-at";
pub const PREVIOUS_RETIRE_AFTER: &str = "weft.dev/previous-anchor-retire-after";

/// The anchors of the mesh.
#[derive(Debug)]
pub struct AnchorSet {
    pub current: Ca,
    /// The incoming anchor and when it was added to the bundle.
    pub next: Option<(Ca, OffsetDateTime)>,
    /// The outgoing anchor (PEM) and when it may leave the bundle.
    pub previous: Option<(String, OffsetDateTime)>,
}

impl AnchorSet {
    /// A set of just `current`.
    pub fn new(current: Ca) -> Self {
        Self {
            current,
            next: None,
            previous: None,
        }
    }

    /// Every anchor proxies must trust, PEM: current, next, previous.
    pub fn bundle_pem(&self) -> String {
        let mut bundle = self.current.cert_pem().to_string();
        if let Some((next, _)) = &self.next {
            bundle.push_str(next.cert_pem());
        }
        if let Some((previous, _)) = &self.previous {
            bundle.push_str(previous);
        }
        bundle
    }

    /// The times rotation decides on.
    pub fn times(&self) -> AnchorTimes {
        AnchorTimes {
            current_not_before: self.current.not_before(),
            current_not_after: self.current.not_after(),
            next_published_at: self.next.as_ref().map(|(_, at)| *at),
            previous_retire_after: self.previous.as_ref().map(|(_, at)| *at),
        }
    }

    /// The set after `step`. `Start` generates the next anchor for `trust_domain`, valid
    /// for `lifetime`.
    pub fn apply(
        self,
        step: Step,
        policy: &Policy,
        trust_domain: &str,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, CaError> {
        Ok(match step {
            Step::Wait => self,
            Step::Start => Self {
                next: Some((Ca::generate_anchor(trust_domain, lifetime, now)?, now)),
                ..self
            },
            Step::Promote => match self.next {
                Some((next, _)) => Self {
                    previous: Some((
                        self.current.cert_pem().to_string(),
                        now + retire_delay(policy),
                    )),
                    current: next,
                    next: None,
                },
                None => Self {
                    current: self.current,
                    next: None,
                    previous: self.previous,
                },
            },
            Step::Retire => Self {
                previous: None,
                ..self
            },
        })
    }

    /// The Secret's data and annotations for this set.
    pub fn to_secret(&self) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, String>) {
        let mut data = BTreeMap::new();
        let mut annotations = BTreeMap::new();
        data.insert(
            CURRENT_CERT.into(),
            self.current.cert_pem().as_bytes().to_vec(),
        );
        data.insert(
            CURRENT_KEY.into(),
            self.current.key_pem().as_bytes().to_vec(),
        );
        if let Some((next, at)) = &self.next {
            data.insert(NEXT_CERT.into(), next.cert_pem().as_bytes().to_vec());
            data.insert(NEXT_KEY.into(), next.key_pem().as_bytes().to_vec());
            annotations.insert(NEXT_PUBLISHED_AT.into(), rfc3339(*at));
        }
        if let Some((previous, at)) = &self.previous {
            data.insert(PREVIOUS_CERT.into(), previous.as_bytes().to_vec());
            annotations.insert(PREVIOUS_RETIRE_AFTER.into(), rfc3339(*at));
        }
        (data, annotations)
    }

    /// The set a Secret holds. A malformed next or previous anchor is dropped (the
    /// rotation step then starts over), but a malformed current anchor is an error.
    pub fn from_secret(
        data: &BTreeMap<String, Vec<u8>>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self, CaError> {
        let text = |key: &str| {
            data.get(key)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let current = Ca::from_pem(
            &text(CURRENT_CERT).unwrap_or_default(),
            &text(CURRENT_KEY).unwrap_or_default(),
        )?;
        let time = |key: &str| {
            annotations
                .get(key)
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        };
        let next = match (text(NEXT_CERT), text(NEXT_KEY), time(NEXT_PUBLISHED_AT)) {
            (Some(cert), Some(key), Some(at)) => Ca::from_pem(&cert, &key).ok().map(|ca| (ca, at)),
            _ => None,
        };
        let previous = match (text(PREVIOUS_CERT), time(PREVIOUS_RETIRE_AFTER)) {
            (Some(cert), Some(at)) if cert.contains("BEGIN CERTIFICATE") => Some((cert, at)),
            _ => None,
        };
        Ok(Self {
            current,
            next,
            previous,
        })
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn policy() -> Policy {
        Policy {
            automatic: true,
            propagation: 2 * MIN,
            workload_lifetime: MIN,
        }
    }

    fn now() -> OffsetDateTime {
        // Whole seconds, as the annotations keep them.
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap()
    }

    #[test]
    fn a_whole_rotation_keeps_every_live_anchor_in_the_bundle() {
        let t0 = now();
        let a = Ca::generate_anchor("cluster.local", 60 * MIN, t0).unwrap();
        let a_pem = a.cert_pem().to_string();
        let set = AnchorSet::new(a);
        assert_eq!(set.bundle_pem(), a_pem);

        let set = set
            .apply(Step::Start, &policy(), "cluster.local", 60 * MIN, t0)
            .unwrap();
        let b_pem = set.next.as_ref().unwrap().0.cert_pem().to_string();
        assert_eq!(set.current.cert_pem(), a_pem, "the old anchor still signs");
        assert_eq!(set.bundle_pem(), format!("{a_pem}{b_pem}"));

        let t1 = t0 + 2 * MIN;
        let set = set
            .apply(Step::Promote, &policy(), "cluster.local", 60 * MIN, t1)
            .unwrap();
        assert_eq!(set.current.cert_pem(), b_pem, "the new anchor signs");
        assert_eq!(
            set.previous.as_ref().unwrap().1,
            t1 + 2 * MIN,
            "one workload lifetime plus margin"
        );
        assert_eq!(set.bundle_pem(), format!("{b_pem}{a_pem}"));

        let set = set
            .apply(
                Step::Retire,
                &policy(),
                "cluster.local",
                60 * MIN,
                t1 + 2 * MIN,
            )
            .unwrap();
        assert_eq!(set.bundle_pem(), b_pem);
    }

    #[test]
    fn the_set_round_trips_through_a_secret() {
        let t0 = now();
        let a = Ca::generate_anchor("cluster.local", 60 * MIN, t0).unwrap();
        let set = AnchorSet::new(a)
            .apply(Step::Start, &policy(), "cluster.local", 60 * MIN, t0)
            .unwrap()
            .apply(
                Step::Promote,
                &policy(),
                "cluster.local",
                60 * MIN,
                t0 + 2 * MIN,
            )
            .unwrap()
            .apply(
                Step::Start,
                &policy(),
                "cluster.local",
                60 * MIN,
                t0 + 3 * MIN,
            )
            .unwrap();
        let (data, annotations) = set.to_secret();
        let again = AnchorSet::from_secret(&data, &annotations).unwrap();
        assert_eq!(again.bundle_pem(), set.bundle_pem());
        assert_eq!(again.times(), set.times());
    }

    #[test]
    fn a_broken_current_anchor_is_an_error_and_broken_extras_are_dropped() {
        assert!(AnchorSet::from_secret(&BTreeMap::new(), &BTreeMap::new()).is_err());
        let a = Ca::generate_anchor("cluster.local", 60 * MIN, now()).unwrap();
        let (mut data, mut annotations) = AnchorSet::new(a).to_secret();
        data.insert(NEXT_CERT.into(), b"garbage".to_vec());
        data.insert(NEXT_KEY.into(), b"garbage".to_vec());
        annotations.insert(NEXT_PUBLISHED_AT.into(), "not a time".into());
        data.insert(PREVIOUS_CERT.into(), b"garbage".to_vec());
        let set = AnchorSet::from_secret(&data, &annotations).unwrap();
        assert!(set.next.is_none() && set.previous.is_none());
    }
}
