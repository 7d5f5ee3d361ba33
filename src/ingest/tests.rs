//! A leader's term driven through the in-process feed, over an in-memory SQLite store: which
//! messages become events of a batch, which are duplicates or refused, and that every batch
//! (full, cut by a tick, or by its linger) is committed once and shows in the snapshot.

use super::{term, IngestContext, IngestSettings, LeaderInputs, LEASE_TTL_MS};
use crate::aggregate::{AggregateSettings, MAX_AMOUNT_MINOR};
use crate::clock::{now_ms, rfc3339};
use crate::config::DatabaseUrl;
use crate::rabbitmq::{RawMessage, Topology};
use crate::store::Store;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A store in memory, shared by the writer and the readers of this test only.
async fn memory_store() -> Store {
    let name = uuid::Uuid::new_v4().simple().to_string();
    let url: DatabaseUrl = format!("sqlite:file:{name}?mode=memory&cache=shared")
        .parse()
        .expect("a SQLite URL");
    let store = Store::connect(&url).await.expect("in-memory SQLite");
    store.migrate().await.expect("migrations");
    store
}

async fn context(max_batch: usize, linger: Duration) -> IngestContext {
    IngestContext {
        settings: IngestSettings {
            amqp_url: "amqp://unused".to_owned().into(),
            topology: Topology::new("events", "unit"),
            currency: "USD".into(),
            aggregate: AggregateSettings {
                active_window_ms: 300_000,
                timezone: chrono_tz::Tz::UTC,
            },
            snapshot_interval: Duration::from_millis(20),
            prefetch: 100,
            max_batch,
            batch_linger: linger,
            dedupe_window_ms: 86_400_000,
            demo: true,
            local_demo: true,
        },
        core: Arc::new(crate::core::for_tests("unit", memory_store().await).await),
    }
}

fn order(id: &str, amount_minor: i64) -> RawMessage {
    message(json!({
        "id": id, "type": "order.placed", "occurred_at": rfc3339(now_ms() - 1_000),
        "user_id": "u1", "data": {"order_id": id, "amount_minor": amount_minor, "currency": "USD"}
    }))
}

fn message(body: serde_json::Value) -> RawMessage {
    RawMessage {
        body: body.to_string().into_bytes(),
        routing_key: "order.placed".into(),
        headers: None,
        arrived_at: now_ms(),
        tag: 0,
    }
}

fn counted(context: &IngestContext, kind: &str, outcome: &str) -> u64 {
    context
        .core
        .metrics
        .events
        .with_label_values(&[kind, outcome])
        .get()
}

