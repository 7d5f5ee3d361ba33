//! Throttling of failed sign-ins and token requests, per user name and per client address.
//!
//! Pure and in memory (per instance): a sliding window of failure instants per key. A key with
//! `limit - 1` failures inside the window is refused until the oldest one leaves it, so the
//! `limit`-th attempt within the window is answered 429.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Keys kept at most; beyond it the stalest are forgotten (bounded memory under a flood).
const MAX_KEYS: usize = 100_000;

pub struct Throttle {
    window: Duration,
    limit: usize,
    failures: HashMap<String, VecDeque<Instant>>,
}

impl Throttle {
    pub fn new(limit: usize, window: Duration) -> Self {
        Throttle {
            window,
            limit: limit.max(1),
            failures: HashMap::new(),
        }
    }

    /// `Err(retry_after)` when any of `keys` has used up its failures in the window.
    pub fn check(&mut self, keys: &[String], now: Instant) -> Result<(), Duration> {
        let mut wait = Duration::ZERO;
        for key in keys {
            if let Some(times) = self.failures.get_mut(key) {
                forget_old(times, now, self.window);
                if times.len() + 1 >= self.limit {
                    let oldest = times.front().copied().unwrap_or(now);
                    wait = wait.max(self.window.saturating_sub(now - oldest));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait.max(Duration::from_secs(1)))
        }
    }

    pub fn fail(&mut self, keys: &[String], now: Instant) {
        if self.failures.len() >= MAX_KEYS {
            let window = self.window;
            self.failures.retain(|_, times| {
                forget_old(times, now, window);
                !times.is_empty()
            });
        }
        for key in keys {
            let times = self.failures.entry(key.clone()).or_default();
            forget_old(times, now, self.window);
            times.push_back(now);
        }
    }

    /// A success clears the user name's failures (not the address's).
    pub fn succeed(&mut self, key: &str) {
        self.failures.remove(key);
    }
}

fn forget_old(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenth_failure_in_a_window_is_refused_until_the_window_passes() {
        let mut throttle = Throttle::new(10, Duration::from_secs(60));
        let start = Instant::now();
        let keys = vec!["user:ada".to_string(), "ip:127.0.0.1".to_string()];
        for i in 0..9 {
            assert!(throttle.check(&keys, start).is_ok(), "attempt {}", i + 1);
            throttle.fail(&keys, start + Duration::from_secs(i));
        }
        let retry = throttle
            .check(&keys, start + Duration::from_secs(10))
            .expect_err("tenth");
        assert_eq!(retry, Duration::from_secs(50));
        assert!(throttle
            .check(&keys, start + Duration::from_secs(61))
            .is_ok());
        // Another user from another address is not affected.
        assert!(throttle
            .check(&["user:bob".into(), "ip:10.0.0.1".into()], start)
            .is_ok());
    }

    #[test]
    fn success_clears_the_user_name_but_not_the_address() {
        let mut throttle = Throttle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        let keys = vec!["user:ada".to_string(), "ip:a".to_string()];
        throttle.fail(&keys, now);
        throttle.fail(&keys, now);
        assert!(throttle.check(&keys, now).is_err());
        throttle.succeed("user:ada");
        assert!(throttle.check(&["user:ada".into()], now).is_ok());
        assert!(throttle.check(&["ip:a".into()], now).is_err());
    }
}
