//! The admin's dashboard figures beyond the moment (docs/api.md, Snapshot: `compare`, `trust`;
//! HTTP routes: history `compare`): comparisons with yesterday and last week from history
//! seeded in the test database, on the snapshot, the event stream, the history API and the
//! metrics; and late events revising their minutes (orders, revenue, active users) and
//! counted, in a way that survives a restart.

use crate::helpers::{
    clear_of_minute_boundary, event, metric_sum, within_one_utc_day, Backend, Broker, Names,
    Service, ServiceConfig, TestDatabase,
};
use crate::sse_client::SseClient;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;

/// Per seeded minute: orders, net revenue, users active at its end.
const SEEDED: (i64, i64, i64) = (2, 10, 5);

async fn execute(database: &TestDatabase, sql: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&database.url)
        .await
        .expect("the test database");
    sqlx::Executor::execute(&pool, sql)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql:.200}"));
    pool.close().await;
}

/// Stores a history point for every minute of `[from, to)` (as a leader would have): orders,
/// net revenue and users active at its end.
pub async fn seed_minutes(database: &TestDatabase, from: i64, to: i64, point: (i64, i64, i64)) {
    let (orders, revenue, users) = point;
    let minutes: Vec<i64> = (0..)
        .map(|i| from + i * MINUTE_MS)
        .take_while(|m| *m < to)
        .collect();
    for chunk in minutes.chunks(400) {
        let values: Vec<String> = chunk
            .iter()
            .map(|m| format!("({m}, {orders}, {revenue}, {users})"))
            .collect();
        execute(
            database,
            &format!(
                "INSERT INTO minute_stats (minute, orders, revenue_minor, active_users) VALUES {}",
                values.join(", ")
            ),
        )
        .await;
    }
}

pub fn minute_of(at: i64) -> i64 {
    at - at.rem_euclid(MINUTE_MS)
}

fn millis(rfc3339: &Value) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339.as_str().expect("a time"))
        .unwrap_or_else(|e| panic!("{e}: {rfc3339}"))
        .timestamp_millis()
}

