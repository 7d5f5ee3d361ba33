//! Realistic traffic: the `simulate` command and the demo's generator.
//!
//! [`TrafficGenerator`] makes well-formed events (see docs/api.md, Events): activity, orders,
//! refunds of earlier orders, sign-outs, and a few types the service ignores. It keeps a tally of
//! what it made, so a run can be checked against the dashboard. [`run`] publishes them to RabbitMQ at a
//! steady rate with publisher confirms.

use crate::aggregate::Millis;
use crate::clock::{now_ms, rfc3339};
use crate::config::SimulateArgs;
use crate::rabbitmq::{close, connect, publish_event, BrokerError, Topology};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::ConfirmSelectOptions;
use lapin::publisher_confirm::Confirmation;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Confirms awaited at once; more outstanding publishes wait for the broker to catch up.
const MAX_UNCONFIRMED: usize = 20_000;

/// One generated event, ready to publish with its type as routing key.
pub struct Generated {
    pub routing_key: &'static str,
    pub body: Vec<u8>,
}

/// What a generator produced, by type, with the money it moved.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SentTally {
    pub sent: u64,
    pub by_type: BTreeMap<&'static str, u64>,
    pub placed_minor: i64,
    pub refunded_minor: i64,
}

/// What share of the events each type makes, in percent (the five add up to 100). A refund
/// with no earlier order left to refund becomes a `user.active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub active: u8,
    pub placed: u8,
    pub refunded: u8,
    pub signed_out: u8,
    /// `order.shipped`, a type the service counts and ignores.
    pub other: u8,
}

impl Mix {
    /// `pulseboard simulate`'s and the demo's.
    pub const SIMULATE: Mix = Mix {
        active: 55,
        placed: 25,
        refunded: 5,
        signed_out: 10,
        other: 5,
    };
    /// Nothing but new orders.
    pub const ORDERS: Mix = Mix {
        active: 0,
        placed: 100,
        refunded: 0,
        signed_out: 0,
        other: 0,
    };
    /// Issue 28's: mostly activity, a few orders and refunds.
    pub const ACTIVITY: Mix = Mix {
        active: 90,
        placed: 8,
        refunded: 2,
        signed_out: 0,
        other: 0,
    };

    /// The type a roll of `0..100` makes: the shares in the order of the fields.
    fn kind_of(&self, roll: u8) -> &'static str {
        let shares = [
            (self.active, "user.active"),
            (self.placed, "order.placed"),
            (self.refunded, "order.refunded"),
            (self.signed_out, "user.signed_out"),
        ];
        let mut below = 0u8;
        for (share, kind) in shares {
            below = below.saturating_add(share);
            if roll < below {
                return kind;
            }
        }
        "order.shipped"
    }
}

pub struct TrafficGenerator {
    rng: StdRng,
    mix: Mix,
    users: u32,
    currency: String,
    recent_orders: VecDeque<i64>,
    next_order: u64,
    pub tally: SentTally,
}

impl TrafficGenerator {
    pub fn new(users: u32, currency: &str, seed: u64) -> Self {
        TrafficGenerator {
            rng: StdRng::seed_from_u64(seed),
            mix: Mix::SIMULATE,
            users: users.max(1),
            currency: currency.to_owned(),
            recent_orders: VecDeque::new(),
            next_order: 0,
            tally: SentTally::default(),
        }
    }

    /// The same generator making events of `mix` (instead of [`Mix::SIMULATE`]).
    pub fn with_mix(self, mix: Mix) -> Self {
        TrafficGenerator { mix, ..self }
    }

