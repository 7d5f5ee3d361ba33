//! What one case is made of, below every other part of the benchmark: who serves the clients
//! (`Server`), the snapshot interval and warm-up that shape the load and its measurement window,
//! and the state the publisher, the clients and the driver share while the case runs (`Shared`:
//! one clock, the window, the orders' publish instants, every client's receipts, the clients'
//! counters). It only holds that state: the clients fill it (`clients`), the publisher too
//! (`load`), and `analysis` reads it after the load; `clients` and `analysis` add the `impl
//! Shared` methods of their own job.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The service's default coalescing tick (docs/api.md, Configuration), stated explicitly.
pub(super) const SNAPSHOT_INTERVAL_MS: u64 = 250;
/// Latency samples of orders published in the first seconds of the load are left out.
pub(super) const WARM_UP: Duration = Duration::from_secs(5);
/// Room reserved for each client's receipts (about 4 a second for the run; it grows if needed).
const RECEIPTS_PER_CLIENT: usize = 160;
/// Snapshot seqs tracked for generation and fan-out times (a fresh database starts at 1).
pub(super) const SEQS: usize = 65_536;

/// Who writes the snapshots to the clients.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Server {
    /// The service's own SSE stream.
    Pulseboard,
    /// The baseline: the service's snapshots relayed by `bare::BareFanout`, one `write` per client.
    Bare,
}

impl Server {
    pub(super) fn label(self) -> &'static str {
        match self {
            Server::Pulseboard => "pulseboard",
            Server::Bare => "bare fan-out",
        }
    }
}

/// State shared by the publisher, the clients and the driver of one case. Times are
/// microseconds since `base`.
pub(super) struct Shared {
    base: Instant,
    /// Publish instant of order k (1-based), 0 while not published.
    pub(super) published_at: Vec<AtomicU64>,
    pub(super) load_started: AtomicBool,
    pub(super) load_start_us: AtomicU64,
    /// Measurement window: snapshots received and orders published in it count.
    pub(super) window_start_us: AtomicU64,
    pub(super) window_end_us: AtomicU64,
    /// Wall clock at `base`, µs since the Unix epoch, to place `generated_at` on our clock.
    pub(super) base_wall_us: i64,
    /// Per snapshot seq: `generated_at` (0: not seen yet).
    pub(super) generated_us: Vec<AtomicU64>,
    pub(super) opened: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) lost: AtomicU64,
    pub(super) stopping: AtomicBool,
    /// Revenue of the last snapshot each client received.
    pub(super) last_seen: Vec<AtomicU64>,
    /// Per client, every snapshot it received, in order. Clients only append here (their own
    /// lock, never contended); every latency is computed from it after the load, so that the
    /// clients spend as little CPU as possible beside the service.
    pub(super) receipts: Vec<Mutex<Vec<Receipt>>>,
    error: Mutex<Option<String>>,
}

impl Shared {
    pub(super) fn new(clients: usize, capacity: usize) -> Shared {
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

    pub(super) fn now_us(&self) -> u64 {
        // Never 0, which means "not yet" in `published_at`.
        (self.base.elapsed().as_micros() as u64).max(1)
    }

    pub(super) fn instant_at(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }

    pub(super) fn in_window(&self, us: u64) -> bool {
        us >= self.window_start_us.load(Ordering::Acquire)
            && us < self.window_end_us.load(Ordering::Acquire)
    }

    pub(super) fn note_error(&self, error: String) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(error);
    }

    pub(super) fn first_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One snapshot as a client received it: which one, the orders it includes (1..=revenue), when.
#[derive(Clone, Copy)]
pub(super) struct Receipt {
    pub(super) seq: u64,
    pub(super) revenue: u64,
    pub(super) at: u64,
}
