//! Throttling of failed sign-ins and token requests, so that guessing is slow and yet nobody
//! can lock the real user out (see docs/security.md, Sign-in throttling).
//!
//! Failures are counted three ways, each over a sliding window (per instance, in memory):
//! - per client address and user name: the 10th failure within a minute, and every attempt
//!   after it until the oldest failure is a minute old, is refused. This is what one guesser
//!   meets; the same user name from any other address is not affected.
//! - per client address, whatever the user names: the 30th failure within a minute is refused
//!   (one address trying one password on many names).
//! - per user name, from everywhere: the 200th failure within 15 minutes is refused, except
//!   from an address that signed in as that user before. One address alone cannot get there
//!   (its own limit holds it to 9 a minute, 135 in 15 minutes: [`USER_LIMIT`] is checked
//!   against that at compile time); many addresses guessing together can, and are slowed.
//!
//! An attempt counts as a failure from the moment it is admitted ([`Throttle::admit`]), so
//! that many at once cannot all pass a check made before any of them failed; it is taken back
//! when the password was right ([`Throttle::succeeded`]) or was never checked
//! ([`Throttle::withdraw`]). Pure: the caller passes the instant. Memory is bounded by each
//! table's capacity (`window`), so cycling through addresses or names cannot grow it.

use crate::window::SlidingWindows;
use std::time::{Duration, Instant};

/// The failure per address and user name, within [`PAIR_WINDOW`], that is refused.
const PAIR_LIMIT: usize = 10;
const PAIR_WINDOW: Duration = Duration::from_secs(60);
/// The failure per address, any user names, within [`PAIR_WINDOW`], that is refused.
const ADDRESS_LIMIT: usize = 30;
/// The failure per user name, from any address, within [`USER_WINDOW`], that is refused.
const USER_LIMIT: usize = 200;
const USER_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long an address that signed in as a user stays exempt from that user's global limit.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3_600);
/// Keys per table at most; each new key costs the caller a password check, so a flood fills
/// them slowly, and a full table gives up its stalest keys.
const CAPACITY: usize = 50_000;

// One address alone never reaches a user name's limit: within any USER_WINDOW it fits at
// most one PAIR_WINDOW's worth of failures per PAIR_WINDOW (and one more window for the edges).
const PAIR_WINDOWS_PER_USER_WINDOW: usize =
    (USER_WINDOW.as_secs() / PAIR_WINDOW.as_secs()) as usize + 1;
const _: () = assert!((PAIR_LIMIT - 1) * PAIR_WINDOWS_PER_USER_WINDOW < USER_LIMIT - 1);

/// An admitted attempt, counted as a failure until [`Throttle::succeeded`] or
/// [`Throttle::withdraw`] say otherwise.
#[must_use = "an attempt counts as a failure unless it is resolved"]
#[derive(Debug)]
pub(crate) struct Attempt {
    pair: (String, String),
    at: Instant,
}

pub(crate) struct Throttle {
    pairs: SlidingWindows<(String, String)>,
    addresses: SlidingWindows<String>,
    users: SlidingWindows<String>,
    /// (address, user name) pairs that signed in: exempt from the user name's limit.
    known: SlidingWindows<(String, String)>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            pairs: SlidingWindows::new(PAIR_LIMIT - 1, PAIR_WINDOW, CAPACITY),
            addresses: SlidingWindows::new(ADDRESS_LIMIT - 1, PAIR_WINDOW, CAPACITY),
            users: SlidingWindows::new(USER_LIMIT - 1, USER_WINDOW, CAPACITY),
            known: SlidingWindows::new(1, KNOWN_FOR, CAPACITY),
        }
    }
}

