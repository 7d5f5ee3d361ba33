//! Store commit cost: `Store::apply_batch` per event and per commit, on an idle machine.
//!
//! The ingest benchmark measures the whole pipeline, where the broker's speed moves the figures by
//! tens of percent from one run to the next. This one times only the transaction that makes a
//! batch durable, against a table that already holds `BENCH_PREFILL` applied events (the dedupe
//! index is as deep as in a busy hour), for several batch sizes, and fits
//! `time = per_commit + per_event × events` by least squares. `BENCH_DUPLICATES` percent of each
//! batch (default 0) carry ids applied before, like redeliveries after a failover; the baseline
//! then stores only the new rows. With `BENCH_VARY=1` every batch has a size of its own (from
//! half the nominal size up), as under load, where a statement whose text depends on the size
//! is prepared anew for nearly every batch. With `BENCH_PREFILL_DAY=1` the earlier events are
//! applied at instants spread over the last 24 hours, so that their ids fill every live bucket
//! as in a service that has run for a day.
//!
//! The baseline, in the same run: the same rows written by one bare multi-row `INSERT` per batch
//! (order rows) and one plain multi-row upsert (a presence row per user of the batch), in its
//! own transaction, into a second database of the same schema and size. That is what the
//! database charges for storing the rows; the rest of `apply_batch` is the lease fence, the
//! duplicate check, the later-of rule of the presence rows and the minute and day tables.
//!
//! ```sh
//! cargo bench --bench store
//! BENCH_BACKENDS=sqlite BENCH_PREFILL=1000000 cargo bench --bench store
//! BENCH_VARY=1 cargo bench --bench store
//! BENCH_BACKENDS=postgres BENCH_PREFILL=1000000 BENCH_PREFILL_DAY=1 cargo bench --bench store
//! BENCH_GROWTH=100000 BENCH_REBUILD=1000000 cargo bench --bench store   # size and rebuild
//! ```
//!
//! With `BENCH_GROWTH` (events) and `BENCH_REBUILD` (events), it measures instead what the store
//! keeps: the database's growth over `BENCH_GROWTH` events of the mix of issue 28 (90 %
//! `user.active`, 8 % `order.placed`, 2 % `order.refunded`, 5 000 users) applied in batches of
//! 1 000, and how long `load_restore` (what a new leader reads) takes once `BENCH_REBUILD`
//! events of the same mix were applied over the last 24 hours. The growth run's clock moves
//! as at `GROWTH_RATE` events/s (each user's events a few seconds apart, each one later than
//! the last), so that every user row is rewritten as under real traffic.
//!
//! With `BENCH_SUSTAIN_SECS` (seconds) it runs the mix in real time instead, at
//! `BENCH_SUSTAIN_RATE` events/s (2 000) on every backend at once, with the dedupe window
//! shortened to `BENCH_SUSTAIN_WINDOW_SECS` (600, as `PULSEBOARD_DEDUPE_WINDOW_SECS` does) and
//! `Store::prune` every minute as the leader runs it, and prints each database's size every
//! `BENCH_SAMPLE_SECS` (30): it must stop growing once the first windows are pruned.
//!
//! ```sh
//! BENCH_SUSTAIN_SECS=1800 cargo bench --bench store   # 30 minutes, both backends at once
//! ```

// The kit is shared with the tests and the other benchmarks; this one uses its databases.
#[allow(dead_code)]
#[path = "../tests/kit/mod.rs"]
mod kit;
mod support;

use kit::database::{backend_name, backends_from_env, Backend, PostgresServer, TestDatabase};
use pulseboard::aggregate::{Event, EventKind, Judgement};
use pulseboard::store::{Lease, Store};
use std::time::Instant;
use support::BareTable;

