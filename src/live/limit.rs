//! What one user may ask of this instance's live state: how many live connections (SSE,
//! long-poll and console WebSocket together) they may hold, `PULSEBOARD_MAX_STREAMS_PER_USER`
//! (docs/api.md, Configuration), and how often they may force a snapshot
//! ([`RefreshLimiter`]).
//!
//! A slot is taken before a stream starts or a WebSocket is upgraded, and given back when its
//! [`StreamSlot`] is dropped, whichever way the connection ends: the count cannot leak. The
//! limits are per instance on purpose: they cap what one runaway client costs this process,
//! and need no coordination between instances.

use crate::sync::lock;
use crate::window::SlidingWindows;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Refreshes one user may ask for per [`REFRESH_WINDOW`]; the next is refused (429). A person
/// pressing Refresh never gets there; a script in a loop does at once.
const REFRESHES_PER_WINDOW: usize = 5;
const REFRESH_WINDOW: Duration = Duration::from_secs(1);
/// Users tracked at most (each entry is a signed-in user's request).
const REFRESH_USERS: usize = 10_000;

/// Open live connections per user name (only users with at least one).
type Held = Arc<Mutex<HashMap<String, usize>>>;

/// Open live connections per user name, and the cap (`0`: none).
#[derive(Clone)]
pub(crate) struct StreamLimiter {
    max: usize,
    held: Held,
}

/// One live connection of one user; dropping it frees the slot.
#[must_use = "the slot is freed as soon as it is dropped"]
pub(crate) struct StreamSlot {
    /// `None` when there is no cap: nothing to count, nothing to give back. Boxed, so that
    /// the usual unlimited slot, kept for a stream's life, is one pointer.
    held: Option<Box<(Held, String)>>,
}

impl StreamLimiter {
    pub(crate) fn new(max_per_user: u32) -> Self {
        StreamLimiter {
            max: max_per_user as usize,
            held: Arc::default(),
        }
    }

    /// The cap, `0` meaning none.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A slot for `user`, or `None` when they already hold the maximum.
    pub(crate) fn acquire(&self, user: &str) -> Option<StreamSlot> {
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

/// `POST /api/dashboard/refresh` per user: [`REFRESHES_PER_WINDOW`] within a sliding
/// [`REFRESH_WINDOW`]. A forced snapshot still waits for the snapshot tick (`ingest`), so
/// this only keeps one user from making every refresh of everyone else wait in line.
pub(crate) struct RefreshLimiter {
    asked: Mutex<SlidingWindows<String>>,
}

impl Default for RefreshLimiter {
    fn default() -> Self {
        RefreshLimiter {
            asked: Mutex::new(SlidingWindows::new(
                REFRESHES_PER_WINDOW,
                REFRESH_WINDOW,
                REFRESH_USERS,
            )),
        }
    }
}

impl RefreshLimiter {
    /// Counts a refresh of `user`; `Err(retry_after)` when they asked too often.
    pub(crate) fn admit(&self, user: &str) -> Result<(), Duration> {
        self.admit_at(user, Instant::now())
    }

    fn admit_at(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let mut asked = lock(&self.asked);
        let user = user.to_owned();
        if let Some(wait) = asked.wait(&user, now) {
            return Err(wait);
        }
        asked.record(&user, now);
        Ok(())
    }
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
    fn a_user_gets_a_few_refreshes_a_second_and_others_are_not_affected() {
        let limiter = RefreshLimiter::default();
        let start = Instant::now();
        for i in 0..REFRESHES_PER_WINDOW {
            assert!(limiter.admit_at("ada", start).is_ok(), "refresh {i}");
        }
        let wait = limiter.admit_at("ada", start).expect_err("one too many");
        assert_eq!(wait, REFRESH_WINDOW);
        assert!(limiter.admit_at("bob", start).is_ok());
        assert!(limiter.admit_at("ada", start + REFRESH_WINDOW).is_ok());
    }

    #[test]
    fn users_with_nothing_open_are_forgotten() {
        let limiter = StreamLimiter::new(1);
        drop(limiter.acquire("ada"));
        assert!(lock(&limiter.held).is_empty());
    }
}