impl Throttle {
    /// Admits an attempt of `user` from `address`, counting it as a failure; `Err(retry_after)`
    /// (at least a second) when one of the limits holds it back.
    pub(crate) fn admit(
        &mut self,
        user: &str,
        address: &str,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        let pair = (address.to_owned(), user.to_owned());
        let address = pair.0.clone();
        let user = pair.1.clone();
        let known = self.known.count(&pair, now) > 0;
        let wait = [
            self.pairs.wait(&pair, now),
            self.addresses.wait(&address, now),
            (!known).then(|| self.users.wait(&user, now)).flatten(),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(wait) = wait {
            return Err(wait.max(Duration::from_secs(1)));
        }
        self.pairs.record(&pair, now);
        self.addresses.record(&address, now);
        self.users.record(&user, now);
        Ok(Attempt { pair, at: now })
    }

    /// The password was wrong: the attempt stays counted.
    pub(crate) fn failed(&mut self, attempt: Attempt) {
        drop(attempt);
    }

    /// The password was right: the attempt is not a failure, the address's earlier failures
    /// for this user are forgiven, and the address is known for this user from now on.
    pub(crate) fn succeeded(&mut self, attempt: Attempt, now: Instant) {
        self.pairs.clear(&attempt.pair);
        self.known.record(&attempt.pair, now);
        self.withdraw(attempt);
    }

    /// The password was never checked (the service was busy or failed): nothing is counted.
    pub(crate) fn withdraw(&mut self, attempt: Attempt) {
        let Attempt { pair, at } = attempt;
        self.pairs.take_back(&pair, at);
        self.addresses.take_back(&pair.0, at);
        self.users.take_back(&pair.1, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// `n` failures of `user` from `address`, one a second from `start`; the next instant.
    fn fail(throttle: &mut Throttle, user: &str, address: &str, n: u32, start: Instant) -> Instant {
        for i in 0..n {
            fail_once(throttle, user, address, start + SECOND * i);
        }
        start + SECOND * n
    }

    fn fail_once(throttle: &mut Throttle, user: &str, address: &str, at: Instant) {
        let attempt = throttle.admit(user, address, at).expect("admitted");
        throttle.failed(attempt);
    }

    #[test]
    fn the_tenth_failure_of_one_address_and_name_is_refused_until_the_window_passes() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        let next = fail(&mut throttle, "ada", "10.0.0.1", 9, start);
        let retry = throttle
            .admit("ada", "10.0.0.1", next)
            .expect_err("the tenth");
        assert_eq!(retry, Duration::from_secs(51));
        assert!(throttle
            .admit("ada", "10.0.0.1", start + PAIR_WINDOW)
            .is_ok());
    }

    #[test]
    fn the_right_password_from_another_address_is_admitted_while_the_guesser_is_held() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        let next = fail(&mut throttle, "ada", "203.0.113.66", 9, start);
        let real = throttle
            .admit("ada", "198.51.100.7", next)
            .expect("real user");
        throttle.succeeded(real, next);
        assert!(throttle.admit("ada", "203.0.113.66", next).is_err());
        // The guesser's address may still try other names (its address limit is higher).
        assert!(throttle.admit("bob", "203.0.113.66", next).is_ok());
    }

    #[test]
    fn one_address_is_refused_at_its_thirtieth_failure_over_any_names() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        for i in 0..(ADDRESS_LIMIT - 1) {
            fail_once(&mut throttle, &format!("user-{i}"), "10.0.0.9", start);
        }
        assert!(throttle.admit("user-x", "10.0.0.9", start).is_err());
        assert!(throttle.admit("user-x", "10.0.0.10", start).is_ok());
    }

    #[test]
    fn one_address_guessing_as_fast_as_it_may_never_reaches_the_user_names_limit() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        let mut now = start;
        // Two global windows' worth, retrying the moment the throttle allows it.
        while now < start + USER_WINDOW * 2 {
            match throttle.admit("ada", "203.0.113.66", now) {
                Ok(attempt) => throttle.failed(attempt),
                Err(wait) => now += wait.min(SECOND),
            }
            assert!(
                throttle.users.wait(&"ada".to_owned(), now).is_none(),
                "one address reached the user's limit at {:?}",
                now - start
            );
            let real = throttle
                .admit("ada", "198.51.100.7", now)
                .expect("real user");
            throttle.succeeded(real, now);
        }
    }

    #[test]
    fn many_addresses_together_reach_the_user_names_limit_but_not_a_known_address() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        let home = throttle.admit("ada", "198.51.100.7", start).expect("home");
        throttle.succeeded(home, start);
        for i in 0..(USER_LIMIT - 1) {
            fail_once(
                &mut throttle,
                "ada",
                &format!("10.1.{}.{}", i / 200, i % 200),
                start,
            );
        }
        assert!(
            throttle.admit("ada", "10.9.9.9", start).is_err(),
            "a new address"
        );
        assert!(throttle.admit("ada", "198.51.100.7", start).is_ok(), "home");
        assert!(throttle
            .admit("ada", "10.9.9.9", start + USER_WINDOW)
            .is_ok());
    }

    #[test]
    fn admitted_attempts_count_at_once_and_withdrawn_ones_not_at_all() {
        let mut throttle = Throttle::default();
        let now = Instant::now();
        // Nine checks in flight together: the tenth is refused before any of them failed.
        let in_flight: Vec<Attempt> = (0..9)
            .map(|_| throttle.admit("ada", "10.0.0.1", now).expect("admitted"))
            .collect();
        assert!(throttle.admit("ada", "10.0.0.1", now).is_err());
        for attempt in in_flight {
            throttle.withdraw(attempt);
        }
        assert!(throttle.admit("ada", "10.0.0.1", now).is_ok());
    }
}
