//! `GET /kiosk` (docs/api.md, Kiosk): the wall screen's page, and the exchange of a kiosk
//! link's key for a kiosk session. The key arrives once, in `?key=`: it is looked up by its
//! digest, exchanged for a session cookie and dropped from the address by a redirect to
//! `/kiosk`; it is never logged (the request span carries the route pattern, never the query)
//! nor sent on (`Referrer-Policy: no-referrer`). A screen whose link was revoked, or has
//! expired, gets the page that says so.

use super::error::{html, ApiError, PageError};
use super::extract::authenticate;
use super::pages::money;
use super::AppState;
use crate::auth::kiosk::KIOSK_COOKIE;
use crate::auth::{random_token, session_key};
use crate::clock::now_ms;
use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use std::collections::HashMap;

/// What a screen whose link is dead keeps as its cookie, for an hour: its reloads show the
/// revoked page rather than the sign-in form.
const DEAD_LINK: &str = "revoked";

#[derive(Template)]
#[template(path = "kiosk.html")]
struct KioskPage<'a> {
    /// The link is dead: the page says so and runs no script.
    revoked: bool,
    currency: &'a str,
    generated_at: &'a str,
    interval_ms: u128,
    active_users: String,
    orders_per_minute: String,
    today: String,
    last_hour: String,
    state: &'a str,
    seq: String,
}

pub(super) async fn page(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let key = serde_urlencoded::from_str::<HashMap<String, String>>(request.query_string())
        .ok()
        .and_then(|mut query| query.remove("key"));
    if let Some(key) = key {
        return exchange(&state, &key).await;
    }
    let caller = match authenticate(&request, &state).await {
        Ok(caller) => caller,
        // A bad or expired `?access_token=` or bearer token: sign in, as every page does.
        Err(ApiError::Unauthorized) => None,
        // A database that does not answer is the 503 page with Retry-After (`PageError::from`).
        Err(error) => return Err(PageError::from(error)),
    };
    match caller {
        Some(_) => Ok(render(&state, false, StatusCode::OK)),
        None if request.cookie(KIOSK_COOKIE).is_some() => {
            Ok(render(&state, true, StatusCode::UNAUTHORIZED))
        }
        None => Err(PageError::SignIn {
            next: "/kiosk".into(),
        }),
    }
}

/// The key for a session: a 303 to `/kiosk` with the session's cookie (as long as the link
/// lives), or with the dead-link cookie when the key is no live link's.
async fn exchange(state: &AppState, key: &str) -> Result<HttpResponse, PageError> {
    let session = random_token();
    let now = now_ms();
    let opened = state
        .core
        .store
        .open_kiosk_session(&session_key(key), &session_key(&session), now)
        .await
        .map_err(PageError::from)?;
    let (value, max_age_secs) = match opened {
        Some((link, expires_at)) => {
            tracing::info!(%link, "a kiosk link opened a session");
            // The exchange wrote "last used": the screen's first requests need not.
            let _ = state.core.kiosk_use.due(&link, now);
            (session, (expires_at - now) / 1000)
        }
        None => {
            tracing::info!("a kiosk key that is no live link's was presented");
            (DEAD_LINK.to_owned(), 3_600)
        }
    };
    let cookie = Cookie::build(KIOSK_COOKIE, value)
        .path("/")
        .http_only(true)
        .secure(state.auth.secure_cookies)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(max_age_secs.max(1)))
        .finish();
    let mut response = HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/kiosk"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .finish();
    let _ = response.add_cookie(&cookie);
    Ok(response)
}

/// The page with the current figures (so that they show at once), or the revoked page.
fn render(state: &AppState, revoked: bool, status: StatusCode) -> HttpResponse {
    let published = state.core.hub.latest();
    let snapshot = published
        .as_ref()
        .map(|p| &p.frame.snapshot)
        .filter(|_| !revoked);
    let figure = |value: Option<String>| value.unwrap_or_else(|| "—".into());
    html(
        status,
        &KioskPage {
            revoked,
            currency: snapshot.map_or("USD", |s| s.revenue.currency.as_str()),
            generated_at: snapshot.map_or("", |s| s.generated_at.as_str()),
            interval_ms: state.live.snapshot_interval.as_millis(),
            active_users: figure(snapshot.map(|s| s.active_users.to_string())),
            orders_per_minute: figure(snapshot.map(|s| s.orders_per_minute.to_string())),
            today: figure(snapshot.map(|s| money(s.revenue.today_minor, &s.revenue.currency))),
            last_hour: figure(
                snapshot.map(|s| money(s.revenue.last_hour_minor, &s.revenue.currency)),
            ),
            state: snapshot.map_or("unknown", |s| s.ingest.state.as_str()),
            seq: figure(snapshot.map(|s| s.seq.to_string())),
        },
    )
}
