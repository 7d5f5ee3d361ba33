//! The console's live tail of accepted events (docs/api.md, Console: `events`), sampled at the
//! source: at most [`PER_SECOND`] events a second leave the leader whatever the ingest rate,
//! each saying how many accepted events were skipped since the one before it. Encoding happens
//! only for the events that are sent, so a flood costs one counter increment per event.

use crate::aggregate::{Event, EventKind, Millis};
use crate::clock::rfc3339;
use serde_json::json;
use std::sync::Arc;

pub(super) const PER_SECOND: u32 = 50;
const WINDOW_MS: Millis = 1_000;

/// Decides which accepted events go to the tail.
#[derive(Debug, Default)]
pub(super) struct Sampler {
    window_start: Millis,
    sent_in_window: u32,
    skipped: u64,
}

impl Sampler {
    /// The push payload for `event` if it is within this second's budget; else counts it.
    pub(super) fn offer(&mut self, event: &Event, now: Millis) -> Option<Arc<str>> {
        if now - self.window_start >= WINDOW_MS {
            self.window_start = now;
            self.sent_in_window = 0;
        }
        if self.sent_in_window >= PER_SECOND {
            self.skipped += 1;
            return None;
        }
        self.sent_in_window += 1;
        let skipped = std::mem::take(&mut self.skipped);
        Some(Arc::from(encode(event, skipped).as_str()))
    }
}

fn encode(event: &Event, skipped: u64) -> String {
    let amount = match event.kind {
        EventKind::OrderPlaced { amount_minor } | EventKind::OrderRefunded { amount_minor } => {
            Some(amount_minor)
        }
        _ => None,
    };
    json!({
        "event": {
            "id": event.id,
            "type": event.kind.label(),
            "occurred_at": rfc3339(event.occurred_at),
            "user_id": event.user_id,
            "amount_minor": amount,
        },
        "skipped": skipped,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> Event {
        Event {
            id: format!("e-{n}"),
            kind: EventKind::UserActive,
            occurred_at: 0,
            user_id: "u".into(),
        }
    }

    #[test]
    fn at_most_fifty_a_second_and_the_next_one_says_how_many_were_skipped() {
        let mut sampler = Sampler::default();
        let sent = (0..1_000)
            .filter(|n| sampler.offer(&event(*n), 10_000).is_some())
            .count();
        assert_eq!(sent, 50);
        let next = sampler.offer(&event(1_000), 11_000).expect("new second");
        let next: serde_json::Value = serde_json::from_str(&next).expect("json");
        assert_eq!(next["skipped"], 950);
        assert_eq!(next["event"]["id"], "e-1000");
    }
}
