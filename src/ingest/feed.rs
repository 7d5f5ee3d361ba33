//! Where a leader's messages come from during one term: RabbitMQ (a consumer link that is
//! opened, lost and reopened with backoff; delivery tags belong to the link that issued them)
//! or the demo's in-process queue (nothing to acknowledge, nowhere to dead-letter).
//!
//! A message the client cannot parse ends the link before any code of ours sees it, and the
//! broker delivers it again first. The feed narrows the next link to find it
//! ([`Caution`]): it opens with a prefetch of exactly the deliveries the lost link had
//! received but not acknowledged (messages that came before the unreadable one), then with a
//! prefetch of 1, so that a link of prefetch 1 that dies this way proves the unreadable
//! message is at the head of the queue; that message is then rejected to the dead-letter
//! queue ([`reject_unreadable_head`]) and consumption goes on at full prefetch.

use super::IngestContext;
use crate::aggregate::Millis;
use crate::clock::now_ms;
use crate::config::QueueType;
use crate::core::Core;
use crate::rabbitmq::{
    is_unreadable, reject_unreadable_head, BrokerError, ConsumerLink, HeadRejected, RawMessage,
};
use crate::retry::Backoff;
use futures_util::StreamExt;
use lapin::publisher_confirm::PublisherConfirm;
use secrecy::ExposeSecret;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How soon a link that died on an unreadable message is replaced.
const UNREADABLE_RETRY: Duration = Duration::from_millis(100);

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
    /// How the next link opens after one died on a message the client could not parse.
    caution: Caution,
    /// The last delivery tag received, and the last acknowledged, on the current link (a
    /// channel numbers its deliveries from 1).
    received: u64,
    acknowledged: u64,
}

/// How the feed finds a message the client cannot parse (see the module's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caution {
    /// Full prefetch.
    None,
    /// The next link, and the current one, take at most this many deliveries at once.
    Narrow(u16),
    /// The message at the head of the queue is unreadable: reject it before the next link.
    RejectHead,
}

impl Caution {
    /// After a link of `prefetch` died on an unreadable delivery, having received `outstanding`
    /// readable ones it had not acknowledged yet (those came before the unreadable one).
    fn after_unreadable(prefetch: u16, outstanding: u64) -> Caution {
        if prefetch == 1 && outstanding == 0 {
            Caution::RejectHead
        } else if prefetch == 1 {
            // The broker cannot have sent another delivery beside the one held: the failure
            // was elsewhere; try again as narrow.
            Caution::Narrow(1)
        } else {
            Caution::Narrow(u16::try_from(outstanding.max(1)).unwrap_or(u16::MAX))
        }
    }

    /// A narrowed link that acknowledged twice its window without failing has gone past where
    /// the unreadable message was (the broker took it out meanwhile, by its delivery limit):
    /// full prefetch again.
    fn widens_after(&self, acknowledged: u64) -> bool {
        matches!(self, Caution::Narrow(window) if acknowledged > 2 * u64::from(*window))
    }
}

