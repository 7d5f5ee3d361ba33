//! Snapshots between instances, through RabbitMQ's `<prefix>.live` fanout exchange.
//!
//! The leader hands each frame to [`FanoutSender::send`] (never blocking: a full queue drops the
//! frame, and the next snapshot or the 1 s rebroadcast supersedes it). Every instance runs
//! [`run`]: it keeps one connection (reconnecting with backoff), publishes what its leader sends,
//! consumes every snapshot from an exclusive queue into its [`Hub`], and polls the depths of the
//! events and dead-letter queues for status and metrics.

use super::{Hub, Snapshot, SnapshotFrame};
use crate::ingest::broker::{connect, BrokerError, Topology};
use crate::ingest::StatusCell;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const OLDEST_ARRIVAL_HEADER: &str = "x-oldest-arrival";
const DEPTH_POLL: Duration = Duration::from_secs(2);

/// The leader's side: frames to publish to every instance.
#[derive(Clone)]
pub struct FanoutSender(mpsc::Sender<Arc<SnapshotFrame>>);

impl FanoutSender {
    pub fn channel() -> (FanoutSender, mpsc::Receiver<Arc<SnapshotFrame>>) {
        let (sender, receiver) = mpsc::channel(16);
        (FanoutSender(sender), receiver)
    }

    pub fn send(&self, frame: Arc<SnapshotFrame>) {
        let _ = self.0.try_send(frame);
    }
}

pub struct FanoutContext {
    pub amqp_url: String,
    pub node: String,
    pub topology: Topology,
    pub hub: Hub,
    pub status: Arc<StatusCell>,
    pub metrics: Arc<Metrics>,
}

/// Runs until `shutdown`, reconnecting after every failure.
pub async fn run(
    context: FanoutContext,
    mut outgoing: mpsc::Receiver<Arc<SnapshotFrame>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        let result = session(&context, &mut outgoing, &shutdown, &mut backoff).await;
        context.status.update(|s| {
            if !s.is_leader {
                s.broker_connected = false;
            }
        });
        match result {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, "snapshot fan-out link down; reconnecting");
                context
                    .status
                    .update(|s| s.last_error = Some(error.to_string()));
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
    outgoing: &mut mpsc::Receiver<Arc<SnapshotFrame>>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), BrokerError> {
    let connection = connect(
        &context.amqp_url,
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
    context.status.update(|s| {
        if !s.is_leader {
            s.broker_connected = true;
        }
    });
    tracing::info!("snapshot fan-out connected");

    let mut depth_tick = tokio::time::interval(DEPTH_POLL);
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            delivery = incoming.next() => match delivery {
                Some(Ok(delivery)) => receive(context, &delivery),
                Some(Err(error)) => break Err(error.into()),
                None => break Err(BrokerError::Amqp(lapin::Error::InvalidChannelState(
                    lapin::ChannelState::Closed,
                ))),
            },
            frame = outgoing.recv() => {
                let Some(frame) = frame else { break Ok(()) };
                publish(&channel, &context.topology.live_exchange, &frame).await?;
            }
            _ = depth_tick.tick() => poll_depths(context, &depth_channel).await?,
        }
    };
    let _ = connection.close(200, "bye").await;
    outcome
}

async fn publish(
    channel: &lapin::Channel,
    exchange: &str,
    frame: &SnapshotFrame,
) -> Result<(), BrokerError> {
    let mut headers = FieldTable::default();
    if let Some(arrival) = frame.oldest_arrival {
        headers.insert(
            OLDEST_ARRIVAL_HEADER.into(),
            AMQPValue::LongLongInt(arrival),
        );
    }
    channel
        .basic_publish(
            exchange,
            "",
            BasicPublishOptions::default(),
            frame.json.as_bytes(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(headers),
        )
        .await?;
    Ok(())
}

fn receive(context: &FanoutContext, delivery: &lapin::message::Delivery) {
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
    context.status.update(|s| {
        s.queue_depth = u64::from(depth);
        s.dead_letters = u64::from(dead);
    });
    Ok(())
}
