//! Live delivery benchmark: `cargo bench --bench live` (see docs/benchmarks.md).
//!
//! For each client count N (`BENCH_CLIENTS`, default `1000,10000`), with a fresh service each:
//! 1. declares a fresh topology (`bench-live-<uuid8>-<N>`, exchange `<prefix>.ev`) and starts the
//!    release `pulseboard serve` on a temporary SQLite database, snapshot interval 250 ms;
//! 2. reads the service's resident memory, opens N raw HTTP/1.1 SSE clients on loopback (500
//!    every 100 ms, bound to source addresses 127.0.0.2..127.0.0.9 in turn), waits until every
//!    one has its opening snapshot, lets them sit idle for 2 s and reads the memory again:
//!    the difference over N is the resident memory per idle connection;
//! 3. publishes `order.placed` events of 1 minor unit each at 5 000/s for 20 s, with pipelined
//!    publisher confirms, from a thread of its own. Revenue today is then exactly the number of
//!    orders applied, so a client that reads `"today_minor": R` knows its snapshot includes
//!    orders 1..=R, and the publish instant of every order is kept in an array indexed by its
//!    number;
//! 4. every client parses each snapshot it receives (`id:` for the seq, `today_minor` for R) and
//!    appends (seq, R, receipt time) to its own list; nothing else, so that the clients take as
//!    little CPU as they can from the service they measure. After the load the lists give the
//!    latencies, at 1 ms resolution: to the **oldest** order new in a snapshot for that client
//!    (the one that waited longest: the service's own `delivery_latency` definition), to the
//!    **newest** one (the R-th), and to **every** order it brings whose number is a multiple of
//!    50 (the distribution over orders), from the publish instant; and every order again from
//!    its **arrival at the service**, the issue's definition: the service logs each committed
//!    batch with its events' first and last arrival (at debug; the line is defined and read
//!    back by `src/ingest/batch_log.rs`), and since every event is one order and batches
//!    commit one at a time in delivery order, the batches number the orders. Only orders published in the last 15 s of the load count
//!    (the first 5 s are warm-up); snapshots received in that window are counted too;
//! 5. samples CPU (service, baseline process, this process split into client threads and the
//!    rest, RabbitMQ, the whole machine) over the same window (and divides the snapshots the
//!    clients received by it: deliveries per CPU-second), reads the service's slow-client
//!    counters and its own latency histogram, checks every client saw the final total, stops
//!    the service with SIGTERM (clients still connected) and deletes everything it created;
//! 6. the baseline (unless `BENCH_BARE=0`): the same case again with a fresh service, but the
//!    clients connect to [`BareFanout`], a process of its own (this binary again), which reads
//!    the service's stream over one connection and writes each snapshot to every client with
//!    one blocking `write`, from one thread per core: the floor of a fan-out on this machine,
//!    under the same ingest load, measured by the same clients.
//!
//! Environment: `BENCH_CLIENTS` (`1000,10000`), `BENCH_BARE` (1; 0 skips the baseline),
//! `BENCH_RATE` (5000), `BENCH_LOAD_SECS` (20),
//! `BENCH_UNCONFIRMED` (20000: publishes awaiting their confirm at once),
//! `AMQP_URL`, `BENCH_QUIET_SECS` (300: how long to wait for an idle machine before each case),
//! `BENCH_ATTEMPTS` (5: runs of a case whose window was disturbed), `BENCH_SERVICE_LOG` (the
//! service's `RUST_LOG`, `warn,pulseboard=info`). The process needs `ulimit -n` above N + 1 000
//! (the service and the baseline inherit it).

use anyhow::{bail, ensure, Context};
use lapin::options::ConfirmSelectOptions;
use pulseboard::for_benchmarks::{CommittedBatch, BATCH_LOG_TARGET};
use pulseboard::rabbitmq::{connect, publish_event, Topology};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "live/bare.rs"]
mod bare;
// The kit is shared with the tests and the other benchmarks; this one uses most of it.
#[allow(dead_code)]
#[path = "../tests/kit/mod.rs"]
mod kit;
use bare::BareFanout;
use kit::broker::{amqp_url_from_env, short_id, Confirms};
use kit::cpu::{
    command_output, cpu_model, machine_cores, memory, open_file_limit, resident_kib, usable_cores,
    wait_for_quiet, CpuTicks, ProcessTable,
};
use kit::database::{Backend, PostgresServer, TestDatabase};
use kit::metrics::{metric_sum, metric_value};
use kit::service::{Echo, Service, ServiceConfig, STARTUP_LIMIT};

const DEFAULT_CLIENTS: &str = "1000,10000";
const DEFAULT_RATE: u64 = 5_000;
const DEFAULT_LOAD_SECS: u64 = 20;
const CURRENCY: &str = "USD";
const DEFAULT_QUIET_SECS: u64 = 300;
const DEFAULT_ATTEMPTS: u64 = 5;
/// Consecutive seconds the machine must be back near its idle floor before a case starts.
const QUIET_SECONDS: u32 = 3;
/// The service's default coalescing tick (docs/api.md, Configuration), stated explicitly.
const SNAPSHOT_INTERVAL_MS: u64 = 250;
/// Target: p99 within one snapshot interval plus this.
const LATENCY_SLACK_MS: u64 = 50;
/// Target: resident memory per idle connection.
const MAX_KIB_PER_IDLE_CONNECTION: f64 = 20.0;
/// Latency samples of orders published in the first seconds of the load are left out.
const WARM_UP: Duration = Duration::from_secs(5);
/// SIGTERM to exit, at most.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// After the last publish: time for the last snapshot to reach every client.
const DRAIN: Duration = Duration::from_secs(3);
const IDLE_SETTLE: Duration = Duration::from_secs(2);
const CONNECT_BATCH: usize = 500;
const CONNECT_EVERY: Duration = Duration::from_millis(100);
const CONNECT_LIMIT: Duration = Duration::from_secs(120);
const CONNECT_ATTEMPTS: u32 = 5;
/// Client source addresses 127.0.0.FIRST..=127.0.0.LAST, one per client in turn.
const FIRST_SOURCE: u8 = 2;
const LAST_SOURCE: u8 = 9;
/// Room reserved for each client's receipts (about 4 a second for the run; it grows if needed).
const RECEIPTS_PER_CLIENT: usize = 160;
/// Orders whose number is a multiple of this are followed to every client ("every order").
const ORDER_SAMPLE: u64 = 50;
/// Latency histogram: 1 ms buckets up to 10 s; the last bucket holds everything above.
const BUCKETS: usize = 10_001;
/// Snapshot seqs tracked for generation and fan-out times (a fresh database starts at 1).
const SEQS: usize = 65_536;
/// CPU of processes other than the service, this benchmark and RabbitMQ above this (% of one
/// core) during the window marks the figures as disturbed.
const DISTURBED_OTHER: f64 = 10.0;
/// Publishes awaiting their confirm at once (`BENCH_UNCONFIRMED`), as in `pulseboard simulate`.
/// An order is timed just before its publish, so a large window lets a broker that falls behind
/// hold the backlog in the publisher's connection, counted in the latency; a small one makes the
/// publisher fall behind its schedule instead (reported as "publisher max behind").
const DEFAULT_UNCONFIRMED: u64 = 20_000;
/// Names of this process's threads, to tell the clients' CPU from the publisher's.
const CLIENT_THREADS: &str = "bench-clients";
const PUBLISHER_THREAD: &str = "bench-publisher";

