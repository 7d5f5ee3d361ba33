//! Server-rendered pages (askama, compiled in): the dashboard and the console. Pages answer in
//! HTML, never JSON (their errors are `error::PageError`): not signed in is a redirect to
//! `/login`.

use super::error::{html, PageError};
use super::extract::{PageOperator, PageViewer};
use super::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use askama::Template;

/// `12345` minor units → `123.45 USD` (two decimals; issue-free for the usual currencies).
pub(super) fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", minor / 100, minor % 100)
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage<'a> {
    user: &'a str,
    role: &'a str,
    csrf: &'a str,
    currency: &'a str,
    last_event_id: String,
    generated_at: &'a str,
    generated_time: String,
    interval_ms: u128,
    connection_state: &'a str,
    connection_text: &'a str,
    announcements: Vec<crate::live::Announcement>,
    active_users: String,
    orders_per_minute: String,
    today: String,
    last_hour: String,
    state: &'a str,
    seq: String,
}

/// Announcements shown on a fresh page: the latest few of the last day.
const PAGE_ANNOUNCEMENTS: i64 = 5;

/// The dashboard, rendered with the current figures so that they show before (and without) any
/// script; `app.js` then keeps them live from the event stream.
pub(super) async fn dashboard(
    viewer: PageViewer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let caller = viewer.0;
    let published = state.core.hub.latest();
    let snapshot = published.as_ref().map(|p| &p.frame.snapshot);
    let since = crate::clock::now_ms() - crate::live::hub::REPLAY_WINDOW_MS;
    let announcements = state
        .core
        .store
        .latest_announcements(PAGE_ANNOUNCEMENTS)
        .await
        .map_err(PageError::from)?
        .into_iter()
        .filter(|a| a.created_at >= since)
        .map(crate::live::Announcement::from)
        .collect();
    // The stream resumes from here: announcements already on the page are not sent again.
    let last_event_id = crate::live::EventId {
        announcement: state.core.hub.last_announcement(),
        seq: snapshot.map_or(0, |s| s.seq),
    };
    let figure = |value: Option<String>| value.unwrap_or_else(|| "—".into());
    Ok(html(
        StatusCode::OK,
        &DashboardPage {
            user: caller.username(),
            role: caller.role().as_str(),
            csrf: caller.csrf().unwrap_or_default(),
            currency: snapshot.map_or("USD", |s| s.revenue.currency.as_str()),
            last_event_id: last_event_id.to_string(),
            generated_at: snapshot.map_or("", |s| s.generated_at.as_str()),
            generated_time: snapshot
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s.generated_at).ok())
                .map(|t| t.format("%H:%M:%S UTC").to_string())
                .unwrap_or_else(|| "—".into()),
            interval_ms: state.live.snapshot_interval.as_millis(),
            // What a page without script says; app.js replaces it at once.
            connection_state: "static",
            connection_text: "Figures as of page load",
            announcements,
            active_users: figure(snapshot.map(|s| s.active_users.to_string())),
            orders_per_minute: figure(snapshot.map(|s| s.orders_per_minute.to_string())),
            today: figure(snapshot.map(|s| money(s.revenue.today_minor, &s.revenue.currency))),
            last_hour: figure(
                snapshot.map(|s| money(s.revenue.last_hour_minor, &s.revenue.currency)),
            ),
            state: snapshot.map_or("unknown", |s| s.ingest.state.as_str()),
            seq: figure(snapshot.map(|s| s.seq.to_string())),
        },
    ))
}

#[derive(Template)]
#[template(path = "console.html")]
struct ConsolePage<'a> {
    user: &'a str,
    role: &'a str,
    csrf: &'a str,
    commands: String,
    node: &'a str,
    leader: String,
    state: &'a str,
}

pub(super) async fn console(operator: PageOperator, state: web::Data<AppState>) -> HttpResponse {
    let caller = operator.0;
    let status = state.core.status.get();
    let frame = state.core.hub.latest_frame();
    html(
        StatusCode::OK,
        &ConsolePage {
            user: caller.username(),
            role: caller.role().as_str(),
            csrf: caller.csrf().unwrap_or_default(),
            commands: crate::console::DEFINITIONS
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(" "),
            node: &state.core.node,
            leader: status.ingest.leader.unwrap_or_else(|| "none".into()),
            state: frame
                .as_ref()
                .map_or("unknown", |f| f.snapshot.ingest.state.as_str()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::money;

    #[test]
    fn money_has_two_decimals_and_a_sign() {
        assert_eq!(money(1_843_300, "USD"), "18433.00 USD");
        assert_eq!(money(5, "EUR"), "0.05 EUR");
        assert_eq!(money(-120, "USD"), "-1.20 USD");
    }
}
