//! Kiosk links (docs/security.md, Kiosk links): what a link is called, how long it lives, and
//! the name its credential goes by. A link's key is a [`super::random_token`], stored only as
//! its SHA-256 ([`super::session_key`]), as the session a screen exchanges it for is. Pure.

use crate::aggregate::Millis;

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
}
