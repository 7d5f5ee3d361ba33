//! Two instances behind nginx, the way `docker-compose.yml` runs them: Debian's nginx started
//! by the test with `nginx/pulseboard.conf` itself (only the upstream and listen addresses
//! swapped), two instances on PostgreSQL and the shared RabbitMQ, events flowing.
//!
//! - an SSE client and a console client stay served while `web-1` gets SIGTERM, comes back,
//!   gets SIGKILL and comes back: SSE resumes by `Last-Event-ID` without a missed announcement,
//!   the console gets 1001 "going away" and reconnects, totals stay exact, and the live
//!   instance's `/readyz` answers 200 throughout;
//! - a rolling restart of both instances under 1 000 events/s loses nothing, counts nothing
//!   twice and serves every dashboard client throughout;
//! - a starting instance refuses connections until it can answer them, so that nginx moves a
//!   reconnecting client on at once instead of leaving it in a listen backlog.
//!
//! The instances are the debug build the other black-box tests use (`CARGO_BIN_EXE_pulseboard`):
//! a release build would add minutes of CI time and a second `target/` tree, and the debug build
//! applies well over the 1 000 events/s asked here (measured by the rolling-restart test itself:
//! the queue drains at the end within seconds).

use crate::helpers::{
    metric_sum, open_channel, Backend, Names, Service, ServiceConfig, TestDatabase, AMQP_URL,
};
use crate::sse_client::SseClient;
use futures_util::{SinkExt, StreamExt};
use pulseboard::simulate::{SentTally, TrafficGenerator};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The proxy configuration `docker-compose.yml` mounts.
pub const PROXY_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nginx/pulseboard.conf");
const NGINX: &str = "/usr/sbin/nginx";
/// Longest silence a connected dashboard client may see (heartbeats come every second here),
/// reconnection included.
const MAX_SILENCE: Duration = Duration::from_secs(4);

/// `nginx/pulseboard.conf` with the compose addresses swapped for local ones, and its access
/// log moved into `dir`; nothing else changes. Each swapped line must be there exactly once,
/// so a change to the file that this test would not notice fails here.
pub fn local_proxy_config(source: &str, upstreams: [u16; 2], listen: u16, dir: &str) -> String {
    let swaps = [
        // Addresses need no resolving (and Debian's nginx predates `resolve` outside nginx Plus).
        (
            "server web-1:8080 resolve ",
            format!("server 127.0.0.1:{} ", upstreams[0]),
        ),
        (
            "server web-2:8080 resolve ",
            format!("server 127.0.0.1:{} ", upstreams[1]),
        ),
        ("listen 80;", format!("listen 127.0.0.1:{listen};")),
        (
            "access_log /var/log/nginx/access.log pulseboard;",
            format!("access_log {dir}/access.log pulseboard;"),
        ),
    ];
    let mut config = source.to_owned();
    for (from, to) in swaps {
        assert_eq!(
            config.matches(from).count(),
            1,
            "{PROXY_CONFIG} must contain `{from}` once"
        );
        config = config.replace(from, &to);
    }
    config
}

