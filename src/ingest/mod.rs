//! Ingest: RabbitMQ (or the demo's in-process queue) → decode → store → aggregate → snapshots.
//!
//! Every instance runs [`run`]. It competes for the database lease (`store::Lease`); the holder
//! becomes the leader that consumes, commits, acknowledges and publishes snapshots,
//! the others wait and serve what the leader fans out. Leadership ends on shutdown, on losing the
//! lease, or on a database error; the loop then tries again with backoff, and a new term always
//! starts by rebuilding the figures from the store.
//!
//! Inside, one job per file: `term` runs a term of leadership (its loop, the lease, the
//! pause, minutes and pruning) over `pipeline` (gather → commit → acknowledge → apply, the
//! exactly-once order) and `publisher` (whether and what snapshot to publish, sequence numbers),
//! `batch` (what is gathered between commits and when it is due), `feed` (the RabbitMQ
//! consumer link or the demo's in-process queue) and `tail` (the console's sampled event tail).
//! An operator's pause (`store::Store::ingest_paused`) is read at the start of every term and
//! whenever the leader is told or a second passed: a paused leader consumes nothing.
//! Boundaries: decoding is pure ([`decode`]);
//! SQL lives in `store`; figures in `aggregate`; the broker plumbing in `rabbitmq`.

mod batch;
pub(crate) mod batch_log;
pub(crate) mod decode;
mod feed;
mod pipeline;
mod publisher;
mod tail;
mod term;
#[cfg(test)]
mod tests;

use crate::aggregate::AggregateSettings;
use crate::clock::now_ms;
use crate::core::Core;
use crate::rabbitmq::{RawMessage, Topology};
use crate::retry::Backoff;
use crate::store::StoreError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a lease lasts without renewal: the bound on failover time, with [`LEASE_POLL`].
const LEASE_TTL_MS: i64 = 5_000;
/// How often followers try to take the lease, and leaders renew it when idle.
const LEASE_POLL: Duration = Duration::from_secs(1);

/// What ingest needs to know, fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct IngestSettings {
    pub amqp_url: secrecy::SecretString,
    pub topology: Topology,
    pub currency: String,
    pub aggregate: AggregateSettings,
    pub snapshot_interval: Duration,
    pub prefetch: u16,
    pub max_batch: usize,
    /// The longest a batch waits after its first message when no snapshot tick cuts it first.
    pub batch_linger: Duration,
    /// `PULSEBOARD_DEDUPE_WINDOW_SECS`: events older than this are refused (`too_old`).
    pub dedupe_window_ms: i64,
    /// `serve --demo`: snapshots say `demo`.
    pub demo: bool,
    /// Demo traffic arrives through an in-process queue instead of RabbitMQ.
    pub local_demo: bool,
}

/// Everything the ingest tasks share: the core, and ingest's own settings.
pub(crate) struct IngestContext {
    pub core: Arc<Core>,
    pub settings: IngestSettings,
}

/// Why a term of leadership ended.
pub(super) enum LeadEnd {
    Shutdown,
    LostLease,
    Database(StoreError),
    /// The task committing a batch panicked.
    CommitTask(String),
}

impl fmt::Display for LeadEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeadEnd::Shutdown => f.write_str("shutting down"),
            LeadEnd::LostLease => f.write_str("lease lost to another node"),
            LeadEnd::Database(error) => write!(f, "{error}"),
            LeadEnd::CommitTask(error) => write!(f, "committing a batch failed: {error}"),
        }
    }
}

impl From<StoreError> for LeadEnd {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::LostLease => LeadEnd::LostLease,
            other => LeadEnd::Database(other),
        }
    }
}

/// What a leader reads besides the broker; kept across terms of leadership.
pub(crate) struct LeaderInputs {
    /// The demo's in-process queue, when there is no broker.
    pub local: Option<mpsc::Receiver<RawMessage>>,
    /// Requests to publish a snapshot now (`POST /api/dashboard/refresh`).
    pub refresh: mpsc::Receiver<()>,
}

/// Competes for the lease until `shutdown`; leads while holding it.
pub(crate) async fn run(
    context: Arc<IngestContext>,
    mut inputs: LeaderInputs,
    shutdown: CancellationToken,
) {
    let node = context.core.node.clone();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    context
        .core
        .status
        .update_ingest(|s| s.local_demo = inputs.local.is_some());
    while !shutdown.is_cancelled() {
        let wait = match context
            .core
            .store
            .try_acquire_lease(&node, now_ms(), LEASE_TTL_MS)
            .await
        {
            Ok(Some(lease)) => {
                backoff.reset();
                tracing::info!(epoch = lease.epoch, "this node now leads ingest");
                let end = match term::lead(&context, lease, &mut inputs, &shutdown).await {
                    LeadEnd::Database(error) => {
                        LeadEnd::Database(context.core.store.explain_timeout(error).await)
                    }
                    end => end,
                };
                context.core.metrics.leader.set(0);
                context.core.metrics.ingest_up.set(0);
                let database_error = match &end {
                    LeadEnd::Database(error) => Some(error.to_string()),
                    _ => None,
                };
                context.core.status.update_ingest(|s| {
                    s.is_leader = false;
                    s.term_connecting = false;
                    s.consumer.connected = false;
                    // Followers learn a pause from the leader's snapshots.
                    s.paused = false;
                    // Readiness names the database, not the broker, when it ended the term.
                    s.database_error = database_error;
                });
                match end {
                    LeadEnd::Shutdown => {
                        tracing::info!(reason = %end, "this node stopped leading ingest")
                    }
                    _ => tracing::warn!(reason = %end, "this node stopped leading ingest"),
                }
                LEASE_POLL
            }
            Ok(None) => {
                backoff.reset();
                let holder = context
                    .core
                    .store
                    .lease_holder(now_ms())
                    .await
                    .ok()
                    .flatten();
                context.core.status.update_ingest(|s| {
                    s.database_error = None;
                    s.leader = holder;
                });
                LEASE_POLL
            }
            Err(error) => {
                let error = context.core.store.explain_timeout(error).await;
                tracing::warn!(%error, "database unavailable; retrying");
                context
                    .core
                    .status
                    .update_ingest(|s| s.database_error = Some(error.to_string()));
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
