//! Whether a credential is still good: the one decision, made the same way for a new request,
//! for every open connection once a second, and before every console command (docs/security.md,
//! Revocation). Pure: no store, no clock read (times come in as values), no logging.
//!
//! A credential, once checked, becomes a [`Grant`]: whose it is, with which role, under which
//! of the user's credential epochs, of which kind (an access token, or the browser session with
//! that key hash) and until when. Every user has a credential epoch, a random value made anew
//! when the user is created and when their password changes; removing the user removes it. A
//! grant is good while it has not expired and its user still exists with the same epoch and
//! role ([`judge`]): so a password change or a removal revokes every token and session of that
//! user at once, and a user removed and added again does not get the old ones back.
//!
//! Each instance keeps the users' current epochs and roles in a [`KnownUsers`] table, read from
//! the database every second, so that checking a token needs no database round trip (tokens keep
//! working through a database outage, on the last table read).

use super::Role;
use crate::aggregate::Millis;
use std::collections::HashMap;

/// Allowance for a table read just after a grant was issued: token times are whole seconds,
/// and the clocks of two hosts differ a little.
const ISSUE_SLACK_MS: Millis = 2_000;

/// A user's current credential state, as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserState {
    pub epoch: String,
    pub role: Role,
}

/// How a grant was presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GrantKind {
    /// A bearer or `access_token` token.
    Token,
    /// A browser session: the SHA-256 of its id (`auth::session_key`), as it is stored.
    Session { key: String },
}

/// A checked credential: what every open connection remembers of the one it was opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub user: String,
    pub role: Role,
    /// The user's credential epoch when the credential was made.
    pub epoch: String,
    pub kind: GrantKind,
    /// When the credential was made (a token's `iat`, a session's creation).
    pub issued_at: Millis,
    /// When it stops being good (a token's `exp`, a session's expiry).
    pub expires_at: Millis,
}

/// Whether a grant is still good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Good,
    /// Its user was removed, changed password (a new epoch) or changed role; or its session
    /// was signed out.
    Revoked,
    /// Past its expiry.
    Expired,
}

/// A fresh credential epoch: 128 random bits in hex, for a new user or a new password.
pub(crate) fn new_epoch() -> String {
    let bytes: [u8; 16] = rand::random();
    super::hex(&bytes)
}

/// The decision: `current` is the user's state now (`None`: no such user).
pub(crate) fn judge(grant: &Grant, current: Option<&UserState>, now: Millis) -> Verdict {
    if now >= grant.expires_at {
        return Verdict::Expired;
    }
    match current {
        Some(user) if user.epoch == grant.epoch && user.role == grant.role => Verdict::Good,
        _ => Verdict::Revoked,
    }
}

/// Every user's current state, as read from the database at `read_at`.
#[derive(Debug, Clone, Default)]
pub(crate) struct KnownUsers {
    users: HashMap<String, UserState>,
    read_at: Millis,
}

impl KnownUsers {
    pub(crate) fn new(users: HashMap<String, UserState>, read_at: Millis) -> KnownUsers {
        KnownUsers { users, read_at }
    }

    pub(crate) fn get(&self, user: &str) -> Option<&UserState> {
        self.users.get(user)
    }

    /// [`judge`] against this table.
    pub(crate) fn judge(&self, grant: &Grant, now: Millis) -> Verdict {
        judge(grant, self.get(&grant.user), now)
    }

    /// Whether this table may be too old to know `grant`: read before the grant was made (a
    /// user added, or a password changed, and a token issued, since). Only then is a refusal by
    /// the table worth a look at the database; a revoked credential is older than the table
    /// that no longer has its epoch.
    pub(crate) fn may_predate(&self, grant: &Grant) -> bool {
        grant.issued_at + ISSUE_SLACK_MS >= self.read_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_795_428_930_000;

    fn state(epoch: &str, role: Role) -> UserState {
        UserState {
            epoch: epoch.into(),
            role,
        }
    }

    fn grant(kind: GrantKind) -> Grant {
        Grant {
            user: "ada".into(),
            role: Role::Operator,
            epoch: "e1".into(),
            kind,
            issued_at: NOW - 60_000,
            expires_at: NOW + 60_000,
        }
    }

    #[test]
    fn a_grant_is_good_while_its_user_has_the_same_epoch_and_role_and_it_has_not_expired() {
        for kind in [
            GrantKind::Token,
            GrantKind::Session {
                key: "k".repeat(64),
            },
        ] {
            let grant = grant(kind);
            let same = state("e1", Role::Operator);
            assert_eq!(judge(&grant, Some(&same), NOW), Verdict::Good);
            assert_eq!(judge(&grant, None, NOW), Verdict::Revoked, "removed");
            let new_password = state("e2", Role::Operator);
            assert_eq!(judge(&grant, Some(&new_password), NOW), Verdict::Revoked);
            let demoted = state("e1", Role::Admin);
            assert_eq!(judge(&grant, Some(&demoted), NOW), Verdict::Revoked);
        }
    }

    #[test]
    fn every_epoch_is_new() {
        let (a, b) = (new_epoch(), new_epoch());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn expiry_is_exact_and_wins_over_everything_else() {
        let grant = grant(GrantKind::Token);
        let same = state("e1", Role::Operator);
        let at = grant.expires_at;
        assert_eq!(judge(&grant, Some(&same), at - 1), Verdict::Good);
        assert_eq!(judge(&grant, Some(&same), at), Verdict::Expired);
        assert_eq!(judge(&grant, None, at + 1), Verdict::Expired);
    }

    #[test]
    fn a_user_removed_and_added_again_does_not_get_the_old_grants_back() {
        let grant = grant(GrantKind::Token);
        // A new user of the same name has a new epoch, whatever the role.
        let again = KnownUsers::new(
            HashMap::from([("ada".to_owned(), state("e9", Role::Operator))]),
            NOW,
        );
        assert_eq!(again.judge(&grant, NOW), Verdict::Revoked);
    }

    #[test]
    fn only_a_table_read_before_the_grant_was_made_may_not_know_it() {
        let grant = grant(GrantKind::Token);
        let read_before = KnownUsers::new(HashMap::new(), grant.issued_at - 500);
        assert!(read_before.may_predate(&grant));
        let read_just_after = KnownUsers::new(HashMap::new(), grant.issued_at + 1_000);
        assert!(
            read_just_after.may_predate(&grant),
            "iat is in whole seconds"
        );
        let read_later = KnownUsers::new(HashMap::new(), grant.issued_at + 10_000);
        assert!(!read_later.may_predate(&grant));
    }
}
