//! Ingest correctness: a known mix gives hand-computed figures; bad input is dead-lettered with
//! its reason and delays nothing.

use crate::helpers::{event, Backend, Broker, Names, Service, ServiceConfig, TestDatabase};
use crate::traffic::{net_revenue, stream_with_duplicates};
use chrono::Utc;
use serde_json::Value;
use std::time::Duration;

fn msg(routing_key: &str, body: Vec<u8>) -> (String, Vec<u8>) {
    (routing_key.to_owned(), body)
}

/// Whether an event `seconds_ago` falls on today's UTC date (the test runs in UTC).
fn today(seconds_ago: i64) -> bool {
    let now = Utc::now();
    (now - chrono::Duration::seconds(seconds_ago)).date_naive() == now.date_naive()
}

async fn known_mix_gives_hand_computed_figures(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "mix-1")).await;

    let good = vec![
        // Orders: three in the last minute, one 90 s ago, one two hours ago (late).
        msg(
            "order.placed",
            event("o1", "order.placed", 10, "u1", Some(1_000)),
        ),
        msg(
            "order.placed",
            event("o2", "order.placed", 20, "u2", Some(2_500)),
        ),
        msg(
            "order.placed",
            event("o3", "order.placed", 30, "u3", Some(4_000)),
        ),
        msg(
            "order.placed",
            event("o4", "order.placed", 90, "u1", Some(700)),
        ),
        msg(
            "order.placed",
            event("o5", "order.placed", 7_200, "u4", Some(10_000)),
        ),
        msg(
            "order.refunded",
            event("r1", "order.refunded", 5, "u2", Some(500)),
        ),
        msg("user.active", event("a5", "user.active", 100, "u5", None)),
        // Outside the 300 s window: not active.
        msg("user.active", event("a6", "user.active", 400, "u6", None)),
        // u3 ordered 30 s ago and signed out 1 s ago: not active.
        msg(
            "user.signed_out",
            event("s3", "user.signed_out", 1, "u3", None),
        ),
        // Unknown type: ignored, but its user is active.
        msg("order.shipped", event("x7", "order.shipped", 3, "u7", None)),
    ];
    let mut messages = good.clone();
    for i in 10..20 {
        let id = format!("a{i}");
        messages.push(msg(
            "user.active",
            event(&id, "user.active", 50, &format!("u{i}"), None),
        ));
    }
    // u5 active again, later: "a5" no longer set their latest activity.
    messages.push(msg(
        "user.active",
        event("a5-later", "user.active", 60, "u5", None),
    ));
    // 10 % duplicates of earlier ids; the refund's must not subtract twice, and a re-used id
    // with a different body still counts once.
    messages.push(good[0].clone());
    messages.push(good[5].clone());
    messages.push(msg(
        "order.placed",
        event("o2", "order.placed", 2, "u2", Some(99_999)),
    ));

    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("not_json", b"{not json".to_vec()),
        ("missing_field", event_without("id")),
        ("missing_field", event_without("type")),
        ("missing_field", event_without("occurred_at")),
        ("missing_field", event_without("user_id")),
        (
            "invalid_field",
            patched(|v| v["data"]["amount_minor"] = "10".into()),
        ),
        (
            "invalid_field",
            patched(|v| v["data"]["amount_minor"] = (-5).into()),
        ),
        ("invalid_field", patched(|v| v["id"] = 42.into())),
        // PostgreSQL cannot store U+0000: kept out, it must not stall the batch it is in.
        ("invalid_field", patched(|v| v["id"] = "evt\u{0}nul".into())),
        (
            "wrong_currency",
            patched(|v| v["data"]["currency"] = "EUR".into()),
        ),
        ("too_large", {
            let mut big = event("big", "user.active", 1, "u1", None);
            big.truncate(big.len() - 1);
            big.extend_from_slice(format!(",\"pad\":\"{}\"}}", "x".repeat(70_000)).as_bytes());
            big
        }),
        (
            "too_far_in_future",
            event("future", "user.active", -600, "u1", None),
        ),
        (
            "too_old",
            event("old", "user.active", 25 * 3_600, "u1", None),
        ),
    ];
    for (_, body) in &malformed {
        messages.push(msg("user.active", body.clone()));
    }
    broker.publish_all(&messages).await;

    let expected_today: i64 = [
        (1_000, 10),
        (2_500, 20),
        (4_000, 30),
        (700, 90),
        (10_000, 7_200),
        (-500, 5),
    ]
    .iter()
    .filter(|(_, ago)| today(*ago))
    .map(|(amount, _)| amount)
    .sum();
    let snapshot = service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            s["revenue"]["last_hour_minor"] == 7_700 && s["active_users"] == 14
        })
        .await;
    assert_eq!(snapshot["orders_per_minute"], 3, "{snapshot}");
    assert_eq!(
        snapshot["active_users"], 14,
        "u1 u2 u5 u7 and u10..u19: {snapshot}"
    );
    assert_eq!(
        snapshot["revenue"]["today_minor"], expected_today,
        "{snapshot}"
    );
    assert_eq!(snapshot["revenue"]["currency"], "USD");
    assert_eq!(snapshot["ingest"]["state"], "running");
    assert_eq!(snapshot["ingest"]["leader"], "mix-1");

    // Every malformed message is in the dead-letter queue with its reason.
    let letters = broker.wait_for_dead_letters(malformed.len()).await;
    let mut reasons: Vec<String> = letters.iter().map(|(r, _)| r.clone()).collect();
    reasons.sort();
    let mut expected: Vec<&str> = malformed.iter().map(|(code, _)| *code).collect();
    expected.sort();
    for (reason, code) in reasons.iter().zip(&expected) {
        assert!(
            reason.starts_with(&format!("{code}: ")),
            "{reason} should be {code}"
        );
    }
    assert_eq!(reasons.len(), expected.len(), "{reasons:?}");
    assert!(
        letters.iter().any(|(_, body)| body == b"{not json"),
        "bodies kept as sent"
    );

    assert_eq!(service.events_counted("duplicate").await, 3);
    assert_eq!(
        service.events_counted("rejected").await,
        malformed.len() as u64
    );
    assert_eq!(service.events_counted("ignored").await, 1);
    assert_eq!(service.events_counted("applied").await, 20);

    // "a5" again, in a batch of its own: it no longer set u5's latest activity, and it is a
    // user event of the active window, so it is recognised (SPEC §3.2) and changes nothing.
    broker.publish_all(&[good[6].clone()]).await;
    let started = std::time::Instant::now();
    while service.events_counted("duplicate").await + service.events_counted("applied").await < 24
        && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(service.events_counted("duplicate").await, 4);
    assert_eq!(service.events_counted("applied").await, 20);
    let after = service.snapshot().await.expect("snapshot");
    assert_eq!(after["active_users"], 14, "{after}");
    assert_eq!(
        broker.events_queue_depth().await,
        0,
        "everything acknowledged"
    );
}

