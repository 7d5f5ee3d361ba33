//! Durable state in SQLite (embedded, default) or PostgreSQL, behind one API.
//!
//! The store owns every SQL statement. It is the source of truth for exactly-once: a batch of
//! events is applied in one transaction fenced by the ingest lease (`batch`: `apply_batch`);
//! the rest of it is what a new leader rebuilds from, history, the lease (`lease`), the
//! snapshot sequence, announcements, users and sessions, the console's audit log (`audit`),
//! settings (among them the ingest pause) and retention.
//!
//! `sqlx::AnyPool`s serve both backends; their SQL is shared (placeholders `$N`, `ON CONFLICT`,
//! `RETURNING`) except the batch statements: SQLite's read one JSON array of rows, PostgreSQL's
//! one array per column (`params`), so that every batch size runs one prepared statement. The
//! migrations differ. SQLite gets one writer connection, so writers take turns in order, and a
//! pool of read-only connections beside it; PostgreSQL one pool for both.
//! Sums are cast to BIGINT because PostgreSQL's NUMERIC has no portable decoding.

mod announcements;
mod audit;
pub(crate) mod batch;
mod kiosk;
mod lease;
mod params;
mod users;

pub(crate) use announcements::StoredAnnouncement;
pub(crate) use audit::{AuditRow, NewAudit};
pub use batch::order_digest;
pub(crate) use kiosk::KioskLink;
pub use lease::Lease;

use crate::aggregate::{
    minute_of, Aggregator, EventKind, Millis, Point, RestoreInput, Revision, StoredPresence, Tally,
    MAX_AGE_MS, MAX_FUTURE_MS, MINUTE_MS,
};
use crate::config::{Backend, DatabaseUrl};
use chrono::NaiveDate;
use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};
use std::time::Duration;

const SQLITE_READERS: u32 = 4;

/// SQLite's connection settings (a module of their own so that `crate::for_benchmarks` can
/// re-export them without making them part of the store's API).
pub(crate) mod sqlite {
    /// Set on every SQLite connection (see `sqlite_pool` for why); the benchmarks' baseline
    /// writes under the same settings (`crate::for_benchmarks`).
    pub const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         PRAGMA busy_timeout = 5000; PRAGMA temp_store = MEMORY; \
         PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 16384;";
}

/// PostgreSQL's session settings, for the same reason as [`sqlite`]'s module.
pub(crate) mod postgres {
    /// Set on every PostgreSQL connection: it tells migration `20261228000013`'s trigger that
    /// the writer knows `order_ids` is keyed by digest, so that an older instance still running
    /// is refused instead (a statement of it leaves the setting unset). Every later version
    /// sets it too. A pooler that shares server sessions between clients (PgBouncer in
    /// transaction mode) would lose it: connect to PostgreSQL directly or in session mode.
    pub const SESSION: &str = "SET pulseboard.order_ids = 'keyed_by_digest'";
}

const POSTGRES_CONNECTIONS: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// History is kept a day longer than the 7 days promised (docs/api.md, HTTP routes: history),
/// and 3 hours more: last week's revenue from its midnight to the same time of day reaches
/// back up to 8 days and 2 hours (a 25-hour day a week ago, compared at its end).
const HISTORY_KEEP_MS: Millis = (8 * 24 + 3) * 60 * MINUTE_MS;
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("no database connection within {waited:?}: the database refuses new ones: {cause}")]
    Refused { waited: Duration, cause: String },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database was migrated by a newer pulseboard (migration {version} is unknown to \
         this version): run that version or a later one, or restore the backup taken before \
         the upgrade"
    )]
    NewerSchema { version: i64 },
    #[error(
        "the database schema is older than this pulseboard (migration {version} is not \
         applied): run `pulseboard migrate` with this version, then start again"
    )]
    OlderSchema { version: i64 },
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
    #[error(
        "column {table}.{column} is {found} where bigint is expected (figures are whole \
         numbers); stop every instance, back up the database, then correct the column as \
         docs/operations.md (\"Figures that are not whole numbers\") shows, and start again"
    )]
    FigureColumnType {
        table: &'static str,
        column: &'static str,
        found: String,
    },
}

