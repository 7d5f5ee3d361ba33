//! Sustained ingest benchmark: `cargo bench --bench ingest` (see docs/benchmarks.md).
//!
//! For each database backend (SQLite, then PostgreSQL), in one process run:
//! - declares a fresh topology (prefix `bench-<uuid8>-<backend>`, exchange `<prefix>.ev`) plus
//!   queues `<prefix>.raw` and `<prefix>.floor` with the same arguments as `<prefix>.events`,
//!   each bound the same way to a topic exchange of its own (`<prefix>.ev.raw`, `.ev.floor`);
//! - in rounds (4) of N/rounds events each: generates the round's events once, then, for each
//!   consumer in turn, publishes them with publisher confirms to that consumer's queue alone
//!   and drains it, so that every drain starts from the same broker state (its own N/rounds
//!   messages, just published, nothing else queued). The consumers: a bare lapin
//!   consume-and-ack loop on `<prefix>.raw` (the service's prefetch, one multiple-ack per 2 000
//!   deliveries); a bare durable consumer on `<prefix>.floor` (the same loop, which also
//!   decodes each event and stores each batch's rows with the store's bare `INSERT` in one
//!   transaction, committed before its multiple-ack, one commit at a time while the next batch
//!   gathers: what any exactly-once consumer of these rows must do, and nothing of the
//!   service's own); and the release `pulseboard serve` on `<prefix>.events` (one database for
//!   the whole run, a new process each round), polling `/metrics` every 50 ms until
//!   `pulseboard_events_total` reaches the round's events: committed, acknowledged, counted.
//!   Which of raw and service goes first alternates (raw, service, service, raw, …), the floor
//!   always between them: the broker's pace drifts, and neither side should always go first;
//! - after each round checks the dashboard's revenue against the generator's tally and, once
//!   the service stopped (SIGTERM), that its queue is empty; at the end deletes everything.
//!
//! A warm-up round of N/rounds events comes first, drained by all three the same way and shown
//! in the per-round table, but not counted: a freshly declared queue's first drain runs in the
//! broker's fast mode far more often than later ones. Rates are events over the summed drain
//! times of the counted rounds; a second line gives the median round's rates, which one drain
//! in the broker's fast mode does not move.
//!
//! Environment: `BENCH_EVENTS` (N, events per backend, 200 000), `BENCH_MIX` (which events:
//! `simulate`, `pulseboard simulate`'s mix over 10 000 users, the default; `orders`, nothing
//! but `order.placed`; `activity`, issue 28's 90 % `user.active`, 8 % `order.placed`, 2 %
//! `order.refunded` over 5 000 users), `BENCH_BACKENDS`
//! (`sqlite,postgres`), `BENCH_ROUNDS` (4), `BENCH_QUIET_SECS` (how long to wait for an idle
//! machine before each drain, 300), `AMQP_URL`, `BENCH_PG_HOST` (127.0.0.1), `BENCH_PG_USER`
//! (postgres), `BENCH_SERVICE_LOG` (the service's `RUST_LOG`, `warn,pulseboard=info`; with
//! `warn,pulseboard=info,pulseboard::ingest=debug` it logs every batch and its commit time),
//! `BENCH_BASELINE_ONLY=1` (an A/A run: a second bare loop drains `<prefix>.events` in the
//! service's place, so the "pulseboard" figures are the baseline's own, and their ratio shows
//! how far the broker alone moves it from 1).

use anyhow::{bail, ensure, Context};
use futures_util::stream::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use pulseboard::for_benchmarks::{decode, DecodeContext};
use pulseboard::rabbitmq::{connect, publish_event, Topology};
use pulseboard::simulate::{Generated, Mix, TrafficGenerator};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// The kit is shared with the tests and the other benchmarks; this one uses most of it.
#[allow(dead_code)]
#[path = "../tests/kit/mod.rs"]
mod kit;
mod support;
use kit::broker::{amqp_url_from_env, short_id, Confirms};
use kit::cpu::{
    allowed_cpus, background_load, command_output, cpu_model, machine_cores, memory, server_pids,
    wait_for_quiet, CpuTicks,
};
use kit::database::{backend_name, backends_from_env, Backend, PostgresServer, TestDatabase};
use kit::metrics::metric_sum;
use kit::service::{Service, ServiceConfig};
use support::BareTable;

