//! Users and browser sessions.

use super::{Store, StoreError};
use crate::aggregate::Millis;
use crate::auth::Role;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub username: String,
    pub role: Role,
    pub created_at: Millis,
}

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub username: String,
    pub role: Role,
    pub csrf: String,
}

fn role_of(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown role {text:?}")))
}

impl Store {
    /// Creates a user; `false` when the name is taken.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let created = sqlx::query(
            "INSERT INTO users (username, password_hash, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (username) DO NOTHING",
        )
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now)
        .execute(self.writer())
        .await?
        .rows_affected();
        Ok(created == 1)
    }

    /// The stored hash and role of `username`.
    pub async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(String, Role)>, StoreError> {
        // No stored name holds U+0000 (PostgreSQL refuses it), so asking would only fail.
        if username.contains('\0') {
            return Ok(None);
        }
        let row = sqlx::query("SELECT password_hash, role FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(self.reader())
            .await?;
        match row {
            Some(row) => Ok(Some((
                row.try_get(0)?,
                role_of(&row.try_get::<String, _>(1)?)?,
            ))),
            None => Ok(None),
        }
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
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

    pub async fn user_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM users")
            .fetch_one(self.reader())
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Removes a user and their sessions; `false` when there is no such user.
    pub async fn remove_user(&self, username: &str) -> Result<bool, StoreError> {
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

    /// Replaces a password and signs the user out everywhere; `false` when there is no such user.
    pub async fn set_password(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer().begin().await?;
        let changed = sqlx::query("UPDATE users SET password_hash = $1 WHERE username = $2")
            .bind(password_hash)
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

    pub async fn create_session(
        &self,
        id_hash: &str,
        username: &str,
        csrf: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, username, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(username)
        .bind(csrf)
        .bind(now)
        .bind(expires_at)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// A live session with its user's current role.
    pub async fn session(
        &self,
        id_hash: &str,
        now: Millis,
    ) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT s.username, u.role, s.csrf FROM sessions s \
             JOIN users u ON u.username = s.username \
             WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(self.reader())
        .await?;
        match row {
            Some(row) => Ok(Some(SessionRow {
                username: row.try_get(0)?,
                role: role_of(&row.try_get::<String, _>(1)?)?,
                csrf: row.try_get(2)?,
            })),
            None => Ok(None),
        }
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.writer())
            .await?;
        Ok(())
    }
}
