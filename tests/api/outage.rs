//! Outages while events flow (docs/events.md, docs/operations.md): restarting RabbitMQ (`rabbitmqctl stop_app` /
//! `start_app`) and, separately, PostgreSQL. Throughout, the service keeps answering (`/healthz`,
//! the last snapshot), `/readyz` says why it is not ready, and afterwards it resumes with exact
//! totals: nothing lost, nothing counted twice.
//!
//! Tests run in parallel against the shared broker and database, so each of these restarts a
//! private server of its own (`private_services`), never the shared ones.

use crate::helpers::{
    open_channel, short_id, Backend, Broker, Names, Service, ServiceConfig, TestDatabase, AMQP_URL,
};
use crate::private_services::{PrivatePostgres, PrivateRabbit};
use crate::traffic::{net_revenue, placed, stream_with_duplicates};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use pulseboard::rabbitmq::Topology;
use pulseboard::simulate::SentTally;
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Bound of every wait: these are correctness tests, not timing tests.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);
const EVENTS: usize = 3_000;
const CHUNK: usize = 100;
const PAUSE: Duration = Duration::from_millis(150);
/// The outage starts once the service applied this many events (of ~3 000, published over ~5 s).
const APPLIED_BEFORE_OUTAGE: u64 = 500;
/// How long the outage lasts at least, while the service is watched.
const OUTAGE: Duration = Duration::from_secs(3);

