//! Between instances, through RabbitMQ's `<prefix>.live` fanout exchange: snapshots (from the
//! leader), announcements (from whichever instance took them), refresh requests (to the
//! leader), and for the console (see `control`): beacons, requests every instance answers (to
//! the asker's own queue, by the default exchange, with the request's correlation id), audit
//! entries and the leader's sampled event tail; and sign-outs, so that every instance ends the
//! connections of a session signed out on one. The message `type` property says which
//! (`core::outbox::Kind`), and each kind's body has its own type, parsed only after the seal is
//! checked. The tag stays in that property rather than in a tagged JSON envelope: the seal
//! covers it, a receiver can refuse a message before parsing anything, and instances of two
//! versions keep understanding each other through a rolling upgrade.
//!
//! Senders never block: a full queue drops the message. That is safe for each kind: the next
//! snapshot or the 1 s rebroadcast supersedes a snapshot, a hub fills any announcement gap from
//! the store, and a refresh caller times out. Every instance runs [`run`]: one connection
//! (reconnecting with backoff), publishing what this instance sends, consuming everything from
//! an exclusive queue into its [`Hub`](crate::live::Hub), and polling the depths of the events and dead-letter
//! queues for status and metrics. On every (re)connect the hub catches up on announcements
//! from the store.
//!
//! Anyone who may publish to `<prefix>.live` could speak as an instance, so every message is
//! sealed ([`seal`]) and a receiver believes nothing of one before its seal and freshness are
//! checked; refused ones are counted (`pulseboard_fanout_rejected_total{reason}`) and logged at
//! most once per [`REJECTION_LOG_EVERY`]. What a receiver hands on is re-encoded from the
//! parsed value, never the bytes received: snapshots by the service's own encoder, audit and
//! event rows as JSON objects it encodes again, and announcements read from the store (the
//! message only says that there is a new one). A snapshot's `seq` must be one the store has
//! reserved, so that no message, however sealed, can hold every dashboard on a seq no leader
//! will reach.

pub mod seal;

use crate::clock::now_ms;
use crate::control::{Answer, Beacon, Request, BEACON_EVERY};
use crate::core::outbox::{Kind, Outgoing, SignOut};
use crate::core::Core;
use crate::live::{Announcement, Snapshot, SnapshotFrame};
use crate::rabbitmq::{
    bind_private_queue, connect, consume_without_acks, publish_to_instances, BrokerError,
    InstanceMessage, Topology,
};
use crate::retry::Backoff;
use crate::store::{Store, StoreError};
use futures_util::StreamExt;
use lapin::types::{AMQPValue, FieldTable};
use seal::{Fields, Freshness, LogGate, NonceClock, Rejection, SealKey};
use secrecy::ExposeSecret;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const OLDEST_ARRIVAL_HEADER: &str = "x-oldest-arrival";
const DEPTH_POLL: Duration = Duration::from_secs(2);
/// At most one log line per interval about refused messages (the counter has them all).
pub(crate) const REJECTION_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the fan-out needs besides the core, fixed at start.
pub(crate) struct FanoutSettings {
    pub amqp_url: secrecy::SecretString,
    pub topology: Topology,
    /// Seals what this instance sends and checks what it receives.
    pub seal: SealKey,
    /// How far a message's nonce may be from this instance's clock (`PULSEBOARD_FANOUT_WINDOW_SECS`).
    pub window: Duration,
}

/// The core and the settings, as every part of the link reads them.
struct FanoutContext {
    core: Arc<Core>,
    settings: FanoutSettings,
}

/// What the link keeps across reconnects to seal and check messages.
struct Seals {
    key: SealKey,
    nonces: NonceClock,
    freshness: Freshness,
    log: LogGate,
    ceiling: SeqCeiling,
}