fn valid_order() -> Value {
    serde_json::from_slice(&event("m", "order.placed", 1, "u1", Some(100))).expect("json")
}

fn event_without(field: &str) -> Vec<u8> {
    let mut value = valid_order();
    value.as_object_mut().map(|o| o.remove(field));
    value.to_string().into_bytes()
}

fn patched(change: impl Fn(&mut Value)) -> Vec<u8> {
    let mut value = valid_order();
    change(&mut value);
    value.to_string().into_bytes()
}

#[tokio::test]
async fn known_mix_gives_hand_computed_figures_on_sqlite() {
    known_mix_gives_hand_computed_figures(Backend::Sqlite).await;
}

#[tokio::test]
async fn known_mix_gives_hand_computed_figures_on_postgres() {
    known_mix_gives_hand_computed_figures(Backend::Postgres).await;
}

#[tokio::test]
async fn one_poison_message_among_ten_thousand_delays_nothing() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let (mut messages, tally) = stream_with_duplicates(10_000, 5);
    // The poison goes first, so everything else queues behind it.
    messages.insert(0, msg("order.placed", b"\xff\xfe poison".to_vec()));
    broker.publish_all(&messages).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "poison-1")).await;

    let net = net_revenue(&tally);
    service
        .wait_for_snapshot(Duration::from_secs(60), |s| {
            s["revenue"]["today_minor"] == net
        })
        .await;
    let letters = broker.wait_for_dead_letters(1).await;
    assert_eq!(
        letters.len(),
        1,
        "exactly one dead letter, never redelivered"
    );
    assert!(letters[0].0.starts_with("not_utf8: "), "{}", letters[0].0);
    assert_eq!(broker.events_queue_depth().await, 0);
    assert_eq!(service.events_counted("rejected").await, 1);
}