const DEFAULT_EVENTS: u64 = 200_000;
const CURRENCY: &str = "USD";
/// The service's consumer prefetch and batch size (src/startup.rs), mirrored by the raw loop.
const PREFETCH: u16 = 10_000;
const ACK_EVERY: u64 = 2_000;
/// The service's batching linger (src/startup.rs), mirrored by the bare durable consumer.
const FLOOR_LINGER: Duration = Duration::from_millis(5);
/// Fewest events a run accepts: enough batches for a rate to mean something.
const MIN_EVENTS: u64 = 10 * ACK_EVERY;
/// Publisher confirms awaited at once, as in `pulseboard simulate`.
const MAX_UNCONFIRMED: usize = 20_000;
/// SIGTERM to exit, at most.
const STOP_LIMIT: Duration = Duration::from_secs(20);
const POLL_EVERY: Duration = Duration::from_millis(50);
/// The run fails if the applied count stops moving for this long.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// A drain counts as quiet when processes other than the consumer, the broker and the database
/// used less than this (% of one core) while it ran.
const QUIET_OTHER: f64 = 25.0;
const DEFAULT_QUIET_SECS: u64 = 300;
/// Rounds per backend; the order of the two drains alternates raw-service, service-raw,
/// service-raw, raw-service, … so that neither side is always drained first.
const DEFAULT_ROUNDS: u64 = 4;

/// One row of the result table.
struct Row {
    backend: Backend,
    events: u64,
    publish: Phase,
    raw: Phase,
    /// The bare durable consumer.
    floor: Phase,
    service: Phase,
    /// From spawning the service to the first applied event: fresh database, then the slowest
    /// restart.
    startup: [Duration; 2],
    /// The uncounted first round, shown in the per-round table.
    warmup: Option<Round>,
    rounds: Vec<Round>,
    /// Every drain started on an idle machine and nothing else took a noticeable share of it.
    quiet: bool,
}

/// One round's drains, for the per-round table.
struct Round {
    raw_first: bool,
    raw: Phase,
    floor: Phase,
    service: Phase,
}

/// Events handled over a measured interval, with the CPU used meanwhile; rounds add up.
#[derive(Clone, Copy, Default)]
struct Phase {
    events: u64,
    seconds: f64,
    cpu: CpuTicks,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    fn add(&mut self, other: Phase) {
        self.events += other.events;
        self.seconds += other.seconds;
        self.cpu.add(&other.cpu);
    }
}

struct Settings {
    events: u64,
    backends: Vec<Backend>,
    amqp_url: String,
    postgres: PostgresServer,
    quiet_limit: Duration,
    rounds: u64,
    workload: Workload,
    /// `BENCH_BASELINE_ONLY=1`: a second bare loop drains the service's queue in its place.
    baseline_only: bool,
}

fn main() {
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime for the benchmark");
    let background = runtime.block_on(background_load(QUIET_OTHER));
    print_machine(background);
    let mut rows = Vec::new();
    for backend in settings.backends.clone() {
        eprintln!("== {} ==", backend_name(backend));
        match runtime.block_on(run_backend(&settings, backend)) {
            Ok(row) => rows.push(row),
            Err(error) => {
                eprintln!("benchmark failed on {}: {error:#}", backend_name(backend));
                print_table(&rows, &settings);
                std::process::exit(1);
            }
        }
    }
    print_table(&rows, &settings);
}

fn settings() -> Settings {
    let events = match std::env::var("BENCH_EVENTS") {
        Ok(text) => text
            .replace('_', "")
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= MIN_EVENTS)
            .unwrap_or_else(|| {
                panic!("BENCH_EVENTS must be a whole number of at least {MIN_EVENTS}")
            }),
        Err(_) => DEFAULT_EVENTS,
    };
    let backends = backends_from_env();
    Settings {
        events,
        backends,
        amqp_url: amqp_url_from_env(),
        postgres: PostgresServer::from_env(),
        rounds: std::env::var("BENCH_ROUNDS").map_or(DEFAULT_ROUNDS, |text| {
            text.parse()
                .ok()
                .filter(|r| *r >= 1)
                .expect("BENCH_ROUNDS must be a whole number of at least 1")
        }),
        quiet_limit: Duration::from_secs(
            std::env::var("BENCH_QUIET_SECS")
                .map(|text| {
                    text.parse()
                        .expect("BENCH_QUIET_SECS must be whole seconds")
                })
                .unwrap_or(DEFAULT_QUIET_SECS),
        ),
        baseline_only: std::env::var("BENCH_BASELINE_ONLY").is_ok_and(|text| text == "1"),
        workload: Workload::from_env(),
    }
}

