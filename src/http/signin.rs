//! Signing in and out (see docs/api.md, HTTP routes): the form with its CSRF token, the session
//! cookie, and access tokens for API clients. Attempts are throttled per address and user name,
//! per address and per user name (`auth::throttle`), and passwords are checked a few at a time
//! (`auth::password::Verifier`): beyond that, 503 and "retry in a moment".

use super::error::{html, BUSY_RETRY};
use super::extract::authenticate;
use super::proxy::client_address;
use super::redirect::safe_next;
use super::{ApiError, AppState};
use crate::auth::grant::UserState;
use crate::auth::{
    password, random_token, same_token, session_key, CSRF_COOKIE, SESSION_COOKIE, SESSION_TTL_MS,
};
use crate::clock::now_ms;
use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    next: &'a str,
    username: &'a str,
    error: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub(super) struct NextQuery {
    next: Option<String>,
}

fn cookie<'c>(
    state: &AppState,
    name: &'c str,
    value: String,
    path: &'c str,
    max_age_secs: i64,
) -> Cookie<'c> {
    Cookie::build(name, value)
        .path(path)
        .http_only(true)
        .secure(state.auth.secure_cookies)
        .same_site(if name == SESSION_COOKIE {
            SameSite::Lax
        } else {
            SameSite::Strict
        })
        .max_age(time::Duration::seconds(max_age_secs))
        .finish()
}

fn login_form(
    state: &AppState,
    status: StatusCode,
    next: &str,
    username: &str,
    error: Option<&str>,
) -> HttpResponse {
    let csrf = random_token();
    let mut response = html(
        status,
        &LoginPage {
            csrf: &csrf,
            next,
            username,
            error,
        },
    );
    // The form's token is also set as a cookie; POST must present both, equal (double submit).
    let _ = response.add_cookie(&cookie(state, CSRF_COOKIE, csrf, "/login", 3_600));
    response
}

pub(super) async fn login_page(
    request: HttpRequest,
    query: web::Query<NextQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let next = safe_next(query.next.as_deref());
    if let Ok(Some(_)) = authenticate(&request, &state).await {
        return redirect(&next);
    }
    login_form(&state, StatusCode::OK, &next, "", None)
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

pub(super) async fn login(
    request: HttpRequest,
    form: web::Form<LoginForm>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let form = form.into_inner();
    let next = safe_next(form.next.as_deref());
    let csrf_ok = request
        .cookie(CSRF_COOKIE)
        .is_some_and(|c| !form.csrf.is_empty() && same_token(c.value(), &form.csrf));
    if !csrf_ok {
        return login_form(
            &state,
            StatusCode::FORBIDDEN,
            &next,
            &form.username,
            Some("This form expired. Please sign in again."),
        );
    }
    let address = client_address(&request, state.trust_proxy);
    let refused = |status, message, wait| {
        let mut response = login_form(&state, status, &next, &form.username, Some(message));
        super::error::retry_after(&mut response, wait);
        response
    };
    let attempt = match state.auth.admit_sign_in(&form.username, &address) {
        Ok(attempt) => attempt,
        Err(wait) => {
            return refused(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed attempts. Wait a minute and try again.",
                wait,
            )
        }
    };
    let user = match check_password(&state, &form.username, &form.password).await {
        Ok(Some(user)) => {
            state.auth.sign_in_succeeded(attempt);
            user
        }
        Ok(None) => {
            state.auth.sign_in_failed(attempt);
            tracing::info!(user = %form.username, %address, "failed sign-in");
            return login_form(
                &state,
                StatusCode::UNAUTHORIZED,
                &next,
                &form.username,
                Some("Wrong user name or password."),
            );
        }
        Err(ApiError::SignInBusy) => {
            state.auth.sign_in_withdrawn(attempt);
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sign-ins at this moment. Try again in a few seconds.",
                BUSY_RETRY,
            );
        }
        Err(error) => {
            state.auth.sign_in_withdrawn(attempt);
            return actix_web::ResponseError::error_response(&error);
        }
    };
    let session_id = random_token();
    let now = now_ms();
    if let Err(error) = state
        .core
        .store
        .create_session(
            &session_key(&session_id),
            &form.username,
            &user.epoch,
            &random_token(),
            now,
            now + SESSION_TTL_MS,
        )
        .await
    {
        return actix_web::ResponseError::error_response(&ApiError::from(error));
    }
    tracing::info!(user = %form.username, "signed in");
    let mut response = redirect(&next);
    let _ = response.add_cookie(&cookie(
        &state,
        SESSION_COOKIE,
        session_id,
        "/",
        SESSION_TTL_MS / 1000,
    ));
    let _ = response.add_removal_cookie(&cookie(&state, CSRF_COOKIE, String::new(), "/login", 0));
    response
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    csrf: Option<String>,
}

