//! The dead-letter queue `<prefix>.dead` as operators handle it (docs/api.md, Console: `dlq.*`):
//! look without removing, replay into `<prefix>.events` (through `<prefix>.replay`, bound to
//! that queue alone, under the letter's own routing key), purge.
//!
//! Each call opens a connection of its own and closes it, so a slow or unreachable broker holds
//! up only the console command that asked. Replay publishes a copy with publisher confirms and
//! acknowledges the dead one only after the broker confirmed the copy was routed, so a message
//! is always in `<prefix>.events` or still in `<prefix>.dead`, never in neither (at worst in
//! both, after a crash between the two steps: ingest's dedupe by id makes that harmless).
//!
//! A dead letter the client cannot parse (invalid UTF-8 in its routing key or a header: the
//! broker dead-letters those itself, see `rabbitmq::reject_unreadable_head`) ends the
//! connection that reads it. Since each call has a connection of its own, that costs nothing
//! else: peek shows it as unreadable and stops there, replay stops before it and says so, and
//! purge, which reads no message, drops it with the rest.

use crate::rabbitmq::{
    close, connect, cut_at_char, is_unreadable, publish_routed, BrokerError, Routed, Topology,
};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use std::time::Duration;

/// Bodies are shown up to this many bytes (cut at a character boundary).
pub(crate) const BODY_PREVIEW_BYTES: usize = 2_048;
const REASON_HEADER: &str = "x-pulseboard-reason";
/// How long one `basic.get` may take before the dead letter it fetched counts as unreadable.
const GET_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum DlqError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not take the replayed copy ({0}); the dead letter stays")]
    NotRouted(&'static str),
    #[error("RabbitMQ did not hand out a dead letter within {0:?}")]
    Slow(Duration),
}

/// One dead letter as `dlq.peek` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DeadLetter {
    /// `x-pulseboard-reason`: why ingest refused it; for a message the broker dead-lettered
    /// itself, `broker: <x-death reason>`; `null` when neither says.
    pub reason: Option<String>,
    pub routing_key: String,
    /// Valid UTF-8 (invalid bytes replaced), at most [`BODY_PREVIEW_BYTES`].
    pub body: String,
    pub bytes: usize,
    pub truncated: bool,
    /// The client could not parse this message; `reason` says why, and nothing after it in the
    /// queue is shown. Present only when true.
    #[serde(skip_serializing_if = "is_false")]
    pub unreadable: bool,
}

impl DeadLetter {
    fn unreadable(error: &str) -> DeadLetter {
        DeadLetter {
            reason: Some(format!("unreadable: {error}")),
            routing_key: String::new(),
            body: String::new(),
            bytes: 0,
            truncated: false,
            unreadable: true,
        }
    }
}

fn is_false(flag: &bool) -> bool {
    !flag
}

/// What the next `basic.get` found.
enum Next {
    Letter(Box<lapin::message::Delivery>),
    Empty,
    /// A message the client cannot parse: the connection is gone with it.
    Unreadable(String),
}

/// The next dead letter, left unacknowledged.
async fn next(connection: &Connection, channel: &Channel, queue: &str) -> Result<Next, DlqError> {
    let get = channel.basic_get(queue, BasicGetOptions { no_ack: false });
    match tokio::time::timeout(GET_LIMIT, get).await {
        Ok(Ok(Some(message))) => Ok(Next::Letter(Box::new(message.delivery))),
        Ok(Ok(None)) => Ok(Next::Empty),
        Ok(Err(error)) if is_unreadable(&error) => Ok(Next::Unreadable(error.to_string())),
        Ok(Err(error)) => Err(error.into()),
        Err(_) if connection.status().errored() => Ok(Next::Unreadable(
            "the connection failed while reading it".into(),
        )),
        Err(_) => Err(DlqError::Slow(GET_LIMIT)),
    }
}

/// What `dlq.replay` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Replayed {
    pub replayed: u32,
    /// Dead letters left behind it.
    pub remaining: u32,
    /// Replay stopped at a dead letter the client cannot parse (it stays; `dlq.purge` drops
    /// it, `dlq.peek` shows it). Present only when true.
    #[serde(skip_serializing_if = "is_false")]
    pub unreadable: bool,
}

