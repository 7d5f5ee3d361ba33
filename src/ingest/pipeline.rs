//! A term's commit pipeline, the exactly-once order: messages are decoded as they arrive into
//! the batch being gathered (malformed ones are dead-lettered at once); a due batch is judged
//! (which of its events are late, and what they revise: `Aggregator::judge`, once) and
//! committed with that judgement in one transaction fenced by the lease, in a task of its own
//! while the next one gathers; then it is acknowledged with one multiple-ack, and only then
//! applied to the live figures, with the late events the commit stored. One batch commits at a
//! time, which keeps the acknowledgements in delivery order.
//!
//! No loop and no clock here: the term (`term`) decides when each step runs; this file decides
//! what each step does.

use super::batch::Batch;
use super::batch_log::CommittedBatch;
use super::decode::{decode, DecodeContext, Rejection};
use super::feed::Feed;
use super::tail::Sampler;
use super::{IngestContext, LeadEnd};
use crate::aggregate::{minute_of, Aggregator, Event, EventKind, Millis, Tally};
use crate::clock::now_ms;
use crate::rabbitmq::{confirmed, RawMessage};
use crate::store::{Applied, Lease, StoreError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

/// The batch being gathered and the one being committed.
pub(super) struct Pipeline {
    gathering: Batch,
    committing: Option<Commit>,
    lease: Lease,
    max_batch: usize,
    /// The console's sampled event tail, fed from applied events.
    tail: Sampler,
    /// Messages gathered this term, and of them those settled: acknowledged after their
    /// batch landed, or dropped to come back from the broker. A snapshot that must include
    /// everything gathered before it waits until the second reaches its mark ([`Pipeline::cut`]).
    gathered: u64,
    settled: u64,
}

/// What applying a committed batch changed, for the next snapshot.
#[derive(Default)]
pub(super) struct Landed {
    /// When the oldest newly applied event arrived (the snapshot's delivery latency).
    pub(super) oldest_arrival: Option<Millis>,
    /// The newest `occurred_at` newly applied (the lag).
    pub(super) newest_occurred: Option<Millis>,
    /// When the newest event of the batch arrived, new or not: every event that arrived
    /// before it is in the figures now (the snapshot's `trust.complete_through`).
    pub(super) newest_arrival: Option<Millis>,
    /// The minute and tally of each late order or refund applied (a comparison's baseline
    /// may sum over its minute).
    pub(super) late_tallies: Vec<(Millis, Tally)>,
}

impl Landed {
    fn add(&mut self, other: Landed) {
        self.oldest_arrival = match (self.oldest_arrival, other.oldest_arrival) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.newest_occurred = self.newest_occurred.max(other.newest_occurred);
        self.newest_arrival = self.newest_arrival.max(other.newest_arrival);
        self.late_tallies.extend(other.late_tallies);
    }
}

/// What [`Pipeline::admit`] made of a message; the `&str`s are event type labels for metrics.
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

/// A committed batch's counter increments, summed per label set and added once per batch:
/// a labelled counter is found by hashing its labels, which per event was a measurable part
/// of the leader's time (docs/benchmarks.md, "Where the service's time goes").
#[derive(Default)]
struct MetricTally {
    /// `(event type, outcome)` → events, for `pulseboard_events_total`.
    events: Vec<((&'static str, &'static str), u64)>,
    /// Event type → minor units, for `pulseboard_order_amount_minor_total`.
    amounts: Vec<(&'static str, u64)>,
}

impl MetricTally {
    fn add<K: PartialEq>(sums: &mut Vec<(K, u64)>, key: K, n: u64) {
        match sums.iter_mut().find(|(k, _)| *k == key) {
            Some((_, sum)) => *sum += n,
            None => sums.push((key, n)),
        }
    }

    fn publish(self, metrics: &crate::metrics::Metrics) {
        for ((event_type, outcome), n) in self.events {
            metrics.count_events(event_type, outcome, n);
        }
        for (event_type, minor) in self.amounts {
            metrics
                .order_amount_minor
                .with_label_values(&[event_type])
                .inc_by(minor);
        }
    }
}

/// The task committing a batch; it hands the batch back with the outcome.
type Commit = JoinHandle<(Batch, Result<Applied, StoreError>)>;

impl Pipeline {
    pub(super) fn new(context: &IngestContext, lease: Lease) -> Pipeline {
        let max_batch = context.settings.max_batch;
        Pipeline {
            gathering: Batch::with_capacity(max_batch),
            committing: None,
            lease,
            max_batch,
            tail: Sampler::default(),
            gathered: 0,
            settled: 0,
        }
    }

    /// Makes the batch being gathered due now; returns the mark of everything gathered so far,
    /// settled once [`Pipeline::has_settled`] says so.
    pub(super) fn cut(&mut self) -> u64 {
        self.gathering.cut();
        self.gathered
    }

    /// Every message gathered before `mark` was taken has landed in the figures (or was
    /// dropped, to come back from the broker).
    pub(super) fn has_settled(&self, mark: u64) -> bool {
        self.settled >= mark
    }

    /// Whether another message fits in the batch being gathered.
    pub(super) fn has_room(&self) -> bool {
        self.gathering.messages() < self.max_batch
    }

    /// When the batch being gathered is due even if not full; `None` while it is empty.
    pub(super) fn linger_deadline(&self) -> Option<Instant> {
        self.gathering.deadline()
    }

    pub(super) fn is_committing(&self) -> bool {
        self.committing.is_some()
    }

    pub(super) fn gathering_is_due(&self) -> bool {
        self.gathering.is_due(self.max_batch)
    }

    /// Due, holds events to commit (see [`Batch::has_events_due`]), and may start committing
    /// before the batch committed before it is applied: it holds no event of a closed minute,
    /// so nothing in it is late, and its judgement cannot depend on that batch (see
    /// `Aggregator::judge`).
    pub(super) fn gathering_may_commit_early(&self, aggregator: &Aggregator) -> bool {
        self.gathering.has_events_due(self.max_batch)
            && !self
                .gathering
                .oldest_occurred()
                .is_some_and(|at| aggregator.is_closed(at))
    }

    /// Decodes one message into the batch being gathered; a malformed one is dead-lettered now
    /// and acknowledged with the batch.
    pub(super) async fn gather(
        &mut self,
        context: &IngestContext,
        aggregator: &mut Aggregator,
        message: RawMessage,
        feed: &mut Feed<'_>,
    ) {
        let metrics = &context.core.metrics;
        let decoding = DecodeContext {
            max_age_ms: context.settings.dedupe_window_ms,
            ..DecodeContext::new(&context.settings.currency, message.arrived_at)
        };
        let (tag, arrived_at) = (message.tag, message.arrived_at);
        match self.admit(aggregator, decode(&message.body, decoding)) {
            Admission::Accepted(event) => self.gathering.add_event(event, arrived_at),
            Admission::RepeatInBatch(kind) => metrics.count_event(kind, "duplicate"),
            Admission::Refused(kind, rejection) => {
                metrics.count_event(kind, "rejected");
                tracing::warn!(reason = %rejection, routing_key = %message.routing_key,
                    "dead-lettering a malformed event");
                let published = feed
                    .dead_letter(
                        &message,
                        &rejection.to_string(),
                        &context.core.node,
                        now_ms(),
                    )
                    .await;
                match published {
                    Ok(confirm) => self.gathering.add_dead_letter(confirm),
                    Err(error) => {
                        // The whole batch comes back from the broker on the next link.
                        self.drop_gathering(aggregator);
                        feed.fail(&context.core, error);
                        return;
                    }
                }
            }
        }
        self.gathering
            .add_message(tag, feed.link_generation(), context.settings.batch_linger);
        self.gathered += 1;
    }

    /// Decides what a decoded message becomes: an event of the batch (with room reserved in
    /// every sum it adds to), a repeat of one already in it, or a dead letter.
    fn admit(&self, aggregator: &mut Aggregator, decoded: Result<Event, Rejection>) -> Admission {
        let event = match decoded {
            Ok(event) => event,
            Err(rejection) => return Admission::Refused("unknown", rejection),
        };
        let kind = event.kind.label();
        if self.gathering.holds(&event.id) {
            return Admission::RepeatInBatch(kind);
        }
        match aggregator.admit(&event) {
            Ok(()) => Admission::Accepted(event),
            Err(overflow) => Admission::Refused(kind, overflow.into()),
        }
    }

    /// Forgets the batch being gathered (its messages come back from the broker) and the room
    /// its events reserved.
    pub(super) fn drop_gathering(&mut self, aggregator: &mut Aggregator) {
        aggregator.release(self.gathering.events());
        self.settled += self.gathering.messages() as u64;
        self.gathering.clear();
    }

    /// Judges the gathered batch, if any, and starts committing it in a task of its own. A
    /// batch of nothing but dead letters has nothing to commit and is acknowledged at once.
    pub(super) async fn start_commit(
        &mut self,
        context: &IngestContext,
        aggregator: &mut Aggregator,
        feed: &mut Feed<'_>,
    ) {
        if self.gathering.messages() == 0 || self.committing.is_some() {
            return;
        }
        let mut batch =
            std::mem::replace(&mut self.gathering, Batch::with_capacity(self.max_batch));
        batch.open_span();
        if batch.events().is_empty() {
            acknowledge(context, &mut batch, feed).await;
            self.settled += batch.messages() as u64;
            batch.span().record("new", 0);
            batch.span().record("duplicates", batch.repeats());
            tracing::debug!(parent: batch.span(), "batch acknowledged: nothing to commit");
            return;
        }
        let judgement = aggregator.judge(batch.events());
        let store = context.core.store.clone();
        let lease = self.lease.clone();
        let timezone = context.settings.aggregate.timezone;
        let span = batch.span().clone();
        self.committing = Some(tokio::spawn(
            async move {
                let started = Instant::now();
                let applied = store
                    .apply_batch(&lease, batch.events(), &judgement, timezone, now_ms())
                    .await;
                // Only a batch that landed (see `batch_log`); a failed one is reported by the caller.
                if applied.is_ok() {
                    let commit_ms = started.elapsed().as_secs_f64() * 1e3;
                    tracing::Span::current().record("commit_ms", commit_ms);
                    CommittedBatch {
                        messages: batch.messages(),
                        events: batch.events().len(),
                        commit_ms,
                        first_arrival_ms: batch.arrivals().first().copied().unwrap_or_default(),
                        last_arrival_ms: batch.arrivals().last().copied().unwrap_or_default(),
                    }
                    .log();
                }
                (batch, applied)
            }
            .instrument(span),
        ));
    }

    /// The outcome of the commit in flight; never ready when there is none. Cancel-safe.
    pub(super) async fn committed(&mut self) -> Result<(Batch, Applied), LeadEnd> {
        let outcome = match &mut self.committing {
            Some(commit) => commit.await,
            None => std::future::pending().await,
        };
        self.committing = None;
        match outcome {
            Ok((batch, applied)) => Ok((batch, applied?)),
            Err(error) => Err(LeadEnd::CommitTask(error.to_string())),
        }
    }

    /// Waits for the batch being committed, if any, and finishes it.
    pub(super) async fn finish_commit(
        &mut self,
        context: &IngestContext,
        aggregator: &mut Aggregator,
        feed: &mut Feed<'_>,
    ) -> Result<Landed, LeadEnd> {
        if self.committing.is_none() {
            return Ok(Landed::default());
        }
        let committed = self.committed().await;
        self.on_committed(context, aggregator, committed, feed)
            .await
    }

    /// Commits, acknowledges and applies everything received so far: the batch in flight,
    /// then the one gathered (before a pause, a stop or a minute's close).
    pub(super) async fn flush(
        &mut self,
        context: &IngestContext,
        aggregator: &mut Aggregator,
        feed: &mut Feed<'_>,
    ) -> Result<Landed, LeadEnd> {
        let mut landed = self.finish_commit(context, aggregator, feed).await?;
        self.start_commit(context, aggregator, feed).await;
        landed.add(self.finish_commit(context, aggregator, feed).await?);
        Ok(landed)
    }

    /// A commit still running must land (or fail) before the next term rebuilds the figures
    /// from the store, or its events would be missing there and then refused as duplicates.
    pub(super) async fn settle(&mut self) {
        if let Some(commit) = self.committing.take() {
            let _ = commit.await;
        }
    }

    /// Acknowledges and applies a batch whose commit returned: the exactly-once step.
    pub(super) async fn on_committed(
        &mut self,
        context: &IngestContext,
        aggregator: &mut Aggregator,
        committed: Result<(Batch, Applied), LeadEnd>,
        feed: &mut Feed<'_>,
    ) -> Result<Landed, LeadEnd> {
        let (mut batch, applied) = committed?;
        // Committed: the events count from now on, whatever happens to the acknowledgement.
        // If it fails, the broker redelivers them and the store recognises them as duplicates.
        acknowledge(context, &mut batch, feed).await;
        let (counted, landed) = self.apply(context, aggregator, &batch, &applied);
        self.settled += batch.messages() as u64;
        aggregator.release(batch.events());
        batch.span().record("new", counted.new);
        batch.span().record("ignored", counted.ignored);
        let stored_before = batch.events().len() - counted.new;
        batch
            .span()
            .record("duplicates", stored_before + batch.repeats());
        tracing::debug!(parent: batch.span(), "batch applied");
        Ok(landed)
    }

    /// Counts a committed batch and adds its new events to the live figures, and its late
    /// events to the trust figures as the commit stored them.
    fn apply(
        &mut self,
        context: &IngestContext,
        aggregator: &mut Aggregator,
        batch: &Batch,
        applied: &Applied,
    ) -> (Counted, Landed) {
        let metrics = &context.core.metrics;
        let mut counted = Counted::default();
        let mut tally = MetricTally::default();
        let mut landed = Landed {
            newest_arrival: batch.arrivals().last().copied(),
            ..Landed::default()
        };
        aggregator.count_revision(&applied.revision);
        metrics.late_events.inc_by(applied.revision.late_events);
        let arrivals = batch.events().iter().zip(batch.arrivals());
        let verdicts = applied.fresh.iter().zip(&applied.revision.late);
        for ((event, &arrived_at), (&fresh, &late)) in arrivals.zip(verdicts) {
            // A user event the store applied again harmlessly, which the aggregator recognises
            // as one it has applied: a duplicate (best-effort count, exact effect).
            let fresh = fresh && !aggregator.recognises(event);
            let outcome = match (fresh, &event.kind) {
                (false, _) => "duplicate",
                (true, EventKind::Other) => {
                    counted.ignored += 1;
                    "ignored"
                }
                (true, _) => "applied",
            };
            MetricTally::add(&mut tally.events, (event.kind.label(), outcome), 1);
            counted.new += usize::from(fresh);
            if !fresh {
                continue;
            }
            aggregator.apply(event);
            if late {
                let late_tally = event.tally();
                if late_tally != Tally::default() {
                    landed
                        .late_tallies
                        .push((minute_of(event.occurred_at), late_tally));
                }
            }
            if let EventKind::OrderPlaced { amount_minor }
            | EventKind::OrderRefunded { amount_minor } = event.kind
            {
                let minor = amount_minor.max(0) as u64;
                MetricTally::add(&mut tally.amounts, event.kind.label(), minor);
            }
            metrics
                .event_age
                .observe((arrived_at - event.occurred_at).max(0) as f64 / 1000.0);
            landed.add(Landed {
                oldest_arrival: Some(arrived_at),
                newest_occurred: Some(event.occurred_at),
                ..Landed::default()
            });
            if let Some(sample) = self.tail.offer(event, arrived_at) {
                context.core.fanout.send_event(sample);
            }
        }
        tally.publish(metrics);
        (counted, landed)
    }
}

/// Waits for the batch's dead letters to be confirmed, then acknowledges all its messages
/// with one multiple-ack, on the link they came from (a newer link numbers its deliveries
/// afresh; messages of a lost link come back by themselves).
async fn acknowledge(context: &IngestContext, batch: &mut Batch, feed: &mut Feed<'_>) {
    let Some(last_tag) = batch
        .last_tag()
        .filter(|_| batch.link() == feed.link_generation())
    else {
        return;
    };
    let acknowledged = async {
        for confirm in batch.take_confirms() {
            confirmed(confirm).await?;
        }
        feed.ack_through(last_tag).await
    }
    .await;
    if let Err(error) = acknowledged {
        feed.fail(&context.core, error);
    }
}