/// Which events the rounds are made of (`BENCH_MIX`).
#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    mix: Mix,
    users: u32,
}

impl Workload {
    const ALL: [Workload; 3] = [
        Workload {
            name: "simulate",
            mix: Mix::SIMULATE,
            users: 10_000,
        },
        Workload {
            name: "orders",
            mix: Mix::ORDERS,
            users: 10_000,
        },
        Workload {
            name: "activity",
            mix: Mix::ACTIVITY,
            users: 5_000,
        },
    ];

    fn from_env() -> Workload {
        let name = std::env::var("BENCH_MIX").unwrap_or_else(|_| "simulate".into());
        Workload::ALL
            .into_iter()
            .find(|workload| workload.name == name)
            .expect("BENCH_MIX must be simulate, orders or activity")
    }

    fn generator(&self, seed: u64) -> TrafficGenerator {
        TrafficGenerator::new(self.users, CURRENCY, seed).with_mix(self.mix)
    }

    fn describe(&self) -> String {
        let Mix {
            active,
            placed,
            refunded,
            signed_out,
            other,
        } = self.mix;
        format!(
            "`BENCH_MIX={}`: {active} % user.active, {placed} % order.placed, {refunded} % \
             order.refunded, {signed_out} % user.signed_out, {other} % order.shipped; {} users",
            self.name, self.users
        )
    }
}

/// Names of everything one backend's run creates on the broker, all deleted when it ends.
struct Names {
    /// The prefix, the service's exchange, and the deletion of everything below.
    kit: kit::broker::Names,
    topology: Topology,
    raw_queue: String,
    floor_queue: String,
    /// Each baseline queue has an exchange of its own, so that a round's events can be
    /// published to one queue at a time.
    raw_exchange: String,
    floor_exchange: String,
}

/// Who drains a queue in a round.
#[derive(Clone, Copy)]
enum Drainer {
    Raw,
    Floor,
    Service,
}

impl Names {
    /// The exchange that routes to `drainer`'s queue alone, and that queue.
    fn route(&self, drainer: Drainer) -> (&str, &str) {
        match drainer {
            Drainer::Raw => (&self.raw_exchange, &self.raw_queue),
            Drainer::Floor => (&self.floor_exchange, &self.floor_queue),
            Drainer::Service => (&self.topology.exchange, &self.topology.events_queue),
        }
    }

    fn new(amqp_url: &str, backend: Backend) -> Names {
        let prefix = format!("bench-{}-{}", &short_id()[..8], backend_name(backend));
        let (raw_queue, floor_queue) = (format!("{prefix}.raw"), format!("{prefix}.floor"));
        let (raw_exchange, floor_exchange) =
            (format!("{prefix}.ev.raw"), format!("{prefix}.ev.floor"));
        let kit = kit::broker::Names::on(
            amqp_url,
            &prefix,
            &[&raw_queue, &floor_queue],
            &[&raw_exchange, &floor_exchange],
        );
        Names {
            topology: kit.topology(),
            kit,
            raw_queue,
            floor_queue,
            raw_exchange,
            floor_exchange,
        }
    }
}

async fn run_backend(settings: &Settings, backend: Backend) -> anyhow::Result<Row> {
    // The names and databases delete themselves when dropped: after success, failure, or an
    // interruption (which ends the measurement below).
    let names = Names::new(&settings.amqp_url, backend);
    let connection = connect(&settings.amqp_url, "pulseboard bench")
        .await
        .context("RabbitMQ (AMQP_URL)")?;
    let channel = connection.create_channel().await?;
    let prefix = &names.kit.prefix;
    let database = TestDatabase::create(&settings.postgres, backend, prefix).await?;
    let floor_database =
        TestDatabase::create(&settings.postgres, backend, &format!("{prefix}_floor"))
            .await
            .context("the floor's database")?;
    let databases = [&database, &floor_database];
    let result = tokio::select! {
        result = measure(settings, backend, &names, &connection, &channel, databases) => result,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}; cleaning up")),
    };
    let _ = connection.close(200, "bench done").await;
    result
}

