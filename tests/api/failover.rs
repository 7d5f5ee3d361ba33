//! Several instances: exactly one leads; when it dies another takes over within 10 s with the
//! same totals, and every instance serves the same figures.

use crate::helpers::{Backend, Broker, Names, Service, ServiceConfig, TestDatabase};
use crate::traffic::{net_revenue, stream_with_duplicates};
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_follower_takes_over_within_ten_seconds_with_the_same_totals() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let first = Service::start(&ServiceConfig::new(&database, &names, "node-a")).await;
    let second = Service::start(&ServiceConfig::new(&database, &names, "node-b")).await;
    let leader_name = first
        .wait_for_snapshot(Duration::from_secs(15), |s| {
            s["ingest"]["leader"].is_string()
        })
        .await["ingest"]["leader"]
        .as_str()
        .map(str::to_owned)
        .expect("leader");
    let (mut leader, follower, follower_name) = if leader_name == "node-a" {
        (first, second, "node-b")
    } else {
        (second, first, "node-a")
    };
    let (_, ready) = follower.get_json("/readyz").await;
    assert_eq!(
        ready["checks"]["is_leader"], false,
        "one leader only: {ready}"
    );
    assert_eq!(ready["checks"]["leader"], leader_name.as_str(), "{ready}");

    let (before, before_tally) = stream_with_duplicates(1_500, 21);
    let (after, after_tally) = stream_with_duplicates(1_500, 22);
    broker.publish_all(&before).await;
    let before_net = net_revenue(&before_tally);
    // Both instances serve the same figures: the follower's come from the leader's fan-out.
    for service in [&leader, &follower] {
        service
            .wait_for_snapshot(Duration::from_secs(30), |s| {
                s["revenue"]["today_minor"] == before_net
            })
            .await;
    }

    leader.kill().await;
    let killed_at = Instant::now();
    broker.publish_all(&after).await;
    let takeover = follower
        .wait_for_snapshot(Duration::from_secs(15), |s| {
            s["ingest"]["leader"] == follower_name
        })
        .await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "takeover took {took:?}: {takeover}"
    );

    let net = before_net + net_revenue(&after_tally);
    follower
        .wait_for_snapshot(Duration::from_secs(30), |s| {
            s["revenue"]["today_minor"] == net
        })
        .await;
    assert_eq!(broker.events_queue_depth().await, 0);
}
