//! Access tokens: short-lived HS256 JWTs naming a user and role, signed with the shared secret.
//!
//! Every instance on one database has the same secret (`PULSEBOARD_SECRET`, or one generated
//! once and kept in the database), so a token from one instance is good on all of them.

use super::Role;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A token for `user` valid `ttl_secs` from `now_secs`.
    pub fn issue(&self, user: &str, role: Role, now_secs: i64, ttl_secs: i64) -> String {
        let claims = Claims {
            sub: user.to_owned(),
            role,
            iat: now_secs,
            exp: now_secs + ttl_secs,
        };
        // HS256 over plain claims cannot fail.
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).unwrap_or_default()
    }

    /// The claims of a well-signed, unexpired token (no leeway: expired means expired).
    pub fn verify(&self, token: &str) -> Option<Claims> {
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
        let token = keys.issue("ada", Role::Operator, now(), 900);
        let claims = keys.verify(&token).expect("valid");
        assert_eq!((claims.sub.as_str(), claims.role), ("ada", Role::Operator));
        assert!(TokenKeys::new(b"secret two").verify(&token).is_none());
        assert!(keys
            .verify(&keys.issue("ada", Role::Admin, now() - 1_000, 900))
            .is_none());
        let mut tampered = token.clone();
        tampered.insert(tampered.find('.').expect("dot") + 2, 'x');
        assert!(keys.verify(&tampered).is_none());
        assert!(keys.verify("garbage").is_none());
    }
}