async fn measure(
    settings: &Settings,
    backend: Backend,
    names: &Names,
    connection: &Connection,
    channel: &Channel,
    [database, floor_database]: [&TestDatabase; 2],
) -> anyhow::Result<Row> {
    names.topology.declare(channel).await?;
    declare_like_events(channel, names, Drainer::Raw).await?;
    declare_like_events(channel, names, Drainer::Floor).await?;
    let floor_table = BareTable::open(&floor_database.url).await?;
    let mut generator = settings.workload.generator(0x5eed + backend as u64);
    let mut row = Row {
        backend,
        events: settings.events,
        publish: Phase::default(),
        raw: Phase::default(),
        floor: Phase::default(),
        service: Phase::default(),
        startup: [Duration::ZERO; 2],
        warmup: None,
        rounds: Vec::new(),
        quiet: true,
    };
    let rounds = settings.rounds;
    // Round 0 warms up and is not counted: the first drain of a freshly declared queue runs in
    // the broker's fast mode far more often than later ones (docs/benchmarks.md), and the raw
    // loop, drained first, would draw it nearly every time.
    for round in 0..=rounds as usize {
        let warmup = round == 0;
        let counted = round.saturating_sub(1);
        let n = settings.events / rounds
            + u64::from(!warmup && (counted as u64) < settings.events % rounds);
        let raw_first = matches!(counted % 4, 0 | 3);
        let label = if warmup {
            "warm-up".to_owned()
        } else {
            format!("round {round}")
        };
        let mut done = Round {
            raw_first,
            raw: Phase::default(),
            floor: Phase::default(),
            service: Phase::default(),
        };
        let events: Vec<Generated> = (0..n).map(|_| generator.next_event(unix_ms())).collect();
        let order = if raw_first {
            [Drainer::Raw, Drainer::Floor, Drainer::Service]
        } else {
            [Drainer::Service, Drainer::Floor, Drainer::Raw]
        };
        for drainer in order {
            // Every drain starts from the same broker: the round's events in its queue alone.
            let (exchange, queue) = names.route(drainer);
            let publish = publish(connection, exchange, &events).await?;
            if !warmup {
                row.publish.add(publish);
            }
            for other in [Drainer::Raw, Drainer::Floor, Drainer::Service] {
                let (_, other) = names.route(other);
                let depth = u64::from(Topology::depth(channel, other).await?);
                let expected = if other == queue { n } else { 0 };
                ensure!(
                    depth == expected,
                    "{other} holds {depth} messages, expected {expected}"
                );
            }
            eprintln!(
                "{label}: published {n} events to {queue} at {:.0}/s (confirmed)",
                publish.rate()
            );
            let quiet = wait_for_quiet(settings.quiet_limit, 1).await;
            row.quiet &= quiet || warmup;
            match drainer {
                Drainer::Raw => done.raw = raw_phase(settings, queue, n).await?,
                Drainer::Floor => {
                    done.floor = floor_phase(settings, queue, n, &floor_table).await?
                }
                Drainer::Service => {
                    let (phase, startup) =
                        service_phase(settings, names, channel, database, &generator, n).await?;
                    eprintln!(
                        "{label}: {} {:.0} events/s",
                        if settings.baseline_only {
                            "a second bare loop drained the service's queue at"
                        } else {
                            "pulseboard applied (revenue exact)"
                        },
                        phase.rate()
                    );
                    if let Some(startup) = startup {
                        let slot = usize::from(round > 0);
                        row.startup[slot] = row.startup[slot].max(startup);
                    }
                    done.service = phase;
                }
            }
        }
        if warmup {
            row.warmup = Some(done);
            continue;
        }
        row.raw.add(done.raw);
        row.floor.add(done.floor);
        row.service.add(done.service);
        row.rounds.push(done);
    }
    floor_table.pool.close().await;
    // Nothing else took a noticeable share of the machine while draining.
    for phase in [&row.raw, &row.floor, &row.service] {
        row.quiet &= phase.cpu.percent(phase.cpu.other()) < QUIET_OTHER;
    }
    Ok(row)
}

