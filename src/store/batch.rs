//! The exactly-once step: a batch of events applied in one transaction fenced by the lease.
//! Orders and refunds, the only events whose repeat would change a figure, are looked up by a
//! digest of their id among the ids recorded in the last 24 hours (the others are duplicates
//! and change nothing) and the new ones recorded; every new event's user gets their latest
//! activity or sign-out upserted, once per batch per user (last writer wins by event time,
//! so a repeated user event is applied again harmlessly); the new events' [`Delta`] is added to
//! the minute and day tables; and what the batch's late events revised ([`Revision`], from the
//! leader's [`Judgement`] narrowed to the events applied here, so a redelivery counts nothing
//! twice) is written beside: the late events counted on the commit's local day
//! (`daily_revenue.late_events`), the closed minutes' active users changed, and every revised
//! minute marked (`minute_stats.revised`). The caller acknowledges the messages only after this
//! commits.
//!
//! Order ids are kept as [`order_digest`]s in time buckets (`order_id_buckets` lists them), so
//! that a prune deletes a whole bucket with one statement. On PostgreSQL the digest alone is
//! the primary key (the bucket has an index of its own): one upsert decides which orders are
//! new and records them, one key probe an order. On SQLite the key leads with the bucket, so
//! that a prune deletes one contiguous range of the table (SQLite has one writer, and a prune
//! of scattered rows would hold it far longer): the lookup asks each live bucket first and
//! the new rows are inserted after. Both bind a whole batch's rows as one value per statement
//! parameter (`params`: PostgreSQL one array per column, SQLite one JSON array of rows), so
//! that every batch size runs the same statement text.
//!
//! Each statement on PostgreSQL is a round trip the commit waits for, while the broker waits
//! for the acknowledgement: a commit there is `BEGIN`, the fence, one order upsert (which
//! registers the bucket too) and one upsert of the presence, minute and day rows, then
//! `COMMIT`; a batch with late events adds what it revised (`write_revision`: one day
//! upsert and one update per revised minute). The fence stays a statement of its own and
//! comes first, so that a leader that lost the lease waits on the lease row before it locks
//! any other.

use super::params::{
    postgres_int_array, postgres_nullable_int_array, postgres_text_array, sqlite_json_rows, Json,
};
use super::{Applied, DedupeWindow, Lease, Store, StoreError};
use crate::aggregate::{id_hash, local_date, Delta, Event, EventKind, Judgement, Millis, Revision};
use crate::config::Backend;
use chrono::NaiveDate;
use chrono_tz::Tz;
use sqlx::Row;
use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

/// Staged order rows digested per commit when `Store::migrate` finishes migration
/// `20261228000010` on SQLite (which has no SHA-256 in SQL).
const DIGEST_PER_COMMIT: usize = 20_000;

/// An order id as stored: the first 16 bytes of its SHA-256, as two signed big-endian
/// integers. Stored, so it must never change. SHA-256 because producers choose the ids: no one
/// can make two ids share a digest, and at 10^9 ids a day the chance that two do at all is
/// about 10^-21 a day (docs/events.md, "Digests").
pub fn order_digest(id: &str) -> (i64, i64) {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&digest[..8]);
    lo.copy_from_slice(&digest[8..16]);
    (i64::from_be_bytes(hi), i64::from_be_bytes(lo))
}

/// An order's kind and amount in one column: a placed order's amount, or a refund's amount
/// as `-amount - 1` (so that a refund of 0 is told apart from an order of 0).
pub fn signed_minor(kind: &EventKind) -> Option<i64> {
    match kind {
        EventKind::OrderPlaced { amount_minor } => Some(*amount_minor),
        EventKind::OrderRefunded { amount_minor } => Some(-amount_minor - 1),
        _ => None,
    }
}

/// The inverse of [`signed_minor`].
pub(crate) fn kind_of_signed(signed: i64) -> EventKind {
    if signed >= 0 {
        EventKind::OrderPlaced {
            amount_minor: signed,
        }
    } else {
        EventKind::OrderRefunded {
            amount_minor: -(signed + 1),
        }
    }
}

/// One user's latest activity and sign-out among a batch's new events, with the
/// [`id_hash`] of the first event at each.
#[derive(Default)]
struct Seen {
    last_active: Option<Millis>,
    last_signed_out: Option<Millis>,
    active_id: i64,
    signed_out_id: i64,
}

