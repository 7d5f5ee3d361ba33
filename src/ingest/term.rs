//! One term of leadership: the loop that drives the commit pipeline (`pipeline`) and the
//! snapshots (`publisher`), and the leader's chores on every tick: renewing the lease,
//! following an operator's pause, closing finished minutes, pruning.
//!
//! A single task owns the aggregator, so no lock guards it. It waits on the next message, the
//! batch being committed, the end of the batching linger, and the snapshot tick. A batch is
//! due when full, when its linger has passed, or at the tick: each tick cuts the batch being
//! gathered, and the tick's snapshot goes out once everything gathered before the tick has
//! landed, so a snapshot holds every event that arrived before its tick. With a linger shorter
//! than the interval (`startup`: four fifths), a steady stream commits twice a tick, and the
//! snapshot waits only for the commit of what arrived since the first. The commit runs in
//! a task of its own while the next batch is gathered and decoded, so the database never
//! waits for the broker and the broker (up to `prefetch` messages ahead) never waits for the
//! database. The next batch, when due, starts committing as soon as the one before it lands,
//! before that one's acknowledgement goes out, unless it may hold late events: those are
//! judged against figures that include every batch before (`Aggregator::judge`). For the same
//! reason everything gathered lands before a minute is closed: the closed point includes every
//! event that arrived while it was open.
//!
//! Failure handling: a lost broker drops the uncommitted batch (the broker redelivers it) and
//! reconnects with backoff while snapshots go on; a lost lease or a database error ends the term.

use super::batch::Batch;
use super::feed::{report_link, BrokerFeed, Feed, FeedItem};
use super::pipeline::{Landed, Pipeline};
use super::publisher::{Beyond, Publisher, Standing};
use super::{IngestContext, LeadEnd, LeaderInputs, LEASE_POLL};
use crate::aggregate::compare::{Baselines, Bases};
use crate::aggregate::{minute_of, Aggregator, Millis};
use crate::clock::now_ms;
use crate::store::{Applied, Lease, StoreError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Leads one term: from the rebuild of the figures to the release of the lease on shutdown.
pub(super) async fn lead(
    context: &IngestContext,
    lease: Lease,
    inputs: &mut LeaderInputs,
    shutdown: &CancellationToken,
) -> LeadEnd {
    let refresh = &mut inputs.refresh;
    let mut feed = match inputs.local.as_mut() {
        Some(receiver) => Feed::Local(receiver),
        None => Feed::Broker(Box::new(BrokerFeed::new())),
    };
    let end = match Term::start(context, lease.clone()).await {
        Ok(mut term) => term.run(&mut feed, refresh, shutdown).await,
        Err(end) => end,
    };
    feed.close().await;
    if matches!(end, LeadEnd::Shutdown) {
        // Hand over at once instead of making the next leader wait for the lease to expire.
        if let Err(error) = context.core.store.release_lease(&lease).await {
            tracing::warn!(%error, "could not release the ingest lease");
        }
    }
    end
}

struct Term<'a> {
    context: &'a IngestContext,
    lease: Lease,
    aggregator: Aggregator,
    pipeline: Pipeline,
    publisher: Publisher,
    last_renewed: Instant,
    current_minute: Millis,
    last_prune: Instant,
    /// An operator paused ingest (stored; cluster-wide): nothing is consumed meanwhile.
    paused: bool,
    last_pause_check: Instant,
    /// A refresh was asked for since the last tick: the next tick publishes even without a
    /// change. Requests never publish themselves, so a flood of them still makes at most one
    /// snapshot per tick.
    refresh_asked: bool,
    /// The last tick's snapshot, while the batches holding what was gathered before it commit.
    snapshot_due: Option<SnapshotDue>,
    /// The history the comparisons sum over, read once at the start and then a minute at a
    /// time as minutes close: no snapshot asks the database.
    baselines: Baselines,
    /// The minute `comparison` is of.
    compared_minute: Millis,
    /// Yesterday's and last week's figures for `compared_minute`, computed when it changes or
    /// a late event revises a minute they sum over; every snapshot meanwhile interpolates
    /// within the compared minute (`Bases::at`).
    comparison: Bases,
}

