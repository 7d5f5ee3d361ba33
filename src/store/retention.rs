//! Retention: deleting what is past every window (order id buckets and user rows past the
//! dedupe window, history past 8 days, announcements, sessions, kiosk sessions, the audit
//! log), and on PostgreSQL making the space reusable.

use super::{announcements, Store, StoreError};
use crate::aggregate::{Millis, MINUTE_MS};
use crate::config::Backend;
use sqlx::Executor;

/// History is kept a day longer than the 7 days promised (docs/api.md, HTTP routes: history),
/// and 3 hours more: last week's revenue from its midnight to the same time of day reaches
/// back up to 8 days and 2 hours (a 25-hour day a week ago, compared at its end).
const HISTORY_KEEP_MS: Millis = (8 * 24 + 3) * 60 * MINUTE_MS;

impl Store {
    /// Deletes what is past every retention window. Returns the number of rows removed.
    pub async fn prune(&self, now: Millis) -> Result<u64, StoreError> {
        let events = self.prune_order_ids(now).await?;
        let minutes = sqlx::query("DELETE FROM minute_stats WHERE minute < $1")
            .bind(now - HISTORY_KEEP_MS)
            .execute(&self.writer)
            .await?
            .rows_affected();
        let announcements = sqlx::query("DELETE FROM announcements WHERE created_at < $1")
            .bind(now - announcements::ANNOUNCEMENTS_KEEP_MS)
            .execute(&self.writer)
            .await?
            .rows_affected();
        let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&self.writer)
            .await?
            .rows_affected();
        // A kiosk session lives as long as its link did when it opened (a link issued again
        // is a new link): past that it is dead, the screen gets the revoked page.
        let kiosk_sessions = sqlx::query("DELETE FROM kiosk_sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&self.writer)
            .await?
            .rows_affected();
        let audit = self.prune_audit(now).await?;
        Ok(events + minutes + announcements + sessions + kiosk_sessions + audit)
    }

    /// Deletes every bucket of order ids that ended before the dedupe window, one statement
    /// each on the leading key (no scan), and the user rows last seen before it. Returns the
    /// number of rows removed.
    async fn prune_order_ids(&self, now: Millis) -> Result<u64, StoreError> {
        let before = now - self.dedupe.keep_ms;
        let expired: Vec<i64> =
            sqlx::query_scalar("SELECT bucket FROM order_id_buckets WHERE ends_at <= $1")
                .bind(before)
                .fetch_all(&self.writer)
                .await?;
        let mut removed = 0;
        let buckets_dropped = !expired.is_empty();
        for bucket in expired {
            let mut tx = self.writer.begin().await?;
            removed += sqlx::query("DELETE FROM order_ids WHERE bucket = $1")
                .bind(bucket)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM order_id_buckets WHERE bucket = $1")
                .bind(bucket)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        removed += sqlx::query(
            "DELETE FROM user_presence WHERE COALESCE(last_active, $1) < $1 \
             AND COALESCE(last_signed_out, $1) < $1",
        )
        .bind(before)
        .execute(&self.writer)
        .await?
        .rows_affected();
        if buckets_dropped {
            self.vacuum_after_prune().await?;
        }
        Ok(removed)
    }

    /// On PostgreSQL, makes the space of the rows just deleted reusable, once per dropped
    /// bucket (a sixth of the dedupe window): a `DELETE` leaves dead row versions and index
    /// entries that only `VACUUM` reclaims, and autovacuum may be off, or wait for a fifth of
    /// a table to be dead (its default), which `order_ids` reaches every other bucket only.
    /// A plain `VACUUM` blocks no reads or writes; `SKIP_LOCKED` leaves a table that another
    /// vacuum is working on to it. SQLite reuses a deleted page by itself.
    async fn vacuum_after_prune(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            self.writer
                .execute("VACUUM (SKIP_LOCKED) order_ids, order_id_buckets, user_presence")
                .await?;
        }
        Ok(())
    }
}
