//! Opening the store: the pools of either backend and the settings every connection gets,
//! the SQLite file and folder created on first start, a connection left inside a failed
//! transaction kept out of its pool, and why a PostgreSQL pool that timed out got no
//! connection; the ping that says whether the database answers, and closing. No statement of
//! the store's data is here.

use super::{DedupeWindow, Store, StoreError};
use crate::aggregate::MAX_AGE_MS;
use crate::config::{Backend, DatabaseUrl};
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection, Executor};
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
                    audit_keep_ms: super::audit::AUDIT_KEEP_MS,
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
                    audit_keep_ms: super::audit::AUDIT_KEEP_MS,
                    dedupe: DedupeWindow::new(MAX_AGE_MS),
                })
            }
        }
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
