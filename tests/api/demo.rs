//! `serve --demo` on a machine without a reachable broker shows a live, changing snapshot.

use crate::helpers::{Backend, Names, Service, ServiceConfig, TestDatabase};
use std::time::Duration;

#[tokio::test]
async fn demo_without_rabbitmq_shows_a_changing_snapshot_within_five_seconds() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut config = ServiceConfig::new(&database, &Names::new(), "demo-1");
    config.args = vec!["serve".into(), "--demo".into()];
    // Nothing listens on port 1: the broker is as good as stopped.
    config.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    config.env.clear();
    let service = Service::start(&config).await;

    let first = service
        .wait_for_snapshot(Duration::from_secs(5), |s| s["ingest"]["state"] == "demo")
        .await;
    let changed = service
        .wait_for_snapshot(Duration::from_secs(5), |s| {
            s["seq"].as_i64() > first["seq"].as_i64()
                && s["revenue"]["today_minor"] != first["revenue"]["today_minor"]
        })
        .await;
    assert!(changed["active_users"].as_u64() > Some(0), "{changed}");
    let (status, ready) = service.get_json("/readyz").await;
    assert_eq!(status, 200, "demo counts as ready: {ready}");
}
