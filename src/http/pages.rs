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

/// A card's change against an earlier moment, as the page shows it before `app.js` runs (which
/// then keeps it live the same way): `▼ −2 (−50 %)`, its direction, or `—` without history.
pub(super) struct Against {
    text: String,
    direction: &'static str,
}

impl Against {
    fn of(now: i64, then: Option<i64>, format: impl Fn(i64) -> String) -> Against {
        let Some(then) = then else {
            return Against {
                text: "—".into(),
                direction: "none",
            };
        };
        let delta = now.saturating_sub(then);
        let (arrow, sign, direction) = match delta.signum() {
            1 => ("▲ ", "+", "up"),
            -1 => ("▼ ", "−", "down"),
            _ => ("• ", "", "flat"),
        };
        let share = if then == 0 {
            if delta == 0 {
                "0 %".to_owned()
            } else {
                "new".to_owned()
            }
        } else {
            let percent = (delta as f64 / then as f64).abs() * 100.0;
            let rounded = format!("{percent:.1}");
            format!("{sign}{} %", rounded.trim_end_matches(".0"))
        };
        Against {
            text: format!("{arrow}{sign}{} ({share})", format(delta.saturating_abs())),
            direction,
        }
    }
}

/// Each card's changes against yesterday and last week, in the order the page shows the cards.
fn comparisons(snapshot: Option<&crate::live::Snapshot>) -> Vec<[Against; 2]> {
    let currency = snapshot.map_or("USD", |s| s.revenue.currency.as_str());
    let count = |n: i64| n.to_string();
    let amount = |n: i64| money(n, currency);
    let now = |pick: fn(&crate::live::Snapshot) -> i64| snapshot.map_or(0, pick);
    let then = |pick: fn(&crate::live::ComparedView) -> Option<i64>| {
        let of = |against: Option<&crate::live::ComparedView>| against.and_then(pick);
        [
            of(snapshot.and_then(|s| s.compare.yesterday.as_ref())),
            of(snapshot.and_then(|s| s.compare.last_week.as_ref())),
        ]
    };
    let card = |now: i64, then: [Option<i64>; 2], format: &dyn Fn(i64) -> String| {
        then.map(|then| Against::of(now, snapshot.and(then), format))
    };
    vec![
        card(
            now(|s| s.active_users as i64),
            then(|c| Some(c.active_users as i64)),
            &count,
        ),
        card(
            now(|s| s.orders_per_minute as i64),
            then(|c| Some(c.orders_per_minute as i64)),
            &count,
        ),
        card(
            now(|s| s.revenue.today_minor),
            then(|c| c.revenue_today_minor),
            &amount,
        ),
        card(
            now(|s| s.revenue.last_hour_minor),
            then(|c| c.revenue_last_hour_minor),
            &amount,
        ),
    ]
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
    /// Per card, the changes against yesterday and last week.
    vs: Vec<[Against; 2]>,
    /// `HH:MM:SS UTC` of the snapshot's `trust.complete_through`; empty without one.
    complete_through: String,
    queue_depth: u64,
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
            vs: comparisons(snapshot),
            complete_through: snapshot
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s.trust.complete_through).ok())
                .map(|t| t.format("%H:%M:%S UTC").to_string())
                .unwrap_or_default(),
            queue_depth: snapshot.map_or(0, |s| s.trust.queue_depth),
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
    use super::{money, Against};

    #[test]
    fn a_change_against_an_earlier_moment_says_how_much_which_way_and_what_share() {
        let count = |n: i64| n.to_string();
        let down = Against::of(2, Some(4), count);
        assert_eq!(
            (down.text.as_str(), down.direction),
            ("▼ −2 (−50 %)", "down")
        );
        let up = Against::of(2, Some(1), count);
        assert_eq!((up.text.as_str(), up.direction), ("▲ +1 (+100 %)", "up"));
        assert_eq!(Against::of(2, Some(9), count).text, "▼ −7 (−77.8 %)");
        assert_eq!(Against::of(3, Some(3), count).text, "• 0 (0 %)");
        assert_eq!(Against::of(3, Some(0), count).text, "▲ +3 (new)");
        let none = Against::of(3, None, count);
        assert_eq!((none.text.as_str(), none.direction), ("—", "none"));
        let amount = Against::of(2277, Some(243_700), |n| money(n, "USD"));
        assert_eq!(amount.text, "▼ −2414.23 USD (−99.1 %)");
    }

    #[test]
    fn money_has_two_decimals_and_a_sign() {
        assert_eq!(money(1_843_300, "USD"), "18433.00 USD");
        assert_eq!(money(5, "EUR"), "0.05 EUR");
        assert_eq!(money(-120, "USD"), "-1.20 USD");
    }
}