/// Drains `n` events from `<prefix>.events` with a new `pulseboard serve`; checks the revenue,
/// and that the queue is empty once the service stopped. Returns the phase and the time from
/// spawning the service to its first applied event. In an A/A run a second bare loop drains
/// the queue instead (no start-up time).
async fn service_phase(
    settings: &Settings,
    names: &Names,
    channel: &Channel,
    database: &TestDatabase,
    generator: &TrafficGenerator,
    n: u64,
) -> anyhow::Result<(Phase, Option<Duration>)> {
    if settings.baseline_only {
        let phase = raw_phase(settings, &names.topology.events_queue, n).await?;
        return Ok((phase, None));
    }
    let config = ServiceConfig::for_benchmark(database, &names.kit, &settings.amqp_url, CURRENCY);
    let mut service = Service::try_start(&config).await?;
    let outcome = drain(&mut service, n).await;
    let tally = &generator.tally;
    let revenue = match &outcome {
        Ok(_) => check_revenue(&mut service, tally.placed_minor - tally.refunded_minor).await,
        Err(_) => Ok(()),
    };
    let stopped = service.stop(STOP_LIMIT).await;
    let (phase, startup) = outcome?;
    revenue?;
    stopped?;
    let left = Topology::depth(channel, &names.topology.events_queue).await?;
    ensure!(
        left == 0,
        "{} still holds {left} messages after the service stopped",
        names.topology.events_queue
    );
    Ok((phase, Some(startup)))
}

/// Drains `n` events from `queue` with the bare loop, measuring the rate and the CPU used.
async fn raw_phase(settings: &Settings, queue: &str, n: u64) -> anyhow::Result<Phase> {
    let drain = raw_drain(&settings.amqp_url, queue, n);
    timed_phase("raw lapin consume+ack", drain).await
}

/// Drains `n` events from `queue` with the bare durable consumer, measuring the rate and the CPU.
async fn floor_phase(
    settings: &Settings,
    queue: &str,
    n: u64,
    table: &BareTable,
) -> anyhow::Result<Phase> {
    let drain = floor_drain(&settings.amqp_url, queue, n, table);
    timed_phase("bare durable consumer", drain).await
}

/// Runs a bare drain (it returns the events in its measured interval and the interval's
/// seconds), with the CPU used meanwhile.
async fn timed_phase(
    name: &str,
    drain: impl std::future::Future<Output = anyhow::Result<(u64, f64)>>,
) -> anyhow::Result<Phase> {
    let before = CpuTicks::take([None, None], None);
    let (events, seconds) = drain.await?;
    let phase = Phase {
        events,
        seconds,
        cpu: CpuTicks::take([None, None], None).since(&before),
    };
    eprintln!("{name}: {:.0} events/s", phase.rate());
    Ok(phase)
}

/// The bare loop, plus what any exactly-once consumer of these rows must do: decode each event
/// and store each batch's rows durably before acknowledging it. Batches as the service's: up
/// to `ACK_EVERY` messages, or what came within `FLOOR_LINGER` of the batch's first; one
/// commit at a time, in a task of its own, while the next batch gathers. Nothing of the
/// service's own: no duplicate lookup, lease, figures or metrics.
async fn floor_drain(
    amqp_url: &str,
    queue: &str,
    n: u64,
    table: &BareTable,
) -> anyhow::Result<(u64, f64)> {
    let (connection, channel, mut consumer) = bare_consumer(amqp_url, queue, "bench-floor").await?;
    let (mut received, mut first) = (0u64, None);
    let (mut batch, mut batch_messages, mut last_tag) = (Vec::new(), 0, 0);
    let mut deadline: Option<Instant> = None;
    let mut committing: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    while received < n || batch_messages > 0 || committing.is_some() {
        tokio::select! {
            biased;
            done = async {
                match committing.as_mut() {
                    Some(commit) => commit.await,
                    None => std::future::pending().await,
                }
            }, if committing.is_some() => {
                done??;
                committing = None;
            }
            next = tokio::time::timeout(STALL_LIMIT, consumer.next()),
                if batch_messages < ACK_EVERY && received < n =>
            {
                let delivery = next
                    .with_context(|| format!("no delivery from {queue} for {STALL_LIMIT:?}"))?
                    .context("the broker cancelled the durable consumer")??;
                first.get_or_insert_with(Instant::now);
                received += 1;
                let context = DecodeContext::new(CURRENCY, unix_ms());
                // Generated traffic holds no malformed event; a consumer would dead-letter one.
                if let Ok(event) = decode(&delivery.data, context) {
                    batch.push(event);
                }
                batch_messages += 1;
                last_tag = delivery.delivery_tag;
                deadline.get_or_insert_with(|| Instant::now() + FLOOR_LINGER);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()),
                if deadline.is_some() && committing.is_none() => {}
        }
        let due = batch_messages >= ACK_EVERY
            || received == n
            || deadline.is_some_and(|d| Instant::now() >= d);
        if due && batch_messages > 0 && committing.is_none() {
            let (events, tag) = (std::mem::take(&mut batch), last_tag);
            (batch_messages, deadline) = (0, None);
            let (table, channel) = (table.clone(), channel.clone());
            committing = Some(tokio::spawn(async move {
                table.insert(&events, unix_ms()).await?;
                channel
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await?;
                Ok(())
            }));
        }
    }
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let _ = channel.close(200, "drained").await;
    let _ = connection.close(200, "drained").await;
    // The first event is the clock's start, so n - 1 events fill the measured interval.
    Ok((n - 1, seconds))
}

