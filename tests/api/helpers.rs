//! Test harness: the real `pulseboard` binary on a random port, with its own database (a SQLite
//! file or a fresh PostgreSQL database) and its own queue prefix and exchange on the real broker,
//! so tests run in parallel without meeting. Services are reached only through their real
//! interfaces: HTTP and RabbitMQ.

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use pulseboard::rabbitmq::{connect, Topology};
use serde_json::Value;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of the test's own; a PostgreSQL one is dropped when the test ends. Its first
/// user, operator `admin`, gets `admin_password` (every instance on it shares that).
pub struct TestDatabase {
    pub url: String,
    pub admin_password: String,
    postgres_name: Option<String>,
    _folder: tempfile::TempDir,
}

impl TestDatabase {
    pub async fn new(backend: Backend) -> TestDatabase {
        let folder = tempfile::tempdir().expect("temporary folder");
        match backend {
            Backend::Sqlite => TestDatabase {
                url: format!(
                    "sqlite://{}/pulseboard.db?mode=rwc",
                    folder.path().display()
                ),
                admin_password: test_password(),
                postgres_name: None,
                _folder: folder,
            },
            Backend::Postgres => {
                let name = format!("pb_test_{}", short_id());
                postgres_admin(&format!("CREATE DATABASE {name}")).await;
                TestDatabase {
                    url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
                    admin_password: test_password(),
                    postgres_name: Some(name),
                    _folder: folder,
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(name) = self.postgres_name.take() {
            // Best effort, synchronously: the runtime may already be gone.
            let _ = std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-qc"])
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn postgres_admin(sql: &str) {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL)
        .await
        .expect("PostgreSQL must be reachable at 127.0.0.1:5432 (run scripts/test.sh)");
    sqlx::Executor::execute(&mut connection, sql)
        .await
        .expect("admin statement");
}

/// Test passwords share a prefix so that a scan of the service logs can find any leak.
pub fn test_password() -> String {
    format!("pw-{}", uuid::Uuid::new_v4().simple())
}

/// Sleeps past the next minute boundary if it comes within `window`. At a new minute the
/// service publishes a snapshot (the history point moves on): a test that needs "nothing new"
/// for a while must not meet one.
pub async fn clear_of_minute_boundary(window: Duration) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let to_boundary = Duration::from_millis((60_000 - now_ms % 60_000) as u64);
    if to_boundary < window {
        // Past the boundary and its snapshot.
        tokio::time::sleep(to_boundary + Duration::from_millis(500)).await;
    }
}

pub fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Queue prefix and exchange of one test. When the last copy is dropped, at the end of the
/// test whether it passed or not, the queues and exchanges of that prefix are deleted.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    pub exchange: String,
    _cleanup: Arc<TopologyCleanup>,
}

impl Names {
    pub fn new() -> Names {
        let prefix = format!("test-{}", short_id());
        let exchange = format!("{prefix}.ev");
        Names {
            _cleanup: Arc::new(TopologyCleanup(Topology::new(&exchange, &prefix))),
            exchange,
            prefix,
        }
    }
}

#[derive(Debug)]
struct TopologyCleanup(Topology);

impl Drop for TopologyCleanup {
    fn drop(&mut self) {
        let topology = self.0.clone();
        // Drop is synchronous and runs on the test's runtime, which cannot `block_on` a second
        // future: the deletion gets a thread and a runtime of its own, and this waits for it
        // (bounded, so that a broker that stopped answering cannot hang the test run).
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                tokio::time::timeout(CLEANUP_LIMIT, delete_topology(&topology))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {CLEANUP_LIMIT:?}")))
            })
        })
        .join();
        if let Ok(Err(error)) = deleted {
            eprintln!("could not delete the test's queues and exchanges: {error}");
        }
    }
}

const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

async fn delete_topology(topology: &Topology) -> Result<(), String> {
    let (connection, channel) = open_channel(AMQP_URL, "pulseboard test cleanup").await?;
    let deleted = topology.delete(&channel).await.map_err(|e| e.to_string());
    let _ = connection.close(200, "done").await;
    deleted
}

