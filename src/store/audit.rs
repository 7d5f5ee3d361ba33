//! The console's audit log (docs/api.md, Console: audit) and the stored ingest pause.
//!
//! Rows are written by the console before it replies, so the log is never behind what an
//! operator was told; they are kept [`AUDIT_KEEP_MS`] unless the operator set another retention
//! ([`Store::with_audit_retention`]), and pruned with the rest by `prune`.

use super::{Store, StoreError};
use crate::aggregate::Millis;
use sqlx::any::AnyRow;
use sqlx::Row;

/// 90 days (SPEC §7).
pub(super) const AUDIT_KEEP_MS: Millis = 90 * 24 * 3_600_000;
const PAUSED_SETTING: &str = "ingest_paused";

/// What an audit row says, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewAudit<'a> {
    pub at: Millis,
    pub username: &'a str,
    pub node: &'a str,
    pub command: &'a str,
    /// The payload as received, JSON text.
    pub payload: &'a str,
    /// `ok` or the error code of the reply.
    pub outcome: &'a str,
    /// What happened, in words (the reply's message, or a summary of the result).
    pub detail: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditRow {
    pub id: i64,
    pub at: Millis,
    pub username: String,
    pub node: String,
    pub command: String,
    pub payload: String,
    pub outcome: String,
    pub detail: String,
}

impl Store {
    /// Appends one audit row and returns it with its id.
    pub(crate) async fn append_audit(&self, entry: &NewAudit<'_>) -> Result<AuditRow, StoreError> {
        let mut tx = self.writer().begin().await?;
        let id: i64 = sqlx::query(
            "UPDATE counters SET value = value + 1 WHERE name = 'audit_id' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        sqlx::query(
            "INSERT INTO audit_log (id, at, username, node, command, payload, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(entry.at)
        .bind(entry.username)
        .bind(entry.node)
        .bind(entry.command)
        .bind(entry.payload)
        .bind(entry.outcome)
        .bind(entry.detail)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AuditRow {
            id,
            at: entry.at,
            username: entry.username.to_owned(),
            node: entry.node.to_owned(),
            command: entry.command.to_owned(),
            payload: entry.payload.to_owned(),
            outcome: entry.outcome.to_owned(),
            detail: entry.detail.to_owned(),
        })
    }

    /// The latest `limit` audit rows, newest first.
    pub(crate) async fn audit_tail(&self, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        sqlx::query(
            "SELECT id, at, username, node, command, payload, outcome, detail FROM audit_log \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(audit_row)
        .collect()
    }

    /// This store with audit rows kept `keep` instead of [`AUDIT_KEEP_MS`].
    pub(crate) fn with_audit_retention(self, keep: std::time::Duration) -> Store {
        let audit_keep_ms = Millis::try_from(keep.as_millis()).unwrap_or(Millis::MAX);
        Store {
            audit_keep_ms,
            ..self
        }
    }

    pub(super) async fn prune_audit(&self, now: Millis) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(now.saturating_sub(self.audit_keep_ms))
            .execute(self.writer())
            .await?
            .rows_affected())
    }

    /// Whether an operator paused ingest (cluster-wide, until resumed).
    pub(crate) async fn ingest_paused(&self) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(PAUSED_SETTING)
            .fetch_optional(self.writer())
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<String, _>(0)? == "true",
            None => false,
        })
    }

    pub(crate) async fn set_ingest_paused(&self, paused: bool) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(PAUSED_SETTING)
        .bind(if paused { "true" } else { "false" })
        .execute(self.writer())
        .await?;
        Ok(())
    }
}

fn audit_row(row: &AnyRow) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        id: row.try_get(0)?,
        at: row.try_get(1)?,
        username: row.try_get(2)?,
        node: row.try_get(3)?,
        command: row.try_get(4)?,
        payload: row.try_get(5)?,
        outcome: row.try_get(6)?,
        detail: row.try_get(7)?,
    })
}
