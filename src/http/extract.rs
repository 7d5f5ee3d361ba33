//! Who is calling: credentials from the request, and the extractors that gate handlers. What
//! each caller may reach is decided here, by [`Access`]: a kiosk link's session (`Role::Kiosk`)
//! passes only [`Reader`], the dashboard's read-only data (docs/security.md, Kiosk links).

use super::{ApiError, AppState, PageError};
use crate::auth::grant::{Grant, GrantKind, Verdict};
use crate::auth::kiosk::{holder, KIOSK_COOKIE};
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
    if let Some(cookie) = request.cookie(KIOSK_COOKIE) {
        return kiosk_caller(state, session_key(cookie.value())).await;
    }
    Ok(None)
}

/// The caller of a kiosk session with id digest `key`, if it is a live session of a live link;
/// the link is marked used (at most once a minute per link: `auth::kiosk::LinkUse`).
async fn kiosk_caller(state: &AppState, key: String) -> Result<Option<Caller>, ApiError> {
    let now = now_ms();
    let Some(session) = state
        .core
        .store
        .kiosk_session(&key, now)
        .await
        // 503 with Retry-After when the database does not answer, 500 otherwise.
        .map_err(ApiError::from)?
    else {
        return Ok(None);
    };
    if state.core.kiosk_use.due(&session.link, now) {
        if let Err(error) = state.core.store.touch_kiosk_link(&session.link, now).await {
            tracing::debug!(%error, "cannot record a kiosk link's use");
        }
    }
    let grant = Grant {
        user: holder(&session.link),
        role: Role::Kiosk,
        epoch: session.epoch,
        kind: GrantKind::Session { key },
        issued_at: session.created_at,
        expires_at: session.expires_at,
    };
    // Only safe methods ever pass a kiosk session ([`Access::Dashboard`]): no CSRF token.
    Ok(Some(Caller { grant, csrf: None }))
}

/// What a handler lets in (SPEC §5, the "who" column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The dashboard's read-only data: admin, operator, kiosk link.
    Dashboard,
    /// Everything else a signed-in user may do: admin, operator.
    Viewer,
    /// The console and changing things for everyone: operator.
    Operator,
}

impl Access {
    fn admits(self, role: Role) -> bool {
        match self {
            Access::Dashboard => true,
            Access::Viewer => role != Role::Kiosk,
            Access::Operator => role == Role::Operator,
        }
    }
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

async fn caller_with_role(request: HttpRequest, access: Access) -> Result<Caller, ApiError> {
    let state = state_of(&request)?;
    let caller = authenticate(&request, &state)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if !access.admits(caller.role()) {
        return Err(ApiError::Forbidden);
    }
    check_csrf(&request, &caller)?;
    Ok(caller)
}

/// The dashboard's read-only data (snapshot, history, stream, long-poll): admin, operator or a
/// kiosk link; 401 otherwise.
pub(crate) struct Reader(pub Caller);

impl FromRequest for Reader {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move {
            caller_with_role(request, Access::Dashboard)
                .await
                .map(Reader)
        })
    }
}

/// A signed-in user (admin or operator): 401 when not signed in, 403 for a kiosk link.
pub(crate) struct Viewer(pub Caller);

impl FromRequest for Viewer {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move { caller_with_role(request, Access::Viewer).await.map(Viewer) })
    }
}

/// The operator role: 401 when not signed in, 403 for an admin or a kiosk link.
pub(crate) struct Operator(pub Caller);

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move {
            caller_with_role(request, Access::Operator)
                .await
                .map(Operator)
        })
    }
}

async fn page_caller(request: HttpRequest, access: Access) -> Result<Caller, PageError> {
    match caller_with_role(request.clone(), access).await {
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

/// A page for a signed-in user; otherwise a redirect to `/login?next=…` (a kiosk link: 403).
pub(crate) struct PageViewer(pub Caller);

impl FromRequest for PageViewer {
    type Error = PageError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move { page_caller(request, Access::Viewer).await.map(PageViewer) })
    }
}

/// A page for operators; an admin gets the 403 page.
pub(crate) struct PageOperator(pub Caller);

impl FromRequest for PageOperator {
    type Error = PageError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move {
            page_caller(request, Access::Operator)
                .await
                .map(PageOperator)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Access, Role};

    #[test]
    fn a_kiosk_link_reads_the_dashboard_and_nothing_else() {
        let roles = [Role::Admin, Role::Operator, Role::Kiosk];
        let admitted = |access: Access| -> Vec<Role> {
            roles.into_iter().filter(|r| access.admits(*r)).collect()
        };
        assert_eq!(admitted(Access::Dashboard), roles);
        assert_eq!(admitted(Access::Viewer), [Role::Admin, Role::Operator]);
        assert_eq!(admitted(Access::Operator), [Role::Operator]);
    }
}
