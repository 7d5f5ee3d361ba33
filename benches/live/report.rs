//! What a case gives, and how it is shown: the result row (`Row`, everything measured for one
//! client count and server) and the targets it is held to, whether its window was disturbed,
//! the machine lines printed first and the Markdown tables printed at the end (what
//! docs/benchmarks.md reports from). Formatting only: every figure is measured or computed before
//! it gets here.

use super::analysis::{SnapshotTimes, Summary};
use super::case::{Server, SNAPSHOT_INTERVAL_MS, WARM_UP};
use super::load::Published;
use crate::kit::cpu::{
    command_output, cpu_model, machine_cores, memory, open_file_limit, CpuTicks,
};
use std::time::Duration;

/// Target: p99 within one snapshot interval plus this.
const LATENCY_SLACK_MS: u64 = 50;
/// Target: resident memory per idle connection.
const MAX_KIB_PER_IDLE_CONNECTION: f64 = 20.0;
/// CPU of processes other than the service, this benchmark and RabbitMQ above this (% of one
/// core) during the window marks the figures as disturbed.
const DISTURBED_OTHER: f64 = 10.0;

/// Everything measured for one client count and server.
pub(super) struct Row {
    pub(super) clients: usize,
    pub(super) server: Server,
    pub(super) opened: u64,
    pub(super) connect_seconds: f64,
    pub(super) connect_retries: u64,
    pub(super) rss_before_kib: u64,
    pub(super) rss_idle_kib: u64,
    pub(super) rss_loaded_kib: u64,
    pub(super) bench_rss_per_client_kib: f64,
    pub(super) published: Published,
    pub(super) window_seconds: f64,
    pub(super) oldest: Summary,
    pub(super) newest: Summary,
    pub(super) every: Summary,
    /// Every order (sampled), from its arrival at the service to its first snapshot at a client.
    pub(super) every_from_arrival: Summary,
    /// Orders in the window whose arrival the service's log did not give (should stay 0).
    pub(super) arrival_unknown: u64,
    /// Mean publish → arrival at the service, ms, from the log's arrivals.
    pub(super) transit_from_log_mean: f64,
    /// Snapshot `generated_at` → client receipt, per snapshot per client.
    pub(super) fanout: Summary,
    pub(super) snapshots: SnapshotTimes,
    pub(super) snapshots_per_second: f64,
    pub(super) client_skipped: u64,
    pub(super) unmapped: u64,
    pub(super) server_latency: String,
    /// Means over the window from the service's histograms, ms: broker transit
    /// (`event_age`: arrival − occurred_at) and arrival → write (`delivery_latency`, sse).
    pub(super) event_age_mean: f64,
    pub(super) server_delivery_mean: f64,
    /// Over the window: the service and the baseline watched, the client threads named.
    pub(super) cpu: CpuTicks,
    pub(super) coalesced: u64,
    pub(super) slow_disconnects: u64,
    pub(super) lost: u64,
    pub(super) caught_up: u64,
    pub(super) stop_seconds: f64,
    pub(super) quiet: bool,
    /// The busiest other processes during the window.
    pub(super) others: String,
    /// Which run of this case this is (earlier ones were disturbed).
    pub(super) attempts: u32,
}

impl Row {
    /// Other processes used the machine during the window: the figures are not this setup's.
    pub(super) fn disturbed(&self) -> bool {
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

pub(super) fn print_machine() {
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

/// The tables of the rows so far, for a load of `rate` orders a second for `load`.
pub(super) fn print_tables(rate: u64, load: Duration, rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    let target_ms = SNAPSHOT_INTERVAL_MS + LATENCY_SLACK_MS;
    println!(
        "## Live delivery (release build, {} orders/s for {} s, snapshot interval {SNAPSHOT_INTERVAL_MS} ms)",
        rate,
        load.as_secs()
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
        (load - WARM_UP).as_secs()
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
         seconds of: the service; the bare server process (no-ack consumer of every event, one \
         write per client per tick, nothing stored); both, the service then only ingesting and \
         feeding the bare server one stream). Ratio: the service's figure ÷ the bare server's \
         of the same client count"
    );
    println!();
    println!("| clients | service | bare server process | service + bare server | ratio |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let per_cpu_second = |row: &Row, ticks: u64| {
        let cores = row.cpu.percent(ticks) / 100.0;
        (cores > 0.0).then(|| row.snapshots_per_second / cores)
    };
    let shown = |rate: Option<f64>| rate.map_or_else(|| "–".to_owned(), |r| format!("{r:.0}"));
    let bare_of = |clients: usize| {
        rows.iter()
            .find(|r| r.clients == clients && r.server == Server::Bare)
            .and_then(|r| per_cpu_second(r, r.cpu.watched[1]))
    };
    for row in rows {
        let watched = row.cpu.watched;
        let (service, bare, both, ratio) = match row.server {
            Server::Pulseboard => {
                let service = per_cpu_second(row, watched[0]);
                let ratio = service
                    .zip(bare_of(row.clients))
                    .map_or_else(|| "–".to_owned(), |(s, b)| format!("{:.2}", s / b));
                (shown(service), "–".into(), "–".into(), ratio)
            }
            Server::Bare => (
                "–".into(),
                shown(per_cpu_second(row, watched[1])),
                shown(per_cpu_second(row, watched[0] + watched[1])),
                "–".into(),
            ),
        };
        println!("| {} | {service} | {bare} | {both} | {ratio} |", row.case());
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
