//! `GET /api/dashboard/poll?after=ID&timeout=S`: the long-poll fallback (docs/api.md, Long-poll)
//! for networks where streaming is blocked. Same ids as SSE: `after` is the id of the last event
//! received.
//!
//! Answers at once when something newer than `after` exists (missed announcements from the
//! store, in order, then the current snapshot if newer), otherwise waits for the next one, or
//! answers an empty list after `timeout` seconds (at most 30). Without `after` it answers the
//! current snapshot, with an id that covers every announcement so far; an `after` newer than
//! anything the service knows is treated as unknown (everything kept is replayed).

use super::extract::Reader;
use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::live::connection::{CloseReason, ConnectionGuard, Ending, Sent, Transport};
use crate::live::hub::{EventId, REPLAY_WINDOW_MS};
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use std::fmt::Write;
use std::time::Duration;

pub(super) const MAX_TIMEOUT_SECS: u64 = 30;
const DEFAULT_TIMEOUT_SECS: u64 = 25;
const MAX_EVENTS: i64 = 100;

#[derive(Debug, Deserialize)]
pub(super) struct PollQuery {
    after: Option<String>,
    timeout: Option<u64>,
}

pub(super) async fn poll(
    viewer: Reader,
    query: web::Query<PollQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(text) => {
            let id = EventId::parse(text).ok_or_else(|| {
                ApiError::BadRequest("after must be an event id received from this service".into())
            })?;
            // An id from the future is unknown: everything kept is newer than announcement 0.
            Some(state.core.recognise(id).await?.unwrap_or_default())
        }
    };
    let timeout = Duration::from_secs(
        query
            .timeout
            .unwrap_or(DEFAULT_TIMEOUT_SECS)
            .min(MAX_TIMEOUT_SECS),
    );
    // Held until the answer is ready: a waiting poll is a live connection like a stream.
    let _slot = state
        .streams
        .acquire(viewer.0.username())
        .ok_or(ApiError::TooManyStreams(state.streams.max()))?;
    // Every poll after the first carries `after`: that is the transport working, not a reconnect.
    let mut guard = ConnectionGuard::open(state.core.metrics.clone(), Transport::Poll, false);
    let ended = guard.register(&state.core.registry, viewer.0.grant);
    let mut subscription = state.core.hub.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    let closing = state.core.hub.closing();
    loop {
        subscription.snapshots.borrow_and_update();
        let events = newer_than(after, &state).await?;
        if !events.is_empty() {
            for (kind, _, _) in &events {
                guard.count_sent(*kind);
            }
            let arrival = state.core.hub.latest().and_then(|p| p.frame.oldest_arrival);
            if let (Some(arrival), true) = (arrival, events.iter().any(|e| e.0 == Sent::Snapshot)) {
                guard.observe_delivery(arrival);
            }
            return Ok(respond(&events));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(respond(&[])),
            // Ended by the registry, or shutdown: the token is a child of `closing`.
            _ = ended.cancelled() => return ended_poll(&mut guard, closing.is_cancelled()),
            _ = subscription.announcements.recv() => {}
            _ = subscription.snapshots.changed() => {}
        }
    }
}

/// The answer of a waiting poll that was ended: empty at shutdown or after a kick (the client
/// polls again), 401 when its credential was revoked or expired (so would the next poll be).
fn ended_poll(guard: &mut ConnectionGuard, shutdown: bool) -> Result<HttpResponse, ApiError> {
    let ending = guard.ending().filter(|_| !shutdown);
    if let Some(ending) = ending {
        guard.set_reason(CloseReason::Ended(ending));
    }
    match ending {
        Some(Ending::Revoked | Ending::Expired) => Err(ApiError::Unauthorized),
        _ => Ok(respond(&[])),
    }
}

/// (kind, id, data) of everything newer than `after`, oldest first, the snapshot last.
async fn newer_than(
    after: Option<EventId>,
    state: &AppState,
) -> Result<Vec<(Sent, EventId, std::sync::Arc<str>)>, ApiError> {
    let current = state.core.hub.latest();
    let Some(after) = after else {
        // The current state: its id covers every announcement delivered so far, so that
        // polling after it brings only what is newer (not what came since the snapshot).
        return Ok(current
            .map(|p| {
                let id = state.core.hub.position_of(&p);
                vec![(Sent::Snapshot, id, p.frame.json.clone())]
            })
            .unwrap_or_default());
    };
    let seq = current.as_ref().map_or(after.seq, |p| p.id.seq);
    let mut events = Vec::new();
    let mut last_announcement = after.announcement;
    let missed = state
        .core
        .store
        .announcements_after(after.announcement, now_ms() - REPLAY_WINDOW_MS, MAX_EVENTS)
        .await?;
    // A full page may not be all: then no snapshot, whose id would skip the rest; the next
    // poll, after the last announcement listed, continues.
    let truncated = missed.len() as i64 == MAX_EVENTS;
    for stored in missed {
        last_announcement = stored.id;
        let id = EventId {
            announcement: stored.id,
            seq,
        };
        let json =
            serde_json::to_string(&crate::live::Announcement::from(stored)).unwrap_or_default();
        events.push((Sent::Announcement, id, json.into()));
    }
    if let Some(published) = current.filter(|p| p.id.seq > after.seq && !truncated) {
        // The snapshot's id also covers the announcements just listed, so that polling after
        // it never repeats them.
        let id = EventId {
            announcement: published.id.announcement.max(last_announcement),
            seq: published.id.seq,
        };
        events.push((Sent::Snapshot, id, published.frame.json.clone()));
    }
    Ok(events)
}

fn respond(events: &[(Sent, EventId, std::sync::Arc<str>)]) -> HttpResponse {
    let mut body = String::from("{\"events\":[");
    for (i, (kind, id, data)) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        // Ids are digits and '-', kinds are fixed words, data is our own JSON: no escaping needed.
        let _ = write!(
            body,
            "{{\"id\":\"{id}\",\"event\":\"{}\",\"data\":{data}}}",
            kind.label()
        );
    }
    body.push_str("]}");
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}