impl<'a> Term<'a> {
    async fn start(context: &'a IngestContext, lease: Lease) -> Result<Term<'a>, LeadEnd> {
        let settings = &context.settings;
        let store = &context.core.store;
        let now = now_ms();
        let horizon = Aggregator::new(settings.aggregate.clone()).restore_horizon_ms();
        // A database another version migrated (or one restored from before this version's
        // migrations) is refused with one line rather than led with wrong figures.
        store.check_schema().await?;
        // Order rows a migration staged, should an instance have stopped half-way through.
        store.digest_staged_orders().await?;
        let started = std::time::Instant::now();
        let restore = store
            .load_restore(now, horizon, settings.aggregate.timezone)
            .await?;
        tracing::info!(
            users = restore.users.len(),
            recent_orders = restore.recent_orders.len(),
            load_ms = started.elapsed().as_millis() as u64,
            "rebuilt the live figures from the store"
        );
        let mut aggregator = Aggregator::restore(settings.aggregate.clone(), restore);
        // The minutes before this one were closed and published by the term before.
        aggregator.close_minutes_before(minute_of(now));
        // A new leader honours a pause made under the one before it.
        let paused = store.ingest_paused().await?;
        let publisher = Publisher::start(context).await?;
        if paused {
            tracing::info!("ingest is paused by an operator; not consuming");
        }
        context.core.metrics.leader.set(1);
        context.core.status.update_ingest(|s| {
            s.paused = paused;
            s.is_leader = true;
            s.term_connecting = !settings.local_demo;
            s.leader = Some(context.core.node.clone());
            s.database_error = None;
        });
        let mut baselines = Baselines::new(settings.aggregate.timezone);
        // Not essential either: without them the term starts with none and reads next minute.
        let comparison = match load_baselines(store, &mut baselines, now).await {
            Ok(()) => baselines.compare(now),
            Err(error) => {
                tracing::warn!(%error, "could not read the history for the comparisons; \
                    reading again next minute");
                Bases::default()
            }
        };
        Ok(Term {
            baselines,
            compared_minute: minute_of(now),
            comparison,
            context,
            pipeline: Pipeline::new(context, lease.clone()),
            lease,
            aggregator,
            publisher,
            last_renewed: Instant::now(),
            current_minute: minute_of(now),
            last_prune: Instant::now(),
            paused,
            last_pause_check: Instant::now(),
            refresh_asked: false,
            snapshot_due: None,
        })
    }

    async fn run(
        &mut self,
        feed: &mut Feed<'_>,
        refresh: &mut mpsc::Receiver<()>,
        shutdown: &CancellationToken,
    ) -> LeadEnd {
        let mut tick = tokio::time::interval(self.context.settings.snapshot_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.paused {
            feed.suspend().await;
        }
        feed.maybe_connect(self.context);
        let result: Result<(), LeadEnd> = async {
            loop {
                let linger = self.pipeline.linger_deadline();
                let idle = !self.pipeline.is_committing();
                let may_gather = self.pipeline.has_room() && !self.paused;
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        // Commit and acknowledge what was already received, then stop.
                        self.flush(feed).await?;
                        return Err(LeadEnd::Shutdown);
                    }
                    committed = self.pipeline.committed() => self.on_committed(committed, feed).await?,
                    item = feed.next(), if may_gather => {
                        self.on_feed(item, feed).await;
                        if !self.pipeline.is_committing() && self.pipeline.gathering_is_due() {
                            self.start_commit(feed).await;
                        }
                    }
                    _ = sleep_until(linger), if linger.is_some() && idle => {
                        self.start_commit(feed).await
                    }
                    _ = tick.tick() => self.on_tick(feed).await?,
                    Some(()) = refresh.recv() => self.refresh_asked = true,
                }
                self.publish_when_settled(feed).await?;
            }
        }
        .await;
        self.pipeline.settle().await;
        match result {
            Ok(()) => LeadEnd::Shutdown,
            Err(LeadEnd::Database(error)) => {
                let figures = self.aggregator.figures(now_ms());
                self.publisher
                    .say_database_failed(self.context, figures, &error);
                LeadEnd::Database(error)
            }
            Err(end) => end,
        }
    }

    /// A batch's commit returned: acknowledge and apply it, and keep the database busy.
    async fn on_committed(
        &mut self,
        committed: Result<(Batch, Applied), LeadEnd>,
        feed: &mut Feed<'_>,
    ) -> Result<(), LeadEnd> {
        // Keep the database busy: the next batch starts committing before this one is
        // acknowledged and applied. Its acknowledgement still follows this one's, and which
        // of its events are new is the database's answer.
        if committed.is_ok() && self.pipeline.gathering_may_commit_early(&self.aggregator) {
            self.start_commit(feed).await;
        }
        let landed = self
            .pipeline
            .on_committed(self.context, &mut self.aggregator, committed, feed)
            .await?;
        self.land(landed);
        if self.pipeline.gathering_is_due() {
            self.start_commit(feed).await;
        }
        Ok(())
    }

