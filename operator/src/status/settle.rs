//! Holding a changed status back until it settles: a status that differs from what was
//! written is written once it has stayed the same for [`QUIET`], or once it has waited
//! [`LONGEST`] while it kept changing. So a burst of changes to one object is one write
//! of its status, whatever else changes in the mesh meanwhile (a global pause would
//! split a burst whenever another object's change woke the publisher mid-burst).
//!
//! Pure: the publisher ([`super::publish`]) passes the clock in.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use weft_api::condition::carry_transition_times;

use crate::discovery::key::Key;

/// How long a changed status must stay the same before it is written.
pub const QUIET: Duration = Duration::from_millis(250);
/// The longest a status that keeps changing is held back.
pub const LONGEST: Duration = Duration::from_secs(2);

/// A status with conditions, whose transition times carry over unchanged conditions.
pub trait Conditions {
    fn conditions(&self) -> &[weft_api::Condition];
    fn conditions_mut(&mut self) -> &mut Vec<weft_api::Condition>;
}

/// The statuses waiting to be written, by object.
#[derive(Debug)]
pub struct Settling<S> {
    pending: HashMap<Key, Pending<S>>,
}

#[derive(Debug)]
struct Pending<S> {
    value: S,
    /// When this object's status first differed from what was written.
    since: Instant,
    /// When it last changed.
    changed: Instant,
}

impl<S> Default for Settling<S> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
        }
    }
}

impl<S: Conditions + PartialEq + Clone> Settling<S> {
    /// Whether `want`, which differs from what was written for `key`, may be written
    /// now. A condition that changed keeps the transition time it had when the change
    /// was first seen.
    pub fn ready(&mut self, key: &Key, want: &mut S, now: Instant) -> bool {
        match self.pending.get_mut(key) {
            Some(pending) => {
                let carried = carry_transition_times(
                    pending.value.conditions(),
                    std::mem::take(want.conditions_mut()),
                );
                *want.conditions_mut() = carried;
                if pending.value != *want {
                    pending.value = want.clone();
                    pending.changed = now;
                }
                now.duration_since(pending.changed) >= QUIET
                    || now.duration_since(pending.since) >= LONGEST
            }
            None => {
                self.pending.insert(
                    key.clone(),
                    Pending {
                        value: want.clone(),
                        since: now,
                        changed: now,
                    },
                );
                false
            }
        }
    }

    /// Forgets `key`: its status was written, or needs no write any more.
    pub fn settled(&mut self, key: &Key) {
        self.pending.remove(key);
    }

    /// Forgets every object but those `keep` holds to.
    pub fn retain(&mut self, keep: impl Fn(&Key) -> bool) {
        self.pending.retain(|key, _| keep(key));
    }

    /// The earliest time a held-back status may be written, if one is held back.
    pub fn next(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| (p.changed + QUIET).min(p.since + LONGEST))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use weft_api::{Condition, condition::condition};

    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct State {
        value: u32,
        conditions: Vec<Condition>,
    }

    impl Conditions for State {
        fn conditions(&self) -> &[Condition] {
            &self.conditions
        }
        fn conditions_mut(&mut self) -> &mut Vec<Condition> {
            &mut self.conditions
        }
    }

    /// A state whose condition was computed at `second`, as the publisher computes
    /// every condition with the current time.
    fn state(value: u32, second: i64) -> State {
        State {
            value,
            conditions: vec![condition(
                "Accepted",
                weft_api::condition::ConditionStatus::True,
                "Accepted",
                "",
                None,
                Timestamp::from_second(second).unwrap(),
            )],
        }
    }

    #[test]
    fn a_burst_is_written_once_after_it_stops_changing() {
        let mut settling = Settling::default();
        let key = Key::new("ns", "a");
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!settling.ready(&key, &mut state(1, 0), at(0)));
        // Changes keep it back; a recompute of the same value (with a later clock)
        // does not count as a change.
        assert!(!settling.ready(&key, &mut state(2, 1), at(200)));
        assert!(!settling.ready(&key, &mut state(2, 2), at(300)));
        assert_eq!(settling.next(), Some(at(450)));
        let mut last = state(2, 3);
        assert!(settling.ready(&key, &mut last, at(450)));
        // The transition time is the one first seen for this condition status.
        assert_eq!(last.conditions, state(1, 0).conditions);
        settling.settled(&key);
        assert_eq!(settling.next(), None);
    }

    #[test]
    fn a_status_that_keeps_changing_waits_at_most_the_longest() {
        let mut settling = Settling::default();
        let key = Key::new("ns", "a");
        let t0 = Instant::now();
        let mut ready = None;
        for step in 0..20u32 {
            let now = t0 + Duration::from_millis(u64::from(step) * 200);
            if settling.ready(&key, &mut state(step, 0), now) {
                ready = Some(now - t0);
                break;
            }
        }
        assert_eq!(ready, Some(LONGEST));
    }

    #[test]
    fn objects_settle_apart() {
        let mut settling = Settling::default();
        let (a, b) = (Key::new("ns", "a"), Key::new("ns", "b"));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!settling.ready(&a, &mut state(1, 0), at(0)));
        assert!(!settling.ready(&b, &mut state(1, 0), at(200)));
        // b's change does not hold a back.
        assert!(settling.ready(&a, &mut state(1, 0), at(250)));
        assert!(!settling.ready(&b, &mut state(1, 0), at(250)));
    }
}
