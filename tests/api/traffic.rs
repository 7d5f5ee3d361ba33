//! Generated streams of valid events with a known tally.

use pulseboard::simulate::{SentTally, TrafficGenerator};

/// `count` realistic events plus a re-send of every tenth one (duplicates of earlier ids).
pub fn stream_with_duplicates(count: usize, seed: u64) -> (Vec<(String, Vec<u8>)>, SentTally) {
    let mut generator = TrafficGenerator::new(500, "USD", seed);
    let now = chrono::Utc::now().timestamp_millis();
    let mut messages = Vec::with_capacity(count + count / 10);
    for i in 0..count {
        let event = generator.next_event(now);
        let message = (event.routing_key.to_owned(), event.body);
        if i % 10 == 9 {
            messages.push(message.clone());
        }
        messages.push(message);
    }
    (messages, generator.tally)
}

pub fn net_revenue(tally: &SentTally) -> i64 {
    tally.placed_minor - tally.refunded_minor
}

pub fn placed(tally: &SentTally) -> u64 {
    tally.by_type.get("order.placed").copied().unwrap_or(0)
}

/// What two streams sent together.
pub fn combined(first: &SentTally, second: &SentTally) -> SentTally {
    let mut by_type = first.by_type.clone();
    for (kind, count) in &second.by_type {
        *by_type.entry(kind).or_default() += count;
    }
    SentTally {
        sent: first.sent + second.sent,
        by_type,
        placed_minor: first.placed_minor + second.placed_minor,
        refunded_minor: first.refunded_minor + second.refunded_minor,
    }
}
