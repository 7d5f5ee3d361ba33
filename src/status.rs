//! What this instance knows about ingest right now: read by readiness, snapshots, the console
//! and pages; written by the two tasks that learn it.
//!
//! Each fact has one writer, and the type says which: [`IngestFacts`] are written only through
//! [`StatusCell::update_ingest`] (by `ingest`: the lease loop and the leader's term),
//! [`FanoutFacts`] only through [`StatusCell::update_fanout`] (by `fanout`). Readers take a
//! copy with [`StatusCell::get`].

use std::sync::{Mutex, MutexGuard};

/// A RabbitMQ link as its owner last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Link {
    pub connected: bool,
    /// Why it last went down; kept after it comes back, until the next failure replaces it.
    pub last_error: Option<String>,
}

/// Written by `ingest`.
#[derive(Debug, Clone, Default)]
pub(crate) struct IngestFacts {
    /// This instance holds the lease and aggregates.
    pub is_leader: bool,
    /// The lease holder as this instance last saw it.
    pub leader: Option<String>,
    /// Events come from the demo's in-process queue: there is no broker to be connected to.
    pub local_demo: bool,
    pub paused: bool,
    /// The leader's consumer link (meaningful while `is_leader`).
    pub consumer: Link,
    /// A new term's first consumer link is being opened: until it is (or fails), readiness
    /// still rests on the fan-out link, so that taking over does not flap `/readyz`.
    pub term_connecting: bool,
    /// The database error that ended the last lease attempt or term, until one succeeds.
    pub database_error: Option<String>,
    pub lag_seconds: f64,
}

/// Written by `fanout`.
#[derive(Debug, Clone, Default)]
pub(crate) struct FanoutFacts {
    /// The link that brings the leader's snapshots to this instance (and takes them out).
    pub link: Link,
    pub dead_letters: u64,
    pub queue_depth: u64,
}

/// A copy of everything known.
#[derive(Debug, Clone, Default)]
pub(crate) struct IngestStatus {
    pub ingest: IngestFacts,
    pub fanout: FanoutFacts,
}

impl IngestStatus {
    /// The link this instance's readiness rests on: the leader's consumer, or the fan-out link
    /// that brings the others their snapshots. `None` in the in-process demo, which has none.
    pub(crate) fn ingest_link(&self) -> Option<&Link> {
        if self.ingest.local_demo {
            None
        } else if self.ingest.is_leader && !self.ingest.term_connecting {
            Some(&self.ingest.consumer)
        } else {
            Some(&self.fanout.link)
        }
    }
}

/// Shared, briefly locked status. A std mutex: nothing awaits while holding it.
#[derive(Debug, Default)]
pub(crate) struct StatusCell(Mutex<IngestStatus>);

impl StatusCell {
    pub(crate) fn get(&self) -> IngestStatus {
        self.lock().clone()
    }

    pub(crate) fn update_ingest(&self, change: impl FnOnce(&mut IngestFacts)) {
        change(&mut self.lock().ingest);
    }

    pub(crate) fn update_fanout(&self, change: impl FnOnce(&mut FanoutFacts)) {
        change(&mut self.lock().fanout);
    }

    fn lock(&self) -> MutexGuard<'_, IngestStatus> {
        crate::sync::lock(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_rests_on_the_leaders_consumer_or_the_followers_fanout_link() {
        let cell = StatusCell::default();
        cell.update_fanout(|f| f.link.connected = true);
        assert_eq!(cell.get().ingest_link().map(|l| l.connected), Some(true));
        cell.update_ingest(|i| i.is_leader = true);
        // The leader's fan-out link is up, but its consumer is not: not ready.
        assert_eq!(cell.get().ingest_link().map(|l| l.connected), Some(false));
        // A new leader opening its first consumer link is as ready as it was as a follower.
        cell.update_ingest(|i| i.term_connecting = true);
        assert_eq!(cell.get().ingest_link().map(|l| l.connected), Some(true));
        cell.update_ingest(|i| i.term_connecting = false);
        cell.update_ingest(|i| i.local_demo = true);
        assert_eq!(cell.get().ingest_link(), None);
    }
}
