//! Between instances, through RabbitMQ's `<prefix>.live` fanout exchange: snapshots (from the
//! leader), announcements (from whichever instance took them), refresh requests (to the
//! leader), and for the console (see `control`): beacons, requests every instance answers (to
//! the asker's own queue, by the default exchange, with the request's correlation id), audit
//! entries and the leader's sampled event tail. The message `type` property says which.
//!
//! Senders never block: a full queue drops the message. That is safe for each kind: the next
//! snapshot or the 1 s rebroadcast supersedes a snapshot, a hub fills any announcement gap from
//! the store, and a refresh caller times out. Every instance runs [`run`]: one connection
//! (reconnecting with backoff), publishing what this instance sends, consuming everything from
//! an exclusive queue into its [`Hub`], and polling the depths of the events and dead-letter
//! queues for status and metrics. On every (re)connect the hub catches up on announcements
//! from the store.

use crate::control::{Answer, Beacon, Cluster, Request, BEACON_EVERY};
use crate::live::{Announcement, Hub, Snapshot, SnapshotFrame};
use crate::metrics::Metrics;
use crate::rabbitmq::{connect, BrokerError, Topology};
use crate::retry::Backoff;
use crate::status::StatusCell;
use crate::store::Store;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const OLDEST_ARRIVAL_HEADER: &str = "x-oldest-arrival";
const DEPTH_POLL: Duration = Duration::from_secs(2);

/// What this instance tells the others.
#[derive(Debug)]
pub enum Outgoing {
    Snapshot(Arc<SnapshotFrame>),
    Announcement(Announcement),
    Refresh,
    /// A question to every instance; answers come back to this instance's queue.
    Request {
        correlation: String,
        request: Request,
    },
    /// A console command's audit row, JSON: every console subscribed to `audit` gets it.
    Audit(Arc<str>),
    /// A sampled accepted event, JSON: every console subscribed to `events` gets it.
    Event(Arc<str>),
}

impl Outgoing {
    fn kind(&self) -> &'static str {
        match self {
            Outgoing::Snapshot(_) => "snapshot",
            Outgoing::Announcement(_) => "announcement",
            Outgoing::Refresh => "refresh",
            Outgoing::Request { .. } => "request",
            Outgoing::Audit(_) => "audit",
            Outgoing::Event(_) => "event",
        }
    }
}

#[derive(Clone)]
pub struct FanoutSender(mpsc::Sender<Outgoing>);

impl FanoutSender {
    pub fn channel() -> (FanoutSender, mpsc::Receiver<Outgoing>) {
        let (sender, receiver) = mpsc::channel(64);
        (FanoutSender(sender), receiver)
    }

    pub fn send(&self, frame: Arc<SnapshotFrame>) {
        let _ = self.0.try_send(Outgoing::Snapshot(frame));
    }

    pub fn send_announcement(&self, announcement: Announcement) {
        let _ = self.0.try_send(Outgoing::Announcement(announcement));
    }

    /// Asks whichever instance leads to publish a snapshot now.
    pub fn request_refresh(&self) {
        let _ = self.0.try_send(Outgoing::Refresh);
    }

    /// Asks every instance (this one included); `false` when the queue to the broker is full.
    pub fn send_request(&self, correlation: String, request: Request) -> bool {
        self.0
            .try_send(Outgoing::Request {
                correlation,
                request,
            })
            .is_ok()
    }

    pub fn send_audit(&self, row: Arc<str>) {
        let _ = self.0.try_send(Outgoing::Audit(row));
    }

    pub fn send_event(&self, event: Arc<str>) {
        let _ = self.0.try_send(Outgoing::Event(event));
    }
}

pub struct FanoutContext {
    pub amqp_url: secrecy::SecretString,
    pub node: String,
    pub topology: Topology,
    pub hub: Hub,
    pub status: Arc<StatusCell>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// The leader loop's refresh requests (read only while this instance leads).
    pub refresh: mpsc::Sender<()>,
    /// What this instance knows of the others, and answers them.
    pub cluster: Arc<Cluster>,
}