    async fn start_commit(&mut self, feed: &mut Feed<'_>) {
        self.pipeline
            .start_commit(self.context, &mut self.aggregator, feed)
            .await
    }

    /// A commit landed: fenced by the lease, it renewed it as well.
    fn land(&mut self, landed: Landed) {
        self.last_renewed = Instant::now();
        let mut revised = false;
        for (minute, tally) in &landed.late_tallies {
            revised |= self
                .baselines
                .revise(*minute, tally.orders, tally.revenue_minor);
        }
        if revised {
            self.comparison = self.baselines.compare(self.compared_minute);
        }
        self.publisher.landed(self.context, landed);
    }

    /// Commits, acknowledges and applies everything received so far.
    async fn flush(&mut self, feed: &mut Feed<'_>) -> Result<(), LeadEnd> {
        let landed = self
            .pipeline
            .flush(self.context, &mut self.aggregator, feed)
            .await?;
        self.land(landed);
        Ok(())
    }

    async fn on_feed(&mut self, item: FeedItem, feed: &mut Feed<'_>) {
        match item {
            FeedItem::Message(message) => {
                self.pipeline
                    .gather(self.context, &mut self.aggregator, message, feed)
                    .await
            }
            FeedItem::Connected => {
                tracing::info!("consuming from RabbitMQ");
                report_link(&self.context.core, true, None);
            }
            FeedItem::Lost(error) => {
                tracing::warn!(%error, "lost RabbitMQ; reconnecting with backoff");
                // Unacknowledged messages of the lost channel come back from the broker.
                self.pipeline.drop_gathering(&mut self.aggregator);
                report_link(&self.context.core, false, Some(error));
            }
        }
    }

    async fn on_tick(&mut self, feed: &mut Feed<'_>) -> Result<(), LeadEnd> {
        let now = now_ms();
        if self.last_renewed.elapsed() >= LEASE_POLL {
            self.context
                .core
                .store
                .renew_lease(&self.lease, now)
                .await?;
            self.last_renewed = Instant::now();
        }
        let refresh = std::mem::take(&mut self.refresh_asked);
        // A pause or resume is announced as a refresh: read the flag before publishing.
        if refresh || self.last_pause_check.elapsed() >= LEASE_POLL {
            self.check_pause(feed).await?;
        }
        feed.maybe_connect(self.context);
        self.close_finished_minutes(now, feed).await?;
        self.compare_anew(now).await;
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.prune(now);
        }
        // The snapshot of this tick includes everything gathered before it: the batch being
        // gathered commits now (or right after the one in flight), and the snapshot follows
        // its landing. Between ticks a batch waits to be full or for its linger, so a steady
        // stream commits a few times a tick, not once every few milliseconds.
        let mark = self.pipeline.cut();
        if !self.pipeline.is_committing() {
            self.start_commit(feed).await;
        }
        let (late, due) = SnapshotDue::at_tick(self.snapshot_due.take(), mark, refresh);
        self.snapshot_due = Some(due);
        if let Some(refresh) = late {
            self.publish(refresh, feed).await?;
        }
        Ok(())
    }

    /// Publishes the tick's snapshot once everything gathered before the tick has landed.
    async fn publish_when_settled(&mut self, feed: &Feed<'_>) -> Result<(), LeadEnd> {
        match self.snapshot_due {
            Some(due) if self.pipeline.has_settled(due.mark) => {
                self.snapshot_due = None;
                self.publish(due.refresh, feed).await
            }
            _ => Ok(()),
        }
    }

    async fn publish(&mut self, refresh: bool, feed: &Feed<'_>) -> Result<(), LeadEnd> {
        let now = now_ms();
        let standing = Standing {
            connected: feed.connected(),
            paused: self.paused,
        };
        // Nothing gathered, nothing committing, and nothing waiting in the queue (with a link
        // to it, or paused): every event that reached this leader is in the figures.
        let holds_nothing =
            !self.pipeline.is_committing() && self.pipeline.linger_deadline().is_none();
        if holds_nothing
            && (standing.connected || standing.paused)
            && Publisher::queue_depth(self.context) == 0
        {
            self.publisher.idle(now);
        }
        let figures = self.aggregator.figures(now);
        let beyond = Beyond {
            comparison: self.comparison.at(now),
            trust: self.aggregator.trust(now),
        };
        self.publisher
            .publish_if_changed(self.context, now, figures, beyond, standing, refresh)
            .await
    }

    /// At a new minute, reads the minutes the comparisons now need (usually the one that
    /// closed a day and a week ago) and computes them again. The comparisons are not essential:
    /// a failed read is logged, the last comparison stays, and the next minute reads again
    /// (what this one lacked too, see `Baselines::missing`); it never ends the term.
    async fn compare_anew(&mut self, now: Millis) {
        let minute = minute_of(now);
        if minute == self.compared_minute {
            return;
        }
        self.compared_minute = minute;
        match load_baselines(&self.context.core.store, &mut self.baselines, now).await {
            Ok(()) => self.comparison = self.baselines.compare(now),
            Err(error) => tracing::warn!(%error,
                "could not read the history for the comparisons; keeping the last ones, \
                 reading again next minute"),
        }
    }

    /// Reads the stored pause flag and follows it: pausing commits and acknowledges what was
    /// already gathered, then closes the consumer, so the broker keeps every later message in
    /// `<prefix>.events`; resuming reconnects.
    async fn check_pause(&mut self, feed: &mut Feed<'_>) -> Result<(), LeadEnd> {
        self.last_pause_check = Instant::now();
        let paused = self.context.core.store.ingest_paused().await?;
        if paused == self.paused {
            return Ok(());
        }
        if paused {
            self.flush(feed).await?;
            feed.suspend().await;
            tracing::info!("ingest paused by an operator");
        } else {
            feed.resume();
            feed.maybe_connect(self.context);
            tracing::info!("ingest resumed by an operator");
        }
        self.paused = paused;
        self.context
            .core
            .status
            .update_ingest(|s| s.paused = paused);
        Ok(())
    }

    /// Writes "active users at the end of the minute" for the minute that just ended, once
    /// everything gathered has landed: it arrived while the minute was open, so its events of
    /// it are on time and must be in the point.
    async fn close_finished_minutes(
        &mut self,
        now: Millis,
        feed: &mut Feed<'_>,
    ) -> Result<(), LeadEnd> {
        let minute = minute_of(now);
        if minute > self.current_minute {
            self.flush(feed).await?;
            let closed = self.current_minute;
            let active = self.aggregator.close_minute(closed);
            self.context.core.store.close_minute(closed, active).await?;
            self.current_minute = minute;
            // This tick's snapshot publishes the new minute: from now on the closed one is
            // revised by late events (the aggregator decides lateness from this alone).
            self.aggregator.close_minutes_before(minute);
        }
        Ok(())
    }

    fn prune(&mut self, now: Millis) {
        self.aggregator.prune(now);
        self.last_prune = Instant::now();
        let store = self.context.core.store.clone();
        tokio::spawn(async move {
            match store.prune(now).await {
                Ok(rows) => tracing::debug!(rows, "pruned expired rows"),
                Err(error) => tracing::warn!(%error, "pruning failed; will retry"),
            }
        });
    }
}

