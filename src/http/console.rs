//! `GET /ws/console`: the handshake of the operators' WebSocket, checked before the upgrade —
//! credentials and the operator role (the [`Operator`] extractor: 401/403), the `Origin` (403)
//! and this user's stream cap (429) — then the connection is handed to a `console` session.

use super::extract::Operator;
use super::{ApiError, AppState};
use crate::console::protocol;
use crate::live::connection::{ConnectionGuard, Transport};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

pub(super) async fn upgrade(
    request: HttpRequest,
    body: web::Payload,
    operator: Operator,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&request, &state)?;
    // Before the upgrade, so that a refusal is a plain 429 the client can read.
    let slot = state
        .streams
        .acquire(operator.0.username())
        .ok_or(ApiError::TooManyStreams(state.streams.max()))?;
    let (response, session, messages) = actix_ws::handle(&request, body)
        .map_err(|e| ApiError::BadRequest(format!("not a WebSocket upgrade: {e}")))?;
    let messages = messages
        .max_frame_size(protocol::MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(protocol::MAX_FRAME_BYTES);
    let guard = ConnectionGuard::open(state.core.metrics.clone(), Transport::Ws, false);
    actix_web::rt::spawn(crate::console::run(
        session,
        messages,
        operator.0.grant,
        state.into_inner(),
        (guard, slot),
    ));
    Ok(response)
}

/// Browsers always send `Origin` on a WebSocket; it must be an allowed one: those configured,
/// or else this service's own (scheme and `Host`; `X-Forwarded-*` only from a trusted proxy,
/// or anyone could name the origin they came from). Clients that are not browsers send none
/// and are judged by credentials alone.
fn check_origin(request: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    // An `Origin` that is not text matches nothing.
    let origin = origin.to_str().unwrap_or_default();
    let same = |allowed: &str| {
        !origin.is_empty() && allowed.trim_end_matches('/').eq_ignore_ascii_case(origin)
    };
    let allowed = if state.auth.allowed_origins.is_empty() {
        crate::http::proxy::own_origin(request, state.trust_proxy, state.auth.secure_cookies)
            .is_some_and(|own| same(&own))
    } else {
        state.auth.allowed_origins.iter().any(|o| same(o))
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::ForbiddenOrigin)
    }
}
