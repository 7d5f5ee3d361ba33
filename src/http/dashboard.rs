//! Dashboard data beside the live streams: history for backfilling charts, forced refresh.

use super::extract::{Reader, Viewer};
use super::{ApiError, AppState};
use crate::aggregate::{minute_of, same_time_earlier, Offset, Point, MINUTE_MS};
use crate::clock::now_ms;
use crate::live::PointView;
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

const MAX_HISTORY_MINUTES: i64 = 10_080;
const DEFAULT_HISTORY_MINUTES: i64 = 60;
const REFRESH_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Deserialize)]
pub(super) struct HistoryQuery {
    minutes: Option<i64>,
    compare: Option<String>,
}

/// `{"points":[…]}`: one point per minute, oldest first, ending with the current minute;
/// minutes without events are zeros, so charts need no gap handling. With `compare=1d|7d`,
/// the same window a day or a week earlier (`{"points":[…],"compare":"1d"}`).
pub(super) async fn history(
    _reader: Reader,
    query: web::Query<HistoryQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let minutes = query.minutes.unwrap_or(DEFAULT_HISTORY_MINUTES);
    if !(1..=MAX_HISTORY_MINUTES).contains(&minutes) {
        return Err(ApiError::BadRequest(format!(
            "minutes must be between 1 and {MAX_HISTORY_MINUTES}"
        )));
    }
    let current = minute_of(now_ms());
    let first = current - (minutes - 1) * MINUTE_MS;
    if let Some(label) = &query.compare {
        let offset = Offset::from_label(label)
            .ok_or_else(|| ApiError::BadRequest("compare must be 1d or 7d".into()))?;
        let points = shifted_history(&state, first, minutes, offset).await?;
        return Ok(HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({ "points": points, "compare": offset.label() })));
    }
    let stored: HashMap<i64, Point> = state
        .core
        .store
        .history(first, current + MINUTE_MS)
        .await?
        .into_iter()
        .map(|point| (point.minute, point))
        .collect();
    let live_point = state
        .core
        .hub
        .latest_frame()
        .map(|frame| frame.snapshot.point.clone())
        .filter(|point| point.minute == PointView::from(empty(current)).minute);
    let points: Vec<PointView> = (0..minutes)
        .map(|i| first + i * MINUTE_MS)
        .map(|minute| match (&live_point, minute == current) {
            (Some(point), true) => point.clone(),
            _ => stored.get(&minute).copied().unwrap_or(empty(minute)).into(),
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "points": points })))
}

/// The window of `minutes` minutes from `first`, each minute replaced by the one at the same
/// wall-clock time `offset` earlier (as the snapshot's `compare`), each point with its own
/// (earlier) minute. Across a daylight-saving change two minutes may map to one, so the
/// points are as many as asked and a chart aligns them with today's by position.
async fn shifted_history(
    state: &AppState,
    first: i64,
    minutes: i64,
    offset: Offset,
) -> Result<Vec<PointView>, ApiError> {
    let timezone = state.timezone;
    let earlier: Vec<i64> = (0..minutes)
        .map(|i| {
            minute_of(same_time_earlier(
                first + i * MINUTE_MS,
                offset.days(),
                timezone,
            ))
        })
        .collect();
    let (Some(from), Some(to)) = (earlier.iter().min(), earlier.iter().max()) else {
        return Ok(Vec::new());
    };
    let stored: HashMap<i64, Point> = state
        .core
        .store
        .history(*from, to + MINUTE_MS)
        .await?
        .into_iter()
        .map(|point| (point.minute, point))
        .collect();
    Ok(earlier
        .into_iter()
        .map(|minute| stored.get(&minute).copied().unwrap_or(empty(minute)).into())
        .collect())
}

fn empty(minute: i64) -> Point {
    Point {
        minute,
        orders: 0,
        revenue_minor: 0,
        active_users: 0,
    }
}

/// Asks the leader (here, or through the fan-out) for a snapshot at its next tick and returns
/// it once it reached this instance, so every dashboard got it too. However many ask, the
/// leader publishes at most one snapshot per tick; each user may ask a few times a second
/// (429 beyond, see `live::limit`).
pub(super) async fn refresh(
    viewer: Viewer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state
        .refresh_limit
        .admit(viewer.0.username())
        .map_err(ApiError::RefreshLimited)?;
    let fresh = state
        .core
        .fresh_snapshot(state.live.snapshot_interval, REFRESH_TIMEOUT)
        .await
        .ok_or_else(|| ApiError::Unavailable("no ingest leader answered the refresh".into()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(fresh.frame.json.to_string()))
}
