//! RabbitMQ plumbing: connection, topology (docs/events.md, Topology), ingest's consumer and
//! dead letters, and the few calls the fan-out between instances, the demo and the start-up
//! check make. Every publish, consume and declaration of the service goes through here (the
//! console's dead-letter handling has its own adapter, `dlq`), so the broker's options (acks,
//! confirms, persistence, queue arguments) are decided in one file.
//!
//! Topology, declared idempotently by every instance at connect:
//! - `$PULSEBOARD_EXCHANGE` (topic, durable): where producers publish;
//! - `<prefix>.events` (durable, single active consumer) bound with `order.*` and `user.*`,
//!   dead-lettering into `<prefix>.dlx` (fanout) → `<prefix>.dead` (durable);
//! - `<prefix>.replay` (fanout, durable) bound to `<prefix>.events` alone: where `dlq.replay`
//!   puts a dead letter back under its own routing key, so that no other queue bound to the
//!   producers' exchange gets a second copy;
//! - `<prefix>.live` (fanout, transient): snapshots between instances (see `fanout`).
//!
//! `PULSEBOARD_QUEUE_TYPE=quorum` declares `<prefix>.events` and `<prefix>.dead` as quorum
//! queues (replicated over a cluster), with at-least-once dead-lettering (`x-overflow:
//! reject-publish` is its precondition), so that a message the broker itself dead-letters is
//! not lost between the two. RabbitMQ cannot change an existing queue's type; a declaration of
//! the other type is refused by the broker, and [`BrokerError::QueueType`] says so plainly.
//!
//! `AMQP_URL` may list a cluster's nodes, comma-separated: [`connect`] tries them in order and
//! takes the first that answers; every reconnection starts again from the first, so a link
//! whose node went away lands on another.
//!
//! What the client library can be made to parse is bounded here, because it parses whatever the
//! broker delivers on a thread of its own and cannot be told to stop (docs/security.md, AMQP
//! frames): nested header tables are parsed recursively, so the stack of every thread is sized
//! for the deepest table the largest frame can carry ([`parsing_stack_bytes`], reserved by the
//! binary before any thread starts), and a broker that negotiates larger frames than that is
//! refused at connect. A message the library cannot parse at all (invalid UTF-8 in a short
//! string) kills its connection; [`reject_unreadable_head`] lets the broker dead-letter it.
//!
//! A malformed message is republished to `<prefix>.dlx` with `x-pulseboard-reason` (a broker
//! rejection could not add that header) and acknowledged only after the broker confirmed the
//! copy, together with its batch.

use crate::aggregate::Millis;
use crate::config::QueueType;
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use std::str::FromStr;
use std::time::Duration;
use tokio::task::JoinHandle;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a quorum events queue delivers a message again before it dead-letters it.
/// Generous: a failover, a broker restart or the search for an unreadable message
/// (`ingest::feed`) each return a message once or twice; only a message that fails every time
/// gets this far.
pub const DELIVERY_LIMIT: i64 = 20;

/// The largest frame a connection may negotiate: RabbitMQ's default `frame_max`. A publisher
/// can send no larger frame than the broker allows, and a content header is never split, so
/// this bounds the deepest header table the broker can deliver.
pub(crate) const FRAME_MAX_SUPPORTED: u32 = 131_072;
/// The fewest bytes one level of nesting takes in a frame: an array value is a type byte and a
/// four-byte length (a table entry adds a key of at least one byte).
const BYTES_PER_NESTING_LEVEL: usize = 5;
/// Stack the client's parser uses per level of nesting, measured with amq-protocol 7.2
/// (docs/benchmarks.md, "Parsing stack"): about 8 000 bytes in a debug build and 1 600 in a
/// release build. Cloning, formatting, dropping and serialising a table take less per level.
const PARSE_STACK_PER_NESTING_LEVEL: usize = if cfg!(debug_assertions) { 8_192 } else { 1_664 };

