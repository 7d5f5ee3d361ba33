//! A RabbitMQ cluster of the test's own: three private nodes on their own ports (Debian's
//! rabbitmq-server, see `private_services`), joined with `rabbitmqctl join_cluster`, and the
//! service on `AMQP_URL=<a>,<b>,<c>` with `PULSEBOARD_QUEUE_TYPE=quorum`.
//!
//! - the node the service is connected to stops while events flow: the service moves to
//!   another node and the totals are exact;
//! - a second node stops (the quorum queue loses its majority): the service says why it is not
//!   ready, and recovers when the node returns;
//! - and, on the shared broker, a queue type switch on an existing deployment is refused at
//!   start with one clear line.

use crate::helpers::{
    open_channel, refused_start, Backend, Broker, Names, Service, ServiceConfig, TestDatabase,
};
use crate::private_services::PrivateRabbit;
use pulseboard::simulate::TrafficGenerator;
use std::time::{Duration, Instant};

/// Three nodes, started side by side, the second and third joined to the first.
async fn start_cluster() -> [PrivateRabbit; 3] {
    let (a, b, c) = tokio::join!(
        PrivateRabbit::start(),
        PrivateRabbit::start(),
        PrivateRabbit::start()
    );
    for node in [&b, &c] {
        node.stop_app().await;
        node.ctl(&["join_cluster", a.node()]).await;
        node.start_app().await;
    }
    let status = a.ctl(&["cluster_status"]).await;
    for node in [&a, &b, &c] {
        assert!(status.contains(node.node()), "{status}");
    }
    [a, b, c]
}

/// Does `node` hold the service's ingest connection?
async fn holds_ingest(node: &PrivateRabbit) -> bool {
    node.ctl(&["list_connections", "client_properties"])
        .await
        .contains("pulseboard ingest")
}

/// Publishes `count` generated events to `url`, each until the broker confirms it (a publish
/// refused or lost while the queue elects a new leader is sent again: the service counts a
/// repeated id once). Returns the tally.
async fn publish(url: &str, exchange: &str, generator: &mut TrafficGenerator, count: u64) {
    let (connection, channel) = open_channel(url, "cluster test producer")
        .await
        .expect("producer connection");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let target = generator.tally.sent + count;
    while generator.tally.sent < target {
        let event = generator.next_event(chrono::Utc::now().timestamp_millis());
        for _ in 0..100 {
            let confirm = pulseboard::rabbitmq::publish_event(
                &channel,
                exchange,
                event.routing_key,
                &event.body,
            )
            .await
            .expect("publish");
            if confirm.await.is_ok_and(|c| c.is_ack()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let _ = connection.close(200, "done").await;
}

use crate::traffic::net_revenue as net;

async fn wait_ready(service: &Service, want: u16, timeout: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (status, body) = service.get_json("/readyz").await;
        if status == want {
            return body;
        }
        assert!(
            started.elapsed() < timeout,
            "/readyz not {want} within {timeout:?}: {status} {body}\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn on_a_three_node_cluster_with_quorum_queues_the_service_follows_the_nodes() {
    let [a, b, c] = start_cluster().await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let mut config = ServiceConfig::new(&database, &names, "cluster-1");
    config.amqp_url = [&a, &b, &c].map(|n| n.amqp_url()).join(",");
    config
        .env
        .push(("PULSEBOARD_QUEUE_TYPE".into(), "quorum".into()));
    let service = Service::start(&config).await;
    wait_ready(&service, 200, Duration::from_secs(30)).await;
    assert!(
        holds_ingest(&a).await,
        "the service starts on the first node"
    );
    let queues = a.ctl(&["list_queues", "name", "type"]).await;
    for queue in [".events", ".dead"] {
        let line = queues
            .lines()
            .find(|l| l.contains(&format!("{}{queue}", names.prefix)))
            .unwrap_or_else(|| panic!("no {queue} queue: {queues}"));
        assert!(line.contains("quorum"), "{line}");
    }

    // The service's node stops while events flow (published through the third node).
    let mut generator = TrafficGenerator::new(300, "USD", 61);
    publish(&c.amqp_url(), &names.exchange, &mut generator, 300).await;
    let producer_url = c.amqp_url();
    let exchange = names.exchange.clone();
    let mut flowing = generator;
    let producer = tokio::spawn(async move {
        publish(&producer_url, &exchange, &mut flowing, 600).await;
        flowing
    });
    a.stop_app().await;
    let generator = producer.await.expect("producer");
    let net_after_first_stop = net(&generator.tally);
    service
        .wait_for_snapshot(Duration::from_secs(60), |s| {
            s["revenue"]["today_minor"] == net_after_first_stop
        })
        .await;
    assert!(
        holds_ingest(&b).await || holds_ingest(&c).await,
        "the service moved to another node"
    );
    wait_ready(&service, 200, Duration::from_secs(30)).await;

    // A second node stops: one of three cannot hold the quorum queue. The service says so:
    // first that its link broke, then why it cannot consume.
    b.stop_app().await;
    wait_ready(&service, 503, Duration::from_secs(60)).await;
    let started = Instant::now();
    let reason = loop {
        let (_, body) = service.get_json("/readyz").await;
        let reason = body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if reason.contains("majority") {
            break reason;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/readyz never named the quorum: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("not ready without the quorum: {reason}");

    // The node returns: the service recovers and counts on, exactly.
    b.start_app().await;
    wait_ready(&service, 200, Duration::from_secs(90)).await;
    let mut generator = generator;
    publish(&c.amqp_url(), &names.exchange, &mut generator, 300).await;
    let total = net(&generator.tally);
    service
        .wait_for_snapshot(Duration::from_secs(60), |s| {
            s["revenue"]["today_minor"] == total
        })
        .await;
    drop(service);
    a.start_app().await;
}

/// A deployment whose queues exist as classic queues is not switched to quorum silently, nor
/// does it fail obscurely: the service refuses to start and says what to do.
#[tokio::test]
async fn switching_the_queue_type_of_an_existing_deployment_is_refused_at_start() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    // The classic topology, as an existing deployment has it.
    let _broker = Broker::connect(&names).await;
    let line = refused_start(&database, &names, &[("PULSEBOARD_QUEUE_TYPE", "quorum")]).await;
    assert!(
        line.contains("PULSEBOARD_QUEUE_TYPE")
            && line.contains(&format!("{}.", names.prefix))
            && line.contains("exists with another type"),
        "{line}"
    );
}
