//! Where a leader's messages come from during one term: RabbitMQ (a consumer link that is
//! opened, lost and reopened with backoff; delivery tags belong to the link that issued them)
//! or the demo's in-process queue (nothing to acknowledge, nowhere to dead-letter).

use super::IngestContext;
use crate::aggregate::Millis;
use crate::clock::now_ms;
use crate::rabbitmq::{BrokerError, ConsumerLink, RawMessage};
use crate::retry::Backoff;
use futures_util::StreamExt;
use lapin::publisher_confirm::PublisherConfirm;
use secrecy::ExposeSecret;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub(super) enum FeedItem {
    Message(RawMessage),
    Connected,
    Lost(String),
}

/// Where messages come from during this term.
pub(super) enum Feed<'r> {
    Broker(Box<BrokerFeed>),
    /// The demo's in-process queue: nothing to acknowledge, nowhere to dead-letter.
    Local(&'r mut mpsc::Receiver<RawMessage>),
}

pub(super) struct BrokerFeed {
    link: Option<ConsumerLink>,
    /// Counts links opened: delivery tags are only meaningful on the link that issued them.
    generation: u64,
    connecting: Option<JoinHandle<Result<ConsumerLink, BrokerError>>>,
    retry_at: Instant,
    backoff: Backoff,
    /// Paused by an operator: no link, and none opened until resumed.
    suspended: bool,
}

impl BrokerFeed {
    pub(super) fn new() -> Self {
        BrokerFeed {
            link: None,
            generation: 0,
            connecting: None,
            retry_at: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(10)),
            suspended: false,
        }
    }
}

impl Feed<'_> {
    /// The next message or link change. Cancel-safe: dropping the future loses nothing.
    pub(super) async fn next(&mut self) -> FeedItem {
        match self {
            Feed::Local(receiver) => match receiver.recv().await {
                Some(message) => FeedItem::Message(message),
                None => std::future::pending().await,
            },
            Feed::Broker(broker) => {
                if let Some(connecting) = &mut broker.connecting {
                    let result = connecting.await;
                    broker.connecting = None;
                    return match result {
                        Ok(Ok(link)) => {
                            broker.backoff.reset();
                            broker.link = Some(link);
                            broker.generation += 1;
                            FeedItem::Connected
                        }
                        Ok(Err(error)) => broker.failed(error.to_string()),
                        Err(error) => broker.failed(error.to_string()),
                    };
                }
                let Some(link) = &mut broker.link else {
                    return std::future::pending().await;
                };
                match link.consumer.next().await {
                    Some(Ok(delivery)) => {
                        FeedItem::Message(RawMessage::from_delivery(delivery, now_ms()))
                    }
                    Some(Err(error)) => broker.drop_link(error.to_string()),
                    None => broker.drop_link("the broker cancelled the consumer".into()),
                }
            }
        }
    }

    pub(super) fn link_generation(&self) -> u64 {
        match self {
            Feed::Local(_) => 0,
            Feed::Broker(broker) => broker.generation,
        }
    }

    pub(super) fn connected(&self) -> bool {
        match self {
            Feed::Local(_) => true,
            Feed::Broker(broker) => broker.link.is_some(),
        }
    }

    pub(super) fn maybe_connect(&mut self, context: &IngestContext) {
        let Feed::Broker(broker) = self else { return };
        if broker.suspended
            || broker.link.is_some()
            || broker.connecting.is_some()
            || Instant::now() < broker.retry_at
        {
            return;
        }
        let settings = context.settings.clone();
        broker.connecting = Some(tokio::spawn(async move {
            ConsumerLink::open(
                settings.amqp_url.expose_secret(),
                &settings.node,
                &settings.topology,
                settings.prefetch,
            )
            .await
        }));
    }

    pub(super) async fn dead_letter(
        &self,
        message: &RawMessage,
        reason: &str,
        node: &str,
        now: Millis,
    ) -> Result<Option<PublisherConfirm>, BrokerError> {
        match self.link() {
            Some(link) => link.dead_letter(message, reason, node, now).await.map(Some),
            None => Ok(None),
        }
    }

    pub(super) async fn ack_through(&self, tag: u64) -> Result<(), BrokerError> {
        match self.link() {
            Some(link) => link.ack_through(tag).await,
            None => Ok(()),
        }
    }

    fn link(&self) -> Option<&ConsumerLink> {
        match self {
            Feed::Broker(broker) => broker.link.as_ref(),
            Feed::Local(_) => None,
        }
    }

    /// Drops the broker link after a failure; the next tick reconnects after a backoff.
    pub(super) fn lose(&mut self, error: BrokerError) {
        if let Feed::Broker(broker) = self {
            tracing::warn!(%error, "RabbitMQ link failed");
            let _ = broker.drop_link(error.to_string());
        }
    }

    /// Stops consuming until [`Feed::resume`]: the link is closed, so unacknowledged
    /// deliveries go back to the queue and new messages stay there. (The in-process demo queue
    /// is simply not read meanwhile.)
    pub(super) async fn suspend(&mut self) {
        if let Feed::Broker(broker) = self {
            broker.suspended = true;
            if let Some(connecting) = broker.connecting.take() {
                connecting.abort();
            }
            if let Some(link) = broker.link.take() {
                link.close().await;
            }
        }
    }

    pub(super) fn resume(&mut self) {
        if let Feed::Broker(broker) = self {
            broker.suspended = false;
            broker.retry_at = Instant::now();
        }
    }

    pub(super) async fn close(self) {
        if let Feed::Broker(mut broker) = self {
            if let Some(connecting) = broker.connecting.take() {
                connecting.abort();
            }
            if let Some(link) = broker.link.take() {
                link.close().await;
            }
        }
    }
}

impl BrokerFeed {
    fn failed(&mut self, error: String) -> FeedItem {
        self.retry_at = Instant::now() + self.backoff.next_delay();
        FeedItem::Lost(error)
    }

    fn drop_link(&mut self, error: String) -> FeedItem {
        if let Some(link) = self.link.take() {
            tokio::spawn(link.close());
        }
        self.failed(error)
    }
}