const BATCH_SIZES: [usize; 4] = [50, 250, 1_000, 2_000];
const PREFILL_BATCH: usize = 2_000;
const LEASE_TTL_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let prefill = env_number("BENCH_PREFILL", 200_000)?;
    let rounds = env_number("BENCH_ROUNDS", 20)?;
    let duplicate_percent = env_number("BENCH_DUPLICATES", 0)?;
    let vary_sizes = env_number("BENCH_VARY", 0)? != 0;
    let prefill_over_a_day = env_number("BENCH_PREFILL_DAY", 0)? != 0;
    anyhow::ensure!(rounds > 0, "BENCH_ROUNDS must be at least 1");
    anyhow::ensure!(
        duplicate_percent <= 100,
        "BENCH_DUPLICATES is a percentage (0 to 100)"
    );
    anyhow::ensure!(
        prefill > 0 || duplicate_percent == 0,
        "BENCH_DUPLICATES needs earlier events: BENCH_PREFILL must be at least 1"
    );
    let server = PostgresServer::from_env();
    let growth = env_number("BENCH_GROWTH", 0)?;
    let rebuild = env_number("BENCH_REBUILD", 0)?;
    if growth > 0 || rebuild > 0 {
        return footprint(&server, growth, rebuild).await;
    }
    let sustain_secs = env_number("BENCH_SUSTAIN_SECS", 0)?;
    if sustain_secs > 0 {
        let sustain = Sustain {
            secs: sustain_secs as u64,
            rate: env_number("BENCH_SUSTAIN_RATE", 2_000)?,
            window_secs: env_number("BENCH_SUSTAIN_WINDOW_SECS", 600)? as u64,
            sample_secs: env_number("BENCH_SAMPLE_SECS", 30)?.max(1) as u64,
        };
        anyhow::ensure!(sustain.rate > 0, "BENCH_SUSTAIN_RATE must be at least 1");
        return sustained(&server, &sustain).await;
    }
    println!(
        "## Store commit cost (release build; {prefill} events applied before{}; {rounds} \
         batches per size{}; {duplicate_percent} % of each batch applied before)\n",
        if prefill_over_a_day {
            ", spread over the last 24 hours"
        } else {
            ""
        },
        if vary_sizes {
            ", each of its own size, from half the size up"
        } else {
            ""
        }
    );
    println!("| backend | batch | bare INSERT, mean (ms) | apply_batch, mean (ms) |");
    println!("| --- | ---: | ---: | ---: |");
    let mut fits = Vec::new();
    for backend in backends_from_env() {
        // Dropped (PostgreSQL: `DROP DATABASE`) at the end of the iteration, or on failure.
        let bare = TestDatabase::create(&server, backend, &unique_name("bare")).await?;
        let store = TestDatabase::create(&server, backend, &unique_name("store")).await?;
        let plan = Plan {
            prefill,
            rounds,
            duplicate_percent,
            vary_sizes,
            prefill_over_a_day,
        };
        fits.push((backend, measure(backend, &bare, &store, &plan).await?));
    }
    println!("\nLeast-squares fit of commit time = per commit + per event × events\n");
    println!("| backend | bare INSERT per event (µs) | per commit (ms) | apply_batch per event (µs) | per commit (ms) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (backend, [bare, store]) in fits {
        println!(
            "| {} | {:.1} | {:.2} | {:.1} | {:.2} |",
            backend_name(backend),
            bare.per_event * 1e6,
            bare.per_commit * 1e3,
            store.per_event * 1e6,
            store.per_commit * 1e3
        );
    }
    Ok(())
}

