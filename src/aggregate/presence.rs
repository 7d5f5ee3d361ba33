//! One user's presence registers: the latest activity and the latest sign-out by event time
//! (last writer wins), a hash of the id of the event that set each (what
//! `Aggregator::recognises` compares to spot a repeat), and the mask of the closed minutes that
//! counted the user active at their end (kept and read by [`super::late`]); and the form the
//! store keeps them in ([`StoredPresence`], with [`id_hash`]). Pure; no figures are summed here.

use super::{Event, EventKind, Millis};

/// One user's latest activity and latest sign-out by event time, as the store keeps them
/// (`None`: never seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPresence {
    pub user_id: String,
    pub last_active: Option<Millis>,
    pub last_signed_out: Option<Millis>,
    /// [`id_hash`] of the event that set each (0: unknown).
    pub active_id: i64,
    pub signed_out_id: i64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Presence {
    pub(super) last_active: Millis,
    pub(super) last_signed_out: Millis,
    /// A hash of the id of the first event applied at `last_active` (and at `last_signed_out`),
    /// 0 when unknown (restored from the store): what
    /// [`Aggregator::recognises`](super::Aggregator::recognises) compares.
    pub(super) active_id: u64,
    pub(super) signed_out_id: u64,
    /// Bit `late::counted_bit` of each minute the leader closed in the last hour
    /// (`Aggregator::counted`): set when this user was counted active at its end.
    pub(super) counted: u64,
}

/// The id hash [`Presence`] keeps, and the store with it (never 0, which means unknown): the
/// first 8 bytes of the id's SHA-256 (stable across versions, unlike std's hasher).
pub fn id_hash(id: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

impl Presence {
    /// A user of whom nothing was applied yet.
    pub(super) fn unseen() -> Presence {
        Presence {
            last_active: Millis::MIN,
            last_signed_out: Millis::MIN,
            active_id: 0,
            signed_out_id: 0,
            counted: 0,
        }
    }

    /// Moves the register `event` sets (its latest sign-out, or its latest activity for any
    /// other kind) to its `occurred_at` if that is later: last writer wins by event time.
    pub(super) fn record(&mut self, event: &Event) {
        let (at, id) = match event.kind {
            EventKind::UserSignedOut => (&mut self.last_signed_out, &mut self.signed_out_id),
            _ => (&mut self.last_active, &mut self.active_id),
        };
        if event.occurred_at > *at {
            *at = event.occurred_at;
            *id = id_hash(&event.id);
        }
    }

    pub(super) fn is_active(&self, now: Millis, window: Millis) -> bool {
        // A sign-out at the same instant as the last activity wins: it is the user's last word.
        self.last_active > self.last_signed_out && self.last_active > now - window
    }
}