impl Store {
    /// Applies a batch exactly once, fenced by `lease`. An order or refund whose id was
    /// applied before, or earlier in the batch, is a duplicate: `Applied::fresh` is false for
    /// it and it changes nothing. A user event is fresh unless its id is earlier in the batch:
    /// applied again, it changes nothing either (the aggregator may still recognise it).
    /// `judgement` says which events are late and what they change in closed minutes (the
    /// default: none); `Applied::revision` is what of it this commit stored.
    pub async fn apply_batch(
        &self,
        lease: &Lease,
        events: &[Event],
        judgement: &Judgement,
        timezone: Tz,
        now: Millis,
    ) -> Result<Applied, StoreError> {
        let mut tx = self.writer.begin().await?;
        lease.fence(&mut tx, now).await?;

        let mut fresh = first_copies(events);
        let orders: Vec<usize> = (0..events.len())
            .filter(|&i| fresh[i] && signed_minor(&events[i].kind).is_some())
            .collect();
        if !orders.is_empty() {
            let mut candidates = Vec::with_capacity(orders.len());
            let mut seen = HashSet::with_capacity(orders.len());
            for &i in &orders {
                let digest = order_digest(&events[i].id);
                // A digest seen once is a duplicate from then on, within the batch too.
                if seen.insert(digest) {
                    candidates.push((i, digest));
                } else {
                    fresh[i] = false;
                }
            }
            let recorded = self
                .record_new_orders(&mut tx, events, &candidates, now)
                .await?;
            for &(i, digest) in &candidates {
                fresh[i] = recorded.contains(&digest);
            }
        }
        let delta = Delta::of(
            events
                .iter()
                .zip(&fresh)
                .filter(|(_, f)| **f)
                .map(|(e, _)| e),
            timezone,
        );
        self.write_figures(&mut tx, &presence_of(events, &fresh), &delta)
            .await?;
        let revision = judgement.revision(events, &fresh, local_date(now, timezone));
        write_revision(&mut tx, &revision).await?;
        tx.commit().await?;
        Ok(Applied { fresh, revision })
    }

    /// Records in the bucket of `now` those of `candidates` (index in `events`, digest, every
    /// digest once) that no live bucket holds, and returns their digests: the batch's new
    /// orders. PostgreSQL keys `order_ids` by the digest alone, so one upsert both decides and
    /// records (a row of an expired bucket not yet pruned is taken over, as a new id); SQLite
    /// keys it by bucket first, so it asks each live bucket, then inserts.
    async fn record_new_orders(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        events: &[Event],
        candidates: &[(usize, (i64, i64))],
        now: Millis,
    ) -> Result<HashSet<(i64, i64)>, StoreError> {
        let bucket = self.dedupe.bucket_of(now);
        let ends_at = bucket + self.dedupe.bucket_ms;
        let live_after = now - self.dedupe.keep_ms;
        // (hi, lo, occurred_at, signed_minor) of every candidate, all orders or refunds.
        let mut rows: Vec<(i64, i64, i64, i64)> = candidates
            .iter()
            .filter_map(|&(i, (hi, lo))| {
                let event = &events[i];
                signed_minor(&event.kind).map(|signed| (hi, lo, event.occurred_at, signed))
            })
            .collect();
        match self.backend {
            Backend::Postgres => {
                upsert_orders_postgres(tx, (bucket, ends_at), live_after, rows).await
            }
            Backend::Sqlite => {
                register_bucket(tx, bucket, ends_at).await?;
                let buckets = live_buckets(tx, live_after).await?;
                let digests: Vec<(i64, i64)> = candidates.iter().map(|c| c.1).collect();
                let known = known_sqlite(tx, &buckets, &digests).await?;
                rows.retain(|&(hi, lo, _, _)| !known.contains(&(hi, lo)));
                let recorded = rows.iter().map(|&(hi, lo, _, _)| (hi, lo)).collect();
                if !rows.is_empty() {
                    insert_orders_sqlite(tx, bucket, rows).await?;
                }
                Ok(recorded)
            }
        }
    }

    /// Writes what the batch's new events change: each user's presence row and the minute and
    /// day tables. One statement on PostgreSQL (three data-modifying parts on three tables, so
    /// no row is written twice), where every statement is a round trip that the commit waits
    /// for; three on SQLite, which runs in the process. Nothing when nothing is new.
    async fn write_figures(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        users: &[(&str, Seen)],
        delta: &Delta,
    ) -> Result<(), StoreError> {
        if users.is_empty() && delta.minutes.is_empty() && delta.days.is_empty() {
            return Ok(());
        }
        match self.backend {
            Backend::Postgres => write_figures_postgres(tx, users, delta).await,
            Backend::Sqlite => write_figures_sqlite(tx, users, delta).await,
        }
    }

