//! Kiosk links and the sessions screens exchange their keys for (docs/security.md, Kiosk
//! links). Only digests are stored: the link's key and the session's id, each as SHA-256. A
//! link's epoch is carried into the table of credential epochs (`kiosk_states`), so that every
//! instance's once-a-second read ends the streams of a link revoked by another process.

use super::{Store, StoreError};
use crate::aggregate::Millis;
use crate::auth::grant::{new_epoch, UserState};
use crate::auth::{kiosk, Role};
use sqlx::Row;
use std::collections::HashMap;

/// A link as `tokens list` and the console's `tokens.list` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KioskLink {
    pub name: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    /// `None` until a screen first used it.
    pub last_used_at: Option<Millis>,
}

/// A live kiosk session of a live link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KioskSession {
    pub link: String,
    pub epoch: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

impl KioskSession {
    /// Its credential state, as the table of epochs has it.
    pub(crate) fn state(&self) -> UserState {
        UserState {
            epoch: self.epoch.clone(),
            role: Role::Kiosk,
        }
    }
}

impl Store {
    /// A new link named `name` for the key with digest `key_hash`; `false` when the name is
    /// taken by a link that has not expired (an expired one is replaced).
    pub(crate) async fn issue_kiosk_link(
        &self,
        name: &str,
        key_hash: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer().begin().await?;
        let expired: Vec<String> =
            sqlx::query("SELECT name FROM kiosk_links WHERE name = $1 AND expires_at <= $2")
                .bind(name)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
        for name in expired {
            delete_link(&mut tx, &name).await?;
        }
        let created = sqlx::query(
            "INSERT INTO kiosk_links (name, key_hash, epoch, created_at, expires_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(key_hash)
        .bind(new_epoch())
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(created == 1)
    }

    /// Every link, by name, expired ones too (until revoked or issued again).
    pub(crate) async fn kiosk_links(&self) -> Result<Vec<KioskLink>, StoreError> {
        sqlx::query(
            "SELECT name, created_at, expires_at, last_used_at FROM kiosk_links ORDER BY name",
        )
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(|row| {
            let last_used: Millis = row.try_get(3)?;
            Ok(KioskLink {
                name: row.try_get(0)?,
                created_at: row.try_get(1)?,
                expires_at: row.try_get(2)?,
                last_used_at: (last_used > 0).then_some(last_used),
            })
        })
        .collect()
    }

    /// Deletes the link and its sessions; the digests of those sessions (whose connections
    /// end), or `None` when there is no such link.
    pub(crate) async fn revoke_kiosk_link(
        &self,
        name: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.writer().begin().await?;
        let sessions = delete_link(&mut tx, name).await?;
        tx.commit().await?;
        Ok(sessions)
    }

    /// Exchanges a key (its digest) for a session with id digest `session_hash`, if the key
    /// is a live link's; marks the link used. The link's name and expiry when it was.
    pub(crate) async fn open_kiosk_session(
        &self,
        key_hash: &str,
        session_hash: &str,
        now: Millis,
    ) -> Result<Option<(String, Millis)>, StoreError> {
        let mut tx = self.writer().begin().await?;
        let link = sqlx::query(
            "SELECT name, epoch, expires_at FROM kiosk_links WHERE key_hash = $1 AND expires_at > $2",
        )
        .bind(key_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(link) = link else {
            return Ok(None);
        };
        let name: String = link.try_get(0)?;
        let epoch: String = link.try_get(1)?;
        let expires_at: Millis = link.try_get(2)?;
        sqlx::query(
            "INSERT INTO kiosk_sessions (id_hash, link, epoch, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(session_hash)
        .bind(&name)
        .bind(&epoch)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE kiosk_links SET last_used_at = $1 WHERE name = $2")
            .bind(now)
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((name, expires_at)))
    }

    /// A live session of a live link, if its epoch is still the link's.
    pub(crate) async fn kiosk_session(
        &self,
        id_hash: &str,
        now: Millis,
    ) -> Result<Option<KioskSession>, StoreError> {
        let row = sqlx::query(
            "SELECT s.link, l.epoch, s.created_at, l.expires_at FROM kiosk_sessions s \
             JOIN kiosk_links l ON l.name = s.link AND l.epoch = s.epoch \
             WHERE s.id_hash = $1 AND l.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(self.reader())
        .await?;
        match row {
            Some(row) => Ok(Some(KioskSession {
                link: row.try_get(0)?,
                epoch: row.try_get(1)?,
                created_at: row.try_get(2)?,
                expires_at: row.try_get(3)?,
            })),
            None => Ok(None),
        }
    }

    /// Records that `link` was used at `now` (never moving it back). How often is decided by
    /// the caller (`auth::kiosk::LinkUse`): every call is a write.
    pub(crate) async fn touch_kiosk_link(&self, link: &str, now: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE kiosk_links SET last_used_at = $1 WHERE name = $2 AND last_used_at < $3",
        )
        .bind(now)
        .bind(link)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Every link's epoch under its holder name (`auth::kiosk::holder`): read with the users'
    /// into the table every instance judges credentials by.
    pub(crate) async fn kiosk_states(&self) -> Result<HashMap<String, UserState>, StoreError> {
        sqlx::query("SELECT name, epoch FROM kiosk_links")
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|row| {
                let name: String = row.try_get(0)?;
                let state = UserState {
                    epoch: row.try_get(1)?,
                    role: Role::Kiosk,
                };
                Ok((kiosk::holder(&name), state))
            })
            .collect()
    }
}

/// Deletes link `name` and its sessions inside `tx`; the sessions' digests, or `None` when
/// there was no such link.
async fn delete_link(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    let sessions: Vec<String> =
        sqlx::query("DELETE FROM kiosk_sessions WHERE link = $1 RETURNING id_hash")
            .bind(name)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
    let removed = sqlx::query("DELETE FROM kiosk_links WHERE name = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok((removed == 1).then_some(sessions))
}

#[cfg(test)]
mod tests {
    use crate::config::DatabaseUrl;
    use crate::store::Store;
    use sqlx::Row;

    async fn sessions(store: &Store) -> i64 {
        sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM kiosk_sessions")
            .fetch_one(store.reader())
            .await
            .expect("count")
            .try_get(0)
            .expect("count")
    }

    #[tokio::test]
    async fn expired_kiosk_sessions_are_pruned_and_live_ones_kept() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let url: DatabaseUrl = format!("sqlite://{}", folder.path().join("kiosk.db").display())
            .parse()
            .expect("url");
        let store = Store::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        let now = 1_000_000;
        assert!(store
            .issue_kiosk_link("short", "k1", now, now + 60_000)
            .await
            .expect("issue"));
        assert!(store
            .issue_kiosk_link("long", "k2", now, now + 600_000)
            .await
            .expect("issue"));
        for (key, session) in [("k1", "s1"), ("k2", "s2")] {
            let opened = store.open_kiosk_session(key, session, now).await;
            assert!(opened.expect("open").is_some(), "{key} is live");
        }
        assert_eq!(sessions(&store).await, 2);

        store.prune(now + 120_000).await.expect("prune");
        assert_eq!(
            sessions(&store).await,
            1,
            "the expired link's session is gone"
        );
        let live = store
            .kiosk_session("s2", now + 120_000)
            .await
            .expect("read");
        assert!(live.is_some(), "the live link's session is kept");
        store.close().await;
    }
}
