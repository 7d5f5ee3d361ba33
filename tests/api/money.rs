//! Bounded money (docs/events.md): an amount above the ceiling, or one that a running sum has no room
//! for, is dead-lettered with its reason while everything else goes on; a database left with a
//! figure that is not a whole number is refused at start with one clear line.

use crate::helpers::{
    event, within_one_utc_day, Backend, Broker, Names, Service, ServiceConfig, TestDatabase,
};
use chrono::Utc;
use serde_json::Value;
use std::time::Duration;

/// The ceiling on `amount_minor` (docs/events.md).
const MAX_AMOUNT: i64 = 1_000_000_000_000;

fn order(id: &str, kind: &str, seconds_ago: i64, amount: i64) -> (String, Vec<u8>) {
    (
        kind.to_owned(),
        event(id, kind, seconds_ago, "u1", Some(amount)),
    )
}

/// `/readyz` and `/api/dashboard/history` both answer 200, and history's revenue adds up to
/// `revenue` over the last few minutes.
async fn serves_history_and_readiness(service: &Service, revenue: i64) {
    let ready = service.get("/readyz").await;
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);
    let (status, history) = service.get_json("/api/dashboard/history?minutes=10").await;
    assert_eq!(status, 200, "{history}");
    let points = history["points"].as_array().cloned().unwrap_or_default();
    let sum: i64 = points
        .iter()
        .map(|p| p["revenue_minor"].as_i64().expect("an integer revenue"))
        .sum();
    assert_eq!(sum, revenue, "{history}");
}

async fn overflowing_orders_are_dead_lettered_and_the_service_stays_up(backend: Backend) {
    within_one_utc_day(Duration::from_secs(10), Duration::from_secs(120)).await;
    let database = TestDatabase::new(backend).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let config = ServiceConfig::new(&database, &names, "money-1");
    let mut service = Service::start(&config).await;

    // The three orders of the report, at i64::MAX / 2 each, among orders that must count.
    let half = i64::MAX / 2;
    let messages = vec![
        order("ok-1", "order.placed", 5, 1_000),
        order("big-1", "order.placed", 4, half),
        order("big-2", "order.placed", 4, half),
        order("ok-ceiling", "order.placed", 3, MAX_AMOUNT),
        order("big-3", "order.placed", 3, half),
        order("ok-refund", "order.refunded", 2, 500),
        order("ok-2", "order.placed", 1, 2_500),
    ];
    broker.publish_all(&messages).await;
    let expected = 1_000 + MAX_AMOUNT - 500 + 2_500;
    let snapshot = service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            s["revenue"]["today_minor"] == expected
        })
        .await;
    assert_eq!(
        snapshot["revenue"]["last_hour_minor"], expected,
        "{snapshot}"
    );
    assert_eq!(snapshot["orders_per_minute"], 3, "{snapshot}");

    let letters = broker.wait_for_dead_letters(3).await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    for (reason, body) in &letters {
        assert!(
            reason.starts_with(
                "invalid_field: data.amount_minor must be an integer from 0 to 1000000000000"
            ),
            "{reason}"
        );
        let body: Value = serde_json::from_slice(body).expect("the body as sent");
        assert!(body["id"].as_str().is_some_and(|id| id.starts_with("big-")));
    }
    assert_eq!(service.events_counted("rejected").await, 3);
    assert_eq!(service.events_counted("applied").await, 4);
    serves_history_and_readiness(&service, expected).await;

    // A restart rebuilds the same figures from the store, and leads without a hitch.
    let status = service.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    let service = Service::start(&config).await;
    service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            s["revenue"]["today_minor"] == expected && s["ingest"]["state"] == "running"
        })
        .await;
    serves_history_and_readiness(&service, expected).await;
    assert!(
        !service.log_text().contains("stopped leading ingest"),
        "{}",
        service.log_text()
    );
}