/// Runs until `shutdown`, reconnecting after every failure.
pub async fn run(
    context: FanoutContext,
    mut outgoing: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        let result = session(&context, &mut outgoing, &shutdown, &mut backoff).await;
        context.status.update_fanout(|s| s.link.connected = false);
        match result {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, "snapshot fan-out link down; reconnecting");
                context
                    .status
                    .update_fanout(|s| s.link.last_error = Some(error.to_string()));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One connection's life: returns `Ok` on shutdown, `Err` when the link failed.
async fn session(
    context: &FanoutContext,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), BrokerError> {
    let connection = connect(
        context.amqp_url.expose_secret(),
        &format!("pulseboard live {}", context.node),
    )
    .await?;
    let channel = connection.create_channel().await?;
    context.topology.declare(&channel).await?;
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().as_str(),
            &context.topology.live_exchange,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut incoming = channel
        .basic_consume(
            queue.name().as_str(),
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let depth_channel = connection.create_channel().await?;
    backoff.reset();
    context.status.update_fanout(|s| s.link.connected = true);
    tracing::info!("snapshot fan-out connected");
    if let Err(error) = context.hub.catch_up(&context.store).await {
        tracing::warn!(%error, "could not catch up on announcements");
    }

    let mut depth_tick = tokio::time::interval(DEPTH_POLL);
    let mut beacon_tick = tokio::time::interval(BEACON_EVERY);
    let mut consoles = context.cluster.local.registry.watch_consoles();
    let own_queue = queue.name().as_str().to_owned();
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let mut leaving = context.cluster.local.beacon();
                leaving.leaving = true;
                let _ = send_beacon(&channel, &context.topology.live_exchange, &leaving).await;
                break Ok(());
            }
            delivery = incoming.next() => match delivery {
                Some(Ok(delivery)) => receive(context, &channel, &own_queue, &delivery).await?,
                Some(Err(error)) => break Err(error.into()),
                None => break Err(BrokerError::Amqp(lapin::Error::InvalidChannelState(
                    lapin::ChannelState::Closed,
                ))),
            },
            message = outgoing.recv() => {
                let Some(message) = message else { break Ok(()) };
                publish(&channel, &context.topology.live_exchange, &own_queue, &message).await?;
            }
            _ = depth_tick.tick() => poll_depths(context, &depth_channel).await?,
            _ = beacon_tick.tick() => {
                send_beacon(&channel, &context.topology.live_exchange, &context.cluster.local.beacon()).await?;
            }
            Ok(()) = consoles.changed() => {
                context.cluster.refresh_presence();
                send_beacon(&channel, &context.topology.live_exchange, &context.cluster.local.beacon()).await?;
            }
        }
    };
    let _ = connection.close(200, "bye").await;
    outcome
}

async fn publish(
    channel: &lapin::Channel,
    exchange: &str,
    own_queue: &str,
    message: &Outgoing,
) -> Result<(), BrokerError> {
    let mut headers = FieldTable::default();
    let mut properties = BasicProperties::default();
    let body: Vec<u8> = match message {
        Outgoing::Snapshot(frame) => {
            if let Some(arrival) = frame.oldest_arrival {
                headers.insert(
                    OLDEST_ARRIVAL_HEADER.into(),
                    AMQPValue::LongLongInt(arrival),
                );
            }
            frame.json.as_bytes().to_vec()
        }
        // A struct of strings and numbers always serializes.
        Outgoing::Announcement(announcement) => {
            serde_json::to_vec(announcement).unwrap_or_default()
        }
        Outgoing::Refresh => Vec::new(),
        Outgoing::Request {
            correlation,
            request,
        } => {
            properties = properties
                .with_reply_to(own_queue.into())
                .with_correlation_id(correlation.as_str().into());
            // A tagged enum of strings always serializes.
            serde_json::to_vec(request).unwrap_or_default()
        }
        Outgoing::Audit(json) | Outgoing::Event(json) => json.as_bytes().to_vec(),
    };
    let properties = properties
        .with_content_type("application/json".into())
        .with_type(message.kind().into())
        .with_headers(headers);
    send(channel, exchange, "", &body, properties).await
}

/// One message, published as is (no confirm: the fan-out tolerates a lost one, the next
/// snapshot or beacon replaces it).
async fn send(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?;
    Ok(())
}

/// Another instance's beacon, or this one's.
async fn send_beacon(
    channel: &lapin::Channel,
    exchange: &str,
    beacon: &Beacon,
) -> Result<(), BrokerError> {
    // Strings only: always serializes.
    let body = serde_json::to_vec(beacon).unwrap_or_default();
    let properties = BasicProperties::default().with_type("beacon".into());
    send(channel, exchange, "", &body, properties).await
}

