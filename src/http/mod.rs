//! HTTP: routes of SPEC §5 over the application state, request metrics, JSON errors.
//!
//! Handlers are thin: they read the hub, the store or the ingest status and shape the answer.
//! They never touch RabbitMQ and never compute figures.

mod announcements;
pub mod assets;
mod dashboard;
mod error;
mod pages;
pub mod proxy;
mod redirect;
pub mod proxy;
mod routes;
mod signin;

pub use error::{error_body, ApiError};
pub use pages::PageError;

use crate::ingest::StatusCell;
use crate::live::fanout::FanoutSender;
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::store::Store;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Everything a request handler may use.
pub struct AppState {
    pub node: String,
    pub auth: crate::auth::AuthState,
    pub store: Store,
    pub hub: Hub,
    pub status: Arc<StatusCell>,
    pub metrics: Arc<Metrics>,
    pub metrics_token: Option<String>,
    pub live: LiveSettings,
    pub fanout: FanoutSender,
    /// Asks this instance's leader loop for a snapshot now.
    pub refresh: mpsc::Sender<()>,
    /// `PULSEBOARD_TRUST_PROXY`: believe `X-Forwarded-*` (see [`proxy`]).
    pub trust_proxy: bool,
    /// `PULSEBOARD_MAX_STREAMS_PER_USER`: live connections per user on this instance.
    pub streams: crate::live::limit::StreamLimiter,
    /// `PULSEBOARD_TRUST_PROXY`: believe `X-Forwarded-*` (see [`proxy`]).
    pub trust_proxy: bool,
}

/// Timing of live connections.
#[derive(Debug, Clone, Copy)]
pub struct LiveSettings {
    /// At most one snapshot per this interval (the page shows when figures are stale).
    pub snapshot_interval: Duration,
    /// SSE comment heartbeat (and WebSocket ping) interval.
    pub heartbeat: Duration,
    /// How long a client may leave sent data unread before the kernel aborts its connection.
    pub stall_timeout: Duration,
}

impl LiveSettings {
    pub fn new(snapshot_interval: Duration, heartbeat: Duration) -> Self {
        LiveSettings {
            snapshot_interval,
            heartbeat,
            stall_timeout: (heartbeat * 2).clamp(Duration::from_secs(5), Duration::from_secs(60)),
        }
    }
}

/// Request bodies above this are refused before a handler runs.
const MAX_JSON_BODY: usize = 64 * 1024;
const MAX_FORM_BODY: usize = 16 * 1024;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .app_data(
            web::JsonConfig::default()
                .limit(MAX_JSON_BODY)
                .error_handler(|error, _| {
                    ApiError::BadRequest(format!("invalid JSON body: {error}")).into()
                }),
        )
        .app_data(
            web::FormConfig::default()
                .limit(MAX_FORM_BODY)
                .error_handler(|error, _| {
                    ApiError::BadRequest(format!("invalid form: {error}")).into()
                }),
        )
        .app_data(web::PayloadConfig::default().limit(MAX_JSON_BODY))
        .app_data(web::QueryConfig::default().error_handler(|error, _| {
            ApiError::BadRequest(format!("invalid query: {error}")).into()
        }))
        .configure(routes::configure)
        .default_service(web::to(not_found));
}

/// Unknown API paths get the JSON error; anything else the 404 page.
async fn not_found(request: actix_web::HttpRequest) -> actix_web::HttpResponse {
    if request.path().starts_with("/api/") {
        actix_web::ResponseError::error_response(&ApiError::NotFound)
    } else {
        actix_web::ResponseError::error_response(&PageError::NotFound)
    }
}

/// Headers of every response: no framing, no sniffing, no referrer leaks, scripts and styles
/// from this origin only (no inline script).
pub fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "same-origin"))
}

/// Counts and times every request by its route pattern (never the raw path: bounded labels).
pub async fn record_metrics(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = request
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let method = request.method().as_str().to_owned();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let response = next.call(request).await?;
    if let Some(metrics) = metrics {
        let status = response.status().as_u16().to_string();
        let labels = [method.as_str(), route.as_str(), status.as_str()];
        metrics.http_requests.with_label_values(&labels).inc();
        metrics
            .http_request_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(response)
}
