//! What every request leaves behind: a tracing span (method, route pattern, request id, then
//! status and duration) around its handler, so that every log line it causes carries them; the
//! request id echoed in `X-Request-Id`; and the request metrics, labelled by route pattern,
//! never the raw path, and by a fixed set of methods (bounded label values).

use super::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web;
use std::time::Instant;
use tracing::Instrument;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A caller's request id is kept when it is this short and made of these characters: it is
/// echoed in a header and written to logs, so nothing else may pass.
const MAX_REQUEST_ID: usize = 128;

/// The outermost layer: request id, span, metrics.
pub(crate) async fn observe_request(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = request
        .app_data::<web::Data<AppState>>()
        .map(|s| s.core.metrics.clone());
    let method = method_label(request.method());
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let request_id = request_id(request.headers().get(&REQUEST_ID));
    let span = tracing::info_span!(
        "request",
        method,
        route = %route,
        request_id = %request_id,
        status = tracing::field::Empty,
        ms = tracing::field::Empty,
    );
    let mut response = next.call(request).instrument(span.clone()).await?;
    let elapsed = started.elapsed();
    let status = response.status();
    span.record("status", status.as_u16());
    span.record("ms", elapsed.as_secs_f64() * 1e3);
    if status.is_server_error() {
        tracing::warn!(parent: &span, "request failed");
    } else {
        tracing::debug!(parent: &span, "request finished");
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if let Some(metrics) = metrics {
        let status = status.as_u16().to_string();
        let labels = [method, route.as_str(), status.as_str()];
        metrics.http_requests.with_label_values(&labels).inc();
        metrics
            .http_request_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }
    Ok(response)
}

/// The caller's `X-Request-Id` when it is 1 to 128 characters of letters, digits and `-_.:`;
/// otherwise a new one.
fn request_id(header: Option<&HeaderValue>) -> String {
    let given = header.and_then(|value| value.to_str().ok()).filter(|id| {
        (1..=MAX_REQUEST_ID).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    });
    match given {
        Some(id) => id.to_owned(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// The `method` label: the methods of RFC 9110, or `other` — a client may send any token as a
/// method, and each would otherwise become a series of its own.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, label)| label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_request_id_is_kept_and_anything_else_replaced() {
        let keep = |text: &str| request_id(Some(&HeaderValue::from_str(text).expect("header")));
        assert_eq!(keep("abc-123"), "abc-123");
        assert_eq!(keep("7f3a.b_c:d"), "7f3a.b_c:d");
        for refused in ["", "a b", "x/y", "a\"b", &"x".repeat(129)] {
            let replaced = keep(refused);
            assert_ne!(replaced, refused);
            assert_eq!(replaced.len(), 32, "a new uuid");
        }
        assert_eq!(request_id(None).len(), 32);
    }

    #[test]
    fn only_the_methods_of_rfc_9110_are_labels() {
        assert_eq!(method_label(&Method::GET), "GET");
        let made_up = Method::from_bytes(b"XYZZY").expect("a token");
        assert_eq!(method_label(&made_up), "other");
    }
}
