//! The batch a leader gathers between commits: decoded events with their arrival times, the
//! dead letters to confirm and the delivery tag to acknowledge through, and when it is due.
//! Pure bookkeeping: no I/O; the leader decides what goes in.

use crate::aggregate::{Event, Millis};
use lapin::publisher_confirm::PublisherConfirm;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// Messages gathered since the last commit started, already decoded.
pub(super) struct Batch {
    pub(super) events: Vec<Event>,
    pub(super) arrivals: Vec<Millis>,
    /// Ids in `events`: a repeat within one batch is a duplicate before it reaches the store.
    pub(super) ids: HashSet<String>,
    /// Dead letters published for this batch's malformed messages, confirmed before the ack.
    pub(super) confirms: Vec<PublisherConfirm>,
    /// Messages of every kind (events, duplicates, malformed) and the newest delivery tag.
    pub(super) messages: usize,
    /// Of them, the malformed ones (dead-lettered).
    pub(super) rejected: usize,
    pub(super) last_tag: Option<u64>,
    /// The broker link the messages came from (`Feed::link_generation`).
    pub(super) link: u64,
    /// When the batch is committed even if it is not full.
    pub(super) deadline: Option<Instant>,
    /// Its commit and what it did, in the logs (set when its commit starts).
    pub(super) span: tracing::Span,
}

impl Batch {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Batch {
            events: Vec::with_capacity(capacity),
            arrivals: Vec::with_capacity(capacity),
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

    /// Counts a message gathered (its event, if any, is already in). Tag 0 is an in-process
    /// message with nothing to acknowledge.
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

    /// Messages that repeated an id already in this batch: each message is an event of it,
    /// a repeat or a dead letter.
    pub(super) fn repeats(&self) -> usize {
        self.messages - self.events.len() - self.rejected
    }

    pub(super) fn is_due(&self, max_batch: usize) -> bool {
        self.messages >= max_batch || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Due, and holds events to commit. A batch of dead letters alone is acknowledged as soon
    /// as its commit starts, so it must wait until the batch before it is acknowledged.
    pub(super) fn has_events_due(&self, max_batch: usize) -> bool {
        !self.events.is_empty() && self.is_due(max_batch)
    }

    pub(super) fn clear(&mut self) {
        self.events.clear();
        self.arrivals.clear();
        self.ids.clear();
        self.confirms.clear();
        self.messages = 0;
        self.last_tag = None;
        self.deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::EventKind;

    const LINGER: Duration = Duration::from_millis(5);

    fn add_event(batch: &mut Batch, id: &str, tag: u64) {
        batch.ids.insert(id.to_owned());
        batch.events.push(Event {
            id: id.to_owned(),
            kind: EventKind::UserActive,
            occurred_at: 0,
            user_id: "u".into(),
        });
        batch.arrivals.push(0);
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
    async fn the_first_message_fixes_the_link_and_the_newest_tag_is_acknowledged() {
        let mut batch = Batch::with_capacity(4);
        add_event(&mut batch, "a", 11);
        batch.add_message(12, 8, LINGER); // a malformed one, on a later link number
        add_event(&mut batch, "b", 0); // in-process: nothing to acknowledge
        assert_eq!(batch.link, 7);
        assert_eq!(batch.last_tag, Some(12));
        assert_eq!(batch.messages, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letters_alone_are_not_events_due() {
        let mut batch = Batch::with_capacity(2);
        batch.add_message(1, 1, LINGER);
        batch.add_message(2, 1, LINGER);
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
            (batch.messages, batch.last_tag, batch.deadline),
            (0, None, None)
        );
    }
}
