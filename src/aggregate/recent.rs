//! The user events the leader applied lately: what `Aggregator::recognises` looks a repeat
//! up in, beside each user's registers (which know only the event that set them). SPEC §3.2
//! asks that repeats of user events be counted as duplicates at least within the active
//! window; this is that memory.
//!
//! Events are kept by when they were applied, not when they occurred, so that a late event
//! (its `occurred_at` long past) is recognised as long as an on-time one: in generations, one
//! per call of [`RecentUserEvents::rotate`] (the leader's prune, every minute), each dropped
//! whole at the first rotation more than the window after it ended, so an event stays known
//! for at least the window after it was applied and at most two prune intervals longer. A
//! lookup asks each generation, a handful. Each event is kept as a 64-bit keyed hash of its kind's register,
//! user, id and `occurred_at`: the key is this process's own, so no producer can choose ids
//! that collide, and by chance a new event matches one of n kept ones with a probability of
//! n/2⁶⁴: at 5 000 user events a second and the default 5-minute window (n under 2 million),
//! about once in 70 years. A collision would count that user event a duplicate and leave it
//! unapplied; its user's next event applies as usual. The store keeps none of
//! this: a new leader recognises only what the registers it restores know. Pure; no figures
//! are summed here.

use super::{Event, EventKind, Millis};
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

#[derive(Debug, Clone, Default)]
pub(super) struct RecentUserEvents {
    /// Seeds [`RecentUserEvents::key_of`]: chosen at random once per process.
    keys: RandomState,
    /// What was applied since the last rotation.
    current: HashSet<u64>,
    /// Earlier generations, oldest first, each with the instant it ended.
    ended: VecDeque<(Millis, HashSet<u64>)>,
}

impl RecentUserEvents {
    /// Remembers `event` if it is of a kind the store keeps no id of (anything but an order
    /// or a refund).
    pub(super) fn remember(&mut self, event: &Event) {
        if let Some(key) = self.key_of(event) {
            self.current.insert(key);
        }
    }

    /// `event` was remembered, and not yet forgotten.
    pub(super) fn contains(&self, event: &Event) -> bool {
        let Some(key) = self.key_of(event) else {
            return false;
        };
        self.current.contains(&key) || self.ended.iter().any(|(_, keys)| keys.contains(&key))
    }

    /// Ends the current generation at `now`, and forgets every generation that ended before
    /// `now - window`. The table of the last one forgotten, emptied, takes the next
    /// generation's events: under a steady load, no table is allocated or grown again, and
    /// the allocator is not left holding a freed table of a few megabytes every minute.
    pub(super) fn rotate(&mut self, now: Millis, window: Millis) {
        let mut spare = None;
        while self
            .ended
            .front()
            .is_some_and(|(end, _)| *end < now - window)
        {
            spare = self.ended.pop_front().map(|(_, keys)| keys);
        }
        if !self.current.is_empty() {
            let mut next = spare.unwrap_or_default();
            next.clear();
            self.ended
                .push_back((now, std::mem::replace(&mut self.current, next)));
        }
    }

    /// How many events are remembered (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.current.len() + self.ended.iter().map(|(_, keys)| keys.len()).sum::<usize>()
    }

    /// The hash `event` is kept under: of its kind's register (activity or sign-out), user, id
    /// and `occurred_at`. `None` for orders and refunds, which the store's id records decide.
    fn key_of(&self, event: &Event) -> Option<u64> {
        let register: u8 = match event.kind {
            EventKind::UserActive | EventKind::Other => 0,
            EventKind::UserSignedOut => 1,
            EventKind::OrderPlaced { .. } | EventKind::OrderRefunded { .. } => return None,
        };
        let mut hasher = self.keys.build_hasher();
        register.hash(&mut hasher);
        event.user_id.hash(&mut hasher);
        event.id.hash(&mut hasher);
        event.occurred_at.hash(&mut hasher);
        Some(hasher.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_event(id: &str, kind: EventKind, occurred_at: Millis, user: &str) -> Event {
        Event {
            id: id.into(),
            kind,
            occurred_at,
            user_id: user.into(),
        }
    }

    #[test]
    fn an_event_is_known_by_its_register_user_id_and_instant() {
        let mut recent = RecentUserEvents::default();
        let active = user_event("a", EventKind::UserActive, 10_500, "u1");
        recent.remember(&active);
        assert!(recent.contains(&active));
        let differs = [
            user_event("b", EventKind::UserActive, 10_500, "u1"),
            user_event("a", EventKind::UserSignedOut, 10_500, "u1"),
            user_event("a", EventKind::UserActive, 10_500, "u2"),
            user_event("a", EventKind::UserActive, 10_501, "u1"),
        ];
        for other in &differs {
            assert!(!recent.contains(other), "{other:?}");
        }
        // An unknown type marks its user active like `user.active`: the same register.
        assert!(recent.contains(&user_event("a", EventKind::Other, 10_500, "u1")));
    }

    /// Kept for the window after it was applied, whenever it occurred.
    #[test]
    fn an_event_is_forgotten_once_its_generation_ended_more_than_the_window_ago() {
        let window = 300_000;
        let mut recent = RecentUserEvents::default();
        // Applied between the rotations at 1 000 000 and 1 060 000, occurred a day before.
        recent.rotate(1_000_000, window);
        let late = user_event("a", EventKind::UserActive, 1_000_000 - 86_400_000, "u1");
        recent.remember(&late);
        recent.rotate(1_060_000, window);
        let next = user_event("b", EventKind::UserActive, 1_100_000, "u1");
        recent.remember(&next);
        recent.rotate(1_060_000 + window, window);
        assert!(recent.contains(&late) && recent.contains(&next));
        recent.rotate(1_060_000 + window + 1, window);
        assert!(!recent.contains(&late), "its generation ended at 1 060 000");
        assert!(recent.contains(&next));
        assert_eq!(recent.len(), 1);
    }

    /// The table of a forgotten generation takes the next one's events, emptied.
    #[test]
    fn a_forgotten_generation_s_table_is_emptied_and_used_again() {
        let window = 60_000;
        let mut recent = RecentUserEvents::default();
        for n in 0..1_000 {
            recent.remember(&user_event(
                &format!("a{n}"),
                EventKind::UserActive,
                n,
                "u1",
            ));
        }
        recent.rotate(1_000_000, window);
        let capacity = recent.ended[0].1.capacity();
        recent.remember(&user_event("b", EventKind::UserActive, 1, "u1"));
        recent.rotate(1_000_000 + window + 1, window);
        assert_eq!(recent.ended.len(), 1, "the first generation is forgotten");
        assert_eq!(
            recent.current.capacity(),
            capacity,
            "its table is the current one"
        );
        assert!(recent.current.is_empty());
        assert!(!recent.contains(&user_event("a1", EventKind::UserActive, 1, "u1")));
        assert!(recent.contains(&user_event("b", EventKind::UserActive, 1, "u1")));
    }

    #[test]
    fn orders_and_refunds_are_never_remembered() {
        let mut recent = RecentUserEvents::default();
        let order = user_event("o", EventKind::OrderPlaced { amount_minor: 5 }, 1_000, "u1");
        let refund = user_event(
            "r",
            EventKind::OrderRefunded { amount_minor: 5 },
            1_000,
            "u1",
        );
        recent.remember(&order);
        recent.remember(&refund);
        assert!(!recent.contains(&order) && !recent.contains(&refund));
        assert_eq!(recent.len(), 0);
    }
}
