//! What the benchmarks share: the release `pulseboard serve` as a child process (started,
//! signed in, read, stopped), a few readings of this machine, and the bare `INSERT` the store
//! and ingest benchmarks compare with.
//!
//! Each benchmark uses a part of it.
#![allow(dead_code)]

use anyhow::{bail, ensure, Context};
use lapin::options::QueueDeleteOptions;
use lapin::Channel;
use pulseboard::aggregate::Event;
use pulseboard::rabbitmq::Topology;
use pulseboard::store::{applied_event_columns, event_id_key, Store, SQLITE_PRAGMAS};
use sqlx::{AnyPool, Executor};
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const ADMIN_PASSWORD: &str = "bench-admin-password";
pub const CURRENCY: &str = "USD";
pub const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// Lines of the service's log kept for an error message.
const LOG_TAIL: usize = 20;

/// How to start the service: its broker, database and names, and any further variables.
pub struct ServiceOptions<'a> {
    pub amqp_url: &'a str,
    pub database_url: &'a str,
    pub queue_prefix: &'a str,
    pub exchange: &'a str,
    pub env: Vec<(&'static str, String)>,
    /// Log lines containing this are kept for `take_collected` instead of being shown.
    pub collect: Option<&'static str>,
}

/// A running `pulseboard serve` and its address.
pub struct Service {
    child: Child,
    pub pid: u32,
    /// `host:port` it listens on.
    address: String,
    http: reqwest::Client,
    token: Option<String>,
    /// The last lines the service logged.
    log: Arc<Mutex<VecDeque<String>>>,
    /// Lines containing `ServiceOptions::collect`, in the order logged.
    collected: Arc<Mutex<Vec<String>>>,
    /// When the process was spawned.
    pub started: Instant,
}

impl Service {
    /// Spawns the service on a free port and waits until it logs where it listens. Its log
    /// goes to stderr, except the INFO lines after start-up (`BENCH_SERVICE_LOG` sets its
    /// `RUST_LOG`; the default keeps `pulseboard=info`, which logs the address).
    pub async fn start(options: ServiceOptions<'_>) -> anyhow::Result<Service> {
        let binary = env!("CARGO_BIN_EXE_pulseboard");
        let started = Instant::now();
        let mut child = Command::new(binary)
            .arg("serve")
            .env("PULSEBOARD_BIND", "127.0.0.1:0")
            .env("DATABASE_URL", options.database_url)
            .env("AMQP_URL", options.amqp_url)
            .env("PULSEBOARD_QUEUE_PREFIX", options.queue_prefix)
            .env("PULSEBOARD_EXCHANGE", options.exchange)
            .env("PULSEBOARD_CURRENCY", CURRENCY)
            .env("PULSEBOARD_TIMEZONE", "UTC")
            .env("PULSEBOARD_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("PULSEBOARD_LOG_FORMAT", "text")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVICE_LOG")
                    .unwrap_or_else(|_| "warn,pulseboard=info".into()),
            )
            .env_remove("PULSEBOARD_METRICS_TOKEN")
            .env_remove("PULSEBOARD_TLS_CERT")
            .env_remove("PULSEBOARD_TLS_KEY")
            .envs(options.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let pid = child.id().context("the service's pid")?;
        let stderr = child.stderr.take().context("the service's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let address = tokio::time::timeout(STARTUP_LIMIT, async {
            while let Some(line) = lines.next_line().await? {
                eprintln!("  service: {line}");
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let address: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    return Ok(address);
                }
            }
            bail!("the service exited before listening")
        })
        .await
        .context("the service did not log `listening on http://…` in time")??;
        // Keep reading stderr so the service never blocks on a full pipe; show warnings, keep
        // the last lines for the error message if the run fails.
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let tail = log.clone();
        let collected = Arc::new(Mutex::new(Vec::new()));
        let collector = collected.clone();
        let collect = options.collect;
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if collect.is_some_and(|marker| line.contains(marker)) {
                    collector
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line);
                    continue;
                }
                if !line.contains(" INFO ") {
                    eprintln!("  service: {line}");
                }
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Ok(Service {
            child,
            pid,
            address,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            token: None,
            log,
            collected,
            started,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The access token, once `snapshot` had to sign in.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Fails if the process has already exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the service exited early: {status}{}", self.log_tail());
        }
        Ok(())
    }

    /// The collected log lines so far; later ones are kept for the next call.
    pub fn take_collected(&self) -> Vec<String> {
        std::mem::take(&mut *self.collected.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn log_tail(&self) -> String {
        let tail = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("; its last log lines:\n  {}", lines.join("\n  "))
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .error_for_status()
            .context("GET /metrics")?
            .text()
            .await?)
    }

    /// The current snapshot (`None` before the first one), signing in first if the API asks
    /// for credentials.
    pub async fn snapshot(&mut self) -> anyhow::Result<Option<serde_json::Value>> {
        let mut request = self.http.get(self.url("/api/dashboard/snapshot"));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        match response.status().as_u16() {
            200 => Ok(Some(response.json().await?)),
            503 => Ok(None),
            401 | 403 if self.token.is_none() => {
                self.token = Some(self.sign_in().await?);
                Ok(None)
            }
            status => bail!("GET /api/dashboard/snapshot answered {status}"),
        }
    }

    async fn sign_in(&self) -> anyhow::Result<String> {
        let body: serde_json::Value = self
            .http
            .post(self.url("/api/auth/token"))
            .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await?
            .error_for_status()
            .context("POST /api/auth/token")?
            .json()
            .await?;
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no access_token in the token answer")
    }

    /// SIGTERM, then waits for a clean exit (kills it after `limit`); returns how long it took.
    pub async fn stop(mut self, limit: Duration) -> anyhow::Result<f64> {
        let started = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        ensure!(status.success(), "kill -TERM {} failed", self.pid);
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                ensure!(status.success(), "the service exited with {status}");
                Ok(started.elapsed().as_secs_f64())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the service did not stop within {limit:?} of SIGTERM")
            }
        }
    }
}

