//! The store's one error type, and the one place that tells a database that does not answer
//! (or refuses for now: callers say `unavailable`) from one that answered with an error.

use std::time::Duration;

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
pub(super) fn schema_error(error: sqlx::migrate::MigrateError) -> StoreError {
    match error {
        sqlx::migrate::MigrateError::VersionMissing(version) => StoreError::NewerSchema { version },
        error => StoreError::Migrate(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{AnyConnection, Connection, Executor};

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
                waited: Duration::from_secs(5),
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
}