/// Fills both databases with `prefill` events, then times batches of each size on both.
async fn measure(
    backend: Backend,
    bare: &TestDatabase,
    store: &TestDatabase,
    plan: &Plan,
) -> anyhow::Result<[Fit; 2]> {
    let Plan {
        prefill,
        rounds,
        duplicate_percent,
        vary_sizes,
        prefill_over_a_day,
    } = *plan;
    let now = pulseboard::clock::now_ms();
    let mut generator = Generator::new(now);
    let bare = BareTable::open(&bare.url).await?;
    let store = Store::connect(&store.url.parse().map_err(anyhow::Error::msg)?).await?;
    store.migrate().await?;
    let lease: Lease = store
        .try_acquire_lease("bench", now, LEASE_TTL_MS)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the lease is held"))?;

    let mut earlier = Vec::with_capacity(prefill);
    while earlier.len() < prefill {
        // Over a day the earlier ids fill every live bucket (seven with the default window),
        // as in a service that has run for a day; else they are all in the current one.
        let at = if prefill_over_a_day {
            now - DAY_MS + DAY_MS * earlier.len() as i64 / prefill as i64
        } else {
            now
        };
        let batch = generator.batch(PREFILL_BATCH.min(prefill - earlier.len()));
        bare.insert(&batch, at).await?;
        store
            .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, at)
            .await?;
        earlier.extend(batch.into_iter().map(|e| e.id));
    }

    let mut bare_samples = Vec::new();
    let mut store_samples = Vec::new();
    for size in BATCH_SIZES {
        let (mut bare_total, mut store_total) = (0.0, 0.0);
        for round in 0..rounds {
            // Under load each batch has a size of its own; a statement that differs with the
            // size is then prepared anew for nearly every batch.
            let size = if vary_sizes {
                size - (round * 7) % (size / 2)
            } else {
                size
            };
            let duplicates = size * duplicate_percent / 100;
            let mut batch = generator.batch(size - duplicates);
            // Ids from all over the earlier ones, a different set each round.
            for k in 0..duplicates {
                let mut event = generator.event();
                event.id = earlier[(round * 7_919 + k * 104_729) % earlier.len()].clone();
                batch.push(event);
            }
            let started = Instant::now();
            // The baseline stores the new rows only, as apply_batch does.
            bare.insert(&batch[..size - duplicates], now).await?;
            let bare_took = started.elapsed().as_secs_f64();
            let started = Instant::now();
            store
                .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, now)
                .await?;
            let store_took = started.elapsed().as_secs_f64();
            bare_samples.push((size as f64, bare_took));
            store_samples.push((size as f64, store_took));
            bare_total += bare_took;
            store_total += store_took;
        }
        println!(
            "| {} | {size} | {:.2} | {:.2} |",
            backend_name(backend),
            bare_total * 1e3 / rounds as f64,
            store_total * 1e3 / rounds as f64
        );
    }
    store.close().await;
    bare.pool.close().await;
    Ok([Fit::of(&bare_samples), Fit::of(&store_samples)])
}

/// Growth per event and rebuild time, per backend (see the header).
async fn footprint(server: &PostgresServer, growth: usize, rebuild: usize) -> anyhow::Result<()> {
    println!("## Store footprint (release build; issue 28's mix, batches of {MIX_BATCH})\n");
    println!("| backend | events | growth (bytes) | bytes/event | events for the rebuild | load_restore (ms, best of 3) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for backend in backends_from_env() {
        let database = TestDatabase::create(server, backend, &unique_name("size")).await?;
        let store = Store::connect(&database.url.parse().map_err(anyhow::Error::msg)?).await?;
        store.migrate().await?;
        let now = pulseboard::clock::now_ms();
        let lease: Lease = store
            .try_acquire_lease("bench", now, LEASE_TTL_MS)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the lease is held"))?;
        let mut mix = Mix::default();
        let before = database_size(&database.url).await?;
        let mut applied = 0;
        while applied < growth {
            let size = MIX_BATCH.min(growth - applied);
            // The clock moves on as at GROWTH_RATE events/s: a user's next event is later
            // than their last, as under real traffic.
            let at = now + (applied * 1_000 / GROWTH_RATE) as i64;
            let batch = mix.batch(size, at);
            store
                .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, at)
                .await?;
            applied += size;
        }
        let grown = database_size(&database.url).await? - before;
        println!(
            "<!-- {}: {} -->",
            backend_name(backend),
            table_sizes(&database.url).await
        );
        println!(
            "<!-- {}: {} -->",
            backend_name(backend),
            row_versions(&database.url).await
        );
        // The rebuild: the rest of BENCH_REBUILD spread evenly over the last 24 hours, applied
        // when they occurred (the newest now).
        let mut rebuilt = applied;
        while rebuilt < rebuild {
            let size = MIX_BATCH.min(rebuild - rebuilt);
            let at = now - DAY_MS + DAY_MS * rebuilt as i64 / rebuild as i64;
            let batch = mix.batch(size, at);
            store
                .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, at)
                .await?;
            rebuilt += size;
        }
        let mut best = f64::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            let input = store.load_restore(now, 3_600_000, chrono_tz::UTC).await?;
            best = best.min(started.elapsed().as_secs_f64());
            std::hint::black_box(input);
        }
        println!(
            "| {} | {applied} | {grown} | {:.1} | {rebuilt} | {:.0} |",
            backend_name(backend),
            grown as f64 / applied.max(1) as f64,
            best * 1e3
        );
        store.close().await;
    }
    Ok(())
}

