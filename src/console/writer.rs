//! The one task that writes to a console's socket, and the [`Outbox`] through which everything
//! else hands it frames. Nothing waits on the socket but this task: the session and the jobs
//! only queue.
//!
//! Control (ping, pong, close) goes first; then replies and event/audit pushes from a bounded
//! queue ([`WRITE_QUEUE`]); then the latest snapshot and presence, from latest-wins slots, so that
//! a console behind on them gets only the newest. The task ends when the socket fails or it is
//! told to close, after the replies already queued.

use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Replies and event/audit pushes waiting for the socket.
const WRITE_QUEUE: usize = 64;

/// What only the writer may do to the socket, ahead of any frame.
enum Control {
    Ping,
    Pong(bytes::Bytes),
    Close(Option<actix_ws::CloseReason>),
}

/// The writer's inputs; dropping them all ends it.
pub(super) struct Outbox {
    control: mpsc::Sender<Control>,
    frames: mpsc::Sender<String>,
    /// Latest snapshot push (latest wins).
    snapshot: watch::Sender<Option<Arc<str>>>,
    /// Latest presence push (latest wins).
    presence: watch::Sender<Option<Arc<str>>>,
}

impl Outbox {
    /// Starts the writer of `session`; the handle ends with it.
    pub(super) fn open(session: actix_ws::Session) -> (Outbox, JoinHandle<()>) {
        let (control, control_rx) = mpsc::channel(8);
        let (frames, frames_rx) = mpsc::channel(WRITE_QUEUE);
        let (snapshot, snapshot_rx) = watch::channel(None);
        let (presence, presence_rx) = watch::channel(None);
        let writer = tokio::spawn(write(
            session,
            control_rx,
            frames_rx,
            snapshot_rx,
            presence_rx,
        ));
        let outbox = Outbox {
            control,
            frames,
            snapshot,
            presence,
        };
        (outbox, writer)
    }

    /// Queues a frame if there is room; false when the queue is full or the writer is gone.
    pub(super) fn try_frame(&self, frame: String) -> bool {
        self.frames.try_send(frame).is_ok()
    }

    /// Queues a frame, waiting for room; false when the writer is gone.
    pub(super) async fn frame(&self, frame: String) -> bool {
        self.frames.send(frame).await.is_ok()
    }

    /// Where a job queues its reply (bounded; a closed connection just drops it).
    pub(super) fn frames(&self) -> mpsc::Sender<String> {
        self.frames.clone()
    }

    pub(super) fn snapshot(&self, frame: &str) {
        self.snapshot.send_replace(Some(Arc::from(frame)));
    }

    pub(super) fn presence(&self, frame: &str) {
        self.presence.send_replace(Some(Arc::from(frame)));
    }

    /// False when the writer is gone or behind on control frames.
    pub(super) fn ping(&self) -> bool {
        self.control.try_send(Control::Ping).is_ok()
    }

    pub(super) fn pong(&self, bytes: bytes::Bytes) {
        let _ = self.control.try_send(Control::Pong(bytes));
    }

    /// Tells the writer to send what is queued, then close with `reason`.
    pub(super) async fn close(&self, reason: Option<actix_ws::CloseReason>) {
        let _ = self.control.send(Control::Close(reason)).await;
    }
}

/// Control first, then replies and pushes, then the latest snapshot and presence.
async fn write(
    mut session: actix_ws::Session,
    mut control: mpsc::Receiver<Control>,
    mut frames: mpsc::Receiver<String>,
    mut snapshot: watch::Receiver<Option<Arc<str>>>,
    mut presence: watch::Receiver<Option<Arc<str>>>,
) {
    let reason = loop {
        let sent = tokio::select! {
            biased;
            item = control.recv() => match item {
                Some(Control::Ping) => session.ping(b"").await,
                Some(Control::Pong(bytes)) => session.pong(&bytes).await,
                Some(Control::Close(reason)) => break reason,
                None => break None,
            },
            frame = frames.recv() => match frame {
                Some(frame) => session.text(frame).await,
                None => break None,
            },
            Ok(()) = snapshot.changed() => {
                let frame = snapshot.borrow_and_update().clone();
                send_latest(&mut session, frame).await
            }
            Ok(()) = presence.changed() => {
                let frame = presence.borrow_and_update().clone();
                send_latest(&mut session, frame).await
            }
        };
        if sent.is_err() {
            // The client is gone.
            return;
        }
    };
    // Replies already queued still go out before the close.
    while let Ok(frame) = frames.try_recv() {
        if session.text(frame).await.is_err() {
            return;
        }
    }
    let _ = session.close(reason).await;
}

async fn send_latest(
    session: &mut actix_ws::Session,
    frame: Option<Arc<str>>,
) -> Result<(), actix_ws::Closed> {
    match frame {
        Some(frame) => session.text(frame.to_string()).await,
        None => Ok(()),
    }
}
