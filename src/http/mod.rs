//! HTTP: the routes (see docs/api.md, HTTP routes) over the application state, JSON errors,
//! request metrics (`observe`), and the middleware every request passes: the screen of its head (no content
//! coding, a bounded URI), the body deadline, `HEAD` of streams, compression, HTTP/1.0 streams.
//!
//! Handlers are thin: they read the hub, the store or the ingest status and shape the answer.
//! They never touch RabbitMQ and never compute figures.

mod announcements;
pub(crate) mod assets;
mod console;
mod dashboard;
mod error;
pub(crate) mod extract;
mod kiosk;
mod observe;
mod pages;
mod poll;
pub(crate) mod proxy;
mod redirect;
mod routes;
mod signin;
mod sse;

pub(crate) use crate::app::AppState;
pub(crate) use error::PageError;
pub(crate) use error::{error_body, ApiError};
pub(crate) use observe::observe_request;

use actix_web::body::{BodySize, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web;
use actix_web::HttpMessage;
use futures_util::StreamExt;
use std::time::Duration;

/// Request bodies above this are refused before a handler runs.
const MAX_JSON_BODY: usize = 64 * 1024;
const MAX_FORM_BODY: usize = 16 * 1024;

pub(crate) fn configure(config: &mut web::ServiceConfig) {
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

/// Request targets longer than this are answered 414. The `http` crate refuses any over 64 KiB
/// itself while actix-http parses the head (actix-http's plain 400, before any service runs);
/// this limit is lower, so that every URI the service can see at all is
/// either served or refused with a 414 that says why. 8 KiB is what common proxies pass.
pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;

/// Refuses a request by its head alone, before anything reads its body: a URI over
/// [`MAX_URI_BYTES`] (414) or a `Content-Encoding` other than `identity` (415). The API takes
/// no compressed bodies, and refusing them here means no extractor ever inflates one: a
/// 64 KiB deflate body would otherwise become tens of megabytes before the size limits,
/// which count inflated bytes, could see it.
pub(crate) async fn screen_request_head(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    match head_refusal(request.head()) {
        None => Ok(next.call(request).await?.map_into_left_body()),
        Some(refusal) => {
            tracing::info!(path = request.path(), %refusal, "request refused by its head");
            let response = actix_web::ResponseError::error_response(&refusal);
            Ok(request.into_response(response).map_into_right_body())
        }
    }
}

fn head_refusal(head: &actix_web::dev::RequestHead) -> Option<ApiError> {
    if target_length(&head.uri) > MAX_URI_BYTES {
        return Some(ApiError::UriTooLong(MAX_URI_BYTES));
    }
    let encoded = head
        .headers
        .get_all(header::CONTENT_ENCODING)
        .any(|value| !is_identity(value));
    encoded.then_some(ApiError::UnsupportedEncoding)
}

/// The request target's length as sent: the path and query, and the authority of an
/// absolute-form target.
fn target_length(uri: &actix_web::http::Uri) -> usize {
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    authority + path
}

/// `identity`, or a list of nothing but `identity` (empty entries are no coding).
fn is_identity(value: &header::HeaderValue) -> bool {
    value.to_str().is_ok_and(|text| {
        text.split(',')
            .map(str::trim)
            .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case("identity"))
    })
}

/// HTTP/1.0 has no chunked encoding, yet actix-http would send a streamed body (the event
/// stream, a compressed answer) chunked to it. For an HTTP/1.0 request such a body is sent
/// as it is and ends with the connection (RFC 1945 §7.2.2), which is then never kept alive.
pub(crate) async fn close_delimit_for_http10(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let http10 = request.version() < actix_web::http::Version::HTTP_11;
    let mut response = next.call(request).await?;
    if http10 && matches!(response.response().body().size(), BodySize::Stream) {
        let head = response.response_mut().head_mut();
        head.no_chunking(true);
        head.set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(response)
}

/// How long a request body may take to arrive, from the moment its head was read. actix-http
/// bounds only the head (`client_request_timeout`); without this, a client that announces a
/// body and never sends it holds its connection and file descriptor for as long as it likes.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bodies are read here whole, up to this; a longer one is cut one byte past it, and the
/// extractors' own limits (all lower) refuse it.
const MAX_BODY_READ: usize = MAX_JSON_BODY;

/// Reads a request's body within [`BODY_READ_TIMEOUT`] before any handler sees it: 408 (JSON,
/// connection closed) when it is late, 400 when it is malformed. Handlers then extract from
/// memory. WebSocket upgrades and requests without a body pass untouched.
pub(crate) async fn read_body_in_time(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !announces_body(request.head()) {
        return Ok(next.call(request).await?.map_into_left_body());
    }
    let mut payload = request.take_payload();
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, read_prefix(&mut payload)).await;
    let refusal = match read {
        Ok(Ok(body)) => {
            request.set_payload(actix_web::dev::Payload::from(body));
            return Ok(next.call(request).await?.map_into_left_body());
        }
        Ok(Err(error)) => ApiError::BadRequest(format!("unreadable request body: {error}")),
        Err(_elapsed) => {
            tracing::info!(path = request.path(), "request body not received in time");
            ApiError::RequestTimeout
        }
    };
    let response = actix_web::ResponseError::error_response(&refusal);
    Ok(request.into_response(response).map_into_right_body())
}

/// A body is coming: a non-zero `Content-Length` or any `Transfer-Encoding`, and no upgrade
/// (after a WebSocket upgrade the "payload" is the socket itself, with no end).
fn announces_body(head: &actix_web::dev::RequestHead) -> bool {
    let headers = &head.headers;
    let sized = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0");
    (sized || headers.contains_key(header::TRANSFER_ENCODING)) && !head.upgrade()
}

/// The body, or its first `MAX_BODY_READ + 1` bytes when longer.
async fn read_prefix(
    payload: &mut actix_web::dev::Payload,
) -> Result<bytes::Bytes, actix_web::error::PayloadError> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        body.extend_from_slice(&chunk?);
        if body.len() > MAX_BODY_READ {
            body.truncate(MAX_BODY_READ + 1);
            break;
        }
    }
    Ok(body.freeze())
}

