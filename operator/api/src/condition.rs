//! Kubernetes-style conditions, shared by every Weft status.
//!
//! A condition's `lastTransitionTime` changes only when its status changes, so a
//! reconcile that reaches the same verdict writes the same status (and server-side
//! apply then has nothing to do).

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The status of a condition.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// The status as Kubernetes writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(ok: bool) -> Self {
        if ok { Self::True } else { Self::False }
    }
}

/// A condition observed at `generation`, stamped with `now` as its transition time.
pub fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.as_str().to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(now),
    }
}

/// The conditions to write: `desired`, but each keeping the transition time it already
/// had in `current` when its status did not change.
pub fn carry_transition_times(current: &[Condition], desired: Vec<Condition>) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|mut c| {
            if let Some(old) = current.iter().find(|o| o.type_ == c.type_)
                && old.status == c.status
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
            c
        })
        .collect()
}

/// The condition of type `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of type `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let current = vec![
            condition("Ready", ConditionStatus::True, "A", "", Some(1), at(100)),
            condition("Accepted", ConditionStatus::True, "A", "", Some(1), at(100)),
        ];
        let desired = vec![
            condition(
                "Ready",
                ConditionStatus::True,
                "B",
                "new words",
                Some(2),
                at(200),
            ),
            condition(
                "Accepted",
                ConditionStatus::False,
                "C",
                "",
                Some(2),
                at(200),
            ),
        ];
        let merged = carry_transition_times(&current, desired);
        assert_eq!(merged[0].last_transition_time, Time(at(100)));
        assert_eq!(merged[0].reason, "B");
        assert_eq!(merged[0].observed_generation, Some(2));
        assert_eq!(merged[1].last_transition_time, Time(at(200)));
        assert!(is_true(&merged, "Ready"));
        assert!(!is_true(&merged, "Accepted"));
        assert!(!is_true(&merged, "Missing"));
    }
}
