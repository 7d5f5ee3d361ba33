//! The hub: what every client connection of this instance reads from.
//!
//! - **Snapshots** sit in a `watch` channel: one slot, latest wins. A connection that falls
//!   behind skips straight to the newest snapshot (the skipped ones are counted as coalesced), so
//!   a slow client costs one pointer, never a queue.
//! - **Announcements** go through one shared `broadcast` ring. A connection that falls more than
//!   the ring behind gets `Lagged` and is disconnected; it resumes with `Last-Event-ID` and the
//!   missed announcements are replayed from the database. Nothing is dropped silently.
//! - Every frame is encoded once, here, in the SSE form every connection writes as is.
//!
//! Event ids are `<announcement id>-<snapshot seq>`: the last announcement delivered before the
//! frame, and the snapshot current when it was made. Announcements are broadcast and snapshot
//! ids stamped under one lock, so a client that has a snapshot id `A-S` has already been sent
//! announcement `A`.

use super::{Announcement, SnapshotFrame};
use crate::aggregate::Millis;

use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Announcements a connection may fall behind before it is disconnected.
pub(crate) const ANNOUNCEMENT_RING: usize = 256;
/// Replay window for missed announcements (docs/api.md, Server-Sent Events: resume).
pub(crate) const REPLAY_WINDOW_MS: Millis = 24 * 3_600_000;

/// A position in the stream of events, as carried by SSE ids and the long-poll `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct EventId {
    pub announcement: i64,
    pub seq: i64,
}

impl EventId {
    pub(crate) fn parse(text: &str) -> Option<EventId> {
        let (announcement, seq) = text.trim().split_once('-')?;
        Some(EventId {
            announcement: announcement.parse().ok().filter(|a: &i64| *a >= 0)?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.announcement, self.seq)
    }
}

/// A snapshot as this instance hands it out.
#[derive(Debug)]
pub(crate) struct PublishedSnapshot {
    /// Counts snapshots published on this instance, to measure coalescing per connection.
    pub index: u64,
    pub id: EventId,
    pub frame: Arc<SnapshotFrame>,
    /// `id:`/`event: snapshot`/`data:` lines, ready to write.
    pub sse: Bytes,
}

/// An announcement as this instance hands it out.
#[derive(Debug)]
pub(crate) struct AnnouncementFrame {
    pub announcement: Announcement,
    pub sse: Bytes,
}

struct Cursor {
    last_announcement: i64,
    seq: i64,
    index: u64,
}

struct Inner {
    snapshots: watch::Sender<Option<Arc<PublishedSnapshot>>>,
    announcements: broadcast::Sender<Arc<AnnouncementFrame>>,
    cursor: Mutex<Cursor>,
    closing: CancellationToken,
}

/// Cloning is shallow.
#[derive(Clone)]
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// A hub whose announcement cursor starts at `last_announcement` (what the store has).
    pub(crate) fn new(last_announcement: i64) -> Self {
        Hub {
            inner: Arc::new(Inner {
                snapshots: watch::Sender::new(None),
                announcements: broadcast::channel(ANNOUNCEMENT_RING).0,
                cursor: Mutex::new(Cursor {
                    last_announcement,
                    seq: 0,
                    index: 0,
                }),
                closing: CancellationToken::new(),
            }),
        }
    }

