//! HTTP's two error shapes, each implementing `ResponseError` once: [`ApiError`], every failure
//! of the JSON API as `{"error":{"code","message"}}` with its status (the codes: docs/api.md, Errors), and [`PageError`], the
//! HTML error pages (or the redirect to sign in) of server-rendered pages. Internal causes are
//! logged, never sent.

use actix_web::http::{header, ConnectionType, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use askama::Template;
use serde_json::json;

/// `Retry-After` of a sign-in refused because too many passwords are being checked at once.
pub(super) const BUSY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// `Retry-After` while the database does not answer: about one connection attempt of the
/// store's pool, which is how long this request already waited.
const DATABASE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("sign in or send a valid access token")]
    Unauthorized,
    #[error("your role does not allow this")]
    Forbidden,
    #[error("missing or invalid CSRF token")]
    Csrf,
    #[error("this origin may not open the console")]
    ForbiddenOrigin,
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("too many failed attempts; retry later")]
    RateLimited(std::time::Duration),
    /// This user asked for refreshes too often (`live::limit::RefreshLimiter`).
    #[error("too many refreshes; snapshots come at least once per interval anyway")]
    RefreshLimited(std::time::Duration),
    #[error("no such route")]
    NotFound,
    /// The path exists, not with this method; the value is the `Allow` header (`GET, HEAD`).
    #[error("this path does not answer this method; allowed: {0}")]
    MethodNotAllowed(String),
    /// The request body did not arrive within the read deadline; the connection is closed.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The request names a `Content-Encoding` other than `identity`: bodies are never
    /// inflated (see `http::screen_request_head`).
    #[error(
        "request bodies are accepted without content coding only (Content-Encoding: identity)"
    )]
    UnsupportedEncoding,
    /// The request target is longer than `http::MAX_URI_BYTES`.
    #[error("the request URI is longer than {0} bytes")]
    UriTooLong(usize),
    /// Too many passwords are being checked at once; retry in a moment.
    #[error("too many sign-ins at once; retry in a moment")]
    SignInBusy,
    /// The user already holds the configured number of live connections on this instance.
    #[error("at most {0} live connections per user; close one first")]
    TooManyStreams(usize),
    #[error("{0}")]
    Unavailable(String),
    /// The database does not answer or refuses for now (`StoreError::is_unavailable`); the
    /// cause goes to the log.
    #[error("the database does not answer; try again shortly")]
    DatabaseUnavailable(#[source] crate::store::StoreError),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden | ApiError::Csrf | ApiError::ForbiddenOrigin => "forbidden",
            ApiError::BadCredentials => "unauthorized",
            ApiError::RateLimited(_) | ApiError::RefreshLimited(_) => "rate_limited",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::TooManyStreams(_) => "too_many_streams",
            ApiError::UnsupportedEncoding => "unsupported_media_type",
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::Unavailable(_) | ApiError::DatabaseUnavailable(_) | ApiError::SignInBusy => {
                "unavailable"
            }
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        if error.is_unavailable() {
            ApiError::DatabaseUnavailable(error)
        } else {
            ApiError::Internal(error.into())
        }
    }
}

/// The body of every JSON error.
pub(crate) fn error_body(code: &str, message: &str) -> serde_json::Value {
    json!({"error": {"code": code, "message": message}})
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::Csrf | ApiError::ForbiddenOrigin => {
                StatusCode::FORBIDDEN
            }
            ApiError::BadCredentials => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited(_) | ApiError::RefreshLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::Unavailable(_) | ApiError::DatabaseUnavailable(_) | ApiError::SignInBusy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
            }
            ApiError::DatabaseUnavailable(cause) => {
                tracing::warn!(error = %cause, "request failed: the database does not answer");
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code())
            .json(error_body(self.code(), &self.to_string()));
        match self {
            ApiError::RateLimited(wait) | ApiError::RefreshLimited(wait) => {
                retry_after(&mut response, *wait)
            }
            ApiError::SignInBusy => retry_after(&mut response, BUSY_RETRY),
            ApiError::DatabaseUnavailable(_) => retry_after(&mut response, DATABASE_RETRY),
            ApiError::MethodNotAllowed(allow) => allow_header(&mut response, allow),
            // The rest of the body may still be on its way (unread, for a refused head): the
            // connection cannot be reused.
            ApiError::RequestTimeout | ApiError::UriTooLong(_) => close(&mut response),
            ApiError::UnsupportedEncoding => {
                // RFC 9110 §15.5.16: say which codings would have been accepted.
                response.headers_mut().insert(
                    header::ACCEPT_ENCODING,
                    header::HeaderValue::from_static("identity"),
                );
                close(&mut response);
            }
            _ => {}
        }
        response
    }
}

