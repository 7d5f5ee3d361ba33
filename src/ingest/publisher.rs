//! A term's snapshots: what ingest looks like (`IngestView`), whether anything changed since
//! the last snapshot, the sequence numbers (reserved from the store in blocks), and handing a
//! snapshot to this instance's hub, the gauges and the other instances (with a rebroadcast for
//! followers that joined late).
//!
//! The term (`term`) says when to publish; this file decides whether and what.

use super::pipeline::Landed;
use super::{IngestContext, LeadEnd};
use crate::aggregate::compare::Comparison;
use crate::aggregate::{Figures, Millis, Trust};
use crate::clock::now_ms;
use crate::live::{IngestState, IngestView, Snapshot, SnapshotContext, SnapshotFrame};
use crate::store::StoreError;
use std::time::Duration;
use tokio::time::Instant;

/// Snapshot sequence numbers reserved per database round trip. The last of each block is kept
/// for the snapshot that says the database fails (see [`Publisher::take_seq`]).
const SEQ_BLOCK: i64 = 1_000;
/// Followers that joined late get the current snapshot within this interval.
const REBROADCAST: Duration = Duration::from_secs(1);
/// An idle leader moves `complete_through` up to now once it lags by more than this: a quiet
/// night publishes a snapshot this often, not at every tick.
const IDLE_STEP_MS: Millis = 10_000;

/// What was last published, to publish only on change.
#[derive(PartialEq)]
struct Published {
    figures: Figures,
    state: IngestState,
    dead_letters: u64,
    context: SnapshotContext,
}

impl Published {
    fn of(figures: Figures, view: &IngestView, context: &SnapshotContext) -> Published {
        Published {
            figures,
            state: view.state,
            dead_letters: view.dead_letters,
            context: context.clone(),
        }
    }
}

/// What the term knows beyond the figures of the moment, for the next snapshot.
pub(super) struct Beyond {
    pub(super) comparison: Comparison,
    pub(super) trust: Trust,
}

/// How ingest stands, as the next snapshot says it.
#[derive(Clone, Copy)]
pub(super) struct Standing {
    pub(super) connected: bool,
    pub(super) paused: bool,
}

pub(super) struct Publisher {
    next_seq: i64,
    seq_end: i64,
    published: Option<Published>,
    last_broadcast: Instant,
    oldest_unpublished_arrival: Option<Millis>,
    lag_seconds: f64,
    /// The database error that ends this term, for its last snapshot.
    database_failure: Option<String>,
    /// Every event that reached this leader before this instant is in the figures: the
    /// arrival of the newest event of the last batch applied; the term's start before any
    /// (what was committed before it, the term rebuilt from the store).
    complete_through: Millis,
}

impl Publisher {
    /// Reserves the term's first block of sequence numbers now, so that a term that started
    /// can always say the database failed.
    pub(super) async fn start(context: &IngestContext) -> Result<Publisher, StoreError> {
        let next_seq = context.core.store.reserve_seq(SEQ_BLOCK).await?;
        Ok(Publisher {
            next_seq,
            seq_end: next_seq + SEQ_BLOCK - 1,
            published: None,
            last_broadcast: Instant::now(),
            oldest_unpublished_arrival: None,
            lag_seconds: 0.0,
            database_failure: None,
            complete_through: now_ms(),
        })
    }

    /// The leader holds nothing uncommitted and, as last polled, nothing waits in the queue:
    /// every event that reached it is in the figures, up to `now`. Moves `complete_through`
    /// only when it lags by more than [`IDLE_STEP_MS`], so that idling does not publish a
    /// snapshot per tick (docs/live.md, How far the figures are complete).
    pub(super) fn idle(&mut self, now: Millis) {
        self.complete_through = idle_complete_through(self.complete_through, now);
    }

    /// Takes in what a committed batch changed: the next snapshot's delivery latency and lag.
    pub(super) fn landed(&mut self, context: &IngestContext, landed: Landed) {
        if let Some(arrival) = landed.oldest_arrival {
            self.oldest_unpublished_arrival = Some(
                self.oldest_unpublished_arrival
                    .map_or(arrival, |o| o.min(arrival)),
            );
        }
        if let Some(arrival) = landed.newest_arrival {
            self.complete_through = self.complete_through.max(arrival);
        }
        if let Some(occurred) = landed.newest_occurred {
            self.lag_seconds = (now_ms() - occurred).max(0) as f64 / 1000.0;
            let lag = self.lag_seconds;
            context.core.status.update_ingest(|s| s.lag_seconds = lag);
        }
    }