impl Seals {
    fn new(context: &FanoutContext) -> Seals {
        Seals {
            key: context.settings.seal.clone(),
            nonces: NonceClock::default(),
            freshness: Freshness::new(context.settings.window),
            log: LogGate::new(REJECTION_LOG_EVERY),
            ceiling: SeqCeiling::default(),
        }
    }
}

/// Runs until `shutdown`, reconnecting after every failure.
pub(crate) async fn run(
    core: Arc<Core>,
    settings: FanoutSettings,
    mut outgoing: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let context = FanoutContext { core, settings };
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let seals = Seals::new(&context);
    while !shutdown.is_cancelled() {
        let result = session(&context, &seals, &mut outgoing, &shutdown, &mut backoff).await;
        context
            .core
            .status
            .update_fanout(|s| s.link.connected = false);
        match result {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, "snapshot fan-out link down; reconnecting");
                context
                    .core
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
    seals: &Seals,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), BrokerError> {
    let connection = connect(
        context.settings.amqp_url.expose_secret(),
        &format!("pulseboard live {}", context.core.node),
    )
    .await?;
    let channel = connection.create_channel().await?;
    context.settings.topology.declare(&channel).await?;
    let own_queue = bind_private_queue(&channel, &context.settings.topology.live_exchange).await?;
    let mut incoming = consume_without_acks(&channel, &own_queue).await?;
    let depth_channel = connection.create_channel().await?;
    backoff.reset();
    context
        .core
        .status
        .update_fanout(|s| s.link.connected = true);
    tracing::info!("snapshot fan-out connected");
    if let Err(error) = context.core.catch_up_announcements().await {
        tracing::warn!(%error, "could not catch up on announcements");
    }

    let mut depth_tick = tokio::time::interval(DEPTH_POLL);
    let mut beacon_tick = tokio::time::interval(BEACON_EVERY);
    let mut consoles = context.core.registry.watch_consoles();
    let link = Link {
        context,
        seals,
        channel: &channel,
        own_queue: &own_queue,
    };
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let mut leaving = context.core.beacon();
                leaving.leaving = true;
                let _ = link.send_beacon(&leaving).await;
                break Ok(());
            }
            delivery = incoming.next() => match delivery {
                Some(Ok(delivery)) => link.receive(&delivery).await?,
                Some(Err(error)) => break Err(error.into()),
                None => break Err(BrokerError::Amqp(lapin::Error::InvalidChannelState(
                    lapin::ChannelState::Closed,
                ))),
            },
            message = outgoing.recv() => {
                let Some(message) = message else { break Ok(()) };
                link.publish(&message).await?;
            }
            _ = depth_tick.tick() => poll_depths(context, &depth_channel).await?,
            _ = beacon_tick.tick() => {
                // Also the clock of presence: an instance that went silent sends nothing that
                // would drop its operators once they are past `PRESENT_WITHIN`.
                context.core.refresh_presence();
                link.send_beacon(&context.core.beacon()).await?;
            }
            Ok(()) = consoles.changed() => {
                context.core.refresh_presence();
                link.send_beacon(&context.core.beacon()).await?;
            }
        }
    };
    crate::rabbitmq::close(&connection, &[&channel, &depth_channel]).await;
    outcome
}

/// One message on its way out: what its seal covers besides the sender and the nonce.
struct Outbound<'a> {
    kind: Kind,
    body: &'a [u8],
    reply_to: Option<&'a str>,
    correlation: Option<&'a str>,
    oldest_arrival: Option<i64>,
}

impl<'a> Outbound<'a> {
    fn new(kind: Kind, body: &'a [u8]) -> Outbound<'a> {
        Outbound {
            kind,
            body,
            reply_to: None,
            correlation: None,
            oldest_arrival: None,
        }
    }

    /// A request: answers go to `reply_to` and carry `correlation` back.
    fn asking(mut self, reply_to: &'a str, correlation: &'a str) -> Outbound<'a> {
        self.reply_to = Some(reply_to);
        self.correlation = Some(correlation);
        self
    }

