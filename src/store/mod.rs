//! Durable state in SQLite (embedded, default) or PostgreSQL, behind one API.
//!
//! The store owns every SQL statement. It is the source of truth for exactly-once: a batch of
//! events is applied in one transaction that checks the caller still holds the ingest lease,
//! records the ids not applied before (the others are duplicates and change nothing) and adds
//! the new events' [`Delta`] to the minute and day tables. On PostgreSQL the insert itself says
//! which ids are new: the primary key on `id` turns the others away. SQLite looks them up first
//! through [`event_id_key`], a 64-bit key indexed in place of the id text (smaller entries: a
//! batch dirties fewer pages), and then compares the full ids. The caller acknowledges the
//! messages only after that transaction commits.
//!
//! `sqlx::AnyPool`s serve both backends; their SQL is shared (placeholders `$N`, `ON CONFLICT`,
//! `RETURNING`) except the batch statements: SQLite's write `?` lists, PostgreSQL's take one
//! array per column, so that every batch size runs one prepared statement. The migrations
//! differ. SQLite gets one writer connection, so writers take turns in order, and a pool of
//! read-only connections beside it; PostgreSQL one pool for both.
//! Sums are cast to BIGINT because PostgreSQL's NUMERIC has no portable decoding.

mod announcements;
mod lease;
mod users;

pub use announcements::StoredAnnouncement;
pub use lease::Lease;
pub use users::{SessionRow, UserRow};

use crate::aggregate::{
    minute_of, Delta, Event, EventKind, Millis, Point, RestoreInput, Tally, MAX_AGE_MS,
    MAX_FUTURE_MS, MINUTE_MS,
};
use crate::config::{Backend, DatabaseUrl};
use chrono::NaiveDate;
use chrono_tz::Tz;
use secrecy::ExposeSecret;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::collections::HashSet;
use std::time::Duration;

const SQLITE_READERS: u32 = 4;
/// Set on every SQLite connection (see `sqlite_pool` for why); public so that the store
/// benchmark's baseline writes under the same settings.
pub const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA busy_timeout = 5000; PRAGMA temp_store = MEMORY; \
     PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 16384;";
const POSTGRES_CONNECTIONS: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
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
/// History is kept a day longer than the 7 days promised (docs/api.md, HTTP routes: history).
const HISTORY_KEEP_MS: Millis = 8 * 24 * 60 * MINUTE_MS;
/// Applied ids are kept an hour beyond the 24 h dedupe window, so a redelivery at the edge still
/// finds its id.
const DEDUPE_KEEP_MS: Millis = MAX_AGE_MS + 60 * MINUTE_MS;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("this node no longer holds the ingest lease")]
    LostLease,
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error(
        "table {table} holds {rows} row(s) whose figures are not whole numbers (the first at \
         {key_column} {first_key}), left by an earlier version when a revenue sum overflowed; \
         stop every instance, back up the database, then delete or correct those rows as \
         docs/operations.md (\"Figures that are not whole numbers\") shows, and start again"
    )]
    NonIntegerFigures {
        table: &'static str,
        key_column: &'static str,
        rows: i64,
        first_key: String,
    },
}

/// Tables of figures, their key column and their figure columns: what
/// [`Store::check_figures`] inspects.
const FIGURE_TABLES: [(&str, &str, &[&str]); 2] = [
    (
        "minute_stats",
        "minute",
        &["orders", "revenue_minor", "active_users"],
    ),
    ("daily_revenue", "day", &["revenue_minor"]),
];

/// What a committed batch did, in the order of the events given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `true` where the event was new and is now counted; `false` for a duplicate.
    pub fresh: Vec<bool>,
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
}

