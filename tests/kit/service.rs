//! The real `pulseboard serve` as a child process, on a free port, with its own database and
//! names: started, signed in, reached only through its real interfaces (HTTP, `/metrics`, its
//! log), stopped. The tests and the benchmarks start it the same way; a benchmark only sets
//! its own environment ([`ServiceConfig::for_benchmark`]) and signs in outside what it times.

use super::broker::{Names, AMQP_URL};
use super::database::TestDatabase;
use super::metrics::metric_sum;
use anyhow::{bail, ensure, Context};
use serde_json::Value;
use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// From spawning to the `listening on` line, at most.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// Which of the service's log lines are shown on this process's standard error as they come
/// (every line is kept in [`Service::log_text`] and in `target/tmp/service-logs/<node>.log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// None (tests: a failing assertion prints the log).
    Nothing,
    /// Everything up to the `listening on` line, then every line but INFO ones (a benchmark
    /// run with `BENCH_SERVICE_LOG=…=debug` keeps the DEBUG batch lines in its output).
    NotInfo,
    /// Everything up to the `listening on` line, then warnings and errors.
    Warnings,
}

/// How to start one service process.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub database_url: String,
    pub admin_password: String,
    pub names: Names,
    pub node: String,
    pub amqp_url: String,
    pub args: Vec<String>,
    /// Set after the kit's own variables: they win.
    pub env: Vec<(String, String)>,
    /// Sign in as `admin` once listening (over plain HTTP), and send that token with every
    /// request of [`Service::client`]. A benchmark that times from the start leaves it off
    /// and calls [`Service::sign_in`] when it needs to.
    pub sign_in: bool,
    pub echo: Echo,
}

impl ServiceConfig {
    /// A test's service: snapshots every 100 ms, `RUST_LOG=info`, signed in.
    pub fn new(database: &TestDatabase, names: &Names, node: &str) -> ServiceConfig {
        ServiceConfig {
            database_url: database.url.clone(),
            admin_password: database.admin_password.clone(),
            names: names.clone(),
            node: node.to_owned(),
            amqp_url: AMQP_URL.to_owned(),
            args: vec!["serve".into()],
            env: vec![("PULSEBOARD_SNAPSHOT_INTERVAL_MS".into(), "100".into())],
            sign_in: true,
            echo: Echo::Nothing,
        }
    }

    /// A benchmark's service: the configuration defaults (docs/api.md) but currency `currency` and time zone
    /// UTC, text log filtered by `BENCH_SERVICE_LOG` (`warn,pulseboard=info`), the broker at
    /// `amqp_url`; not signed in at start.
    pub fn for_benchmark(
        database: &TestDatabase,
        names: &Names,
        amqp_url: &str,
        currency: &str,
    ) -> ServiceConfig {
        let rust_log =
            std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn,pulseboard=info".into());
        ServiceConfig {
            amqp_url: amqp_url.to_owned(),
            env: vec![
                ("PULSEBOARD_CURRENCY".into(), currency.into()),
                ("PULSEBOARD_TIMEZONE".into(), "UTC".into()),
                ("PULSEBOARD_LOG_FORMAT".into(), "text".into()),
                ("RUST_LOG".into(), rust_log),
            ],
            sign_in: false,
            echo: Echo::NotInfo,
            // The prefix names the run (`bench-…`): its log file is target/tmp/service-logs/<prefix>.log.
            ..ServiceConfig::new(database, names, &names.prefix)
        }
    }
}

/// The binary to run: `PULSEBOARD_TEST_BINARY` (another build, such as
/// `target/release/pulseboard`, to take a test's figures with it), or the one Cargo built with
/// the test or benchmark.
fn binary() -> String {
    std::env::var("PULSEBOARD_TEST_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_pulseboard").to_owned())
}

/// A running `pulseboard serve`; killed when dropped.
pub struct Service {
    child: Child,
    pid: u32,
    pub base_url: String,
    /// Everything it logged so far.
    pub log: Arc<Mutex<String>>,
    /// Reads its standard error until the process exits; awaited after an exit so that the
    /// last lines (`stopped`) are in [`Service::log_text`] before anyone reads it.
    log_collector: Option<tokio::task::JoinHandle<()>>,
    /// When the process was spawned.
    pub started: Instant,
    /// A client that sends the operator `admin`'s bearer token (once signed in).
    http: reqwest::Client,
    token: String,
    admin_password: String,
    /// Its queues and exchanges outlive it: they are deleted after the process is killed (the
    /// fields drop in this order), or the service would declare them again.
    _names: Names,
}