/// The stack every thread needs so that parsing, cloning and dropping the deepest header
/// table a [`FRAME_MAX_SUPPORTED`] frame can carry cannot overflow it: a quarter over the
/// measured need, plus the 2 MiB a thread has by default for everything else. Threads only
/// reserve this address space; memory is committed as a thread actually uses it.
pub const fn parsing_stack_bytes() -> usize {
    let deepest = FRAME_MAX_SUPPORTED as usize / BYTES_PER_NESTING_LEVEL;
    deepest * PARSE_STACK_PER_NESTING_LEVEL / 4 * 5 + 2 * 1024 * 1024
}
/// How long declaring a queue or starting to consume from it may take. The broker answers
/// within milliseconds, except for a quorum queue without a majority of its nodes, which waits
/// for them: the link is given up with a reason instead of hanging there.
const QUEUE_STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach RabbitMQ within {0:?}")]
    Timeout(Duration),
    /// Every node of `AMQP_URL` failed: each one's address (without credentials) and error.
    #[error("no RabbitMQ node answered: {0}")]
    NoNode(String),
    #[error(
        "RabbitMQ did not {step} queue {queue} within {QUEUE_STEP_TIMEOUT:?} (a quorum queue \
         answers only while a majority of the cluster's nodes is up)"
    )]
    Stalled { step: &'static str, queue: String },
    #[error(
        "queue {queue} exists with another type than PULSEBOARD_QUEUE_TYPE={wanted}: RabbitMQ \
         cannot change a queue's type; set PULSEBOARD_QUEUE_TYPE to the queue's type, or drain \
         and delete the queue (or choose another PULSEBOARD_QUEUE_PREFIX) to declare it anew \
         (RabbitMQ said: {said})"
    )]
    QueueType {
        queue: String,
        wanted: QueueType,
        said: String,
    },
    #[error(
        "quorum queue {queue} exists with another delivery limit than pulseboard's \
         {DELIVERY_LIMIT} (queues declared before it had none): drain and delete the queue, or \
         choose another PULSEBOARD_QUEUE_PREFIX, to declare it anew (docs/operations.md, \
         Upgrading; RabbitMQ said: {said})"
    )]
    DeliveryLimit { queue: String, said: String },
    #[error(
        "RabbitMQ negotiates frames of up to {negotiated} bytes, more than the \
         {FRAME_MAX_SUPPORTED} pulseboard parses safely: set frame_max = {FRAME_MAX_SUPPORTED} \
         (RabbitMQ's default) in rabbitmq.conf"
    )]
    FrameMaxTooLarge { negotiated: u32 },
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused the dead letter")]
    DeadLetterRefused,
    #[error("starting a consumer with another prefetch failed: {0}")]
    Rewindow(String),
}

/// Names of everything the service declares, derived once from the configuration.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub events_queue: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    /// Bound to `events_queue` alone: what a replayed dead letter is published to.
    pub replay_exchange: String,
    pub live_exchange: String,
    /// `PULSEBOARD_QUEUE_TYPE` of the events and dead-letter queues.
    pub queue_type: QueueType,
}

impl Topology {
    pub fn new(exchange: &str, prefix: &str) -> Self {
        Topology {
            exchange: exchange.to_owned(),
            events_queue: format!("{prefix}.events"),
            dead_exchange: format!("{prefix}.dlx"),
            dead_queue: format!("{prefix}.dead"),
            replay_exchange: format!("{prefix}.replay"),
            live_exchange: format!("{prefix}.live"),
            queue_type: QueueType::Classic,
        }
    }