struct Settings {
    clients: Vec<usize>,
    /// After each case, the same with the baseline fan-out in the service's place.
    baseline: bool,
    rate: u64,
    unconfirmed: usize,
    load: Duration,
    amqp_url: String,
    quiet_limit: Duration,
    /// Runs of one case when other processes disturb its window.
    attempts: u32,
}

fn main() {
    bare::serve_if_asked();
    let settings = settings();
    check_fd_limit(&settings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(CLIENT_THREADS)
        .build()
        .expect("a Tokio runtime for the benchmark");
    print_machine();
    let mut rows = Vec::new();
    let servers: &[Server] = if settings.baseline {
        &[Server::Pulseboard, Server::Bare]
    } else {
        &[Server::Pulseboard]
    };
    let cases = settings
        .clients
        .iter()
        .flat_map(|&n| servers.iter().map(move |&server| (n, server)));
    for (n, server) in cases {
        let mut attempt = 1;
        let outcome = loop {
            eprintln!("== {n} clients, {} (attempt {attempt}) ==", server.label());
            match runtime.block_on(run_case(&settings, n, server)) {
                Ok(mut row) if row.disturbed() && attempt < settings.attempts => {
                    eprintln!("other processes were busy ({}); again", row.others);
                    row.attempts = attempt;
                }
                Ok(mut row) => {
                    row.attempts = attempt;
                    break Ok(row);
                }
                Err(error) => break Err(error),
            }
            attempt += 1;
        };
        match outcome {
            Ok(row) => rows.push(row),
            Err(error) => {
                eprintln!(
                    "benchmark failed with {n} clients, {}: {error:#}",
                    server.label()
                );
                print_tables(&settings, &rows);
                std::process::exit(1);
            }
        }
    }
    print_tables(&settings, &rows);
    // Client tasks of the last case may still hold sockets; do not wait for them.
    runtime.shutdown_background();
}

fn settings() -> Settings {
    let number = |name: &str, default: u64| -> u64 {
        match std::env::var(name) {
            Ok(text) => text
                .replace('_', "")
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| panic!("{name} must be a positive whole number")),
            Err(_) => default,
        }
    };
    let clients = std::env::var("BENCH_CLIENTS")
        .unwrap_or_else(|_| DEFAULT_CLIENTS.into())
        .split(',')
        .map(|n| {
            n.replace('_', "")
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .expect("BENCH_CLIENTS must be a comma list of positive client counts")
        })
        .collect();
    let load = Duration::from_secs(number("BENCH_LOAD_SECS", DEFAULT_LOAD_SECS));
    assert!(
        load > WARM_UP + Duration::from_secs(1),
        "BENCH_LOAD_SECS must exceed the {WARM_UP:?} warm-up"
    );
    Settings {
        clients,
        baseline: std::env::var("BENCH_BARE").map_or(true, |v| v.trim() != "0"),
        rate: number("BENCH_RATE", DEFAULT_RATE),
        unconfirmed: number("BENCH_UNCONFIRMED", DEFAULT_UNCONFIRMED).max(1) as usize,
        load,
        amqp_url: amqp_url_from_env(),
        quiet_limit: Duration::from_secs(number("BENCH_QUIET_SECS", DEFAULT_QUIET_SECS)),
        attempts: number("BENCH_ATTEMPTS", DEFAULT_ATTEMPTS) as u32,
    }
}

/// Every client costs a descriptor here and another in the service (which inherits this
/// process's limit). Without libc the limit cannot be raised from inside, so say what to run.
fn check_fd_limit(settings: &Settings) {
    let needed = settings.clients.iter().max().copied().unwrap_or(0) as u64 + 1_000;
    if let Some(soft) = open_file_limit() {
        if soft < needed {
            eprintln!(
                "the open-file limit is {soft}; {needed} are needed: run `ulimit -n {needed}` first"
            );
            std::process::exit(2);
        }
    }
}

/// Who writes the snapshots to the clients.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    /// The service's own SSE stream.
    Pulseboard,
    /// The baseline: the service's snapshots relayed by [`BareFanout`], one `write` per client.
    Bare,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Pulseboard => "pulseboard",
            Server::Bare => "bare fan-out",
        }
    }
}

/// Everything measured for one client count and server.
struct Row {
    clients: usize,
    server: Server,
    opened: u64,
    connect_seconds: f64,
    connect_retries: u64,
    rss_before_kib: u64,
    rss_idle_kib: u64,
    rss_loaded_kib: u64,
    bench_rss_per_client_kib: f64,
    published: Published,
    window_seconds: f64,
    oldest: Summary,
    newest: Summary,
    every: Summary,
    /// Every order (sampled), from its arrival at the service to its first snapshot at a client.
    every_from_arrival: Summary,
    /// Orders in the window whose arrival the service's log did not give (should stay 0).
    arrival_unknown: u64,
    /// Mean publish → arrival at the service, ms, from the log's arrivals.
    transit_from_log_mean: f64,
    /// Snapshot `generated_at` → client receipt, per snapshot per client.
    fanout: Summary,
    snapshots: SnapshotTimes,
    snapshots_per_second: f64,
    client_skipped: u64,
    unmapped: u64,
    server_latency: String,
    /// Means over the window from the service's histograms, ms: broker transit
    /// (`event_age`: arrival − occurred_at) and arrival → write (`delivery_latency`, sse).
    event_age_mean: f64,
    server_delivery_mean: f64,
    /// Over the window: the service and the baseline watched, the client threads named.
    cpu: CpuTicks,
    coalesced: u64,
    slow_disconnects: u64,
    lost: u64,
    caught_up: u64,
    stop_seconds: f64,
    quiet: bool,
    /// The busiest other processes during the window.
    others: String,
    /// Which run of this case this is (earlier ones were disturbed).
    attempts: u32,
}

impl Row {
    /// Other processes used the machine during the window: the figures are not this setup's.
    fn disturbed(&self) -> bool {
        let cpu = &self.cpu;
        !self.quiet
            || cpu.percent(cpu.other()) > DISTURBED_OTHER
            || cpu.percent(cpu.machine.steal) > DISTURBED_OTHER
    }

    /// A figure about the service's clients, which in a baseline row is its one upstream
    /// stream: shown only for the service's own rows.
    fn of_service(&self, figure: String) -> String {
        match self.server {
            Server::Pulseboard => figure,
            Server::Bare => "–".to_owned(),
        }
    }

