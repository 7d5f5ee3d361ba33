//! The exactly-once step: a batch of events applied in one transaction fenced by the lease —
//! the ids not applied before are recorded (the others are duplicates and change nothing) and
//! the new events' [`Delta`] is added to the minute and day tables. The caller acknowledges the
//! messages only after this commits.
//!
//! On PostgreSQL the insert itself says which ids are new: the primary key on `id` turns the
//! others away, and the batch goes in as one array per column so that every batch size runs one
//! prepared statement. SQLite looks them up first through [`event_id_key`], a 64-bit key indexed
//! in place of the id text (smaller entries: a batch dirties fewer pages), then compares the
//! full ids, and writes `?` lists in chunks under its bind-parameter limit.

use super::{Applied, Lease, Store, StoreError};
use crate::aggregate::{Delta, Event, Millis};
use crate::config::Backend;
use chrono_tz::Tz;
use sqlx::Row;
use std::collections::HashSet;

/// Rows per SQLite `INSERT` or lookup: well under its bind-parameter limit.
const INSERT_CHUNK: usize = 1_000;

/// Columns of `applied_events` written per event; only SQLite has the leading `id_key`.
const APPLIED_EVENT_COLUMNS: [&str; 7] = [
    "id_key",
    "id",
    "kind",
    "user_id",
    "occurred_at",
    "amount_minor",
    "applied_at",
];

/// Rows keyed per statement, and per commit, when `Store::migrate` fills in the keys of rows
/// copied by a migration.
const KEY_FILL_CHUNK: usize = 500;

const KEY_FILL_PER_COMMIT: usize = 50_000;

impl Store {
    /// Applies a batch exactly once, fenced by `lease`. An id applied before, or earlier in the
    /// batch, is a duplicate: `Applied::fresh` is false for it and it changes nothing.
    pub async fn apply_batch(
        &self,
        lease: &Lease,
        events: &[Event],
        timezone: Tz,
        now: Millis,
    ) -> Result<Applied, StoreError> {
        let mut tx = self.writer.begin().await?;
        lease.fence(&mut tx, now).await?;

        let fresh = match self.backend {
            Backend::Postgres => record_new_postgres(&mut tx, events, now).await?,
            Backend::Sqlite => record_new_sqlite(&mut tx, events, now).await?,
        };

        let delta = Delta::of(
            events
                .iter()
                .zip(&fresh)
                .filter(|(_, f)| **f)
                .map(|(e, _)| e),
            timezone,
        );
        for (minute, tally) in &delta.minutes {
            sqlx::query(
                "INSERT INTO minute_stats (minute, orders, revenue_minor) VALUES ($1, $2, $3) \
                 ON CONFLICT (minute) DO UPDATE SET \
                 orders = minute_stats.orders + excluded.orders, \
                 revenue_minor = minute_stats.revenue_minor + excluded.revenue_minor",
            )
            .bind(*minute)
            .bind(tally.orders)
            .bind(tally.revenue_minor)
            .execute(&mut *tx)
            .await?;
        }
        for (day, revenue) in &delta.days {
            sqlx::query(
                "INSERT INTO daily_revenue (day, revenue_minor) VALUES ($1, $2) \
                 ON CONFLICT (day) DO UPDATE SET \
                 revenue_minor = daily_revenue.revenue_minor + excluded.revenue_minor",
            )
            .bind(day.to_string())
            .bind(*revenue)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Applied { fresh })
    }

    /// Gives every SQLite row without an `id_key` its key (SQLite has no SHA-256 in SQL); a
    /// no-op on PostgreSQL and once every row has one. Rows lack a key after migration
    /// `20261124000005` copied them, and when an older version went on writing to the file
    /// (until the lease passes to this one): `migrate` runs it, and so does every new leader,
    /// after taking the lease and before its first lookup. Commits every
    /// `KEY_FILL_PER_COMMIT` rows: a commit per statement would wait for the disk thousands of
    /// times, one for everything would grow the WAL by the whole table.
    pub async fn key_unkeyed_events(&self) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        loop {
            // IMMEDIATE: take the write lock before the first read. A deferred transaction that
            // read first fails at once (SQLITE_BUSY) if another process wrote meanwhile.
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            let mut filled = 0;
            while filled < KEY_FILL_PER_COMMIT {
                match self.key_some_rows(&mut tx).await? {
                    0 => break,
                    keyed => filled += keyed,
                }
            }
            tx.commit().await?;
            if filled < KEY_FILL_PER_COMMIT {
                return Ok(());
            }
        }
    }

    /// Keys up to `KEY_FILL_CHUNK` rows that lack an `id_key`; returns how many it keyed.
    async fn key_some_rows(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<usize, StoreError> {
        let rows =
            sqlx::query("SELECT rowid, id FROM applied_events WHERE id_key IS NULL LIMIT $1")
                .bind(KEY_FILL_CHUNK as i64)
                .fetch_all(&mut **tx)
                .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE applied_events SET id_key = keys.column2 FROM (VALUES {}) AS keys \
             WHERE applied_events.rowid = keys.column1",
            sqlite_placeholders(rows.len(), 2)
        );
        let mut query = sqlx::query(&sql);
        for row in &rows {
            let id: String = row.try_get(1)?;
            query = query
                .bind(row.try_get::<i64, _>(0)?)
                .bind(event_id_key(&id));
        }
        query.execute(&mut **tx).await?;
        Ok(rows.len())
    }
}

