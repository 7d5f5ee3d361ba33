//! Durable state in SQLite (embedded, default) or PostgreSQL, behind one API.
//!
//! The store owns every SQL statement. It is the source of truth for exactly-once: a batch of
//! events is applied in one transaction fenced by the ingest lease (`batch`: `apply_batch`);
//! the rest of it is what a new leader rebuilds from (`restore`), history, the lease
//! (`lease`), the snapshot sequence, announcements, users and sessions, the console's audit
//! log (`audit`), settings (among them the ingest pause) and retention (`retention`).
//!
//! `sqlx::AnyPool`s serve both backends (`pools` opens them); their SQL is shared
//! (placeholders `$N`, `ON CONFLICT`, `RETURNING`) except the batch statements: SQLite's read
//! one JSON array of rows, PostgreSQL's one array per column (`params`), so that every batch
//! size runs one prepared statement. The migrations differ (`schema` applies and checks them).
//! SQLite gets one writer connection, so writers take turns in order, and a pool of read-only
//! connections beside it; PostgreSQL one pool for both. Every operation fails with the one
//! [`StoreError`] (`error`). Sums are cast to BIGINT because PostgreSQL's NUMERIC has no
//! portable decoding.

mod announcements;
mod audit;
pub(crate) mod batch;
mod error;
mod kiosk;
mod lease;
mod params;
mod pools;
mod restore;
mod retention;
mod schema;
mod users;

pub(crate) use announcements::StoredAnnouncement;
pub(crate) use audit::{AuditRow, NewAudit};
pub use batch::order_digest;
pub use error::StoreError;
pub(crate) use kiosk::KioskLink;
pub use lease::Lease;
pub(crate) use pools::{postgres, sqlite};

use crate::aggregate::{Millis, Point, Revision, MAX_AGE_MS, MAX_FUTURE_MS};
use crate::config::Backend;
use secrecy::SecretString;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};
use std::time::Duration;

/// Order ids are looked up in this many buckets of the dedupe window (and a few beyond it):
/// more buckets would keep less beyond the window, fewer would probe less per order.
const DEDUPE_BUCKETS: Millis = 6;

/// How long order ids (and user rows) are kept, and the width of the buckets they are kept in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DedupeWindow {
    /// The window, plus a 24th of it and the 5 minutes an event may come from the future, so
    /// that a redelivery at the edge still finds its id (24 h: 25 h 05 min).
    keep_ms: Millis,
    bucket_ms: Millis,
}

impl DedupeWindow {
    fn new(window_ms: Millis) -> DedupeWindow {
        let keep_ms = window_ms + window_ms / 24 + MAX_FUTURE_MS;
        DedupeWindow {
            keep_ms,
            bucket_ms: (keep_ms / DEDUPE_BUCKETS).max(1_000),
        }
    }
}

/// What a committed batch did, in the order of the events given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `true` where the event was new and is now counted; `false` for a duplicate.
    pub fresh: Vec<bool>,
    /// What its late events revised, as stored with it.
    pub revision: Revision,
}

/// Handle to the database. Cloning is shallow.
#[derive(Clone, Debug)]
pub struct Store {
    /// Every statement that writes. For SQLite one connection, so writers queue here in
    /// order instead of retrying in SQLite's sleeping busy wait, which promises no order while
    /// the leader commits batch after batch. Its page cache also stays warm between batches.
    writer: AnyPool,
    /// Statements that only read. For SQLite, connections that read beside the writer (WAL)
    /// and refuse to write (`query_only`); for PostgreSQL the same pool as `writer`.
    reader: AnyPool,
    backend: Backend,
    /// Where the pools connect: [`Store::explain_timeout`] asks there why they cannot.
    url: SecretString,
    /// How long an audit row is kept (`PULSEBOARD_AUDIT_RETENTION_SECS`).
    audit_keep_ms: Millis,
    /// How long order ids and user rows are kept (`PULSEBOARD_DEDUPE_WINDOW_SECS`).
    dedupe: DedupeWindow,
}

impl Store {
    /// How long an order id is remembered (and an event may be old): 24 hours by default.
    pub fn with_dedupe_window(mut self, window: Duration) -> Store {
        let window_ms = Millis::try_from(window.as_millis()).unwrap_or(MAX_AGE_MS);
        self.dedupe = DedupeWindow::new(window_ms.clamp(1_000, MAX_AGE_MS));
        self
    }

    /// Records the users active at the end of `minute`, completing its history point.
    pub async fn close_minute(&self, minute: Millis, active_users: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO minute_stats (minute, active_users) VALUES ($1, $2) \
             ON CONFLICT (minute) DO UPDATE SET active_users = excluded.active_users",
        )
        .bind(minute)
        .bind(i64::try_from(active_users).unwrap_or(i64::MAX))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// History points with `from <= minute < to`, oldest first; minutes without a row are absent.
    pub async fn history(&self, from: Millis, to: Millis) -> Result<Vec<Point>, StoreError> {
        sqlx::query(
            "SELECT minute, orders, revenue_minor, active_users FROM minute_stats \
             WHERE minute >= $1 AND minute < $2 ORDER BY minute",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|row| {
            Ok(Point {
                minute: row.try_get(0)?,
                orders: row.try_get(1)?,
                revenue_minor: row.try_get(2)?,
                active_users: u64::try_from(row.try_get::<i64, _>(3)?).unwrap_or(0),
            })
        })
        .collect()
    }

    /// Reserves `count` snapshot sequence numbers; returns the first. Reserving in blocks keeps
    /// `seq` strictly increasing across restarts and failover without a write per snapshot.
    pub async fn reserve_seq(&self, count: i64) -> Result<i64, StoreError> {
        let query = sqlx::query(
            "UPDATE counters SET value = value + $1 WHERE name = 'snapshot_seq' RETURNING value",
        )
        .bind(count);
        let row = self
            .write_returning(query)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no snapshot_seq counter".into()))?;
        let last: i64 = row.try_get(0)?;
        Ok(last - count + 1)
    }

    /// The highest snapshot seq any leader has reserved: no genuine snapshot is above it.
    pub(crate) async fn reserved_seq(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT value FROM counters WHERE name = 'snapshot_seq'")
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The value stored under `name`, storing `generate()` first if there is none. Every instance
    /// on the database gets the same value, whoever stored it first.
    pub async fn setting_or_insert(
        &self,
        name: &str,
        generate: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(generate())
        .execute(&self.writer)
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&self.writer)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Count of order ids currently remembered (for status and tests).
    pub async fn applied_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM order_ids")
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Count of event users with a presence row of their own (for tests).
    pub async fn presence_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM user_presence")
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Runs one write that returns rows (`RETURNING`) on its own, outside a transaction, and
    /// returns them all. Never `fetch_one` or `fetch_optional` for such a write: on SQLite they
    /// stop at the first row, and the statement's own commit then happens as it is reset, where
    /// sqlx drops its error; on a full disk the caller got a lease or a block of snapshot
    /// numbers that was never stored, and handed out again later.
    async fn write_returning<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<Vec<AnyRow>, StoreError> {
        Ok(query.fetch_all(&self.writer).await?)
    }

    pub(crate) fn writer(&self) -> &AnyPool {
        &self.writer
    }

    pub(crate) fn reader(&self) -> &AnyPool {
        &self.reader
    }
}