    /// Publishes a snapshot if the figures or the ingest state changed since the last one, or
    /// when `force`d (a refresh request); rebroadcasts the latest one now and then.
    pub(super) async fn publish_if_changed(
        &mut self,
        context: &IngestContext,
        now: Millis,
        figures: Figures,
        beyond: Beyond,
        standing: Standing,
        force: bool,
    ) -> Result<(), LeadEnd> {
        let view = self.ingest_view(context, standing);
        let snapshot_context = SnapshotContext {
            comparison: beyond.comparison,
            trust: beyond.trust,
            complete_through: self.complete_through,
            queue_depth: Self::queue_depth(context),
        };
        let unchanged =
            self.published.as_ref() == Some(&Published::of(figures, &view, &snapshot_context));
        if force || !unchanged {
            let seq = self.take_seq(context).await?;
            self.publish(context, seq, now, figures, view, snapshot_context);
        }
        if self.last_broadcast.elapsed() >= REBROADCAST {
            if let Some(frame) = context.core.hub.latest_frame() {
                context.core.fanout.send(frame);
            }
            self.last_broadcast = Instant::now();
        }
        Ok(())
    }

    /// Publishes the term's last snapshot, saying ingest is `disconnected` because of `error`:
    /// nothing else would tell the dashboards (and the other instances) that the figures stand
    /// still. Its number is the block's last, kept for it: the database cannot reserve one now.
    pub(super) fn say_database_failed(
        &mut self,
        context: &IngestContext,
        figures: Figures,
        error: &StoreError,
    ) {
        self.database_failure = Some(error.to_string());
        let seq = self.next_seq;
        self.next_seq += 1;
        let standing = Standing {
            connected: false,
            paused: false,
        };
        let view = self.ingest_view(context, standing);
        let snapshot_context = self
            .published
            .as_ref()
            .map(|p| p.context.clone())
            .unwrap_or_default();
        self.publish(context, seq, now_ms(), figures, view, snapshot_context);
    }

    /// Publishes snapshot `seq`: to this instance's hub, its gauges and the other instances.
    fn publish(
        &mut self,
        context: &IngestContext,
        seq: i64,
        now: Millis,
        figures: Figures,
        view: IngestView,
        snapshot_context: SnapshotContext,
    ) {
        let core = &context.core;
        let currency = &context.settings.currency;
        let snapshot = Snapshot::new(
            seq,
            now,
            &core.node,
            &figures,
            currency,
            view.clone(),
            &snapshot_context,
        );
        self.published = Some(Published::of(figures, &view, &snapshot_context));
        core.record_snapshot(&snapshot);
        let frame = SnapshotFrame::new(snapshot, self.oldest_unpublished_arrival.take());
        core.hub.publish(frame.clone());
        core.fanout.send(frame);
        self.last_broadcast = Instant::now();
    }

    /// The next snapshot's sequence number. The block's last one is never handed out here: it
    /// is kept for the snapshot that says the database failed ([`Publisher::say_database_failed`]).
    async fn take_seq(&mut self, context: &IngestContext) -> Result<i64, LeadEnd> {
        if self.next_seq >= self.seq_end {
            self.next_seq = context.core.store.reserve_seq(SEQ_BLOCK).await?;
            self.seq_end = self.next_seq + SEQ_BLOCK - 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Messages waiting in `<prefix>.events`, as last polled.
    pub(super) fn queue_depth(context: &IngestContext) -> u64 {
        context.core.status.get().fanout.queue_depth
    }

    fn ingest_view(&self, context: &IngestContext, standing: Standing) -> IngestView {
        let status = context.core.status.get();
        let (state, reason) = if let Some(error) = &self.database_failure {
            let reason = format!("the database failed: {error}");
            (IngestState::Disconnected, Some(reason))
        } else if standing.paused {
            (IngestState::Paused, None)
        } else if !standing.connected {
            let reason = match &status.ingest.consumer.last_error {
                Some(error) => format!("not connected to RabbitMQ: {error}"),
                None => "not connected to RabbitMQ yet".to_owned(),
            };
            (IngestState::Disconnected, Some(reason))
        } else if context.settings.demo {
            (IngestState::Demo, None)
        } else {
            (IngestState::Running, None)
        };
        IngestView {
            state,
            leader: Some(context.core.node.clone()),
            lag_seconds: self.lag_seconds,
            dead_letters: status.fanout.dead_letters,
            reason,
        }
    }
}

/// `complete_through` of an idle leader at `now` (see [`Publisher::idle`]).
fn idle_complete_through(complete_through: Millis, now: Millis) -> Millis {
    if now - complete_through > IDLE_STEP_MS {
        now
    } else {
        complete_through
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_leader_moves_complete_through_to_now_in_steps_of_more_than_ten_seconds() {
        let last_event = 1_800_000_000_000;
        // Within the step: it stays, so an idle tick changes no snapshot.
        assert_eq!(
            idle_complete_through(last_event, last_event + 9_000),
            last_event
        );
        assert_eq!(
            idle_complete_through(last_event, last_event + IDLE_STEP_MS),
            last_event
        );
        // Beyond it: complete up to now; two hours of quiet read as current, not as a stall.
        let later = last_event + 2 * 3_600_000;
        assert_eq!(idle_complete_through(last_event, later), later);
        // Never backwards.
        assert_eq!(idle_complete_through(later, later - 60_000), later);
    }
}