    /// The same names, with queues of `queue_type`.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Arguments every declaration of the dead-letter queue carries.
    fn dead_queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        arguments
    }

    /// Arguments every declaration of the events queue carries.
    fn events_queue_arguments(&self) -> FieldTable {
        let mut arguments = self.dead_queue_arguments();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_exchange.as_str().into()),
        );
        // Belt and braces beside the database lease: the broker itself delivers to one consumer.
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        if self.queue_type == QueueType::Quorum {
            // A quorum queue dead-letters at most once unless told otherwise; at-least-once
            // keeps the message until `<prefix>.dead` confirmed it, and requires this overflow.
            arguments.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            arguments.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
            // The broker's own guard: a message whose deliveries keep failing (one that makes
            // every consumer fail before it can acknowledge or reject it) is dead-lettered.
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
        }
        arguments
    }

    /// Declares `queue`, naming a type mismatch plainly (the broker's refusal also closes the
    /// channel).
    async fn declare_queue(
        &self,
        channel: &Channel,
        queue: &str,
        arguments: FieldTable,
    ) -> Result<(), BrokerError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = bounded(
            "declare",
            queue,
            channel.queue_declare(queue, durable, arguments),
        )
        .await?;
        match declared {
            Ok(_) => Ok(()),
            Err(error) => Err(self.explain_refusal(queue, error)),
        }
    }

    fn explain_refusal(&self, queue: &str, error: lapin::Error) -> BrokerError {
        let said = error.to_string();
        // The arguments that differ between the two types; RabbitMQ names the first it finds.
        if said.contains("PRECONDITION_FAILED") && said.contains("x-delivery-limit") {
            return BrokerError::DeliveryLimit {
                queue: queue.to_owned(),
                said,
            };
        }
        let about_type = ["x-queue-type", "x-overflow", "x-dead-letter-strategy"]
            .iter()
            .any(|argument| said.contains(argument));
        if said.contains("PRECONDITION_FAILED") && about_type {
            BrokerError::QueueType {
                queue: queue.to_owned(),
                wanted: self.queue_type,
                said,
            }
        } else {
            BrokerError::Amqp(error)
        }
    }

    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                &self.exchange,
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                &self.dead_exchange,
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                &self.replay_exchange,
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                &self.live_exchange,
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.declare_queue(channel, &self.dead_queue, self.dead_queue_arguments())
            .await?;
        channel
            .queue_bind(
                &self.dead_queue,
                &self.dead_exchange,
                "",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.declare_queue(channel, &self.events_queue, self.events_queue_arguments())
            .await?;
        for pattern in ["order.*", "user.*"] {
            channel
                .queue_bind(
                    &self.events_queue,
                    &self.exchange,
                    pattern,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .queue_bind(
                &self.events_queue,
                &self.replay_exchange,
                "",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Deletes everything `declare` made, with the messages in it: for tests and benchmarks
    /// that declare a topology of their own (the service never deletes one). Goes on past a
    /// failure while the channel lasts, and returns the first one.
    pub async fn delete(&self, channel: &Channel) -> Result<(), BrokerError> {
        let mut first_error = None;
        for queue in [&self.events_queue, &self.dead_queue] {
            if let Err(error) = channel
                .queue_delete(queue, QueueDeleteOptions::default())
                .await
            {
                first_error.get_or_insert(error);
            }
        }
        let exchanges = [
            &self.exchange,
            &self.dead_exchange,
            &self.replay_exchange,
            &self.live_exchange,
        ];
        for exchange in exchanges {
            if let Err(error) = channel
                .exchange_delete(exchange, ExchangeDeleteOptions::default())
                .await
            {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), |error| Err(error.into()))
    }

    /// Ready messages in `queue`, without declaring it.
    pub async fn depth(channel: &Channel, queue: &str) -> Result<u32, BrokerError> {
        let queue = channel
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(queue.message_count())
    }
}

/// Opens a connection on the Tokio runtime to the first node of `urls` (one AMQP URL, or a
/// comma-separated list of a cluster's nodes) that answers, giving each `CONNECT_TIMEOUT`.
pub async fn connect(urls: &str, name: &str) -> Result<Connection, BrokerError> {
    let nodes = nodes(urls);
    let mut failures = Vec::with_capacity(nodes.len());
    for url in &nodes {
        match connect_one(url, name).await {
            Ok(connection) => {
                if nodes.len() > 1 {
                    tracing::debug!(node = %node_address(url), %name, "connected to RabbitMQ");
                }
                return Ok(connection);
            }
            // One node: its own error, as before lists existed.
            Err(error) if nodes.len() == 1 => return Err(error),
            Err(error) => failures.push(format!("{}: {error}", node_address(url))),
        }
    }
    Err(BrokerError::NoNode(failures.join("; ")))
}

async fn connect_one(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| BrokerError::Timeout(CONNECT_TIMEOUT))??;
    let negotiated = connection.configuration().frame_max();
    if negotiated > FRAME_MAX_SUPPORTED {
        let _ = connection.close(200, "frame_max too large").await;
        return Err(BrokerError::FrameMaxTooLarge { negotiated });
    }
    Ok(connection)
}

/// Closes `channels`, then `connection`, ignoring failures (a connection that already failed
/// has nothing left to close). Each channel's close is awaited first: a channel still closing
/// (as a dropped one is) when its connection closes is reported by the client as a
/// connection error, at ERROR.
pub(crate) async fn close(connection: &Connection, channels: &[&Channel]) {
    for channel in channels {
        let _ = channel.close(200, "bye").await;
    }
    let _ = connection.close(200, "bye").await;
}

/// `operation` on `queue`, or [`BrokerError::Stalled`] after [`QUEUE_STEP_TIMEOUT`].
async fn bounded<T>(
    step: &'static str,
    queue: &str,
    operation: impl std::future::Future<Output = T>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(QUEUE_STEP_TIMEOUT, operation)
        .await
        .map_err(|_| BrokerError::Stalled {
            step,
            queue: queue.to_owned(),
        })
}

/// The nodes of an `AMQP_URL`, in order.
pub(crate) fn nodes(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// `host:port` of a node, for logs and errors: never its credentials.
pub(crate) fn node_address(url: &str) -> String {
    match lapin::uri::AMQPUri::from_str(url) {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "an unparsable address".to_owned(),
    }
}

/// Whether `error` says the client could not parse what the broker sent: a message it cannot
/// read (invalid UTF-8 in a routing key, a header name, a content type…) ends the whole
/// connection this way, before any code of ours sees the delivery.
pub(crate) fn is_unreadable(error: &lapin::Error) -> bool {
    matches!(error, lapin::Error::ParsingError(_))
}

/// What [`reject_unreadable_head`] found at the head of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadRejected {
    /// A message the client cannot parse: the broker dead-letters it.
    Unreadable,
    /// A message the client could parse after all (the unreadable one left the queue in
    /// between): the broker dead-lettered it, and a copy went back to the events exchange
    /// (confirmed), so it is applied all the same; the dead copy is a harmless duplicate.
    Readable,
    /// Nothing was in the queue.
    Empty,
}

/// Has the broker dead-letter the message at the head of `queue`, which the client cannot
/// parse, on a connection of its own that the message then ends. The `basic.get` and a
/// `basic.reject` of delivery tag 1 (the first on a new channel) are sent together, before the
/// answer arrives: the broker handles a channel's methods in order, so the reject applies to
/// the message the get took, and it is sent before the client fails on that message. The
/// queue's dead-letter exchange takes it, with the broker's `x-death` reason `rejected`.
pub(crate) async fn reject_unreadable_head(
    url: &str,
    name: &str,
    topology: &Topology,
) -> Result<HeadRejected, BrokerError> {
    let queue = topology.events_queue.as_str();
    let connection = connect(url, name).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let get = channel.basic_get(queue, BasicGetOptions { no_ack: false });
    let reject = channel.basic_reject(1, BasicRejectOptions { requeue: false });
    // When the client fails on the message's content header rather than on `basic.get-ok`
    // itself, the get is never answered: the connection's state tells.
    let (got, rejected) =
        futures_util::future::join(tokio::time::timeout(UNREADABLE_GET_LIMIT, get), reject).await;
    let outcome = match got {
        Ok(Err(error)) if is_unreadable(&error) => Ok(HeadRejected::Unreadable),
        Err(_) if connection.status().errored() => Ok(HeadRejected::Unreadable),
        Err(_) => Err(BrokerError::Stalled {
            step: "reject the head of",
            queue: queue.to_owned(),
        }),
        Ok(Err(error)) => Err(BrokerError::Amqp(error)),
        Ok(Ok(Some(message))) => match rejected {
            Ok(()) => put_back(&channel, &topology.exchange, &message.delivery)
                .await
                .map(|()| HeadRejected::Readable),
            Err(error) => Err(BrokerError::Amqp(error)),
        },
        Ok(Ok(None)) => Ok(HeadRejected::Empty),
    };
    close(&connection, &[&channel]).await;
    outcome
}

/// Whether the broker took a message published with [`publish_routed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routed {
    /// Routed to a queue and confirmed.
    Taken,
    /// No queue is bound for its key (returned).
    Unroutable,
    /// Refused by the broker (nack).
    Refused,
    /// The channel is not in confirm mode.
    Unconfirmed,
}

/// Publishes `body` to `exchange` under `routing_key`, `mandatory`, on a channel in confirm
/// mode, and waits for the broker's verdict: only [`Routed::Taken`] means a queue has it.
pub(crate) async fn publish_routed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<Routed, lapin::Error> {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = channel
        .basic_publish(exchange, routing_key, mandatory, body, properties)
        .await?
        .await?;
    Ok(match confirm {
        Confirmation::Ack(None) => Routed::Taken,
        Confirmation::Ack(Some(_)) => Routed::Unroutable,
        Confirmation::Nack(_) => Routed::Refused,
        Confirmation::NotRequested => Routed::Unconfirmed,
    })
}

/// Publishes a copy of a readable `delivery` to `exchange` under its routing key; `Ok` only
/// once a queue has it.
async fn put_back(
    channel: &Channel,
    exchange: &str,
    delivery: &lapin::message::Delivery,
) -> Result<(), BrokerError> {
    let routed = publish_routed(
        channel,
        exchange,
        delivery.routing_key.as_str(),
        &delivery.data,
        delivery.properties.clone(),
    )
    .await?;
    match routed {
        Routed::Taken => Ok(()),
        _ => Err(BrokerError::DeadLetterRefused),
    }
}

/// How long [`reject_unreadable_head`] waits for the get's answer.
const UNREADABLE_GET_LIMIT: Duration = Duration::from_secs(2);

/// The leader's link: a consuming channel and a confirming channel for dead letters.
///
/// The consumer's prefetch (its window: how many deliveries the broker may have sent it
/// unacknowledged) can be changed while the link lives ([`ConsumerLink::rewindow`]). RabbitMQ
/// applies a `basic.qos` only to consumers started after it (and a channel-wide one only to
/// classic queues), so the consumer is cancelled and a new one started with the new prefetch, on
/// the same channel: deliveries already sent stay unacknowledged there, and delivery tags go on
/// from where they were, so nothing is delivered twice and one multiple-ack still covers them.
pub(crate) struct ConsumerLink {
    connection: Connection,
    /// The consumer being read: until it ends (cancelled), then its successor's.
    consumer: Consumer,
    /// `consumer` has ended (a lapin consumer answers nothing once it has said so).
    ended: bool,
    /// `consumer`'s prefetch.
    window: u16,
    /// The consumer that takes over once `consumer` has ended, with its prefetch: started by
    /// [`ConsumerLink::rewindow`] after cancelling `consumer`.
    successor: Option<(u16, JoinHandle<Result<Consumer, BrokerError>>)>,
    /// The prefetch last asked for, applied once the successor in flight has taken over.
    wanted: u16,
    /// Consumers started on this link, for their tags.
    started: u32,
    node: String,
    queue: String,
    consume_channel: Channel,
    dead_channel: Channel,
    dead_exchange: String,
}

impl ConsumerLink {
    pub(crate) async fn open(
        url: &str,
        node: &str,
        topology: &Topology,
        prefetch: u16,
    ) -> Result<ConsumerLink, BrokerError> {
        let connection = connect(url, &format!("pulseboard ingest {node}")).await?;
        let consume_channel = connection.create_channel().await?;
        topology.declare(&consume_channel).await?;
        let dead_channel = connection.create_channel().await?;
        dead_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let tag = consumer_tag(node, 0);
        let consumer = start_consumer(
            consume_channel.clone(),
            topology.events_queue.clone(),
            tag,
            prefetch,
        )
        .await?;
        Ok(ConsumerLink {
            connection,
            consumer,
            ended: false,
            window: prefetch,
            successor: None,
            wanted: prefetch,
            started: 1,
            node: node.to_owned(),
            queue: topology.events_queue.clone(),
            consume_channel,
            dead_channel,
            dead_exchange: topology.dead_exchange.clone(),
        })
    }

    /// The next delivery, in delivery-tag order across the consumers of the link; `None` when
    /// the broker cancelled the consumer. Cancel-safe.
    pub(crate) async fn next_delivery(
        &mut self,
    ) -> Option<Result<lapin::message::Delivery, BrokerError>> {
        loop {
            if !self.ended {
                match self.consumer.next().await {
                    Some(delivery) => return Some(delivery.map_err(BrokerError::from)),
                    None => self.ended = true,
                }
            }
            // Every delivery of the cancelled consumer came before the broker's cancel-ok,
            // hence before any of its successor's.
            let (window, successor) = self.successor.as_mut()?;
            let window = *window;
            let started = successor.await;
            self.successor = None;
            match started {
                Ok(Ok(consumer)) => {
                    self.consumer = consumer;
                    self.ended = false;
                    self.window = window;
                }
                Ok(Err(error)) => return Some(Err(error)),
                Err(error) => return Some(Err(BrokerError::Rewindow(error.to_string()))),
            }
            if self.wanted != self.window {
                self.start_successor();
            }
        }
    }

    /// How many deliveries the broker may have sent this link unacknowledged at most: the
    /// prefetch of the consumer being read, and of its successor once that is asked for.
    pub(crate) fn prefetch(&self) -> u16 {
        let successor = self.successor.as_ref().map_or(0, |(window, _)| *window);
        self.window.saturating_add(successor)
    }

    /// Consumes with `prefetch` from now on: the current consumer is cancelled and a new one
    /// started with it, in a task of its own; deliveries go on from the current consumer until
    /// the new one takes over.
    pub(crate) fn rewindow(&mut self, prefetch: u16) {
        self.wanted = prefetch;
        if self.successor.is_none() && prefetch != self.window {
            self.start_successor();
        }
    }

    fn start_successor(&mut self) {
        let cancelled = consumer_tag(&self.node, self.started - 1);
        let tag = consumer_tag(&self.node, self.started);
        self.started += 1;
        let channel = self.consume_channel.clone();
        let queue = self.queue.clone();
        let window = self.wanted;
        let started = tokio::spawn(async move {
            bounded(
                "stop consuming from",
                &queue,
                channel.basic_cancel(&cancelled, BasicCancelOptions::default()),
            )
            .await??;
            start_consumer(channel, queue, tag, window).await
        });
        self.successor = Some((window, started));
    }

    /// Acknowledges every delivery up to and including `tag`.
    pub(crate) async fn ack_through(&self, tag: u64) -> Result<(), BrokerError> {
        self.consume_channel
            .basic_ack(tag, lapin::options::BasicAckOptions { multiple: true })
            .await?;
        Ok(())
    }

    /// Publishes a copy of a refused message with its reason; await the returned confirm before
    /// acknowledging the original.
    pub(crate) async fn dead_letter(
        &self,
        message: &RawMessage,
        reason: &str,
        node: &str,
        now: Millis,
    ) -> Result<PublisherConfirm, BrokerError> {
        let mut marks = FieldTable::default();
        marks.insert(
            "x-pulseboard-reason".into(),
            AMQPValue::LongString(LongString::from(cut_at_char(reason, MAX_REASON_BYTES))),
        );
        marks.insert(
            "x-pulseboard-node".into(),
            AMQPValue::LongString(node.into()),
        );
        marks.insert(
            "x-pulseboard-rejected-at".into(),
            AMQPValue::LongLongInt(now),
        );
        let mut headers = self.copied_headers(message, encoded_table_size(&marks));
        for (key, value) in marks.inner() {
            headers.insert(key.clone(), value.clone());
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = self
            .dead_channel
            .basic_publish(
                &self.dead_exchange,
                &message.routing_key,
                BasicPublishOptions::default(),
                &message.body,
                properties,
            )
            .await?;
        Ok(confirm)
    }

    /// The original headers for a dead letter's copy, if they fit in one frame beside its
    /// marks of `marks_size` bytes; otherwise none but a note saying so (a content header is
    /// never split, and a frame too large for the broker would end the link and bring the
    /// message back forever).
    fn copied_headers(&self, message: &RawMessage, marks_size: usize) -> FieldTable {
        let Some(original) = &message.headers else {
            return FieldTable::default();
        };
        let size = encoded_table_size(original);
        let room = self.connection.configuration().frame_max() as usize;
        if size + marks_size + CONTENT_HEADER_ROOM <= room {
            return original.clone();
        }
        let mut headers = FieldTable::default();
        headers.insert(
            "x-pulseboard-headers-dropped".into(),
            AMQPValue::LongString(
                format!(
                    "the original headers ({size} bytes) do not fit one frame beside the reason"
                )
                .into(),
            ),
        );
        headers
    }

    /// Cancels consumption and closes: unacknowledged deliveries go back to the queue.
    pub(crate) async fn close(self) {
        if let Some((_, successor)) = &self.successor {
            successor.abort();
        }
        close(
            &self.connection,
            &[&self.consume_channel, &self.dead_channel],
        )
        .await;
    }
}

/// The tag of the `index`th consumer a link of `node` starts.
fn consumer_tag(node: &str, index: u32) -> String {
    match index {
        0 => format!("pulseboard-{node}"),
        _ => format!("pulseboard-{node}-{index}"),
    }
}

/// Starts consuming `queue` on `channel` with `prefetch` (applies to consumers started after it).
async fn start_consumer(
    channel: Channel,
    queue: String,
    tag: String,
    prefetch: u16,
) -> Result<Consumer, BrokerError> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consume = channel.basic_consume(
        &queue,
        &tag,
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    Ok(bounded("consume from", &queue, consume).await??)
}

/// Room a content header frame takes besides its headers: the frame's own bytes, the
/// header's fixed fields, delivery mode, the note that replaces dropped headers, and margin.
const CONTENT_HEADER_ROOM: usize = 256;
/// A dead letter's reason is cut to this (a reason quotes the event, which may be large).
const MAX_REASON_BYTES: usize = 512;

/// The longest start of `text` within `limit` bytes that ends on a character boundary.
pub(crate) fn cut_at_char(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Bytes `table` takes on the wire (AMQP 0-9-1 field table).
pub(crate) fn encoded_table_size(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(key, value)| 1 + key.as_str().len() + encoded_value_size(value))
        .sum::<usize>()
}

fn encoded_value_size(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(text) => 1 + text.as_str().len(),
        AMQPValue::LongString(text) => 4 + text.as_bytes().len(),
        AMQPValue::ByteArray(bytes) => 4 + bytes.as_slice().len(),
        AMQPValue::FieldArray(array) => {
            4 + array
                .as_slice()
                .iter()
                .map(encoded_value_size)
                .sum::<usize>()
        }
        AMQPValue::FieldTable(table) => encoded_table_size(table),
        AMQPValue::Void => 0,
    }
}

/// A server-named queue of this connection's own (exclusive, gone with it), bound to the fanout
/// `exchange`: where an instance receives what the others tell it. Returns its name.
pub async fn bind_private_queue(channel: &Channel, exchange: &str) -> Result<String, BrokerError> {
    bind_private_queue_for(channel, exchange, "").await
}

/// [`bind_private_queue`] with a binding key, for a topic exchange (`#`: every routing key).
pub async fn bind_private_queue_for(
    channel: &Channel,
    exchange: &str,
    binding_key: &str,
) -> Result<String, BrokerError> {
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
    let name = queue.name().as_str().to_owned();
    channel
        .queue_bind(
            &name,
            exchange,
            binding_key,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(name)
}

/// Publishes one event the way producers should (docs/api.md, Events): persistent, JSON. On a
/// channel in confirm mode, await the returned confirm to know the broker has it.
pub async fn publish_event(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> Result<PublisherConfirm, lapin::Error> {
    channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await
}

/// Connects, declares the topology once and disconnects: what `serve` checks at start, so that
/// a queue of the wrong type is reported before anything else runs.
pub(crate) async fn check_topology(urls: &str, topology: &Topology) -> Result<(), BrokerError> {
    let connection = connect(urls, "pulseboard start-up").await?;
    match connection.create_channel().await {
        Ok(channel) => {
            let declared = topology.declare(&channel).await;
            close(&connection, &[&channel]).await;
            declared
        }
        Err(error) => {
            close(&connection, &[]).await;
            Err(error.into())
        }
    }
}

/// What instances say to each other (see `fanout`): transient JSON messages whose properties
/// carry the kind, the sender and, for a question, where and how to answer.
pub(crate) struct InstanceMessage<'a> {
    pub kind: &'a str,
    pub sender: &'a str,
    pub headers: FieldTable,
    pub reply_to: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub body: &'a [u8],
}

/// Publishes without a confirm: what instances say to each other is superseded soon enough
/// (the next snapshot, beacon or retry) that waiting for the broker would buy nothing.
pub(crate) async fn publish_to_instances(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    message: InstanceMessage<'_>,
) -> Result<(), BrokerError> {
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_type(message.kind.into())
        .with_app_id(message.sender.into())
        .with_headers(message.headers);
    if let Some(reply_to) = message.reply_to {
        properties = properties.with_reply_to(reply_to.into());
    }
    if let Some(correlation) = message.correlation_id {
        properties = properties.with_correlation_id(correlation.into());
    }
    channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            message.body,
            properties,
        )
        .await?;
    Ok(())
}

/// Consumes an instance's own queue without acknowledgements: a message lost with the link is
/// one the fan-out tolerates losing.
pub async fn consume_without_acks(channel: &Channel, queue: &str) -> Result<Consumer, BrokerError> {
    let consumer = channel
        .basic_consume(
            queue,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(consumer)
}

/// Publishes one demo event, without a confirm: the demo's traffic may be lost with the link.
pub(crate) async fn publish_unconfirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> Result<(), BrokerError> {
    channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await?;
    Ok(())
}

/// Waits for the broker's verdict on a dead letter.
pub(crate) async fn confirmed(confirm: PublisherConfirm) -> Result<(), BrokerError> {
    match confirm.await? {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(BrokerError::DeadLetterRefused),
    }
}

/// One consumed message, as ingest sees it before decoding.
#[derive(Debug, Clone)]
pub(crate) struct RawMessage {
    pub body: Vec<u8>,
    pub routing_key: String,
    pub headers: Option<FieldTable>,
    pub arrived_at: Millis,
    /// Broker delivery tag; 0 for in-process (demo) messages that need no acknowledgement.
    pub tag: u64,
}

impl RawMessage {
    pub(crate) fn from_delivery(delivery: lapin::message::Delivery, arrived_at: Millis) -> Self {
        RawMessage {
            headers: delivery.properties.headers().clone(),
            routing_key: delivery.routing_key.to_string(),
            tag: delivery.delivery_tag,
            body: delivery.data,
            arrived_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{DecimalValue, FieldArray, ShortString};

    fn wire_size(table: &FieldTable) -> usize {
        let serialise = lapin::types::generation::gen_field_table(table);
        let (bytes, _) = cookie_factory::gen(serialise, Vec::new()).expect("serialise");
        bytes.len()
    }

    #[test]
    fn the_computed_size_of_a_table_is_its_size_on_the_wire() {
        let mut inner = FieldTable::default();
        inner.insert(
            "deeper".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        let values = vec![
            AMQPValue::Boolean(true),
            AMQPValue::ShortShortInt(-1),
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(-2),
            AMQPValue::ShortUInt(2),
            AMQPValue::LongInt(-3),
            AMQPValue::LongUInt(3),
            AMQPValue::LongLongInt(-4),
            AMQPValue::Float(1.5),
            AMQPValue::Double(2.5),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 314,
            }),
            AMQPValue::ShortString(ShortString::from("short")),
            AMQPValue::LongString("long é".into()),
            AMQPValue::Timestamp(7),
            AMQPValue::ByteArray(vec![1u8, 2, 3].into()),
            AMQPValue::Void,
            AMQPValue::FieldTable(inner.clone()),
        ];
        let mut table = FieldTable::default();
        for (index, value) in values.iter().enumerate() {
            table.insert(format!("k{index}").into(), value.clone());
        }
        table.insert(
            "array".into(),
            AMQPValue::FieldArray(FieldArray::from(values)),
        );
        assert_eq!(encoded_table_size(&table), wire_size(&table));
        assert_eq!(
            encoded_table_size(&FieldTable::default()),
            wire_size(&FieldTable::default())
        );
    }
}