    /// An answer to the request of that `correlation`.
    fn answering(mut self, correlation: &'a str) -> Outbound<'a> {
        self.correlation = Some(correlation);
        self
    }

    /// A snapshot, with the arrival time of the oldest event it includes (delivery latency).
    fn arrived(mut self, oldest_arrival: Option<i64>) -> Outbound<'a> {
        self.oldest_arrival = oldest_arrival;
        self
    }
}

/// A message body as JSON. Every body is plain data (strings, numbers, tagged enums of them), for
/// which serializing cannot fail: the empty body of the fallback is never sent in practice.
fn encoded<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A message whose seal and freshness were checked: the only way anything of it is read.
struct Opened<'a> {
    kind: Kind,
    node: &'a str,
    oldest_arrival: Option<i64>,
    body: &'a [u8],
}

/// One connection's channel, with what sealing and checking need.
struct Link<'a> {
    context: &'a FanoutContext,
    seals: &'a Seals,
    channel: &'a lapin::Channel,
    own_queue: &'a str,
}

impl Link<'_> {
    async fn publish(&self, message: &Outgoing) -> Result<(), BrokerError> {
        let exchange = &self.context.settings.topology.live_exchange;
        let kind = message.kind();
        match message {
            Outgoing::Snapshot(frame) => {
                let outbound =
                    Outbound::new(kind, frame.json.as_bytes()).arrived(frame.oldest_arrival);
                self.send(exchange, "", &outbound).await
            }
            Outgoing::Announcement(announcement) => {
                let body = encoded(announcement);
                self.send(exchange, "", &Outbound::new(kind, &body)).await
            }
            Outgoing::Refresh => self.send(exchange, "", &Outbound::new(kind, &[])).await,
            Outgoing::Request {
                correlation,
                request,
            } => {
                let body = encoded(request);
                let outbound = Outbound::new(kind, &body).asking(self.own_queue, correlation);
                self.send(exchange, "", &outbound).await
            }
            Outgoing::SignOut(sign_out) => {
                let body = encoded(sign_out);
                self.send(exchange, "", &Outbound::new(kind, &body)).await
            }
            Outgoing::Audit(json) | Outgoing::Event(json) => {
                self.send(exchange, "", &Outbound::new(kind, json.as_bytes()))
                    .await
            }
        }
    }

    /// This instance's beacon.
    async fn send_beacon(&self, beacon: &Beacon) -> Result<(), BrokerError> {
        let body = encoded(beacon);
        let outbound = Outbound::new(Kind::Beacon, &body);
        self.send(&self.context.settings.topology.live_exchange, "", &outbound)
            .await
    }

    /// One message, sealed and published (no confirm: the fan-out tolerates a lost one, the
    /// next snapshot or beacon replaces it).
    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        outbound: &Outbound<'_>,
    ) -> Result<(), BrokerError> {
        let node = self.context.core.node.as_str();
        let nonce = self.seals.nonces.next(now_ms());
        let fields = Fields {
            kind: outbound.kind.as_str(),
            node,
            nonce,
            reply_to: outbound.reply_to.unwrap_or_default(),
            correlation: outbound.correlation.unwrap_or_default(),
            oldest_arrival: outbound.oldest_arrival,
            body: outbound.body,
        };
        let mut headers = FieldTable::default();
        headers.insert(seal::NODE_HEADER.into(), AMQPValue::LongString(node.into()));
        // Microseconds since 1970 stay below i64::MAX for another 290,000 years.
        headers.insert(
            seal::NONCE_HEADER.into(),
            AMQPValue::LongLongInt(i64::try_from(nonce).unwrap_or(i64::MAX)),
        );
        headers.insert(
            seal::SEAL_HEADER.into(),
            AMQPValue::LongString(self.seals.key.seal(&fields).into()),
        );
        if let Some(arrival) = outbound.oldest_arrival {
            headers.insert(
                OLDEST_ARRIVAL_HEADER.into(),
                AMQPValue::LongLongInt(arrival),
            );
        }
        let message = InstanceMessage {
            kind: outbound.kind.as_str(),
            sender: node,
            headers,
            reply_to: outbound.reply_to,
            correlation_id: outbound.correlation,
            body: outbound.body,
        };
        publish_to_instances(self.channel, exchange, routing_key, message).await?;
        Ok(())
    }

    /// Checks a delivery, then hands what it says on; a refused one is counted and dropped.
    async fn receive(&self, delivery: &lapin::message::Delivery) -> Result<(), BrokerError> {
        let outcome = match self.open(delivery) {
            Ok(opened) => self.act(&opened, delivery).await,
            Err(rejection) => Err(rejection),
        };
        if let Err(rejection) = outcome {
            self.refuse(rejection, delivery);
        }
        Ok(())
    }

    /// The seal first (constant time, over every field a receiver trusts), then freshness:
    /// nothing of the message is read before both pass.
    fn open<'d>(&self, delivery: &'d lapin::message::Delivery) -> Result<Opened<'d>, Rejection> {
        let properties = &delivery.properties;
        let headers = properties.headers().as_ref().map(FieldTable::inner);
        let header = |name: &str| headers.and_then(|h| h.get(name));
        let text = |name: &str| match header(name) {
            Some(AMQPValue::LongString(text)) => std::str::from_utf8(text.as_bytes()).ok(),
            _ => None,
        };
        let (Some(node), Some(AMQPValue::LongLongInt(nonce)), Some(seal)) = (
            text(seal::NODE_HEADER),
            header(seal::NONCE_HEADER),
            text(seal::SEAL_HEADER),
        ) else {
            return Err(Rejection::Unsigned);
        };
        let nonce = u64::try_from(*nonce).map_err(|_| Rejection::Unsigned)?;
        let oldest_arrival = match header(OLDEST_ARRIVAL_HEADER) {
            Some(AMQPValue::LongLongInt(at)) => Some(*at),
            _ => None,
        };
        let kind = properties.kind().as_ref().map_or("", |k| k.as_str());
        let fields = Fields {
            kind,
            node,
            nonce,
            reply_to: properties.reply_to().as_ref().map_or("", |q| q.as_str()),
            correlation: properties
                .correlation_id()
                .as_ref()
                .map_or("", |c| c.as_str()),
            oldest_arrival,
            body: &delivery.data,
        };
        self.seals.key.check(&fields, seal)?;
        self.seals.freshness.admit(node, nonce, now_ms())?;
        // Sealed by an instance: a kind this version does not know is a newer one's, or a bug.
        let kind = Kind::parse(kind).ok_or(Rejection::Malformed)?;
        Ok(Opened {
            kind,
            node,
            oldest_arrival,
            body: &delivery.data,
        })
    }

    /// What a checked message asks for; `Err` when its body is not what its kind must be.
    async fn act(
        &self,
        opened: &Opened<'_>,
        delivery: &lapin::message::Delivery,
    ) -> Result<(), Rejection> {
        let context = self.context;
        match opened.kind {
            Kind::Snapshot => return self.receive_snapshot(opened).await,
            Kind::Announcement => {
                let announcement: Announcement = parse(opened.body)?;
                // The message only says that there is a new one: what clients get is read
                // from the store, where the sender put it first.
                if announcement.id > context.core.hub.last_announcement() {
                    if let Err(error) = context.core.catch_up_announcements().await {
                        tracing::warn!(%error, "could not read a new announcement from the store");
                    }
                }
            }
            Kind::Request => {
                let request: Request = parse(opened.body)?;
                if let Err(error) = self.answer(&request, delivery).await {
                    tracing::warn!(%error, "could not answer a request");
                }
            }
            Kind::Answer => {
                let answer: Answer = parse(opened.body)?;
                if let Some(correlation) = delivery.properties.correlation_id() {
                    context.core.cluster.deliver(
                        correlation.as_str(),
                        opened.node.to_owned(),
                        answer,
                    );
                }
            }
            Kind::Beacon => {
                let beacon: Beacon = parse(opened.body)?;
                if beacon.node != opened.node {
                    return Err(Rejection::Malformed);
                }
                context.core.saw(beacon);
            }
            Kind::Audit => {
                let _ = context.core.feeds.audit.send(reencoded(opened.body)?);
            }
            Kind::Event => {
                let _ = context.core.feeds.events.send(reencoded(opened.body)?);
            }
            Kind::SignOut => {
                let sign_out: SignOut = parse(opened.body)?;
                if !sign_out.well_formed() {
                    return Err(Rejection::Malformed);
                }
                context.core.registry.end_session(&sign_out.session);
            }
            Kind::Refresh => context.core.refresh_if_leading(),
        }
        Ok(())
    }

    /// Answers a request to the asker's queue, through the default exchange; not this
    /// instance's own requests, which it has answered for itself already.
    async fn answer(
        &self,
        request: &Request,
        delivery: &lapin::message::Delivery,
    ) -> Result<(), BrokerError> {
        let properties = &delivery.properties;
        let (Some(reply_to), Some(correlation)) =
            (properties.reply_to(), properties.correlation_id())
        else {
            return Ok(());
        };
        if reply_to.as_str() == self.own_queue {
            return Ok(());
        }
        let answer = self.context.core.answer(request);
        let body = encoded(&answer);
        let outbound = Outbound::new(Kind::Answer, &body).answering(correlation.as_str());
        // The default exchange routes by queue name: straight to the asker's own queue.
        self.send("", reply_to.as_str(), &outbound).await
    }

    async fn receive_snapshot(&self, opened: &Opened<'_>) -> Result<(), Rejection> {
        let context = self.context;
        if opened.node == context.core.node {
            // This instance's own, back from the exchange: its hub has it already.
            return Ok(());
        }
        let snapshot: Snapshot = parse(opened.body)?;
        let seq = snapshot.seq;
        match self.seals.ceiling.admits(seq, &context.core.store).await {
            Ok(true) => {}
            Ok(false) => return Err(Rejection::SeqAhead),
            Err(error) => {
                tracing::warn!(%error, seq, "could not check a snapshot's seq against the store");
                return Ok(());
            }
        }
        context.core.record_snapshot(&snapshot);
        // Encoded here, by the service's own encoder: never the bytes that came.
        let frame = SnapshotFrame::new(snapshot, opened.oldest_arrival);
        if !context.core.hub.publish(frame.clone()) {
            self.rebase_if_ahead_of_store(frame).await;
        }
        Ok(())
    }

    /// A snapshot older than this hub's is normally a former leader's late one; but when the
    /// hub's seq is beyond anything the store reserved (the database was restored from a
    /// backup), the hub is what is wrong: it starts again from this snapshot.
    async fn rebase_if_ahead_of_store(&self, frame: Arc<SnapshotFrame>) {
        let hub = &self.context.core.hub;
        let Some(current) = hub.latest().map(|p| p.id.seq) else {
            return;
        };
        if frame.seq() >= current {
            // The same snapshot again (the leader's rebroadcast): nothing to decide.
            return;
        }
        match self.context.core.store.reserved_seq().await {
            Ok(reserved) if current > reserved => {
                tracing::warn!(
                    current,
                    reserved,
                    "this instance's snapshot seq is ahead of the store (restored?): starting again from the leader's"
                );
                self.seals.ceiling.reset(reserved);
                hub.rebase(frame);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not read the reserved snapshot seq"),
        }
    }

    fn refuse(&self, rejection: Rejection, delivery: &lapin::message::Delivery) {
        self.context
            .core
            .metrics
            .fanout_rejected
            .with_label_values(&[rejection.label()])
            .inc();
        if let Some(held_back) = self.seals.log.admit(Instant::now()) {
            // The kind is one of few words or anything an attacker chose: logged escaped
            // by the subscriber, and cut short.
            let kind: String = delivery
                .properties
                .kind()
                .as_ref()
                .map(|k| k.as_str().chars().take(32).collect())
                .unwrap_or_default();
            tracing::warn!(
                reason = rejection.label(),
                kind,
                held_back,
                every_secs = REJECTION_LOG_EVERY.as_secs(),
                "refused a message on the live exchange (pulseboard_fanout_rejected_total counts them all)"
            );
        }
    }
}