/// A connection to the broker at `url` and a channel on it; errors as text, for tests that
/// retry or report them instead of failing at once.
pub async fn open_channel(
    url: &str,
    name: &str,
) -> Result<(lapin::Connection, lapin::Channel), String> {
    let connection = connect(url, name).await.map_err(|e| e.to_string())?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    Ok((connection, channel))
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
    pub env: Vec<(String, String)>,
}

impl ServiceConfig {
    pub fn new(database: &TestDatabase, names: &Names, node: &str) -> ServiceConfig {
        ServiceConfig {
            database_url: database.url.clone(),
            admin_password: database.admin_password.clone(),
            names: names.clone(),
            node: node.to_owned(),
            amqp_url: AMQP_URL.to_owned(),
            args: vec!["serve".into()],
            env: vec![("PULSEBOARD_SNAPSHOT_INTERVAL_MS".into(), "100".into())],
        }
    }
}

/// A running `pulseboard serve`; killed when dropped.
pub struct Service {
    child: Child,
    pub base_url: String,
    pub log: Arc<Mutex<String>>,
    /// A client that sends the operator `admin`'s bearer token with every request.
    http: reqwest::Client,
    token: String,
    /// Its queues and exchanges outlive it: they are deleted after the process is killed (the
    /// fields drop in this order), or the service would declare them again.
    _names: Names,
}