    /// Digests the order rows migration `20261228000010` staged on SQLite (which has no
    /// SHA-256 in SQL) into `order_ids`, each in the hour it was applied in; a no-op on
    /// PostgreSQL, whose migration digests them itself, and once none is left. `migrate`
    /// runs it, and so does every new leader before its first lookup, in case an instance
    /// stopped half-way. Commits every `DIGEST_PER_COMMIT` rows.
    pub async fn digest_staged_orders(&self) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        loop {
            // IMMEDIATE: take the write lock before the first read. A deferred transaction
            // that read first fails at once (SQLITE_BUSY) if another process wrote meanwhile.
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            let rows = sqlx::query(
                "SELECT rowid, id, applied_at, occurred_at, signed_minor \
                 FROM order_ids_undigested LIMIT $1",
            )
            .bind(DIGEST_PER_COMMIT as i64)
            .fetch_all(&mut *tx)
            .await?;
            let mut by_bucket: BTreeMap<Millis, Vec<(i64, i64, i64, i64)>> = BTreeMap::new();
            let mut last_rowid = i64::MIN;
            for row in &rows {
                let id: String = row.try_get(1)?;
                let applied_at: i64 = row.try_get(2)?;
                let (hi, lo) = order_digest(&id);
                let bucket = applied_at - applied_at.rem_euclid(MIGRATED_BUCKET_MS);
                by_bucket.entry(bucket).or_default().push((
                    hi,
                    lo,
                    row.try_get(3)?,
                    row.try_get(4)?,
                ));
                last_rowid = last_rowid.max(row.try_get(0)?);
            }
            for (bucket, rows) in by_bucket {
                register_bucket(&mut tx, bucket, bucket + MIGRATED_BUCKET_MS).await?;
                insert_orders_sqlite(&mut tx, bucket, rows).await?;
            }
            sqlx::query("DELETE FROM order_ids_undigested WHERE rowid <= $1")
                .bind(last_rowid)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            if rows.len() < DIGEST_PER_COMMIT {
                return Ok(());
            }
        }
    }
}

