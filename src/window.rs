//! Sliding-window counts per key, in bounded memory: how many times something happened for a
//! key within the last `window`, for the sign-in throttle (`auth::throttle`) and the refresh
//! limit (`live::limit`).
//!
//! Pure: the caller passes the instant, so tests drive the clock. A key keeps at most `allowed`
//! instants (more are never needed to answer "is it over?"), and the table at most `capacity`
//! keys: when it is full, keys whose instants have all expired go first, then the key whose
//! latest instant is the oldest. That scan is linear, and runs only when the table is full of
//! live keys, which its callers make rare (each entry costs a password check, or a request of
//! a signed-in user).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

pub(crate) struct SlidingWindows<K> {
    window: Duration,
    allowed: usize,
    capacity: usize,
    times: HashMap<K, VecDeque<Instant>>,
}

impl<K: Hash + Eq + Clone> SlidingWindows<K> {
    /// `allowed` instants per key within `window` (at least one), `capacity` keys at most.
    pub(crate) fn new(allowed: usize, window: Duration, capacity: usize) -> Self {
        SlidingWindows {
            window,
            allowed: allowed.max(1),
            capacity: capacity.max(1),
            times: HashMap::new(),
        }
    }

    /// `Some(wait)` when `key` already has its `allowed` instants within the window: how long
    /// until the oldest of them leaves it.
    pub(crate) fn wait(&mut self, key: &K, now: Instant) -> Option<Duration> {
        let times = self.times.get_mut(key)?;
        forget_old(times, now, self.window);
        if times.len() < self.allowed {
            return None;
        }
        let oldest = times.front().copied().unwrap_or(now);
        Some(
            self.window
                .saturating_sub(now.saturating_duration_since(oldest)),
        )
    }

    /// Instants of `key` within the window.
    pub(crate) fn count(&mut self, key: &K, now: Instant) -> usize {
        self.times.get_mut(key).map_or(0, |times| {
            forget_old(times, now, self.window);
            times.len()
        })
    }

    /// Counts one more for `key` at `now`.
    pub(crate) fn record(&mut self, key: &K, now: Instant) {
        if !self.times.contains_key(key) {
            self.make_room(now);
        }
        let times = self.times.entry(key.clone()).or_default();
        forget_old(times, now, self.window);
        times.push_back(now);
        while times.len() > self.allowed {
            times.pop_front();
        }
    }

    /// Takes back one instant recorded at `at` (an attempt that turned out not to count).
    pub(crate) fn take_back(&mut self, key: &K, at: Instant) {
        if let Some(times) = self.times.get_mut(key) {
            if let Some(position) = times.iter().rposition(|t| *t == at) {
                times.remove(position);
            }
            if times.is_empty() {
                self.times.remove(key);
            }
        }
    }

    pub(crate) fn clear(&mut self, key: &K) {
        self.times.remove(key);
    }

    /// Keys held now (expired ones included until room is needed).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }

    fn make_room(&mut self, now: Instant) {
        if self.times.len() < self.capacity {
            return;
        }
        let window = self.window;
        self.times.retain(|_, times| {
            forget_old(times, now, window);
            !times.is_empty()
        });
        if self.times.len() < self.capacity {
            return;
        }
        let stalest = self
            .times
            .iter()
            .min_by_key(|(_, times)| times.back().copied())
            .map(|(key, _)| key.clone());
        if let Some(key) = stalest {
            self.times.remove(&key);
        }
    }
}

fn forget_old(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_key_is_over_once_it_has_its_allowed_instants_until_the_oldest_leaves() {
        let mut windows = SlidingWindows::new(3, MINUTE, 10);
        let start = Instant::now();
        for i in 0..3 {
            assert_eq!(windows.wait(&"a", start), None, "instant {i}");
            windows.record(&"a", start + Duration::from_secs(i * 10));
        }
        let at = start + Duration::from_secs(25);
        assert_eq!(windows.wait(&"a", at), Some(Duration::from_secs(35)));
        assert_eq!(windows.count(&"a", at), 3);
        assert_eq!(windows.wait(&"b", at), None, "other keys are apart");
        assert_eq!(windows.wait(&"a", start + MINUTE), None, "the oldest left");
    }

    #[test]
    fn a_taken_back_instant_no_longer_counts_and_clear_forgets_the_key() {
        let mut windows = SlidingWindows::new(2, MINUTE, 10);
        let now = Instant::now();
        windows.record(&"a", now);
        windows.record(&"a", now + Duration::from_secs(1));
        assert!(windows.wait(&"a", now).is_some());
        windows.take_back(&"a", now + Duration::from_secs(1));
        assert_eq!(windows.count(&"a", now), 1);
        windows.clear(&"a");
        assert_eq!(windows.count(&"a", now), 0);
        windows.take_back(&"a", now);
        assert_eq!(windows.len(), 0);
    }

    #[test]
    fn the_table_never_outgrows_its_capacity_and_gives_up_the_stalest_key_first() {
        let mut windows = SlidingWindows::new(5, MINUTE, 100);
        let start = Instant::now();
        // Expired keys make room first.
        for i in 0..100u32 {
            windows.record(&i, start);
        }
        windows.record(&1_000, start + MINUTE);
        assert_eq!(windows.len(), 1);
        // A flood of live keys: the table stays at capacity, the latest keys are kept.
        for i in 0..10_000u32 {
            windows.record(&i, start + MINUTE + Duration::from_millis(u64::from(i)));
            assert!(windows.len() <= 100);
        }
        let now = start + MINUTE + Duration::from_secs(10);
        assert_eq!(windows.count(&9_999, now), 1);
        assert_eq!(windows.count(&0, now), 0);
        // A key holds at most its allowed instants, whatever it is told.
        for _ in 0..50 {
            windows.record(&9_999, now);
        }
        assert_eq!(windows.count(&9_999, now), 5);
    }
}