impl Service {
    pub async fn start(config: &ServiceConfig) -> Service {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pulseboard"));
        command
            .args(&config.args)
            .env("PULSEBOARD_BIND", "127.0.0.1:0")
            .env("DATABASE_URL", &config.database_url)
            .env("PULSEBOARD_ADMIN_PASSWORD", &config.admin_password)
            .env("AMQP_URL", &config.amqp_url)
            .env("PULSEBOARD_QUEUE_PREFIX", &config.names.prefix)
            .env("PULSEBOARD_EXCHANGE", &config.names.exchange)
            .env("PULSEBOARD_NODE_ID", &config.node)
            .env("RUST_LOG", "info")
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn pulseboard");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(collect_log(
            stderr,
            log.clone(),
            address_tx,
            config.node.clone(),
        ));
        let address = tokio::time::timeout(Duration::from_secs(30), address_rx)
            .await
            .unwrap_or_else(|_| panic!("service did not start in 30 s:\n{}", read(&log)))
            .unwrap_or_else(|_| panic!("service exited before listening:\n{}", read(&log)));
        let base_url = if read(&log).contains("listening on https://") {
            format!("https://{address}")
        } else {
            format!("http://{address}")
        };
        let token = if base_url.starts_with("https") {
            String::new()
        } else {
            fetch_token(&base_url, "admin", &config.admin_password).await
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if !token.is_empty() {
            let bearer = format!("Bearer {token}").parse().expect("header value");
            headers.insert(reqwest::header::AUTHORIZATION, bearer);
        }
        Service {
            child,
            base_url,
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .default_headers(headers)
                .build()
                .expect("http client"),
            token,
            _names: config.names.clone(),
        }
    }

    /// The client with the operator's bearer token.
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn log_text(&self) -> String {
        read(&self.log)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
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
        let response = self
            .http
            .get(self.url("/api/dashboard/snapshot"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
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

    /// Sum of `pulseboard_events_total` with this outcome.
    pub async fn events_counted(&self, outcome: &str) -> u64 {
        let Ok(response) = self.http.get(self.url("/metrics")).send().await else {
            return 0;
        };
        let text = response.text().await.unwrap_or_default();
        metric_sum(
            &text,
            "pulseboard_events_total",
            &format!("outcome=\"{outcome}\""),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running child has a pid")
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// SIGTERM, then the exit status (panics if it does not exit within `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within {timeout:?}:\n{}", self.log_text()))
            .expect("wait")
    }
}

/// An access token from `POST /api/auth/token`.
pub async fn fetch_token(base_url: &str, username: &str, password: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base_url}/api/auth/token"))
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), 200, "token for {username}");
    let body: Value = response.json().await.expect("token body");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

async fn collect_log(
    stderr: tokio::process::ChildStderr,
    log: Arc<Mutex<String>>,
    address_tx: tokio::sync::oneshot::Sender<String>,
    node: String,
) {
    let mut address_tx = Some(address_tx);
    let mut lines = BufReader::new(stderr).lines();
    let folder = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("service-logs");
    let _ = std::fs::create_dir_all(&folder);
    while let Ok(Some(line)) = lines.next_line().await {
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
        let mut text = log.lock().unwrap_or_else(|p| p.into_inner());
        text.push_str(&line);
        text.push('\n');
        let _ = std::fs::write(folder.join(format!("{node}.log")), text.as_bytes());
    }
}

fn read(log: &Arc<Mutex<String>>) -> String {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Sums the samples of `name` whose label set contains `label`.
pub fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A producer and inspector on the real broker, scoped to one test's names.
pub struct Broker {
    /// Kept open for the channel's sake.
    _connection: lapin::Connection,
    channel: lapin::Channel,
    pub names: Names,
    topology: Topology,
}

impl Broker {
    /// Connects and declares the service's topology, so messages queue before it starts.
    pub async fn connect(names: &Names) -> Broker {
        let connection = connect(AMQP_URL, "pulseboard test")
            .await
            .expect("RabbitMQ must be reachable at 127.0.0.1:5672 (run scripts/test.sh)");
        let channel = connection.create_channel().await.expect("channel");
        let topology = Topology::new(&names.exchange, &names.prefix);
        topology.declare(&channel).await.expect("topology");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Broker {
            _connection: connection,
            channel,
            names: names.clone(),
            topology,
        }
    }

    /// Publishes every message and waits until the broker confirmed all of them.
    pub async fn publish_all(&self, messages: &[(String, Vec<u8>)]) {
        let mut confirms = FuturesUnordered::new();
        for (routing_key, body) in messages {
            let confirm = self
                .channel
                .basic_publish(
                    &self.names.exchange,
                    routing_key,
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        while let Some(confirm) = confirms.next().await {
            assert!(
                confirm.expect("confirm").is_ack(),
                "broker refused a message"
            );
        }
    }

    /// Takes every dead letter off `<prefix>.dead`: (reason header, body).
    pub async fn take_dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        let mut letters = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(&self.topology.dead_queue, BasicGetOptions::default())
            .await
            .expect("basic_get")
        {
            let reason = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-pulseboard-reason").cloned())
                .map(|value| match value {
                    AMQPValue::LongString(text) => text.to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            letters.push((reason, message.delivery.data.clone()));
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        letters
    }

    /// Takes dead letters off `<prefix>.dead` until `count` arrived, or 10 s passed.
    pub async fn wait_for_dead_letters(&self, count: usize) -> Vec<(String, Vec<u8>)> {
        let mut letters = Vec::new();
        for _ in 0..100 {
            letters.extend(self.take_dead_letters().await);
            if letters.len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        letters
    }

    pub async fn events_queue_depth(&self) -> u32 {
        Topology::depth(&self.channel, &self.topology.events_queue)
            .await
            .expect("depth")
    }
}

/// An event body of SPEC §3.
pub fn event(id: &str, kind: &str, seconds_ago: i64, user: &str, amount: Option<i64>) -> Vec<u8> {
    let occurred_at = chrono::Utc::now() - chrono::Duration::seconds(seconds_ago);
    let mut value = serde_json::json!({
        "id": id,
        "type": kind,
        "occurred_at": occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "user_id": user,
    });
    if let Some(amount) = amount {
        value["data"] = serde_json::json!({"order_id": format!("o-{id}"), "amount_minor": amount, "currency": "USD"});
    }
    value.to_string().into_bytes()
}