impl Service {
    /// Starts the service; panics with its log if it does not listen in time.
    pub async fn start(config: &ServiceConfig) -> Service {
        match Service::try_start(config).await {
            Ok(service) => service,
            Err(error) => panic!("{error:#}"),
        }
    }

    pub async fn try_start(config: &ServiceConfig) -> anyhow::Result<Service> {
        let binary = binary();
        let binary = binary.as_str();
        let started = Instant::now();
        let mut child = Command::new(binary)
            .args(&config.args)
            .env("PULSEBOARD_BIND", "127.0.0.1:0")
            .env("DATABASE_URL", &config.database_url)
            .env("PULSEBOARD_ADMIN_PASSWORD", &config.admin_password)
            .env("AMQP_URL", &config.amqp_url)
            .env("PULSEBOARD_QUEUE_PREFIX", &config.names.prefix)
            .env("PULSEBOARD_EXCHANGE", &config.names.exchange)
            .env("PULSEBOARD_NODE_ID", &config.node)
            .env("RUST_LOG", "info")
            // Only what the configuration asks for: not the caller's shell's.
            .env_remove("PULSEBOARD_METRICS_TOKEN")
            .env_remove("PULSEBOARD_TLS_CERT")
            .env_remove("PULSEBOARD_TLS_KEY")
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let pid = child.id().context("the service's pid")?;
        let stderr = child.stderr.take().context("the service's stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        let log_collector = tokio::spawn(collect_log(
            stderr,
            log.clone(),
            address_tx,
            config.node.clone(),
            config.echo,
        ));
        let address = match tokio::time::timeout(STARTUP_LIMIT, address_rx).await {
            Ok(Ok(address)) => address,
            Ok(Err(_)) => bail!("the service exited before listening:\n{}", read(&log)),
            Err(_) => bail!(
                "the service did not listen within {STARTUP_LIMIT:?}:\n{}",
                read(&log)
            ),
        };
        let base_url = if read(&log).contains("listening on https://") {
            format!("https://{address}")
        } else {
            format!("http://{address}")
        };
        let mut service = Service {
            child,
            pid,
            base_url,
            log,
            log_collector: Some(log_collector),
            started,
            http: client_with_token("")?,
            token: String::new(),
            admin_password: config.admin_password.clone(),
            _names: config.names.clone(),
        };
        if config.sign_in && service.base_url.starts_with("http://") {
            service.sign_in().await?;
        }
        Ok(service)
    }

    /// Signs in as the operator `admin`; every request of [`Service::client`] carries the token.
    pub async fn sign_in(&mut self) -> anyhow::Result<()> {
        self.token = try_fetch_token(&self.base_url, "admin", &self.admin_password).await?;
        self.http = client_with_token(&self.token)?;
        Ok(())
    }

    /// The client with the operator's bearer token (once signed in).
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// The operator's token; empty before signing in.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn log_text(&self) -> String {
        read(&self.log)
    }

    /// The last `lines` lines of its log, indented, for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = read(&self.log);
        let all: Vec<&str> = log.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        format!("; its last log lines:\n  {}", tail.join("\n  "))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `host:port` it listens on.
    pub fn address(&self) -> &str {
        self.base_url
            .split_once("://")
            .map_or(&self.base_url, |(_, address)| address)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The current snapshot, or `None` while there is none (or the request fails).
    pub async fn snapshot(&self) -> Option<Value> {
        self.try_snapshot().await.ok().flatten()
    }

    /// The current snapshot, `None` while there is none yet (503); an error for any other
    /// answer.
    pub async fn try_snapshot(&self) -> anyhow::Result<Option<Value>> {
        let response = self
            .http
            .get(self.url("/api/dashboard/snapshot"))
            .send()
            .await?;
        match response.status().as_u16() {
            200 => Ok(Some(response.json().await?)),
            503 => Ok(None),
            status => bail!("GET /api/dashboard/snapshot answered {status}"),
        }
    }

    /// The first snapshot that says ingest runs (a leader consumes), within `timeout`.
    pub async fn wait_until_ingesting(&self, timeout: Duration) -> Value {
        self.wait_for_snapshot(timeout, |s| s["ingest"]["state"] == "running")
            .await
    }

    /// Polls the snapshot until `accept` holds; panics with the last one after `timeout`.
    pub async fn wait_for_snapshot(
        &self,
        timeout: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < timeout {
            if let Some(snapshot) = self.snapshot().await {
                if accept(&snapshot) {
                    return snapshot;
                }
                last = Some(snapshot);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no matching snapshot within {timeout:?}; last: {last:?}\nservice log:\n{}",
            self.log_text()
        );
    }

    /// The text of `GET /metrics`.
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

    /// Sum of `pulseboard_events_total` with this outcome (0 if `/metrics` does not answer).
    pub async fn events_counted(&self, outcome: &str) -> u64 {
        let text = self.metrics().await.unwrap_or_default();
        metric_sum(
            &text,
            "pulseboard_events_total",
            &format!("outcome=\"{outcome}\""),
        )
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the process has already exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the service exited early: {status}{}", self.log_tail(20));
        }
        Ok(())
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL");
        self.read_log_to_the_end().await;
    }

    /// Waits (a little) until the collector has read what the exited process wrote last:
    /// the pipe outlives the process, so its exit does not mean its log has been read.
    async fn read_log_to_the_end(&mut self) {
        if let Some(collector) = self.log_collector.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), collector).await;
        }
    }

    /// SIGTERM, then the exit status (panics if it does not exit within `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.send_term().expect("kill -TERM");
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within {timeout:?}:\n{}", self.log_text()))
            .expect("wait");
        self.read_log_to_the_end().await;
        status
    }

    /// SIGTERM, then a clean exit within `limit` (killed after it); returns how long it took.
    pub async fn stop(&mut self, limit: Duration) -> anyhow::Result<f64> {
        let started = Instant::now();
        self.send_term()?;
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                self.read_log_to_the_end().await;
                ensure!(status.success(), "the service exited with {status}");
                Ok(started.elapsed().as_secs_f64())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the service did not stop within {limit:?} of SIGTERM")
            }
        }
    }

    /// SIGSTOP: the process stops where it is, its sockets stay open and nothing answers on
    /// them (a host that hangs); [`Service::resume`] lets it go on.
    pub fn freeze(&self) {
        self.signal("-STOP").expect("kill -STOP");
    }

    /// SIGCONT after [`Service::freeze`].
    pub fn resume(&self) {
        self.signal("-CONT").expect("kill -CONT");
    }

    fn send_term(&self) -> anyhow::Result<()> {
        self.signal("-TERM")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .with_context(|| format!("running kill {signal}"))?;
        ensure!(status.success(), "kill {signal} {} failed", self.pid);
        Ok(())
    }
}