/// Writes what a batch's late events revised, after its [`Delta`] (so every minute it marks
/// has its row): the count on the commit's day, and each revised minute's change of active
/// users and mark. A minute whose active users change was closed, so its row exists.
async fn write_revision(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    revision: &Revision,
) -> Result<(), StoreError> {
    if revision.late_events > 0 {
        sqlx::query(
            "INSERT INTO daily_revenue (day, revenue_minor, late_events) VALUES ($1, 0, $2) \
             ON CONFLICT (day) DO UPDATE SET \
             late_events = daily_revenue.late_events + excluded.late_events",
        )
        .bind(revision.day.to_string())
        .bind(i64::try_from(revision.late_events).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    }
    for (minute, change) in &revision.minutes {
        sqlx::query(
            "UPDATE minute_stats SET active_users = active_users + $2, revised = 1 \
             WHERE minute = $1",
        )
        .bind(*minute)
        .bind(*change)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The bucket width of the rows a migration brings over (an hour); later buckets have the
/// configured width. `order_id_buckets` says where each ends, so widths may differ.
const MIGRATED_BUCKET_MS: Millis = 3_600_000;

/// The buckets that may hold an id applied after `since`: every bucket ending after it.
async fn live_buckets(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    since: Millis,
) -> Result<Vec<i64>, StoreError> {
    let rows = sqlx::query("SELECT bucket FROM order_id_buckets WHERE ends_at > $1")
        .bind(since)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|row| row.try_get::<i64, _>(0).map_err(StoreError::from))
        .collect()
}

async fn register_bucket(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    bucket: Millis,
    ends_at: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO order_id_buckets (bucket, ends_at) VALUES ($1, $2) \
         ON CONFLICT (bucket) DO NOTHING",
    )
    .bind(bucket)
    .bind(ends_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts `(hi, lo, occurred_at, signed_minor)` rows into `bucket` on PostgreSQL, where the
/// digest alone is the key: a digest recorded in a bucket still live (ending after
/// `live_after`) is left as it is, one in an expired bucket moves to this one with the new
/// event's figures. Returns the digests inserted or moved: the new orders. One statement, one
/// primary-key probe per row, the probe the insert makes anyway; it registers the bucket
/// (start, end) too. The liveness test reads the buckets as they were before the statement,
/// which is enough: a digest already in this bucket came with a commit that registered it.
async fn upsert_orders_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    (bucket, ends_at): (Millis, Millis),
    live_after: Millis,
    rows: Vec<(i64, i64, i64, i64)>,
) -> Result<HashSet<(i64, i64)>, StoreError> {
    let recorded = sqlx::query(
        "WITH registered AS (INSERT INTO order_id_buckets (bucket, ends_at) \
         VALUES ($1, $7) ON CONFLICT (bucket) DO NOTHING) \
         INSERT INTO order_ids AS o (bucket, hi, lo, occurred_at, signed_minor) \
         SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) \
         ON CONFLICT (hi, lo) DO UPDATE SET bucket = excluded.bucket, \
         occurred_at = excluded.occurred_at, signed_minor = excluded.signed_minor \
         WHERE NOT EXISTS (SELECT 1 FROM order_id_buckets AS b \
         WHERE b.bucket = o.bucket AND b.ends_at > $6) \
         RETURNING hi, lo",
    )
    .bind(bucket)
    .bind(postgres_int_array(rows.iter().map(|r| r.0)))
    .bind(postgres_int_array(rows.iter().map(|r| r.1)))
    .bind(postgres_int_array(rows.iter().map(|r| r.2)))
    .bind(postgres_int_array(rows.iter().map(|r| r.3)))
    .bind(live_after)
    .bind(ends_at)
    .fetch_all(&mut **tx)
    .await?;
    recorded
        .iter()
        .map(|row| Ok((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?)))
        .collect()
}

/// Inserts `(hi, lo, occurred_at, signed_minor)` rows into `bucket` on SQLite, whose key leads
/// with the bucket; the caller has asked the live buckets first ([`known_sqlite`]). A digest
/// already there (only a second copy of the same id can be) is left as it is.
async fn insert_orders_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    bucket: Millis,
    rows: Vec<(i64, i64, i64, i64)>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO order_ids (bucket, hi, lo, occurred_at, signed_minor) \
         SELECT ?, value ->> 0, value ->> 1, value ->> 2, value ->> 3 \
         FROM json_each(?) WHERE true ON CONFLICT DO NOTHING",
    )
    .bind(bucket)
    .bind(sqlite_json_rows(rows.iter().map(
        |&(hi, lo, at, signed)| [hi, lo, at, signed].map(|n| Json::Int(Some(n))),
    )))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Which of `digests` are recorded in one of `buckets`, on SQLite: one statement, the primary
/// key probed once for every bucket and high half
/// (`SEARCH order_ids USING PRIMARY KEY (bucket=? AND hi=?)`).
async fn known_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    buckets: &[i64],
    digests: &[(i64, i64)],
) -> Result<HashSet<(i64, i64)>, StoreError> {
    if buckets.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = sqlx::query(
        "SELECT hi, lo FROM order_ids \
         WHERE bucket IN (SELECT value FROM json_each(?)) \
         AND hi IN (SELECT value FROM json_each(?))",
    )
    .bind(sqlite_json_rows(
        buckets.iter().map(|&b| [Json::Int(Some(b))]),
    ))
    .bind(sqlite_json_rows(
        digests.iter().map(|d| [Json::Int(Some(d.0))]),
    ))
    .fetch_all(&mut **tx)
    .await?;
    known_among(&rows, digests)
}

/// The `(hi, lo)` rows found that are one of `digests` (a row may share only the high half).
fn known_among(
    rows: &[sqlx::any::AnyRow],
    digests: &[(i64, i64)],
) -> Result<HashSet<(i64, i64)>, StoreError> {
    let asked: HashSet<&(i64, i64)> = digests.iter().collect();
    let mut known = HashSet::new();
    for row in rows {
        let digest = (row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?);
        if asked.contains(&digest) {
            known.insert(digest);
        }
    }
    Ok(known)
}

/// SQLite's `column = the later of the stored and the new value`, either of which may be NULL
/// (`max` of SQLite returns NULL when one is).
fn sqlite_later(column: &str) -> String {
    format!(
        "max(coalesce(user_presence.{column}, excluded.{column}), \
         coalesce(excluded.{column}, user_presence.{column}))"
    )
}

