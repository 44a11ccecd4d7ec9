//! When to rotate the generated trust anchor, as a pure function of times.
//!
//! Rotation never leaves a proxy unable to verify a peer:
//!
//! 1. **Start**: once the current anchor is in the last third of its life (or closer to
//!    its end than the rotation itself takes), a new anchor is generated and added to
//!    the trust bundle next to the current one. Nothing signs with it yet.
//! 2. **Promote**: after the bundle had time to reach every proxy (`propagation`: the
//!    kubelet's ConfigMap sync), the new anchor becomes current and a new issuer is
//!    signed by it. Leaves signed by the old issuer still verify, since the old anchor
//!    is still in the bundle.
//! 3. **Retire**: once every leaf the old issuer signed has expired (one workload
//!    lifetime after the promotion, plus a margin for skew), the old anchor leaves the
//!    bundle.

use std::time::Duration;

use time::OffsetDateTime;

/// Slack for clocks and for a leaf signed just before the promotion.
pub const MARGIN: Duration = Duration::from_secs(60);

/// The times that decide the next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorTimes {
    /// The current (signing) anchor's validity.
    pub current_not_before: OffsetDateTime,
    pub current_not_after: OffsetDateTime,
    /// When the next anchor was added to the bundle, if a rotation is under way.
    pub next_published_at: Option<OffsetDateTime>,
    /// When the previous anchor may leave the bundle, if one is still in it.
    pub previous_retire_after: Option<OffsetDateTime>,
}

/// How rotation is paced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub automatic: bool,
    /// How long a new bundle takes to reach every proxy.
    pub propagation: Duration,
    /// The longest a workload certificate lives.
    pub workload_lifetime: Duration,
}

/// The next thing to do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing now.
    Wait,
    /// Generate the next anchor and add it to the bundle.
    Start,
    /// Make the next anchor current and sign a new issuer with it.
    Promote,
    /// Drop the previous anchor from the bundle.
    Retire,
}

/// How long after a promotion the previous anchor may leave the bundle.
pub fn retire_delay(policy: &Policy) -> Duration {
    policy.workload_lifetime + MARGIN
}

/// How long a whole rotation takes, from start to retirement.
pub fn rotation_span(policy: &Policy) -> Duration {
    policy.propagation + retire_delay(policy)
}

/// The next step at `now`.
pub fn next_step(times: &AnchorTimes, policy: &Policy, now: OffsetDateTime) -> Step {
    if let Some(retire_after) = times.previous_retire_after
        && now >= retire_after
    {
        return Step::Retire;
    }
    if let Some(published_at) = times.next_published_at {
        return if now >= published_at + policy.propagation {
            Step::Promote
        } else {
            Step::Wait
        };
    }
    if !policy.automatic || times.previous_retire_after.is_some() {
        return Step::Wait;
    }
    let life = times.current_not_after - times.current_not_before;
    let remaining = times.current_not_after - now;
    let span =
        time::Duration::try_from(rotation_span(policy) + MARGIN).unwrap_or(time::Duration::MAX);
    if remaining < life / 3 || remaining < span {
        Step::Start
    } else {
        Step::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn t(minutes: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(minutes)
    }

    fn policy() -> Policy {
        Policy {
            automatic: true,
            propagation: 2 * MIN,
            workload_lifetime: 60 * MIN,
        }
    }

    fn fresh(not_before: i64, not_after: i64) -> AnchorTimes {
        AnchorTimes {
            current_not_before: t(not_before),
            current_not_after: t(not_after),
            next_published_at: None,
            previous_retire_after: None,
        }
    }

    #[test]
    fn a_young_anchor_waits_and_an_old_one_starts_a_rotation() {
        // A 30-day anchor: rotation starts in its last third.
        let day = 24 * 60;
        let times = fresh(0, 30 * day);
        assert_eq!(next_step(&times, &policy(), t(19 * day)), Step::Wait);
        assert_eq!(next_step(&times, &policy(), t(20 * day + 1)), Step::Start);
    }

    #[test]
    fn a_short_anchor_starts_early_enough_to_finish_before_expiry() {
        // 10 minutes of life, but a rotation takes 2m + 60m + 1m: start at once.
        let times = fresh(0, 10);
        assert_eq!(next_step(&times, &policy(), t(0)), Step::Start);
        let quick = Policy {
            workload_lifetime: MIN,
            ..policy()
        };
        // With 1-minute leaves a rotation takes 2 + 1 + 1 minutes (+1 margin).
        assert_eq!(next_step(&times, &quick, t(4)), Step::Wait);
        assert_eq!(next_step(&times, &quick, t(6)), Step::Start);
    }

    #[test]
    fn promotion_waits_for_the_bundle_to_propagate() {
        let mut times = fresh(0, 100);
        times.next_published_at = Some(t(70));
        assert_eq!(next_step(&times, &policy(), t(71)), Step::Wait);
        assert_eq!(next_step(&times, &policy(), t(72)), Step::Promote);
    }

    #[test]
    fn the_previous_anchor_retires_only_when_its_leaves_are_gone() {
        let mut times = fresh(72, 172);
        times.previous_retire_after = Some(t(72 + 61));
        assert_eq!(next_step(&times, &policy(), t(100)), Step::Wait);
        assert_eq!(next_step(&times, &policy(), t(133)), Step::Retire);
    }

    #[test]
    fn manual_rotation_never_starts_by_itself() {
        let manual = Policy {
            automatic: false,
            ..policy()
        };
        assert_eq!(next_step(&fresh(0, 10), &manual, t(9)), Step::Wait);
    }

    #[test]
    fn spans_add_up() {
        assert_eq!(retire_delay(&policy()), 61 * MIN);
        assert_eq!(rotation_span(&policy()), 63 * MIN);
    }
}