    /// The first column of every table.
    fn case(&self) -> String {
        match self.server {
            Server::Pulseboard => self.clients.to_string(),
            Server::Bare => format!("{}, {}", self.clients, self.server.label()),
        }
    }

    fn kib_per_idle_connection(&self) -> f64 {
        (self.rss_idle_kib as f64 - self.rss_before_kib as f64) / self.opened.max(1) as f64
    }
}

/// Names of everything one case creates on the broker, deleted when it ends.
struct Names {
    kit: kit::broker::Names,
    topology: Topology,
}

impl Names {
    fn new(amqp_url: &str, clients: usize) -> Names {
        let prefix = format!("bench-live-{}-{clients}", &short_id()[..8]);
        let kit = kit::broker::Names::on(amqp_url, &prefix, &[], &[]);
        Names {
            topology: kit.topology(),
            kit,
        }
    }
}

async fn run_case(settings: &Settings, n: usize, server: Server) -> anyhow::Result<Row> {
    let names = Names::new(&settings.amqp_url, n);
    let connection = connect(&settings.amqp_url, "pulseboard live bench")
        .await
        .context("RabbitMQ (AMQP_URL)")?;
    let channel = connection.create_channel().await?;
    // Declared before the service starts, so the exchange exists whoever comes first.
    names.topology.declare(&channel).await?;
    // A SQLite file: no server is asked.
    let database = TestDatabase::create(&PostgresServer::shared(), Backend::Sqlite, "live").await?;
    let result = measure(settings, n, server, &names, &database).await;
    let _ = connection.close(200, "bench done").await;
    result
}

async fn measure(
    settings: &Settings,
    n: usize,
    server: Server,
    names: &Names,
    database: &TestDatabase,
) -> anyhow::Result<Row> {
    let quiet = wait_for_quiet(settings.quiet_limit, QUIET_SECONDS).await;
    let mut config =
        ServiceConfig::for_benchmark(database, &names.kit, &settings.amqp_url, CURRENCY);
    for (name, value) in &mut config.env {
        if name == "RUST_LOG" {
            // Each committed batch's arrival range, for latency from arrival (`batch_log`).
            value.push_str(&format!(",{}=debug", BATCH_LOG_TARGET));
        }
    }
    config.env.push((
        "PULSEBOARD_SNAPSHOT_INTERVAL_MS".into(),
        SNAPSHOT_INTERVAL_MS.to_string(),
    ));
    // Signed in before the clients connect: the stream wants the token.
    config.sign_in = true;
    // The batch lines are read from the log after the load, not shown.
    config.echo = Echo::Warnings;
    let mut service = Service::try_start(&config).await?;
    eprintln!("service pid {}", service.pid());
    let outcome = drive(settings, n, server, names, &mut service, quiet).await;
    let stop = service.stop(STOP_LIMIT).await;
    let mut row = outcome?;
    row.stop_seconds = stop?;
    Ok(row)
}

