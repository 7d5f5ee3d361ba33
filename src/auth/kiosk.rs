//! Kiosk links (docs/security.md, Kiosk links): what a link is called, how long it lives, and
//! the name its credential goes by. A link's key is a [`super::random_token`], stored only as
//! its SHA-256 ([`super::session_key`]), as the session a screen exchanges it for is. Pure.

use crate::aggregate::Millis;
use std::collections::HashMap;
use std::sync::Mutex;

/// The cookie of a kiosk session (apart from a user's `pulseboard_session`: a screen that is
/// also signed in as someone keeps both, and neither stands in for the other).
pub(crate) const KIOSK_COOKIE: &str = "pulseboard_kiosk";

const DAY_MS: Millis = 24 * 3_600_000;
/// The longest a link may live: a year (a screen's link is meant to be renewed).
const MAX_TTL_MS: Millis = 366 * DAY_MS;

/// The name a kiosk link's credential goes by wherever a user name is shown (connections,
/// logs) and in the table of credential epochs: `kiosk:NAME` (no user name has a `:`).
pub(crate) fn holder(name: &str) -> String {
    format!("kiosk:{name}")
}

/// Link names follow the user-name rule: 1 to 64 of letters, digits, `.`, `_`, `-`.
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    super::validate_username(name)
        .map_err(|_| "a link name has 1 to 64 letters, digits, '.', '_' or '-'".into())
}

/// `--ttl`: a whole number of minutes, hours or days (`90m`, `12h`, `30d`), from one minute to
/// 366 days.
pub(crate) fn parse_ttl(text: &str) -> Result<Millis, String> {
    let refuse = || "expected a number and m, h or d (90m, 12h, 30d), at most 366d".to_string();
    let unit = match text.chars().last() {
        Some('m') => 60_000,
        Some('h') => 3_600_000,
        Some('d') => DAY_MS,
        _ => return Err(refuse()),
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    let count: Millis = digits.parse().map_err(|_| refuse())?;
    match count.checked_mul(unit) {
        Some(ttl) if ttl > 0 && ttl <= MAX_TTL_MS => Ok(ttl),
        _ => Err(refuse()),
    }
}

/// How often a link's "last used" is written: `tokens list` is right to this much.
pub(crate) const RECORD_USE_EVERY_MS: Millis = 60_000;

/// When this instance last recorded each link's use: decides, from memory, whether a request
/// of a screen writes "last used" (at most once a [`RECORD_USE_EVERY_MS`] per link), so that
/// its long-polls and history fetches do not each take the database's writer. One entry per
/// link name this instance has seen used.
#[derive(Debug, Default)]
pub(crate) struct LinkUse {
    recorded: Mutex<HashMap<String, Millis>>,
}

impl LinkUse {
    /// Whether `link`'s use at `now` is to be written; if so, it counts as written.
    pub(crate) fn due(&self, link: &str, now: Millis) -> bool {
        let mut recorded = self
            .recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match recorded.get_mut(link) {
            Some(at) if now - *at < RECORD_USE_EVERY_MS => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                recorded.insert(link.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_is_minutes_hours_or_days_up_to_a_year() {
        assert_eq!(parse_ttl("30d"), Ok(30 * DAY_MS));
        assert_eq!(parse_ttl("12h"), Ok(12 * 3_600_000));
        assert_eq!(parse_ttl("90m"), Ok(90 * 60_000));
        assert_eq!(parse_ttl("366d"), Ok(MAX_TTL_MS));
        for bad in [
            "",
            "d",
            "0d",
            "367d",
            "30",
            "30s",
            "-1d",
            "1.5d",
            "+3d",
            "99999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_holder_name_is_never_a_user_name() {
        assert_eq!(holder("lobby"), "kiosk:lobby");
        assert!(super::super::validate_username(&holder("lobby")).is_err());
        assert!(validate_name("lobby-2.east_wing").is_ok());
        assert!(validate_name("a b").is_err());
    }

    #[test]
    fn a_link_s_use_is_written_at_most_once_a_minute_each() {
        let uses = LinkUse::default();
        assert!(uses.due("lobby", 1_000), "the first use is written");
        assert!(!uses.due("lobby", 1_001), "the next request is not");
        assert!(!uses.due("lobby", 1_000 + RECORD_USE_EVERY_MS - 1));
        assert!(uses.due("hall", 1_001), "each link has its own minute");
        assert!(
            uses.due("lobby", 1_000 + RECORD_USE_EVERY_MS),
            "a minute on, again"
        );
        assert!(!uses.due("lobby", 2_000 + RECORD_USE_EVERY_MS));
    }
}