fn rfc3339_minute(minute: i64) -> String {
    DateTime::from_timestamp_millis(minute)
        .expect("a minute")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What `compare.yesterday` must say for a snapshot generated at `generated_at` (UTC): the
/// seeded minutes summed from yesterday's midnight, and over the hour, to the same minute, and
/// the elapsed seconds' part of that minute (the hour gains as much as it loses: every minute
/// is alike).
fn expected_yesterday(generated_at: i64) -> Value {
    let (orders, revenue, users) = SEEDED;
    let instant = minute_of(generated_at) - DAY_MS;
    let midnight = instant - instant.rem_euclid(DAY_MS);
    let elapsed_secs = (generated_at - minute_of(generated_at)) / 1000;
    serde_json::json!({
        "active_users": users,
        "orders_per_minute": orders,
        "revenue_today_minor": revenue * (instant - midnight) / MINUTE_MS + revenue * elapsed_secs / 60,
        "revenue_last_hour_minor": revenue * 60,
    })
}

/// Migrates the database with a first start, seeds [`SEEDED`] history from `from(yesterday)`
/// (yesterday: the minute a day before now's) to a quarter of an hour past yesterday's same
/// time while no leader runs, and starts the service again.
async fn start_with_yesterday(
    config: &ServiceConfig,
    database: &TestDatabase,
    from: impl Fn(i64) -> i64,
) -> Service {
    let mut service = Service::start(config).await;
    service.terminate(Duration::from_secs(15)).await;
    let yesterday = minute_of(Utc::now().timestamp_millis()) - DAY_MS;
    seed_minutes(
        database,
        from(yesterday),
        yesterday + 15 * MINUTE_MS,
        SEEDED,
    )
    .await;
    Service::start(config).await
}

async fn compare_with_yesterday_from_seeded_history(backend: Backend) {
    clear_of_minute_boundary(Duration::from_secs(40)).await;
    let database = TestDatabase::new(backend).await;
    let names = Names::new();
    let mut config = ServiceConfig::new(&database, &names, "compare-1");
    config
        .env
        .push(("PULSEBOARD_TIMEZONE".into(), "UTC".into()));
    // Yesterday from an hour before its midnight; nothing a week ago.
    let service = start_with_yesterday(&config, &database, |yesterday| {
        yesterday - yesterday.rem_euclid(DAY_MS) - 60 * MINUTE_MS
    })
    .await;

    let snapshot = service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            !s["compare"]["yesterday"].is_null()
        })
        .await;
    assert_eq!(
        snapshot["compare"]["yesterday"],
        expected_yesterday(millis(&snapshot["generated_at"])),
        "{snapshot}"
    );
    assert!(snapshot["compare"]["last_week"].is_null(), "{snapshot}");

    // The stream's opening snapshot says the same.
    let mut stream = SseClient::connect(&service, "/api/dashboard/stream", None).await;
    let (_, opening) = stream.opening().await;
    assert_eq!(
        opening["compare"]["yesterday"],
        expected_yesterday(millis(&opening["generated_at"])),
        "{opening}"
    );
    assert!(opening["compare"]["last_week"].is_null(), "{opening}");

    // The metrics export the same baselines; last week's are absent (no history).
    let text = service.metrics().await.expect("metrics");
    assert_eq!(
        metric_sum(
            &text,
            "pulseboard_orders_per_minute_baseline",
            "compare=\"1d\""
        ),
        SEEDED.0 as u64,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "pulseboard_active_users_baseline", "compare=\"1d\""),
        SEEDED.2 as u64,
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("_baseline{") && l.contains("compare=\"7d\"")),
        "{text}"
    );

    // History: the same window a day earlier, each point with its own minute.
    let (status, today) = service.get_json("/api/dashboard/history?minutes=30").await;
    assert_eq!(status, 200, "{today}");
    assert!(today.get("compare").is_none(), "{today}");
    let (status, shifted) = service
        .get_json("/api/dashboard/history?minutes=30&compare=1d")
        .await;
    assert_eq!(status, 200, "{shifted}");
    assert_eq!(shifted["compare"], "1d");
    let points = shifted["points"].as_array().expect("points");
    assert_eq!(points.len(), 30, "{shifted}");
    let today_points = today["points"].as_array().expect("points");
    for (earlier, now) in points.iter().zip(today_points) {
        assert_eq!(
            millis(&earlier["minute"]),
            millis(&now["minute"]) - DAY_MS,
            "{shifted}"
        );
        assert_eq!(earlier["revenue_minor"], SEEDED.1, "{shifted}");
        assert_eq!(earlier["orders"], SEEDED.0, "{shifted}");
        assert_eq!(earlier["active_users"], SEEDED.2, "{shifted}");
    }
    let (status, week) = service
        .get_json("/api/dashboard/history?minutes=30&compare=7d")
        .await;
    assert_eq!(status, 200, "{week}");
    assert_eq!(week["compare"], "7d");
    let week_points = week["points"].as_array().expect("points");
    assert_eq!(week_points.len(), 30);
    assert_eq!(
        millis(&week_points[29]["minute"]),
        millis(&today_points[29]["minute"]) - 7 * DAY_MS
    );
    assert!(
        week_points.iter().all(|p| p["revenue_minor"] == 0),
        "{week}"
    );

    for bad in ["2d", "", "1D"] {
        let (status, body) = service
            .get_json(&format!("/api/dashboard/history?minutes=5&compare={bad}"))
            .await;
        assert_eq!(status, 400, "compare={bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
    }
}

#[tokio::test]
async fn compare_with_yesterday_from_seeded_history_on_sqlite() {
    compare_with_yesterday_from_seeded_history(Backend::Sqlite).await;
}

#[tokio::test]
async fn compare_with_yesterday_from_seeded_history_on_postgres() {
    compare_with_yesterday_from_seeded_history(Backend::Postgres).await;
}