fn client_with_token(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if !token.is_empty() {
        let bearer = format!("Bearer {token}").parse()?;
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
    }
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()?)
}

/// An access token from `POST /api/auth/token`; panics unless it is granted.
pub async fn fetch_token(base_url: &str, username: &str, password: &str) -> String {
    match try_fetch_token(base_url, username, password).await {
        Ok(token) => token,
        Err(error) => panic!("{error:#}"),
    }
}

pub async fn try_fetch_token(
    base_url: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let response = reqwest::Client::new()
        .post(format!("{base_url}/api/auth/token"))
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
        .context("token request")?;
    let status = response.status();
    ensure!(status == 200, "token for {username}: {status}");
    let body: Value = response.json().await.context("token body")?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token in the token answer")
}

/// Reads the service's standard error until it closes: hands over the address it listens on,
/// keeps every line (in memory and in `target/tmp/service-logs/<node>.log`), shows some.
async fn collect_log(
    stderr: tokio::process::ChildStderr,
    log: Arc<Mutex<String>>,
    address_tx: tokio::sync::oneshot::Sender<String>,
    node: String,
    echo: Echo,
) {
    let mut address_tx = Some(address_tx);
    let mut lines = BufReader::new(stderr).lines();
    let folder = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("service-logs");
    let _ = std::fs::create_dir_all(&folder);
    // A service started again under the same node starts the file afresh.
    let mut file = std::fs::File::create(folder.join(format!("{node}.log"))).ok();
    while let Ok(Some(line)) = lines.next_line().await {
        let listening = address_tx.is_none();
        let shown = match echo {
            Echo::Nothing => false,
            Echo::NotInfo => !listening || !line.contains(" INFO "),
            Echo::Warnings => !listening || line.contains(" WARN ") || line.contains(" ERROR "),
        };
        if shown {
            eprintln!("  service: {line}");
        }
        let announced = ["listening on http://", "listening on https://"]
            .iter()
            .find_map(|marker| line.find(marker).map(|at| at + marker.len()));
        if let Some(start) = announced {
            let address: String = line[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == ':')
                .collect();
            if let Some(tx) = address_tx.take() {
                let _ = tx.send(address);
            }
        }
        if let Some(file) = file.as_mut() {
            let _ = writeln!(file, "{line}");
        }
        let mut text = log.lock().unwrap_or_else(|p| p.into_inner());
        text.push_str(&line);
        text.push('\n');
    }
}

fn read(log: &Arc<Mutex<String>>) -> String {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}