/// Debian's nginx as a process of the test's own: its own configuration, pid, logs and temp
/// folders, in the foreground; killed when dropped. The packaged daemon plays no part.
pub struct Nginx {
    child: Child,
    pub port: u16,
    /// Configuration, pid, logs and temp folders; removed when dropped.
    _folder: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(upstreams: [u16; 2]) -> Nginx {
        assert!(
            std::path::Path::new(NGINX).exists(),
            "{NGINX} missing: apt-get install nginx (scripts/test.sh does)"
        );
        let source = std::fs::read_to_string(PROXY_CONFIG).expect("nginx/pulseboard.conf");
        let port = free_port();
        let folder = tempfile::tempdir().expect("temporary folder");
        let dir = folder.path().display().to_string();
        std::fs::write(
            folder.path().join("pulseboard.conf"),
            local_proxy_config(&source, upstreams, port, &dir),
        )
        .expect("write pulseboard.conf");
        // The frame the official image's nginx.conf gives conf.d/default.conf: an http block.
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {dir}/access.log;\n  client_body_temp_path {dir}/body;\n  \
             proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  \
             uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n  \
             include {dir}/pulseboard.conf;\n}}\n"
        );
        std::fs::write(folder.path().join("nginx.conf"), main).expect("write nginx.conf");
        // World-readable: the workers run as `nobody` when the test runs as root.
        let _ = std::process::Command::new("chmod")
            .args(["755", &dir])
            .status();
        let mut command = Command::new(NGINX);
        command
            .args(["-p", &dir, "-e", &format!("{dir}/error.log")])
            .args(["-c", &format!("{dir}/nginx.conf")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn nginx");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(folder.path().join("error.log")).unwrap_or_default();
                panic!("nginx exited with {status}:\n{log}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Nginx {
            child,
            port,
            _folder: folder,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it wrote to its access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self._folder.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Two instances on fixed ports (so that one comes back where nginx expects it), nginx in
/// front, a PostgreSQL database and a queue prefix of the test's own.
struct Stack {
    _database: TestDatabase,
    names: Names,
    configs: [ServiceConfig; 2],
    web: [Option<Service>; 2],
    nginx: Nginx,
    token: String,
    http: reqwest::Client,
}

impl Stack {
    async fn start() -> Stack {
        let database = TestDatabase::new(Backend::Postgres).await;
        let names = Names::new();
        // The topology exists before the producer starts, as in production.
        let (connection, channel) = open_channel(AMQP_URL, "proxy test setup")
            .await
            .expect("RabbitMQ at 127.0.0.1:5672 (run scripts/test.sh)");
        pulseboard::rabbitmq::Topology::new(&names.exchange, &names.prefix)
            .declare(&channel)
            .await
            .expect("topology");
        let _ = connection.close(200, "declared").await;
        let ports = crate::private_services::free_ports::<2>();
        let configs = [0, 1].map(|i| {
            let mut config = ServiceConfig::new(&database, &names, &format!("web-{}", i + 1));
            config.env.extend(
                [
                    ("PULSEBOARD_BIND", format!("127.0.0.1:{}", ports[i])),
                    ("PULSEBOARD_TRUST_PROXY", "true".into()),
                    ("PULSEBOARD_HEARTBEAT_SECS", "1".into()),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            );
            config
        });
        let first = Service::start(&configs[0]).await;
        let second = Service::start(&configs[1]).await;
        let nginx = Nginx::start(ports).await;
        let token = first.token().to_owned();
        let stack = Stack {
            _database: database,
            names,
            configs,
            web: [Some(first), Some(second)],
            nginx,
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        };
        for i in 0..2 {
            stack.wait_ready(i).await;
        }
        stack
    }

    fn web(&self, i: usize) -> &Service {
        self.web[i].as_ref().expect("instance running")
    }

    fn direct_url(&self, i: usize, path: &str) -> String {
        let bind = &self.configs[i]
            .env
            .iter()
            .find(|(k, _)| k == "PULSEBOARD_BIND")
            .expect("bind")
            .1;
        format!("http://{bind}{path}")
    }

    async fn wait_ready(&self, i: usize) {
        let started = Instant::now();
        loop {
            let answer = self.http.get(self.direct_url(i, "/readyz")).send().await;
            if answer.is_ok_and(|a| a.status() == 200) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "web-{} not ready in 30 s",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn restart(&mut self, i: usize) {
        self.web[i] = Some(Service::start(&self.configs[i]).await);
        self.wait_ready(i).await;
    }

    /// SIGTERM: `/readyz` says 503 at once while the instance still serves, then it exits
    /// cleanly within 10 s. Returns how long the exit took.
    async fn terminate(&mut self, i: usize) -> Duration {
        let ready_url = self.direct_url(i, "/readyz");
        let snapshot_url = self.direct_url(i, "/api/dashboard/snapshot");
        let http = self.http.clone();
        let token = self.token.clone();
        let signalled = Instant::now();
        let service = self.web[i].as_mut().expect("instance running");
        let (status, drain) = tokio::join!(
            service.terminate(Duration::from_secs(10)),
            observe_drain(http, token, ready_url, snapshot_url)
        );
        let took = signalled.elapsed();
        assert!(status.success(), "web-{} exit status {status}", i + 1);
        let (not_ready_after, served_while_draining) = drain;
        assert!(
            not_ready_after < Duration::from_millis(500),
            "web-{}: /readyz 503 only after {not_ready_after:?}",
            i + 1
        );
        assert!(
            served_while_draining,
            "web-{}: the snapshot was not served while draining",
            i + 1
        );
        let log = self.web(i).log_text();
        assert!(
            log.contains("shutting down: draining") && log.contains("stopped"),
            "{log}"
        );
        took
    }

    /// SIGKILL: no chance to clean up.
    async fn kill(&mut self, i: usize) {
        if let Some(service) = self.web[i].as_mut() {
            service.kill().await;
        }
    }

    /// Live connections of `transport` on instance `i`, from its own `/metrics`.
    async fn connections(&self, i: usize, transport: &str) -> Result<u64, String> {
        let unread = |e: &dyn std::fmt::Display| format!("web-{} /metrics: {e}", i + 1);
        let answer = self
            .http
            .get(self.direct_url(i, "/metrics"))
            .send()
            .await
            .map_err(|e| unread(&e))?;
        if !answer.status().is_success() {
            return Err(unread(&answer.status()));
        }
        let text = answer.text().await.map_err(|e| unread(&e))?;
        Ok(metric_sum(
            &text,
            "pulseboard_connections",
            &format!("transport=\"{transport}\""),
        ))
    }

    /// The current snapshot through nginx.
    async fn snapshot(&self) -> Option<serde_json::Value> {
        let answer = self
            .http
            .get(self.nginx.url("/api/dashboard/snapshot"))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        if answer.status() != 200 {
            return None;
        }
        answer.json().await.ok()
    }

    /// Waits until the figures through nginx show `net` revenue today.
    async fn wait_for_revenue(&self, net: i64, timeout: Duration) -> serde_json::Value {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < timeout {
            if let Some(snapshot) = self.snapshot().await {
                if snapshot["revenue"]["today_minor"] == net {
                    return snapshot;
                }
                last = Some(snapshot);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("revenue never reached {net}; last snapshot {last:?}");
    }

    /// Events applied, by type, as the database has them.
    async fn applied_by_kind(&self) -> std::collections::BTreeMap<String, i64> {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&self.configs[0].database_url)
            .await
            .expect("database");
        // The store keeps an id record for every applied order and refund, and nothing per
        // user event (docs/events.md, What is kept): a refund's `signed_minor` is negative.
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT CASE WHEN signed_minor >= 0 THEN 'order.placed' ELSE 'order.refunded' END, \
             count(*) FROM order_ids GROUP BY 1",
        )
        .fetch_all(&mut connection)
        .await
        .expect("order ids");
        rows.into_iter().collect()
    }
}

/// Polls `/readyz` from the signal on: (when it first said 503, whether a snapshot was served
/// after that, while draining).
async fn observe_drain(
    http: reqwest::Client,
    token: String,
    ready_url: String,
    snapshot_url: String,
) -> (Duration, bool) {
    let started = Instant::now();
    let mut not_ready_after = Duration::MAX;
    while started.elapsed() < Duration::from_secs(2) {
        if let Ok(answer) = http.get(&ready_url).send().await {
            if answer.status() == 503 {
                not_ready_after = started.elapsed();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let served = http
        .get(&snapshot_url)
        .bearer_auth(&token)
        .send()
        .await
        .is_ok_and(|answer| answer.status() == 200);
    (not_ready_after, served)
}

/// Publishes generated events at `rate` per second (persistent, confirmed) until `stop`;
/// returns the tally of what the broker confirmed.
async fn produce(names: Names, rate: u64, seed: u64, stop: CancellationToken) -> SentTally {
    let (connection, channel) = open_channel(AMQP_URL, "proxy test producer")
        .await
        .expect("producer connection");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut generator = TrafficGenerator::new(500, "USD", seed);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.is_cancelled() {
        tick.tick().await;
        let due = started.elapsed().as_millis() as u64 * rate / 1_000;
        let mut confirms = Vec::new();
        while generator.tally.sent < due {
            let event = generator.next_event(chrono::Utc::now().timestamp_millis());
            let confirm = pulseboard::rabbitmq::publish_event(
                &channel,
                &names.exchange,
                event.routing_key,
                &event.body,
            )
            .await
            .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack(), "broker refused");
        }
    }
    let _ = connection.close(200, "done").await;
    generator.tally
}

/// Posts an announcement through nginx every 300 ms until `stop`; returns the ids created.
async fn announce(
    http: reqwest::Client,
    url: String,
    token: String,
    stop: CancellationToken,
) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut n = 0;
    while !stop.is_cancelled() {
        n += 1;
        let answer = http
            .post(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({"message": format!("notice {n}"), "level": "info"}))
            .send()
            .await;
        if let Ok(answer) = answer {
            if answer.status() == 201 {
                if let Ok(body) = answer.json::<serde_json::Value>().await {
                    ids.extend(body["id"].as_i64());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ids
}

/// What one reconnecting dashboard client saw.
#[derive(Debug, Default)]
struct StreamLog {
    announcements: Vec<i64>,
    last_revenue: Option<i64>,
    /// Streams that ended (by the server or the proxy) and were opened again.
    reconnects: u32,
    /// Longest time without any block, reconnecting included.
    longest_silence: Duration,
    last_id: Option<String>,
    /// The last announcement before this client first connected (its first event id says):
    /// only later ones are owed to it.
    baseline: Option<i64>,
}

/// An EventSource through nginx: reads until the stream ends or goes silent, then opens it
/// again with `Last-Event-ID`, until `stop`.
async fn watch_stream(
    url: String,
    token: String,
    stop: CancellationToken,
    log: Arc<Mutex<StreamLog>>,
) {
    let http = reqwest::Client::new();
    let mut last_block = Instant::now();
    while !stop.is_cancelled() {
        let last_id = lock(&log).last_id.clone();
        let mut request = http.get(&url).bearer_auth(&token);
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let Ok(mut stream) = SseClient::open(request).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let block = tokio::select! {
                _ = stop.cancelled() => return,
                block = stream.next(Duration::from_secs(3)) => block,
            };
            let Some(block) = block else { break };
            let mut seen = lock(&log);
            seen.longest_silence = seen.longest_silence.max(last_block.elapsed());
            last_block = Instant::now();
            if let Some(id) = &block.id {
                if seen.baseline.is_none() && block.event == "snapshot" {
                    seen.baseline = id.split('-').next().and_then(|a| a.parse().ok());
                }
                seen.last_id = Some(id.clone());
            }
            match block.event.as_str() {
                "announcement" => seen.announcements.extend(block.json()["id"].as_i64()),
                "snapshot" => seen.last_revenue = block.json()["revenue"]["today_minor"].as_i64(),
                _ => {}
            }
        }
        lock(&log).reconnects += 1;
        // Sooner than the `retry:` a browser would honour, to keep the test short.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one reconnecting console client saw.
#[derive(Debug, Default)]
struct ConsoleLog {
    /// The instance of each session, from its `welcome`.
    sessions: Vec<String>,
    /// Close frames received: (code, reason).
    closes: Vec<(u16, String)>,
    pongs: u64,
    longest_silence: Duration,
}

/// A console client through nginx (with the `Origin` a browser on the proxy's address sends):
/// pings twice a second, reconnects whenever its session ends, until `stop`.
async fn watch_console(
    url: String,
    origin: String,
    token: String,
    stop: CancellationToken,
    log: Arc<Mutex<ConsoleLog>>,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut last_pong = Instant::now();
    while !stop.is_cancelled() {
        let mut request = format!("{url}?access_token={token}")
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("origin"));
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(request).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut ping = tokio::time::interval(Duration::from_millis(500));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ping.tick() => {
                    n += 1;
                    let command = format!("{{\"id\":\"{n}\",\"type\":\"ping\"}}");
                    if socket.send(Message::text(command)).await.is_err() { break; }
                }
                frame = socket.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                        let mut seen = lock(&log);
                        if value["type"] == "welcome" {
                            seen.sessions.push(value["payload"]["node"].as_str().unwrap_or("?").to_owned());
                        } else if text.contains("\"pong\"") {
                            seen.pongs += 1;
                            seen.longest_silence = seen.longest_silence.max(last_pong.elapsed());
                            last_pong = Instant::now();
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let close = frame.map_or((0, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                        lock(&log).closes.push(close);
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Dashboard and console clients through nginx, and the tasks that feed events and
/// announcements, all stopped together.
struct Load {
    /// Stops the clients.
    stop: CancellationToken,
    /// Stops the producer and the announcer, before the clients.
    stop_sending: CancellationToken,
    streams: Vec<Arc<Mutex<StreamLog>>>,
    consoles: Vec<Arc<Mutex<ConsoleLog>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    producer: tokio::task::JoinHandle<SentTally>,
    announcer: Option<tokio::task::JoinHandle<Vec<i64>>>,
}

impl Load {
    fn start(stack: &Stack, rate: u64, seed: u64, with_announcements: bool) -> Load {
        let stop_sending = CancellationToken::new();
        let announcer = with_announcements.then(|| {
            tokio::spawn(announce(
                stack.http.clone(),
                stack.nginx.url("/api/announcements"),
                stack.token.clone(),
                stop_sending.clone(),
            ))
        });
        Load {
            producer: tokio::spawn(produce(
                stack.names.clone(),
                rate,
                seed,
                stop_sending.clone(),
            )),
            announcer,
            stop: CancellationToken::new(),
            stop_sending,
            streams: Vec::new(),
            consoles: Vec::new(),
            clients: Vec::new(),
        }
    }

    fn add_stream(&mut self, stack: &Stack) {
        let log = Arc::new(Mutex::new(StreamLog::default()));
        self.clients.push(tokio::spawn(watch_stream(
            stack.nginx.url("/api/dashboard/stream"),
            stack.token.clone(),
            self.stop.clone(),
            log.clone(),
        )));
        self.streams.push(log);
    }

    fn add_console(&mut self, stack: &Stack) {
        let log = Arc::new(Mutex::new(ConsoleLog::default()));
        let url = format!("ws://127.0.0.1:{}/ws/console", stack.nginx.port);
        self.clients.push(tokio::spawn(watch_console(
            url,
            stack.nginx.origin(),
            stack.token.clone(),
            self.stop.clone(),
            log.clone(),
        )));
        self.consoles.push(log);
    }

    /// Adds clients through nginx until instance `i` serves at least one stream and one
    /// console session (nginx spreads connections round robin), so that what happens to `i`
    /// happens to clients.
    async fn reach(&mut self, stack: &Stack, i: usize) {
        // One client at a time, at uneven moments: added in step with the announcer's
        // requests, every new client could meet the same turn of the round robin.
        // A failed read of the counts is remembered, not taken for 0: adding clients on it
        // would say nothing about where nginx sends them.
        let mut unread = Vec::new();
        for attempt in 0..30 {
            let jitter = rand::random::<u64>() % 200;
            tokio::time::sleep(Duration::from_millis(200 + jitter)).await;
            let (streams, consoles) = match (
                stack.connections(i, "sse").await,
                stack.connections(i, "ws").await,
            ) {
                (Ok(streams), Ok(consoles)) => (streams, consoles),
                (Err(error), _) | (_, Err(error)) => {
                    unread.push(error);
                    continue;
                }
            };
            if streams > 0 && consoles > 0 {
                return;
            }
            if consoles == 0 && (streams > 0 || attempt % 2 == 1) {
                self.add_console(stack);
            } else {
                self.add_stream(stack);
            }
        }
        let log = std::fs::read_to_string(stack.nginx._folder.path().join("error.log"))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let counts = |j: usize| async move {
            (
                stack.connections(j, "sse").await,
                stack.connections(j, "ws").await,
            )
        };
        panic!(
            "no stream or console session reached web-{} ({:?}) with {} streams and {} consoles \
             started; the other instance has {:?}; failed reads {unread:?}; nginx: {tail:#?}",
            i + 1,
            counts(i).await,
            self.streams.len(),
            self.consoles.len(),
            counts(1 - i).await,
        );
    }

    /// Stops producing and announcing; returns what was sent and announced.
    async fn stop_sending(&mut self) -> (SentTally, Vec<i64>) {
        self.stop_sending.cancel();
        let tally = (&mut self.producer).await.expect("producer");
        let announced = match self.announcer.take() {
            Some(task) => task.await.expect("announcer"),
            None => Vec::new(),
        };
        (tally, announced)
    }
}

/// Polls `/readyz` of instance `i` every 50 ms until `stop`; returns every answer that was not 200.
fn watch_ready(
    stack: &Stack,
    i: usize,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<String>> {
    let http = stack.http.clone();
    let url = stack.direct_url(i, "/readyz");
    tokio::spawn(async move {
        let mut failures = Vec::new();
        while !stop.is_cancelled() {
            match http.get(&url).send().await {
                Ok(answer) if answer.status() == 200 => {}
                Ok(answer) => failures.push(format!(
                    "{}: {}",
                    answer.status(),
                    answer.text().await.unwrap_or_default()
                )),
                Err(error) => failures.push(error.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        failures
    })
}

use crate::private_services::free_port;
use crate::traffic::net_revenue as net;

/// Every order and refund applied exactly once: the database's id records per type equal what
/// was sent. User events have no record to count: a repeat of one changes no figure (SPEC
/// §3.2), and what they add up to is checked through the figures.
async fn assert_applied_exactly(stack: &Stack, tally: &SentTally) {
    let applied = stack.applied_by_kind().await;
    for kind in ["order.placed", "order.refunded"] {
        let sent = tally.by_type.get(kind).copied().unwrap_or(0) as i64;
        let stored = applied
            .iter()
            .filter(|(k, _)| k.as_str() == kind)
            .map(|(_, n)| *n)
            .sum::<i64>();
        assert_eq!(
            stored, sent,
            "{kind}: applied {applied:?}, sent {:?}",
            tally.by_type
        );
    }
}

async fn stop_clients(load: Load) -> (Vec<StreamLog>, Vec<ConsoleLog>) {
    load.stop.cancel();
    for client in load.clients {
        let _ = client.await;
    }
    (take_logs(load.streams), take_logs(load.consoles))
}

fn take_logs<T: Default>(logs: Vec<Arc<Mutex<T>>>) -> Vec<T> {
    logs.into_iter()
        .map(|log| std::mem::take(&mut *lock(&log)))
        .collect()
}

#[tokio::test]
async fn clients_through_nginx_stay_served_while_an_instance_is_terminated_and_killed() {
    let mut stack = Stack::start().await;
    let ready_stop = CancellationToken::new();
    // web-2 stays up throughout: its readiness must never waver.
    let web2_ready = watch_ready(&stack, 1, ready_stop.clone());
    let mut load = Load::start(&stack, 200, 31, true);
    load.add_stream(&stack);
    load.add_console(&stack);
    load.reach(&stack, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SIGTERM: out of rotation at once, still serving for the drain, then clients move over.
    let took = stack.terminate(0).await;
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let going_away = load.consoles.iter().any(|log| {
        lock(log)
            .closes
            .iter()
            .any(|c| *c == (1001, "going away".into()))
    });
    assert!(going_away, "no console client got 1001 going away");

    stack.restart(0).await;
    load.reach(&stack, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SIGKILL: no goodbye; clients find out from their broken connections.
    stack.kill(0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.restart(0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (tally, announced) = load.stop_sending().await;
    let final_snapshot = stack
        .wait_for_revenue(net(&tally), Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ready_stop.cancel();
    let (streams, consoles) = stop_clients(load).await;

    assert_applied_exactly(&stack, &tally).await;
    assert!(announced.len() > 10, "announcements posted: {announced:?}");
    for (n, stream) in streams.iter().enumerate() {
        assert!(
            stream.announcements.windows(2).all(|w| w[0] < w[1]),
            "stream {n}: repeated or out of order: {:?}",
            stream.announcements
        );
        let baseline = stream.baseline.expect("a first snapshot");
        let missed: Vec<_> = announced
            .iter()
            .filter(|id| **id > baseline && !stream.announcements.contains(id))
            .collect();
        assert!(
            missed.is_empty(),
            "stream {n} missed {missed:?}: {stream:?}"
        );
        assert_eq!(
            stream.last_revenue,
            Some(net(&tally)),
            "stream {n}: {stream:?}"
        );
        assert!(
            stream.longest_silence < MAX_SILENCE,
            "stream {n}: {stream:?}"
        );
    }
    // One move for SIGTERM, one for SIGKILL, at least.
    assert!(
        streams.iter().map(|s| s.reconnects).sum::<u32>() >= 2,
        "streams were not moved: {streams:?}"
    );
    for (n, console) in consoles.iter().enumerate() {
        assert!(
            console.longest_silence < MAX_SILENCE,
            "console {n}: {console:?}"
        );
    }
    assert!(
        consoles.iter().any(|c| c.sessions.len() >= 2),
        "no console session moved: {consoles:?}"
    );
    assert_applied_exactly(&stack, &tally).await;
    let failures = web2_ready.await.expect("readiness watch");
    assert!(failures.is_empty(), "web-2 /readyz wavered: {failures:?}");
    assert!(
        final_snapshot["ingest"]["leader"].is_string(),
        "{final_snapshot}"
    );
}

#[tokio::test]
async fn a_rolling_restart_under_a_thousand_events_a_second_loses_and_repeats_nothing() {
    let mut stack = Stack::start().await;
    let mut load = Load::start(&stack, 1_000, 47, false);
    for _ in 0..4 {
        load.add_stream(&stack);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    for (i, other) in [(0, 1), (1, 0)] {
        let ready_stop = CancellationToken::new();
        let other_ready = watch_ready(&stack, other, ready_stop.clone());
        let took = stack.terminate(i).await;
        assert!(
            took < Duration::from_secs(10),
            "web-{} took {took:?}",
            i + 1
        );
        stack.restart(i).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        ready_stop.cancel();
        let failures = other_ready.await.expect("readiness watch");
        assert!(
            failures.is_empty(),
            "web-{} /readyz wavered while web-{} restarted: {failures:?}",
            other + 1,
            i + 1
        );
    }

    let (tally, _) = load.stop_sending().await;
    assert!(tally.sent > 8_000, "sent only {}", tally.sent);
    stack
        .wait_for_revenue(net(&tally), Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (streams, _) = stop_clients(load).await;
    for (n, stream) in streams.iter().enumerate() {
        assert_eq!(
            stream.last_revenue,
            Some(net(&tally)),
            "stream {n}: {stream:?}"
        );
        assert!(
            stream.longest_silence < MAX_SILENCE,
            "stream {n}: {stream:?}"
        );
    }
    assert_applied_exactly(&stack, &tally).await;
    for i in 0..2 {
        assert_eq!(stack.web(i).events_counted("duplicate").await, 0);
    }
}

/// A connection made while an instance starts is refused at once, not queued in a listen
/// backlog that nobody reads until the start is over: nginx (`proxy_next_upstream error`)
/// then sends it to the other instance, where a queued one would have waited out the start.
#[tokio::test]
async fn a_starting_instance_refuses_connections_until_it_can_answer() {
    // A database that takes connections and never answers: the start waits on it.
    let silent_database = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the silent database");
    let database_address = silent_database.local_addr().expect("its address");
    let port = crate::private_services::free_port();
    let mut service = Command::new(env!("CARGO_BIN_EXE_pulseboard"))
        .arg("serve")
        .env("PULSEBOARD_BIND", format!("127.0.0.1:{port}"))
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@{database_address}/postgres"),
        )
        .env("AMQP_URL", AMQP_URL)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pulseboard");
    // The port is bound before the database is asked: once it is asked, the start is under
    // way, port bound, not yet listening.
    let (_held, _) = tokio::time::timeout(Duration::from_secs(20), silent_database.accept())
        .await
        .expect("the service asks its database within 20 s")
        .expect("accept its connection");
    let attempt = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert_eq!(
        attempt.as_ref().err().map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionRefused),
        "a connection during the start: {attempt:?}"
    );
    assert!(
        service.try_wait().expect("its status").is_none(),
        "still starting, waiting for its database"
    );
}
