//! Ingest: RabbitMQ (or the demo's in-process queue) → decode → store → aggregate → snapshots.
//!
//! Every instance runs [`run`]. It competes for the database lease (`store::Lease`); the holder
//! becomes the leader ([`leader`]) that consumes, commits, acknowledges and publishes snapshots,
//! the others wait and serve what the leader fans out. Leadership ends on shutdown, on losing the
//! lease, or on a database error; the loop then tries again with backoff, and a new term always
//! starts by rebuilding the figures from the store.
//!
//! Boundaries: decoding is pure ([`decode`]); SQL lives in `store`; figures in `aggregate`.

pub mod batch_log;
pub mod broker;
pub mod decode;
mod leader;

use crate::aggregate::AggregateSettings;
use crate::clock::now_ms;
use crate::live::{fanout::FanoutSender, Hub};
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::store::Store;
use broker::{RawMessage, Topology};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a lease lasts without renewal: the bound on failover time, with [`LEASE_POLL`].
const LEASE_TTL_MS: i64 = 5_000;
/// How often followers try to take the lease, and leaders renew it when idle.
const LEASE_POLL: Duration = Duration::from_secs(1);

/// What ingest needs to know, fixed at start.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub node: String,
    pub amqp_url: String,
    pub topology: Topology,
    pub currency: String,
    pub aggregate: AggregateSettings,
    pub snapshot_interval: Duration,
    pub prefetch: u16,
    pub max_batch: usize,
    pub batch_linger: Duration,
    /// `serve --demo`: snapshots say `demo`.
    pub demo: bool,
    /// Demo traffic arrives through an in-process queue instead of RabbitMQ.
    pub local_demo: bool,
}

/// The live view of this instance's ingest, read by `/readyz`, snapshots and metrics.
#[derive(Debug, Clone, Default)]
pub struct IngestStatus {
    pub is_leader: bool,
    pub leader: Option<String>,
    /// The leader's consumer, or a follower's fan-out link, is connected.
    pub broker_connected: bool,
    pub local_demo: bool,
    pub paused: bool,
    pub last_error: Option<String>,
    pub database_error: Option<String>,
    pub lag_seconds: f64,
    pub dead_letters: u64,
    pub queue_depth: u64,
}

/// Shared, briefly locked status. A std mutex: nothing awaits while holding it.
#[derive(Debug, Default)]
pub struct StatusCell(Mutex<IngestStatus>);

impl StatusCell {
    pub fn get(&self) -> IngestStatus {
        self.lock().clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut IngestStatus)) {
        change(&mut self.lock());
    }

    fn lock(&self) -> MutexGuard<'_, IngestStatus> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Everything the ingest tasks share.
pub struct IngestContext {
    pub settings: IngestSettings,
    pub store: Store,
    pub hub: Hub,
    pub status: Arc<StatusCell>,
    pub metrics: Arc<Metrics>,
    pub fanout: FanoutSender,
}

/// What a leader reads besides the broker; kept across terms of leadership.
pub struct LeaderInputs {
    /// The demo's in-process queue, when there is no broker.
    pub local: Option<mpsc::Receiver<RawMessage>>,
    /// Requests to publish a snapshot now (`POST /api/dashboard/refresh`).
    pub refresh: mpsc::Receiver<()>,
}

/// Competes for the lease until `shutdown`; leads while holding it.
pub async fn run(
    context: Arc<IngestContext>,
    mut inputs: LeaderInputs,
    shutdown: CancellationToken,
) {
    let node = context.settings.node.clone();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    context
        .status
        .update(|s| s.local_demo = inputs.local.is_some());
    while !shutdown.is_cancelled() {
        let wait = match context
            .store
            .try_acquire_lease(&node, now_ms(), LEASE_TTL_MS)
            .await
        {
            Ok(Some(lease)) => {
                backoff.reset();
                tracing::info!(epoch = lease.epoch, "this node now leads ingest");
                let end = leader::lead(&context, lease, &mut inputs, &shutdown).await;
                context.metrics.leader.set(0);
                context.metrics.ingest_up.set(0);
                let database_error = match &end {
                    leader::LeadEnd::Database(error) => Some(error.to_string()),
                    _ => None,
                };
                context.status.update(|s| {
                    s.is_leader = false;
                    s.broker_connected = false;
                    // Readiness names the database, not the broker, when it ended the term.
                    s.database_error = database_error;
                });
                match end {
                    leader::LeadEnd::Shutdown => {
                        tracing::info!(reason = %end, "this node stopped leading ingest")
                    }
                    _ => tracing::warn!(reason = %end, "this node stopped leading ingest"),
                }
                LEASE_POLL
            }
            Ok(None) => {
                backoff.reset();
                let holder = context.store.lease_holder(now_ms()).await.ok().flatten();
                context.status.update(|s| {
                    s.database_error = None;
                    s.leader = holder;
                });
                LEASE_POLL
            }
            Err(error) => {
                tracing::warn!(%error, "database unavailable; retrying");
                context
                    .status
                    .update(|s| s.database_error = Some(error.to_string()));
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
