//! The ingest lease: which instance aggregates.
//!
//! One row, `leader_lease/ingest`, names the holder, an expiry and an epoch. An instance takes
//! the lease only once it has expired, which bumps the epoch; every batch commit re-checks holder
//! and epoch inside its own transaction ([`Lease::fence`]), so a leader that stalled past its
//! expiry cannot commit after another took over. Expiry uses the instances' clocks: they must be
//! NTP-synchronised to well under the lease duration (see docs/operations.md).

use super::{Store, StoreError};
use crate::aggregate::Millis;
use sqlx::{Any, Row, Transaction};

/// Proof of leadership held by one node for one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub epoch: i64,
    /// How long each renewal extends the lease.
    pub ttl_ms: Millis,
}

impl Lease {
    /// Renews the lease inside `tx`, or fails with [`StoreError::LostLease`] if it is gone.
    pub(super) async fn fence(
        &self,
        tx: &mut Transaction<'_, Any>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let renewed = sqlx::query(
            "UPDATE leader_lease SET expires_at = $1 \
             WHERE name = 'ingest' AND holder = $2 AND epoch = $3",
        )
        .bind(now + self.ttl_ms)
        .bind(self.holder.as_str())
        .bind(self.epoch)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if renewed == 1 {
            Ok(())
        } else {
            Err(StoreError::LostLease)
        }
    }
}

impl Store {
    /// Takes the lease if it has expired, or if this node held it (after a database blip it
    /// resumes at once, under a new epoch). `None` while another node holds it.
    pub async fn try_acquire_lease(
        &self,
        node: &str,
        now: Millis,
        ttl_ms: Millis,
    ) -> Result<Option<Lease>, StoreError> {
        let query = sqlx::query(
            "UPDATE leader_lease SET holder = $1, epoch = epoch + 1, expires_at = $2 \
             WHERE name = 'ingest' AND (expires_at < $3 OR holder = $1) RETURNING epoch",
        )
        .bind(node)
        .bind(now + ttl_ms)
        .bind(now);
        match self.write_returning(query).await?.pop() {
            Some(row) => Ok(Some(Lease {
                holder: node.to_owned(),
                epoch: row.try_get(0)?,
                ttl_ms,
            })),
            None => Ok(None),
        }
    }

    /// Extends the lease outside a batch (while idle). Fails with `LostLease` if it is gone.
    pub async fn renew_lease(&self, lease: &Lease, now: Millis) -> Result<(), StoreError> {
        let mut tx = self.writer().begin().await?;
        lease.fence(&mut tx, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives the lease up at once, so another instance takes over without waiting for expiry.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leader_lease SET expires_at = 0 \
             WHERE name = 'ingest' AND holder = $1 AND epoch = $2",
        )
        .bind(lease.holder.as_str())
        .bind(lease.epoch)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The current holder, if the lease is live at `now`.
    pub async fn lease_holder(&self, now: Millis) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT holder FROM leader_lease WHERE name = 'ingest' AND expires_at >= $1",
        )
        .bind(now)
        .fetch_optional(self.reader())
        .await?;
        Ok(match row {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }
}
