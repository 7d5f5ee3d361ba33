//! Where a leader's messages come from during one term: RabbitMQ (a consumer link that is
//! opened, lost and reopened with backoff; delivery tags belong to the link that issued them)
//! or the demo's in-process queue (nothing to acknowledge, nowhere to dead-letter).
//!
//! How many deliveries the broker may send the link before it acknowledges them (its window,
//! the consumer's prefetch) is the feed's [`Caution`]; the link applies it
//! ([`ConsumerLink::rewindow`]). Two things narrow it:
//!
//! - **Bodies.** The client reads everything the broker sends as fast as it comes and keeps it
//!   whole until it is taken, and RabbitMQ bounds what it sends by count only (it ignores a
//!   prefetch size): the window is what bounds the memory held. It is kept so that the window
//!   times the largest body seen lately stays within [`BODY_BUDGET_BYTES`]: a larger body
//!   narrows it at once (down to 1 for a body over the budget), and it doubles again after each
//!   window's worth of deliveries that leave room for it, up to the full prefetch. Every link
//!   opens at 1 and widens the same way, so a queue that filled with large bodies while no link
//!   read it is not sent whole to a new one.
//! - **Unreadable messages.** A message the client cannot parse ends the link before any code of
//!   ours sees it, and the broker delivers it again first. The next link opens with a prefetch
//!   of exactly the deliveries the lost link had received but not acknowledged (messages that
//!   came before the unreadable one), then with a prefetch of 1, so that a link of prefetch 1
//!   that dies this way proves the unreadable message is at the head of the queue; that
//!   message is then rejected to the dead-letter queue ([`reject_unreadable_head`]). Such a
//!   window widens only after twice its size, past where the message was.
//!
//! What the broker sent before the window narrowed is received all the same: the bound is the
//! window in force when a body was sent, times that body (docs/security.md, Oversized bodies).

use super::IngestContext;
use crate::aggregate::Millis;
use crate::clock::now_ms;
use crate::config::QueueType;
use crate::core::Core;
use crate::rabbitmq::{
    is_unreadable, reject_unreadable_head, BrokerError, ConsumerLink, HeadRejected, RawMessage,
};
use crate::retry::Backoff;
use lapin::publisher_confirm::PublisherConfirm;
use secrecy::ExposeSecret;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How soon a link that died on an unreadable message is replaced.
const UNREADABLE_RETRY: Duration = Duration::from_millis(100);

/// Bytes of message bodies a link may be sent before it acknowledges them, reckoned as the
/// window times the largest body seen lately: the full prefetch (10 000) of events up to
/// 1.6 KiB, 256 at SPEC's 64 KiB limit, one at a time over 16 MiB.
const BODY_BUDGET_BYTES: usize = 16 * 1024 * 1024;

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
    /// How wide the link consumes, and how the next one opens.
    caution: Caution,
    /// The configured prefetch: the widest window.
    full: u16,
    /// The last delivery tag received, and the last acknowledged, on the current link (a
    /// channel numbers its deliveries from 1).
    received: u64,
    acknowledged: u64,
}

/// How wide the link consumes (see the module's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caution {
    /// Full prefetch.
    None,
    /// Fewer deliveries at once than the full prefetch.
    Narrow(Window),
    /// The message at the head of the queue is unreadable: reject it before the next link.
    RejectHead,
}

/// A window narrower than the full prefetch, and when it may widen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// Deliveries the broker may send before they are acknowledged.
    size: u16,
    /// The window is looked at again once `calm` deliveries came after the one of tag `from`
    /// (0 on a new link).
    from: u64,
    calm: u64,
    /// The largest body received since it was last looked at, bytes.
    largest: usize,
}

impl Window {
    fn new(size: u16, from: u64, calm: u64) -> Window {
        Window {
            size,
            from,
            calm,
            largest: 0,
        }
    }
}

/// How many bodies of `bytes` fit [`BODY_BUDGET_BYTES`]: at least 1, at most `full`.
fn fitting(bytes: usize, full: u16) -> u16 {
    let fit = BODY_BUDGET_BYTES / bytes.max(1);
    u16::try_from(fit).unwrap_or(u16::MAX).clamp(1, full.max(1))
}

impl Caution {
    /// After a link of `prefetch` died on an unreadable delivery, having received `outstanding`
    /// readable ones it had not acknowledged yet (those came before the unreadable one).
    fn after_unreadable(prefetch: u16, outstanding: u64) -> Caution {
        let window = if prefetch == 1 && outstanding == 0 {
            return Caution::RejectHead;
        } else if prefetch == 1 {
            // The broker cannot have sent another delivery beside the one held: the failure
            // was elsewhere; try again as narrow.
            1
        } else {
            u16::try_from(outstanding.max(1)).unwrap_or(u16::MAX)
        };
        // Twice the window: a link that received that many has gone past where the message
        // was (the broker took it out meanwhile, by its delivery limit).
        Caution::Narrow(Window::new(window, 0, 2 * u64::from(window)))
    }

