//! Crash safety: killing the service mid-stream loses nothing and counts nothing twice;
//! SIGTERM commits and acknowledges the batch in flight and exits cleanly.

use crate::helpers::{Backend, Broker, Names, Service, ServiceConfig, TestDatabase};
use crate::traffic::{net_revenue, placed, stream_with_duplicates};
use std::time::Duration;

enum Stop {
    Kill,
    Terminate,
}

async fn restart_mid_stream_keeps_exact_totals(backend: Backend, stop: Stop) {
    let database = TestDatabase::new(backend).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let config = ServiceConfig::new(&database, &names, "crash-1");
    let mut service = Service::start(&config).await;

    let (messages, tally) = stream_with_duplicates(6_000, 11);
    let producer = {
        let names = names.clone();
        tokio::spawn(async move {
            let broker = Broker::connect(&names).await;
            for chunk in messages.chunks(300) {
                broker.publish_all(chunk).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Stop the service once it has applied part of the stream, while events keep flowing.
    let mut applied = 0;
    for _ in 0..400 {
        applied = service.events_counted("applied").await;
        if applied >= 1_500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        applied >= 1_500,
        "the service applied only {applied} events"
    );
    match stop {
        Stop::Kill => service.kill().await,
        Stop::Terminate => {
            let status = service.terminate(Duration::from_secs(15)).await;
            assert!(status.success(), "graceful exit: {status:?}");
            assert!(
                service.log_text().contains("stopped"),
                "{}",
                service.log_text()
            );
        }
    }
    drop(service);

    let service = Service::start(&config).await;
    producer.await.expect("producer");
    let net = net_revenue(&tally);
    let orders = placed(&tally);
    let snapshot = service
        .wait_for_snapshot(Duration::from_secs(60), |s| {
            s["revenue"]["today_minor"] == net && s["orders_per_minute"] == orders
        })
        .await;
    // Let any redelivery settle, then check again: still exact, nothing counted twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = service.snapshot().await.expect("snapshot");
    assert_eq!(later["revenue"]["today_minor"], net, "{later}");
    assert_eq!(later["orders_per_minute"], orders, "{later}");
    assert!(later["seq"].as_i64() > snapshot["seq"].as_i64().map(|s| s - 1));
    assert_eq!(broker.events_queue_depth().await, 0);
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_and_counts_nothing_twice_on_postgres() {
    restart_mid_stream_keeps_exact_totals(Backend::Postgres, Stop::Kill).await;
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_and_counts_nothing_twice_on_sqlite() {
    restart_mid_stream_keeps_exact_totals(Backend::Sqlite, Stop::Kill).await;
}

#[tokio::test]
async fn sigterm_mid_stream_commits_the_batch_in_flight_and_exits_cleanly() {
    restart_mid_stream_keeps_exact_totals(Backend::Sqlite, Stop::Terminate).await;
}