/// What the sustained run does (see the header).
struct Sustain {
    secs: u64,
    rate: usize,
    window_secs: u64,
    sample_secs: u64,
}

/// One size sample of a sustained run.
struct Sample {
    at_secs: u64,
    bytes: i64,
    applied: usize,
    /// Events due by the schedule but not yet applied (the queue a leader would have).
    backlog: usize,
}

/// Every backend at once, each in a task of its own; prints each one's samples as they come,
/// and all of them side by side at the end.
async fn sustained(server: &PostgresServer, sustain: &Sustain) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for backend in backends_from_env() {
        let database = TestDatabase::create(server, backend, &unique_name("sustain")).await?;
        let plan = Sustain { ..*sustain };
        runs.push((
            backend,
            tokio::spawn(async move { sustain_one(backend, database, plan).await }),
        ));
    }
    let mut results = Vec::new();
    for (backend, run) in runs {
        results.push((backend, run.await??));
    }
    println!(
        "## Sustained load (release build; issue 28's mix at {} events/s for {} s, dedupe \
         window {} s, `Store::prune` every {PRUNE_EVERY_SECS} s)\n",
        sustain.rate, sustain.secs, sustain.window_secs
    );
    for (backend, (samples, after_stop)) in &results {
        println!("### {}\n", backend_name(*backend));
        println!("| s | growth (bytes) | applied | applied/s since the last sample | backlog |");
        println!("| ---: | ---: | ---: | ---: | ---: |");
        let mut last = (0, 0);
        for sample in samples {
            let rate = (sample.applied - last.1) as f64 / (sample.at_secs - last.0).max(1) as f64;
            println!(
                "| {} | {} | {} | {:.0} | {} |",
                sample.at_secs, sample.bytes, sample.applied, rate, sample.backlog
            );
            last = (sample.at_secs, sample.applied);
        }
        let peak = samples.iter().map(|s| s.backlog).max().unwrap_or(0);
        let applied = samples.last().map_or(0, |s| s.applied);
        println!(
            "\nAfter a clean stop: growth {after_stop} bytes; {applied} events applied \
             ({:.0}/s); largest backlog {peak} events.\n",
            applied as f64 / sustain.secs as f64
        );
    }
    Ok(())
}

/// How often the sustained run prunes, as the leader does (`PRUNE_EVERY` in ingest).
const PRUNE_EVERY_SECS: u64 = 60;
/// How often the sustained run applies what is due: at 2 000 events/s, batches of 200.
const SUSTAIN_TICK_MS: u64 = 100;
/// The most a sustained batch takes when it has fallen behind (the leader's batch limit).
const SUSTAIN_MAX_BATCH: usize = 2_000;

