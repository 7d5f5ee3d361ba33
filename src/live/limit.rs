//! `PULSEBOARD_MAX_STREAMS_PER_USER` (docs/api.md, Configuration): how many live connections (SSE,
//! long-poll and console WebSocket together) one user may hold on this instance.
//!
//! A slot is taken before a stream starts or a WebSocket is upgraded, and given back when its
//! [`StreamSlot`] is dropped, whichever way the connection ends: the count cannot leak. The
//! limit is per instance on purpose: it caps what one runaway client costs this process, and
//! needs no coordination between instances.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Open live connections per user name (only users with at least one).
type Held = Arc<Mutex<HashMap<String, usize>>>;

/// Open live connections per user name, and the cap (`0`: none).
#[derive(Clone)]
pub struct StreamLimiter {
    max: usize,
    held: Held,
}

/// One live connection of one user; dropping it frees the slot.
#[must_use = "the slot is freed as soon as it is dropped"]
pub struct StreamSlot {
    /// `None` when there is no cap: nothing to count, nothing to give back. Boxed, so that
    /// the usual unlimited slot, kept for a stream's life, is one pointer.
    held: Option<Box<(Held, String)>>,
}

impl StreamLimiter {
    pub fn new(max_per_user: u32) -> Self {
        StreamLimiter {
            max: max_per_user as usize,
            held: Arc::default(),
        }
    }

    /// The cap, `0` meaning none.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `user`, or `None` when they already hold the maximum.
    pub fn acquire(&self, user: &str) -> Option<StreamSlot> {
        if self.max == 0 {
            return Some(StreamSlot { held: None });
        }
        let mut held = lock(&self.held);
        let count = held.entry(user.to_owned()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            held: Some(Box::new((self.held.clone(), user.to_owned()))),
        })
    }

    /// Connections `user` holds now (only counted when there is a cap).
    #[cfg(test)]
    fn held_by(&self, user: &str) -> usize {
        lock(&self.held).get(user).copied().unwrap_or(0)
    }
}

/// Plain counters: a panic elsewhere cannot leave them inconsistent, so a poisoned lock is used
/// as it is. No `.await` happens while it is held.
fn lock(held: &Mutex<HashMap<String, usize>>) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    held.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let Some(slot) = self.held.take() else {
            return;
        };
        let (held, user) = *slot;
        let mut held = lock(&held);
        if let Some(count) = held.get_mut(&user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Forget users with nothing open: the map stays as small as the live set.
                held.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_at_most_max_slots_and_a_dropped_one_is_free_again() {
        let limiter = StreamLimiter::new(2);
        let first = limiter.acquire("ada").expect("first");
        let _second = limiter.acquire("ada").expect("second");
        assert!(limiter.acquire("ada").is_none(), "third refused");
        assert!(limiter.acquire("bob").is_some(), "another user unaffected");
        drop(first);
        assert_eq!(limiter.held_by("ada"), 1);
        assert!(limiter.acquire("ada").is_some(), "freed slot reused");
    }

    #[test]
    fn zero_means_unlimited_and_counts_nothing() {
        let limiter = StreamLimiter::new(0);
        let slots: Vec<_> = (0..1_000).filter_map(|_| limiter.acquire("ada")).collect();
        assert_eq!(slots.len(), 1_000);
        assert_eq!(limiter.held_by("ada"), 0);
    }

    #[test]
    fn users_with_nothing_open_are_forgotten() {
        let limiter = StreamLimiter::new(1);
        drop(limiter.acquire("ada"));
        assert!(lock(&limiter.held).is_empty());
    }
}