fn parse<'de, T: serde::Deserialize<'de>>(body: &'de [u8]) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|_| Rejection::Malformed)
}

/// A console row (audit entry, sampled event) as the service encodes it: a JSON object,
/// encoded again from its parsed value, so what reaches a console is always one JSON value.
fn reencoded(body: &[u8]) -> Result<Arc<str>, Rejection> {
    match parse::<serde_json::Value>(body)? {
        value @ serde_json::Value::Object(_) => Ok(Arc::from(value.to_string())),
        _ => Err(Rejection::Malformed),
    }
}

/// The highest snapshot seq the store has reserved, as last read: a snapshot above it was not
/// made by a leader on this database, and would hold every dashboard until a leader reached it.
#[derive(Default)]
struct SeqCeiling(AtomicI64);

impl SeqCeiling {
    /// Reads the store only when `seq` is above what it last read: once per block of seqs.
    async fn admits(&self, seq: i64, store: &Store) -> Result<bool, StoreError> {
        if seq <= self.0.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let reserved = store.reserved_seq().await?;
        self.0.fetch_max(reserved, Ordering::Relaxed);
        Ok(seq <= reserved)
    }

    fn reset(&self, reserved: i64) {
        self.0.store(reserved, Ordering::Relaxed);
    }
}

async fn poll_depths(context: &FanoutContext, channel: &lapin::Channel) -> Result<(), BrokerError> {
    let depth = Topology::depth(channel, &context.settings.topology.events_queue).await?;
    let dead = Topology::depth(channel, &context.settings.topology.dead_queue).await?;
    context.core.metrics.queue_depth.set(i64::from(depth));
    context.core.metrics.dead_letters.set(i64::from(dead));
    context.core.status.update_fanout(|s| {
        s.queue_depth = u64::from(depth);
        s.dead_letters = u64::from(dead);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_reason_is_exported_from_the_start() {
        let labels: Vec<&str> = Rejection::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels, crate::metrics::FANOUT_REJECTION_REASONS);
    }

    #[test]
    fn a_sign_out_names_a_key_hash_and_nothing_else() {
        let key = crate::auth::session_key("a session id");
        let message: SignOut = parse(format!(r#"{{"session":"{key}"}}"#).as_bytes()).expect("json");
        assert!(message.well_formed());
        for bad in [
            "",
            "ABCDEF",
            &key[..63],
            &format!("{key}0"),
            &format!("{}g", &key[..63]),
        ] {
            let sign_out = SignOut {
                session: bad.to_owned(),
            };
            assert!(!sign_out.well_formed(), "{bad}");
        }
    }

    #[test]
    fn console_rows_are_encoded_again_and_must_be_objects() {
        let row = reencoded(b"{\n  \"id\": 1,\n  \"detail\": \"a\\nb\"\n}").expect("object");
        assert_eq!(&*row, r#"{"detail":"a\nb","id":1}"#);
        assert!(!row.contains('\n'));
        for bad in [&b"[1]"[..], b"\"text\"", b"not json", b"{\"a\":1} trailing"] {
            assert_eq!(reencoded(bad), Err(Rejection::Malformed));
        }
    }
}