/// One backend's sustained run: the samples, and the growth after the store was closed.
async fn sustain_one(
    backend: Backend,
    database: TestDatabase,
    sustain: Sustain,
) -> anyhow::Result<(Vec<Sample>, i64)> {
    let store = Store::connect(&database.url.parse().map_err(anyhow::Error::msg)?)
        .await?
        .with_dedupe_window(std::time::Duration::from_secs(sustain.window_secs));
    store.migrate().await?;
    let started_ms = pulseboard::clock::now_ms();
    let ttl = (sustain.secs as i64 + 3_600) * 1_000;
    let lease: Lease = store
        .try_acquire_lease("bench", started_ms, ttl)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the lease is held"))?;
    let before = database_size(&database.url).await?;
    let started = Instant::now();
    let mut mix = Mix::default();
    let mut samples = Vec::new();
    let (mut applied, mut next_sample, mut next_prune) = (0, sustain.sample_secs, PRUNE_EVERY_SECS);
    let mut minute = started_ms - started_ms % 60_000;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(SUSTAIN_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        let due = (elapsed.as_secs_f64() * sustain.rate as f64) as usize;
        let now = pulseboard::clock::now_ms();
        if due > applied {
            let size = (due - applied).min(SUSTAIN_MAX_BATCH);
            let batch = mix.batch(size, now);
            store
                .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, now)
                .await?;
            applied += size;
        }
        // The leader's other writes: a minute's history point when it closes, and pruning
        // in the background, every minute.
        if now - minute >= 60_000 {
            store.close_minute(minute, 5_000).await?;
            minute = now - now % 60_000;
        }
        let secs = elapsed.as_secs();
        if secs >= next_prune {
            next_prune += PRUNE_EVERY_SECS;
            let store = store.clone();
            tokio::spawn(async move {
                if let Err(error) = store.prune(now).await {
                    eprintln!("prune failed: {error}");
                }
            });
        }
        if secs >= next_sample || secs >= sustain.secs {
            next_sample += sustain.sample_secs;
            let due = (started.elapsed().as_secs_f64() * sustain.rate as f64) as usize;
            let bytes = match database_size(&database.url).await {
                Ok(bytes) => bytes - before,
                // A 30-minute run is not lost to one busy checkpoint: the next sample tells.
                Err(error) => {
                    eprintln!(
                        "{}: size unknown at {secs} s: {error}",
                        backend_name(backend)
                    );
                    continue;
                }
            };
            let sample = Sample {
                at_secs: secs,
                bytes,
                applied,
                backlog: due.saturating_sub(applied),
            };
            eprintln!(
                "{} {:>5} s: growth {:>11} bytes, {} applied, backlog {}",
                backend_name(backend),
                sample.at_secs,
                sample.bytes,
                sample.applied,
                sample.backlog
            );
            samples.push(sample);
            if secs >= sustain.secs {
                break;
            }
        }
    }
    store.close().await;
    let after_stop = database_size(&database.url).await? - before;
    eprintln!(
        "{}: {}",
        backend_name(backend),
        table_sizes(&database.url).await
    );
    Ok((samples, after_stop))
}

/// The database's size on disk: SQLite's file and WAL once checkpointed, PostgreSQL's
/// `pg_database_size` after a checkpoint.
async fn database_size(url: &str) -> anyhow::Result<i64> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or_default();
        let pool = sqlx::AnyPool::connect(url).await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&pool)
            .await?;
        pool.close().await;
        let file = |p: &str| std::fs::metadata(p).map(|m| m.len() as i64).unwrap_or(0);
        Ok(file(path) + file(&format!("{path}-wal")))
    } else {
        let pool = sqlx::AnyPool::connect(url).await?;
        sqlx::query("CHECKPOINT").execute(&pool).await?;
        let row = sqlx::query("SELECT pg_database_size(current_database())")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        Ok(sqlx::Row::try_get(&row, 0)?)
    }
}

