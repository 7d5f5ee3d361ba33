//! Identity and authorization, without HTTP: roles and what they may do, user names, session
//! keys and CSRF tokens, access tokens ([`token`]), whether a credential is still good
//! ([`grant`]), kiosk links ([`kiosk`]), password hashing ([`password`]) and the throttle on
//! failed sign-ins ([`throttle`]). The HTTP extractors that apply them to a request
//! are `http::extract`; the SQL is `store::users`. Nothing here logs a password, hash, token or
//! secret.

pub(crate) mod grant;
pub(crate) mod kiosk;
pub(crate) mod password;
pub(crate) mod throttle;
pub(crate) mod token;

use crate::aggregate::Millis;
use password::Verifier;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use throttle::{Attempt, Throttle};
use token::TokenKeys;

pub(crate) const SESSION_COOKIE: &str = "pulseboard_session";
pub(crate) const CSRF_COOKIE: &str = "pulseboard_csrf";
pub(crate) const CSRF_HEADER: &str = "X-CSRF-Token";
pub(crate) const SESSION_TTL_MS: Millis = 12 * 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// Views dashboards.
    Admin,
    /// Views dashboards and uses the console.
    Operator,
    /// A wall screen's kiosk link: reads the dashboard and nothing else (docs/security.md,
    /// Kiosk links). Never a user's role: `parse` does not know it.
    Kiosk,
}

impl Role {
    /// A user's role (`admin` or `operator`); a kiosk link is not a user.
    pub(crate) fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Kiosk => "kiosk",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::parse(text).ok_or_else(|| "expected admin or operator".to_string())
    }
}

/// User names: 1 to 64 of letters, digits, `.`, `_`, `-`.
pub(crate) fn validate_username(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
    if valid {
        Ok(())
    } else {
        Err("a user name has 1 to 64 letters, digits, '.', '_' or '-'".into())
    }
}

/// What authentication needs at run time.
pub(crate) struct AuthState {
    pub keys: TokenKeys,
    /// `PULSEBOARD_TOKEN_TTL_SECS`: how long an access token lives.
    pub token_ttl_secs: i64,
    /// Cookies get `Secure` when the service speaks HTTPS.
    pub secure_cookies: bool,
    /// Origins allowed to open the console WebSocket; empty means "the service's own".
    pub allowed_origins: Vec<String>,
    /// Password checks: off the async workers, a few at a time.
    pub passwords: Verifier,
    throttle: Mutex<Throttle>,
}

impl AuthState {
    pub(crate) fn new(
        secret: &[u8],
        token_ttl_secs: u32,
        secure_cookies: bool,
        allowed_origins: Vec<String>,
    ) -> Self {
        AuthState {
            keys: TokenKeys::new(secret),
            token_ttl_secs: i64::from(token_ttl_secs),
            secure_cookies,
            allowed_origins,
            passwords: Verifier::for_this_machine(),
            throttle: Mutex::new(Throttle::default()),
        }
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        crate::sync::lock(&self.throttle)
    }

    /// A sign-in attempt of `username` from `address`, counted as a failure until resolved;
    /// `Err(retry_after)` while the throttle holds it back (see `throttle`).
    pub(crate) fn admit_sign_in(&self, username: &str, address: &str) -> Result<Attempt, Duration> {
        self.throttle().admit(username, address, Instant::now())
    }

    /// The password was wrong.
    pub(crate) fn sign_in_failed(&self, attempt: Attempt) {
        self.throttle().failed(attempt);
    }

    /// The password was right.
    pub(crate) fn sign_in_succeeded(&self, attempt: Attempt) {
        self.throttle().succeeded(attempt, Instant::now());
    }

    /// The password could not be checked: the attempt does not count.
    pub(crate) fn sign_in_withdrawn(&self, attempt: Attempt) {
        self.throttle().withdraw(attempt);
    }
}

/// Session ids are stored hashed: a leaked table does not hand out live sessions.
pub(crate) fn session_key(session_id: &str) -> String {
    hex(&Sha256::digest(session_id.as_bytes()))
}

/// 32 random bytes as URL-safe text: session ids and CSRF tokens.
pub(crate) fn random_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality for tokens.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_short_and_plain() {
        assert!(validate_username("ada.lovelace-1_x").is_ok());
        for bad in ["", "a b", "ümlaut", &"x".repeat(65), "semi;colon"] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_exactly() {
        let token = random_token();
        assert!(same_token(&token, &token.clone()));
        assert!(!same_token(&token, &random_token()));
        assert!(!same_token("a", "ab"));
        assert_eq!(session_key("x").len(), 64);
    }
}