/// With the exactly-once window shortened to 20 s (`PULSEBOARD_DEDUPE_WINDOW_SECS`), an order
/// repeated within it is a duplicate, and repeated once the window has passed (as an order is a
/// day later under the default) it is refused as `too_old`: neither changes a figure. A
/// repeated `user.active` leaves every figure as it was too. Fails if the window is not
/// configurable (the order would be a duplicate still, then accepted past 24 h) or if the age
/// limit did not follow it (the repeat would count twice once its id was pruned).
async fn repeats_within_and_after_a_shortened_window_change_nothing(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let mut config = ServiceConfig::new(&database, &names, "window-1");
    config
        .env
        .push(("PULSEBOARD_DEDUPE_WINDOW_SECS".into(), "20".into()));
    let service = Service::start(&config).await;
    let placed = msg(
        "order.placed",
        event("w1", "order.placed", 1, "u1", Some(1_234)),
    );
    let active = msg("user.active", event("wa", "user.active", 1, "u2", None));
    broker.publish_all(&[placed.clone(), active.clone()]).await;
    let counted = |s: &Value| s["revenue"]["today_minor"] == 1_234 && s["active_users"] == 2;
    let figures = |s: &Value| {
        (
            s["revenue"]["today_minor"].clone(),
            s["revenue"]["last_hour_minor"].clone(),
            s["orders_per_minute"].clone(),
            s["active_users"].clone(),
            s["point"]["orders"].clone(),
        )
    };
    let first = service
        .wait_for_snapshot(Duration::from_secs(20), counted)
        .await;

    broker.publish_all(&[placed.clone(), active.clone()]).await;
    crate::outage::eventually(
        "both repeats counted as duplicates",
        || service.log_text(),
        || async {
            match service.events_counted("duplicate").await {
                2 => Ok(()),
                n => Err(format!("{n} duplicates")),
            }
        },
    )
    .await;
    let within = service
        .wait_for_snapshot(Duration::from_secs(5), counted)
        .await;
    assert_eq!(figures(&within), figures(&first));

    tokio::time::sleep(Duration::from_secs(21)).await;
    broker.publish_all(&[placed]).await;
    let letters = broker.wait_for_dead_letters(1).await;
    assert!(letters[0].0.starts_with("too_old: "), "{letters:?}");
    let after = service
        .wait_for_snapshot(Duration::from_secs(5), |s| {
            s["revenue"]["today_minor"] == 1_234
        })
        .await;
    assert_eq!(
        after["revenue"]["today_minor"],
        first["revenue"]["today_minor"]
    );
    assert_eq!(service.events_counted("applied").await, 2);
}

#[tokio::test]
async fn repeats_within_and_after_a_shortened_window_change_nothing_on_sqlite() {
    repeats_within_and_after_a_shortened_window_change_nothing(Backend::Sqlite).await;
}

#[tokio::test]
async fn repeats_within_and_after_a_shortened_window_change_nothing_on_postgres() {
    repeats_within_and_after_a_shortened_window_change_nothing(Backend::Postgres).await;
}