    /// How the next link opens, and whether the head of the queue is to be rejected first.
    fn opening(self, quorum: bool, full: u16) -> (Caution, bool) {
        match self {
            Caution::None => (Caution::ramp(full), false),
            // Its deliveries are numbered afresh.
            Caution::Narrow(window) => (
                Caution::Narrow(Window {
                    from: 0,
                    size: window.size.min(full),
                    ..window
                }),
                false,
            ),
            // A quorum queue with a single active consumer refuses `basic.get`; its delivery
            // limit takes the message out instead, after the failures of links that take
            // nothing else (so no other message's delivery count grows meanwhile).
            Caution::RejectHead if quorum => (Caution::Narrow(Window::new(1, 0, 2)), false),
            // One attempt per proof, whatever becomes of it: should the link then fail to
            // open, the next must not reject the head again (it is a readable message now).
            // Should the reject itself have failed, the message ends the next link, and is
            // found again.
            Caution::RejectHead => (Caution::ramp(full), true),
        }
    }

    /// A new link's window: 1, doubling from its first delivery.
    fn ramp(full: u16) -> Caution {
        if full <= 1 {
            Caution::None
        } else {
            Caution::Narrow(Window::new(1, 0, 1))
        }
    }

    /// The prefetch a link consumes with under this caution.
    fn prefetch(&self, full: u16) -> u16 {
        match self {
            Caution::Narrow(window) => window.size,
            Caution::None | Caution::RejectHead => full,
        }
    }