/// Leads one term with `messages` sent through the in-process feed, until the snapshot says
/// `today_minor` is `expected` (failing after 10 s), then stops it.
async fn lead_until(context: &IngestContext, messages: Vec<RawMessage>, expected: i64) {
    let lease = take_lease(context).await;
    let (sender, _ask, mut inputs) = local_inputs();
    let shutdown = CancellationToken::new();
    let term = term::lead(context, lease, &mut inputs, &shutdown);
    let drive = async {
        for message in messages {
            sender.send(message).await.expect("the leader reads");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut today = None;
        while tokio::time::Instant::now() < deadline {
            today = context
                .core
                .hub
                .latest_frame()
                .map(|f| f.snapshot.revenue.today_minor);
            if today == Some(expected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        today
    };
    let (end, today) = tokio::join!(term, drive);
    assert!(matches!(end, super::LeadEnd::Shutdown), "{end}");
    // Reached while leading, not by the commit that shutdown makes of what is left.
    assert_eq!(today, Some(expected), "today's revenue within 10 s");
}

/// A leader's inputs through the in-process feed, with what drives them: a sender of messages
/// and one of refresh requests.
fn local_inputs() -> (mpsc::Sender<RawMessage>, mpsc::Sender<()>, LeaderInputs) {
    let (feed, local) = mpsc::channel(100);
    let (ask, refresh) = mpsc::channel(1);
    let inputs = LeaderInputs {
        local: Some(local),
        refresh,
    };
    (feed, ask, inputs)
}

async fn take_lease(context: &IngestContext) -> crate::store::Lease {
    context
        .core
        .store
        .try_acquire_lease("unit", now_ms(), LEASE_TTL_MS)
        .await
        .expect("database")
        .expect("the lease of an empty store")
}

fn latest_seq(context: &IngestContext) -> Option<i64> {
    context.core.hub.latest_frame().map(|frame| frame.seq())
}

/// `POST /api/dashboard/refresh` asks for a snapshot without a change; however many ask, the
/// leader publishes at most one per snapshot tick.
#[tokio::test]
async fn a_flood_of_refreshes_publishes_at_most_one_snapshot_per_tick() {
    let mut context = context(10, Duration::from_millis(30)).await;
    let interval = Duration::from_millis(50);
    context.settings.snapshot_interval = interval;
    let lease = take_lease(&context).await;
    // The in-process feed stays open, and nothing comes through it.
    let (_feed, ask, mut inputs) = local_inputs();
    let shutdown = CancellationToken::new();
    let term = term::lead(&context, lease, &mut inputs, &shutdown);
    let flood = Duration::from_millis(500);
    let drive = async {
        while latest_seq(&context).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first = latest_seq(&context);
        let started = tokio::time::Instant::now();
        let mut asked = 0u32;
        while started.elapsed() < flood {
            asked += u32::from(ask.try_send(()).is_ok());
            tokio::task::yield_now().await;
        }
        shutdown.cancel();
        (first, latest_seq(&context), asked)
    };
    let (_, (Some(first), Some(last), asked)) = tokio::join!(term, drive) else {
        panic!("no snapshot published");
    };
    let published = last - first;
    let most = (flood.as_millis() / interval.as_millis()) as i64 + 1;
    assert!(asked > 50, "the flood got through to the leader: {asked}");
    assert!(
        (3..=most).contains(&published),
        "{published} snapshots in {flood:?} (no change: only refreshes publish; at most {most})"
    );
}

#[tokio::test]
async fn full_batches_and_a_lingering_one_are_each_committed_once() {
    let mut context = context(2, Duration::from_millis(30)).await;
    // Ticks far apart: the linger, not a tick, cuts the last batch.
    context.settings.snapshot_interval = Duration::from_secs(1);
    // The leader's `batch committed` lines, in the service's own text log, read back by
    // `batch_log`: the events of each batch committed, in commit order.
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("log");
    let file = std::fs::File::create(&path).expect("log file");
    let _subscriber = tracing::subscriber::set_default(crate::telemetry::get_subscriber(
        tracing_subscriber::EnvFilter::new("info,pulseboard::ingest::leader=debug"),
        crate::config::LogFormat::Text,
        false,
        Arc::new(file),
    ));
    // Two full batches of two, then one event that only its linger sends on.
    let messages = (1..=5).map(|n| order(&format!("o{n}"), n * 100)).collect();
    lead_until(&context, messages, 1_500).await;
    let log = std::fs::read_to_string(&path).expect("log text");
    let sizes: Vec<_> = log
        .lines()
        .filter_map(super::batch_log::CommittedBatch::from_log_line)
        .map(|batch| batch.events)
        .collect();
    assert_eq!(sizes, vec![2, 2, 1]);
    assert_eq!(counted(&context, "order.placed", "applied"), 5);
    assert_eq!(context.core.store.applied_count().await.expect("count"), 5);
}

/// A tick cuts the batch being gathered, however long its linger, and that tick's snapshot
/// already holds it: the snapshot waits for the batch to land instead of showing it a tick
/// later.
#[tokio::test]
async fn a_tick_commits_what_was_gathered_before_it_and_its_snapshot_shows_it() {
    let mut context = context(100, Duration::from_secs(60)).await;
    let interval = Duration::from_millis(500);
    context.settings.snapshot_interval = interval;
    let lease = take_lease(&context).await;
    let (sender, ask, mut inputs) = local_inputs();
    let shutdown = CancellationToken::new();
    let term = term::lead(&context, lease, &mut inputs, &shutdown);
    // Every tick publishes (a refresh is always asked): frames are ticks, one seq each.
    let next_frame = |after: Option<i64>| {
        let (context, ask) = (&context, &ask);
        async move {
            loop {
                let _ = ask.try_send(());
                let frame = context.core.hub.latest_frame();
                if let Some(frame) = frame.filter(|f| Some(f.seq()) > after) {
                    return frame;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let drive = async {
        let first = next_frame(None).await;
        // Just after a tick's snapshot: the next tick is about 500 ms away.
        let ticked = next_frame(Some(first.seq())).await;
        for n in 1..=3 {
            sender
                .send(order(&format!("t{n}"), 100))
                .await
                .expect("sent");
        }
        let next = tokio::time::timeout(Duration::from_secs(5), next_frame(Some(ticked.seq())))
            .await
            .expect("the next tick's snapshot within 5 s");
        shutdown.cancel();
        (ticked, next)
    };
    let (end, (ticked, next)) = tokio::join!(term, drive);
    assert!(matches!(end, super::LeadEnd::Shutdown), "{end}");
    assert_eq!(ticked.snapshot.revenue.today_minor, 0);
    assert_eq!(next.seq(), ticked.seq() + 1, "one tick later");
    assert_eq!(
        next.snapshot.revenue.today_minor, 300,
        "the tick after the orders arrived shows them, with a linger of 60 s"
    );
}

#[tokio::test]
async fn a_repeat_in_the_same_batch_is_a_duplicate_before_the_store() {
    let context = context(10, Duration::from_millis(30)).await;
    let messages = vec![order("a", 100), order("a", 999), order("b", 50)];
    lead_until(&context, messages, 150).await;
    assert_eq!(counted(&context, "order.placed", "applied"), 2);
    assert_eq!(counted(&context, "order.placed", "duplicate"), 1);
    assert_eq!(context.core.store.applied_count().await.expect("count"), 2);
}

#[tokio::test]
async fn malformed_messages_and_sums_without_room_are_refused_and_the_rest_applied() {
    let context = context(10, Duration::from_millis(30)).await;
    // Today's revenue one maximal order short of the 64-bit limit: only a little more fits.
    let today = crate::aggregate::local_date(now_ms(), chrono_tz::Tz::UTC);
    let near_limit = i64::MAX - MAX_AMOUNT_MINOR + 1;
    sqlx::query("INSERT INTO daily_revenue (day, revenue_minor) VALUES ($1, $2)")
        .bind(today.to_string())
        .bind(near_limit)
        .execute(context.core.store.writer())
        .await
        .expect("seed");
    let messages = vec![
        message(json!({"not": "an event"})),
        order("too-much", MAX_AMOUNT_MINOR),
        order("fits", 7),
    ];
    lead_until(&context, messages, near_limit + 7).await;
    assert_eq!(counted(&context, "unknown", "rejected"), 1);
    assert_eq!(counted(&context, "order.placed", "rejected"), 1);
    assert_eq!(counted(&context, "order.placed", "applied"), 1);
    assert_eq!(context.core.store.applied_count().await.expect("count"), 1);
}

#[test]
fn every_event_type_label_is_exported_from_the_start() {
    use crate::aggregate::EventKind;
    let kinds = [
        EventKind::OrderPlaced { amount_minor: 1 },
        EventKind::OrderRefunded { amount_minor: 1 },
        EventKind::UserActive,
        EventKind::UserSignedOut,
        EventKind::Other,
    ];
    for kind in kinds {
        assert!(
            crate::metrics::EVENT_TYPES.contains(&kind.label()),
            "{kind:?}"
        );
    }
}
