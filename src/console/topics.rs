//! The topics a console subscribed to (docs/api.md, Console: pushes): where each is read from,
//! and how what arrives becomes a push in the [`Outbox`]. Snapshots and presence are latest-wins
//! (a console behind on them gets only the newest); events and audit entries are sampled: one
//! that finds the queue full is dropped, and counted, with those the console's feed skipped, in
//! the `skipped` of the next one that goes out.

use super::commands::Topic;
use super::protocol::{self, PushKind};
use super::replies::Subscribed;
use super::writer::Outbox;
use crate::app::AppState;
use crate::live::hub::PublishedSnapshot;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

type Snapshots = watch::Receiver<Option<Arc<PublishedSnapshot>>>;

pub(super) struct Topics {
    snapshots: Option<Snapshots>,
    events: Sampled,
    audit: Sampled,
    presence: Option<watch::Receiver<Arc<str>>>,
}

/// A topic of items encoded once for every console (JSON objects), sampled for this one.
struct Sampled {
    kind: PushKind,
    receiver: Option<broadcast::Receiver<Arc<str>>>,
    /// Items this console missed since its last push of them, added to the next one's count.
    skipped: u64,
}

/// What came on one of the topics.
pub(super) enum Arrival {
    Snapshot(Option<Arc<PublishedSnapshot>>),
    /// An event, or how many this console's feed skipped (`Err`).
    Event(Result<Arc<str>, u64>),
    Audit(Result<Arc<str>, u64>),
    Presence(Option<Arc<str>>),
}

impl Topics {
    pub(super) fn new() -> Topics {
        Topics {
            snapshots: None,
            events: Sampled::new(PushKind::Event),
            audit: Sampled::new(PushKind::Audit),
            presence: None,
        }
    }

    /// Subscribes to `topics` (`on`) or unsubscribes; returns the topics on afterwards.
    pub(super) fn change(&mut self, state: &AppState, topics: &[Topic], on: bool) -> Subscribed {
        for topic in topics {
            match (topic, on) {
                (Topic::Snapshots, true) => {
                    let mut receiver = state.core.hub.subscribe().snapshots;
                    // The current snapshot at once, then every change.
                    receiver.mark_changed();
                    self.snapshots = Some(receiver);
                }
                (Topic::Events, true) => {
                    self.events.receiver = Some(state.core.feeds.events.subscribe())
                }
                (Topic::Audit, true) => {
                    self.audit.receiver = Some(state.core.feeds.audit.subscribe())
                }
                (Topic::Presence, true) => {
                    let mut receiver = state.core.feeds.presence.subscribe();
                    receiver.mark_changed();
                    self.presence = Some(receiver);
                }
                (Topic::Snapshots, false) => self.snapshots = None,
                (Topic::Events, false) => self.events.receiver = None,
                (Topic::Audit, false) => self.audit.receiver = None,
                (Topic::Presence, false) => self.presence = None,
            }
        }
        let on = [
            (Topic::Snapshots, self.snapshots.is_some()),
            (Topic::Events, self.events.receiver.is_some()),
            (Topic::Audit, self.audit.receiver.is_some()),
            (Topic::Presence, self.presence.is_some()),
        ];
        Subscribed {
            subscribed: on.iter().filter(|(_, on)| *on).map(|(t, _)| *t).collect(),
        }
    }

    /// The next arrival on any subscribed topic; never ready while none is.
    pub(super) async fn next(&mut self) -> Arrival {
        tokio::select! {
            changed = next_change(&mut self.snapshots) => Arrival::Snapshot(changed.flatten()),
            item = self.events.next() => Arrival::Event(item),
            item = self.audit.next() => Arrival::Audit(item),
            changed = next_change(&mut self.presence) => Arrival::Presence(changed),
        }
    }

    /// Turns an arrival into its push.
    pub(super) fn forward(&mut self, arrival: Arrival, outbox: &Outbox) {
        match arrival {
            Arrival::Snapshot(Some(published)) => outbox.snapshot(&protocol::push_raw(
                PushKind::Snapshot,
                &published.frame.json,
            )),
            Arrival::Presence(Some(payload)) => {
                outbox.presence(&protocol::push_raw(PushKind::Presence, &payload))
            }
            Arrival::Snapshot(None) | Arrival::Presence(None) => {}
            Arrival::Event(item) => self.events.forward(item, outbox),
            Arrival::Audit(item) => self.audit.forward(item, outbox),
        }
    }
}

impl Sampled {
    fn new(kind: PushKind) -> Sampled {
        Sampled {
            kind,
            receiver: None,
            skipped: 0,
        }
    }

    /// The next item, or how many were missed (`Err`).
    async fn next(&mut self) -> Result<Arc<str>, u64> {
        match &mut self.receiver {
            Some(receiver) => match receiver.recv().await {
                Ok(item) => Ok(item),
                Err(RecvError::Lagged(missed)) => Err(missed),
                Err(RecvError::Closed) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Pushes an item, or counts it (and the missed ones) for the next.
    fn forward(&mut self, received: Result<Arc<str>, u64>, outbox: &Outbox) {
        let payload = match received {
            Ok(payload) => payload,
            Err(missed) => {
                self.skipped += missed;
                return;
            }
        };
        // Encoded once for every console; decoded again only to add what this one missed.
        let frame = if self.skipped == 0 {
            protocol::push_raw(self.kind, &payload)
        } else {
            let mut value: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
            let upstream = value["skipped"].as_u64().unwrap_or(0);
            value["skipped"] = json!(upstream + self.skipped);
            protocol::push(self.kind, value)
        };
        if outbox.try_frame(frame) {
            self.skipped = 0;
        } else {
            // The socket is behind: drop it and say so in the next one.
            self.skipped += 1;
        }
    }
}

/// The next value of a subscribed latest-wins topic; never ready while it is not subscribed
/// (or its sender is gone).
async fn next_change<T: Clone>(receiver: &mut Option<watch::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => match receiver.changed().await {
            Ok(()) => Some(receiver.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