/// Resolves on Ctrl-C or SIGTERM, so that an interrupted run still deletes what it created.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// A baseline's queue: same arguments as `<prefix>.events`, bound the same way to an exchange
/// of its own (declared as the service declares its exchange).
async fn declare_like_events(
    channel: &Channel,
    names: &Names,
    drainer: Drainer,
) -> anyhow::Result<()> {
    let (exchange, queue) = names.route(drainer);
    channel
        .exchange_declare(
            exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(names.topology.dead_exchange.as_str().into()),
    );
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    for pattern in ["order.*", "user.*"] {
        channel
            .queue_bind(
                queue,
                exchange,
                pattern,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Publishes `events`, persistent, with pipelined confirms.
async fn publish(
    connection: &Connection,
    exchange: &str,
    events: &[Generated],
) -> anyhow::Result<Phase> {
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    let mut confirms = Confirms::new(MAX_UNCONFIRMED);
    for event in events {
        let confirm = publish_event(&publisher, exchange, event.routing_key, &event.body).await?;
        confirms.push(confirm).await?;
    }
    confirms.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = publisher.close(200, "published").await;
    let refused = confirms.refused;
    ensure!(refused == 0, "RabbitMQ refused {refused} published events");
    Ok(Phase {
        events: events.len() as u64,
        seconds,
        cpu: CpuTicks::default(),
    })
}

/// A consumer of `queue` on a connection of its own, with the service's prefetch.
async fn bare_consumer(
    amqp_url: &str,
    queue: &str,
    tag: &str,
) -> anyhow::Result<(Connection, Channel, lapin::Consumer)> {
    let connection = connect(amqp_url, &format!("pulseboard bench {tag}")).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue,
            tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, channel, consumer))
}

/// The baseline: a bare consume-and-ack loop on its own connection. Returns the events and
/// seconds from the first delivery to the last acknowledgement.
async fn raw_drain(amqp_url: &str, queue: &str, n: u64) -> anyhow::Result<(u64, f64)> {
    let (connection, channel, mut consumer) = bare_consumer(amqp_url, queue, "bench-raw").await?;
    let mut received = 0u64;
    let mut first = None;
    while received < n {
        let delivery = tokio::time::timeout(STALL_LIMIT, consumer.next())
            .await
            .with_context(|| format!("no delivery from {queue} for {STALL_LIMIT:?}"))?
            .context("the broker cancelled the raw consumer")??;
        first.get_or_insert_with(Instant::now);
        received += 1;
        if received % ACK_EVERY == 0 || received == n {
            channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let _ = channel.close(200, "drained").await;
    let _ = connection.close(200, "drained").await;
    // The first event is the clock's start, so n - 1 events fill the measured interval.
    Ok((n - 1, seconds))
}

/// Polls `/metrics` until `n` events are counted. Returns the drain from the first poll that
/// saw an event to the one that saw them all, and the time from the service's start to that
/// first poll.
async fn drain(service: &mut Service, n: u64) -> anyhow::Result<(Phase, Duration)> {
    let pid = [Some(service.pid()), None];
    let mut first: Option<(Instant, u64, CpuTicks)> = None;
    let mut last_change = (Instant::now(), 0u64);
    let mut ticker = tokio::time::interval(POLL_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        service.check_running()?;
        // Every label set: applied and ignored (generated traffic has nothing else).
        let count = metric_sum(&service.metrics().await?, "pulseboard_events_total", "");
        let now = Instant::now();
        if count > 0 && first.is_none() {
            first = Some((now, count, CpuTicks::take(pid, None)));
        }
        if count != last_change.1 {
            last_change = (now, count);
        } else if now - last_change.0 > STALL_LIMIT {
            bail!(
                "the service applied {count} of {n} events, then stalled{}",
                service.log_tail(20)
            );
        }
        ensure!(
            count <= n,
            "the service counted {count} events, only {n} were sent"
        );
        if count == n {
            let (start, counted_then, cpu_then) = first.context("no first poll")?;
            let cpu = CpuTicks::take(pid, None).since(&cpu_then);
            let seconds = (now - start).as_secs_f64();
            ensure!(
                seconds > 0.0,
                "everything was applied between two polls: raise BENCH_EVENTS"
            );
            // Events counted before the first poll that saw any are outside the interval.
            let phase = Phase {
                events: n - counted_then,
                seconds,
                cpu,
            };
            return Ok((phase, start - service.started));
        }
    }
}

/// Waits for a snapshot whose revenue today equals the generator's net revenue. Signs in first:
/// after the drain, so that the password's hashing is not timed.
async fn check_revenue(service: &mut Service, expected: i64) -> anyhow::Result<()> {
    service.sign_in().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        if let Some(snapshot) = service.try_snapshot().await? {
            let revenue = snapshot["revenue"]["today_minor"].as_i64();
            if revenue == Some(expected) {
                return Ok(());
            }
            seen = revenue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "REVENUE MISMATCH: the snapshot says today_minor = {seen:?}, \
         the generator sent a net {expected} (placed - refunded)"
    )
}

/// The consumer's ticks: the service's when one ran in the phase (its process is the one
/// watched), or this process's for the bare loops, which run in it.
fn consumer_ticks(cpu: &CpuTicks) -> u64 {
    if cpu.watched[0] > 0 {
        cpu.watched[0]
    } else {
        cpu.own
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn print_machine(background: f64) {
    let (cpus, model, memory) = (machine_cores(), cpu_model(), memory());
    let rabbitmq = command_output("rabbitmqctl", &["version"]);
    let postgres = command_output(
        "psql",
        &[
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-tAc",
            "SHOW server_version",
        ],
    );
    let kernel = command_output("uname", &["-r"]);
    let rustc = command_output("rustc", &["--version"]);
    let tmp_fs = command_output("df", &["--output=fstype", "/tmp"])
        .lines()
        .last()
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    println!("## Machine");
    println!();
    println!("- CPUs: {cpus} ({model})");
    println!("- memory: {memory}");
    println!("- kernel: Linux {kernel}; /tmp (SQLite file) on {tmp_fs}");
    println!("- RabbitMQ: {rabbitmq}; PostgreSQL: {postgres}; {rustc}");
    let (rabbitmq, postgres) = server_pids();
    let pid = |pid: Option<u32>| pid.map_or("not found".to_owned(), |p| format!("pid {p}"));
    println!(
        "- CPU accounting: RabbitMQ {}, PostgreSQL {} (found by listening port)",
        pid(rabbitmq),
        pid(postgres)
    );
    let cpus_of = |pid: Option<u32>| pid.map_or("?".to_owned(), |p| allowed_cpus(&p.to_string()));
    println!(
        "- CPUs allowed (`taskset`): the consumers (this benchmark, the service it spawns) {}; \
         RabbitMQ {}; PostgreSQL {}",
        allowed_cpus("self"),
        cpus_of(rabbitmq),
        cpus_of(postgres)
    );
    println!(
        "- background load before the run: {background:.0}% of one core (the quietest second); \
         a drain is \"quiet\" when other processes used less than {QUIET_OTHER:.0}% meanwhile"
    );
    println!();
}

fn print_table(rows: &[Row], settings: &Settings) {
    let baseline_only = settings.baseline_only;
    if rows.is_empty() {
        return;
    }
    println!("## Sustained ingest (release build, broker and database on this machine)");
    println!();
    println!("Events: {}", settings.workload.describe());
    println!();
    if baseline_only {
        println!(
            "**A/A run (`BENCH_BASELINE_ONLY=1`): the \"pulseboard\" columns are a second bare \
             loop, not the service.**"
        );
        println!();
    }
    println!(
        "| backend | events | raw lapin consume+ack (events/s) | pulseboard applied (events/s) \
         | ratio | bare durable consumer (events/s) | its ratio | publish with confirms \
         (events/s) | start to first event | revenue | quiet |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |");
    for row in rows {
        // An A/A run starts no service: nothing to time or check.
        let (startup, revenue) = if baseline_only {
            ("–".to_owned(), "–")
        } else {
            (
                format!(
                    "{:.2} s / {:.2} s",
                    row.startup[0].as_secs_f64(),
                    row.startup[1].as_secs_f64()
                ),
                "exact",
            )
        };
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {startup} | {revenue} | {} |",
            backend_name(row.backend),
            row.events,
            row.raw.rate(),
            row.service.rate(),
            row.service.rate() / row.raw.rate(),
            row.floor.rate(),
            row.floor.rate() / row.raw.rate(),
            row.publish.rate(),
            if row.quiet { "yes" } else { "NO" },
        );
    }
    println!();
    println!(
        "CPU while draining, % of one core (machine: % of {} cores)",
        machine_cores()
    );
    println!();
    println!(
        "| backend | phase | consumer process | RabbitMQ | PostgreSQL | other processes \
         | machine busy | iowait |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        for (phase, cpu) in [
            ("raw lapin loop", &row.raw.cpu),
            ("bare durable consumer", &row.floor.cpu),
            ("pulseboard", &row.service.cpu),
        ] {
            println!(
                "| {} | {phase} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                backend_name(row.backend),
                cpu.percent(consumer_ticks(cpu)),
                cpu.percent(cpu.rabbitmq),
                cpu.percent(cpu.postgres),
                cpu.percent(cpu.other()),
                cpu.percent(cpu.machine.busy),
                cpu.percent(cpu.machine.iowait),
            );
        }
    }
    println!();
    println!("Per round (events/s; \"other\" is CPU of other processes, % of one core)");
    println!();
    println!(
        "| backend | round | drained first | raw | applied | ratio | bare durable | its ratio \
         | other (raw / applied) |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let warmup = row
            .warmup
            .iter()
            .map(|round| ("warm-up (not counted)".to_owned(), round));
        let counted = (1..).map(|i: usize| i.to_string()).zip(&row.rounds);
        for (name, round) in warmup.chain(counted) {
            println!(
                "| {} | {name} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} / {:.0} |",
                backend_name(row.backend),
                if round.raw_first { "raw" } else { "pulseboard" },
                round.raw.rate(),
                round.service.rate(),
                round.service.rate() / round.raw.rate(),
                round.floor.rate(),
                round.floor.rate() / round.raw.rate(),
                round.raw.cpu.percent(round.raw.cpu.other()),
                round.service.cpu.percent(round.service.cpu.other()),
            );
        }
    }
    println!();
    for row in rows {
        let (raw, applied) = (row.raw.rate(), row.service.rate());
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "- {}: applied >= 0.8 x raw: {}; applied >= 20 000 events/s: {}; the bare durable \
             consumer reached {:.2} x raw",
            backend_name(row.backend),
            verdict(applied >= 0.8 * raw),
            verdict(applied >= 20_000.0),
            row.floor.rate() / raw,
        );
        let median_of =
            |phase: fn(&Round) -> Phase| median(row.rounds.iter().map(|r| phase(r).rate()));
        let (raw, applied, floor) = (
            median_of(|r| r.raw),
            median_of(|r| r.service),
            median_of(|r| r.floor),
        );
        println!(
            "  median round (the broker's fast mode set aside): raw {raw:.0}, applied \
             {applied:.0} ({:.2} x raw), bare durable {floor:.0} ({:.2} x raw)",
            applied / raw,
            floor / raw,
        );
    }
}

/// The median of some rates: the middle one, or the mean of the two middle ones.
fn median(rates: impl Iterator<Item = f64>) -> f64 {
    let mut rates: Vec<f64> = rates.collect();
    rates.sort_by(f64::total_cmp);
    match rates.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => rates[n / 2],
        n => (rates[n / 2 - 1] + rates[n / 2]) / 2.0,
    }
}