/// The columns of `applied_events` each backend writes per event, in binding order: SQLite's
/// rows lead with the id's key. The benchmarks' baseline writes the same rows
/// (`crate::for_benchmarks`).
pub fn applied_event_columns(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Sqlite => &APPLIED_EVENT_COLUMNS,
        Backend::Postgres => &APPLIED_EVENT_COLUMNS[1..],
    }
}

/// The key SQLite indexes an event id by: the first 8 bytes of its SHA-256, read as a signed
/// big-endian integer. Stored with every applied event, so it must never change. SHA-256 rather
/// than a faster hash because producers choose the ids: keys stay evenly spread whatever the ids
/// look like. Ids sharing a key (2^32 tries find a pair) only cost an extra row per lookup.
pub fn event_id_key(id: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// `(?, ?), (?, ?)` for `rows` rows of `columns` values. SQLite's driver looks every `$N` up
/// by name in a list (quadratic: it dominated a 6 000-value insert); `?` is positional.
fn sqlite_placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// Marks the first copy of each id in `events` (a batch may repeat one).
fn first_copies(events: &[Event]) -> Vec<bool> {
    let mut seen = HashSet::with_capacity(events.len());
    events
        .iter()
        .map(|event| seen.insert(event.id.as_str()))
        .collect()
}

/// Records the batch's new events in `applied_events` and says which of `events` they are:
/// applied neither before nor earlier in this batch.
///
/// PostgreSQL: one statement. The batch goes in as one array per column, so that every batch
/// runs the same prepared statement (a `VALUES` list differs with the batch size, and
/// PostgreSQL parsed and planned each new one again: half of a commit's cost when batch sizes
/// vary, as they do under load), and the primary key on `id` turns every id already applied
/// away (`ON CONFLICT DO NOTHING`); `RETURNING` names the rows that went in, which are the new
/// events. The lease fence holds the lease row for the whole transaction, so no other writer
/// adds one of these ids meanwhile.
async fn record_new_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    events: &[Event],
    now: Millis,
) -> Result<Vec<bool>, StoreError> {
    let first = first_copies(events);
    let candidates: Vec<&Event> = events
        .iter()
        .zip(&first)
        .filter(|(_, f)| **f)
        .map(|(e, _)| e)
        .collect();
    if candidates.is_empty() {
        return Ok(first);
    }
    let inserted = sqlx::query(
        "INSERT INTO applied_events \
         (id, kind, user_id, occurred_at, amount_minor, applied_at) \
         SELECT id, kind, user_id, occurred_at, amount_minor, $6 \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
         AS batch (id, kind, user_id, occurred_at, amount_minor) \
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(postgres_text_array(
        candidates.iter().map(|e| e.id.as_str()),
    ))
    .bind(postgres_text_array(
        candidates.iter().map(|e| e.kind.label()),
    ))
    .bind(postgres_text_array(
        candidates.iter().map(|e| e.user_id.as_str()),
    ))
    .bind(postgres_int_array(candidates.iter().map(|e| e.occurred_at)))
    .bind(postgres_int_array(
        candidates.iter().map(|e| e.kind.amount_minor()),
    ))
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let returned = inserted.len();
    let inserted: HashSet<String> = inserted
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    let fresh: Vec<bool> = events
        .iter()
        .zip(first)
        .map(|(event, first)| first && inserted.contains(event.id.as_str()))
        .collect();
    // An id that came back other than it went in (a server converting text) would be stored
    // yet never counted: refuse the batch rather than lose the event.
    let counted = fresh.iter().filter(|f| **f).count();
    if counted != returned {
        return Err(StoreError::Corrupt(format!(
            "the database returned {returned} new ids, {counted} of them match the batch's"
        )));
    }
    Ok(fresh)
}

/// Records the batch's new events in `applied_events` and says which of `events` they are.
///
/// SQLite: ask first, by `id_key` (which may also bring back another id sharing a key, so full
/// ids are compared), then insert the new rows as `VALUES` lists, in chunks under its
/// bind-parameter limit (SQLite prepares locally and cheaply). Asking first, instead of
/// `ON CONFLICT DO NOTHING RETURNING id`, keeps a batch to a few round trips: SQLite's driver
/// hands RETURNING rows back 50 at a time, and on a busy machine every hand-off waits for the
/// other thread to be scheduled. `id` has no unique index here: the lease fence, which holds
/// the write lock for the whole transaction, is the only guard against a second copy.
async fn record_new_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    events: &[Event],
    now: Millis,
) -> Result<Vec<bool>, StoreError> {
    let keys: Vec<i64> = events.iter().map(|event| event_id_key(&event.id)).collect();
    let mut known = HashSet::new();
    for chunk in keys.chunks(INSERT_CHUNK) {
        let sql = format!(
            "SELECT id FROM applied_events WHERE id_key IN {}",
            sqlite_placeholders(1, chunk.len())
        );
        let query = chunk.iter().fold(sqlx::query(&sql), |q, key| q.bind(*key));
        for row in query.fetch_all(&mut **tx).await? {
            known.insert(row.try_get::<String, _>(0)?);
        }
    }
    let fresh: Vec<bool> = events
        .iter()
        .zip(first_copies(events))
        .map(|(event, first)| first && !known.contains(event.id.as_str()))
        .collect();
    let new: Vec<usize> = (0..events.len()).filter(|&i| fresh[i]).collect();
    let columns = applied_event_columns(Backend::Sqlite);
    for chunk in new.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO applied_events ({}) VALUES {}",
            columns.join(", "),
            sqlite_placeholders(chunk.len(), columns.len())
        );
        let mut query = sqlx::query(&sql);
        for &i in chunk {
            let event = &events[i];
            query = query
                .bind(keys[i])
                .bind(event.id.as_str())
                .bind(event.kind.label())
                .bind(event.user_id.as_str())
                .bind(event.occurred_at)
                .bind(event.kind.amount_minor())
                .bind(now);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(fresh)
}

