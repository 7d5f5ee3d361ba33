//! Announcements: operator messages to every dashboard, replayable for 24 hours.

use super::{Store, StoreError};
use crate::aggregate::Millis;
use sqlx::any::AnyRow;
use sqlx::Row;

/// Announcements older than this are deleted by `prune` (replay needs only 24 h).
pub(super) const ANNOUNCEMENTS_KEEP_MS: Millis = 7 * 24 * 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredAnnouncement {
    pub id: i64,
    pub level: String,
    pub message: String,
    pub author: String,
    pub created_at: Millis,
}

impl Store {
    /// Stores an announcement under the next id. The counter row is locked until commit, so
    /// ids become visible in order and a reader that has seen id N has seen all below it.
    pub(crate) async fn create_announcement(
        &self,
        level: &str,
        message: &str,
        author: &str,
        now: Millis,
    ) -> Result<StoredAnnouncement, StoreError> {
        let mut tx = self.writer().begin().await?;
        let id: i64 = sqlx::query(
            "UPDATE counters SET value = value + 1 WHERE name = 'announcement_id' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        sqlx::query(
            "INSERT INTO announcements (id, level, message, author, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(level)
        .bind(message)
        .bind(author)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(StoredAnnouncement {
            id,
            level: level.to_owned(),
            message: message.to_owned(),
            author: author.to_owned(),
            created_at: now,
        })
    }

    /// Announcements with `id > after` created at or after `since`, oldest first.
    pub(crate) async fn announcements_after(
        &self,
        after: i64,
        since: Millis,
        limit: i64,
    ) -> Result<Vec<StoredAnnouncement>, StoreError> {
        sqlx::query(
            "SELECT id, level, message, author, created_at FROM announcements \
             WHERE id > $1 AND created_at >= $2 ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(since)
        .bind(limit)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(announcement)
        .collect()
    }

    /// The newest announcements, newest first.
    pub(crate) async fn latest_announcements(
        &self,
        limit: i64,
    ) -> Result<Vec<StoredAnnouncement>, StoreError> {
        sqlx::query(
            "SELECT id, level, message, author, created_at FROM announcements \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(announcement)
        .collect()
    }

    /// The highest announcement id ever issued (0 when none).
    pub(crate) async fn last_announcement_id(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT value FROM counters WHERE name = 'announcement_id'")
            .fetch_one(self.reader())
            .await?;
        Ok(row.try_get(0)?)
    }
}

fn announcement(row: &AnyRow) -> Result<StoredAnnouncement, StoreError> {
    Ok(StoredAnnouncement {
        id: row.try_get(0)?,
        level: row.try_get(1)?,
        message: row.try_get(2)?,
        author: row.try_get(3)?,
        created_at: row.try_get(4)?,
    })
}