/// Ends the session (the row is deleted: the cookie is worthless afterwards) and clears it;
/// the connections opened with it end too, here at once and on every other instance when the
/// fan-out brings them the sign-out.
pub(super) async fn logout(
    request: HttpRequest,
    form: Option<web::Form<LogoutForm>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(caller) = authenticate(&request, &state).await? {
        if let (Some(key), Some(csrf)) = (caller.session_key(), caller.csrf()) {
            let presented = form
                .and_then(|f| f.into_inner().csrf)
                .or_else(|| {
                    request
                        .headers()
                        .get(crate::auth::CSRF_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            if !same_token(&presented, csrf) {
                return Err(ApiError::Csrf);
            }
            state.core.store.delete_session(key).await?;
            let ended = state.core.registry.end_session(key);
            state.core.fanout.send_sign_out(key);
            tracing::info!(user = %caller.username(), ended, "signed out");
        }
    }
    let mut response = redirect("/login");
    let _ = response.add_removal_cookie(&cookie(&state, SESSION_COOKIE, String::new(), "/", 0));
    Ok(response)
}

#[derive(Deserialize)]
pub(super) struct TokenRequest {
    username: String,
    password: String,
}

/// `{"access_token","token_type":"Bearer","expires_in"}`; 401 on bad credentials, 429 when
/// throttled, 503 when too many passwords are being checked at once.
pub(super) async fn token(
    request: HttpRequest,
    body: web::Json<TokenRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let address = client_address(&request, state.trust_proxy);
    let attempt = state
        .auth
        .admit_sign_in(&body.username, &address)
        .map_err(ApiError::RateLimited)?;
    let user = match check_password(&state, &body.username, &body.password).await {
        Ok(Some(user)) => user,
        Ok(None) => {
            state.auth.sign_in_failed(attempt);
            tracing::info!(user = %body.username, %address, "refused a token request");
            return Err(ApiError::BadCredentials);
        }
        Err(error) => {
            state.auth.sign_in_withdrawn(attempt);
            return Err(error);
        }
    };
    state.auth.sign_in_succeeded(attempt);
    let ttl = state.auth.token_ttl_secs;
    let token = state
        .auth
        .keys
        .issue(&body.username, user.role, &user.epoch, now_ms() / 1000, ttl);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
        })))
}

/// The user's role and credential epoch when the password is right. Unknown users cost a
/// verify too.
async fn check_password(
    state: &AppState,
    username: &str,
    password: &str,
) -> Result<Option<UserState>, ApiError> {
    let stored = state.core.store.user_credentials(username).await?;
    let (hash, user) = match stored {
        Some(stored) => (stored.password_hash, Some(stored.state)),
        None => (password::decoy_hash().to_owned(), None),
    };
    let matches = state
        .auth
        .passwords
        .verify(password.to_owned(), hash)
        .await
        .map_err(|password::Busy| ApiError::SignInBusy)?;
    Ok(user.filter(|_| matches))
}

/// A 303 to `location`; a value that cannot be a header (which `safe_next` never returns) goes
/// to `/` rather than failing the response.
fn redirect(location: &str) -> HttpResponse {
    let value = header::HeaderValue::from_str(location)
        .unwrap_or_else(|_| header::HeaderValue::from_static("/"));
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, value))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::redirect;
    use actix_web::http::header::LOCATION;

    #[test]
    fn a_redirect_never_fails_on_its_location() {
        assert_eq!(
            redirect("/console")
                .headers()
                .get(LOCATION)
                .expect("location"),
            "/console"
        );
        let response = redirect("/\n");
        assert_eq!(response.status(), 303);
        assert_eq!(response.headers().get(LOCATION).expect("location"), "/");
    }
}
