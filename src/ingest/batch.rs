//! The batch a leader gathers between commits: decoded events with their arrival times, the
//! dead letters to confirm and the delivery tag to acknowledge through, and when it is due.
//! Pure bookkeeping: no I/O; the leader decides what goes in.

use crate::aggregate::{Event, Millis};
use lapin::publisher_confirm::PublisherConfirm;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// Messages gathered since the last commit started, already decoded. Its fields are private:
/// each message is counted exactly once, as an event, a repeat or a dead letter, so that
/// [`Batch::repeats`] never goes below zero, and [`Batch::clear`] forgets all of it.
pub(super) struct Batch {
    events: Vec<Event>,
    arrivals: Vec<Millis>,
    /// The earliest `occurred_at` among `events`: whether any may be late.
    oldest_occurred: Option<Millis>,
    /// Ids in `events`: a repeat within one batch is a duplicate before it reaches the store.
    ids: HashSet<String>,
    /// Dead letters published for this batch's malformed messages, confirmed before the ack.
    confirms: Vec<PublisherConfirm>,
    /// Messages of every kind (events, duplicates, malformed) and the newest delivery tag.
    messages: usize,
    /// Of them, the malformed ones (dead-lettered).
    rejected: usize,
    last_tag: Option<u64>,
    /// The broker link the messages came from (`Feed::link_generation`).
    link: u64,
    /// When the batch is committed even if it is not full.
    deadline: Option<Instant>,
    /// Its commit and what it did, in the logs (set when its commit starts).
    span: tracing::Span,
}

