//! `GET /api/dashboard/stream`: Server-Sent Events (see docs/api.md, Server-Sent Events).
//!
//! A connection opens with `retry:`, then (when resuming) every announcement it missed, from the
//! store, in order, then the current snapshot. Afterwards it writes announcements as they come,
//! the newest snapshot when there is one it has not written, and a comment line when it has been
//! quiet for a heartbeat interval.
//!
//! The body is polled only when the socket can take more, so a slow reader never queues frames:
//! snapshots coalesce in the hub's one slot. A reader that falls a whole announcement ring
//! behind is disconnected here (it resumes by `Last-Event-ID`), and one that stops reading
//! entirely is aborted by the kernel (`TCP_USER_TIMEOUT`, set in `startup`).

use super::extract::Viewer;
use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::live::connection::{ConnectionGuard, Sent, Transport};
use crate::live::hub::{sse_event, AnnouncementFrame, EventId, Subscription, REPLAY_WINDOW_MS};
use crate::live::limit::StreamSlot;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Reconnection delay suggested to EventSource clients.
const RETRY_MS: u64 = 2_000;
const REPLAY_PAGE: i64 = 1_000;

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

pub async fn stream(
    viewer: Viewer,
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
    let resume = resume_text.as_deref().and_then(EventId::parse);
    // Before anything is subscribed or sent: a refused stream costs nothing.
    let slot = state
        .streams
        .acquire(&viewer.0.username)
        .ok_or(ApiError::TooManyStreams(state.streams.max()))?;
    let mut guard =
        ConnectionGuard::open(state.metrics.clone(), Transport::Sse, resume_text.is_some());
    let kicked = guard.register(&state.cluster.local.registry, &viewer.0.username);

    // Subscribe before reading the store, so nothing falls between replay and live delivery.
    let mut subscription = state.hub.subscribe();
    let mut opening = VecDeque::from([Bytes::from(format!("retry: {RETRY_MS}\n\n"))]);
    let mut last_announcement = state.hub.last_announcement();
    if let Some(resume) = resume {
        last_announcement = resume.announcement;
        let seq = state.hub.latest().map_or(resume.seq, |p| p.id.seq);
        // Page through everything missed: the opening snapshot's id will cover it all.
        loop {
            let page = state
                .store
                .announcements_after(last_announcement, now_ms() - REPLAY_WINDOW_MS, REPLAY_PAGE)
                .await?;
            let complete = (page.len() as i64) < REPLAY_PAGE;
            for stored in page {
                last_announcement = last_announcement.max(stored.id);
                opening.push_back(AnnouncementFrame::new(stored.into(), seq).sse);
                guard.count_sent(Sent::Announcement);
            }
            if complete {
                break;
            }
        }
    }
    let mut last_index = 0;
    if let Some(current) = subscription.snapshots.borrow_and_update().clone() {
        last_index = current.index;
        // This snapshot may predate announcements the client already has (it connected after
        // them, or they were just replayed): its id must not send the client back before them.
        let id = EventId {
            announcement: current.id.announcement.max(last_announcement),
            seq: current.id.seq,
        };
        opening.push_back(sse_event(&id, "snapshot", &current.frame.json));
        guard.count_sent(Sent::Snapshot);
    }

    let client = SseClient {
        subscription,
        opening,
        last_announcement,
        last_index,
        heartbeat: state.live.heartbeat,
        quiet: Box::pin(tokio::time::sleep(state.live.heartbeat)),
        stall_timeout: state.live.stall_timeout,
        closing: state.hub.closing(),
        stop: Box::pin(kicked.cancelled_owned()),
        hub: state.hub.clone(),
        guard,
        _slot: slot,
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(futures_util::stream::unfold(client, next_chunk)))
}

struct SseClient {
    subscription: Subscription,
    opening: VecDeque<Bytes>,
    last_announcement: i64,
    last_index: u64,
    heartbeat: Duration,
    /// Fires `heartbeat` after the last write; one timer per connection, reset on each write.
    quiet: Pin<Box<Sleep>>,
    stall_timeout: Duration,
    closing: tokio_util::sync::CancellationToken,
    /// Ready on a kick (the console's `connections.kick`) or at shutdown (`closing`): one signal,
    /// registered once for the connection's life, so that a wake-up polls it without touching
    /// a lock that other connections share.
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    hub: crate::live::Hub,
    guard: ConnectionGuard,
    /// This user's share of `PULSEBOARD_MAX_STREAMS_PER_USER`, held while the stream lives.
    _slot: StreamSlot,
}

impl Drop for SseClient {
    fn drop(&mut self) {
        // The kernel aborts a reader that stopped reading; from here that looks like a close,
        // except that we had something to send and could not for a long while.
        let behind = self.hub.last_announcement() > self.last_announcement
            || self.hub.latest().is_some_and(|p| p.index > self.last_index);
        if behind && self.last_write().elapsed() >= self.stall_timeout / 2 {
            self.guard.set_reason("slow_client");
        }
    }
}

async fn next_chunk(mut client: SseClient) -> Option<(Result<Bytes, Infallible>, SseClient)> {
    if let Some(chunk) = client.opening.pop_front() {
        return Some((Ok(chunk), client));
    }
    loop {
        tokio::select! {
            biased;
            _ = client.stop.as_mut() => {
                let reason = if client.closing.is_cancelled() { "shutdown" } else { "kicked" };
                client.guard.set_reason(reason);
                return None;
            }
            received = client.subscription.announcements.recv() => match received {
                Ok(frame) if frame.announcement.id <= client.last_announcement => continue,
                Ok(frame) => {
                    client.last_announcement = frame.announcement.id;
                    client.guard.count_sent(Sent::Announcement);
                    return Some((Ok(client.wrote(frame.sse.clone())), client));
                }
                Err(RecvError::Lagged(_)) => {
                    client.guard.set_reason("slow_client");
                    return None;
                }
                Err(RecvError::Closed) => return None,
            },
            changed = client.subscription.snapshots.changed() => {
                if changed.is_err() {
                    return None;
                }
                let Some(published) = client.subscription.snapshots.borrow_and_update().clone() else {
                    continue;
                };
                if published.index <= client.last_index {
                    continue;
                }
                let skipped = published.index - client.last_index - 1;
                if client.last_index > 0 && skipped > 0 {
                    client.guard.count_coalesced(skipped);
                }
                client.last_index = published.index;
                client.guard.count_sent(Sent::Snapshot);
                if let Some(arrival) = published.frame.oldest_arrival {
                    client.guard.observe_delivery(arrival);
                }
                return Some((Ok(client.wrote(published.sse.clone())), client));
            }
            _ = client.quiet.as_mut() => {
                client.guard.count_sent(Sent::Heartbeat);
                return Some((Ok(client.wrote(Bytes::from_static(b": heartbeat\n\n"))), client));
            }
        }
    }
}

impl SseClient {
    fn wrote(&mut self, chunk: Bytes) -> Bytes {
        self.quiet.as_mut().reset(Instant::now() + self.heartbeat);
        chunk
    }

    /// When the connection last wrote (or opened): the quiet timer was set from it.
    fn last_write(&self) -> Instant {
        self.quiet.deadline() - self.heartbeat
    }
}