    /// After the delivery of tag `tag` with a body of `bytes`: the prefetch to consume with
    /// from now on, if it changes.
    fn after_delivery(&mut self, tag: u64, bytes: usize, full: u16) -> Option<u16> {
        let fits = fitting(bytes, full);
        let window = match self {
            Caution::None if fits < full => {
                *self = Caution::Narrow(Window::new(fits, tag, u64::from(fits)));
                return Some(fits);
            }
            Caution::Narrow(window) => window,
            Caution::None | Caution::RejectHead => return None,
        };
        if fits < window.size {
            // Not before the window looked at last was due: past an unreadable message.
            let due = (window.from + window.calm).saturating_sub(tag);
            *window = Window::new(fits, tag, due.max(u64::from(fits)));
            window.largest = bytes;
            return Some(fits);
        }
        window.largest = window.largest.max(bytes);
        if tag < window.from + window.calm {
            return None;
        }
        let wider = window.size.saturating_mul(2).min(full);
        if fitting(window.largest, full) < wider {
            // Stays: looked at again after another window's worth.
            *window = Window::new(window.size, tag, u64::from(window.size));
            return None;
        }
        *self = if wider == full {
            Caution::None
        } else {
            Caution::Narrow(Window::new(wider, tag, u64::from(wider)))
        };
        Some(wider)
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
            full: 1,
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
                match link.next_delivery().await {
                    Some(Ok(delivery)) => {
                        let (tag, bytes) = (delivery.delivery_tag, delivery.data.len());
                        broker.received = tag;
                        let was = broker.caution.prefetch(broker.full);
                        if let Some(window) = broker.caution.after_delivery(tag, bytes, broker.full)
                        {
                            say_window(window, bytes, was);
                            link.rewindow(window);
                        }
                        FeedItem::Message(RawMessage::from_delivery(delivery, now_ms()))
                    }
                    Some(Err(BrokerError::Amqp(error))) if is_unreadable(&error) => {
                        let prefetch = link.prefetch();
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
        broker.full = settings.prefetch;
        let (caution, reject_head) = broker.caution.opening(quorum, broker.full);
        broker.caution = caution;
        let prefetch = caution.prefetch(broker.full);
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

/// Logs a change of window: a narrowing for a body, which an operator may want to know of, at
/// INFO; the widening of every new link, at DEBUG.
fn say_window(window: u16, bytes: usize, was: u16) {
    if window < was {
        tracing::info!(
            window,
            bytes,
            budget = BODY_BUDGET_BYTES,
            "a large message body: consuming fewer messages at once"
        );
    } else {
        tracing::debug!(window, "consuming more messages at once");
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
    use super::{fitting, Caution, Window, BODY_BUDGET_BYTES};

    const FULL: u16 = 10_000;
    const SMALL: usize = 300;

    fn narrow(size: u16, from: u64, calm: u64) -> Caution {
        Caution::Narrow(Window::new(size, from, calm))
    }

    /// Feeds deliveries of `bytes` from tag `from` on; returns the last tag and every window
    /// asked for.
    fn deliver(caution: &mut Caution, from: u64, bodies: &[usize]) -> (u64, Vec<u16>) {
        let mut asked = Vec::new();
        let mut tag = from;
        for &bytes in bodies {
            tag += 1;
            asked.extend(caution.after_delivery(tag, bytes, FULL));
        }
        (tag, asked)
    }

    #[test]
    fn a_wide_link_that_fails_is_narrowed_to_what_it_had_not_acknowledged() {
        assert_eq!(Caution::after_unreadable(10_000, 37), narrow(37, 0, 74));
        // Nothing outstanding: the unreadable message came first.
        assert_eq!(Caution::after_unreadable(10_000, 0), narrow(1, 0, 2));
        assert_eq!(
            Caution::after_unreadable(37, 100_000),
            narrow(u16::MAX, 0, 2 * u64::from(u16::MAX))
        );
    }

    #[test]
    fn a_link_of_one_that_fails_holding_nothing_proves_the_head_unreadable() {
        assert_eq!(Caution::after_unreadable(1, 0), Caution::RejectHead);
        // Holding one, it cannot have been sent another: the head is the one held.
        assert_eq!(Caution::after_unreadable(1, 1), narrow(1, 0, 2));
    }

    #[test]
    fn a_window_narrowed_for_an_unreadable_message_widens_only_past_twice_its_size() {
        let mut caution = Caution::after_unreadable(FULL, 3);
        let (tag, asked) = deliver(&mut caution, 0, &[SMALL; 5]);
        assert!(asked.is_empty(), "{asked:?}");
        assert_eq!(caution.after_delivery(tag + 1, SMALL, FULL), Some(6));
    }

    #[test]
    fn every_link_opens_at_one_and_doubles_with_each_window_of_small_bodies() {
        let (mut caution, reject) = Caution::None.opening(false, FULL);
        assert!(!reject);
        assert_eq!(caution.prefetch(FULL), 1);
        let (_, asked) = deliver(&mut caution, 0, &[SMALL; 20_000]);
        assert_eq!(
            asked,
            [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, FULL]
        );
        assert_eq!(caution, Caution::None);
    }

    #[test]
    fn a_body_over_the_budget_narrows_the_window_to_one_until_a_window_passes_without_one() {
        let large = 30 << 20;
        let mut caution = Caution::None;
        assert_eq!(caution.after_delivery(7, large, FULL), Some(1));
        // The large bodies the broker had sent already, and those behind them, one at a time.
        let (tag, asked) = deliver(&mut caution, 7, &[large; 39]);
        assert!(asked.is_empty(), "{asked:?}");
        assert_eq!(caution.prefetch(FULL), 1);
        let (_, asked) = deliver(&mut caution, tag, &[SMALL; 3]);
        assert_eq!(asked, [2, 4]);
    }

    #[test]
    fn bodies_are_held_within_the_budget_and_the_window_settles_where_they_fit() {
        let bytes = 4_096;
        let mut caution = Caution::None;
        let fits = fitting(bytes, FULL);
        assert_eq!(usize::from(fits), BODY_BUDGET_BYTES / bytes);
        assert_eq!(caution.after_delivery(1, bytes, FULL), Some(fits));
        let (_, asked) = deliver(&mut caution, 1, &[bytes; 50_000]);
        assert!(asked.is_empty(), "{asked:?}");
        assert_eq!(caution.prefetch(FULL), fits);
        // Smaller bodies later: the window grows back to the full prefetch.
        let (_, asked) = deliver(&mut caution, 50_001, &[SMALL; 20_000]);
        assert_eq!(asked, [8_192, FULL]);
    }

    #[test]
    fn a_large_body_does_not_let_a_window_widen_before_an_unreadable_message_is_past() {
        let mut caution = Caution::after_unreadable(FULL, 64);
        assert_eq!(caution.after_delivery(1, 1 << 20, FULL), Some(16));
        // Not before tag 128, where the unreadable window would have widened; and the large
        // body came in that period, so one more window of small ones.
        let (tag, asked) = deliver(&mut caution, 1, &[SMALL; 127 + 15]);
        assert!(asked.is_empty(), "{asked:?}");
        assert_eq!(caution.after_delivery(tag + 1, SMALL, FULL), Some(32));
    }

    #[test]
    fn a_new_link_keeps_the_window_and_numbers_from_zero() {
        let mut caution = Caution::None;
        caution.after_delivery(500, 1 << 20, FULL);
        let (caution, _) = caution.opening(false, FULL);
        assert_eq!(caution, narrow(16, 0, 16));
    }

    #[test]
    fn an_unreadable_head_is_rejected_once_and_then_the_link_ramps() {
        assert_eq!(
            Caution::RejectHead.opening(false, FULL),
            (narrow(1, 0, 1), true)
        );
        // A quorum queue's delivery limit takes it out: links of one meanwhile.
        assert_eq!(
            Caution::RejectHead.opening(true, FULL),
            (narrow(1, 0, 2), false)
        );
    }
}
