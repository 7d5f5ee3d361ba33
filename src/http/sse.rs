//! `GET /api/dashboard/stream`: Server-Sent Events (see docs/api.md, Server-Sent Events).
//!
//! A connection opens with `retry:`, then (when resuming) every announcement it missed, from the
//! store, in order, then the current snapshot. A resume id newer than anything the service knows
//! (after a database restore, or made up) counts as unknown: every announcement kept is
//! replayed, so that such a client is never left waiting for ids that will not come. Afterwards it writes announcements as they come,
//! the newest snapshot when there is one it has not written, and a comment line when it has been
//! quiet for a heartbeat interval.
//!
//! The body reads this worker's copy of the hub (`live::worker_feed`), and is polled only when
//! the socket can take more, so a slow reader never queues frames: snapshots coalesce in the
//! feed's one slot. A reader that falls a whole announcement ring behind is disconnected here
//! (it resumes by `Last-Event-ID`), and one that stops reading entirely is aborted by the
//! kernel (`TCP_USER_TIMEOUT`, set in `startup`).
//!
//! A stream the registry ends (an operator's kick, its credential revoked or expired: see
//! `live::credentials`) writes a last comment saying why (`: closed: revoked: …`), then ends.
//!
//! The body is a hand-written stream so that a wake-up costs a few reads of the feed: its waits
//! (the feed, an ending, the heartbeat timer) stay registered without a lock, and the
//! heartbeat timer is moved only when it fires, not at every write.

use super::extract::Reader;
use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::live::connection::{CloseReason, ConnectionGuard, Sent, Transport};
use crate::live::hub::{sse_event, AnnouncementFrame, EventId, REPLAY_WINDOW_MS};
use crate::live::limit::StreamSlot;
use crate::live::worker_feed::{Lagged, Listing, WorkerFeed};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

/// Reconnection delay suggested to EventSource clients.
const RETRY_MS: u64 = 2_000;
const REPLAY_PAGE: i64 = 1_000;

#[derive(Debug, Deserialize)]
pub(super) struct StreamQuery {
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

pub(super) async fn stream(
    viewer: Reader,
    request: HttpRequest,
    query: web::Query<StreamQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let resume_text = request
        .headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.into_inner().last_event_id);
    let resume = match resume_text.as_deref().and_then(EventId::parse) {
        // An id from the future is unknown: replay everything kept (from announcement 0).
        Some(id) => Some(state.core.recognise(id).await?.unwrap_or_default()),
        None => None,
    };
    // Before anything is subscribed or sent: a refused stream costs nothing.
    let slot = state
        .streams
        .acquire(viewer.0.username())
        .ok_or(ApiError::TooManyStreams(state.streams.max()))?;
    let mut guard = ConnectionGuard::open(
        state.core.metrics.clone(),
        Transport::Sse,
        resume_text.is_some(),
    );
    guard.register_stream(&state.core.registry, viewer.0.grant);

    let feed = request
        .app_data::<WorkerFeed>()
        .cloned()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no worker feed in this App")))?;
    // Follow before reading the store, so nothing falls between replay and live delivery.
    let position = feed.follow();
    let mut opening = BytesMut::new();
    opening.extend_from_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
    let mut last_announcement = state.core.hub.last_announcement();
    if let Some(resume) = resume {
        last_announcement = resume.announcement;
        let seq = state.core.hub.latest().map_or(resume.seq, |p| p.id.seq);
        // Page through everything missed: the opening snapshot's id will cover it all.
        loop {
            let page = state
                .core
                .store
                .announcements_after(last_announcement, now_ms() - REPLAY_WINDOW_MS, REPLAY_PAGE)
                .await?;
            let complete = (page.len() as i64) < REPLAY_PAGE;
            for stored in page {
                last_announcement = last_announcement.max(stored.id);
                opening.extend_from_slice(&AnnouncementFrame::new(stored.into(), seq).sse);
                guard.count_sent(Sent::Announcement);
            }
            if complete {
                break;
            }
        }
    }
    let mut last_index = 0;
    if let Some(current) = state.core.hub.latest() {
        last_index = current.index;
        // The announcements this client has (sent, or before it connected) are those up to
        // `last_announcement`, whatever the snapshot was stamped with: a later one may not
        // have reached it yet (it follows from the ring), and must not be skipped on resume.
        let id = EventId {
            announcement: last_announcement,
            seq: current.id.seq,
        };
        opening.extend_from_slice(&sse_event(&id, "snapshot", &current.frame.json));
        guard.count_sent(Sent::Snapshot);
    }