/// Bytes per table and index of the footprint's tables, where the backend tells (SQLite's
/// `dbstat` when compiled in).
async fn table_sizes(url: &str) -> String {
    let sql = if url.starts_with("sqlite:") {
        "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 6"
    } else {
        "SELECT CAST(c.relname AS TEXT), CAST(pg_relation_size(c.oid) AS BIGINT) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' \
         AND c.relkind IN ('r', 'i') AND pg_relation_size(c.oid) > 8192 ORDER BY 2 DESC"
    };
    let Ok(pool) = sqlx::AnyPool::connect(url).await else {
        return "no connection".into();
    };
    let sizes = match sqlx::query(sql).fetch_all(&pool).await {
        Ok(rows) => rows
            .iter()
            .map(|row| {
                let name: String = sqlx::Row::try_get(row, 0).unwrap_or_default();
                let bytes: i64 = sqlx::Row::try_get(row, 1).unwrap_or_default();
                format!("{name} {bytes}")
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(error) => format!("sizes unknown: {error}"),
    };
    pool.close().await;
    sizes
}

/// Row versions written and left behind per table (PostgreSQL's statistics; nothing on
/// SQLite, which rewrites rows in place).
async fn row_versions(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return "row versions: not kept".into();
    }
    let Ok(pool) = sqlx::AnyPool::connect(url).await else {
        return "no connection".into();
    };
    // The counters reach the statistics when the writing sessions end or flush: the store's
    // pool was open until just now.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let versions = sqlx::query(
        "SELECT CAST(relname AS TEXT), n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, \
         n_live_tup, n_dead_tup FROM pg_stat_user_tables \
         WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY n_tup_upd + n_tup_ins DESC",
    )
    .fetch_all(&pool)
    .await;
    let text = match versions {
        Ok(rows) => rows
            .iter()
            .map(|row| {
                let name: String = sqlx::Row::try_get(row, 0).unwrap_or_default();
                let n = |i| sqlx::Row::try_get::<i64, _>(row, i).unwrap_or_default();
                format!(
                    "{name} ins {} upd {} (hot {}) del {} live {} dead {}",
                    n(1),
                    n(2),
                    n(3),
                    n(4),
                    n(5),
                    n(6)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(error) => format!("row versions unknown: {error}"),
    };
    pool.close().await;
    text
}

const MIX_BATCH: usize = 1_000;
/// The event rate the growth run's clock follows (events of the mix per second).
const GROWTH_RATE: usize = 2_000;

/// Issue 28's mix: 90 % `user.active`, 8 % `order.placed`, 2 % `order.refunded`, 5 000 users.
#[derive(Default)]
struct Mix {
    next: u64,
}

impl Mix {
    fn batch(&mut self, size: usize, at: i64) -> Vec<Event> {
        (0..size)
            .map(|_| {
                self.next += 1;
                let n = self.next;
                let kind = match n % 50 {
                    0..=3 => EventKind::OrderPlaced {
                        amount_minor: 1_000 + (n % 5_000) as i64,
                    },
                    4 => EventKind::OrderRefunded {
                        amount_minor: 500 + (n % 1_000) as i64,
                    },
                    _ => EventKind::UserActive,
                };
                Event {
                    id: format!("evt-{}", uuid::Uuid::new_v4()),
                    kind,
                    // Up to a second late: events reach the leader soon after they occur.
                    occurred_at: at - (n % 1_000) as i64,
                    user_id: format!("u-{}", n % 5_000),
                }
            })
            .collect()
    }
}

/// What to time, from the environment.
struct Plan {
    prefill: usize,
    rounds: usize,
    duplicate_percent: usize,
    vary_sizes: bool,
    /// The earlier events applied over the last 24 hours, not all now.
    prefill_over_a_day: bool,
}

/// `seconds = per_commit + per_event × events`, fitted by least squares.
struct Fit {
    per_event: f64,
    per_commit: f64,
}

impl Fit {
    fn of(samples: &[(f64, f64)]) -> Fit {
        let n = samples.len() as f64;
        let mean_x = samples.iter().map(|s| s.0).sum::<f64>() / n;
        let mean_y = samples.iter().map(|s| s.1).sum::<f64>() / n;
        let covariance: f64 = samples
            .iter()
            .map(|(x, y)| (x - mean_x) * (y - mean_y))
            .sum();
        let variance: f64 = samples.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
        let per_event = covariance / variance;
        Fit {
            per_event,
            per_commit: mean_y - per_event * mean_x,
        }
    }
}

/// Events like `pulseboard simulate`'s: random ids, a few thousand users, recent times.
struct Generator {
    now: i64,
    next: u64,
}

impl Generator {
    fn new(now: i64) -> Self {
        Generator { now, next: 0 }
    }

    fn batch(&mut self, size: usize) -> Vec<Event> {
        (0..size).map(|_| self.event()).collect()
    }

    fn event(&mut self) -> Event {
        self.next += 1;
        let kind = match self.next % 4 {
            0 => EventKind::OrderPlaced {
                amount_minor: 1_000 + (self.next % 5_000) as i64,
            },
            _ => EventKind::UserActive,
        };
        Event {
            id: format!("evt-{}", uuid::Uuid::new_v4()),
            kind,
            occurred_at: self.now - (self.next % 60_000) as i64,
            user_id: format!("u-{}", self.next % 5_000),
        }
    }
}

fn unique_name(role: &str) -> String {
    format!(
        "bench_store_{}_{role}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} must be a whole number, not {text:?}")),
        Err(_) => Ok(default),
    }
}