/// Reads from the store what `baselines` lack for the comparisons at `now`.
async fn load_baselines(
    store: &crate::store::Store,
    baselines: &mut Baselines,
    now: Millis,
) -> Result<(), StoreError> {
    for (offset, from, to) in baselines.missing(now) {
        let points = store.history(from, to).await?;
        baselines.load(offset, from, to, points, now);
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A tick's snapshot, due once every message gathered before the tick has settled.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SnapshotDue {
    mark: u64,
    refresh: bool,
}

impl SnapshotDue {
    /// At a tick: this tick's snapshot, due at `mark`, and whether the last tick's goes out
    /// now (`Some(refresh)`). That one still waits a whole tick later only when its batch has
    /// not landed (a slow database): it goes out without it, answering the refreshes asked so
    /// far, so that snapshots keep coming, a tick late, whatever a commit does.
    fn at_tick(waiting: Option<SnapshotDue>, mark: u64, refresh: bool) -> (Option<bool>, Self) {
        match waiting {
            Some(late) => (
                Some(late.refresh || refresh),
                SnapshotDue {
                    mark,
                    refresh: false,
                },
            ),
            None => (None, SnapshotDue { mark, refresh }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotDue;

    #[test]
    fn a_tick_s_snapshot_waits_for_its_mark_and_the_last_one_still_waiting_goes_out_at_once() {
        let due = |mark, refresh| SnapshotDue { mark, refresh };
        assert_eq!(SnapshotDue::at_tick(None, 7, true), (None, due(7, true)));
        assert_eq!(
            SnapshotDue::at_tick(Some(due(7, false)), 9, true),
            (Some(true), due(9, false)),
            "the refresh is answered by the late snapshot, not a second one this tick"
        );
        assert_eq!(
            SnapshotDue::at_tick(Some(due(7, true)), 9, false),
            (Some(true), due(9, false))
        );
    }
}