impl Batch {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Batch {
            events: Vec::with_capacity(capacity),
            arrivals: Vec::with_capacity(capacity),
            oldest_occurred: None,
            ids: HashSet::with_capacity(capacity),
            confirms: Vec::new(),
            messages: 0,
            rejected: 0,
            last_tag: None,
            link: 0,
            deadline: None,
            span: tracing::Span::none(),
        }
    }

    /// An event of this batch, which arrived at `arrived_at`; then [`Batch::add_message`].
    pub(super) fn add_event(&mut self, event: Event, arrived_at: Millis) {
        self.ids.insert(event.id.clone());
        self.oldest_occurred = Some(
            self.oldest_occurred
                .map_or(event.occurred_at, |oldest| oldest.min(event.occurred_at)),
        );
        self.events.push(event);
        self.arrivals.push(arrived_at);
    }

    /// A malformed message, dead-lettered (`confirm`: its publisher confirm, when the feed
    /// has one); then [`Batch::add_message`].
    pub(super) fn add_dead_letter(&mut self, confirm: Option<PublisherConfirm>) {
        self.rejected += 1;
        self.confirms.extend(confirm);
    }

    /// Counts a message gathered (its event or dead letter, if any, is already in). Tag 0 is
    /// an in-process message with nothing to acknowledge.
    pub(super) fn add_message(&mut self, tag: u64, link: u64, linger: Duration) {
        if self.messages == 0 {
            self.deadline = Some(Instant::now() + linger);
            self.link = link;
        }
        self.messages += 1;
        if tag > 0 {
            self.last_tag = Some(tag);
        }
    }

    /// Whether an event with this id is in the batch already.
    pub(super) fn holds(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub(super) fn events(&self) -> &[Event] {
        &self.events
    }

    pub(super) fn arrivals(&self) -> &[Millis] {
        &self.arrivals
    }

    pub(super) fn oldest_occurred(&self) -> Option<Millis> {
        self.oldest_occurred
    }

    pub(super) fn messages(&self) -> usize {
        self.messages
    }

    pub(super) fn last_tag(&self) -> Option<u64> {
        self.last_tag
    }

    pub(super) fn link(&self) -> u64 {
        self.link
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The dead letters' confirms, to wait for before the acknowledgement.
    pub(super) fn take_confirms(&mut self) -> Vec<PublisherConfirm> {
        std::mem::take(&mut self.confirms)
    }

    /// Messages that repeated an id already in this batch: each message is an event of it,
    /// a repeat or a dead letter.
    pub(super) fn repeats(&self) -> usize {
        self.messages - self.events.len() - self.rejected
    }

    /// Due now, full or not: a snapshot tick takes everything gathered before it.
    pub(super) fn cut(&mut self) {
        if self.messages > 0 {
            self.deadline = Some(Instant::now());
        }
    }

    pub(super) fn is_due(&self, max_batch: usize) -> bool {
        self.messages >= max_batch || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Due, and holds events to commit. A batch of dead letters alone is acknowledged as soon
    /// as its commit starts, so it must wait until the batch before it is acknowledged.
    pub(super) fn has_events_due(&self, max_batch: usize) -> bool {
        !self.events.is_empty() && self.is_due(max_batch)
    }

    /// Opens the span its commit and what it did are logged in.
    pub(super) fn open_span(&mut self) {
        self.span = tracing::info_span!(
            "batch",
            messages = self.messages,
            events = self.events.len(),
            rejected = self.rejected,
            new = tracing::field::Empty,
            ignored = tracing::field::Empty,
            duplicates = tracing::field::Empty,
            commit_ms = tracing::field::Empty,
        );
    }

    pub(super) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Forgets everything gathered: a cleared batch is an empty one.
    pub(super) fn clear(&mut self) {
        self.events.clear();
        self.arrivals.clear();
        self.oldest_occurred = None;
        self.ids.clear();
        self.confirms.clear();
        self.messages = 0;
        self.rejected = 0;
        self.last_tag = None;
        self.deadline = None;
        self.span = tracing::Span::none();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::EventKind;

    const LINGER: Duration = Duration::from_millis(5);

    fn add_event(batch: &mut Batch, id: &str, tag: u64) {
        let event = Event {
            id: id.to_owned(),
            kind: EventKind::UserActive,
            occurred_at: 0,
            user_id: "u".into(),
        };
        batch.add_event(event, 0);
        batch.add_message(tag, 7, LINGER);
    }

    fn add_dead_letter(batch: &mut Batch, tag: u64) {
        batch.add_dead_letter(None);
        batch.add_message(tag, 7, LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_due_when_full_or_once_its_linger_has_passed() {
        let mut batch = Batch::with_capacity(3);
        assert!(!batch.is_due(3), "an empty batch is never due");
        add_event(&mut batch, "a", 1);
        assert!(!batch.is_due(3));
        tokio::time::advance(LINGER).await;
        assert!(batch.is_due(3), "the linger started with the first message");
        let mut full = Batch::with_capacity(2);
        add_event(&mut full, "a", 1);
        add_event(&mut full, "b", 2);
        assert!(full.is_due(2), "full, before its linger");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_makes_a_gathered_batch_due_before_its_linger_and_leaves_an_empty_one_alone() {
        let mut empty = Batch::with_capacity(3);
        empty.cut();
        assert!(!empty.is_due(3), "nothing to commit");
        let mut batch = Batch::with_capacity(3);
        add_event(&mut batch, "a", 1);
        batch.cut();
        assert!(batch.is_due(3), "due at once, {LINGER:?} before its linger");
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_message_fixes_the_link_and_the_newest_tag_is_acknowledged() {
        let mut batch = Batch::with_capacity(4);
        add_event(&mut batch, "a", 11);
        batch.add_dead_letter(None);
        batch.add_message(12, 8, LINGER); // a malformed one, on a later link number
        add_event(&mut batch, "b", 0); // in-process: nothing to acknowledge
        assert_eq!(batch.link, 7);
        assert_eq!(batch.last_tag, Some(12));
        assert_eq!(batch.messages, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letters_alone_are_not_events_due() {
        let mut batch = Batch::with_capacity(2);
        add_dead_letter(&mut batch, 1);
        add_dead_letter(&mut batch, 2);
        assert!(batch.is_due(2));
        assert!(
            !batch.has_events_due(2),
            "acknowledged only after the batch before"
        );
        add_event(&mut batch, "a", 3);
        assert!(batch.has_events_due(2));
        batch.clear();
        assert!(!batch.is_due(2) && batch.events.is_empty() && batch.ids.is_empty());
        assert_eq!(
            (
                batch.messages,
                batch.rejected,
                batch.last_tag,
                batch.deadline
            ),
            (0, 0, None, None)
        );
    }

    /// A batch with a dead letter dropped (broker link lost, a dead-letter publish failing)
    /// left its count of dead letters behind: the next batch's `repeats()` went below zero (a
    /// panic in the leader loop in debug builds, a nonsense duplicates count in release).
    #[tokio::test(start_paused = true)]
    async fn a_cleared_batch_forgets_its_dead_letters() {
        let mut batch = Batch::with_capacity(4);
        add_event(&mut batch, "a", 1);
        add_dead_letter(&mut batch, 2);
        batch.clear();
        add_event(&mut batch, "b", 3);
        assert_eq!(batch.repeats(), 0);
        batch.add_message(4, 7, LINGER); // a repeat of "b": neither an event nor a dead letter
        assert_eq!(batch.repeats(), 1);
    }
}