    let now = Instant::now();
    let body = SseBody {
        quiet: tokio::time::sleep_until(now + state.live.heartbeat),
        stream: StreamState {
            feed,
            position,
            listing: Listing::default(),
            opening: Some(opening.freeze()),
            last_announcement,
            last_index,
            last_write: now,
            finished: false,
            state: state.clone(),
            guard,
            _slot: slot,
        },
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// What [`StreamState::stopped`] found.
enum Stop {
    No,
    Silently,
    /// With this last chunk.
    Saying(Bytes),
}

pin_project_lite::pin_project! {
    /// The timer inline rather than boxed: one allocation less per connection.
    struct SseBody {
        // Fires a heartbeat after the last write; moved when it fires, not at every write.
        #[pin]
        quiet: Sleep,
        stream: StreamState,
    }
}

struct StreamState {
    feed: WorkerFeed,
    /// The next announcement to write, as a position in the feed's ring.
    position: u64,
    /// Where the feed lists this stream to be woken.
    listing: Listing,
    /// `retry:`, the replayed announcements and the current snapshot, written first, at once.
    opening: Option<Bytes>,
    last_announcement: i64,
    last_index: u64,
    last_write: Instant,
    /// The last chunk (why the server ended it) is written: the next poll ends the body.
    finished: bool,
    /// `PULSEBOARD_HEARTBEAT_SECS` and the stall timeout (`state.live`), shared by every
    /// stream: two durations less per connection.
    state: web::Data<AppState>,
    guard: ConnectionGuard,
    /// This user's share of `PULSEBOARD_MAX_STREAMS_PER_USER`, held while the stream lives.
    _slot: StreamSlot,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.feed.forget(&self.listing);
        // The kernel aborts a reader that stopped reading; from here that looks like a close,
        // except that we had something to send and could not for a long while.
        // The cheap checks first: the hub is shared, and every stream ends at a shutdown.
        if !self.guard.closed_by_client()
            || self.last_write.elapsed() < self.state.live.stall_timeout / 2
        {
            return;
        }
        let hub = self.feed.hub();
        let behind = hub.last_announcement() > self.last_announcement
            || hub.latest().is_some_and(|p| p.index > self.last_index);
        if behind {
            self.guard.set_reason(CloseReason::SlowClient);
        }
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let stream = this.stream;
        if let Some(opening) = stream.opening.take() {
            return Poll::Ready(Some(Ok(stream.wrote(opening))));
        }
        if stream.finished {
            return Poll::Ready(None);
        }
        match stream.stopped(cx) {
            Stop::No => {}
            Stop::Silently => return Poll::Ready(None),
            Stop::Saying(last) => {
                stream.finished = true;
                return Poll::Ready(Some(Ok(last)));
            }
        }
        loop {
            match stream.feed.announcement(stream.position) {
                Err(Lagged) => match stream.feed.after_lag(stream.last_announcement) {
                    // Only announcements it already has (or predate it) left the ring.
                    Some(first) => stream.position = first,
                    None => {
                        stream.guard.set_reason(CloseReason::SlowClient);
                        return Poll::Ready(None);
                    }
                },
                Ok(Some((id, sse))) => {
                    stream.position += 1;
                    if id <= stream.last_announcement {
                        continue;
                    }
                    stream.last_announcement = id;
                    stream.guard.count_sent(Sent::Announcement);
                    return Poll::Ready(Some(Ok(stream.wrote(sse))));
                }
                Ok(None) => break,
            }
        }
        if let Some(snapshot) = stream.feed.snapshot_after(stream.last_index) {
            let skipped = snapshot.index - stream.last_index - 1;
            if stream.last_index > 0 && skipped > 0 {
                stream.guard.count_coalesced(skipped);
            }
            stream.last_index = snapshot.index;
            stream.guard.count_sent(Sent::Snapshot);
            if let Some(arrival) = snapshot.oldest_arrival {
                stream.guard.observe_delivery(arrival);
            }
            return Poll::Ready(Some(Ok(stream.wrote(snapshot.sse))));
        }
        if let Some(heartbeat) = stream.heartbeat_due(this.quiet, cx) {
            return Poll::Ready(Some(Ok(heartbeat)));
        }
        stream.feed.wake_on_change(cx.waker(), &mut stream.listing);
        Poll::Pending
    }
}

impl StreamState {
    fn wrote(&mut self, chunk: Bytes) -> Bytes {
        self.last_write = Instant::now();
        chunk
    }

    /// Whether the stream must end now: at shutdown, or when the registry ends it (an
    /// operator's kick, its credential revoked or expired), which wakes it; those say why in
    /// a last comment line.
    fn stopped(&mut self, cx: &mut Context<'_>) -> Stop {
        if self.feed.closing() {
            self.guard.set_reason(CloseReason::Shutdown);
            return Stop::Silently;
        }
        match self.guard.ended(cx.waker()) {
            Some(ending) => {
                self.guard.set_reason(CloseReason::Ended(ending));
                let last = format!(": closed: {}\n\n", ending.explanation());
                Stop::Saying(Bytes::from(last))
            }
            None => Stop::No,
        }
    }

    /// A comment when nothing was written for a heartbeat interval; otherwise the timer is
    /// moved to a heartbeat after the last write and left registered.
    fn heartbeat_due(&mut self, mut quiet: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Option<Bytes> {
        while quiet.as_mut().poll(cx).is_ready() {
            let heartbeat = self.state.live.heartbeat;
            let due = self.last_write + heartbeat;
            let now = Instant::now();
            if now >= due {
                self.guard.count_sent(Sent::Heartbeat);
                quiet.as_mut().reset(now + heartbeat);
                return Some(self.wrote(Bytes::from_static(b": heartbeat\n\n")));
            }
            quiet.as_mut().reset(due);
        }
        None
    }
}
