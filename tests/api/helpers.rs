//! Test harness: the real `pulseboard` binary on a random port, with its own database (a SQLite
//! file or a fresh PostgreSQL database) and its own queue prefix and exchange on the real broker,
//! so tests run in parallel without meeting. Services are reached only through their real
//! interfaces: HTTP and RabbitMQ.
//!
//! The service, the database and the names come from the kit the benchmarks use too
//! (`tests/kit`); what only tests need is here: a producer on the broker, event bodies, timing.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use pulseboard::config::QueueType;
use pulseboard::rabbitmq::{connect, Topology};
use std::time::Duration;

use crate::kit::broker::Confirms;
pub use crate::kit::broker::{open_channel, short_id, Names, AMQP_URL};
pub use crate::kit::database::{test_password, Backend, TestDatabase};
pub use crate::kit::metrics::metric_sum;
pub use crate::kit::service::{fetch_token, Service, ServiceConfig};

/// Sleeps past the next minute boundary if it comes within `window`. At a new minute the
/// service publishes a snapshot (the history point moves on): a test that needs "nothing new"
/// for a while must not meet one.
pub async fn clear_of_minute_boundary(window: Duration) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    let to_boundary = to_next_minute(now_ms);
    if to_boundary < window {
        // Past the boundary and its snapshot.
        tokio::time::sleep(to_boundary + Duration::from_millis(500)).await;
    }
}

/// Sleeps until the span from `back` before now to `ahead` after it lies within one UTC day:
/// a test whose events reach `back` into the past, and which runs for up to `ahead`, must not
/// see midnight split them (revenue today would lose the earlier ones, and late events would
/// be counted on the other day).
pub async fn within_one_utc_day(back: Duration, ahead: Duration) {
    use chrono::Timelike;
    let day = Duration::from_secs(86_400);
    let into_day = Duration::from_secs(u64::from(chrono::Utc::now().num_seconds_from_midnight()));
    let margin = Duration::from_secs(2);
    if into_day < back {
        tokio::time::sleep(back - into_day + margin).await;
    } else if day.saturating_sub(into_day) < ahead {
        tokio::time::sleep(day.saturating_sub(into_day) + back + margin).await;
    }
}

/// From `now_ms` (Unix milliseconds) to the next minute boundary.
fn to_next_minute(now_ms: i64) -> Duration {
    Duration::from_millis((60_000 - now_ms.rem_euclid(60_000)) as u64)
}

/// How far an idle leader lets `trust.complete_through` lag before it moves it to now and
/// publishes a snapshot for it (`ingest::publisher`'s idle step, docs/live.md).
const IDLE_STEP: Duration = Duration::from_secs(10);

/// Waits until `service`, a leader with nothing to ingest, is due to publish nothing for
/// `window`: neither a new minute's snapshot nor an idle step of `trust.complete_through`
/// (every 10 s while idle). A test that needs "nothing new" for a while calls this before it
/// takes the id it waits after. `window` must be well under the idle step.
pub async fn clear_of_publishing(service: &Service, window: Duration) {
    assert!(window + Duration::from_secs(2) < IDLE_STEP, "{window:?}");
    loop {
        let snapshot = service.snapshot().await.expect("a snapshot");
        let complete_through = snapshot["trust"]["complete_through"]
            .as_str()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.with_timezone(&chrono::Utc))
            .unwrap_or_else(|| panic!("trust.complete_through: {snapshot}"));
        let now = chrono::Utc::now();
        let to_idle_step = (complete_through + IDLE_STEP - now)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let to_minute = to_next_minute(now.timestamp_millis());
        let next_publish = to_idle_step.min(to_minute);
        if next_publish >= window {
            return;
        }
        // Past it and its snapshot (a tick later), then look again.
        tokio::time::sleep(next_publish + Duration::from_millis(500)).await;
    }
}

/// A producer and inspector on the real broker, scoped to one test's names.
pub struct Broker {
    /// Kept open for the channel's sake.
    connection: lapin::Connection,
    channel: lapin::Channel,
    pub names: Names,
    topology: Topology,
}

impl Broker {
    /// Connects and declares the service's topology, so messages queue before it starts.
    pub async fn connect(names: &Names) -> Broker {
        Broker::connect_declared(names, false).await
    }

    /// [`Broker::connect`], declaring quorum queues when `quorum` (as the service does with
    /// `PULSEBOARD_QUEUE_TYPE=quorum`).
    pub async fn connect_declared(names: &Names, quorum: bool) -> Broker {
        let queue_type = if quorum {
            QueueType::Quorum
        } else {
            QueueType::Classic
        };
        let connection = connect(AMQP_URL, "pulseboard test")
            .await
            .expect("RabbitMQ must be reachable at 127.0.0.1:5672 (run scripts/test.sh)");
        let channel = connection.create_channel().await.expect("channel");
        let topology = names.topology().with_queue_type(queue_type);
        topology.declare(&channel).await.expect("topology");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Broker {
            connection,
            channel,
            names: names.clone(),
            topology,
        }
    }

