//! Console commands that act across instances and on the broker: a pause issued on the
//! follower, kept across the leader's death; listing and kicking another instance's stream; an
//! instance that stops answering (SIGSTOP) shown as `unreachable`; presence across instances;
//! the dead-letter commands (peek, replay exactly once, purge with confirmation).

use crate::console::{error_of, Console};
use crate::helpers::{Backend, Broker, Names, Service, ServiceConfig, TestDatabase};
use crate::sse_client::SseClient;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::time::Duration;

/// Two instances on one PostgreSQL database and broker; (leader, follower).
pub(crate) async fn two_instances(database: &TestDatabase, names: &Names) -> (Service, Service) {
    let first = Service::start(&ServiceConfig::new(database, names, "node-a")).await;
    let second = Service::start(&ServiceConfig::new(database, names, "node-b")).await;
    let leader = first
        .wait_for_snapshot(Duration::from_secs(15), |s| {
            s["ingest"]["leader"].is_string()
        })
        .await["ingest"]["leader"]
        .clone();
    if leader == "node-a" {
        (first, second)
    } else {
        (second, first)
    }
}

/// Waits until `console`'s `status` lists `node` as answering.
async fn wait_for_node(console: &mut Console, node: &str) {
    for _ in 0..50 {
        let status = console.ok("status", Value::Null).await;
        let answering = status["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .any(|n| n["node"] == node && n["state"] == "ok")
        });
        if answering {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{node} never answered status");
}

fn order(id: &str) -> (String, Vec<u8>) {
    (
        "order.placed".into(),
        crate::helpers::event(id, "order.placed", 1, "u-1", Some(100)),
    )
}

#[tokio::test]
async fn a_pause_from_the_follower_stops_ingest_survives_the_leaders_death_and_resume_drains_exactly(
) {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let (mut leader, follower) = two_instances(&database, &names).await;
    let mut console = Console::open(&follower, follower.token()).await;

    let paused = console.ok("ingest.pause", Value::Null).await;
    assert_eq!(paused["applied"], true, "{paused}");
    let batch: Vec<_> = (0..40).map(|n| order(&format!("p-{n}"))).collect();
    broker.publish_all(&batch).await;
    for service in [&leader, &follower] {
        service
            .wait_for_snapshot(Duration::from_secs(10), |s| {
                s["ingest"]["state"] == "paused"
            })
            .await;
        let (status, ready) = service.get_json("/readyz").await;
        assert_eq!(
            (status, &ready["checks"]["ingest"]),
            (200, &json!("paused")),
            "{ready}"
        );
    }
    // Nothing consumed: the events wait in the queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.events_queue_depth().await, 40);
    let snapshot = follower.snapshot().await.expect("snapshot");
    assert_eq!(snapshot["orders_per_minute"], 0, "{snapshot}");

    leader.kill().await;
    // A new leader (the follower, once the lease expires) starts its term paused.
    let survivor = follower;
    let taken = survivor
        .wait_for_snapshot(Duration::from_secs(15), |s| {
            s["node"] == s["ingest"]["leader"] && s["ingest"]["state"] == "paused"
        })
        .await;
    assert_eq!(
        taken["ingest"]["state"], "paused",
        "new leader stays paused"
    );
    assert_eq!(broker.events_queue_depth().await, 40);

    let resumed = console.ok("ingest.resume", Value::Null).await;
    assert_eq!(resumed["paused"], false, "{resumed}");
    survivor
        .wait_for_snapshot(Duration::from_secs(15), |s| {
            s["ingest"]["state"] == "running"
                && s["orders_per_minute"] == 40
                && s["revenue"]["today_minor"] == 4_000
        })
        .await;
    assert_eq!(broker.events_queue_depth().await, 0);
}

#[tokio::test]
async fn a_stream_on_one_instance_is_listed_and_kicked_from_the_other_and_resumes() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let (asker, holder) = two_instances(&database, &names).await;
    let mut stream = SseClient::connect(&holder, "/api/dashboard/stream", None).await;
    let first = stream.next_of("snapshot", Duration::from_secs(10)).await;
    let mut console = Console::open(&asker, asker.token()).await;
    // The holder is whichever of node-a/node-b the asker is not.
    let status = console.ok("status", Value::Null).await;
    let asker_node = status["node"].as_str().expect("node").to_owned();
    let other = if asker_node == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    wait_for_node(&mut console, other).await;

    let listed = console.ok("connections.list", Value::Null).await;
    let sse = listed["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|c| c["transport"] == "sse")
        .unwrap_or_else(|| panic!("the other node's stream is listed: {listed}"))
        .clone();
    assert!(
        sse["id"]
            .as_str()
            .expect("id")
            .starts_with(&format!("{other}/")),
        "{sse}"
    );
    assert_eq!(sse["user"], "admin");

    let kicked = console
        .ok("connections.kick", json!({"id": sse["id"]}))
        .await;
    assert_eq!(kicked["node"], other, "{kicked}");
    // The stream ends.
    let mut ended = false;
    for _ in 0..50 {
        if stream.next(Duration::from_millis(200)).await.is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the kicked stream ended");
    let metrics = holder.get("/metrics").await.text().await.expect("metrics");
    // Every reason is exported at 0 from the start: the count is what tells.
    let kicked_sse = crate::helpers::metric_sum(
        &metrics,
        "pulseboard_connections_closed_total",
        r#"reason="kicked",transport="sse""#,
    );
    assert_eq!(kicked_sse, 1, "kicked is counted");
    // It resumes by Last-Event-ID.
    let mut resumed =
        SseClient::connect(&holder, "/api/dashboard/stream", first.id.as_deref()).await;
    resumed.next_of("snapshot", Duration::from_secs(10)).await;
    // A kick of an id nobody holds is refused and names the field.
    let (code, message) = error_of(
        &console
            .command("connections.kick", json!({"id": sse["id"]}))
            .await,
    );
    assert_eq!(
        (code.as_str(), message.starts_with("id")),
        ("invalid_payload", true)
    );

    // A console and a waiting long-poll on the other node are kicked the same way: the console
    // is closed with 1008, the long-poll answered at once (not at its 25 s timeout).
    let mut target = Console::open(&holder, holder.token()).await;
    let newest = crate::helpers::current_event_id(&holder, holder.token()).await;
    let waiting = reqwest::Client::new()
        .get(holder.url(&format!("/api/dashboard/poll?after={newest}&timeout=25")))
        .bearer_auth(holder.token())
        .send();
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let status = waiting.await.map(|r| r.status().as_u16());
        (started.elapsed(), status)
    });
    let listed_on = |listed: &Value, transport: &str| {
        listed["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .find(|c| {
                c["transport"] == transport
                    && c["id"].as_str().is_some_and(|id| id.starts_with(other))
            })
            .map(|c| c["id"].clone())
    };
    let mut ids = (None, None);
    for _ in 0..50 {
        let listed = console.ok("connections.list", Value::Null).await;
        ids = (listed_on(&listed, "ws"), listed_on(&listed, "poll"));
        if ids.0.is_some() && ids.1.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (Some(console_id), Some(poll_id)) = ids else {
        panic!("the other node's console and long-poll are listed: {ids:?}");
    };
    console
        .ok("connections.kick", json!({"id": console_id}))
        .await;
    assert_eq!(
        target.close_code().await,
        Some(tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Policy)
    );
    console.ok("connections.kick", json!({"id": poll_id})).await;
    let (waited, status) = waiting.await.expect("long-poll task");
    assert_eq!(status.expect("long-poll answer"), 200);
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    let metrics = holder.get("/metrics").await.text().await.expect("metrics");
    for transport in ["ws", "poll"] {
        let kicked = crate::helpers::metric_sum(
            &metrics,
            "pulseboard_connections_closed_total",
            &format!(r#"reason="kicked",transport="{transport}""#),
        );
        assert_eq!(kicked, 1, "a kicked {transport} is counted");
    }
}

#[tokio::test]
async fn a_dead_letter_is_peeked_replayed_once_after_the_fix_and_purged_only_with_confirm() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let mut service = Service::start(&ServiceConfig::new(&database, &names, "d-1")).await;
    service.wait_until_ingesting(Duration::from_secs(15)).await;
    let body = json!({"id": "eur-1", "type": "order.placed",
        "occurred_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "user_id": "u-9", "data": {"order_id": "o-1", "amount_minor": 2_500, "currency": "EUR"}})
    .to_string();
    broker
        .publish_all(&[("order.placed".into(), body.clone().into_bytes())])
        .await;
    service
        .wait_for_snapshot(Duration::from_secs(10), |s| {
            s["ingest"]["dead_letters"] == 1
        })
        .await;

    let mut console = Console::open(&service, service.token()).await;
    for _ in 0..2 {
        // Peeking leaves it in place.
        let peeked = console.ok("dlq.peek", json!({"limit": 10})).await;
        assert_eq!(peeked["count"], 1, "{peeked}");
        let letter = &peeked["messages"][0];
        assert!(
            letter["reason"]
                .as_str()
                .expect("reason")
                .starts_with("wrong_currency"),
            "{letter}"
        );
        assert_eq!(letter["routing_key"], "order.placed");
        assert_eq!(letter["body"], body.as_str());
    }
    drop(console);

    // Another consumer of the producers' exchange (an archive, another deployment): it got
    // the event when it was published, and must not get it again with a replay.
    let (bystander_link, bystander) =
        crate::helpers::open_channel(crate::helpers::AMQP_URL, "dlq test bystander")
            .await
            .expect("channel");
    let bystander_queue = format!("{}.bystander", names.prefix);
    bystander
        .queue_declare(
            &bystander_queue,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("bystander queue");
    bystander
        .queue_bind(
            &bystander_queue,
            &names.exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bystander bound");

    // The cause is fixed: the service now counts EUR.
    service.terminate(Duration::from_secs(15)).await;
    let mut config = ServiceConfig::new(&database, &names, "d-1");
    config
        .env
        .push(("PULSEBOARD_CURRENCY".into(), "EUR".into()));
    let service = Service::start(&config).await;
    let mut console = Console::open(&service, service.token()).await;
    let replayed = console.ok("dlq.replay", json!({"limit": 10})).await;
    assert_eq!(replayed, json!({"replayed": 1, "remaining": 0}));
    service
        .wait_for_snapshot(Duration::from_secs(10), |s| {
            s["revenue"]["today_minor"] == 2_500
        })
        .await;

    // The same message dead again (a second copy): replaying it changes nothing.
    let (connection, channel) = crate::helpers::open_channel(crate::helpers::AMQP_URL, "dlq test")
        .await
        .expect("channel");
    channel
        .basic_publish(
            &format!("{}.dlx", names.prefix),
            "order.placed",
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replayed = console.ok("dlq.replay", json!({"limit": 10})).await;
    assert_eq!(replayed["replayed"], 1);
    for _ in 0..50 {
        if service.events_counted("duplicate").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(service.events_counted("duplicate").await, 1);
    assert_eq!(service.events_counted("applied").await, 1);
    let snapshot = service.snapshot().await.expect("snapshot");
    assert_eq!(snapshot["revenue"]["today_minor"], 2_500, "{snapshot}");
    let copies = pulseboard::rabbitmq::Topology::depth(&bystander, &bystander_queue)
        .await
        .expect("bystander depth");
    assert_eq!(copies, 0, "replays reach the service's queue alone");
    let _ = bystander_link.close(200, "done").await;

    // Purge: refused without confirm (and audited), done with it.
    channel
        .basic_publish(
            &format!("{}.dlx", names.prefix),
            "order.placed",
            BasicPublishOptions::default(),
            b"not json",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _) = error_of(&console.command("dlq.purge", Value::Null).await);
    assert_eq!(code, "invalid_payload");
    let purged = console.ok("dlq.purge", json!({"confirm": true})).await;
    assert_eq!(purged["purged"], 1);
    let tail = console.ok("audit.tail", json!({"limit": 10})).await;
    let outcomes: Vec<_> = tail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["command"] == "dlq.purge")
        .map(|e| e["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        vec![json!("ok"), json!("invalid_payload")],
        "{tail}"
    );
    let _ = connection.close(200, "bye").await;
}

/// `node`'s `state` in a `status` or `connections.list` reply (`null` when it is not listed).
fn state_of(reply: &Value, node: &str) -> Value {
    let rows = reply["nodes"].as_array().into_iter().flatten();
    rows.filter(|n| n["node"] == node)
        .map(|n| n["state"].clone())
        .next()
        .unwrap_or(Value::Null)
}

/// Whether a `connections.list` reply lists a connection held by `node`.
fn holds(listed: &Value, node: &str) -> bool {
    let prefix = format!("{node}/");
    let mut all = listed["connections"].as_array().into_iter().flatten();
    all.any(|c| c["id"].as_str().is_some_and(|id| id.starts_with(&prefix)))
}

/// [`two_instances`], each with its own name as its `status` says it (a snapshot names the
/// leader's).
async fn two_named_instances(
    database: &TestDatabase,
    names: &Names,
) -> ((Service, String), (Service, String)) {
    async fn node_of(service: &Service) -> String {
        let status = Console::open(service, service.token())
            .await
            .ok("status", Value::Null)
            .await;
        status["node"].as_str().expect("node").to_owned()
    }
    let (leader, follower) = two_instances(database, names).await;
    let (leader_node, follower_node) = (node_of(&leader).await, node_of(&follower).await);
    ((leader, leader_node), (follower, follower_node))
}

/// An instance that stops answering (SIGSTOP: its sockets stay open, nothing answers on them)
/// is not left out of the other's answers nor waited for: `status` and `connections.list` list
/// it as `unreachable` after their one second, and as `ok` again once it goes on (SIGCONT).
#[tokio::test]
async fn an_instance_that_stops_answering_is_unreachable_in_status_and_connections_list() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    // The leader asks and stays up: the frozen one leads nothing.
    let ((asker, asker_node), (frozen, frozen_node)) = two_named_instances(&database, &names).await;
    let mut stream = SseClient::connect(&frozen, "/api/dashboard/stream", None).await;
    stream.next_of("snapshot", Duration::from_secs(10)).await;
    let mut console = Console::open(&asker, asker.token()).await;
    wait_for_node(&mut console, &frozen_node).await;
    let listed = console.ok("connections.list", Value::Null).await;
    let seen = (
        state_of(&listed, &frozen_node),
        holds(&listed, &frozen_node),
    );
    assert_eq!(seen, (json!("ok"), true), "its stream is listed: {listed}");

    frozen.freeze();
    let asked = std::time::Instant::now();
    let status = console.ok("status", Value::Null).await;
    let waited = asked.elapsed();
    assert_eq!(state_of(&status, &frozen_node), "unreachable", "{status}");
    assert_eq!(state_of(&status, &asker_node), "ok", "{status}");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&waited),
        "status waited {waited:?} for the silent instance"
    );
    let listed = console.ok("connections.list", Value::Null).await;
    assert_eq!(
        listed["nodes"],
        json!([{"node": asker_node, "state": "ok"}, {"node": frozen_node, "state": "unreachable"}]),
        "{listed}"
    );
    assert!(
        !holds(&listed, &frozen_node),
        "nothing is known of its connections: {listed}"
    );
    assert!(
        holds(&listed, &asker_node),
        "this console is listed: {listed}"
    );

    frozen.resume();
    wait_for_node(&mut console, &frozen_node).await;
    let listed = console.ok("connections.list", Value::Null).await;
    let seen = (
        state_of(&listed, &frozen_node),
        holds(&listed, &frozen_node),
    );
    assert_eq!(seen, (json!("ok"), true), "listed again: {listed}");
}

/// The operators of a `presence` push, as `user on node`.
fn present(push: &Value) -> Vec<String> {
    push["payload"]["operators"]
        .as_array()
        .expect("operators")
        .iter()
        .map(|o| {
            format!(
                "{} on {}",
                o["user"].as_str().unwrap_or("?"),
                o["node"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// Presence is the cluster's, not one instance's: an operator who opens a console on one
/// instance is shown on the other's within a beacon, and goes when they close it; an operator
/// on an instance that stops answering goes too, once it has been silent for a while.
#[tokio::test]
async fn presence_shows_the_operators_of_every_instance_and_drops_those_that_left() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let ((watcher, watcher_node), (other, other_node)) =
        two_named_instances(&database, &names).await;
    let password = crate::auth::add_user(&database, "ops2", "operator");
    let token = crate::helpers::fetch_token(&other.base_url, "ops2", &password).await;
    let mut console = Console::open(&watcher, watcher.token()).await;
    wait_for_node(&mut console, &other_node).await;
    console
        .ok("subscribe", json!({"topics": ["presence"]}))
        .await;
    let admin = format!("admin on {watcher_node}");
    let ops2 = format!("ops2 on {other_node}");
    // Only this console: the one opened to learn the other's name is gone by now.
    let alone = console
        .push("presence", |p| {
            p["operators"].as_array().is_some_and(|o| o.len() == 1)
        })
        .await;
    assert_eq!(present(&alone), vec![admin.clone()], "{alone}");

    // Both ways: each instance's consoles see the operators of the other.
    let mut remote = Console::open(&other, &token).await;
    remote
        .ok("subscribe", json!({"topics": ["presence"]}))
        .await;
    let both = console
        .push("presence", |p| {
            p["operators"].as_array().is_some_and(|o| o.len() == 2)
        })
        .await;
    assert_eq!(present(&both), vec![admin.clone(), ops2.clone()], "{both}");
    let seen_there = remote
        .push("presence", |p| {
            p["operators"].as_array().is_some_and(|o| o.len() == 2)
        })
        .await;
    assert_eq!(
        present(&seen_there),
        vec![admin.clone(), ops2.clone()],
        "{seen_there}"
    );

    // Closed: gone from the other instance.
    drop(remote);
    let left = console
        .push("presence", |p| {
            p["operators"].as_array().is_some_and(|o| o.len() == 1)
        })
        .await;
    assert_eq!(present(&left), vec![admin.clone()], "{left}");

    // Open on an instance that then stops answering: shown, then gone.
    let _remote = Console::open(&other, &token).await;
    let back = console
        .push("presence", |p| {
            p["operators"].as_array().is_some_and(|o| o.len() == 2)
        })
        .await;
    assert_eq!(present(&back), vec![admin.clone(), ops2.clone()], "{back}");
    other.freeze();
    let frozen = std::time::Instant::now();
    let mut gone = None;
    while gone.is_none() && frozen.elapsed() < Duration::from_secs(15) {
        let frame = console.next_frame().await;
        gone = frame.filter(|f| f["type"] == "presence" && present(f) == vec![admin.clone()]);
    }
    let after = frozen.elapsed();
    other.resume();
    assert!(
        gone.is_some(),
        "ops2 on the silent {other_node} is still shown after {after:?}"
    );
    // Silent for 6 s (three missed beacons), noticed at this instance's next beacon.
    assert!(after < Duration::from_secs(10), "dropped after {after:?}");
}