/// Whether ingest consumes, in the status and `pulseboard_ingest_up`, with the last error.
pub(super) fn report_link(core: &Core, connected: bool, error: Option<String>) {
    core.metrics.ingest_up.set(i64::from(connected));
    core.status.update_ingest(|s| {
        s.consumer.connected = connected;
        s.term_connecting = false;
        if error.is_some() {
            s.consumer.last_error = error;
        }
    });
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
            caution: Caution::None,
            received: 0,
            acknowledged: 0,
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
                            broker.received = 0;
                            broker.acknowledged = 0;
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
                        broker.received = delivery.delivery_tag;
                        FeedItem::Message(RawMessage::from_delivery(delivery, now_ms()))
                    }
                    Some(Err(error)) if is_unreadable(&error) => {
                        let prefetch = link.prefetch;
                        broker.caution = Caution::after_unreadable(
                            prefetch,
                            broker.received.saturating_sub(broker.acknowledged),
                        );
                        tracing::warn!(%error, prefetch, caution = ?broker.caution,
                            "RabbitMQ delivered a message the client cannot parse");
                        let lost =
                            broker.drop_link(format!("a message the client cannot parse: {error}"));
                        // Not an outage: each new link gets closer to the message.
                        broker.retry_at = Instant::now() + UNREADABLE_RETRY;
                        lost
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
        let metrics = context.core.metrics.clone();
        let node = context.core.node.clone();
        let quorum = settings.topology.queue_type == QueueType::Quorum;
        let (reject_head, prefetch) = match broker.caution {
            Caution::None => (false, settings.prefetch),
            Caution::Narrow(window) => (false, window.min(settings.prefetch)),
            // A quorum queue with a single active consumer refuses `basic.get`; its delivery
            // limit takes the message out instead, after the failures of links that take
            // nothing else (so no other message's delivery count grows meanwhile).
            Caution::RejectHead if quorum => {
                broker.caution = Caution::Narrow(1);
                (false, 1)
            }
            // One attempt per proof, whatever becomes of it: should the link then fail to
            // open, the next must not reject the head again (it is a readable message now).
            // Should the reject itself have failed, the message ends the next link, and is
            // found again.
            Caution::RejectHead => {
                broker.caution = Caution::None;
                (true, settings.prefetch)
            }
        };
        broker.connecting = Some(tokio::spawn(async move {
            let url = settings.amqp_url.expose_secret();
            if reject_head {
                let name = format!("pulseboard reject-unreadable {node}");
                let queue = &settings.topology.events_queue;
                match reject_unreadable_head(url, &name, &settings.topology).await? {
                    HeadRejected::Unreadable => {
                        metrics.count_event("unknown", "rejected");
                        tracing::warn!(%queue, "dead-lettered a message the client cannot parse \
                            (reason: unreadable; the broker's x-death says rejected)");
                    }
                    // Readable: dead-lettered, and a copy put back; or nothing there.
                    outcome => tracing::warn!(%queue, ?outcome,
                        "the message the client could not parse was gone from the head"),
                }
            }
            ConsumerLink::open(url, &node, &settings.topology, prefetch).await
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

    pub(super) async fn ack_through(&mut self, tag: u64) -> Result<(), BrokerError> {
        let Feed::Broker(broker) = self else {
            return Ok(());
        };
        let Some(link) = &broker.link else {
            return Ok(());
        };
        link.ack_through(tag).await?;
        broker.acknowledged = broker.acknowledged.max(tag);
        if broker.caution.widens_after(broker.acknowledged) && broker.received == tag {
            // Nothing outstanding: reopen at full prefetch, at once.
            tracing::info!("past the unreadable message: consuming at full prefetch again");
            broker.caution = Caution::None;
            let _ = broker.drop_link("reopening at full prefetch".into());
            broker.retry_at = Instant::now();
        }
        Ok(())
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

    /// Drops the broker link after a failure, and says so (status, `pulseboard_ingest_up`).
    pub(super) fn fail(&mut self, core: &Core, error: BrokerError) {
        let message = error.to_string();
        self.lose(error);
        report_link(core, false, Some(message));
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

#[cfg(test)]
mod tests {
    use super::Caution;

    #[test]
    fn a_wide_link_that_fails_is_narrowed_to_what_it_had_not_acknowledged() {
        assert_eq!(Caution::after_unreadable(10_000, 37), Caution::Narrow(37));
        // Nothing outstanding: the unreadable message came first.
        assert_eq!(Caution::after_unreadable(10_000, 0), Caution::Narrow(1));
        assert_eq!(
            Caution::after_unreadable(37, 100_000),
            Caution::Narrow(u16::MAX)
        );
    }

    #[test]
    fn a_link_of_one_that_fails_holding_nothing_proves_the_head_unreadable() {
        assert_eq!(Caution::after_unreadable(1, 0), Caution::RejectHead);
        // Holding one, it cannot have been sent another: the head is the one held.
        assert_eq!(Caution::after_unreadable(1, 1), Caution::Narrow(1));
    }

    #[test]
    fn a_narrow_link_widens_only_past_twice_its_window() {
        assert!(!Caution::Narrow(3).widens_after(6));
        assert!(Caution::Narrow(3).widens_after(7));
        assert!(!Caution::None.widens_after(1_000_000));
        assert!(!Caution::RejectHead.widens_after(1_000_000));
    }
}
