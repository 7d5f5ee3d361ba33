//! The route table (SPEC §5) and the small handlers: snapshot, health, readiness, metrics.

use super::{announcements, assets, dashboard, error_body, pages, signin, ApiError, AppState};
use crate::auth::Viewer;
use crate::live::{poll, sse};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use std::time::Duration;

const READY_DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(pages::dashboard))
        .route("/console", web::get().to(pages::console))
        .route("/static/{path:.*}", web::get().to(assets::serve))
        .route("/login", web::get().to(signin::login_page))
        .route("/login", web::post().to(signin::login))
        .route("/logout", web::post().to(signin::logout))
        .route("/api/auth/token", web::post().to(signin::token))
        .route("/ws/console", web::get().to(crate::console::upgrade))
        .route("/api/dashboard/snapshot", web::get().to(snapshot))
        .route("/api/dashboard/history", web::get().to(dashboard::history))
        .route("/api/dashboard/refresh", web::post().to(dashboard::refresh))
        .route("/api/dashboard/stream", web::get().to(sse::stream))
        .route("/api/dashboard/poll", web::get().to(poll::poll))
        .route("/api/announcements", web::get().to(announcements::list))
        .route("/api/announcements", web::post().to(announcements::create))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn snapshot(_viewer: Viewer, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let frame = state.hub.latest_frame().ok_or_else(|| {
        ApiError::Unavailable("no snapshot yet: waiting for the ingest leader".into())
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(frame.json.to_string()))
}

async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "node": state.node}))
}

/// 200 when the database answers and ingest is connected (or runs the in-process demo).
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let status = state.status.get();
    let database = match tokio::time::timeout(READY_DATABASE_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => match &status.database_error {
            None => Ok(()),
            Some(error) => Err(format!("database error in ingest: {error}")),
        },
        Ok(Err(error)) => Err(format!("database unreachable: {error}")),
        Err(_) => Err(format!(
            "database did not answer within {READY_DATABASE_TIMEOUT:?}"
        )),
    };
    let ingest = if status.local_demo || status.broker_connected {
        Ok(())
    } else {
        Err(format!(
            "ingest disconnected from RabbitMQ{}",
            status
                .last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ))
    };
    let checks = json!({
        "database": database.as_ref().err().map_or("ok", |_| "failing"),
        "ingest": ingest.as_ref().err().map_or("ok", |_| "disconnected"),
        "leader": status.leader,
        "is_leader": status.is_leader,
    });
    match database.and(ingest) {
        Ok(()) => HttpResponse::Ok()
            .json(json!({"status": "ready", "node": state.node, "checks": checks})),
        Err(reason) => {
            let mut body = error_body("not_ready", &reason);
            body["checks"] = checks;
            HttpResponse::ServiceUnavailable().json(body)
        }
    }
}

async fn metrics(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if let Some(token) = &state.metrics_token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render()))
}