/// `HEAD` is served by the `GET` handler (see `routes`), and actix-http sends no body for it;
/// but it would still poll a streaming body (an event stream never ends) to discard it. Such a
/// body is dropped here, which also ends the stream's connection accounting at once.
pub(crate) async fn head_without_stream(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let head = request.method() == actix_web::http::Method::HEAD;
    let response = next.call(request).await?;
    if head && matches!(response.response().body().size(), BodySize::Stream) {
        return Ok(response.map_body(|_, _| EitherBody::right(actix_web::body::None::new())));
    }
    Ok(response.map_into_left_body())
}

/// An event stream must not be compressed: a compressor holds bytes back until it has a block
/// to write, so events would wait for later ones. `Compress` leaves a response alone when it
/// already carries a `Content-Encoding`, so this layer, inside it, marks event streams
/// `identity`, and [`unmark_uncompressed`], outside it, takes that mark off again: HTTP has
/// `identity` for `Accept-Encoding` only, never as a response's `Content-Encoding` (RFC 9110
/// §8.4.1). Pages, assets and JSON are compressed as before.
pub(crate) async fn mark_uncompressed(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(request).await?;
    let event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if event_stream && !response.headers().contains_key(header::CONTENT_ENCODING) {
        response.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("identity"),
        );
    }
    Ok(response)
}

/// Outside `Compress`: removes the `identity` mark set by [`mark_uncompressed`].
pub(crate) async fn unmark_uncompressed(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(request).await?;
    let identity = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if identity {
        response.headers_mut().remove(header::CONTENT_ENCODING);
    }
    Ok(response)
}

/// Headers of every response: no framing, no sniffing, no referrer leaks, scripts and styles
/// from this origin only (no inline script).
pub(crate) fn security_headers() -> actix_web::middleware::DefaultHeaders {
    SECURITY_HEADERS.iter().fold(
        actix_web::middleware::DefaultHeaders::new(),
        |headers, &header| headers.add(header),
    )
}

/// The headers every answer of the application carries (the parser's own refusals, which
/// never reach it, go without: docs/security.md).
const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn refusal(request: TestRequest) -> Option<&'static str> {
        head_refusal(request.to_srv_request().head()).map(|error| error.code())
    }

    fn encoded(values: &[&str]) -> TestRequest {
        values.iter().fold(TestRequest::post(), |request, value| {
            request.append_header((header::CONTENT_ENCODING, *value))
        })
    }

    #[test]
    fn only_identity_passes_as_a_content_encoding() {
        assert_eq!(refusal(TestRequest::post()), None);
        for fine in [
            &["identity"][..],
            &["IDENTITY"],
            &["identity, identity"],
            &[""],
        ] {
            assert_eq!(refusal(encoded(fine)), None, "{fine:?}");
        }
        for coded in [
            &["gzip"][..],
            &["deflate"],
            &["br"],
            &["identity, gzip"],
            &["identity", "deflate"],
            &["x-unknown"],
        ] {
            assert_eq!(
                refusal(encoded(coded)),
                Some("unsupported_media_type"),
                "{coded:?}"
            );
        }
        let not_text = TestRequest::post().insert_header((
            header::CONTENT_ENCODING,
            header::HeaderValue::from_bytes(b"gz\xffip").expect("opaque bytes"),
        ));
        assert_eq!(refusal(not_text), Some("unsupported_media_type"));
    }

    #[test]
    fn a_uri_over_the_limit_is_refused_and_one_at_it_passes() {
        let with_target = |length: usize| {
            let query = "q".repeat(length - "/?".len());
            TestRequest::get().uri(&format!("/?{query}"))
        };
        assert_eq!(refusal(with_target(MAX_URI_BYTES)), None);
        assert_eq!(
            refusal(with_target(MAX_URI_BYTES + 1)),
            Some("uri_too_long")
        );
    }
}