/// Connects the clients, then runs the idle and the load phase against a running service (or
/// the baseline fan-out of its stream).
async fn drive(
    settings: &Settings,
    n: usize,
    server: Server,
    names: &Names,
    service: &mut Service,
    quiet: bool,
) -> anyhow::Result<Row> {
    wait_for_snapshot(service).await?;
    let path = stream_path(service);
    let request_to = |address: SocketAddr| -> Arc<[u8]> {
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n")
            .into_bytes()
            .into()
    };
    let service_address: SocketAddr = service.address().parse().context("the service's address")?;
    let bare = match server {
        Server::Pulseboard => None,
        Server::Bare => Some(
            BareFanout::start(
                service_address,
                &request_to(service_address),
                usable_cores(),
            )
            .context("starting the baseline fan-out")?,
        ),
    };
    let target = bare.as_ref().map_or(service_address, BareFanout::address);
    let request = request_to(target);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = resident_kib(service.pid());
    let bench_rss_before = resident_kib(std::process::id());

    // Room for every order the load can publish, numbered from 1.
    let capacity = (settings.rate * (settings.load.as_secs() + 2)) as usize + 1;
    let shared = Arc::new(Shared::new(n, capacity));

    // Idle: connect, wait for every opening snapshot, settle, measure.
    let connect_started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for id in 0..n {
        if id > 0 && id % CONNECT_BATCH == 0 {
            tokio::time::sleep(CONNECT_EVERY).await;
        }
        clients.push(tokio::spawn(client(
            id,
            target,
            request.clone(),
            shared.clone(),
        )));
    }
    let mut stalled = Instant::now();
    let mut last_opened = 0;
    loop {
        let opened = shared.opened.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        if opened + failed >= n as u64 {
            break;
        }
        if opened != last_opened {
            (last_opened, stalled) = (opened, Instant::now());
        }
        if stalled.elapsed() > Duration::from_secs(15) || connect_started.elapsed() > CONNECT_LIMIT
        {
            eprintln!("WARNING: only {opened} of {n} clients got their opening snapshot");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let opened = shared.opened.load(Ordering::Relaxed);
    if let Some(error) = shared.first_error() {
        eprintln!("first client error: {error}");
    }
    ensure!(opened > 0, "no client got its opening snapshot");
    eprintln!("{opened} clients connected in {connect_seconds:.1} s");
    tokio::time::sleep(IDLE_SETTLE).await;
    let rss_idle_kib = resident_kib(service.pid());
    let bench_rss_per_client_kib =
        (resident_kib(std::process::id()) as f64 - bench_rss_before as f64) / opened as f64;
    eprintln!(
        "service RSS {rss_before_kib} KiB before, {rss_idle_kib} KiB with {opened} idle clients"
    );

    // Load: publish, measure over the window after the warm-up.
    let publisher = start_publisher(settings, &names.topology.exchange, shared.clone());
    while !shared.load_started.load(Ordering::Acquire) {
        if publisher.is_finished() {
            let outcome = tokio::task::spawn_blocking(move || publisher.join()).await?;
            let error = match outcome {
                Ok(Err(error)) => error,
                _ => anyhow::anyhow!("the publisher ended before publishing"),
            };
            return Err(error.context("the publisher could not start"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let load_start = shared.load_start_us.load(Ordering::Acquire);
    tokio::time::sleep_until(
        shared
            .instant_at(load_start + WARM_UP.as_micros() as u64)
            .into(),
    )
    .await;
    let metrics_before = service.metrics().await?;
    let watched = [Some(service.pid()), bare.as_ref().map(BareFanout::pid)];
    let cpu_before = CpuTicks::take(watched, Some(CLIENT_THREADS));
    let processes_before = ProcessTable::take();
    shared
        .window_start_us
        .store(shared.now_us(), Ordering::Release);
    tokio::time::sleep_until(
        shared
            .instant_at(load_start + settings.load.as_micros() as u64)
            .into(),
    )
    .await;
    let window_end = shared.now_us();
    shared.window_end_us.store(window_end, Ordering::Release);
    let cpu = CpuTicks::take(watched, Some(CLIENT_THREADS)).since(&cpu_before);
    let metrics_after = service.metrics().await?;
    let published = tokio::task::spawn_blocking(move || publisher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the publisher thread panicked"))??;
    tokio::time::sleep(DRAIN).await;
    let metrics_end = service.metrics().await?;
    let batches: Vec<CommittedBatch> = (service.log_text().lines())
        .filter_map(CommittedBatch::from_log_line)
        .collect();
    let (arrived_at, logged) = shared.arrivals_from_log(&batches);
    // Otherwise the batches would not number the orders (a batch logged twice, or lost).
    ensure!(
        logged == published.confirmed,
        "the service logged {logged} committed events, {} orders were confirmed: \
         the latency from arrival cannot be computed",
        published.confirmed
    );
    let analysis = shared.analyse(&arrived_at);
    let transit_from_log_mean = shared.transit_from_log(&arrived_at);
    let rss_loaded_kib = resident_kib(service.pid());

    let window_seconds = (window_end - shared.window_start_us.load(Ordering::Acquire)) as f64 / 1e6;
    let caught_up = shared
        .last_seen
        .iter()
        .filter(|r| r.load(Ordering::Relaxed) == published.confirmed)
        .count() as u64;
    let row = Row {
        clients: n,
        server,
        opened,
        connect_seconds,
        connect_retries: shared.retries.load(Ordering::Relaxed),
        rss_before_kib,
        rss_idle_kib,
        rss_loaded_kib,
        bench_rss_per_client_kib,
        window_seconds,
        oldest: analysis.oldest.summary(),
        every: analysis.every.summary(),
        every_from_arrival: analysis.every_from_arrival.summary(),
        arrival_unknown: analysis.arrival_unknown,
        transit_from_log_mean,
        newest: analysis.newest.summary(),
        fanout: analysis.fanout.summary(),
        snapshots: analysis.snapshots,
        snapshots_per_second: analysis.window_snapshots as f64 / window_seconds,
        client_skipped: analysis.window_skipped,
        unmapped: analysis.unmapped,
        server_latency: server_latency(&metrics_before, &metrics_after),
        event_age_mean: metric_mean(
            &metrics_before,
            &metrics_after,
            "pulseboard_event_age_seconds",
            "",
        ),
        server_delivery_mean: metric_mean(
            &metrics_before,
            &metrics_after,
            "pulseboard_delivery_latency_seconds",
            "transport=\"sse\"",
        ),
        cpu,
        coalesced: metric_sum(&metrics_end, "pulseboard_slow_client_coalesced_total", ""),
        slow_disconnects: metric_sum(&metrics_end, "pulseboard_slow_client_disconnects_total", ""),
        lost: shared.lost.load(Ordering::Relaxed),
        caught_up,
        stop_seconds: 0.0,
        quiet,
        others: ProcessTable::take().busiest_since(
            &processes_before,
            &watched.iter().flatten().copied().collect::<Vec<_>>(),
        ),
        attempts: 1,
        published,
    };
    // The service is stopped with the clients still connected; their closes are expected.
    shared.stopping.store(true, Ordering::Release);
    for handle in &clients {
        handle.abort();
    }
    eprintln!(
        "latency (p50 / p99 / max) every order from arrival {}, from publish {}, oldest {}, \
         newest {}; {:.0} snapshots/s",
        row.every_from_arrival.spread(),
        row.every.spread(),
        row.oldest.spread(),
        row.newest.spread(),
        row.snapshots_per_second
    );
    Ok(row)
}

/// State shared by the publisher, the clients and the driver of one case. Times are
/// microseconds since `base`.
struct Shared {
    base: Instant,
    /// Publish instant of order k (1-based), 0 while not published.
    published_at: Vec<AtomicU64>,
    load_started: AtomicBool,
    load_start_us: AtomicU64,
    /// Measurement window: snapshots received and orders published in it count.
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    /// Wall clock at `base`, µs since the Unix epoch, to place `generated_at` on our clock.
    base_wall_us: i64,
    /// Per snapshot seq: `generated_at` (0: not seen yet).
    generated_us: Vec<AtomicU64>,
    opened: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    lost: AtomicU64,
    stopping: AtomicBool,
    /// Revenue of the last snapshot each client received.
    last_seen: Vec<AtomicU64>,
    /// Per client, every snapshot it received, in order. Clients only append here (their own
    /// lock, never contended); every latency is computed from it after the load, so that the
    /// clients spend as little CPU as possible beside the service.
    receipts: Vec<Mutex<Vec<Receipt>>>,
    error: Mutex<Option<String>>,
}

impl Shared {
    fn new(clients: usize, capacity: usize) -> Shared {
        // `base` and `base_wall_us` are read back to back; the gap is well under 1 ms.
        Shared {
            base: Instant::now(),
            published_at: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            load_started: AtomicBool::new(false),
            load_start_us: AtomicU64::new(0),
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
            base_wall_us: chrono::Utc::now().timestamp_micros(),
            generated_us: (0..SEQS).map(|_| AtomicU64::new(0)).collect(),
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            last_seen: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            receipts: (0..clients)
                .map(|_| Mutex::new(Vec::with_capacity(RECEIPTS_PER_CLIENT)))
                .collect(),
            error: Mutex::new(None),
        }
    }

    fn now_us(&self) -> u64 {
        // Never 0, which means "not yet" in `published_at`.
        (self.base.elapsed().as_micros() as u64).max(1)
    }

    fn instant_at(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }

    fn in_window(&self, us: u64) -> bool {
        us >= self.window_start_us.load(Ordering::Acquire)
            && us < self.window_end_us.load(Ordering::Acquire)
    }

    /// Notes when snapshot `seq` was generated, parsing its `generated_at` once.
    fn note_generated(&self, seq: u64, event: &[u8]) {
        let Some(slot) = self.generated_us.get(seq as usize) else {
            return;
        };
        if slot.load(Ordering::Relaxed) == 0 {
            if let Some(parsed) = generated_at(event) {
                slot.store(
                    (parsed - self.base_wall_us).max(1) as u64,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Snapshots generated in the window: how often, and how long until every client had one.
    /// `receipts[seq]` is the first and last receipt of that seq over all clients.
    fn snapshot_times(&self, receipts: &[(u64, u64)]) -> SnapshotTimes {
        let generated: Vec<(u64, u64, u64)> = (0..SEQS)
            .filter_map(|seq| {
                let at = self.generated_us[seq].load(Ordering::Relaxed);
                let (first, last) = receipts.get(seq).copied()?;
                (at > 0 && self.in_window(at)).then_some((at, first, last))
            })
            .collect();
        if generated.len() < 2 {
            return SnapshotTimes::default();
        }
        let mut gaps: Vec<u64> = generated.windows(2).map(|w| w[1].0 - w[0].0).collect();
        let mut to_first: Vec<u64> = generated
            .iter()
            .map(|(at, first, _)| first.saturating_sub(*at))
            .collect();
        let mut to_last: Vec<u64> = generated
            .iter()
            .map(|(at, _, last)| last.saturating_sub(*at))
            .collect();
        let span = (generated[generated.len() - 1].0 - generated[0].0) as f64 / 1e6;
        gaps.sort_unstable();
        to_first.sort_unstable();
        to_last.sort_unstable();
        let ms = |us: u64| us as f64 / 1_000.0;
        let median = |v: &[u64]| ms(v[v.len() / 2]);
        SnapshotTimes {
            per_second: (generated.len() - 1) as f64 / span,
            gap_median: median(&gaps),
            gap_max: ms(gaps[gaps.len() - 1]),
            first_median: median(&to_first),
            last_median: median(&to_last),
            last_max: ms(to_last[to_last.len() - 1]),
        }
    }

    fn note_error(&self, error: String) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(error);
    }

    /// Arrival at the service of order k (1-based, on this clock; 0 if unknown), from its log of
    /// committed batches (`src/ingest/batch_log.rs`). Every event is an order of one minor
    /// unit and batches commit one at a time in delivery order, so the batches' event counts
    /// number the orders; within a batch, arrival times are spread evenly between its first and
    /// last arrival. Also returns how many events the lines count, which must be every order
    /// confirmed.
    fn arrivals_from_log(&self, batches: &[CommittedBatch]) -> (Vec<u64>, u64) {
        let mut arrived_at = vec![0; self.published_at.len()];
        let mut next = 1;
        for batch in batches {
            let (events, first, last) = (
                batch.events as i64,
                batch.first_arrival_ms,
                batch.last_arrival_ms,
            );
            for i in 0..events {
                let ms = first + (last - first) * i / (events - 1).max(1);
                if let Some(slot) = arrived_at.get_mut(next) {
                    *slot = (ms * 1_000 - self.base_wall_us).max(1) as u64;
                }
                next += 1;
            }
        }
        (arrived_at, next as u64 - 1)
    }

    /// Every latency of the run, from the clients' receipts and the orders' publish and
    /// arrival times (`arrived_at`, from `arrivals_from_log`).
    fn analyse(&self, arrived_at: &[u64]) -> Analysis {
        let mut analysis = Analysis::default();
        let mut seq_receipts = vec![(u64::MAX, 0); SEQS];
        for receipts in &self.receipts {
            let receipts = receipts.lock().unwrap_or_else(|p| p.into_inner());
            for receipt in receipts.iter() {
                if let Some((first, last)) = seq_receipts.get_mut(receipt.seq as usize) {
                    (*first, *last) = ((*first).min(receipt.at), (*last).max(receipt.at));
                }
                let generated = self.generated_us.get(receipt.seq as usize);
                let generated = generated.map_or(0, |g| g.load(Ordering::Relaxed));
                if generated > 0 && self.in_window(receipt.at) {
                    analysis.fanout.record(receipt.at.saturating_sub(generated));
                }
            }
            // The first receipt is the opening snapshot: latencies start with the second.
            for pair in receipts.windows(2) {
                let (previous, receipt) = (&pair[0], &pair[1]);
                if self.in_window(receipt.at) {
                    analysis.window_snapshots += 1;
                    analysis.window_skipped += receipt.seq.saturating_sub(previous.seq + 1);
                }
                self.record(&mut analysis, previous.revenue, receipt, arrived_at);
            }
        }
        analysis.snapshots = self.snapshot_times(&seq_receipts);
        analysis
    }

    /// The latencies of one snapshot that brought orders `previous + 1 ..= receipt.revenue`.
    fn record(
        &self,
        analysis: &mut Analysis,
        previous: u64,
        receipt: &Receipt,
        arrived_at: &[u64],
    ) {
        let (revenue, at) = (receipt.revenue, receipt.at);
        if revenue <= previous {
            return;
        }
        let published = |k: u64| {
            self.published_at
                .get(k as usize)
                .map(|t| t.load(Ordering::Acquire))
                .filter(|t| *t > 0)
        };
        let (Some(oldest), Some(newest)) = (published(previous + 1), published(revenue)) else {
            analysis.unmapped += 1;
            return;
        };
        if self.in_window(oldest) {
            analysis.oldest.record(at.saturating_sub(oldest));
        }
        if self.in_window(newest) {
            analysis.newest.record(at.saturating_sub(newest));
        }
        // Every order this snapshot brings, sampled (1 in ORDER_SAMPLE by number, the same for
        // every client): the latency distribution over orders rather than over snapshots.
        let first_sampled = (previous + 1).div_ceil(ORDER_SAMPLE) * ORDER_SAMPLE;
        for k in (first_sampled..=revenue).step_by(ORDER_SAMPLE as usize) {
            let Some(published) = published(k).filter(|t| self.in_window(*t)) else {
                continue;
            };
            analysis.every.record(at.saturating_sub(published));
            match arrived_at.get(k as usize).filter(|t| **t > 0) {
                Some(arrival) => analysis
                    .every_from_arrival
                    .record(at.saturating_sub(*arrival)),
                None => analysis.arrival_unknown += 1,
            }
        }
    }

    /// Mean of arrival − publish over the orders published in the window, ms: the broker
    /// transit as the log tells it, a check of the order numbering against the service's own
    /// `event_age` (arrivals are logged to the millisecond, and it read 1–2 ms short of
    /// `event_age` in practice).
    fn transit_from_log(&self, arrived_at: &[u64]) -> f64 {
        let (mut sum_us, mut count) = (0_i64, 0_i64);
        for (published, arrival) in self.published_at.iter().zip(arrived_at) {
            let published = published.load(Ordering::Acquire);
            if *arrival > 0 && published > 0 && self.in_window(published) {
                sum_us += *arrival as i64 - published as i64;
                count += 1;
            }
        }
        sum_us as f64 / count.max(1) as f64 / 1_000.0
    }

    fn first_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One snapshot as a client received it: which one, the orders it includes (1..=revenue), when.
#[derive(Clone, Copy)]
struct Receipt {
    seq: u64,
    revenue: u64,
    at: u64,
}

/// What the receipts say, computed once after the load.
#[derive(Default)]
struct Analysis {
    oldest: Histogram,
    newest: Histogram,
    /// Every order (sampled), from its publication to its first snapshot at each client.
    every: Histogram,
    /// The same orders, from their arrival at the service.
    every_from_arrival: Histogram,
    arrival_unknown: u64,
    /// Snapshot `generated_at` → client receipt.
    fanout: Histogram,
    snapshots: SnapshotTimes,
    window_snapshots: u64,
    /// Snapshot seqs a client never saw (coalesced for it, or lost), in the window.
    window_skipped: u64,
    /// Snapshots whose revenue did not name a published order (should stay 0).
    unmapped: u64,
}

/// How the service produced snapshots during the window, in ms.
#[derive(Clone, Copy, Default)]
struct SnapshotTimes {
    per_second: f64,
    /// Between consecutive `generated_at`s: the tick, stretched when the leader is late.
    gap_median: f64,
    gap_max: f64,
    /// `generated_at` → the first / the last client that received it.
    first_median: f64,
    last_median: f64,
    last_max: f64,
}

/// `"generated_at":"…"` of a snapshot, µs since the Unix epoch.
fn generated_at(event: &[u8]) -> Option<i64> {
    let key = b"\"generated_at\":\"";
    let start = find(event, key)? + key.len();
    let length = event[start..].iter().position(|b| *b == b'"')?;
    let text = std::str::from_utf8(&event[start..start + length]).ok()?;
    Some(
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()?
            .timestamp_micros(),
    )
}

/// Fixed 1 ms buckets: exact enough for p50/p99, filled after the load from the receipts.
struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

/// Percentiles in ms (upper edge of the 1 ms bucket); max exact to the microsecond.
#[derive(Clone, Copy, Default)]
struct Summary {
    count: u64,
    p50: u64,
    p99: u64,
    max: f64,
    mean: f64,
}

impl Summary {
    /// `p50 / p99 / max ms`, as the tables and the progress line print it.
    fn spread(&self) -> String {
        format!("{} / {} / {:.0} ms", self.p50, self.p99, self.max)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    fn record(&self, us: u64) {
        let bucket = ((us / 1_000) as usize).min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    fn percentile(&self, q: f64) -> u64 {
        let total = self.count.load(Ordering::Relaxed);
        let target = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= target {
                return ms as u64 + 1;
            }
        }
        BUCKETS as u64
    }

    fn summary(&self) -> Summary {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return Summary::default();
        }
        let max = self.max_us.load(Ordering::Relaxed) as f64 / 1_000.0;
        // The upper edge of the top bucket may lie above the largest sample.
        let clip = |ms: u64| ms.min(max.ceil() as u64);
        Summary {
            count,
            p50: clip(self.percentile(0.50)),
            p99: clip(self.percentile(0.99)),
            max,
            mean: self.sum_us.load(Ordering::Relaxed) as f64 / count as f64 / 1_000.0,
        }
    }
}

/// One SSE client: raw HTTP/1.1, minimal parsing, one reusable buffer.
async fn client(id: usize, server: SocketAddr, request: Arc<[u8]>, shared: Arc<Shared>) {
    let sources = usize::from(LAST_SOURCE - FIRST_SOURCE + 1);
    let source = IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        FIRST_SOURCE + (id % sources) as u8,
    ));
    let mut attempt = 0;
    let mut stream = loop {
        match open(source, server, &request).await {
            Ok(stream) => break stream,
            Err(error) if attempt + 1 >= CONNECT_ATTEMPTS => {
                shared.note_error(format!("client {id} from {source}: {error}"));
                shared.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                attempt += 1;
                shared.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    };
    let mut reader = StreamReader::default();
    let mut buffer = Vec::with_capacity(4_096);
    let ended = loop {
        if buffer.capacity() - buffer.len() < 1_024 {
            buffer.reserve(4_096);
        }
        match stream.read_buf(&mut buffer).await {
            Ok(0) => break "the service closed the stream".to_owned(),
            Ok(_) => {}
            Err(error) => break format!("read: {error}"),
        }
        let at = shared.now_us();
        match reader.consume(&mut buffer, at, &shared, id) {
            Ok(()) => {}
            Err(error) => break error,
        }
    };
    if !shared.stopping.load(Ordering::Acquire) {
        if reader.opened {
            shared.lost.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        shared.note_error(format!("client {id}: {ended}"));
    }
}

async fn open(
    source: IpAddr,
    server: SocketAddr,
    request: &[u8],
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(server).await?;
    stream.write_all(request).await?;
    Ok(stream)
}

/// What a client remembers between reads.
#[derive(Default)]
struct StreamReader {
    headers_done: bool,
    opened: bool,
}

impl StreamReader {
    /// Handles every complete SSE event in `buffer` and keeps the incomplete rest.
    fn consume(
        &mut self,
        buffer: &mut Vec<u8>,
        at: u64,
        shared: &Shared,
        id: usize,
    ) -> Result<(), String> {
        let mut start = 0;
        if !self.headers_done {
            let Some(end) = find(buffer, b"\r\n\r\n") else {
                return Ok(());
            };
            if !buffer.starts_with(b"HTTP/1.1 200") {
                let status = String::from_utf8_lossy(&buffer[..end.min(200)]).into_owned();
                return Err(format!("answer: {status}"));
            }
            self.headers_done = true;
            start = end + 4;
        }
        // Events end with a blank line; chunk-size lines between them do not contain one.
        while let Some(length) = find(&buffer[start..], b"\n\n") {
            let event = &buffer[start..start + length];
            start += length + 2;
            if find(event, b"event: snapshot").is_none() {
                continue;
            }
            let seq = find(event, b"id: ")
                .and_then(|at| {
                    let line = &event[at + 4..];
                    let dash = line.iter().position(|b| *b == b'-')?;
                    leading_number(&line[dash + 1..])
                })
                .ok_or("a snapshot without a readable id")?;
            let revenue = find(event, b"\"today_minor\":")
                .and_then(|at| leading_number(&event[at + 14..]))
                .ok_or("a snapshot without today_minor")?;
            shared.note_generated(seq, event);
            self.on_snapshot(seq, revenue, at, shared, id);
        }
        buffer.drain(..start);
        Ok(())
    }

    fn on_snapshot(&mut self, seq: u64, revenue: u64, at: u64, shared: &Shared, id: usize) {
        if !self.opened {
            self.opened = true;
            shared.opened.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(receipts) = shared.receipts.get(id) {
            receipts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Receipt { seq, revenue, at });
        }
        shared.last_seen[id].store(revenue, Ordering::Relaxed);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn leading_number(text: &[u8]) -> Option<u64> {
    let digits: &[u8] = {
        let text = text.trim_ascii_start();
        let end = text
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(text.len());
        &text[..end]
    };
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What the publisher did.
#[derive(Clone, Copy, Default)]
struct Published {
    sent: u64,
    confirmed: u64,
    seconds: f64,
    /// Furthest behind schedule it ever was (ms): starved of CPU if large.
    max_behind_ms: f64,
}

/// Publishes on a thread of its own, so 10 000 client tasks cannot delay its pacing.
fn start_publisher(
    settings: &Settings,
    exchange: &str,
    shared: Arc<Shared>,
) -> std::thread::JoinHandle<anyhow::Result<Published>> {
    let (url, exchange, rate, load, unconfirmed) = (
        settings.amqp_url.clone(),
        exchange.to_owned(),
        settings.rate,
        settings.load,
        settings.unconfirmed,
    );
    std::thread::Builder::new()
        .name(PUBLISHER_THREAD.into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("the publisher's runtime")?
                .block_on(publish(&url, &exchange, rate, load, unconfirmed, &shared))
        })
        .expect("a publisher thread")
}

async fn publish(
    url: &str,
    exchange: &str,
    rate: u64,
    load: Duration,
    max_unconfirmed: usize,
    shared: &Shared,
) -> anyhow::Result<Published> {
    let connection = connect(url, "pulseboard live bench publisher").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let capacity = shared.published_at.len() as u64 - 1;
    let mut confirms = Confirms::new(max_unconfirmed);
    let mut pacing = tokio::time::interval(Duration::from_millis(10));
    pacing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    shared
        .load_start_us
        .store(shared.now_us(), Ordering::Release);
    shared.load_started.store(true, Ordering::Release);
    let mut sent = 0u64;
    let mut max_behind_ms: f64 = 0.0;
    loop {
        pacing.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= load {
            break;
        }
        let due = ((elapsed.as_secs_f64() * rate as f64) as u64).min(capacity);
        max_behind_ms = max_behind_ms.max((due - sent.min(due)) as f64 * 1_000.0 / rate as f64);
        while sent < due {
            sent += 1;
            let body = order(run, sent);
            // Stored before the publish: once the order can reach the service, its time is here.
            shared.published_at[sent as usize].store(shared.now_us(), Ordering::Release);
            let confirm =
                publish_event(&channel, exchange, "order.placed", body.as_bytes()).await?;
            confirms.push(confirm).await?;
        }
        confirms.settle_ready()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    confirms.finish().await?;
    let _ = connection.close(200, "published").await;
    let refused = confirms.refused;
    ensure!(refused == 0, "RabbitMQ refused {refused} published orders");
    Ok(Published {
        sent,
        confirmed: confirms.confirmed,
        seconds,
        max_behind_ms,
    })
}

/// Order `k`: 1 minor unit, so revenue today counts orders.
fn order(run: &str, k: u64) -> String {
    let now = pulseboard::clock::rfc3339(pulseboard::clock::now_ms());
    format!(
        r#"{{"id":"live-{run}-{k}","type":"order.placed","occurred_at":"{now}","user_id":"u-{}","data":{{"order_id":"o-{run}-{k}","amount_minor":1,"currency":"{CURRENCY}"}}}}"#,
        k % 1_000
    )
}

/// Waits for the first snapshot (published at the leader's first tick).
async fn wait_for_snapshot(service: &mut Service) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_LIMIT;
    while Instant::now() < deadline {
        if service.try_snapshot().await?.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no snapshot within {STARTUP_LIMIT:?}")
}

/// The stream's path, with `?access_token=` when the service wants credentials.
fn stream_path(service: &Service) -> String {
    match service.token() {
        "" => "/api/dashboard/stream".to_owned(),
        token => format!("/api/dashboard/stream?access_token={token}"),
    }
}

/// Mean of histogram `name` (seconds) between two scrapes, in ms; NaN without samples.
fn metric_mean(before: &str, after: &str, name: &str, label: &str) -> f64 {
    let sum = format!("{name}_sum");
    let count = format!("{name}_count");
    let samples = metric_value(after, &count, label) - metric_value(before, &count, label);
    (metric_value(after, &sum, label) - metric_value(before, &sum, label)) * 1_000.0 / samples
}

/// The service's own view over the window: p50/p99 upper bucket bounds of
/// `pulseboard_delivery_latency_seconds{transport="sse"}` (arrival → write of the snapshot).
fn server_latency(before: &str, after: &str) -> String {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter(|l| {
                l.starts_with("pulseboard_delivery_latency_seconds_bucket{")
                    && l.contains("transport=\"sse\"")
            })
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    };
    let (before, after) = (buckets(before), buckets(after));
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let earlier = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, count - earlier)
        })
        .collect();
    let total = delta.iter().map(|(_, c)| *c).fold(0.0, f64::max);
    if total <= 0.0 {
        return "no samples".into();
    }
    let bound = |q: f64| {
        delta
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map_or("?".to_owned(), |(le, _)| {
                if le.is_infinite() {
                    "> 10 s".to_owned()
                } else {
                    format!("≤ {:.0} ms", le * 1_000.0)
                }
            })
    };
    format!("{} / {}", bound(0.5), bound(0.99))
}

fn print_machine() {
    let files = open_file_limit().map_or("unknown".to_owned(), |n| n.to_string());
    let (model, memory) = (cpu_model(), memory());
    println!("## Machine");
    println!();
    println!("- CPUs: {} ({model})", machine_cores());
    println!("- memory: {memory}; open-file limit: {files}");
    println!(
        "- kernel: Linux {}; RabbitMQ {}; {}",
        command_output("uname", &["-r"]),
        command_output("rabbitmqctl", &["version"]),
        command_output("rustc", &["--version"])
    );
    println!();
}

fn print_tables(settings: &Settings, rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    let target_ms = SNAPSHOT_INTERVAL_MS + LATENCY_SLACK_MS;
    println!(
        "## Live delivery (release build, {} orders/s for {} s, snapshot interval {SNAPSHOT_INTERVAL_MS} ms)",
        settings.rate,
        settings.load.as_secs()
    );
    println!();
    println!("Memory (service VmRSS; idle = all clients connected, no events, after 2 s)");
    println!();
    println!(
        "| clients | connected | connect time | RSS before | RSS idle | per idle connection \
         | RSS after load | benchmark RSS per client |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    // The baseline's clients are not the service's: its memory says nothing about them.
    for row in rows.iter().filter(|row| row.server == Server::Pulseboard) {
        println!(
            "| {} | {} | {:.1} s | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.1} MiB | {:.1} KiB |",
            row.clients,
            row.opened,
            row.connect_seconds,
            row.rss_before_kib as f64 / 1024.0,
            row.rss_idle_kib as f64 / 1024.0,
            row.kib_per_idle_connection(),
            row.rss_loaded_kib as f64 / 1024.0,
            row.bench_rss_per_client_kib,
        );
    }
    println!();
    println!(
        "Delivery latency to client receipt, orders published in the last {} s (1 ms buckets; \
         p = upper edge): every order from its arrival at the service (the service's log of \
         committed batches), and from its publish",
        (settings.load - WARM_UP).as_secs()
    );
    println!();
    println!(
        "| clients | orders/s published | every order from arrival p50 / p99 / max | every order \
         from publish p50 / p99 / max | oldest new order p50 / p99 / max | newest (R-th) order \
         p50 / p99 / max | samples (every / oldest) | service's own histogram p50 / p99 \
         | snapshots/s received (ideal) |"
    );
    println!("| ---: | ---: | --- | --- | --- | --- | ---: | --- | ---: |");
    for row in rows {
        let ideal = row.opened as f64 * 1_000.0 / SNAPSHOT_INTERVAL_MS as f64;
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} / {} | {} | {:.0} ({:.0}) |",
            row.case(),
            row.published.sent as f64 / row.published.seconds,
            row.every_from_arrival.spread(),
            row.every.spread(),
            row.oldest.spread(),
            row.newest.spread(),
            row.every.count,
            row.oldest.count,
            row.of_service(row.server_latency.clone()),
            row.snapshots_per_second,
            ideal,
        );
    }
    println!();
    println!("Where the time goes (window; ms)");
    println!();
    println!(
        "| clients | snapshots generated/s | tick gap median / max | generated → first client \
         (median) | generated → last client (median / max) | generated → receipt p50 / p99 / max \
         | broker transit (mean: event_age / from the log) | service arrival → write (mean) \
         | publish → receipt, oldest (mean) |"
    );
    println!("| ---: | ---: | --- | ---: | --- | --- | ---: | ---: | ---: |");
    for row in rows {
        let t = row.snapshots;
        println!(
            "| {} | {:.2} | {:.0} / {:.0} | {:.0} | {:.0} / {:.0} | {} / {} / {:.0} | {:.1} / {:.1} | {} | {:.0} |",
            row.case(),
            t.per_second,
            t.gap_median,
            t.gap_max,
            t.first_median,
            t.last_median,
            t.last_max,
            row.fanout.p50,
            row.fanout.p99,
            row.fanout.max,
            row.event_age_mean,
            row.transit_from_log_mean,
            row.of_service(format!("{:.0}", row.server_delivery_mean)),
            row.oldest.mean,
        );
    }
    println!();
    println!(
        "CPU over the same {:.0} s, % of one core (machine: % of {} cores)",
        rows[0].window_seconds,
        machine_cores()
    );
    println!();
    println!(
        "| clients | service | benchmark: clients | benchmark: bare fan-out | benchmark: \
         publisher and rest | RabbitMQ | other | machine busy | steal | quiet at start \
         | undisturbed window | busiest other processes | attempt |"
    );
    println!(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |"
    );
    for row in rows {
        let cpu = &row.cpu;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
            row.case(),
            cpu.percent(cpu.watched[0]),
            cpu.percent(cpu.own_threads),
            cpu.percent(cpu.watched[1]),
            // The process's own total keeps the time of threads that have exited (lapin's,
            // earlier publishers); a sum over the live threads would not.
            cpu.percent(cpu.own.saturating_sub(cpu.own_threads)),
            cpu.percent(cpu.rabbitmq),
            cpu.percent(cpu.other()),
            cpu.percent(cpu.machine.busy),
            cpu.percent(cpu.machine.steal),
            if row.quiet { "yes" } else { "NO" },
            if row.disturbed() { "NO" } else { "yes" },
            row.others,
            row.attempts,
        );
    }
    println!();
    println!(
        "Deliveries per CPU-second (snapshots received by the clients in the window ÷ CPU \
         seconds of: the service; the bare fan-out process; both, the service then only \
         ingesting and feeding the fan-out one stream)"
    );
    println!();
    println!("| clients | service | bare fan-out process | service + bare fan-out |");
    println!("| ---: | ---: | ---: | ---: |");
    for row in rows {
        let cpu = &row.cpu;
        let per_cpu_second = |ticks: u64| {
            let cores = cpu.percent(ticks) / 100.0;
            if cores > 0.0 {
                format!("{:.0}", row.snapshots_per_second / cores)
            } else {
                "–".to_owned()
            }
        };
        let (service, bare, both) = match row.server {
            Server::Pulseboard => (per_cpu_second(cpu.watched[0]), "–".into(), "–".into()),
            Server::Bare => (
                "–".into(),
                per_cpu_second(cpu.watched[1]),
                per_cpu_second(cpu.watched[0] + cpu.watched[1]),
            ),
        };
        println!("| {} | {service} | {bare} | {both} |", row.case());
    }
    println!();
    println!("Slow clients and integrity (whole run)");
    println!();
    println!(
        "| clients | coalesced (service) | skipped seqs seen by clients (window) \
         | slow-client disconnects | clients lost | clients that saw the final total \
         | unmapped snapshots | orders without a logged arrival | publisher max behind \
         | stop (SIGTERM → exit) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} of {} | {} | {} | {:.0} ms | {} |",
            row.case(),
            row.of_service(row.coalesced.to_string()),
            row.client_skipped,
            row.of_service(row.slow_disconnects.to_string()),
            row.lost,
            row.caught_up,
            row.opened,
            row.unmapped,
            row.arrival_unknown,
            row.published.max_behind_ms,
            row.of_service(format!("{:.1} s", row.stop_seconds)),
        );
    }
    println!();
    for row in rows.iter().filter(|row| row.server == Server::Bare) {
        let held = row.opened == row.clients as u64 && row.lost == 0;
        println!(
            "- {} clients, baseline (the service's snapshots, one `write` per client): held {} ; \
             p99 (every order, arrival → receipt) {} ms against the target's {target_ms} ms{} ; \
             generated → last client {:.0} ms (median){}",
            row.clients,
            if held { "yes" } else { "NO" },
            row.every_from_arrival.p99,
            if row.arrival_unknown > 0 {
                " (orders without a logged arrival: not comparable)"
            } else {
                ""
            },
            row.snapshots.last_median,
            if row.disturbed() {
                " (DISTURBED: other processes were busy; rerun)"
            } else {
                ""
            },
        );
    }
    for row in rows.iter().filter(|row| row.server == Server::Pulseboard) {
        let held = row.opened == row.clients as u64 && row.lost == 0;
        println!(
            "- {} clients: held {} ; p99 (every order, arrival → receipt) {} ms ≤ {target_ms} ms \
             {} ; p99 (every order, publish → receipt) {} ms {} ; p99 (oldest new order of a \
             snapshot, from publish) {} ms {} ; {:.1} KiB per idle connection ≤ \
             {MAX_KIB_PER_IDLE_CONNECTION} KiB {}{}{}",
            row.clients,
            if held { "yes" } else { "NO" },
            row.every_from_arrival.p99,
            if row.every_from_arrival.p99 <= target_ms && row.arrival_unknown == 0 {
                "met"
            } else {
                "MISSED"
            },
            row.every.p99,
            if row.every.p99 <= target_ms {
                "met"
            } else {
                "MISSED"
            },
            row.oldest.p99,
            if row.oldest.p99 <= target_ms {
                "met"
            } else {
                "MISSED"
            },
            row.kib_per_idle_connection(),
            if row.kib_per_idle_connection() <= MAX_KIB_PER_IDLE_CONNECTION {
                "met"
            } else {
                "MISSED"
            },
            if row.connect_retries > 0 {
                format!(" ({} connect retries)", row.connect_retries)
            } else {
                String::new()
            },
            if row.disturbed() {
                " (DISTURBED: other processes were busy; rerun)"
            } else {
                ""
            },
        );
    }
}