impl StoreError {
    /// The database does not answer, or refuses for now, as opposed to answering with an
    /// error: unreachable, connections cut, the server stopping, starting or full of clients,
    /// another process holding SQLite's lock past the busy timeout. Trying again later may
    /// succeed, so callers say `unavailable` (HTTP 503, the console's error code) rather than
    /// `internal`. Decided here, once, so that no caller matches `sqlx` errors itself.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Connect(error) | StoreError::Database(error) => unanswered(error),
            StoreError::Refused { .. } => true,
            StoreError::CreateDir { .. }
            | StoreError::Migrate(_)
            | StoreError::NewerSchema { .. }
            | StoreError::OlderSchema { .. }
            | StoreError::LostLease
            | StoreError::Corrupt(_)
            | StoreError::NonIntegerFigures { .. }
            | StoreError::FigureColumnType { .. } => false,
        }
    }
}

/// See [`StoreError::is_unavailable`]: no connection, or a server that refuses for now.
fn unanswered(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => {
            if let Some(postgres) = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                postgres_refuses_for_now(postgres.code())
            } else if let Some(sqlite) = error.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                sqlx::error::DatabaseError::code(sqlite).is_some_and(|code| sqlite_busy(&code))
            } else {
                false
            }
        }
        _ => false,
    }
}

/// SQLSTATEs of a PostgreSQL server that is there but cannot serve this connection now: a
/// connection exception (class 08, but for `08P01`, a protocol violation, which is a fault),
/// too many clients (53300), shutting down (57P01 by an administrator, 57P02 after a crash of
/// another backend) or starting up (57P03).
fn postgres_refuses_for_now(sqlstate: &str) -> bool {
    matches!(sqlstate, "53300" | "57P01" | "57P02" | "57P03")
        || (sqlstate.starts_with("08") && sqlstate != "08P01")
}

/// `SQLITE_BUSY` and its extended codes (`SQLITE_BUSY_RECOVERY`, `_SNAPSHOT`, `_TIMEOUT`):
/// another connection held the lock past `busy_timeout`. sqlx gives the extended code, in
/// decimal; the primary code is its low byte.
fn sqlite_busy(code: &str) -> bool {
    const SQLITE_BUSY: i32 = 5;
    code.parse::<i32>()
        .is_ok_and(|code| code & 0xff == SQLITE_BUSY)
}