impl Store {
    /// Opens the pools (creating the SQLite file and its folder when needed).
    pub async fn connect(database: &DatabaseUrl) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        match database.backend {
            Backend::Sqlite => {
                let url = sqlite_url_creating_file(database.url.expose_secret());
                create_sqlite_folder(&url)?;
                // The writer first: it creates the file and switches it to WAL.
                let writer = sqlite_pool(&url, 1, false).await?;
                let reader = sqlite_pool(&url, SQLITE_READERS, true).await?;
                Ok(Store {
                    writer,
                    reader,
                    backend: Backend::Sqlite,
                })
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(POSTGRES_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect(database.url.expose_secret())
                    .await
                    .map_err(StoreError::Connect)?;
                Ok(Store {
                    writer: pool.clone(),
                    reader: pool,
                    backend: Backend::Postgres,
                })
            }
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::migrate!("migrations/sqlite")
                    .run(&self.writer)
                    .await?;
                self.key_unkeyed_events().await?;
                self.check_figures().await?;
            }
            Backend::Postgres => {
                sqlx::migrate!("migrations/postgres")
                    .run(&self.writer)
                    .await?
            }
        }
        Ok(())
    }

    /// Refuses a SQLite database where a figure is not an integer: an earlier version let a
    /// sum that overflowed become a floating-point number there, which no reader can decode.
    /// Found at start, it is one clear message instead of a leader failing its every term.
    /// PostgreSQL's BIGINT columns cannot hold such a value.
    async fn check_figures(&self) -> Result<(), StoreError> {
        for (table, key_column, columns) in FIGURE_TABLES {
            let not_integer = columns
                .iter()
                .map(|column| format!("typeof({column}) <> 'integer'"))
                .collect::<Vec<_>>()
                .join(" OR ");
            let row = sqlx::query(&format!(
                "SELECT COUNT(*), CAST(MIN({key_column}) AS TEXT) FROM {table} WHERE {not_integer}"
            ))
            .fetch_one(&self.reader)
            .await?;
            let rows: i64 = row.try_get(0)?;
            if rows > 0 {
                return Err(StoreError::NonIntegerFigures {
                    table,
                    key_column,
                    rows,
                    first_key: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                });
            }
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

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

    /// Everything a new leader needs to rebuild the live figures at `now`.
    pub async fn load_restore(
        &self,
        now: Millis,
        horizon_ms: Millis,
        timezone: Tz,
    ) -> Result<RestoreInput, StoreError> {
        // An event that occurred within the horizon arrived at most 5 minutes before it.
        let recent_events = sqlx::query(
            "SELECT id, kind, user_id, occurred_at, amount_minor FROM applied_events \
             WHERE applied_at > $1 AND occurred_at > $2",
        )
        .bind(now - horizon_ms - MAX_FUTURE_MS - MINUTE_MS)
        .bind(now - horizon_ms)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(stored_event)
        .collect::<Result<Vec<_>, _>>()?;

        // Every minute and day an event still acceptable at `now` can fall into: the
        // aggregator checks each new event against these sums before it is committed.
        let sums_since = crate::aggregate::Aggregator::sums_since(now);
        let first_day = crate::aggregate::local_date(sums_since, timezone);
        let days = sqlx::query("SELECT day, revenue_minor FROM daily_revenue WHERE day >= $1")
            .bind(first_day.to_string())
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|row| {
                let day: String = row.try_get(0)?;
                let day = day
                    .parse::<NaiveDate>()
                    .map_err(|e| StoreError::Corrupt(format!("day {day:?}: {e}")))?;
                Ok((day, row.try_get::<i64, _>(1)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;

        let minutes = sqlx::query(
            "SELECT minute, orders, revenue_minor FROM minute_stats WHERE minute >= $1",
        )
        .bind(minute_of(sums_since))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get::<i64, _>(0)?,
                Tally {
                    orders: row.try_get(1)?,
                    revenue_minor: row.try_get(2)?,
                },
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;

        Ok(RestoreInput {
            recent_events,
            days,
            minutes,
        })
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
        let row = sqlx::query(
            "UPDATE counters SET value = value + $1 WHERE name = 'snapshot_seq' RETURNING value",
        )
        .bind(count)
        .fetch_one(&self.writer)
        .await?;
        let last: i64 = row.try_get(0)?;
        Ok(last - count + 1)
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

    /// Deletes what is past every retention window. Returns the number of rows removed.
    pub async fn prune(&self, now: Millis) -> Result<u64, StoreError> {
        let events = sqlx::query("DELETE FROM applied_events WHERE applied_at < $1")
            .bind(now - DEDUPE_KEEP_MS)
            .execute(&self.writer)
            .await?
            .rows_affected();
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
        Ok(events + minutes + announcements + sessions)
    }

    /// Count of applied ids currently remembered (for status and tests).
    pub async fn applied_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM applied_events")
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get(0)?)
    }

    pub(crate) fn writer(&self) -> &AnyPool {
        &self.writer
    }

    pub(crate) fn reader(&self) -> &AnyPool {
        &self.reader
    }
}

/// A SQLite pool of `connections`. WAL lets readers run beside the writer; `synchronous = FULL`
/// makes a commit survive power loss, which is what "acknowledged only after durable" means.
/// The statement journal stays in memory; the page cache holds 64 MiB; the WAL is checkpointed
/// every 16 384 pages instead of 1 000, because a batch rewrites hundreds of index pages and
/// checkpointing after nearly every commit cost a quarter of the commit rate.
async fn sqlite_pool(url: &str, connections: u32, read_only: bool) -> Result<AnyPool, StoreError> {
    AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(move |connection, _| {
            Box::pin(async move {
                connection.execute(SQLITE_PRAGMAS).await?;
                if read_only {
                    connection.execute("PRAGMA query_only = ON;").await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(StoreError::Connect)
}

fn stored_event(row: &AnyRow) -> Result<Event, StoreError> {
    let kind: String = row.try_get(1)?;
    Ok(Event {
        id: row.try_get(0)?,
        kind: EventKind::from_stored(&kind, row.try_get(4)?),
        user_id: row.try_get(2)?,
        occurred_at: row.try_get(3)?,
    })
}

/// The columns of `applied_events` each backend writes per event, in binding order: SQLite's
/// rows lead with the id's key. Public so that the store benchmark's baseline writes the same
/// rows.
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

/// An embedded database is created on first start, as its users expect, also when the URL
/// does not say `mode=rwc` (sqlx's default mode only opens an existing file). A URL that
/// chooses a `mode`, and an in-memory database, are left as they are.
fn sqlite_url_creating_file(url: &str) -> String {
    let (location, query) = url.split_once('?').unwrap_or((url, ""));
    let in_memory = location.contains(":memory:");
    if in_memory || query.split('&').any(|pair| pair.starts_with("mode=")) {
        return url.to_owned();
    }
    let separator = if query.is_empty() { "?" } else { "&" };
    format!("{}{separator}mode=rwc", url.trim_end_matches('?'))
}

fn create_sqlite_folder(url: &str) -> Result<(), StoreError> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path.starts_with(':') {
        return Ok(());
    }
    match std::path::Path::new(path).parent() {
        Some(folder) if !folder.as_os_str().is_empty() => {
            std::fs::create_dir_all(folder).map_err(|source| StoreError::CreateDir {
                path: folder.display().to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_their_file_unless_they_choose_a_mode() {
        assert_eq!(
            sqlite_url_creating_file("sqlite:///var/lib/p.db"),
            "sqlite:///var/lib/p.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite://data/p.db?cache=shared"),
            "sqlite://data/p.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite://data/p.db?mode=ro"),
            "sqlite://data/p.db?mode=ro"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite://data/p.db?mode=rwc"),
            "sqlite://data/p.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite::memory:"),
            "sqlite::memory:"
        );
    }

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