async fn a_late_event_revises_its_minute_and_is_counted(backend: Backend) {
    // The late events are 7 minutes old: they and the test stay within one day and one minute,
    // and their users' activity ended (5 minutes on) before any minute this leader closed, so
    // they revise their minute's orders and revenue, and no minute's active users.
    within_one_utc_day(Duration::from_secs(480), Duration::from_secs(600)).await;
    let database = TestDatabase::new(backend).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let mut config = ServiceConfig::new(&database, &names, "late-1");
    config
        .env
        .push(("PULSEBOARD_TIMEZONE".into(), "UTC".into()));
    let service = Service::start(&config).await;
    service.wait_until_ingesting(Duration::from_secs(20)).await;
    clear_of_minute_boundary(Duration::from_secs(15)).await;

    let sent_at = Utc::now().timestamp_millis();
    broker
        .publish_all(&[
            (
                "order.placed".into(),
                event("now-1", "order.placed", 0, "u1", Some(300)),
            ),
            (
                "order.placed".into(),
                event("late-1", "order.placed", 420, "u2", Some(700)),
            ),
            (
                "order.refunded".into(),
                event("late-2", "order.refunded", 420, "u2", Some(200)),
            ),
        ])
        .await;
    let late_minute = minute_of(sent_at - 420_000);
    // The queue's depth is polled apart from ingest: the first snapshot with the events in
    // may still carry the depth read before they were taken.
    let snapshot = service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            s["revenue"]["today_minor"] == 800 && s["trust"]["queue_depth"] == 0
        })
        .await;
    let trust = &snapshot["trust"];
    assert_eq!(trust["late_events_today"], 2, "{snapshot}");
    assert_eq!(
        trust["revised_minutes"],
        serde_json::json!([rfc3339_minute(late_minute)]),
        "{snapshot}"
    );
    // Every event that arrived is in: complete through their arrival, after they were sent.
    let complete_through = millis(&trust["complete_through"]);
    assert!(
        complete_through >= sent_at && complete_through <= millis(&snapshot["generated_at"]),
        "{snapshot}"
    );
    assert_eq!(snapshot["revenue"]["last_hour_minor"], 800, "{snapshot}");

    // The stream says the same, and the history point of that minute is revised.
    let mut stream = SseClient::connect(&service, "/api/dashboard/stream", None).await;
    let (_, opening) = stream.opening().await;
    assert_eq!(opening["trust"], snapshot["trust"], "{opening}");
    let (status, history) = service.get_json("/api/dashboard/history?minutes=15").await;
    assert_eq!(status, 200);
    let point = history["points"]
        .as_array()
        .expect("points")
        .iter()
        .find(|p| p["minute"] == rfc3339_minute(late_minute))
        .cloned()
        .unwrap_or_else(|| panic!("the late minute in {history}"));
    assert_eq!(point["revenue_minor"], 500, "{point}");
    assert_eq!(point["orders"], 1, "{point}");

    let text = service.metrics().await.expect("metrics");
    assert_eq!(metric_sum(&text, "pulseboard_late_events_total", ""), 2);
    assert_eq!(
        metric_sum(
            &text,
            "pulseboard_order_amount_minor_total",
            "type=\"order.placed\""
        ),
        1_000
    );
    assert_eq!(
        metric_sum(
            &text,
            "pulseboard_order_amount_minor_total",
            "type=\"order.refunded\""
        ),
        200
    );
}