/// Both backends' `id column = the new id if the new time is later than the stored one (or
/// none was stored), else the stored id`: the first event at the latest time keeps its id.
/// Every right-hand side of an upsert's SET reads the row as it was.
fn later_id(time: &str, id: &str) -> String {
    format!(
        "CASE WHEN {} THEN excluded.{id} ELSE user_presence.{id} END",
        later(time)
    )
}

/// The batch brings a later `time` than the row holds (or the row holds none).
fn later(time: &str) -> String {
    format!(
        "(excluded.{time} IS NOT NULL AND (user_presence.{time} IS NULL \
         OR excluded.{time} > user_presence.{time}))"
    )
}

/// The upsert's `WHERE`: a user row is rewritten only when one of its times moves on. A row
/// rewritten with what it held costs PostgreSQL a new row version all the same (and SQLite a
/// page write); a redelivery, or an event older than the user's last, now writes nothing.
fn presence_moved() -> String {
    format!("{} OR {}", later("last_active"), later("last_signed_out"))
}

/// Marks the first copy of each id in `events` (a batch may repeat one).
fn first_copies(events: &[Event]) -> Vec<bool> {
    let mut seen = HashSet::with_capacity(events.len());
    events
        .iter()
        .map(|event| seen.insert(event.id.as_str()))
        .collect()
}

/// The latest activity and sign-out of every user with a new event in the batch, one entry
/// per user in user order (so that concurrent upserts take row locks in one order).
fn presence_of<'a>(events: &'a [Event], fresh: &[bool]) -> Vec<(&'a str, Seen)> {
    let mut users: BTreeMap<&str, Seen> = BTreeMap::new();
    for (event, _) in events.iter().zip(fresh).filter(|(_, f)| **f) {
        let seen = users.entry(event.user_id.as_str()).or_default();
        let (slot, id) = match event.kind {
            EventKind::UserSignedOut => (&mut seen.last_signed_out, &mut seen.signed_out_id),
            _ => (&mut seen.last_active, &mut seen.active_id),
        };
        if Some(event.occurred_at) > *slot {
            *slot = Some(event.occurred_at);
            *id = id_hash(&event.id) as i64;
        }
    }
    users.into_iter().collect()
}

/// The upsert of `user_presence` rows: each keeps the later of what it held and what the
/// batch brings, and is rewritten only when one of its times moves on. `later_of` is the SQL of
/// "the later of the stored and the new value" for a column, which differs by backend.
fn presence_upsert(rows: &str, later_of: impl Fn(&str) -> String) -> String {
    format!(
        "INSERT INTO user_presence \
         (user_id, last_active, last_signed_out, active_id, signed_out_id) {rows} \
         ON CONFLICT (user_id) DO UPDATE SET \
         last_active = {}, last_signed_out = {}, active_id = {}, signed_out_id = {} WHERE {}",
        later_of("last_active"),
        later_of("last_signed_out"),
        later_id("last_active", "active_id"),
        later_id("last_signed_out", "signed_out_id"),
        presence_moved(),
    )
}

const MINUTES_ADDED: &str = "ON CONFLICT (minute) DO UPDATE SET \
     orders = minute_stats.orders + excluded.orders, \
     revenue_minor = minute_stats.revenue_minor + excluded.revenue_minor";

const DAYS_ADDED: &str = "ON CONFLICT (day) DO UPDATE SET \
     revenue_minor = daily_revenue.revenue_minor + excluded.revenue_minor";