/// Deletes the service's queues and exchanges, and `extra_queues`.
pub async fn delete_topology(
    channel: &Channel,
    topology: &Topology,
    extra_queues: &[&str],
) -> anyhow::Result<()> {
    topology.delete(channel).await?;
    for queue in extra_queues {
        channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting queue {queue}"))?;
    }
    Ok(())
}

/// Sum of the samples of `name` (exactly; not its `_bucket` and the like) whose labels contain
/// `label` (`""`: all of them).
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && line.contains(label)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A command's trimmed standard output, or "unknown".
pub fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// CPUs this process may run on: its affinity (`taskset`), not the machine's.
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPUs the machine has online: what the totals of /proc/stat add up, whatever this process's
/// affinity. Read once: every CPU share divides by it, sample after sample.
pub fn machine_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cores = stat
            .lines()
            .filter_map(|line| line.strip_prefix("cpu"))
            .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            .count();
        if cores == 0 {
            usable_cores()
        } else {
            cores
        }
    })
}

/// The CPUs a process may run on, as `Cpus_allowed_list` in /proc/<pid>/status (`self` for
/// this one): which cores a `taskset` left it.
pub fn allowed_cpus(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|list| list.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub const PG_PORT: u16 = 5432;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// `BENCH_BACKENDS`, a comma-separated list (default `sqlite,postgres`).
    pub fn list_from_env() -> Vec<Backend> {
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
}

/// The PostgreSQL server benchmarks create their databases on: `BENCH_PG_HOST` (127.0.0.1),
/// `BENCH_PG_USER` (postgres, who may connect without a password and create databases).
pub struct PostgresServer {
    host: String,
    user: String,
}

impl PostgresServer {
    pub fn from_env() -> PostgresServer {
        PostgresServer {
            host: std::env::var("BENCH_PG_HOST").unwrap_or_else(|_| "127.0.0.1".into()),
            user: std::env::var("BENCH_PG_USER").unwrap_or_else(|_| "postgres".into()),
        }
    }

    /// Runs one statement with `psql` in the `postgres` database; returns what it printed.
    fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let output = std::process::Command::new("psql")
            .args([
                "-h",
                &self.host,
                "-p",
                &PG_PORT.to_string(),
                "-U",
                &self.user,
            ])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAc", sql])
            .output()
            .context("running psql (is the PostgreSQL client installed?)")?;
        ensure!(
            output.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// The database of one run: a temporary SQLite file or a fresh PostgreSQL database.
pub struct Database {
    pub url: String,
    postgres_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Database {
    /// `name` becomes the PostgreSQL database's name (`-` and `.` turned into `_`).
    pub fn create(
        server: &PostgresServer,
        backend: Backend,
        name: &str,
    ) -> anyhow::Result<Database> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().context("a temporary directory")?;
                let path = dir.path().join("bench.db");
                Ok(Database {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    postgres_name: None,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let name = name.replace(['-', '.'], "_");
                server.psql(&format!("CREATE DATABASE {name}"))?;
                Ok(Database {
                    url: format!(
                        "postgres://{}@{}:{PG_PORT}/{name}",
                        server.user, server.host
                    ),
                    postgres_name: Some(name),
                    _dir: None,
                })
            }
        }
    }

    pub fn drop(self, server: &PostgresServer) -> anyhow::Result<()> {
        if let Some(name) = &self.postgres_name {
            server.psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        }
        Ok(())
    }
}

/// `applied_events` of a database migrated by the store, written with nothing but an INSERT.
#[derive(Clone)]
pub struct BareTable {
    pub pool: AnyPool,
    backend: Backend,
}

impl BareTable {
    pub async fn open(url: &str) -> anyhow::Result<BareTable> {
        let store = Store::connect(&url.parse().map_err(anyhow::Error::msg)?).await?;
        store.migrate().await?;
        store.close().await;
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    // The store's own settings: the baseline must be as durable.
                    if backend == Backend::Sqlite {
                        connection.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(BareTable { pool, backend })
    }

    /// The columns the store writes: SQLite's rows lead with the id's key (its index holds that).
    fn columns(&self) -> &'static [&'static str] {
        applied_event_columns(match self.backend {
            Backend::Sqlite => pulseboard::config::Backend::Sqlite,
            Backend::Postgres => pulseboard::config::Backend::Postgres,
        })
    }

    /// The rows, in one transaction committed as the store commits.
    pub async fn insert(&self, events: &[Event], now: i64) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for chunk in events.chunks(1_000) {
            let sql = format!(
                "INSERT INTO applied_events \
                 ({}) VALUES {}",
                self.columns().join(", "),
                placeholders(chunk.len(), self.columns().len(), self.backend)
            );
            let mut query = sqlx::query(&sql);
            for event in chunk {
                if self.backend == Backend::Sqlite {
                    query = query.bind(event_id_key(&event.id));
                }
                query = query
                    .bind(event.id.as_str())
                    .bind(event.kind.label())
                    .bind(event.user_id.as_str())
                    .bind(event.occurred_at)
                    .bind(event.kind.amount_minor())
                    .bind(now);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn placeholders(rows: usize, width: usize, backend: Backend) -> String {
    (0..rows)
        .map(|row| {
            let values: Vec<String> = (1..=width)
                .map(|column| match backend {
                    Backend::Sqlite => "?".to_owned(),
                    Backend::Postgres => format!("${}", row * width + column),
                })
                .collect();
            format!("({})", values.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
