//! `GET/POST /api/announcements` (see docs/api.md, Announcements).

use super::extract::{Operator, Viewer};
use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::live::announcement::validate_message;
use crate::live::{Announcement, Level};
use actix_web::{web, HttpResponse};
use serde::Deserialize;

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    limit: Option<i64>,
}

/// `{"announcements":[…]}`, newest first.
pub(super) async fn list(
    _viewer: Viewer,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let announcements: Vec<Announcement> = state
        .core
        .store
        .latest_announcements(limit)
        .await?
        .into_iter()
        .map(Announcement::from)
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "announcements": announcements })))
}

#[derive(Debug, Deserialize)]
pub(super) struct NewAnnouncement {
    message: String,
    level: String,
}

/// 201 with the announcement, after it was stored and handed to every dashboard.
pub(super) async fn create(
    operator: Operator,
    body: web::Json<NewAnnouncement>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    validate_message(&body.message).map_err(ApiError::BadRequest)?;
    let level = Level::parse(&body.level)
        .ok_or_else(|| ApiError::BadRequest("level must be info, warning or critical".into()))?;
    let announcement = state
        .core
        .publish_announcement(level, &body.message, operator.0.username(), now_ms())
        .await?;
    Ok(HttpResponse::Created().json(announcement))
}
