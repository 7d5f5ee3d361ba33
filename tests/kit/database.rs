//! A database of the run's own: a SQLite file in a temporary folder, or a fresh PostgreSQL
//! database, dropped when the run ends. The backend is the library's own
//! [`Backend`](pulseboard::config::Backend).

use super::broker::short_id;
use anyhow::Context;
pub use pulseboard::config::Backend;
use std::process::Stdio;

/// Where PostgreSQL listens (the tests' shared server; the benchmarks may name another host).
pub const PG_PORT: u16 = 5432;

/// The backend's name, as `BENCH_BACKENDS` and the benchmarks' tables spell it.
pub fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// `BENCH_BACKENDS`, a comma-separated list (default `sqlite,postgres`).
pub fn backends_from_env() -> Vec<Backend> {
    std::env::var("BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .split(',')
        .map(|name| match name.trim() {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres,
            other => panic!("BENCH_BACKENDS: unknown backend {other:?} (sqlite, postgres)"),
        })
        .collect()
}

/// Test passwords share a prefix so that a scan of the service logs can find any leak.
pub fn test_password() -> String {
    format!("pw-{}", uuid::Uuid::new_v4().simple())
}

/// The PostgreSQL server databases are created on, as `user`, who may connect without a
/// password and create databases.
#[derive(Debug, Clone)]
pub struct PostgresServer {
    pub host: String,
    pub user: String,
}

impl PostgresServer {
    /// The tests' server: 127.0.0.1, user postgres.
    pub fn shared() -> PostgresServer {
        PostgresServer {
            host: "127.0.0.1".into(),
            user: "postgres".into(),
        }
    }

    /// The benchmarks' server: `BENCH_PG_HOST` (127.0.0.1), `BENCH_PG_USER` (postgres).
    pub fn from_env() -> PostgresServer {
        let shared = PostgresServer::shared();
        PostgresServer {
            host: std::env::var("BENCH_PG_HOST").unwrap_or(shared.host),
            user: std::env::var("BENCH_PG_USER").unwrap_or(shared.user),
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@{}:{PG_PORT}/{database}",
            self.user, self.host
        )
    }

    async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .with_context(|| format!("PostgreSQL at {}:{PG_PORT}", self.host))?;
        sqlx::Executor::execute(&mut connection, sql)
            .await
            .with_context(|| format!("{sql:?}"))?;
        Ok(())
    }

    /// Drops `database` with `psql`, synchronously: it runs from `Drop`, when the runtime may
    /// already be gone.
    fn drop_database(&self, database: &str) -> Result<(), String> {
        let status = std::process::Command::new("psql")
            .args([
                "-h",
                &self.host,
                "-p",
                &PG_PORT.to_string(),
                "-U",
                &self.user,
            ])
            .args(["-d", "postgres", "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("running psql: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("psql exited with {status}"))
        }
    }
}

/// A database of the run's own; a PostgreSQL one is dropped with it. Its first user, operator
/// `admin`, gets `admin_password` (every instance on it shares that).
pub struct TestDatabase {
    pub url: String,
    pub admin_password: String,
    postgres: Option<(PostgresServer, String)>,
    _folder: tempfile::TempDir,
}

impl TestDatabase {
    /// A database on the tests' shared server (or a SQLite file).
    pub async fn new(backend: Backend) -> TestDatabase {
        let name = format!("pb_test_{}", short_id());
        TestDatabase::create(&PostgresServer::shared(), backend, &name)
            .await
            .expect("PostgreSQL must be reachable at 127.0.0.1:5432 (run scripts/test.sh)")
    }

    /// `name` becomes the PostgreSQL database's name (`-` and `.` turned into `_`).
    pub async fn create(
        server: &PostgresServer,
        backend: Backend,
        name: &str,
    ) -> anyhow::Result<TestDatabase> {
        let folder = tempfile::tempdir().context("a temporary folder")?;
        let (url, postgres) = match backend {
            Backend::Sqlite => (
                format!(
                    "sqlite://{}/pulseboard.db?mode=rwc",
                    folder.path().display()
                ),
                None,
            ),
            Backend::Postgres => {
                let name = name.replace(['-', '.'], "_");
                server.execute(&format!("CREATE DATABASE {name}")).await?;
                (server.url(&name), Some((server.clone(), name)))
            }
        };
        Ok(TestDatabase {
            url,
            admin_password: test_password(),
            postgres,
            _folder: folder,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((server, name)) = self.postgres.take() {
            if let Err(error) = server.drop_database(&name) {
                eprintln!("could not drop database {name}: {error}");
            }
        }
    }
}
