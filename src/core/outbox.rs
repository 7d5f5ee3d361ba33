//! What this instance tells the others: the messages `fanout` seals and publishes on
//! `<prefix>.live`, and the queue they wait in. Senders never block: a full queue drops the
//! message (`fanout`'s module header says why that is safe for each kind).

use crate::control::Request;
use crate::live::{Announcement, SnapshotFrame};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What this instance tells the others.
#[derive(Debug)]
pub enum Outgoing {
    Snapshot(Arc<SnapshotFrame>),
    Announcement(Announcement),
    Refresh,
    /// A question to every instance; answers come back to this instance's queue.
    Request {
        correlation: String,
        request: Request,
    },
    /// A console command's audit row, JSON: every console subscribed to `audit` gets it.
    Audit(Arc<str>),
    /// A sampled accepted event, JSON: every console subscribed to `events` gets it.
    Event(Arc<str>),
    /// A browser session signed out (its key hash): every instance ends its connections.
    SignOut(SignOut),
}

/// The body of a `sign_out` message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignOut {
    /// The session's key hash, as stored (`auth::session_key`): 64 lower-case hex digits.
    pub session: String,
}

impl SignOut {
    pub fn well_formed(&self) -> bool {
        self.session.len() == 64
            && self
                .session
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

impl Outgoing {
    pub fn kind(&self) -> &'static str {
        match self {
            Outgoing::Snapshot(_) => "snapshot",
            Outgoing::Announcement(_) => "announcement",
            Outgoing::Refresh => "refresh",
            Outgoing::Request { .. } => "request",
            Outgoing::Audit(_) => "audit",
            Outgoing::Event(_) => "event",
            Outgoing::SignOut(_) => "sign_out",
        }
    }
}

#[derive(Clone)]
pub struct FanoutSender(mpsc::Sender<Outgoing>);

impl FanoutSender {
    pub fn channel() -> (FanoutSender, mpsc::Receiver<Outgoing>) {
        let (sender, receiver) = mpsc::channel(64);
        (FanoutSender(sender), receiver)
    }

    pub fn send(&self, frame: Arc<SnapshotFrame>) {
        let _ = self.0.try_send(Outgoing::Snapshot(frame));
    }

    pub fn send_announcement(&self, announcement: Announcement) {
        let _ = self.0.try_send(Outgoing::Announcement(announcement));
    }

    /// Asks whichever instance leads to publish a snapshot now.
    pub fn request_refresh(&self) {
        let _ = self.0.try_send(Outgoing::Refresh);
    }

    /// Asks every instance (this one included); `false` when the queue to the broker is full.
    pub fn send_request(&self, correlation: String, request: Request) -> bool {
        self.0
            .try_send(Outgoing::Request {
                correlation,
                request,
            })
            .is_ok()
    }

    pub fn send_audit(&self, row: Arc<str>) {
        let _ = self.0.try_send(Outgoing::Audit(row));
    }

    pub fn send_event(&self, event: Arc<str>) {
        let _ = self.0.try_send(Outgoing::Event(event));
    }

    /// Tells every instance that the session with key hash `key` signed out.
    pub fn send_sign_out(&self, key: &str) {
        let sign_out = SignOut {
            session: key.to_owned(),
        };
        if self.0.try_send(Outgoing::SignOut(sign_out)).is_err() {
            tracing::warn!("the fan-out queue is full: other instances end this session's connections only at their next request");
        }
    }
}
