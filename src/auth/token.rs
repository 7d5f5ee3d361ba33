//! Access tokens: short-lived HS256 JWTs naming a user and role, signed with the shared secret.
//!
//! Every instance on one database has the same secret (`PULSEBOARD_SECRET`, or one generated
//! once and kept in the database), so a token from one instance is good on all of them.
//!
//! A token names the user's credential epoch (`epoch`, see [`super::grant`]): a password
//! change or a removal makes every token issued before it worthless. A token without one (made
//! before the claim existed) does not verify.

use super::grant::{Grant, GrantKind};
use super::Role;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub sub: String,
    pub role: Role,
    /// The user's credential epoch when the token was issued.
    pub epoch: String,
    pub iat: i64,
    pub exp: i64,
}

impl Claims {
    /// What an open connection remembers of this token.
    pub(crate) fn into_grant(self) -> Grant {
        Grant {
            user: self.sub,
            role: self.role,
            epoch: self.epoch,
            kind: GrantKind::Token,
            issued_at: self.iat.saturating_mul(1000),
            expires_at: self.exp.saturating_mul(1000),
        }
    }
}

#[derive(Clone)]
pub(crate) struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKeys {
    pub(crate) fn new(secret: &[u8]) -> Self {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A token for `user` under credential epoch `epoch`, valid `ttl_secs` from `now_secs`.
    pub(crate) fn issue(
        &self,
        user: &str,
        role: Role,
        epoch: &str,
        now_secs: i64,
        ttl_secs: i64,
    ) -> String {
        let claims = Claims {
            sub: user.to_owned(),
            role,
            epoch: epoch.to_owned(),
            iat: now_secs,
            exp: now_secs + ttl_secs,
        };
        // HS256 over plain claims cannot fail.
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).unwrap_or_default()
    }

    /// The claims of a well-signed, unexpired token (no leeway: expired means expired).
    pub(crate) fn verify(&self, token: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        decode::<Claims>(token, &self.decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn a_token_verifies_with_its_secret_only_and_until_it_expires() {
        let keys = TokenKeys::new(b"secret one");
        let token = keys.issue("ada", Role::Operator, "e1", now(), 900);
        let claims = keys.verify(&token).expect("valid");
        assert_eq!((claims.sub.as_str(), claims.role), ("ada", Role::Operator));
        assert_eq!(claims.epoch, "e1");
        assert!(TokenKeys::new(b"secret two").verify(&token).is_none());
        assert!(keys
            .verify(&keys.issue("ada", Role::Admin, "e1", now() - 1_000, 900))
            .is_none());
        let mut tampered = token.clone();
        tampered.insert(tampered.find('.').expect("dot") + 2, 'x');
        assert!(keys.verify(&tampered).is_none());
        assert!(keys.verify("garbage").is_none());
    }

    #[test]
    fn a_token_without_an_epoch_does_not_verify() {
        let keys = TokenKeys::new(b"secret one");
        let old =
            serde_json::json!({"sub": "ada", "role": "operator", "iat": now(), "exp": now() + 900});
        let token = encode(&Header::new(Algorithm::HS256), &old, &keys.encoding).expect("sign");
        assert!(keys.verify(&token).is_none());
    }

    #[test]
    fn a_token_becomes_a_grant_in_milliseconds() {
        let keys = TokenKeys::new(b"secret one");
        let iat = now();
        let token = keys.issue("ada", Role::Admin, "e7", iat, 900);
        let grant = keys.verify(&token).expect("valid").into_grant();
        assert_eq!(grant.kind, GrantKind::Token);
        assert_eq!(
            (grant.issued_at, grant.expires_at),
            (iat * 1000, (iat + 900) * 1000)
        );
        assert_eq!((grant.user.as_str(), grant.epoch.as_str()), ("ada", "e7"));
    }
}
