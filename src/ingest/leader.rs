//! One term of leadership: consume, commit, acknowledge, aggregate, publish snapshots.
//!
//! A single task owns the aggregator, so no lock guards it. It waits on the next message, the
//! batch being committed, the end of the batching linger, and the snapshot tick. Messages are
//! decoded as they arrive (malformed ones are dead-lettered at once) and gathered into a batch
//! (up to `max_batch`, or `batch_linger` after the first). A batch is committed in one
//! transaction fenced by the lease, then acknowledged with one multiple-ack, then applied to the
//! in-memory figures. The commit runs in a task of its own while the next batch is gathered and
//! decoded, so the database never waits for the broker and the broker (up to `prefetch`
//! messages ahead) never waits for the database; one batch commits at a time, which keeps the
//! acknowledgements in delivery order. The next batch, when due, starts committing as soon as
//! the one before it lands, before that one's acknowledgement goes out.
//!
//! Failure handling: a lost broker drops the uncommitted batch (the broker redelivers it) and
//! reconnects with backoff while snapshots go on; a lost lease or a database error ends the term.

use super::batch::Batch;
use super::batch_log::CommittedBatch;
use super::decode::{decode, DecodeContext, Rejection};
use super::feed::{BrokerFeed, Feed, FeedItem};
use super::tail::Sampler;
use super::{IngestContext, LeaderInputs, LEASE_POLL};
use crate::aggregate::{minute_of, Aggregator, Event, EventKind, Figures, Millis, MINUTE_MS};
use crate::clock::now_ms;
use crate::live::{IngestState, IngestView, Snapshot, SnapshotFrame};
use crate::rabbitmq::{confirmed, BrokerError, RawMessage};
use crate::store::{Applied, Lease, StoreError};
use std::fmt;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Snapshot sequence numbers reserved per database round trip. The last of each block is kept
/// for the snapshot that says the database fails (see [`Leader::take_seq`]).
const SEQ_BLOCK: i64 = 1_000;
/// Followers that joined late get the current snapshot within this interval.
const REBROADCAST: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(60);

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
    let end = match Leader::start(context, lease.clone()).await {
        Ok(mut leader) => leader.run(&mut feed, refresh, shutdown).await,
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

/// What was last published, to publish only on change.
#[derive(PartialEq)]
struct Published {
    figures: Figures,
    state: IngestState,
    dead_letters: u64,
}

impl Published {
    fn of(figures: Figures, view: &IngestView) -> Published {
        Published {
            figures,
            state: view.state,
            dead_letters: view.dead_letters,
        }
    }
}

struct Leader<'a> {
    context: &'a IngestContext,
    lease: Lease,
    aggregator: Aggregator,
    next_seq: i64,
    seq_end: i64,
    gathering: Batch,
    committing: Option<Commit>,
    last_renewed: Instant,
    current_minute: Millis,
    last_prune: Instant,
    last_broadcast: Instant,
    published: Option<Published>,
    oldest_unpublished_arrival: Option<Millis>,
    lag_seconds: f64,
    /// An operator paused ingest (stored; cluster-wide): nothing is consumed meanwhile.
    paused: bool,
    last_pause_check: Instant,
    /// A refresh was asked for since the last tick: the next tick publishes even without a
    /// change. Requests never publish themselves, so a flood of them still makes at most one
    /// snapshot per tick.
    refresh_asked: bool,
    tail: Sampler,
    /// The database error that ends this term, for its last snapshot.
    database_failure: Option<String>,
}

