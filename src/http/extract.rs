//! Who is calling: credentials from the request, and the extractors that gate handlers.

use super::{ApiError, AppState, PageError};
use crate::auth::grant::{Grant, GrantKind, Verdict};
use crate::auth::{same_token, session_key, Role, CSRF_HEADER, SESSION_COOKIE};
use crate::clock::now_ms;
use actix_web::dev::Payload;
use actix_web::http::{header, Method};
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use std::collections::HashMap;

/// An authenticated caller: the credential as checked, which every live connection it opens
/// remembers (so that it ends when the credential stops being good).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub grant: Grant,
    /// A browser session's CSRF token, which guards its unsafe methods; a bearer or
    /// `access_token` token has none (browsers do not send those on their own: no CSRF risk).
    csrf: Option<String>,
}

impl Caller {
    pub(crate) fn username(&self) -> &str {
        &self.grant.user
    }

    pub(crate) fn role(&self) -> Role {
        self.grant.role
    }

    pub(crate) fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }

    /// The key hash of the session it came with; `None` for a token.
    pub(crate) fn session_key(&self) -> Option<&str> {
        match &self.grant.kind {
            GrantKind::Session { key } => Some(key),
            GrantKind::Token => None,
        }
    }
}

/// The caller, if any credential is presented; a presented but invalid token is an error
/// (an expired or revoked token must not silently fall back to an anonymous request).
pub(crate) async fn authenticate(
    request: &HttpRequest,
    state: &AppState,
) -> Result<Option<Caller>, ApiError> {
    if let Some(token) = bearer_token(request).or_else(|| query_token(request)) {
        let grant = state
            .auth
            .keys
            .verify(&token)
            .ok_or(ApiError::Unauthorized)?
            .into_grant();
        // Judged by this instance's table of the users' epochs, not the database: dashboards
        // on tokens ride out a database outage, and a revoked token is refused all the same.
        if state.core.credentials.check(&grant).await != Verdict::Good {
            return Err(ApiError::Unauthorized);
        }
        return Ok(Some(Caller { grant, csrf: None }));
    }
    if let Some(cookie) = request.cookie(SESSION_COOKIE) {
        let key = session_key(cookie.value());
        let session = state
            .core
            .store
            .session(&key, now_ms())
            .await
            // A database that does not answer is 503 with Retry-After; any other failure is
            // the service's own (500), decided once by `StoreError::is_unavailable`.
            .map_err(ApiError::from)?;
        // The database has only sessions that are live and of their user's current epoch.
        if let Some(session) = session {
            let grant = Grant {
                user: session.username,
                role: session.role,
                epoch: session.epoch,
                kind: GrantKind::Session { key },
                issued_at: session.created_at,
                expires_at: session.expires_at,
            };
            return Ok(Some(Caller {
                grant,
                csrf: Some(session.csrf),
            }));
        }
    }
    Ok(None)
}

fn bearer_token(request: &HttpRequest) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn query_token(request: &HttpRequest) -> Option<String> {
    serde_urlencoded::from_str::<HashMap<String, String>>(request.query_string())
        .ok()?
        .remove("access_token")
}

/// A session caller's unsafe request must carry the session's CSRF token in `X-CSRF-Token`.
fn check_csrf(request: &HttpRequest, caller: &Caller) -> Result<(), ApiError> {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    match caller.csrf() {
        Some(expected) if !safe => {
            let presented = request
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if same_token(presented, expected) {
                Ok(())
            } else {
                Err(ApiError::Csrf)
            }
        }
        _ => Ok(()),
    }
}

fn state_of(request: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    request
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))
}

async fn caller_with_role(request: HttpRequest, operator_only: bool) -> Result<Caller, ApiError> {
    let state = state_of(&request)?;
    let caller = authenticate(&request, &state)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if operator_only && caller.role() != Role::Operator {
        return Err(ApiError::Forbidden);
    }
    check_csrf(&request, &caller)?;
    Ok(caller)
}

/// Any signed-in role (admin or operator): 401 otherwise.
pub(crate) struct Viewer(pub Caller);

impl FromRequest for Viewer {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move { caller_with_role(request, false).await.map(Viewer) })
    }
}

/// The operator role: 401 when not signed in, 403 for an admin.
pub(crate) struct Operator(pub Caller);

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move { caller_with_role(request, true).await.map(Operator) })
    }
}

async fn page_caller(request: HttpRequest, operator_only: bool) -> Result<Caller, PageError> {
    match caller_with_role(request.clone(), operator_only).await {
        Ok(caller) => Ok(caller),
        Err(ApiError::Unauthorized) => Err(PageError::SignIn {
            next: request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into()),
        }),
        Err(ApiError::Forbidden) => Err(PageError::Forbidden),
        Err(error) => Err(PageError::from(error)),
    }
}

/// A page for any signed-in role; otherwise a redirect to `/login?next=…`.
pub(crate) struct PageViewer(pub Caller);

impl FromRequest for PageViewer {
    type Error = PageError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move { page_caller(request, false).await.map(PageViewer) })
    }
}

/// A page for operators; an admin gets the 403 page.
pub(crate) struct PageOperator(pub Caller);

impl FromRequest for PageOperator {
    type Error = PageError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move { page_caller(request, true).await.map(PageOperator) })
    }
}