/// Up to `limit` dead letters, oldest first, left in the queue.
pub(crate) async fn peek(
    url: &str,
    topology: &Topology,
    limit: u32,
) -> Result<Vec<DeadLetter>, DlqError> {
    let (connection, channel) = open(url, "pulseboard console dlq.peek").await?;
    let mut letters = Vec::new();
    while letters.len() < limit as usize {
        match next(&connection, &channel, &topology.dead_queue).await? {
            Next::Letter(delivery) => letters.push(describe(&delivery)),
            Next::Empty => break,
            Next::Unreadable(error) => {
                letters.push(DeadLetter::unreadable(&error));
                break;
            }
        }
    }
    // Closing with every message unacknowledged puts them back, in their places.
    close(&connection, &[&channel]).await;
    Ok(letters)
}

/// Moves up to `limit` dead letters back to `<prefix>.events`, one at a time: through
/// `<prefix>.replay`, so that no other queue bound to the producers' exchange (another
/// deployment's, an archive's) gets a second copy.
pub(crate) async fn replay(
    url: &str,
    topology: &Topology,
    limit: u32,
) -> Result<Replayed, DlqError> {
    let (connection, channel) = open(url, "pulseboard console dlq.replay").await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut replayed = 0;
    let mut unreadable = false;
    let outcome = async {
        while replayed < limit {
            let delivery = match next(&connection, &channel, &topology.dead_queue).await? {
                Next::Letter(delivery) => delivery,
                Next::Empty => break,
                Next::Unreadable(_) => {
                    unreadable = true;
                    break;
                }
            };
            match republish(&channel, &topology.replay_exchange, &delivery).await {
                Ok(()) => {
                    delivery.ack(BasicAckOptions::default()).await?;
                    replayed += 1;
                }
                Err(error) => {
                    let _ = delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                    return Err(error);
                }
            }
        }
        Ok(())
    }
    .await;
    // The connection is gone with an unreadable message: the count needs another.
    let remaining = if unreadable {
        depth_on_own_connection(url, topology).await
    } else {
        Topology::depth(&channel, &topology.dead_queue)
            .await
            .unwrap_or_default()
    };
    close(&connection, &[&channel]).await;
    outcome.map(|()| Replayed {
        replayed,
        remaining,
        unreadable,
    })
}

async fn depth_on_own_connection(url: &str, topology: &Topology) -> u32 {
    let Ok((connection, channel)) = open(url, "pulseboard console dlq.replay count").await else {
        return 0;
    };
    let depth = Topology::depth(&channel, &topology.dead_queue)
        .await
        .unwrap_or_default();
    close(&connection, &[&channel]).await;
    depth
}

/// Drops every dead letter; returns how many there were.
pub(crate) async fn purge(url: &str, topology: &Topology) -> Result<u32, DlqError> {
    let (connection, channel) = open(url, "pulseboard console dlq.purge").await?;
    let purged = channel
        .queue_purge(&topology.dead_queue, QueuePurgeOptions::default())
        .await;
    close(&connection, &[&channel]).await;
    Ok(purged?)
}

async fn open(url: &str, name: &str) -> Result<(Connection, Channel), DlqError> {
    let connection = connect(url, name).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// Publishes a copy under its original routing key, `mandatory`, and waits for the confirm:
/// `Ok` only when the broker routed it to a queue and took responsibility for it.
async fn republish(
    channel: &Channel,
    exchange: &str,
    delivery: &lapin::message::Delivery,
) -> Result<(), DlqError> {
    let routed = publish_routed(
        channel,
        exchange,
        delivery.routing_key.as_str(),
        &delivery.data,
        replay_properties(&delivery.properties),
    )
    .await?;
    match routed {
        Routed::Taken => Ok(()),
        Routed::Unroutable => Err(DlqError::NotRouted(
            "the events queue is not bound to the replay exchange",
        )),
        Routed::Refused => Err(DlqError::NotRouted("refused")),
        Routed::Unconfirmed => Err(DlqError::NotRouted("no confirm")),
    }
}

/// The dead letter's properties without the marks of its rejection (a new rejection adds its
/// own), persistent, with a count of replays.
fn replay_properties(original: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut replays = 1;
    if let Some(old) = original.headers() {
        for (key, value) in old.inner() {
            match key.as_str() {
                "x-pulseboard-replays" => {
                    if let AMQPValue::LongLongInt(n) = value {
                        replays = n.saturating_add(1);
                    }
                }
                k if k.starts_with("x-pulseboard-") || k.starts_with("x-death") => {}
                _ => headers.insert(key.clone(), value.clone()),
            }
        }
    }
    headers.insert(
        "x-pulseboard-replays".into(),
        AMQPValue::LongLongInt(replays),
    );
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(content_type) = original.content_type() {
        properties = properties.with_content_type(content_type.clone());
    }
    properties
}

fn text_of(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}

/// `x-pulseboard-reason`, or for a message the broker dead-lettered itself (a quorum queue's
/// delivery limit, an unreadable message the service had the broker reject) the reason of its
/// latest `x-death` record, as `broker: <reason>`.
fn reason_of(headers: &FieldTable) -> Option<String> {
    if let Some(reason) = headers.inner().get(REASON_HEADER).and_then(text_of) {
        return Some(reason);
    }
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return None;
    };
    let latest = deaths.as_slice().first()?;
    let AMQPValue::FieldTable(death) = latest else {
        return None;
    };
    let reason = death.inner().get("reason").and_then(text_of)?;
    Some(format!("broker: {reason}"))
}