/// Polls `probe` until it yields `Ok`; panics with its last `Err` (and `context()`) after
/// [`PATIENCE`].
pub(crate) async fn eventually<T, F, Fut>(
    what: &str,
    context: impl Fn() -> String,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() > PATIENCE => {
                panic!(
                    "{what}: not within {PATIENCE:?}; last: {last}\n{}",
                    context()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What the producer did.
struct Produced {
    /// Chunk publications that failed (not confirmed) and were published again.
    retried_chunks: usize,
}

/// Publishes `messages` to the test's exchange in chunks with pauses, each chunk with publisher
/// confirms; a chunk that is not confirmed in full (broker down, connection lost) is published
/// again on a new connection. Re-sent messages are duplicates by id, which the service drops.
fn spawn_producer(
    amqp_url: String,
    names: Names,
    messages: Vec<(String, Vec<u8>)>,
    published: Arc<AtomicUsize>,
) -> JoinHandle<Produced> {
    tokio::spawn(async move {
        let topology = Topology::new(&names.exchange, &names.prefix);
        let mut link: Option<(lapin::Connection, lapin::Channel)> = None;
        let mut retried_chunks = 0;
        for chunk in messages.chunks(CHUNK) {
            let started = Instant::now();
            loop {
                assert!(
                    started.elapsed() < PATIENCE * 2,
                    "the producer could not publish a chunk within {:?}",
                    PATIENCE * 2
                );
                if link.is_none() {
                    match open_producer(&amqp_url, &topology).await {
                        Ok(opened) => link = Some(opened),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    }
                }
                let (_, channel) = link.as_ref().expect("link");
                let attempt = tokio::time::timeout(
                    Duration::from_secs(10),
                    publish_confirmed(channel, &names.exchange, chunk),
                )
                .await;
                if let Ok(Ok(())) = attempt {
                    break;
                }
                retried_chunks += 1;
                if let Some((connection, _)) = link.take() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        connection.close(200, "retrying"),
                    )
                    .await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            published.fetch_add(chunk.len(), Ordering::SeqCst);
            tokio::time::sleep(PAUSE).await;
        }
        if let Some((connection, _)) = link {
            let _ = connection.close(200, "done").await;
        }
        Produced { retried_chunks }
    })
}

async fn open_producer(
    url: &str,
    topology: &Topology,
) -> Result<(lapin::Connection, lapin::Channel), String> {
    let (connection, channel) = open_channel(url, "pulseboard test producer").await?;
    topology
        .declare(&channel)
        .await
        .map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok((connection, channel))
}

/// Publishes persistent messages; `Ok` only when the broker confirmed every one of them.
async fn publish_confirmed(
    channel: &lapin::Channel,
    exchange: &str,
    messages: &[(String, Vec<u8>)],
) -> Result<(), String> {
    let mut confirms = FuturesUnordered::new();
    for (routing_key, body) in messages {
        let confirm = channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(|e| e.to_string())?;
        confirms.push(confirm);
    }
    while let Some(confirm) = confirms.next().await {
        if !confirm.map_err(|e| e.to_string())?.is_ack() {
            return Err("the broker refused a message".into());
        }
    }
    Ok(())
}

pub(crate) async fn readyz(service: &Service) -> (u16, Value) {
    service.get_json("/readyz").await
}

pub(crate) async fn wait_until_ready(service: &Service, what: &str) {
    eventually(
        what,
        || service.log_text(),
        move || async move {
            match readyz(service).await {
                (200, body) if body["status"] == "ready" => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
}

/// Waits until the service applied part of the stream, so the outage hits it mid-flow.
pub(crate) async fn wait_for_applied(service: &Service, at_least: u64) {
    eventually(
        "the service applies events before the outage",
        || service.log_text(),
        move || async move {
            let applied = service.events_counted("applied").await;
            if applied >= at_least {
                Ok(())
            } else {
                Err(format!("{applied} applied"))
            }
        },
    )
    .await;
}

/// During the outage: the process answers, and the dashboards still get the last snapshot.
async fn assert_still_serving(service: &Service) -> Value {
    let (status, body) = service.get_json("/healthz").await;
    assert_eq!(status, 200, "/healthz during the outage: {body}");
    let (status, snapshot) = service.get_json("/api/dashboard/snapshot").await;
    assert_eq!(
        status, 200,
        "/api/dashboard/snapshot during the outage: {snapshot}"
    );
    assert!(snapshot["seq"].as_i64().is_some(), "{snapshot}");
    snapshot
}

/// After the outage: exact totals, and still exact once any redelivery settled.
pub(crate) async fn assert_exact_totals(service: &Service, tally: &SentTally) {
    let net = net_revenue(tally);
    let orders = placed(tally);
    let exact = |s: &Value| s["revenue"]["today_minor"] == net && s["orders_per_minute"] == orders;
    let context = || async {
        format!(
            "expected revenue.today_minor {net} and orders_per_minute {orders} from {} distinct \
             events; the service counted {} applied, {} ignored, {} duplicates\n{}",
            tally.sent,
            service.events_counted("applied").await,
            service.events_counted("ignored").await,
            service.events_counted("duplicate").await,
            service.log_text()
        )
    };
    let started = Instant::now();
    let mut last = None;
    loop {
        match service.snapshot().await {
            Some(snapshot) if exact(&snapshot) => break,
            Some(snapshot) => last = Some(snapshot),
            None => {}
        }
        if started.elapsed() > PATIENCE {
            panic!(
                "no exact totals within {PATIENCE:?}; last snapshot: {last:?}\n{}",
                context().await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = service.snapshot().await.expect("snapshot");
    assert!(exact(&later), "{later}\n{}", context().await);
    assert_eq!(later["ingest"]["state"], "running", "{later}");
}

/// The Erlang node stays up; RabbitMQ itself stops and starts again, as the requirement says
/// (`rabbitmqctl stop_app` / `start_app`), on a private node (`PrivateRabbit`), since the shared
/// one serves every other test. The database is SQLite: only the broker goes away.
///
/// `stop_app` may land between a batch's commit and its acknowledgement: that batch must still
/// count once (its redelivery is a duplicate), so this is checked by the exact totals too.
///
/// `orders_per_minute` is checked exactly too: every event occurred when the stream was
/// generated, just before publishing, and the whole test takes well under a minute from there.
///
/// The queues live on the private node, which is deleted with `rabbit`; the cleanup of `names`
/// finds nothing of this test's on the shared broker.
#[tokio::test]
async fn a_broker_restart_while_events_flow_keeps_serving_and_resumes_exactly() {
    let rabbit = PrivateRabbit::start().await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let mut config = ServiceConfig::new(&database, &names, &format!("outage-amqp-{}", short_id()));
    config.amqp_url = rabbit.amqp_url();
    let service = Service::start(&config).await;
    let service = &service;
    wait_until_ready(service, "the service becomes ready on the private broker").await;
    let context = || {
        format!(
            "{}\nRabbitMQ node log:\n{}",
            service.log_text(),
            rabbit.log_tail()
        )
    };

    let (messages, tally) = stream_with_duplicates(EVENTS, 31);
    let total = messages.len();
    let published = Arc::new(AtomicUsize::new(0));
    let producer = spawn_producer(
        rabbit.amqp_url(),
        names.clone(),
        messages,
        published.clone(),
    );
    wait_for_applied(service, APPLIED_BEFORE_OUTAGE).await;
    assert!(
        !producer.is_finished(),
        "the stream ended before the outage: make it longer"
    );

    rabbit.stop_app().await;
    let outage = Instant::now();
    let published_at_stop = published.load(Ordering::SeqCst);
    let body = eventually(
        "/readyz reports the broker outage",
        context,
        move || async move {
            match readyz(service).await {
                (503, body) if body["checks"]["ingest"] == "disconnected" => Ok(body),
                (status, body) => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
    let reason = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        reason.contains("RabbitMQ") && reason.contains("ingest"),
        "the reason names the broker: {body}"
    );
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    eventually(
        "the snapshot says ingest is disconnected",
        context,
        move || async move {
            let snapshot = assert_still_serving(service).await;
            if snapshot["ingest"]["state"] == "disconnected" {
                Ok(())
            } else {
                Err(snapshot.to_string())
            }
        },
    )
    .await;
    while outage.elapsed() < OUTAGE {
        assert_still_serving(service).await;
        let (status, body) = readyz(service).await;
        assert_eq!(status, 503, "not ready while the broker is down: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        published.load(Ordering::SeqCst) <= published_at_stop + CHUNK,
        "nothing can be confirmed while RabbitMQ is stopped"
    );

    rabbit.start_app().await;
    wait_until_ready(service, "the service is ready again after start_app").await;
    let produced = tokio::time::timeout(PATIENCE, producer)
        .await
        .unwrap_or_else(|_| panic!("the producer did not finish\n{}", context()))
        .expect("producer");
    assert_eq!(published.load(Ordering::SeqCst), total);
    assert!(
        produced.retried_chunks > 0,
        "the producer never met the outage"
    );
    assert_exact_totals(service, &tally).await;

    // Everything was acknowledged: nothing is left in the (durable) events queue.
    let (connection, channel) = open_producer(
        &rabbit.amqp_url(),
        &Topology::new(&names.exchange, &names.prefix),
    )
    .await
    .expect("connect to the private broker");
    let events_queue = &format!("{}.events", names.prefix);
    let channel = &channel;
    eventually("the events queue drains", context, move || async move {
        match Topology::depth(channel, events_queue).await {
            Ok(0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let _ = connection.close(200, "done").await;
}

/// How to start a service on a new database of its own on `postgres`, with broker names of
/// its own; also the database's name. `ServiceConfig::new` wants a `TestDatabase`: the SQLite
/// one returned (an unused folder) only supplies the defaults.
pub(crate) async fn config_on_private_postgres(
    postgres: &PrivatePostgres,
    tag: &str,
) -> (ServiceConfig, String, TestDatabase, Names) {
    let database_name = format!("pb_{tag}_{}", short_id());
    postgres.create_database(&database_name).await;
    let unused = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let mut config = ServiceConfig::new(&unused, &names, &format!("{tag}-pg-{}", short_id()));
    config.database_url = postgres.url(&database_name);
    (config, database_name, unused, names)
}

/// A service on a database of its own on a private PostgreSQL cluster, with broker names of
/// its own, once ready.
pub(crate) async fn ready_on_private_postgres(
    tag: &str,
) -> (PrivatePostgres, TestDatabase, Names, Broker, Service) {
    let postgres = PrivatePostgres::start().await;
    let (config, _, unused, names) = config_on_private_postgres(&postgres, tag).await;
    let broker = Broker::connect(&names).await;
    let service = Service::start(&config).await;
    wait_until_ready(
        &service,
        "the service becomes ready on the private PostgreSQL",
    )
    .await;
    (postgres, unused, names, broker, service)
}

/// PostgreSQL stops (`pg_ctl -m fast stop`, every connection cut) and starts again while the
/// producer keeps publishing to the (shared) broker, on a private cluster (`PrivatePostgres`),
/// since the shared one serves every other test.
///
/// `orders_per_minute` is checked exactly too: every event occurred when the stream was
/// generated, just before publishing, and the whole test takes well under a minute from there.
#[tokio::test]
async fn a_postgres_restart_while_events_flow_keeps_serving_and_resumes_exactly() {
    let (postgres, _unused, names, broker, service) = ready_on_private_postgres("outage").await;
    let service = &service;
    let context = || {
        format!(
            "{}\nPostgreSQL log:\n{}",
            service.log_text(),
            postgres.log_tail()
        )
    };

    let (messages, tally) = stream_with_duplicates(EVENTS, 37);
    let total = messages.len();
    let published = Arc::new(AtomicUsize::new(0));
    let producer = spawn_producer(
        AMQP_URL.to_owned(),
        names.clone(),
        messages,
        published.clone(),
    );
    wait_for_applied(service, APPLIED_BEFORE_OUTAGE).await;
    assert!(
        !producer.is_finished(),
        "the stream ended before the outage: make it longer"
    );

    postgres.stop().await;
    let outage = Instant::now();
    let published_at_stop = published.load(Ordering::SeqCst);
    let before = assert_still_serving(service).await;
    let body = eventually(
        "/readyz reports the database outage",
        context,
        move || async move {
            match readyz(service).await {
                (503, body) if body["checks"]["database"] == "failing" => Ok(body),
                (status, body) => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
    let reason = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        reason.contains("database"),
        "the reason names the database: {body}"
    );
    while outage.elapsed() < OUTAGE {
        let snapshot = assert_still_serving(service).await;
        assert!(
            snapshot["seq"].as_i64() >= before["seq"].as_i64(),
            "the snapshot never goes back: {before} then {snapshot}"
        );
        let (status, body) = readyz(service).await;
        assert_eq!(status, 503, "not ready while the database is down: {body}");
        assert_eq!(body["checks"]["database"], "failing", "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        published.load(Ordering::SeqCst) > published_at_stop,
        "events kept flowing into the broker during the database outage"
    );

    postgres.start_again().await;
    wait_until_ready(
        service,
        "the service is ready again after PostgreSQL restarted",
    )
    .await;
    tokio::time::timeout(PATIENCE, producer)
        .await
        .unwrap_or_else(|_| panic!("the producer did not finish\n{}", context()))
        .expect("producer");
    assert_eq!(published.load(Ordering::SeqCst), total);
    assert_exact_totals(service, &tally).await;

    let inspector = &broker;
    eventually("the events queue drains", context, move || async move {
        match inspector.events_queue_depth().await {
            0 => Ok(()),
            depth => Err(format!("{depth} messages left")),
        }
    })
    .await;
}

/// Issue 21: SIGTERM while the database hangs (every process of a private PostgreSQL stopped
/// with SIGSTOP: connections open, nothing answers) still ends in a clean exit within 10 s.
#[tokio::test]
async fn sigterm_while_the_database_hangs_still_exits_within_ten_seconds() {
    let (postgres, _unused, _names, broker, mut service) = ready_on_private_postgres("hang").await;
    // Events flow fast enough that the leader is nearly always inside a commit: the freeze
    // catches one in flight, a query that will never be answered.
    let (messages, _) = stream_with_duplicates(EVENTS, 41);
    let publishing = tokio::spawn(async move {
        broker.publish_all(&messages).await;
        broker
    });
    wait_for_applied(&service, 300).await;
    postgres.freeze();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    let status = service.terminate(Duration::from_secs(20)).await;
    let took = signalled.elapsed();
    postgres.thaw();
    let _ = publishing.await;
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(10),
        "exit {took:?} after SIGTERM:\n{}",
        service.log_text()
    );
    assert!(
        service.log_text().contains("stopped"),
        "{}",
        service.log_text()
    );
}
