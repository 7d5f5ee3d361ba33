//! What the records of a case say, computed once after the load: from the clients' receipts
//! and the orders' publish instants in `Shared`, and the orders' arrivals from the service's log
//! of committed batches, the latency histograms (1 ms buckets) and their summaries, how the
//! service produced snapshots during the window; from two scrapes of `/metrics`, the service's
//! own latency and the means of its histograms over the window. Pure arithmetic on what was
//! recorded: no I/O, nothing printed (`report` does that).

use super::case::{Receipt, Shared, SEQS};
use crate::kit::metrics::metric_value;
use pulseboard::for_benchmarks::CommittedBatch;
use std::sync::atomic::{AtomicU64, Ordering};

/// Orders whose number is a multiple of this are followed to every client ("every order").
const ORDER_SAMPLE: u64 = 50;
/// Latency histogram: 1 ms buckets up to 10 s; the last bucket holds everything above.
const BUCKETS: usize = 10_001;

impl Shared {
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

    /// Arrival at the service of order k (1-based, on this clock; 0 if unknown), from its log of
    /// committed batches (`src/ingest/batch_log.rs`). Every event is an order of one minor
    /// unit and batches commit one at a time in delivery order, so the batches' event counts
    /// number the orders; within a batch, arrival times are spread evenly between its first and
    /// last arrival. Also returns how many events the lines count, which must be every order
    /// confirmed.
    pub(super) fn arrivals_from_log(&self, batches: &[CommittedBatch]) -> (Vec<u64>, u64) {
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
    pub(super) fn analyse(&self, arrived_at: &[u64]) -> Analysis {
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
    pub(super) fn transit_from_log(&self, arrived_at: &[u64]) -> f64 {
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
}

#[derive(Default)]
pub(super) struct Analysis {
    pub(super) oldest: Histogram,
    pub(super) newest: Histogram,
    /// Every order (sampled), from its publication to its first snapshot at each client.
    pub(super) every: Histogram,
    /// The same orders, from their arrival at the service.
    pub(super) every_from_arrival: Histogram,
    pub(super) arrival_unknown: u64,
    /// Snapshot `generated_at` → client receipt.
    pub(super) fanout: Histogram,
    pub(super) snapshots: SnapshotTimes,
    pub(super) window_snapshots: u64,
    /// Snapshot seqs a client never saw (coalesced for it, or lost), in the window.
    pub(super) window_skipped: u64,
    /// Snapshots whose revenue did not name a published order (should stay 0).
    pub(super) unmapped: u64,
}

/// How the service produced snapshots during the window, in ms.
#[derive(Clone, Copy, Default)]
pub(super) struct SnapshotTimes {
    pub(super) per_second: f64,
    /// Between consecutive `generated_at`s: the tick, stretched when the leader is late.
    pub(super) gap_median: f64,
    pub(super) gap_max: f64,
    /// `generated_at` → the first / the last client that received it.
    pub(super) first_median: f64,
    pub(super) last_median: f64,
    pub(super) last_max: f64,
}

/// Fixed 1 ms buckets: exact enough for p50/p99, filled after the load from the receipts.
pub(super) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

/// Percentiles in ms (upper edge of the 1 ms bucket); max exact to the microsecond.
#[derive(Clone, Copy, Default)]
pub(super) struct Summary {
    pub(super) count: u64,
    pub(super) p50: u64,
    pub(super) p99: u64,
    pub(super) max: f64,
    pub(super) mean: f64,
}

impl Summary {
    /// `p50 / p99 / max ms`, as the tables and the progress line print it.
    pub(super) fn spread(&self) -> String {
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

    pub(super) fn summary(&self) -> Summary {
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

/// Mean of histogram `name` (seconds) between two scrapes, in ms; NaN without samples.
pub(super) fn metric_mean(before: &str, after: &str, name: &str, label: &str) -> f64 {
    let sum = format!("{name}_sum");
    let count = format!("{name}_count");
    let samples = metric_value(after, &count, label) - metric_value(before, &count, label);
    (metric_value(after, &sum, label) - metric_value(before, &sum, label)) * 1_000.0 / samples
}

/// The service's own view over the window: p50/p99 upper bucket bounds of
/// `pulseboard_delivery_latency_seconds{transport="sse"}` (arrival → write of the snapshot).
pub(super) fn server_latency(before: &str, after: &str) -> String {
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