fn describe(delivery: &lapin::message::Delivery) -> DeadLetter {
    let reason = delivery.properties.headers().as_ref().and_then(reason_of);
    let (body, truncated) = preview(&delivery.data);
    DeadLetter {
        reason,
        routing_key: delivery.routing_key.to_string(),
        body,
        bytes: delivery.data.len(),
        truncated,
        unreadable: false,
    }
}

/// The first [`BODY_PREVIEW_BYTES`] of `body` as text: invalid UTF-8 replaced, never a
/// character cut in half. Only the start of the body is decoded: a dead letter may be as large
/// as the broker lets a message be (an oversized body is dead-lettered whole), and its text
/// with invalid bytes replaced would take up to three times that.
pub(crate) fn preview(body: &[u8]) -> (String, bool) {
    // A replacement is never shorter than what it replaces: the text of these bytes starts
    // with the text of the whole body's first BODY_PREVIEW_BYTES (a character at most 4 bytes
    // long, cut at the end of `start`, falls after them).
    let start = &body[..body.len().min(BODY_PREVIEW_BYTES + 4)];
    let text = String::from_utf8_lossy(start);
    let shown = cut_at_char(&text, BODY_PREVIEW_BYTES);
    let truncated = shown.len() < text.len() || start.len() < body.len();
    (shown.to_owned(), truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_preview_is_valid_text_within_the_limit(body in proptest::collection::vec(any::<u8>(), 0..5_000)) {
            let (text, truncated) = preview(&body);
            prop_assert!(text.len() <= BODY_PREVIEW_BYTES);
            let whole = String::from_utf8_lossy(&body);
            prop_assert_eq!(truncated, text.len() < whole.len());
            prop_assert_eq!(text.as_str(), cut_at_char(&whole, BODY_PREVIEW_BYTES));
        }

        #[test]
        fn a_preview_of_mostly_valid_text_is_the_start_of_the_whole_text(
            text in "\\PC{600,1200}",
            noise in proptest::collection::vec(any::<u8>(), 0..8),
            at in 0usize..5_000,
        ) {
            let mut body = text.into_bytes();
            let at = at.min(body.len());
            body.splice(at..at, noise);
            let whole = String::from_utf8_lossy(&body);
            let (shown, truncated) = preview(&body);
            prop_assert_eq!(shown.as_str(), cut_at_char(&whole, BODY_PREVIEW_BYTES));
            prop_assert_eq!(truncated, shown.len() < whole.len());
        }
    }

    #[test]
    fn a_dead_letter_without_our_reason_names_the_brokers() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), AMQPValue::LongString("rejected".into()));
        death.insert("queue".into(), AMQPValue::LongString("p.events".into()));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        assert_eq!(reason_of(&headers).as_deref(), Some("broker: rejected"));
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString("too_large: x".into()),
        );
        assert_eq!(reason_of(&headers).as_deref(), Some("too_large: x"));
        assert_eq!(reason_of(&FieldTable::default()), None);
    }

    #[test]
    fn replayed_copies_lose_the_rejection_marks_and_count_replays() {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString("bad".into()));
        headers.insert("x-pulseboard-replays".into(), AMQPValue::LongLongInt(2));
        headers.insert("trace".into(), AMQPValue::LongString("t".into()));
        let copy = replay_properties(&BasicProperties::default().with_headers(headers));
        let headers = copy.headers().clone().unwrap_or_default();
        assert!(!headers.inner().contains_key(REASON_HEADER));
        assert_eq!(
            headers.inner().get("x-pulseboard-replays"),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert!(headers.inner().contains_key("trace"));
    }
}