impl<'a> Leader<'a> {
    async fn start(context: &'a IngestContext, lease: Lease) -> Result<Leader<'a>, LeadEnd> {
        let settings = &context.settings;
        let now = now_ms();
        let horizon = Aggregator::new(settings.aggregate.clone()).restore_horizon_ms();
        // An older version may have written rows without a key until this node took the lease.
        context.core.store.key_unkeyed_events().await?;
        let restore = context
            .core
            .store
            .load_restore(now, horizon, settings.aggregate.timezone)
            .await?;
        tracing::info!(
            recent_events = restore.recent_events.len(),
            "rebuilt the live figures from the store"
        );
        let aggregator = Aggregator::restore(settings.aggregate.clone(), restore);
        // A new leader honours a pause made under the one before it.
        let paused = context.core.store.ingest_paused().await?;
        // Reserved now, so that a term that started can always say the database failed.
        let next_seq = context.core.store.reserve_seq(SEQ_BLOCK).await?;
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
        Ok(Leader {
            context,
            lease,
            aggregator,
            next_seq,
            seq_end: next_seq + SEQ_BLOCK - 1,
            gathering: Batch::with_capacity(settings.max_batch),
            committing: None,
            last_renewed: Instant::now(),
            current_minute: minute_of(now),
            last_prune: Instant::now(),
            last_broadcast: Instant::now(),
            published: None,
            oldest_unpublished_arrival: None,
            lag_seconds: 0.0,
            paused,
            last_pause_check: Instant::now(),
            refresh_asked: false,
            tail: Sampler::default(),
            database_failure: None,
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
        let max_batch = self.context.settings.max_batch;
        let result: Result<(), LeadEnd> = async {
            loop {
                let linger = self.gathering.deadline;
                let idle = self.committing.is_none();
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        // Commit and acknowledge what was already received, then stop.
                        self.finish_commit(feed).await?;
                        self.start_commit(feed).await;
                        self.finish_commit(feed).await?;
                        return Err(LeadEnd::Shutdown);
                    }
                    committed = wait_for(&mut self.committing) => {
                        // Keep the database busy: the next batch starts committing before this
                        // one is acknowledged and applied. Its acknowledgement still follows
                        // this one's, and which of its events are new is the database's answer.
                        if committed.is_ok() && self.gathering.has_events_due(max_batch) {
                            self.start_commit(feed).await;
                        }
                        self.on_committed(committed, feed).await?;
                        if self.gathering.is_due(max_batch) {
                            self.start_commit(feed).await;
                        }
                    }
                    item = feed.next(), if self.gathering.messages < max_batch && !self.paused => {
                        self.on_feed(item, feed).await;
                        if self.committing.is_none() && self.gathering.is_due(max_batch) {
                            self.start_commit(feed).await;
                        }
                    }
                    _ = sleep_until(linger), if linger.is_some() && idle => {
                        self.start_commit(feed).await
                    }
                    _ = tick.tick() => self.on_tick(feed).await?,
                    Some(()) = refresh.recv() => self.refresh_asked = true,
                }
            }
        }
        .await;
        // A commit still running must land (or fail) before the next term rebuilds the figures
        // from the store, or its events would be missing there and then refused as duplicates.
        if let Some(commit) = self.committing.take() {
            let _ = commit.await;
        }
        match result {
            Ok(()) => LeadEnd::Shutdown,
            Err(LeadEnd::Database(error)) => {
                self.say_database_failed(&error);
                LeadEnd::Database(error)
            }
            Err(end) => end,
        }
    }

    /// Publishes the term's last snapshot, saying ingest is `disconnected` because of `error`:
    /// nothing else would tell the dashboards (and the other instances) that the figures stand
    /// still. Its number is the block's last, kept for it: the database cannot reserve one now.
    fn say_database_failed(&mut self, error: &StoreError) {
        self.database_failure = Some(error.to_string());
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = now_ms();
        self.publish(
            seq,
            now,
            self.aggregator.figures(now),
            self.ingest_view(false),
        );
    }

    async fn on_feed(&mut self, item: FeedItem, feed: &mut Feed<'_>) {
        match item {
            FeedItem::Message(message) => self.gather(message, feed).await,
            FeedItem::Connected => {
                tracing::info!("consuming from RabbitMQ");
                self.set_connected(true, None);
            }
            FeedItem::Lost(error) => {
                tracing::warn!(%error, "lost RabbitMQ; reconnecting with backoff");
                // Unacknowledged messages of the lost channel come back from the broker.
                self.drop_gathering();
                self.set_connected(false, Some(error));
            }
        }
    }

    /// Decodes one message into the batch being gathered; a malformed one is dead-lettered now
    /// and acknowledged with the batch.
    async fn gather(&mut self, message: RawMessage, feed: &mut Feed<'_>) {
        let settings = &self.context.settings;
        let metrics = &self.context.core.metrics;
        let context = DecodeContext {
            currency: &settings.currency,
            arrived_at: message.arrived_at,
        };
        match self.admit(decode(&message.body, context)) {
            Admission::Accepted(event) => {
                self.gathering.ids.insert(event.id.clone());
                self.gathering.events.push(event);
                self.gathering.arrivals.push(message.arrived_at);
            }
            Admission::RepeatInBatch(kind) => metrics.count_event(kind, "duplicate"),
            Admission::Refused(kind, rejection) => {
                self.gathering.rejected += 1;
                metrics.count_event(kind, "rejected");
                tracing::warn!(reason = %rejection, routing_key = %message.routing_key,
                    "dead-lettering a malformed event");
                match feed
                    .dead_letter(
                        &message,
                        &rejection.to_string(),
                        &self.context.core.node,
                        now_ms(),
                    )
                    .await
                {
                    Ok(confirm) => self.gathering.confirms.extend(confirm),
                    Err(error) => {
                        // The whole batch comes back from the broker on the next link.
                        self.drop_gathering();
                        self.link_failed(feed, error);
                        return;
                    }
                }
            }
        }
        self.gathering.add_message(
            message.tag,
            feed.link_generation(),
            self.context.settings.batch_linger,
        );
    }

    /// Decides what a decoded message becomes: an event of the batch (with room reserved in
    /// every sum it adds to), a repeat of one already in it, or a dead letter.
    fn admit(&mut self, decoded: Result<Event, Rejection>) -> Admission {
        let event = match decoded {
            Ok(event) => event,
            Err(rejection) => return Admission::Refused("unknown", rejection),
        };
        let kind = event.kind.label();
        if self.gathering.ids.contains(&event.id) {
            return Admission::RepeatInBatch(kind);
        }
        match self.aggregator.admit(&event) {
            Ok(()) => Admission::Accepted(event),
            Err(overflow) => Admission::Refused(kind, overflow.into()),
        }
    }

    /// Forgets the batch being gathered (its messages come back from the broker) and the room
    /// its events reserved.
    fn drop_gathering(&mut self) {
        self.aggregator.release(&self.gathering.events);
        self.gathering.clear();
    }

    fn set_connected(&self, connected: bool, error: Option<String>) {
        self.context
            .core
            .metrics
            .ingest_up
            .set(i64::from(connected));
        self.context.core.status.update_ingest(|s| {
            s.consumer.connected = connected;
            s.term_connecting = false;
            if error.is_some() {
                s.consumer.last_error = error;
            }
        });
    }

    fn link_failed(&self, feed: &mut Feed<'_>, error: BrokerError) {
        let message = error.to_string();
        feed.lose(error);
        self.set_connected(false, Some(message));
    }

    /// Starts committing the gathered batch, if any, in a task of its own. A batch of nothing
    /// but dead letters has nothing to commit and is acknowledged at once.
    async fn start_commit(&mut self, feed: &mut Feed<'_>) {
        if self.gathering.messages == 0 || self.committing.is_some() {
            return;
        }
        let mut batch = std::mem::replace(
            &mut self.gathering,
            Batch::with_capacity(self.context.settings.max_batch),
        );
        batch.span = tracing::info_span!(
            "batch",
            messages = batch.messages,
            events = batch.events.len(),
            rejected = batch.rejected,
            new = tracing::field::Empty,
            ignored = tracing::field::Empty,
            duplicates = tracing::field::Empty,
            commit_ms = tracing::field::Empty,
        );
        if batch.events.is_empty() {
            self.acknowledge_committed(&mut batch, feed).await;
            batch.span.record("new", 0);
            batch.span.record("duplicates", batch.repeats());
            tracing::debug!(parent: &batch.span, "batch acknowledged: nothing to commit");
            return;
        }
        let store = self.context.core.store.clone();
        let lease = self.lease.clone();
        let timezone = self.context.settings.aggregate.timezone;
        let span = batch.span.clone();
        self.committing = Some(tokio::spawn(
            async move {
                let started = Instant::now();
                let applied = store
                    .apply_batch(&lease, &batch.events, timezone, now_ms())
                    .await;
                // Only a batch that landed (see `batch_log`); a failed one is reported by the caller.
                if applied.is_ok() {
                    let commit_ms = started.elapsed().as_secs_f64() * 1e3;
                    tracing::Span::current().record("commit_ms", commit_ms);
                    CommittedBatch {
                        messages: batch.messages,
                        events: batch.events.len(),
                        commit_ms,
                        first_arrival_ms: batch.arrivals.first().copied().unwrap_or_default(),
                        last_arrival_ms: batch.arrivals.last().copied().unwrap_or_default(),
                    }
                    .log();
                }
                (batch, applied)
            }
            .instrument(span),
        ));
    }

    /// Waits for the batch being committed, if any, and finishes it.
    async fn finish_commit(&mut self, feed: &mut Feed<'_>) -> Result<(), LeadEnd> {
        if self.committing.is_some() {
            let committed = wait_for(&mut self.committing).await;
            self.on_committed(committed, feed).await?;
        }
        Ok(())
    }

    /// Acknowledges and applies a batch whose commit returned: the exactly-once step.
    async fn on_committed(
        &mut self,
        committed: Result<(Batch, Applied), LeadEnd>,
        feed: &mut Feed<'_>,
    ) -> Result<(), LeadEnd> {
        let (mut batch, applied) = committed?;
        self.last_renewed = Instant::now();
        // Committed: the events count from now on, whatever happens to the acknowledgement.
        // If it fails, the broker redelivers them and the store recognises them as duplicates.
        self.acknowledge_committed(&mut batch, feed).await;
        let counted = self.apply_committed(&batch.events, &batch.arrivals, &applied.fresh);
        self.aggregator.release(&batch.events);
        batch.span.record("new", counted.new);
        batch.span.record("ignored", counted.ignored);
        let stored_before = batch.events.len() - counted.new;
        batch
            .span
            .record("duplicates", stored_before + batch.repeats());
        tracing::debug!(parent: &batch.span, "batch applied");
        Ok(())
    }

    /// Waits for the batch's dead letters to be confirmed, then acknowledges all its messages
    /// with one multiple-ack, on the link they came from (a newer link numbers its deliveries
    /// afresh; messages of a lost link come back by themselves).
    async fn acknowledge_committed(&self, batch: &mut Batch, feed: &mut Feed<'_>) {
        let (Some(last_tag), true) = (batch.last_tag, batch.link == feed.link_generation()) else {
            return;
        };
        let acknowledged = async {
            for confirm in batch.confirms.drain(..) {
                confirmed(confirm).await?;
            }
            feed.ack_through(last_tag).await
        }
        .await;
        if let Err(error) = acknowledged {
            self.link_failed(feed, error);
        }
    }

    /// Counts a committed batch and adds its new events to the live figures.
    fn apply_committed(
        &mut self,
        events: &[Event],
        arrivals: &[Millis],
        fresh: &[bool],
    ) -> Counted {
        let metrics = &self.context.core.metrics;
        let mut counted = Counted::default();
        let mut newest_occurred = None;
        for ((event, &arrived_at), &fresh) in events.iter().zip(arrivals).zip(fresh) {
            let outcome = match (fresh, &event.kind) {
                (false, _) => "duplicate",
                (true, EventKind::Other) => {
                    counted.ignored += 1;
                    "ignored"
                }
                (true, _) => "applied",
            };
            metrics.count_event(event.kind.label(), outcome);
            counted.new += usize::from(fresh);
            if !fresh {
                continue;
            }
            self.aggregator.apply(event);
            metrics
                .event_age
                .observe((arrived_at - event.occurred_at).max(0) as f64 / 1000.0);
            self.oldest_unpublished_arrival = Some(
                self.oldest_unpublished_arrival
                    .map_or(arrived_at, |o| o.min(arrived_at)),
            );
            newest_occurred = newest_occurred.max(Some(event.occurred_at));
            if let Some(sample) = self.tail.offer(event, arrived_at) {
                self.context.core.fanout.send_event(sample);
            }
        }
        if let Some(occurred) = newest_occurred {
            self.lag_seconds = (now_ms() - occurred).max(0) as f64 / 1000.0;
            let lag = self.lag_seconds;
            self.context
                .core
                .status
                .update_ingest(|s| s.lag_seconds = lag);
        }
        counted
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
        self.close_finished_minutes(now).await?;
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.prune(now);
        }
        self.publish_snapshot(now, feed.connected(), refresh)
            .await?;
        if self.last_broadcast.elapsed() >= REBROADCAST {
            if let Some(frame) = self.context.core.hub.latest_frame() {
                self.context.core.fanout.send(frame);
            }
            self.last_broadcast = Instant::now();
        }
        Ok(())
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
            self.finish_commit(feed).await?;
            self.start_commit(feed).await;
            self.finish_commit(feed).await?;
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

    /// Writes "active users at the end of the minute" for the minute that just ended.
    async fn close_finished_minutes(&mut self, now: Millis) -> Result<(), LeadEnd> {
        let minute = minute_of(now);
        if minute > self.current_minute {
            let closed = self.current_minute;
            let active = self.aggregator.active_users_at(closed + MINUTE_MS - 1);
            self.context.core.store.close_minute(closed, active).await?;
            self.current_minute = minute;
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

    fn ingest_view(&self, connected: bool) -> IngestView {
        let status = self.context.core.status.get();
        let (state, reason) = if let Some(error) = &self.database_failure {
            let reason = format!("the database failed: {error}");
            (IngestState::Disconnected, Some(reason))
        } else if self.paused {
            (IngestState::Paused, None)
        } else if !connected {
            let reason = match &status.ingest.consumer.last_error {
                Some(error) => format!("not connected to RabbitMQ: {error}"),
                None => "not connected to RabbitMQ yet".to_owned(),
            };
            (IngestState::Disconnected, Some(reason))
        } else if self.context.settings.demo {
            (IngestState::Demo, None)
        } else {
            (IngestState::Running, None)
        };
        IngestView {
            state,
            leader: Some(self.context.core.node.clone()),
            lag_seconds: self.lag_seconds,
            dead_letters: status.fanout.dead_letters,
            reason,
        }
    }

    /// Publishes a snapshot if the figures or the ingest state changed since the last one, or
    /// when `force`d (a refresh request).
    async fn publish_snapshot(
        &mut self,
        now: Millis,
        connected: bool,
        force: bool,
    ) -> Result<(), LeadEnd> {
        let figures = self.aggregator.figures(now);
        let view = self.ingest_view(connected);
        if !force && self.published.as_ref() == Some(&Published::of(figures, &view)) {
            return Ok(());
        }
        let seq = self.take_seq().await?;
        self.publish(seq, now, figures, view);
        Ok(())
    }

    /// Publishes snapshot `seq`: to this instance's hub and to the others.
    fn publish(&mut self, seq: i64, now: Millis, figures: Figures, view: IngestView) {
        self.published = Some(Published::of(figures, &view));
        let core = &self.context.core;
        let currency = &self.context.settings.currency;
        let snapshot = Snapshot::new(seq, now, &core.node, &figures, currency, view);
        core.record_snapshot(&snapshot);
        let frame = SnapshotFrame::new(snapshot, self.oldest_unpublished_arrival.take());
        core.hub.publish(frame.clone());
        core.fanout.send(frame);
        self.last_broadcast = Instant::now();
    }

    /// The next snapshot's sequence number. The block's last one is never handed out here: it
    /// is kept for the snapshot that says the database failed ([`Leader::say_database_failed`]).
    async fn take_seq(&mut self) -> Result<i64, LeadEnd> {
        if self.next_seq >= self.seq_end {
            self.next_seq = self.context.core.store.reserve_seq(SEQ_BLOCK).await?;
            self.seq_end = self.next_seq + SEQ_BLOCK - 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }
}

/// What [`Leader::admit`] made of a message; the `&str`s are event type labels for metrics.
enum Admission {
    Accepted(Event),
    RepeatInBatch(&'static str),
    Refused(&'static str, Rejection),
}

/// What a committed batch's events turned out to be, for its span: new ones, and of those
/// `ignored`, event types counted but not aggregated (the rest the store already held).
#[derive(Default)]
struct Counted {
    new: usize,
    ignored: usize,
}

/// The task committing a batch; it hands the batch back with the outcome.
type Commit = JoinHandle<(Batch, Result<Applied, StoreError>)>;

/// The outcome of the commit in flight; never ready when there is none. Cancel-safe.
async fn wait_for(committing: &mut Option<Commit>) -> Result<(Batch, Applied), LeadEnd> {
    let outcome = match committing {
        Some(commit) => commit.await,
        None => std::future::pending().await,
    };
    *committing = None;
    match outcome {
        Ok((batch, applied)) => Ok((batch, applied?)),
        Err(error) => Err(LeadEnd::CommitTask(error.to_string())),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