    /// Publishes every message and waits until the broker confirmed all of them.
    pub async fn publish_all(&self, messages: &[(String, Vec<u8>)]) {
        let mut confirms = Confirms::new(usize::MAX);
        for (routing_key, body) in messages {
            let confirm = self
                .channel
                .basic_publish(
                    &self.names.exchange,
                    routing_key,
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            confirms.push(confirm).await.expect("confirm");
        }
        confirms.finish().await.expect("confirm");
        assert_eq!(confirms.refused, 0, "broker refused a message");
    }

    /// Takes every dead letter off `<prefix>.dead`: (reason header, body).
    pub async fn take_dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        let mut letters = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(&self.topology.dead_queue, BasicGetOptions::default())
            .await
            .expect("basic_get")
        {
            let reason = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-pulseboard-reason").cloned())
                .map(|value| match value {
                    AMQPValue::LongString(text) => text.to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            letters.push((reason, message.delivery.data.clone()));
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        letters
    }

    /// Takes dead letters off `<prefix>.dead` until `count` arrived, or 10 s passed.
    pub async fn wait_for_dead_letters(&self, count: usize) -> Vec<(String, Vec<u8>)> {
        let mut letters = Vec::new();
        for _ in 0..100 {
            letters.extend(self.take_dead_letters().await);
            if letters.len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        letters
    }

    pub async fn dead_depth(&self) -> u32 {
        Topology::depth(&self.channel, &self.topology.dead_queue)
            .await
            .expect("depth")
    }

    /// Takes the message at the head of `<prefix>.events` on a channel of its own and gives it
    /// back by closing that channel, as a consumer that fails on it would (a quorum queue
    /// with a single active consumer refuses `basic.get`); false when none came within 2 s.
    pub async fn return_one_to_events(&self) -> bool {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = channel
            .basic_consume(
                &self.topology.events_queue,
                "returner",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let got = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await;
        let _ = channel.close(200, "give it back").await;
        // A quorum queue dead-letters asynchronously.
        tokio::time::sleep(Duration::from_millis(50)).await;
        matches!(got, Ok(Some(Ok(_))))
    }

    pub async fn events_queue_depth(&self) -> u32 {
        Topology::depth(&self.channel, &self.topology.events_queue)
            .await
            .expect("depth")
    }
}

/// The id of `service`'s current snapshot (a long-poll without `after`, with `token`): a
/// long-poll after it waits for something newer.
pub async fn current_event_id(service: &Service, token: &str) -> String {
    let current: serde_json::Value = reqwest::Client::new()
        .get(service.url("/api/dashboard/poll?timeout=1"))
        .bearer_auth(token)
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("json");
    current["events"]
        .as_array()
        .and_then(|events| events.last())
        .and_then(|event| event["id"].as_str())
        .expect("the current snapshot's id")
        .to_owned()
}

/// An event body (docs/events.md).
pub fn event(id: &str, kind: &str, seconds_ago: i64, user: &str, amount: Option<i64>) -> Vec<u8> {
    let occurred_at = chrono::Utc::now() - chrono::Duration::seconds(seconds_ago);
    let mut value = serde_json::json!({
        "id": id,
        "type": kind,
        "occurred_at": occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "user_id": user,
    });
    if let Some(amount) = amount {
        value["data"] = serde_json::json!({"order_id": format!("o-{id}"), "amount_minor": amount, "currency": "USD"});
    }
    value.to_string().into_bytes()
}

/// A blocking socket connected to `service` with a 4 KiB receive buffer: a client that can be
/// made to stop reading, and whose unread data then backs up into the service quickly. Returns
/// it with the service's address (for the `Host` header).
pub fn slow_reader(service: &Service) -> (std::net::TcpStream, std::net::SocketAddr) {
    let address: std::net::SocketAddr = service.address().parse().expect("address");
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4_096).expect("rcvbuf");
    socket.connect(&address.into()).expect("connect");
    (socket.into(), address)
}

/// Runs `pulseboard serve` on `database` and `names` with `env` until it exits (at most 30 s),
/// and returns its `error:` line: for configurations the service must refuse at start.
pub async fn refused_start(database: &TestDatabase, names: &Names, env: &[(&str, &str)]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulseboard"));
    command
        .arg("serve")
        .env("PULSEBOARD_BIND", "127.0.0.1:0")
        .env("DATABASE_URL", &database.url)
        .env("PULSEBOARD_ADMIN_PASSWORD", &database.admin_password)
        .env("AMQP_URL", AMQP_URL)
        .env("PULSEBOARD_QUEUE_PREFIX", &names.prefix)
        .env("PULSEBOARD_EXCHANGE", &names.exchange)
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("exits")
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
        .to_owned()
}
