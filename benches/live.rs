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
//!    its **arrival at the service**, the definition: the service logs each committed
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
//!    one blocking `write`, from one thread per core, and consumes every event itself without
//!    acknowledgements, storing nothing: a bare server, the floor of a server that ingests
//!    and fans out on this machine, under the same load, measured by the same clients.
//!
//! Environment: `BENCH_CLIENTS` (`1000,10000`), `BENCH_BARE` (1; 0 skips the baseline),
//! `BENCH_RATE` (5000), `BENCH_LOAD_SECS` (20),
//! `BENCH_UNCONFIRMED` (20000: publishes awaiting their confirm at once),
//! `AMQP_URL`, `BENCH_QUIET_SECS` (300: how long to wait for an idle machine before each case),
//! `BENCH_ATTEMPTS` (5: runs of a case whose window was disturbed), `BENCH_SERVICE_LOG` (the
//! service's `RUST_LOG`, `warn,pulseboard=info`). The process needs `ulimit -n` above N + 1 000
//! (the service and the baseline inherit it).
//!
//! # Layout
//!
//! This file holds the settings, `main` and the orchestration of a case (`run_case` → `measure`
//! → `drive`: topology, database, service, clients, load, scrapes, the row). The rest is in
//! `benches/live/`, one job a file, each using only those above it in this list:
//!
//! - `case.rs`: who serves (`Server`), the snapshot interval and warm-up, and the state the
//!   publisher, the clients and the driver share during a case (`Shared`, `Receipt`);
//! - `clients.rs`: the raw SSE clients: connect, read, parse each snapshot into a receipt;
//! - `bare.rs`: the baseline fan-out process ([`BareFanout`]);
//! - `load.rs`: the publisher of orders, paced, with pipelined confirms;
//! - `analysis.rs`: after the load, the latency histograms and summaries from the receipts, the
//!   orders' arrivals from the service's log, the service's own latency and metric means;
//! - `report.rs`: the result row, the machine lines and the tables.

use anyhow::{bail, ensure, Context};
use pulseboard::for_benchmarks::{CommittedBatch, BATCH_LOG_TARGET};
use pulseboard::rabbitmq::{connect, Topology};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "live/analysis.rs"]
mod analysis;
#[path = "live/bare.rs"]
mod bare;
#[path = "live/case.rs"]
mod case;
#[path = "live/clients.rs"]
mod clients;
// The kit is shared with the tests and the other benchmarks; this one uses most of it.
#[allow(dead_code)]
#[path = "../tests/kit/mod.rs"]
mod kit;
#[path = "live/load.rs"]
mod load;
#[path = "live/report.rs"]
mod report;
use analysis::{metric_mean, server_latency};
use bare::BareFanout;
use case::{Server, Shared, SNAPSHOT_INTERVAL_MS, WARM_UP};
use clients::connect_all;
use kit::broker::{amqp_url_from_env, short_id};
use kit::cpu::{
    open_file_limit, resident_kib, usable_cores, wait_for_quiet, CpuTicks, ProcessTable,
};
use kit::database::{Backend, PostgresServer, TestDatabase};
use kit::metrics::metric_sum;
use kit::service::{Echo, Service, ServiceConfig, STARTUP_LIMIT};
use load::{start_publisher, CURRENCY};
use report::{print_machine, print_tables, Row};

const DEFAULT_CLIENTS: &str = "1000,10000";
const DEFAULT_RATE: u64 = 5_000;
const DEFAULT_LOAD_SECS: u64 = 20;
const DEFAULT_QUIET_SECS: u64 = 300;
const DEFAULT_ATTEMPTS: u64 = 5;
/// Consecutive seconds the machine must be back near its idle floor before a case starts.
const QUIET_SECONDS: u32 = 3;
/// SIGTERM to exit, at most.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// After the last publish: time for the last snapshot to reach every client.
const DRAIN: Duration = Duration::from_secs(3);
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// Publishes awaiting their confirm at once (`BENCH_UNCONFIRMED`), as in `pulseboard simulate`.
/// An order is timed just before its publish, so a large window lets a broker that falls behind
/// hold the backlog in the publisher's connection, counted in the latency; a small one makes the
/// publisher fall behind its schedule instead (reported as "publisher max behind").
const DEFAULT_UNCONFIRMED: u64 = 20_000;
/// The client runtime's threads' name, to tell the clients' CPU from the publisher's and the
/// rest of this process's.
const CLIENT_THREADS: &str = "bench-clients";

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
                print_tables(settings.rate, settings.load, &rows);
                std::process::exit(1);
            }
        }
    }
    print_tables(settings.rate, settings.load, &rows);
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
                &settings.amqp_url,
                &names.topology.exchange,
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
    let (clients, connect_seconds) = connect_all(n, target, &request, &shared).await;
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
    let publisher = start_publisher(
        &settings.amqp_url,
        &names.topology.exchange,
        settings.rate,
        settings.load,
        settings.unconfirmed,
        shared.clone(),
    );
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
