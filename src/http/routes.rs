//! The route table (see docs/api.md, HTTP routes) and the small handlers: snapshot, health,
//! readiness, metrics.

use super::extract::Reader;
use super::{
    announcements, assets, dashboard, error_body, kiosk, pages, signin, ApiError, AppState,
};
use super::{console, poll, sse};
use actix_web::dev::{AppService, HttpServiceFactory};
use actix_web::http::{header, Method};
use actix_web::{web, FromRequest, Handler, HttpRequest, HttpResponse, Responder, ResponseError};
use secrecy::ExposeSecret;
use serde_json::json;
use std::time::Duration;

const READY_DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The route table: path, then each method with its handler. `get` also serves `HEAD` (RFC 9110:
/// same handler, no body); any other method on a listed path is answered 405 with `Allow`.
pub(super) fn configure(config: &mut web::ServiceConfig) {
    use Kind::{Api, Page};
    config
        .service(Endpoint::new("/", Page).get(pages::dashboard))
        .service(Endpoint::new("/console", Page).get(pages::console))
        .service(Endpoint::new("/kiosk", Page).get(kiosk::page))
        .service(Endpoint::new("/static/{path:.*}", Page).get(assets::serve))
        .service(Endpoint::new("/favicon.ico", Page).get(assets::favicon))
        .service(
            Endpoint::new("/login", Page)
                .get(signin::login_page)
                .post(signin::login),
        )
        .service(Endpoint::new("/logout", Page).post(signin::logout))
        .service(Endpoint::new("/api/auth/token", Api).post(signin::token))
        .service(Endpoint::new("/ws/console", Api).get(console::upgrade))
        .service(Endpoint::new("/api/dashboard/snapshot", Api).get(snapshot))
        .service(Endpoint::new("/api/dashboard/history", Api).get(dashboard::history))
        .service(Endpoint::new("/api/dashboard/refresh", Api).post(dashboard::refresh))
        .service(Endpoint::new("/api/dashboard/stream", Api).get(sse::stream))
        .service(Endpoint::new("/api/dashboard/poll", Api).get(poll::poll))
        .service(
            Endpoint::new("/api/announcements", Api)
                .get(announcements::list)
                .post(announcements::create),
        )
        .service(Endpoint::new("/healthz", Api).get(healthz))
        .service(Endpoint::new("/readyz", Api).get(readyz))
        .service(Endpoint::new("/metrics", Api).get(metrics));
}

/// How a path answers errors: JSON (see docs/api.md, Errors) or an HTML page.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Api,
    Page,
}

/// One path of the table with its methods; registers as one actix resource, so that a wrong
/// method finds the path (405) instead of falling through to the 404 of unknown paths.
struct Endpoint {
    resource: actix_web::Resource,
    kind: Kind,
    allowed: Vec<Method>,
}

impl Endpoint {
    fn new(path: &str, kind: Kind) -> Self {
        Endpoint {
            resource: web::resource(path),
            kind,
            allowed: Vec::new(),
        }
    }

    /// `GET` and `HEAD`, one handler.
    fn get<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.method(Method::GET, handler.clone())
            .method(Method::HEAD, handler)
    }

    fn post<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.method(Method::POST, handler)
    }

    fn method<F, Args>(mut self, method: Method, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.resource = self.resource.route(web::method(method.clone()).to(handler));
        self.allowed.push(method);
        self
    }
}

impl HttpServiceFactory for Endpoint {
    fn register(self, config: &mut AppService) {
        let allow = self
            .allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let kind = self.kind;
        let refuse = move || {
            let allow = allow.clone();
            async move {
                match kind {
                    Kind::Api => ApiError::MethodNotAllowed(allow).error_response(),
                    Kind::Page => super::PageError::MethodNotAllowed(allow).error_response(),
                }
            }
        };
        self.resource
            .default_service(web::to(refuse))
            .register(config);
    }
}

async fn snapshot(_reader: Reader, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let frame = state.core.hub.latest_frame().ok_or_else(|| {
        ApiError::Unavailable("no snapshot yet: waiting for the ingest leader".into())
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(frame.json.to_string()))
}

async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "node": state.core.node}))
}

/// 200 when the database answers and ingest is connected (or runs the in-process demo); 503
/// from the moment shutdown begins, so that load balancers stop sending new clients here.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.draining.is_cancelled() {
        let mut body = error_body(
            "not_ready",
            "shutting down: this instance drains its clients and stops",
        );
        body["checks"] = json!({"shutdown": "draining"});
        return HttpResponse::ServiceUnavailable().json(body);
    }
    let status = state.core.status.get();
    let ingest_database_error = status
        .ingest
        .database_error
        .as_deref()
        .map(|error| format!("database error in ingest: {error}"));
    let database = match tokio::time::timeout(READY_DATABASE_TIMEOUT, state.core.store.ping()).await
    {
        Ok(Ok(())) => ingest_database_error.map_or(Ok(()), Err),
        Ok(Err(error)) => Err(format!("database unreachable: {error}")),
        // Waiting for a connection outlasts this check: ingest's last error may say why.
        Err(_) => Err(format!(
            "database did not answer within {READY_DATABASE_TIMEOUT:?}{}",
            ingest_database_error
                .map(|error| format!("; {error}"))
                .unwrap_or_default()
        )),
    };
    // Paused by an operator (this leader's own flag, or the leader's snapshot): deliberate, so
    // still ready; dashboards keep being served and say `paused`.
    let paused = status.ingest.paused
        || state
            .core
            .hub
            .latest_frame()
            .is_some_and(|f| f.snapshot.ingest.state == crate::live::IngestState::Paused);
    let ingest = match status.ingest_link() {
        // Connected to RabbitMQ or not, ingest stands still while it cannot write.
        _ if status.ingest.database_error.is_some() => {
            Err("ingest cannot write to the database".to_owned())
        }
        _ if paused => Ok(()),
        None => Ok(()),
        Some(link) if link.connected => Ok(()),
        Some(link) => Err(format!(
            "ingest disconnected from RabbitMQ{}",
            link.last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )),
    };
    let checks = json!({
        "database": database.as_ref().err().map_or("ok", |_| "failing"),
        "ingest": match &ingest {
            Err(_) => "disconnected",
            Ok(()) if paused => "paused",
            Ok(()) => "ok",
        },
        "leader": status.ingest.leader,
        "is_leader": status.ingest.is_leader,
    });
    match database.and(ingest) {
        Ok(()) => HttpResponse::Ok()
            .json(json!({"status": "ready", "node": state.core.node, "checks": checks})),
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
        if presented != Some(token.expose_secret()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.core.metrics.render()))
}