/// [`Store::write_figures`] on PostgreSQL: the presence, minute and day upserts as the parts
/// of one statement (its text built once), each fed by `unnest` of one array per column.
async fn write_figures_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    users: &[(&str, Seen)],
    delta: &Delta,
) -> Result<(), StoreError> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        let presence = presence_upsert(
            "SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], \
             $5::bigint[])",
            |column| format!("GREATEST(user_presence.{column}, excluded.{column})"),
        );
        format!(
            "WITH presence AS ({presence}), \
         minutes AS (INSERT INTO minute_stats (minute, orders, revenue_minor) \
         SELECT * FROM unnest($6::bigint[], $7::bigint[], $8::bigint[]) {MINUTES_ADDED}) \
         INSERT INTO daily_revenue (day, revenue_minor) \
         SELECT * FROM unnest($9::text[], $10::bigint[]) {DAYS_ADDED}"
        )
    });
    sqlx::query(STATEMENT.as_str())
        .bind(postgres_text_array(users.iter().map(|(u, _)| *u)))
        .bind(postgres_nullable_int_array(
            users.iter().map(|(_, s)| s.last_active),
        ))
        .bind(postgres_nullable_int_array(
            users.iter().map(|(_, s)| s.last_signed_out),
        ))
        .bind(postgres_int_array(users.iter().map(|(_, s)| s.active_id)))
        .bind(postgres_int_array(
            users.iter().map(|(_, s)| s.signed_out_id),
        ))
        .bind(postgres_int_array(delta.minutes.keys().copied()))
        .bind(postgres_int_array(delta.minutes.values().map(|t| t.orders)))
        .bind(postgres_int_array(
            delta.minutes.values().map(|t| t.revenue_minor),
        ))
        .bind(postgres_text_array(
            delta.days.keys().map(NaiveDate::to_string),
        ))
        .bind(postgres_int_array(delta.days.values().copied()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// [`Store::write_figures`] on SQLite: three statements (SQLite has no data-modifying `WITH`),
/// their texts built once,
/// each fed by `json_each` of one JSON array of rows. `WHERE true`: without it SQLite would
/// read `ON CONFLICT` as part of a join in the SELECT (its documented parsing ambiguity for
/// upserts from a SELECT).
async fn write_figures_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    users: &[(&str, Seen)],
    delta: &Delta,
) -> Result<(), StoreError> {
    static PRESENCE: LazyLock<String> = LazyLock::new(|| {
        presence_upsert(
            "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 \
             FROM json_each(?) WHERE true",
            sqlite_later,
        )
    });
    if !users.is_empty() {
        sqlx::query(PRESENCE.as_str())
            .bind(sqlite_json_rows(users.iter().map(|(user, seen)| {
                [
                    Json::Text(user),
                    Json::Int(seen.last_active),
                    Json::Int(seen.last_signed_out),
                    Json::Int(Some(seen.active_id)),
                    Json::Int(Some(seen.signed_out_id)),
                ]
            })))
            .execute(&mut **tx)
            .await?;
    }
    static MINUTES: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO minute_stats (minute, orders, revenue_minor) \
             SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?) WHERE true \
             {MINUTES_ADDED}"
        )
    });
    static DAYS: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO daily_revenue (day, revenue_minor) \
             SELECT value ->> 0, value ->> 1 FROM json_each(?) WHERE true {DAYS_ADDED}"
        )
    });
    if !delta.minutes.is_empty() {
        sqlx::query(MINUTES.as_str())
            .bind(sqlite_json_rows(delta.minutes.iter().map(|(minute, t)| {
                [*minute, t.orders, t.revenue_minor].map(|n| Json::Int(Some(n)))
            })))
            .execute(&mut **tx)
            .await?;
    }
    if !delta.days.is_empty() {
        let days: Vec<(String, i64)> = delta
            .days
            .iter()
            .map(|(day, revenue)| (day.to_string(), *revenue))
            .collect();
        sqlx::query(DAYS.as_str())
            .bind(sqlite_json_rows(days.iter().map(|(day, revenue)| {
                [Json::Text(day), Json::Int(Some(*revenue))]
            })))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl DedupeWindow {
    /// The start of the bucket `at` falls in.
    pub(super) fn bucket_of(&self, at: Millis) -> Millis {
        at - at.rem_euclid(self.bucket_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests are stored: a change to the function would make every stored id unknown, and
    /// its redelivery count twice. The PostgreSQL migration computes the same in SQL.
    #[test]
    fn order_digests_are_the_first_sixteen_bytes_of_sha256_big_endian() {
        // sha256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 …
        assert_eq!(
            order_digest("abc"),
            (
                0xba78_16bf_8f01_cfea_u64 as i64,
                0x4141_40de_5dae_2223_u64 as i64
            )
        );
        assert_eq!(order_digest("order-1").0, 0x0baf_e221_56d2_698c);
    }

    #[test]
    fn an_order_kind_and_amount_survive_one_column() {
        for kind in [
            EventKind::OrderPlaced { amount_minor: 0 },
            EventKind::OrderPlaced {
                amount_minor: 1_000_000_000_000,
            },
            EventKind::OrderRefunded { amount_minor: 0 },
            EventKind::OrderRefunded {
                amount_minor: 1_000_000_000_000,
            },
        ] {
            let signed = signed_minor(&kind).expect("an order");
            assert_eq!(kind_of_signed(signed), kind);
        }
        assert_eq!(signed_minor(&EventKind::UserActive), None);
    }
}