    /// An event that occurred at `now`.
    pub fn next_event(&mut self, now: Millis) -> Generated {
        let user = format!("u-{}", self.rng.random_range(0..self.users));
        let id = format!("evt-{}", uuid::Uuid::new_v4());
        let roll = self.rng.random_range(0..100u8);
        let (routing_key, data) = match self.mix.kind_of(roll) {
            "order.placed" => {
                let amount: i64 = self.rng.random_range(199..=24_999);
                self.recent_orders.push_back(amount);
                if self.recent_orders.len() > 1_000 {
                    self.recent_orders.pop_front();
                }
                self.tally.placed_minor += amount;
                ("order.placed", Some(amount))
            }
            "order.refunded" => match self.recent_orders.pop_front() {
                Some(amount) => {
                    self.tally.refunded_minor += amount;
                    ("order.refunded", Some(amount))
                }
                None => ("user.active", None),
            },
            kind => (kind, None),
        };
        let mut event = serde_json::json!({
            "id": id,
            "type": routing_key,
            "occurred_at": rfc3339(now),
            "user_id": user,
        });
        if let Some(amount) = data {
            self.next_order += 1;
            event["data"] = serde_json::json!({
                "order_id": format!("o-{}", self.next_order),
                "amount_minor": amount,
                "currency": self.currency,
            });
        }
        self.tally.sent += 1;
        *self.tally.by_type.entry(routing_key).or_default() += 1;
        Generated {
            routing_key,
            body: event.to_string().into_bytes(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused {0} of the published events")]
    Refused(u64),
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    #[serde(flatten)]
    tally: &'a SentTally,
    confirmed: u64,
    seconds: f64,
}

/// The `simulate` command: publishes until `--duration` ends or Ctrl-C, then prints a summary.
pub async fn run(args: SimulateArgs) -> Result<(), SimulateError> {
    let connection = connect(args.broker.amqp_url.expose_secret(), "pulseboard simulate").await?;
    let channel = connection.create_channel().await?;
    // Declaring the service's queue too means nothing is lost if the service starts later.
    Topology::new(&args.broker.exchange, &args.broker.queue_prefix)
        .with_queue_type(args.broker.queue_type)
        .declare(&channel)
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let mut generator = TrafficGenerator::new(args.users, &args.money.currency, rand::random());
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs(s));
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut pacing = tokio::time::interval(Duration::from_millis(10));
    let mut unconfirmed = FuturesUnordered::new();
    let (mut confirmed, mut refused) = (0u64, 0u64);
    let mut last_report = Instant::now();

    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = pacing.tick() => {}
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let due = (now - started).as_secs_f64() * f64::from(args.rate);
        while (generator.tally.sent as f64) < due {
            let event = generator.next_event(now_ms());
            let confirm = publish_event(
                &channel,
                &args.broker.exchange,
                event.routing_key,
                &event.body,
            )
            .await?;
            unconfirmed.push(confirm);
            while unconfirmed.len() >= MAX_UNCONFIRMED {
                tally_confirm(unconfirmed.next().await, &mut confirmed, &mut refused)?;
            }
        }
        while let Some(Some(result)) = futures_util::FutureExt::now_or_never(unconfirmed.next()) {
            tally_confirm(Some(result), &mut confirmed, &mut refused)?;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "sent {} events, {confirmed} confirmed",
                generator.tally.sent
            );
            last_report = Instant::now();
        }
    }
    while let Some(result) = unconfirmed.next().await {
        tally_confirm(Some(result), &mut confirmed, &mut refused)?;
    }
    close(&connection, &[&channel]).await;

    let summary = Summary {
        tally: &generator.tally,
        confirmed,
        seconds: started.elapsed().as_secs_f64(),
    };
    println!(
        "sent {} events in {:.1} s, {confirmed} confirmed by RabbitMQ; net revenue {} minor units {}",
        generator.tally.sent,
        summary.seconds,
        generator.tally.placed_minor - generator.tally.refunded_minor,
        args.money.currency
    );
    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    if refused > 0 {
        return Err(SimulateError::Refused(refused));
    }
    Ok(())
}

fn tally_confirm(
    result: Option<Result<Confirmation, lapin::Error>>,
    confirmed: &mut u64,
    refused: &mut u64,
) -> Result<(), SimulateError> {
    match result {
        Some(Ok(Confirmation::Nack(_))) => *refused += 1,
        Some(Ok(_)) => *confirmed += 1,
        Some(Err(error)) => return Err(BrokerError::from(error).into()),
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::{decode, DecodeContext};

    #[test]
    fn generated_events_are_valid_and_tallied() {
        let now = 1_795_428_930_000;
        let mut generator = TrafficGenerator::new(50, "EUR", 7);
        let mut net = 0;
        for _ in 0..2_000 {
            let event = generator.next_event(now);
            let decoded = decode(&event.body, DecodeContext::new("EUR", now))
                .expect("generated events are valid");
            net += decoded.tally().revenue_minor;
        }
        let tally = &generator.tally;
        assert_eq!(tally.sent, 2_000);
        assert_eq!(tally.by_type.values().sum::<u64>(), 2_000);
        assert_eq!(tally.placed_minor - tally.refunded_minor, net);
        assert!(tally.by_type.get("order.refunded").copied().unwrap_or(0) > 0);
    }

    #[test]
    fn a_roll_falls_in_the_share_of_its_type() {
        let simulate = Mix::SIMULATE;
        let kinds: Vec<&str> = [0, 54, 55, 79, 80, 84, 85, 94, 95, 99]
            .into_iter()
            .map(|roll| simulate.kind_of(roll))
            .collect();
        assert_eq!(
            kinds,
            [
                "user.active",
                "user.active",
                "order.placed",
                "order.placed",
                "order.refunded",
                "order.refunded",
                "user.signed_out",
                "user.signed_out",
                "order.shipped",
                "order.shipped"
            ]
        );
        assert!((0..100).all(|roll| Mix::ORDERS.kind_of(roll) == "order.placed"));
    }

    #[test]
    fn a_mix_makes_its_shares() {
        let now = 1_795_428_930_000;
        let mut generator = TrafficGenerator::new(5_000, "EUR", 11).with_mix(Mix::ACTIVITY);
        for _ in 0..20_000 {
            generator.next_event(now);
        }
        let share = |kind: &str| generator.tally.by_type.get(kind).copied().unwrap_or(0);
        // 90 / 8 / 2 %, within what 20 000 rolls leave to chance (a few standard deviations).
        assert!(
            (17_700..=18_300).contains(&share("user.active")),
            "{:?}",
            generator.tally
        );
        assert!((1_450..=1_750).contains(&share("order.placed")));
        assert!((320..=480).contains(&share("order.refunded")));
        assert_eq!(share("user.signed_out") + share("order.shipped"), 0);
    }
}