/// A migration error, or the one that says the database was migrated by a newer version.
fn schema_error(error: sqlx::migrate::MigrateError) -> StoreError {
    match error {
        sqlx::migrate::MigrateError::VersionMissing(version) => StoreError::NewerSchema { version },
        error => StoreError::Migrate(error),
    }
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
                    url: url.into(),
                    audit_keep_ms: audit::AUDIT_KEEP_MS,
                    dedupe: DedupeWindow::new(MAX_AGE_MS),
                })
            }
            Backend::Postgres => {
                let pool = match pool_options(POSTGRES_CONNECTIONS)
                    .after_connect(|connection, _| {
                        Box::pin(async move {
                            connection.execute(postgres::SESSION).await?;
                            Ok(())
                        })
                    })
                    .connect(database.url.expose_secret())
                    .await
                {
                    Ok(pool) => pool,
                    Err(error) => {
                        let error = StoreError::Connect(error);
                        return Err(explain_timeout(&database.url, error).await);
                    }
                };
                Ok(Store {
                    writer: pool.clone(),
                    reader: pool,
                    backend: Backend::Postgres,
                    url: database.url.clone(),
                    audit_keep_ms: audit::AUDIT_KEEP_MS,
                    dedupe: DedupeWindow::new(MAX_AGE_MS),
                })
            }
        }
    }

    /// How long an order id is remembered (and an event may be old): 24 hours by default.
    pub fn with_dedupe_window(mut self, window: Duration) -> Store {
        let window_ms = Millis::try_from(window.as_millis()).unwrap_or(MAX_AGE_MS);
        self.dedupe = DedupeWindow::new(window_ms.clamp(1_000, MAX_AGE_MS));
        self
    }

    /// Connects and applies the migrations: what the one-shot commands (`migrate`, `users`,
    /// `tokens`) do before anything else.
    pub async fn open_migrated(database: &DatabaseUrl) -> Result<Store, StoreError> {
        let store = Store::connect(database).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = self.migrator();
        migrator.run(&self.writer).await.map_err(schema_error)?;
        match self.backend {
            Backend::Sqlite => {
                self.digest_staged_orders().await?;
                self.check_figures().await?;
            }
            Backend::Postgres => self.check_figure_columns().await?,
        }
        Ok(())
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        }
    }

    /// Refuses to lead on a database whose schema is not this version's: one that misses a
    /// migration this version has (restored from an older backup, or never migrated by this
    /// version), or holds one it does not know (migrated by a newer version). A new leader
    /// asks before it rebuilds: the figures it would compute and write there would be wrong.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.reader)
        .await?;
        let migrator = self.migrator();
        let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        if let Some(unknown) = applied.iter().find(|v| !known.contains(v)) {
            return Err(StoreError::NewerSchema { version: *unknown });
        }
        if let Some(missing) = known.iter().find(|v| !applied.contains(v)) {
            return Err(StoreError::OlderSchema { version: *missing });
        }
        Ok(())
    }

    /// Refuses a PostgreSQL database where a figure column is no longer BIGINT (altered by
    /// hand, or restored from another schema): such a column may hold fractions, and no
    /// reader decodes it as a whole number. The PostgreSQL side of [`Store::check_figures`].
    async fn check_figure_columns(&self) -> Result<(), StoreError> {
        for (table, _, columns) in FIGURE_TABLES {
            for &column in columns {
                // The table as the service's own unqualified queries find it.
                let found: Option<String> = sqlx::query_scalar(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = $1::text::regclass AND attname = $2 AND NOT attisdropped",
                )
                .bind(table)
                .bind(column)
                .fetch_optional(&self.reader)
                .await?;
                match found {
                    Some(found) if found == "bigint" => {}
                    found => {
                        return Err(StoreError::FigureColumnType {
                            table,
                            column,
                            found: found.unwrap_or_else(|| "missing".to_owned()),
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Refuses a SQLite database where a figure is not an integer: an earlier version let a
    /// sum that overflowed become a floating-point number there, which no reader can decode.
    /// Found at start, it is one clear message instead of a leader failing its every term.
    /// PostgreSQL's BIGINT columns cannot hold such a value ([`Store::check_figure_columns`]).
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

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        match sqlx::query("SELECT 1").execute(&self.reader).await {
            Ok(_) => Ok(()),
            Err(error) => Err(self.explain_timeout(error.into()).await),
        }
    }

    /// `error`, or, when it is only the pool's timeout, why the database gave no connection
    /// (see [`explain_timeout`]). For what reports a store error to people: logs, `/readyz`.
    pub(crate) async fn explain_timeout(&self, error: StoreError) -> StoreError {
        if self.backend == Backend::Postgres {
            explain_timeout(&self.url, error).await
        } else {
            // SQLite opens a file: its pool times out only while busy, which the timeout says.
            error
        }
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// Everything a new leader needs to rebuild the live figures at `now`.
    pub async fn load_restore(
        &self,
        now: Millis,
        horizon_ms: Millis,
        timezone: Tz,
    ) -> Result<RestoreInput, StoreError> {
        let since = now - horizon_ms;
        let users = sqlx::query(
            "SELECT user_id, last_active, last_signed_out, active_id, signed_out_id \
             FROM user_presence WHERE last_active > $1 OR last_signed_out > $1",
        )
        .bind(since)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|row| {
            Ok(StoredPresence {
                user_id: row.try_get(0)?,
                last_active: row.try_get(1)?,
                last_signed_out: row.try_get(2)?,
                active_id: row.try_get(3)?,
                signed_out_id: row.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let recent_orders = self.orders_since(since).await?;

        // Every minute and day an event still acceptable at `now` can fall into: the
        // aggregator checks each new event against these sums before it is committed.
        let sums_since = Aggregator::sums_since(now);
        let first_day = crate::aggregate::local_date(sums_since, timezone);
        let mut days = Vec::new();
        let mut late_events = Vec::new();
        let rows = sqlx::query(
            "SELECT day, revenue_minor, late_events FROM daily_revenue WHERE day >= $1",
        )
        .bind(first_day.to_string())
        .fetch_all(&self.reader)
        .await?;
        for row in &rows {
            let day: String = row.try_get(0)?;
            let day = day
                .parse::<NaiveDate>()
                .map_err(|e| StoreError::Corrupt(format!("day {day:?}: {e}")))?;
            days.push((day, row.try_get::<i64, _>(1)?));
            let late = row.try_get::<i64, _>(2)?;
            if late > 0 {
                late_events.push((day, u64::try_from(late).unwrap_or(0)));
            }
        }
        let revised_minutes = sqlx::query_scalar(
            "SELECT minute FROM minute_stats WHERE minute >= $1 AND revised <> 0 ORDER BY minute",
        )
        .bind(Aggregator::revised_since(now))
        .fetch_all(&self.reader)
        .await?;

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
            users,
            recent_orders,
            days,
            minutes,
            late_events,
            revised_minutes,
        })
    }

    /// The orders and refunds that occurred after `since`, from the buckets they can be in:
    /// an event that occurred then was applied at most 5 minutes before (it may come from the
    /// future), so only the buckets ending after that are read (a bucket is a sixth of the
    /// dedupe window: the last hour and at most 4 h 10 min beyond it by default).
    async fn orders_since(&self, since: Millis) -> Result<Vec<(Millis, EventKind)>, StoreError> {
        let buckets: Vec<i64> =
            sqlx::query_scalar("SELECT bucket FROM order_id_buckets WHERE ends_at > $1")
                .bind(since - MAX_FUTURE_MS - MINUTE_MS)
                .fetch_all(&self.reader)
                .await?;
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let list = buckets
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        // The bucket numbers are the store's own integers: written into the text, they make
        // one statement for both backends.
        let rows = sqlx::query(&format!(
            "SELECT occurred_at, signed_minor FROM order_ids \
             WHERE bucket IN ({list}) AND occurred_at > $1"
        ))
        .bind(since)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>(0)?,
                    batch::kind_of_signed(row.try_get(1)?),
                ))
            })
            .collect()
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

/// A SQLite pool of `connections`. WAL lets readers run beside the writer; `synchronous = FULL`
/// makes a commit survive power loss, which is what "acknowledged only after durable" means.
/// The statement journal stays in memory; the page cache holds 64 MiB; the WAL is checkpointed
/// every 16 384 pages instead of 1 000, because a batch rewrites hundreds of index pages and
/// checkpointing after nearly every commit cost a quarter of the commit rate.
async fn sqlite_pool(url: &str, connections: u32, read_only: bool) -> Result<AnyPool, StoreError> {
    pool_options(connections)
        .after_connect(move |connection, _| {
            Box::pin(async move {
                connection.execute(sqlite::PRAGMAS).await?;
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

/// What every pool of either backend shares: its size, how long to wait for a connection, and
/// that a connection still inside a transaction never goes back to it.
///
/// sqlx's `Transaction` leaves its connection inside the transaction when `COMMIT` fails and the
/// `ROLLBACK` it then queues fails too: SQLite, on a full disk, may roll the transaction back
/// itself, so that sqlx's `ROLLBACK` finds none and its count of open transactions stays at one.
/// Returned to the pool, that connection would begin every later transaction as a savepoint and
/// refuse `BEGIN IMMEDIATE` ("non-zero transaction depth"), long after the disk has room again.
/// Checked here, once for every statement of the store, instead of at each commit.
fn pool_options(connections: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_release(|connection, _| Box::pin(left_outside_transaction(connection)))
}

/// `true` when `connection` is outside any transaction and may be used again; `false` closes it
/// (the pool opens a new one when needed). A dropped `Transaction` only queues its `ROLLBACK`:
/// a ping runs it first (the connection answers in order) before the depth is read again.
async fn left_outside_transaction(connection: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    if !connection.is_in_transaction() {
        return Ok(true);
    }
    connection.ping().await?;
    let clean = !connection.is_in_transaction();
    if !clean {
        tracing::warn!(
            "closing a database connection left inside a failed transaction; \
             the pool opens a new one"
        );
    }
    Ok(clean)
}

/// sqlx retries a connection that PostgreSQL refuses as if it were passing (SQLSTATE 53300,
/// too many clients; 57P03, starting up) until the acquire timeout, then reports only "pool
/// timed out". When `error` is that timeout, one connection of its own, as briefly, finds out
/// why: a refusal becomes [`StoreError::Refused`] with the server's words and SQLSTATE. A
/// connection that opens means the pool was busy, and the timeout is the truth.
async fn explain_timeout(url: &SecretString, error: StoreError) -> StoreError {
    let timed_out = matches!(
        error,
        StoreError::Connect(sqlx::Error::PoolTimedOut)
            | StoreError::Database(sqlx::Error::PoolTimedOut)
    );
    if !timed_out {
        return error;
    }
    let attempt =
        tokio::time::timeout(ACQUIRE_TIMEOUT, AnyConnection::connect(url.expose_secret())).await;
    match attempt {
        Ok(Err(refused)) => StoreError::Refused {
            waited: ACQUIRE_TIMEOUT,
            cause: refusal(&refused),
        },
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            error
        }
        Err(_) => error,
    }
}

/// The server's message with its SQLSTATE (`sorry, too many clients already (SQLSTATE
/// 53300)`), or the error as it is when the server did not answer with one.
fn refusal(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(database) => match database.code() {
            Some(code) => format!("{} (SQLSTATE {code})", database.message()),
            None => database.message().to_owned(),
        },
        other => other.to_string(),
    }
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
    fn a_database_that_does_not_answer_is_unavailable_and_one_that_errs_is_not() {
        let unavailable = [
            StoreError::Database(sqlx::Error::PoolTimedOut),
            StoreError::Database(sqlx::Error::PoolClosed),
            StoreError::Database(sqlx::Error::Io(
                std::io::ErrorKind::ConnectionRefused.into(),
            )),
            StoreError::Connect(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into())),
            StoreError::Refused {
                waited: ACQUIRE_TIMEOUT,
                cause: "sorry, too many clients already (SQLSTATE 53300)".into(),
            },
        ];
        for error in unavailable {
            assert!(error.is_unavailable(), "{error}");
        }
        let faults = [
            StoreError::Database(sqlx::Error::RowNotFound),
            StoreError::Database(sqlx::Error::ColumnNotFound("x".into())),
            StoreError::Corrupt("x".into()),
            StoreError::LostLease,
        ];
        for error in faults {
            assert!(!error.is_unavailable(), "{error}");
        }
    }

    #[test]
    fn postgres_refuses_for_now_only_while_it_cannot_serve() {
        for sqlstate in [
            "53300", "57P01", "57P02", "57P03", "08006", "08001", "08000",
        ] {
            assert!(postgres_refuses_for_now(sqlstate), "{sqlstate}");
        }
        // A protocol violation, a failed sign-in, a missing table, a full disk, a deadlock:
        // the server answered, and retrying alone will not help (or it is a fault).
        for sqlstate in [
            "08P01", "28P01", "42P01", "53100", "40P01", "23505", "3D000",
        ] {
            assert!(!postgres_refuses_for_now(sqlstate), "{sqlstate}");
        }
    }

    #[test]
    fn sqlite_is_busy_under_every_extended_code_of_busy_only() {
        // BUSY, BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT.
        for code in ["5", "261", "517", "773"] {
            assert!(sqlite_busy(code), "{code}");
        }
        // ERROR, LOCKED, LOCKED_SHAREDCACHE, FULL, CONSTRAINT_UNIQUE, and no number.
        for code in ["1", "6", "262", "13", "2067", "HY000"] {
            assert!(!sqlite_busy(code), "{code}");
        }
    }

    /// The driver's own error, through the `Any` connection the store uses: a write while
    /// another connection holds the lock, with no busy timeout to wait it out.
    #[tokio::test]
    async fn a_locked_sqlite_database_is_unavailable_through_the_any_driver() {
        sqlx::any::install_default_drivers();
        let folder = tempfile::tempdir().expect("temporary folder");
        let url = format!(
            "sqlite://{}?mode=rwc",
            folder.path().join("busy.db").display()
        );
        let mut holder = AnyConnection::connect(&url)
            .await
            .expect("first connection");
        holder
            .execute("CREATE TABLE t (x INTEGER); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .await
            .expect("the lock taken");
        let mut other = AnyConnection::connect(&url)
            .await
            .expect("second connection");
        other
            .execute("PRAGMA busy_timeout = 0;")
            .await
            .expect("no busy timeout");
        let busy = other
            .execute("INSERT INTO t VALUES (2);")
            .await
            .expect_err("the database is locked");
        let busy = StoreError::Database(busy);
        assert!(busy.is_unavailable(), "{busy}");

        let syntax = other
            .execute("INSERT INTO nowhere VALUES (2);")
            .await
            .expect_err("no such table");
        let syntax = StoreError::Database(syntax);
        assert!(!syntax.is_unavailable(), "{syntax}");
    }

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
}
