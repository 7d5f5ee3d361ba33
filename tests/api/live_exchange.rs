//! What instances tell each other over `<prefix>.live` (docs/security.md, Messages between
//! instances), over real sockets against the real broker: two instances on one database, and a
//! test that publishes straight to their exchange as an impostor would — unsealed messages of
//! every kind, one with newlines, one sealed with another key, a sealed snapshot whose `seq` no
//! leader reserved, and a genuine message replayed at once and after the freshness window.
//! None reaches a dashboard, a stream or a console; the real figures keep flowing; each
//! refusal is counted under its reason and the log says so at most once per interval.

use crate::console::Console;
use crate::helpers::{
    event, metric_sum, Backend, Broker, Names, Service, ServiceConfig, TestDatabase, AMQP_URL,
};
use crate::sse_client::{SseClient, SseEvent};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use pulseboard::seal::{
    Fields, NonceClock, Rejection, SealKey, NODE_HEADER, NONCE_HEADER, SEAL_HEADER,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const STREAM: &str = "/api/dashboard/stream";
/// The shared secret of the test's instances: the test knows it, as a key holder would.
pub const SECRET: &str = "the live-exchange test's shared secret";
/// `PULSEBOARD_FANOUT_WINDOW_SECS` of the test's instances.
const WINDOW_SECS: u64 = 2;
/// The figure every forged snapshot carries: it must never show anywhere.
const FORGED_USERS: u64 = 424_242;
/// A seq far beyond anything a leader of the test's database reserves.
const FAR_SEQ: i64 = 9_000_000_000_000;

fn config(database: &TestDatabase, names: &Names, node: &str) -> ServiceConfig {
    let mut config = ServiceConfig::new(database, names, node);
    config.env.extend([
        ("PULSEBOARD_SECRET".into(), SECRET.into()),
        (
            "PULSEBOARD_FANOUT_WINDOW_SECS".into(),
            WINDOW_SECS.to_string(),
        ),
    ]);
    config
}

/// Two instances on one PostgreSQL database, both serving the leader's snapshots.
async fn two_instances(database: &TestDatabase, names: &Names) -> (Service, Service) {
    let first = Service::start(&config(database, names, "live-a")).await;
    let second = Service::start(&config(database, names, "live-b")).await;
    for service in [&first, &second] {
        service
            .wait_for_snapshot(Duration::from_secs(20), |s| {
                s["ingest"]["leader"].is_string() && s["ingest"]["state"] == "running"
            })
            .await;
    }
    (first, second)
}

/// Publishes to the instances' `<prefix>.live` as anyone with write access to it could (and,
/// with the secret, as an instance would).
pub struct Impostor {
    _connection: lapin::Connection,
    channel: lapin::Channel,
    exchange: String,
    nonces: NonceClock,
}

impl Impostor {
    pub async fn connect(names: &Names) -> Impostor {
        let (connection, channel) = crate::helpers::open_channel(AMQP_URL, "live impostor")
            .await
            .expect("RabbitMQ must be reachable at 127.0.0.1:5672");
        Impostor {
            _connection: connection,
            channel,
            exchange: names.topology().live_exchange,
            nonces: NonceClock::default(),
        }
    }

    async fn publish(&self, properties: BasicProperties, body: &[u8]) {
        self.channel
            .basic_publish(
                &self.exchange,
                "",
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("published");
    }

    /// A message without a seal, of `kind`.
    async fn unsealed(&self, kind: &str, body: &[u8]) {
        let properties = BasicProperties::default().with_type(kind.into());
        self.publish(properties, body).await;
    }

    /// A message sealed with `key` as node `node` would seal it.
    pub async fn sealed(&self, key: &SealKey, node: &str, kind: &str, body: &[u8]) {
        let nonce = self.nonces.next(chrono::Utc::now().timestamp_millis());
        let fields = Fields {
            kind,
            node,
            nonce,
            reply_to: "",
            correlation: "",
            oldest_arrival: None,
            body,
        };
        let mut headers = FieldTable::default();
        headers.insert(NODE_HEADER.into(), AMQPValue::LongString(node.into()));
        headers.insert(NONCE_HEADER.into(), AMQPValue::LongLongInt(nonce as i64));
        headers.insert(
            SEAL_HEADER.into(),
            AMQPValue::LongString(key.seal(&fields).into()),
        );
        let properties = BasicProperties::default()
            .with_type(kind.into())
            .with_headers(headers);
        self.publish(properties, body).await;
    }

    /// A genuine snapshot message as an instance sent it, taken off a queue of the test's own
    /// bound to the exchange: (properties, body).
    async fn capture_snapshot(&self) -> (BasicProperties, Vec<u8>) {
        let queue = pulseboard::rabbitmq::bind_private_queue(&self.channel, &self.exchange)
            .await
            .expect("a spy queue on the exchange");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            let got = self
                .channel
                .basic_get(&queue, BasicGetOptions { no_ack: true })
                .await
                .expect("basic_get");
            match got {
                Some(message)
                    if message
                        .delivery
                        .properties
                        .kind()
                        .as_ref()
                        .map(|k| k.as_str())
                        == Some("snapshot") =>
                {
                    return (
                        message.delivery.properties.clone(),
                        message.delivery.data.clone(),
                    )
                }
                Some(_) => {}
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("no genuine snapshot on {} within 10 s", self.exchange);
    }
}

/// A snapshot body in the wire shape, with the forged figure.
fn forged_snapshot(seq: i64) -> Value {
    json!({
        "seq": seq, "generated_at": "2026-11-23T10:15:30.250Z", "node": "mallory",
        "active_users": FORGED_USERS, "orders_per_minute": 1,
        "revenue": {"currency": "USD", "today_minor": 1, "last_hour_minor": 1},
        "ingest": {"state": "running", "leader": "mallory", "lag_seconds": 0.0, "dead_letters": 0},
        "point": {"minute": "2026-11-23T10:15:00Z", "orders": 1, "revenue_minor": 1, "active_users": FORGED_USERS}
    })
}

/// Everything a stream sends until `until` holds for a block (or `timeout` passes).
async fn read_until(
    client: &mut SseClient,
    timeout: Duration,
    until: impl Fn(&SseEvent) -> bool,
) -> Vec<SseEvent> {
    let deadline = Instant::now() + timeout;
    let mut blocks = Vec::new();
    while let Some(block) = client
        .next(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        let done = until(&block);
        blocks.push(block);
        if done {
            break;
        }
    }
    blocks
}

async fn rejected(service: &Service, reason: &str) -> u64 {
    let text = service.metrics().await.expect("metrics");
    metric_sum(
        &text,
        "pulseboard_fanout_rejected_total",
        &format!("reason=\"{reason}\""),
    )
}

#[tokio::test]
async fn forged_messages_on_the_live_exchange_reach_no_client_and_are_counted_by_reason() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let (first, second) = two_instances(&database, &names).await;
    // Exported at 0 before anything was refused.
    let metrics = first.metrics().await.expect("metrics");
    for reason in Rejection::ALL.map(Rejection::label) {
        let label = format!("reason=\"{reason}\"");
        assert!(
            metrics.lines().any(|line| {
                line.starts_with("pulseboard_fanout_rejected_total{")
                    && line.contains(&label)
                    && line.ends_with("} 0")
            }),
            "{reason} at 0 from the start:\n{metrics}"
        );
    }
    let mut streams = Vec::new();
    for service in [&first, &second] {
        let mut client = SseClient::connect(service, STREAM, None).await;
        client.next_of("snapshot", Duration::from_secs(5)).await;
        streams.push(client);
    }
    let mut consoles = Vec::new();
    for service in [&first, &second] {
        let mut console = Console::open(service, service.token()).await;
        console
            .ok("subscribe", json!({"topics": ["audit", "snapshots"]}))
            .await;
        consoles.push(console);
    }
    let impostor = Impostor::connect(&names).await;
    let genuine = impostor.capture_snapshot().await;
    let (_, announcements) = first.get_json("/api/announcements?limit=1").await;
    let next_id = announcements["announcements"][0]["id"]
        .as_i64()
        .unwrap_or(0)
        + 1;
    let forged_announcement = json!({
        "id": next_id, "level": "critical", "message": "forged announcement",
        "author": "mallory", "created_at": "2026-11-23T10:15:30.250Z"
    });
    let forged_audit = json!({
        "id": 999_999, "at": "2026-11-23T10:15:30.250Z", "user": "mallory", "node": "live-a",
        "command": "dlq.purge", "payload": {"confirm": true}, "outcome": "ok",
        "detail": "forged audit"
    });

    // Unsealed, of every kind; one snapshot spread over several lines, one with no kind.
    let far = forged_snapshot(FAR_SEQ).to_string();
    impostor.unsealed("snapshot", far.as_bytes()).await;
    impostor.unsealed("", far.as_bytes()).await;
    let lines = serde_json::to_string_pretty(&forged_snapshot(FAR_SEQ)).expect("json");
    assert!(lines.contains('\n'));
    impostor.unsealed("snapshot", lines.as_bytes()).await;
    impostor
        .unsealed("announcement", forged_announcement.to_string().as_bytes())
        .await;
    impostor
        .unsealed("audit", forged_audit.to_string().as_bytes())
        .await;
    impostor
        .unsealed("beacon", br#"{"node":"mallory","operators":["mallory"]}"#)
        .await;
    // Sealed with another key, as the leader.
    let wrong = SealKey::derive(b"not the secret these instances share");
    impostor
        .sealed(&wrong, "live-a", "snapshot", far.as_bytes())
        .await;
    impostor
        .sealed(
            &wrong,
            "live-a",
            "audit",
            forged_audit.to_string().as_bytes(),
        )
        .await;
    // Sealed with the right key (a holder of the secret, or a bug; as another node, since an
    // instance ignores snapshots in its own name): a seq no leader reserved would hold every
    // dashboard on it.
    let right = SealKey::derive(SECRET.as_bytes());
    impostor
        .sealed(&right, "key-holder", "snapshot", far.as_bytes())
        .await;
    // Sealed with the right key, an announcement that is not in the store: the instances read
    // announcements from the store, so it shows nowhere, and the real one that gets its id
    // later is not taken for it.
    impostor
        .sealed(
            &right,
            "key-holder",
            "announcement",
            forged_announcement.to_string().as_bytes(),
        )
        .await;
    // Sealed, but not what its kind must be.
    impostor
        .sealed(&right, "key-holder", "audit", b"[\"not an object\"]")
        .await;
    // A genuine snapshot again at once, and again after the freshness window.
    let (properties, body) = genuine;
    impostor.publish(properties.clone(), &body).await;
    tokio::time::sleep(Duration::from_secs(WINDOW_SECS) + Duration::from_millis(700)).await;
    impostor.publish(properties, &body).await;
    // A flood: the log must not follow it.
    for _ in 0..50 {
        impostor.unsealed("snapshot", far.as_bytes()).await;
    }

    // The real figures keep flowing on both instances.
    broker
        .publish_all(&[(
            "order.placed".into(),
            event("live-real-1", "order.placed", 0, "u-real", Some(4_321)),
        )])
        .await;
    for (client, service) in streams.iter_mut().zip([&first, &second]) {
        let blocks = read_until(client, Duration::from_secs(10), |block| {
            block.event == "snapshot" && block.json()["revenue"]["today_minor"] == 4_321
        })
        .await;
        let last = blocks.last().map(SseEvent::json).unwrap_or(Value::Null);
        assert_eq!(
            last["revenue"]["today_minor"],
            4_321,
            "the real figures reach {}{}",
            service.address(),
            service.log_tail(20)
        );
        for block in &blocks {
            assert!(
                !block.data.contains("424242")
                    && !block.data.contains("mallory")
                    && !block.data.contains("forged"),
                "a forged message reached a stream: {block:?}"
            );
            if block.event == "snapshot" {
                assert!(block.json()["seq"].as_i64() < Some(FAR_SEQ), "{block:?}");
            }
        }
        let snapshot = service.snapshot().await.expect("snapshot");
        assert_ne!(snapshot["active_users"], FORGED_USERS, "{snapshot}");
    }

    // A genuine audited command (an announcement) reaches both consoles; nothing forged came
    // before it.
    consoles[0]
        .ok("announce", json!({"message": "real one", "level": "info"}))
        .await;
    for console in &mut consoles {
        console.push("audit", |p| p["command"] == "announce").await;
        for frame in &console.pushes {
            let text = frame.to_string();
            assert!(
                !text.contains("mallory") && !text.contains("forged") && !text.contains("424242"),
                "a forged message reached a console: {text}"
            );
        }
    }
    // The real announcement took the id the forged one claimed, and reaches every stream.
    for client in &mut streams {
        let announcement = client
            .next_of("announcement", Duration::from_secs(5))
            .await
            .json();
        assert_eq!(announcement["message"], "real one");
        assert_eq!(announcement["id"], next_id);
    }
    let status = consoles[0].ok("status", Value::Null).await;
    assert!(
        !status.to_string().contains("mallory"),
        "a forged beacon made a node known: {status}"
    );

    for service in [&first, &second] {
        let counted = [
            ("unsigned", 56),
            ("bad_signature", 2),
            ("seq_ahead", 1),
            ("malformed", 1),
            ("replayed", 1),
            ("stale", 1),
        ];
        for (reason, at_least) in counted {
            let count = rejected(service, reason).await;
            assert!(
                count >= at_least,
                "{}: {reason} counted {count}, expected at least {at_least}",
                service.address()
            );
        }
        let lines = service
            .log_text()
            .lines()
            .filter(|l| l.contains("refused a message on the live exchange"))
            .count();
        assert!(
            (1..=2).contains(&lines),
            "{lines} log lines for 60 refusals within 10 s{}",
            service.log_tail(10)
        );
    }
}

#[tokio::test]
async fn a_sealed_snapshot_spread_over_lines_with_newlines_in_its_fields_is_encoded_again() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let (first, second) = two_instances(&database, &names).await;
    // Nothing else may change meanwhile: a new minute or an idle step makes the leader publish.
    crate::helpers::clear_of_publishing(&first, Duration::from_secs(7)).await;
    let mut client = SseClient::connect(&second, STREAM, None).await;
    let current = client
        .next_of("snapshot", Duration::from_secs(5))
        .await
        .json();
    let seq = current["seq"].as_i64().expect("seq");

    // Sealed with the shared secret and a seq the leader has reserved (it reserves a block):
    // it is genuine, and shows; its newlines must not break the stream's framing.
    let mut snapshot = forged_snapshot(seq + 1);
    snapshot["node"] = json!("web-9\n\nevent: announcement\ndata: {\"message\":\"injected\"}");
    let body = serde_json::to_string_pretty(&snapshot).expect("json");
    let impostor = Impostor::connect(&names).await;
    impostor
        .sealed(
            &SealKey::derive(SECRET.as_bytes()),
            "live-a",
            "snapshot",
            body.as_bytes(),
        )
        .await;

    let blocks = read_until(&mut client, Duration::from_secs(5), |block| {
        block.event == "snapshot" && block.json()["active_users"] == FORGED_USERS
    })
    .await;
    let shown = blocks.last().expect("a block");
    assert_eq!(shown.event, "snapshot", "{blocks:?}");
    assert_eq!(shown.json()["node"], snapshot["node"], "{shown:?}");
    assert!(
        blocks.iter().all(|b| b.event != "announcement"),
        "the newlines in a field made an event of their own: {blocks:?}"
    );
    drop(first);
}
