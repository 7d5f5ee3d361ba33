//! The accepted event: what the aggregator understands, already validated by `ingest::decode`.

/// Unix time in milliseconds. Event time and "now" share this one unit throughout.
pub type Millis = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The producer's idempotency key.
    pub id: String,
    pub kind: EventKind,
    pub occurred_at: Millis,
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    OrderPlaced {
        amount_minor: i64,
    },
    OrderRefunded {
        amount_minor: i64,
    },
    UserActive,
    UserSignedOut,
    /// A well-formed event of a type we do not aggregate: it still marks its user active.
    Other,
}

impl EventKind {
    /// The four event type names (see docs/api.md, Events), and `other` for the rest (a metrics
    /// label, so bounded).
    pub fn label(&self) -> &'static str {
        match self {
            EventKind::OrderPlaced { .. } => "order.placed",
            EventKind::OrderRefunded { .. } => "order.refunded",
            EventKind::UserActive => "user.active",
            EventKind::UserSignedOut => "user.signed_out",
            EventKind::Other => "other",
        }
    }

    pub fn amount_minor(&self) -> i64 {
        match self {
            EventKind::OrderPlaced { amount_minor } | EventKind::OrderRefunded { amount_minor } => {
                *amount_minor
            }
            _ => 0,
        }
    }

    /// Inverse of [`EventKind::label`] plus the amount: how the store gives events back.
    pub fn from_stored(label: &str, amount_minor: i64) -> EventKind {
        match label {
            "order.placed" => EventKind::OrderPlaced { amount_minor },
            "order.refunded" => EventKind::OrderRefunded { amount_minor },
            "user.active" => EventKind::UserActive,
            "user.signed_out" => EventKind::UserSignedOut,
            _ => EventKind::Other,
        }
    }
}

impl Event {
    /// This event's contribution to the order and revenue tallies.
    pub fn tally(&self) -> super::Tally {
        super::Tally::of(&self.kind)
    }
}

impl super::Tally {
    /// What one event of `kind` adds to the order and revenue tallies.
    pub(crate) fn of(kind: &EventKind) -> super::Tally {
        match *kind {
            EventKind::OrderPlaced { amount_minor } => super::Tally {
                orders: 1,
                revenue_minor: amount_minor,
            },
            EventKind::OrderRefunded { amount_minor } => super::Tally {
                orders: 0,
                revenue_minor: -amount_minor,
            },
            _ => super::Tally::default(),
        }
    }
}