async fn receive(
    context: &FanoutContext,
    channel: &lapin::Channel,
    own_queue: &str,
    delivery: &lapin::message::Delivery,
) -> Result<(), BrokerError> {
    let kind = delivery
        .properties
        .kind()
        .as_ref()
        .map(|k| k.as_str().to_owned());
    match kind.as_deref() {
        Some("request") => answer(context, channel, own_queue, delivery).await?,
        Some("answer") => receive_answer(context, delivery),
        Some("beacon") => match serde_json::from_slice::<Beacon>(&delivery.data) {
            Ok(beacon) => context.cluster.saw(beacon),
            Err(error) => tracing::warn!(%error, "ignoring an unreadable beacon"),
        },
        Some("audit") => {
            let _ = context.cluster.feeds.audit.send(text_of(delivery));
        }
        Some("event") => {
            let _ = context.cluster.feeds.events.send(text_of(delivery));
        }
        Some("announcement") => match serde_json::from_slice::<Announcement>(&delivery.data) {
            Ok(announcement) => {
                if let Err(error) = context.hub.announce(announcement, &context.store).await {
                    tracing::warn!(%error, "could not fill an announcement gap from the store");
                }
            }
            Err(error) => tracing::warn!(%error, "ignoring an unreadable announcement"),
        },
        Some("refresh") => {
            if context.status.get().ingest.is_leader {
                let _ = context.refresh.try_send(());
            }
        }
        _ => receive_snapshot(context, delivery),
    }
    Ok(())
}

fn text_of(delivery: &lapin::message::Delivery) -> Arc<str> {
    Arc::from(String::from_utf8_lossy(&delivery.data).as_ref())
}

/// Answers a request to the asker's queue, through the default exchange; not this instance's
/// own requests, which it has answered for itself already.
async fn answer(
    context: &FanoutContext,
    channel: &lapin::Channel,
    own_queue: &str,
    delivery: &lapin::message::Delivery,
) -> Result<(), BrokerError> {
    let properties = &delivery.properties;
    let (Some(reply_to), Some(correlation)) = (properties.reply_to(), properties.correlation_id())
    else {
        return Ok(());
    };
    if reply_to.as_str() == own_queue {
        return Ok(());
    }
    let request: Request = match serde_json::from_slice(&delivery.data) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%error, "ignoring an unreadable request");
            return Ok(());
        }
    };
    let answer = context.cluster.local.answer(&request);
    // Plain data: always serializes.
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    let properties = BasicProperties::default()
        .with_type("answer".into())
        .with_correlation_id(correlation.clone())
        .with_app_id(context.node.as_str().into());
    // The default exchange routes by queue name: straight to the asker's own queue.
    send(channel, "", reply_to.as_str(), &body, properties).await
}

fn receive_answer(context: &FanoutContext, delivery: &lapin::message::Delivery) {
    let properties = &delivery.properties;
    let (Some(correlation), Some(node)) = (properties.correlation_id(), properties.app_id()) else {
        return;
    };
    match serde_json::from_slice::<Answer>(&delivery.data) {
        Ok(answer) => context
            .cluster
            .deliver(correlation.as_str(), node.to_string(), answer),
        Err(error) => tracing::warn!(%error, "ignoring an unreadable answer"),
    }
}

fn receive_snapshot(context: &FanoutContext, delivery: &lapin::message::Delivery) {
    let snapshot: Snapshot = match serde_json::from_slice(&delivery.data) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            tracing::warn!(%error, "ignoring an unreadable fan-out snapshot");
            return;
        }
    };
    let oldest_arrival = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(OLDEST_ARRIVAL_HEADER))
        .and_then(|v| match v {
            AMQPValue::LongLongInt(at) => Some(*at),
            _ => None,
        });
    let metrics = &context.metrics;
    metrics.active_users.set(snapshot.active_users as i64);
    metrics
        .orders_per_minute
        .set(snapshot.orders_per_minute as i64);
    metrics
        .revenue_today_minor
        .set(snapshot.revenue.today_minor);
    let json = String::from_utf8_lossy(&delivery.data);
    context.hub.publish(SnapshotFrame::from_parts(
        snapshot,
        json.into(),
        oldest_arrival,
    ));
}

async fn poll_depths(context: &FanoutContext, channel: &lapin::Channel) -> Result<(), BrokerError> {
    let depth = Topology::depth(channel, &context.topology.events_queue).await?;
    let dead = Topology::depth(channel, &context.topology.dead_queue).await?;
    context.metrics.queue_depth.set(i64::from(depth));
    context.metrics.dead_letters.set(i64::from(dead));
    context.status.update_fanout(|s| {
        s.queue_depth = u64::from(depth);
        s.dead_letters = u64::from(dead);
    });
    Ok(())
}