    fn cursor(&self) -> MutexGuard<'_, Cursor> {
        crate::sync::lock(&self.inner.cursor)
    }

    /// Makes `frame` the current snapshot unless a newer one is already here (a late fan-out
    /// message from a former leader must not move `seq` backwards). Returns whether it was taken.
    pub(crate) fn publish(&self, frame: Arc<SnapshotFrame>) -> bool {
        let mut cursor = self.cursor();
        if frame.seq() <= cursor.seq {
            return false;
        }
        cursor.seq = frame.seq();
        cursor.index += 1;
        let id = EventId {
            announcement: cursor.last_announcement,
            seq: frame.seq(),
        };
        let published = PublishedSnapshot {
            index: cursor.index,
            id,
            sse: sse_event(&id, "snapshot", &frame.json),
            frame,
        };
        self.inner.snapshots.send_replace(Some(Arc::new(published)));
        true
    }

    /// Makes `frame` the current snapshot even when its seq is lower: for a hub whose seq is
    /// ahead of anything the store reserved (a database restored from a backup), which would
    /// otherwise refuse every snapshot until a leader caught up.
    pub(crate) fn rebase(&self, frame: Arc<SnapshotFrame>) -> bool {
        self.cursor().seq = frame.seq() - 1;
        self.publish(frame)
    }

    #[cfg(test)]
    pub(crate) fn deliver_for_test(&self, announcement: Announcement) {
        self.deliver(announcement);
    }

    /// Delivers an announcement to every connection, unless it is not newer than the last one
    /// delivered (the caller fills gaps from the store first: `core::Core::announce`).
    pub(crate) fn deliver(&self, announcement: Announcement) {
        let mut cursor = self.cursor();
        if announcement.id <= cursor.last_announcement {
            return;
        }
        cursor.last_announcement = announcement.id;
        let frame = AnnouncementFrame::new(announcement, cursor.seq);
        // No receiver is not an error: nobody is connected right now.
        let _ = self.inner.announcements.send(Arc::new(frame));
    }

    pub(crate) fn last_announcement(&self) -> i64 {
        self.cursor().last_announcement
    }

    /// Whether this hub has reached `id` itself (`false`: the store may know it; see
    /// `core::Core::recognise`).
    pub(crate) fn has_reached(&self, id: EventId) -> (bool, bool) {
        let announcement = id.announcement <= self.last_announcement();
        let seq = id.seq <= self.latest().map_or(0, |p| p.id.seq);
        (announcement, seq)
    }

    /// Where a client that has just been sent `current` stands: every announcement this hub
    /// has delivered is "before it", whatever the snapshot was stamped with.
    pub(crate) fn position_of(&self, current: &PublishedSnapshot) -> EventId {
        EventId {
            announcement: self.last_announcement(),
            seq: current.id.seq,
        }
    }

    pub(crate) fn latest(&self) -> Option<Arc<PublishedSnapshot>> {
        self.inner.snapshots.borrow().clone()
    }

    pub(crate) fn latest_frame(&self) -> Option<Arc<SnapshotFrame>> {
        self.latest().map(|p| p.frame.clone())
    }

    /// A connection's view: snapshot slot and announcement ring, taken together so that no
    /// announcement falls between them.
    pub(crate) fn subscribe(&self) -> Subscription {
        let _cursor = self.cursor();
        Subscription {
            snapshots: self.inner.snapshots.subscribe(),
            announcements: self.inner.announcements.subscribe(),
        }
    }

    /// Ends every connection (shutdown).
    pub(crate) fn close(&self) {
        self.inner.closing.cancel();
    }

    pub(crate) fn closing(&self) -> CancellationToken {
        self.inner.closing.clone()
    }
}

pub(crate) struct Subscription {
    pub snapshots: watch::Receiver<Option<Arc<PublishedSnapshot>>>,
    pub announcements: broadcast::Receiver<Arc<AnnouncementFrame>>,
}

impl AnnouncementFrame {
    pub(crate) fn new(announcement: Announcement, seq: i64) -> Self {
        // A struct of strings and numbers always serializes.
        let json = serde_json::to_string(&announcement).unwrap_or_default();
        let id = EventId {
            announcement: announcement.id,
            seq,
        };
        AnnouncementFrame {
            sse: sse_event(&id, "announcement", &json),
            announcement,
        }
    }
}

/// One SSE event. `data` is single-line JSON, so one `data:` line carries it.
pub(crate) fn sse_event(id: &EventId, event: &str, data: &str) -> Bytes {
    Bytes::from(format!("id: {id}\nevent: {event}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_reject_garbage() {
        let id = EventId {
            announcement: 7,
            seq: 1042,
        };
        assert_eq!(EventId::parse(&id.to_string()), Some(id));
        for garbage in ["", "7", "x-1", "7-", "-1-5", "1-2-3"] {
            assert_eq!(EventId::parse(garbage), None, "{garbage}");
        }
    }
}