/// A PostgreSQL array literal of `items` (`{"a","b\"c"}`), bound as text and cast to `text[]`:
/// the `Any` driver binds no arrays. Every element is quoted, so `NULL`, commas, braces and
/// spaces stay data; inside quotes only `"` and `\` need a backslash.
fn postgres_text_array<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut literal = String::from("{");
    for (n, item) in items.enumerate() {
        if n > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

/// A PostgreSQL array literal of integers, for `$N::bigint[]`.
fn postgres_int_array(items: impl Iterator<Item = i64>) -> String {
    let numbers: Vec<String> = items.map(|n| n.to_string()).collect();
    format!("{{{}}}", numbers.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are stored: a change to the function would make every stored id unknown, and its
    /// redelivery count twice.
    #[test]
    fn id_keys_are_the_first_eight_bytes_of_sha256_big_endian() {
        // sha256("abc") = ba7816bf 8f01cfea …
        assert_eq!(event_id_key("abc"), 0xba78_16bf_8f01_cfea_u64 as i64);
        assert_eq!(event_id_key("order-1"), 0x0baf_e221_56d2_698c);
    }

    #[test]
    fn sqlite_placeholders_are_positional() {
        assert_eq!(sqlite_placeholders(2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(sqlite_placeholders(1, 1), "(?)");
    }

    #[test]
    fn postgres_array_literals_quote_every_element() {
        let ids = [
            "a",
            "NULL",
            "x,y",
            "{z}",
            r#"q"uote"#,
            r"back\slash",
            " sp ",
            "é",
        ];
        assert_eq!(
            postgres_text_array(ids.into_iter()),
            r#"{"a","NULL","x,y","{z}","q\"uote","back\\slash"," sp ","é"}"#
        );
        assert_eq!(postgres_text_array(std::iter::empty()), "{}");
        assert_eq!(
            postgres_int_array([1, -2, i64::MIN].into_iter()),
            "{1,-2,-9223372036854775808}"
        );
    }
}
