//! Users and browser sessions, with each user's credential epoch (`auth::grant`): made anew
//! when a user is created and when their password changes, so that either revokes what was
//! issued before.

use super::{Store, StoreError};
use crate::aggregate::Millis;
use crate::auth::grant::{new_epoch, UserState};
use crate::auth::Role;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserRow {
    pub username: String,
    pub role: Role,
    pub created_at: Millis,
}

/// What signing in checks: the password's hash, and what a credential is issued under.
#[derive(Debug, Clone)]
pub struct StoredUser {
    pub password_hash: String,
    pub(crate) state: UserState,
}

/// A live session whose epoch is still its user's.
#[derive(Debug, Clone)]
pub(crate) struct SessionRow {
    pub username: String,
    /// The user's current role.
    pub role: Role,
    pub epoch: String,
    pub csrf: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

fn role_of(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown role {text:?}")))
}

/// A user's state from the columns `role, credential_epoch` at `at` and `at + 1`.
fn state_at(row: &AnyRow, at: usize) -> Result<UserState, StoreError> {
    Ok(UserState {
        role: role_of(&row.try_get::<String, _>(at)?)?,
        epoch: row.try_get(at + 1)?,
    })
}

impl Store {
    /// Creates a user with a fresh credential epoch; `false` when the name is taken.
    pub(crate) async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let created = sqlx::query(
            "INSERT INTO users (username, password_hash, role, created_at, credential_epoch) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username) DO NOTHING",
        )
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now)
        .bind(new_epoch())
        .execute(self.writer())
        .await?
        .rows_affected();
        Ok(created == 1)
    }

    /// The stored hash, role and credential epoch of `username`.
    pub async fn user_credentials(&self, username: &str) -> Result<Option<StoredUser>, StoreError> {
        // No stored name holds U+0000 (PostgreSQL refuses it), so asking would only fail.
        if username.contains('\0') {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT password_hash, role, credential_epoch FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(self.reader())
        .await?;
        match row {
            Some(row) => Ok(Some(StoredUser {
                password_hash: row.try_get(0)?,
                state: state_at(&row, 1)?,
            })),
            None => Ok(None),
        }
    }

    /// Every user's role and credential epoch: the table each instance checks tokens against.
    pub(crate) async fn user_states(&self) -> Result<HashMap<String, UserState>, StoreError> {
        sqlx::query("SELECT username, role, credential_epoch FROM users")
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, state_at(row, 1)?)))
            .collect()
    }

    pub(crate) async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        sqlx::query("SELECT username, role, created_at FROM users ORDER BY username")
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|row| {
                Ok(UserRow {
                    username: row.try_get(0)?,
                    role: role_of(&row.try_get::<String, _>(1)?)?,
                    created_at: row.try_get(2)?,
                })
            })
            .collect()
    }

    pub(crate) async fn user_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM users")
            .fetch_one(self.reader())
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Removes a user and their sessions; `false` when there is no such user.
    pub(crate) async fn remove_user(&self, username: &str) -> Result<bool, StoreError> {
        let mut tx = self.writer().begin().await?;
        sqlx::query("DELETE FROM sessions WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query("DELETE FROM users WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(removed == 1)
    }

    /// Replaces a password under a new credential epoch, which revokes the user's tokens, and
    /// deletes their sessions; `false` when there is no such user.
    pub(crate) async fn set_password(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer().begin().await?;
        let changed = sqlx::query(
            "UPDATE users SET password_hash = $1, credential_epoch = $2 WHERE username = $3",
        )
        .bind(password_hash)
        .bind(new_epoch())
        .bind(username)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM sessions WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(changed == 1)
    }

    /// A session of `username` under their credential epoch `epoch` (read when the password
    /// was checked: a password changed in between leaves this session dead at birth).
    pub(crate) async fn create_session(
        &self,
        id_hash: &str,
        username: &str,
        epoch: &str,
        csrf: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, username, epoch, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id_hash)
        .bind(username)
        .bind(epoch)
        .bind(csrf)
        .bind(now)
        .bind(expires_at)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// A live session with its user's current role, if its epoch is still the user's.
    pub(crate) async fn session(
        &self,
        id_hash: &str,
        now: Millis,
    ) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT s.username, u.role, u.credential_epoch, s.csrf, s.created_at, s.expires_at \
             FROM sessions s \
             JOIN users u ON u.username = s.username AND u.credential_epoch = s.epoch \
             WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(self.reader())
        .await?;
        match row {
            Some(row) => {
                let state = state_at(&row, 1)?;
                Ok(Some(SessionRow {
                    username: row.try_get(0)?,
                    role: state.role,
                    epoch: state.epoch,
                    csrf: row.try_get(3)?,
                    created_at: row.try_get(4)?,
                    expires_at: row.try_get(5)?,
                }))
            }
            None => Ok(None),
        }
    }

    pub(crate) async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.writer())
            .await?;
        Ok(())
    }
}