#[tokio::test]
async fn overflowing_orders_are_dead_lettered_and_the_service_stays_up_on_sqlite() {
    overflowing_orders_are_dead_lettered_and_the_service_stays_up(Backend::Sqlite).await;
}

#[tokio::test]
async fn overflowing_orders_are_dead_lettered_and_the_service_stays_up_on_postgres() {
    overflowing_orders_are_dead_lettered_and_the_service_stays_up(Backend::Postgres).await;
}

/// Runs `sql` on the test's database beside the service.
async fn execute(database: &TestDatabase, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&database.url).await?;
    let outcome = sqlx::Executor::execute(&pool, sql).await.map(drop);
    pool.close().await;
    outcome
}

async fn a_sum_without_room_refuses_the_event_not_the_service(backend: Backend) {
    within_one_utc_day(Duration::from_secs(10), Duration::from_secs(120)).await;
    let database = TestDatabase::new(backend).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let config = ServiceConfig::new(&database, &names, "room-1");
    // Today's revenue already near the top of the 64-bit range (many large orders earlier).
    let mut service = Service::start(&config).await;
    service.terminate(Duration::from_secs(15)).await;
    let today = Utc::now().date_naive();
    let start = i64::MAX - MAX_AMOUNT + 1;
    execute(
        &database,
        &format!("INSERT INTO daily_revenue (day, revenue_minor) VALUES ('{today}', {start})"),
    )
    .await
    .expect("seed today's revenue");
    let service = Service::start(&config).await;
    service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            s["revenue"]["today_minor"] == start
        })
        .await;

    // No room for the first order; the refund makes room for the small one after it.
    broker
        .publish_all(&[
            order("no-room", "order.placed", 3, MAX_AMOUNT),
            order("refund", "order.refunded", 2, MAX_AMOUNT),
            order("fits", "order.placed", 1, 5),
        ])
        .await;
    let expected = start - MAX_AMOUNT + 5;
    let snapshot = service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            s["revenue"]["today_minor"] == expected
        })
        .await;
    assert_eq!(snapshot["ingest"]["state"], "running", "{snapshot}");
    let letters = broker.wait_for_dead_letters(1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].0.starts_with(&format!(
            "sum_overflow: adding {MAX_AMOUNT} to the revenue of {today} would overflow"
        )),
        "{}",
        letters[0].0
    );
    assert_eq!(service.events_counted("rejected").await, 1);
    serves_history_and_readiness(&service, 5 - MAX_AMOUNT).await;
    assert!(
        !service.log_text().contains("stopped leading ingest"),
        "{}",
        service.log_text()
    );
}