#[tokio::test]
async fn a_late_event_revises_its_minute_and_is_counted_on_sqlite() {
    a_late_event_revises_its_minute_and_is_counted(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_late_event_revises_its_minute_and_is_counted_on_postgres() {
    a_late_event_revises_its_minute_and_is_counted(Backend::Postgres).await;
}

/// The history point of `minute` as the history API serves it.
async fn point_of(service: &Service, minute: i64) -> Value {
    let (status, history) = service.get_json("/api/dashboard/history?minutes=15").await;
    assert_eq!(status, 200, "{history}");
    history["points"]
        .as_array()
        .expect("points")
        .iter()
        .find(|p| p["minute"] == rfc3339_minute(minute))
        .cloned()
        .unwrap_or_else(|| panic!("minute {} in {history}", rfc3339_minute(minute)))
}

/// An event at a time within `minute` (its 30th second or just after), as `event` builds it.
fn event_in(id: &str, kind: &str, minute: i64, user: &str, amount: Option<i64>) -> Vec<u8> {
    let seconds_ago = (Utc::now().timestamp_millis() - (minute + 30_000)) / 1000;
    event(id, kind, seconds_ago, user, amount)
}

/// A late activity revises the users active at the end of a minute this leader closed, and
/// the late events' count and revised minutes are stored with them: after a restart the new
/// leader's snapshot says the same, and the history keeps the revised point. The new leader
/// did not close that minute itself, so a late activity in it then is counted but leaves its
/// active users as they were (docs/events.md, Late events).
async fn late_events_and_revised_minutes_survive_a_restart(backend: Backend) {
    within_one_utc_day(Duration::ZERO, Duration::from_secs(300)).await;
    let database = TestDatabase::new(backend).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let mut config = ServiceConfig::new(&database, &names, "late-restart-1");
    config
        .env
        .push(("PULSEBOARD_TIMEZONE".into(), "UTC".into()));
    let mut service = Service::start(&config).await;
    service.wait_until_ingesting(Duration::from_secs(20)).await;
    clear_of_minute_boundary(Duration::from_secs(10)).await;

    // u1 active on time in minute M, which this leader then closes with 1 user active.
    let minute = minute_of(Utc::now().timestamp_millis());
    broker
        .publish_all(&[(
            "user.active".into(),
            event("u1-now", "user.active", 0, "u1", None),
        )])
        .await;
    service
        .wait_for_snapshot(Duration::from_secs(20), |s| s["active_users"] == 1)
        .await;
    // The snapshot of the next minute follows its close, in the same tick.
    service
        .wait_for_snapshot(Duration::from_secs(80), |s| {
            millis(&s["point"]["minute"]) > minute
        })
        .await;
    let closed = point_of(&service, minute).await;
    assert_eq!(
        (&closed["active_users"], &closed["orders"]),
        (&1.into(), &0.into()),
        "{closed}"
    );

    // Late in M: u2's activity and u3's order, both unseen: active at M's end.
    broker
        .publish_all(&[
            (
                "user.active".into(),
                event_in("u2-late", "user.active", minute, "u2", None),
            ),
            (
                "order.placed".into(),
                event_in("u3-late", "order.placed", minute, "u3", Some(400)),
            ),
        ])
        .await;
    let revised = serde_json::json!([rfc3339_minute(minute)]);
    let snapshot = service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            s["trust"]["late_events_today"] == 2
        })
        .await;
    assert_eq!(snapshot["trust"]["revised_minutes"], revised, "{snapshot}");
    let point = point_of(&service, minute).await;
    assert_eq!(
        (
            &point["active_users"],
            &point["orders"],
            &point["revenue_minor"]
        ),
        (&3.into(), &1.into(), &400.into()),
        "{point}"
    );

    // A new leader (the service restarted) says the same, from the store.
    service.terminate(Duration::from_secs(15)).await;
    let service = Service::start(&config).await;
    let snapshot = service.wait_until_ingesting(Duration::from_secs(20)).await;
    assert_eq!(snapshot["trust"]["late_events_today"], 2, "{snapshot}");
    assert_eq!(snapshot["trust"]["revised_minutes"], revised, "{snapshot}");
    assert_eq!(point_of(&service, minute).await, point);

    // It did not close M: a late activity in it is counted, and M keeps its active users.
    broker
        .publish_all(&[(
            "user.active".into(),
            event_in("u4-late", "user.active", minute, "u4", None),
        )])
        .await;
    let snapshot = service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            s["trust"]["late_events_today"] == 3
        })
        .await;
    assert!(
        snapshot["trust"]["revised_minutes"]
            .as_array()
            .is_some_and(|minutes| minutes.contains(&revised[0])),
        "{snapshot}"
    );
    assert_eq!(point_of(&service, minute).await["active_users"], 3);
}

#[tokio::test]
async fn late_events_and_revised_minutes_survive_a_restart_on_sqlite() {
    late_events_and_revised_minutes_survive_a_restart(Backend::Sqlite).await;
}

#[tokio::test]
async fn late_events_and_revised_minutes_survive_a_restart_on_postgres() {
    late_events_and_revised_minutes_survive_a_restart(Backend::Postgres).await;
}

/// While ingest is paused, events wait in `<prefix>.events`: the snapshot says how many
/// (`trust.queue_depth`), and again 0 once they are consumed.
#[tokio::test]
async fn the_queue_depth_is_in_trust_while_events_wait() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "depth-1")).await;
    service.wait_until_ingesting(Duration::from_secs(20)).await;
    let mut console = crate::console::Console::open(&service, service.token()).await;
    console.ok("ingest.pause", Value::Null).await;
    service
        .wait_for_snapshot(Duration::from_secs(10), |s| {
            s["ingest"]["state"] == "paused"
        })
        .await;
    let messages: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                "order.placed".to_owned(),
                event(&format!("q-{i}"), "order.placed", 0, "u1", Some(100)),
            )
        })
        .collect();
    broker.publish_all(&messages).await;
    let waiting = service
        .wait_for_snapshot(Duration::from_secs(15), |s| s["trust"]["queue_depth"] == 3)
        .await;
    assert_eq!(waiting["revenue"]["today_minor"], 0, "{waiting}");
    console.ok("ingest.resume", Value::Null).await;
    service
        .wait_for_snapshot(Duration::from_secs(15), |s| {
            s["trust"]["queue_depth"] == 0 && s["revenue"]["today_minor"] == 300
        })
        .await;
}

