//! What this instance tells the others: the messages `fanout` seals and publishes on
//! `<prefix>.live`, and the queue they wait in. Senders never block: a full queue drops the
//! message (`fanout`'s module header says why that is safe for each kind).

use crate::control::Request;
use crate::live::{Announcement, SnapshotFrame};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What this instance tells the others.
#[derive(Debug)]
pub(crate) enum Outgoing {
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
pub(crate) struct SignOut {
    /// The session's key hash, as stored (`auth::session_key`): 64 lower-case hex digits.
    pub session: String,
}

impl SignOut {
    pub(crate) fn well_formed(&self) -> bool {
        self.session.len() == 64
            && self
                .session
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

/// What a message between instances is: its AMQP `type`, which its seal covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Snapshot,
    Announcement,
    Refresh,
    Request,
    Answer,
    Beacon,
    Audit,
    Event,
    SignOut,
}

impl Kind {
    pub(crate) const ALL: [Kind; 9] = [
        Kind::Snapshot,
        Kind::Announcement,
        Kind::Refresh,
        Kind::Request,
        Kind::Answer,
        Kind::Beacon,
        Kind::Audit,
        Kind::Event,
        Kind::SignOut,
    ];

    /// The wire name (the AMQP `type` property).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Snapshot => "snapshot",
            Kind::Announcement => "announcement",
            Kind::Refresh => "refresh",
            Kind::Request => "request",
            Kind::Answer => "answer",
            Kind::Beacon => "beacon",
            Kind::Audit => "audit",
            Kind::Event => "event",
            Kind::SignOut => "sign_out",
        }
    }

    /// The kind a wire name names; `None` for anything else.
    pub(crate) fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl Outgoing {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Outgoing::Snapshot(_) => Kind::Snapshot,
            Outgoing::Announcement(_) => Kind::Announcement,
            Outgoing::Refresh => Kind::Refresh,
            Outgoing::Request { .. } => Kind::Request,
            Outgoing::Audit(_) => Kind::Audit,
            Outgoing::Event(_) => Kind::Event,
            Outgoing::SignOut(_) => Kind::SignOut,
        }
    }
}

#[derive(Clone)]
pub(crate) struct FanoutSender(mpsc::Sender<Outgoing>);

impl FanoutSender {
    pub(crate) fn channel() -> (FanoutSender, mpsc::Receiver<Outgoing>) {
        let (sender, receiver) = mpsc::channel(64);
        (FanoutSender(sender), receiver)
    }

    pub(crate) fn send(&self, frame: Arc<SnapshotFrame>) {
        let _ = self.0.try_send(Outgoing::Snapshot(frame));
    }

    pub(crate) fn send_announcement(&self, announcement: Announcement) {
        let _ = self.0.try_send(Outgoing::Announcement(announcement));
    }

    /// Asks whichever instance leads to publish a snapshot now.
    pub(crate) fn request_refresh(&self) {
        let _ = self.0.try_send(Outgoing::Refresh);
    }

    /// Asks every instance (this one included); `false` when the queue to the broker is full.
    pub(crate) fn send_request(&self, correlation: String, request: Request) -> bool {
        self.0
            .try_send(Outgoing::Request {
                correlation,
                request,
            })
            .is_ok()
    }

    pub(crate) fn send_audit(&self, row: Arc<str>) {
        let _ = self.0.try_send(Outgoing::Audit(row));
    }

    pub(crate) fn send_event(&self, event: Arc<str>) {
        let _ = self.0.try_send(Outgoing::Event(event));
    }

    /// Tells every instance that the session with key hash `key` signed out.
    pub(crate) fn send_sign_out(&self, key: &str) {
        let sign_out = SignOut {
            session: key.to_owned(),
        };
        if self.0.try_send(Outgoing::SignOut(sign_out)).is_err() {
            tracing::warn!("the fan-out queue is full: other instances end this session's connections only at their next request");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_wire_name_and_nothing_else_does() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        for other in ["", "Snapshot", "snapshot ", "signout"] {
            assert_eq!(Kind::parse(other), None, "{other:?}");
        }
    }
}