#[tokio::test]
async fn a_sum_without_room_refuses_the_event_not_the_service_on_sqlite() {
    a_sum_without_room_refuses_the_event_not_the_service(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_sum_without_room_refuses_the_event_not_the_service_on_postgres() {
    a_sum_without_room_refuses_the_event_not_the_service(Backend::Postgres).await;
}

/// What `pulseboard <args>` printed on standard error, and whether it succeeded.
fn run(database: &TestDatabase, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pulseboard"))
        .args(args)
        .env("DATABASE_URL", &database.url)
        .env("PULSEBOARD_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "off")
        .output()
        .expect("run pulseboard");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Each backend refuses an overflowing sum by itself; a database left with a figure that is not
/// a whole number (SQLite: a REAL, as an earlier version wrote it; PostgreSQL: a figure column
/// altered away from BIGINT) is refused by `serve` and `migrate` with one line saying what to do.
async fn a_database_with_a_non_integer_figure_is_refused_at_start_with_one_clear_line(
    backend: Backend,
) {
    let database = TestDatabase::new(backend).await;
    let (migrated, stderr) = run(&database, &["migrate"]);
    assert!(migrated, "{stderr}");

    execute(
        &database,
        &format!(
            "INSERT INTO daily_revenue (day, revenue_minor) VALUES ('2026-12-01', {})",
            i64::MAX
        ),
    )
    .await
    .expect("an integer figure");
    let overflow = execute(
        &database,
        "UPDATE daily_revenue SET revenue_minor = revenue_minor + 1",
    )
    .await
    .expect_err("an overflowing sum is refused");
    let refusal = match backend {
        Backend::Sqlite => "64-bit integers",
        Backend::Postgres => "bigint out of range",
    };
    assert!(overflow.to_string().contains(refusal), "{overflow}");

    let named = match backend {
        Backend::Sqlite => {
            let fraction = execute(
                &database,
                "INSERT INTO minute_stats (minute, orders, revenue_minor) VALUES (60000, 1, 1.5)",
            )
            .await
            .expect_err("a fraction is refused");
            assert!(fraction.to_string().contains(refusal), "{fraction}");
            // As an earlier version left it: the triggers gone, a sum turned into a REAL.
            for table in ["daily_revenue", "minute_stats"] {
                for when in ["insert", "update"] {
                    execute(&database, &format!("DROP TRIGGER {table}_integer_{when}"))
                        .await
                        .expect("drop trigger");
                }
            }
            ["daily_revenue", "day 2026-12-01"]
        }
        Backend::Postgres => {
            // As a hand-made change could leave it: the column no longer BIGINT.
            execute(
                &database,
                "ALTER TABLE daily_revenue ALTER COLUMN revenue_minor TYPE double precision",
            )
            .await
            .expect("alter the column");
            ["daily_revenue.revenue_minor", "double precision"]
        }
    };
    execute(
        &database,
        "UPDATE daily_revenue SET revenue_minor = revenue_minor * 2.0",
    )
    .await
    .expect("a figure that is not a whole number");

    for args in [vec!["serve"], vec!["migrate"]] {
        let (started, stderr) = run(&database, &args);
        assert!(!started, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        for expected in ["DATABASE_URL", "docs/operations.md"].iter().chain(&named) {
            assert!(stderr.contains(expected), "{expected} in: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn a_database_with_a_non_integer_figure_is_refused_at_start_on_sqlite() {
    a_database_with_a_non_integer_figure_is_refused_at_start_with_one_clear_line(Backend::Sqlite)
        .await;
}

#[tokio::test]
async fn a_database_with_a_non_integer_figure_is_refused_at_start_on_postgres() {
    a_database_with_a_non_integer_figure_is_refused_at_start_with_one_clear_line(Backend::Postgres)
        .await;
}

/// The database answers `SELECT 1` but refuses the leader's writes: readiness blames the
/// database (not RabbitMQ), and once the writes work again nothing was lost.
#[tokio::test]
async fn readiness_names_a_database_that_refuses_the_leaders_writes() {
    within_one_utc_day(Duration::from_secs(10), Duration::from_secs(120)).await;
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "writes-1")).await;
    service.wait_until_ingesting(Duration::from_secs(20)).await;

    execute(
        &database,
        "ALTER TABLE daily_revenue RENAME TO daily_revenue_away",
    )
    .await
    .expect("hide a table");
    broker
        .publish_all(&[order("held", "order.placed", 1, 700)])
        .await;
    let mut reason = Value::Null;
    for _ in 0..100 {
        let (status, body) = service.get_json("/readyz").await;
        if status == 503 {
            reason = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let message = reason["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("database error in ingest: "),
        "{reason}"
    );
    assert!(message.contains("daily_revenue"), "{reason}");
    assert_eq!(reason["checks"]["database"], "failing", "{reason}");

    execute(
        &database,
        "ALTER TABLE daily_revenue_away RENAME TO daily_revenue",
    )
    .await
    .expect("bring the table back");
    service
        .wait_for_snapshot(Duration::from_secs(30), |s| {
            s["revenue"]["today_minor"] == 700
        })
        .await;
    let mut ready = 0;
    for _ in 0..100 {
        ready = service.get("/readyz").await.status().as_u16();
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);
    assert_eq!(service.events_counted("applied").await, 1);
}