fn close(response: &mut HttpResponse) {
    response
        .head_mut()
        .set_connection_type(ConnectionType::Close);
}

/// `Allow: GET, HEAD` on a 405; the list is built from method names, always a valid value.
pub(super) fn allow_header(response: &mut HttpResponse, allow: &str) {
    if let Ok(value) = header::HeaderValue::from_str(allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
}

pub(super) fn retry_after(response: &mut HttpResponse, wait: std::time::Duration) {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(value) = header::HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PageError {
    #[error("sign in first")]
    SignIn { next: String },
    #[error("your role does not allow this page")]
    Forbidden,
    #[error("no such page")]
    NotFound,
    /// The page exists, not with this method; the value is the `Allow` header.
    #[error("this page does not answer this method")]
    MethodNotAllowed(String),
    /// The database does not answer for now (`StoreError::is_unavailable`); the cause is logged.
    #[error("the database does not answer: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for PageError {
    fn from(error: crate::store::StoreError) -> Self {
        if error.is_unavailable() {
            PageError::Unavailable(error.to_string())
        } else {
            PageError::Internal(error.to_string())
        }
    }
}

impl From<ApiError> for PageError {
    /// For a page whose caller check failed in a way other than signing in or role.
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::DatabaseUnavailable(cause) => PageError::Unavailable(cause.to_string()),
            other => PageError::Internal(other.to_string()),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        match self {
            PageError::SignIn { .. } => StatusCode::SEE_OTHER,
            PageError::Forbidden => StatusCode::FORBIDDEN,
            PageError::NotFound => StatusCode::NOT_FOUND,
            PageError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            PageError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            PageError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (title, message) = match self {
            PageError::SignIn { next } => {
                let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
                return HttpResponse::SeeOther()
                    .insert_header((header::LOCATION, format!("/login?{query}")))
                    .finish();
            }
            PageError::Forbidden => ("Not allowed", "Your role does not allow this page."),
            PageError::NotFound => ("Not found", "There is no page at this address."),
            PageError::MethodNotAllowed(_) => (
                "Not allowed",
                "This page does not answer that kind of request.",
            ),
            PageError::Unavailable(cause) => {
                tracing::warn!(%cause, "page failed: the database does not answer");
                (
                    "Try again shortly",
                    "The database does not answer right now. Try again in a moment.",
                )
            }
            PageError::Internal(cause) => {
                tracing::error!(%cause, "page failed");
                (
                    "Something went wrong",
                    "The page could not be shown. Try again in a moment.",
                )
            }
        };
        let mut response = html(self.status_code(), &ErrorPage { title, message });
        match self {
            PageError::MethodNotAllowed(allow) => allow_header(&mut response, allow),
            PageError::Unavailable(_) => retry_after(&mut response, DATABASE_RETRY),
            _ => {}
        }
        response
    }
}

/// Renders a template; a render failure becomes the plain 500 page.
pub(super) fn html(status: StatusCode, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(body) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body),
        Err(error) => {
            tracing::error!(%error, "template failed");
            HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body("internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn a_database_that_does_not_answer_is_503_unavailable_and_one_that_errs_is_500() {
        let down = ApiError::from(StoreError::Refused {
            waited: std::time::Duration::from_secs(5),
            cause: "sorry, too many clients already (SQLSTATE 53300)".into(),
        });
        assert_eq!(down.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.code(), "unavailable");
        let response = down.error_response();
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        assert!(
            !down.to_string().contains("53300"),
            "the cause stays in the log"
        );

        let fault = ApiError::from(StoreError::Corrupt("x".into()));
        assert_eq!(fault.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(fault.code(), "internal");
    }

    #[test]
    fn a_page_whose_database_does_not_answer_is_503_with_retry_after_and_hides_the_cause() {
        let refused = || StoreError::Refused {
            waited: std::time::Duration::from_secs(5),
            cause: "sorry, too many clients already (SQLSTATE 53300)".into(),
        };
        for down in [
            PageError::from(refused()),
            PageError::from(ApiError::from(refused())),
        ] {
            assert_eq!(down.status_code(), StatusCode::SERVICE_UNAVAILABLE);
            let response = down.error_response();
            assert_eq!(
                response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .map(|v| v.as_bytes()),
                Some(&b"5"[..])
            );
        }
        let body = PageError::from(refused()).error_response().into_body();
        let bytes = actix_web::body::to_bytes(body);
        let text = futures_util::FutureExt::now_or_never(bytes)
            .and_then(Result::ok)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("does not answer"), "{text}");
        assert!(!text.contains("53300"), "the cause stays in the log");

        let fault = PageError::from(StoreError::Corrupt("x".into()));
        assert_eq!(fault.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