/// Every instance serves the leader's comparisons and exports the same baselines; a new leader
/// reads them from the history again and goes on comparing.
#[tokio::test]
async fn every_instance_compares_alike_and_a_new_leader_goes_on_comparing() {
    clear_of_minute_boundary(Duration::from_secs(40)).await;
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let config = |node: &str| {
        let mut config = ServiceConfig::new(&database, &names, node);
        config
            .env
            .push(("PULSEBOARD_TIMEZONE".into(), "UTC".into()));
        config
    };
    let mut first = Service::start(&config("cmp-a")).await;
    first.terminate(Duration::from_secs(15)).await;
    let yesterday = minute_of(Utc::now().timestamp_millis()) - DAY_MS;
    let midnight = yesterday - yesterday.rem_euclid(DAY_MS);
    seed_minutes(
        &database,
        midnight - 60 * MINUTE_MS,
        yesterday + 15 * MINUTE_MS,
        SEEDED,
    )
    .await;
    let first = Service::start(&config("cmp-a")).await;
    let second = Service::start(&config("cmp-b")).await;
    let mut services = [first, second];
    for service in &services {
        let snapshot = service
            .wait_for_snapshot(Duration::from_secs(20), |s| {
                !s["compare"]["yesterday"].is_null()
            })
            .await;
        assert_eq!(
            snapshot["compare"]["yesterday"],
            expected_yesterday(millis(&snapshot["generated_at"])),
            "{snapshot}"
        );
        let text = service.metrics().await.expect("metrics");
        assert_eq!(
            metric_sum(&text, "pulseboard_active_users_baseline", "compare=\"1d\""),
            SEEDED.2 as u64,
            "{text}"
        );
    }
    let leader = services[0]
        .snapshot()
        .await
        .and_then(|s| s["ingest"]["leader"].as_str().map(str::to_owned))
        .expect("a leader");
    let (dead, alive) = if leader == "cmp-a" { (0, 1) } else { (1, 0) };
    services[dead].kill().await;
    let follower = if alive == 0 { "cmp-a" } else { "cmp-b" };
    let taken_over = services[alive]
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            s["ingest"]["leader"] == follower && !s["compare"]["yesterday"].is_null()
        })
        .await;
    assert_eq!(
        taken_over["compare"]["yesterday"],
        expected_yesterday(millis(&taken_over["generated_at"])),
        "{taken_over}"
    );
}

/// In `PULSEBOARD_TIMEZONE=Asia/Kolkata` (UTC+05:30, no daylight saving) yesterday's revenue
/// today begins at Kolkata's midnight, 18:30 UTC the day before: history seeded from an hour
/// before that midnight is summed from it, not from UTC's midnight.
#[tokio::test]
async fn compare_in_a_zone_other_than_utc_sums_from_its_local_midnight() {
    const KOLKATA_OFFSET_MS: i64 = 19_800_000;
    clear_of_minute_boundary(Duration::from_secs(40)).await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let mut config = ServiceConfig::new(&database, &names, "compare-tz");
    config
        .env
        .push(("PULSEBOARD_TIMEZONE".into(), "Asia/Kolkata".into()));
    let local_midnight = |at: i64| at - (at + KOLKATA_OFFSET_MS).rem_euclid(DAY_MS);
    let service = start_with_yesterday(&config, &database, |yesterday| {
        local_midnight(yesterday) - 70 * MINUTE_MS
    })
    .await;
    let snapshot = service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            !s["compare"]["yesterday"].is_null()
        })
        .await;
    let generated_at = millis(&snapshot["generated_at"]);
    let instant = minute_of(generated_at) - DAY_MS;
    let (orders, revenue, users) = SEEDED;
    let elapsed_secs = (generated_at - minute_of(generated_at)) / 1000;
    assert_eq!(
        snapshot["compare"]["yesterday"],
        serde_json::json!({
            "active_users": users,
            "orders_per_minute": orders,
            "revenue_today_minor": revenue * (instant - local_midnight(instant)) / MINUTE_MS
                + revenue * elapsed_secs / 60,
            "revenue_last_hour_minor": revenue * 60,
        }),
        "{snapshot}"
    );
    // Not the UTC day's sum (unless Kolkata's and UTC's midnight fall on the same minute).
    let utc_midnight = instant - instant.rem_euclid(DAY_MS);
    assert_ne!(local_midnight(instant), utc_midnight);
}
