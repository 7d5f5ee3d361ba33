//! The seal on every message between instances (docs/security.md, Messages between
//! instances): who may speak on `<prefix>.live`, and what a receiver accepts. Pure: no broker,
//! no clock read (times come in as values), no logging.
//!
//! A seal is an HMAC-SHA256 over everything a receiver trusts: the message's kind (its AMQP
//! `type`), the sending node, a nonce, the reply-to queue and correlation id (requests and
//! answers), a snapshot's oldest-arrival time, and the body. The key is derived from the shared
//! secret (`PULSEBOARD_SECRET`, or the one kept in the database) under a label of its own, so a
//! seal never works as a session or token key nor the other way round.
//!
//! The nonce is the sender's clock in microseconds, made strictly increasing per process
//! ([`NonceClock`]). A receiver checks the seal first, in constant time, before it reads anything
//! else of the message; then freshness ([`Freshness`]): the nonce must be within the window of
//! its own clock (a message captured and replayed later is refused; the window also absorbs
//! clock skew between hosts), and newer than the last one it accepted from that node (a replay
//! inside the window is refused too).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

type HmacSha256 = Hmac<Sha256>;

/// The sending node (AMQP long string).
pub const NODE_HEADER: &str = "x-pulseboard-node";
/// The nonce: microseconds since the Unix epoch, strictly increasing per sender (AMQP long long).
pub const NONCE_HEADER: &str = "x-pulseboard-nonce";
/// The seal: 64 lower-case hex digits (AMQP long string).
pub const SEAL_HEADER: &str = "x-pulseboard-seal";

/// What the key is for: changing it makes every instance refuse the others' seals.
const KEY_LABEL: &[u8] = b"pulseboard <prefix>.live seal v1";
/// Nodes remembered for replay detection before the silent ones are forgotten (only senders
/// with a good seal are ever remembered, so this is the cluster's size with room to spare).
const REMEMBERED_NODES: usize = 256;

/// Why a message was refused: the `reason` label of `pulseboard_fanout_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No seal, no node or no nonce.
    Unsigned,
    /// The seal does not match (another key, a changed field, a cut or garbled seal).
    BadSignature,
    /// The nonce is outside the window of this instance's clock.
    Stale,
    /// The nonce is not newer than the last one accepted from that node.
    Replayed,
    /// Well sealed, but the body is not what its kind must be.
    Malformed,
    /// A snapshot whose `seq` the store never reserved.
    SeqAhead,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::Unsigned,
        Rejection::BadSignature,
        Rejection::Stale,
        Rejection::Replayed,
        Rejection::Malformed,
        Rejection::SeqAhead,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::BadSignature => "bad_signature",
            Rejection::Stale => "stale",
            Rejection::Replayed => "replayed",
            Rejection::Malformed => "malformed",
            Rejection::SeqAhead => "seq_ahead",
        }
    }
}

/// Everything a seal covers; absent fields are empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    pub kind: &'a str,
    pub node: &'a str,
    pub nonce: u64,
    pub reply_to: &'a str,
    pub correlation: &'a str,
    pub oldest_arrival: Option<i64>,
    pub body: &'a [u8],
}

/// The key of the seals, derived from the shared secret.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl SealKey {
    /// HMAC-SHA256(secret, label): a key of its own for this purpose, never the session key.
    pub fn derive(secret: &[u8]) -> SealKey {
        let mut mac = keyed(secret);
        mac.update(KEY_LABEL);
        SealKey(mac.finalize().into_bytes().into())
    }

    /// The seal of `fields`, as it goes in [`SEAL_HEADER`].
    pub fn seal(&self, fields: &Fields<'_>) -> String {
        hex(&self.mac(fields).finalize().into_bytes())
    }

    /// `Ok` when `seal` is the seal of `fields`, compared in constant time.
    pub(crate) fn check(&self, fields: &Fields<'_>, seal: &str) -> Result<(), Rejection> {
        let tag = unhex(seal).ok_or(Rejection::BadSignature)?;
        // `verify_slice` compares in constant time and refuses a tag of another length.
        self.mac(fields)
            .verify_slice(&tag)
            .map_err(|_| Rejection::BadSignature)
    }

    fn mac(&self, fields: &Fields<'_>) -> HmacSha256 {
        let mut mac = keyed(&self.0);
        let arrival = fields
            .oldest_arrival
            .map(|at| at.to_string())
            .unwrap_or_default();
        let nonce = fields.nonce.to_be_bytes();
        // Each field prefixed by its length: no two different messages feed the same bytes.
        for field in [
            fields.kind.as_bytes(),
            fields.node.as_bytes(),
            &nonce,
            fields.reply_to.as_bytes(),
            fields.correlation.as_bytes(),
            arrival.as_bytes(),
            fields.body,
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length (longer ones are hashed): this cannot fail.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

/// A sender's nonces: its clock in microseconds, each one above the last even when the clock
/// stands still or steps back.
#[derive(Debug, Default)]
pub struct NonceClock(AtomicU64);

impl NonceClock {
    pub fn next(&self, now_ms: i64) -> u64 {
        let now = micros(now_ms);
        let previous = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            // The closure always returns `Some`.
            .unwrap_or_default();
        now.max(previous + 1)
    }
}

fn micros(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000)
}

/// What a receiver accepts after the seal: nonces within `window` of its clock, and from each
/// node only newer ones than it accepted last.
#[derive(Debug)]
pub(crate) struct Freshness {
    window_us: u64,
    last_accepted: Mutex<HashMap<String, u64>>,
}

impl Freshness {
    pub(crate) fn new(window: Duration) -> Freshness {
        Freshness {
            window_us: u64::try_from(window.as_micros()).unwrap_or(u64::MAX),
            last_accepted: Mutex::default(),
        }
    }

    /// Accepts `nonce` from `node` (already sealed) at `now_ms`, or says why not.
    pub(crate) fn admit(&self, node: &str, nonce: u64, now_ms: i64) -> Result<(), Rejection> {
        let now = micros(now_ms);
        if nonce.abs_diff(now) > self.window_us {
            return Err(Rejection::Stale);
        }
        let mut last = crate::sync::lock(&self.last_accepted);
        if last.get(node).is_some_and(|seen| nonce <= *seen) {
            return Err(Rejection::Replayed);
        }
        last.insert(node.to_owned(), nonce);
        if last.len() > REMEMBERED_NODES {
            // A node silent for a whole window cannot be replayed anyway: its nonces are stale.
            let window = self.window_us;
            last.retain(|_, seen| now.saturating_sub(*seen) <= window);
        }
        Ok(())
    }
}

/// Lets one log line through per `every`, and counts the ones held back: a flood of refused
/// messages must not flood the log.
#[derive(Debug)]
pub(crate) struct LogGate {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogGate {
    pub(crate) fn new(every: Duration) -> LogGate {
        LogGate {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last line)` when a line may be written now.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = crate::sync::lock(&self.state);
        let (last, held) = &mut *state;
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            *held += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_795_428_930_250;

    fn fields(body: &[u8]) -> Fields<'_> {
        Fields {
            kind: "snapshot",
            node: "web-1",
            nonce: micros(NOW_MS),
            reply_to: "",
            correlation: "",
            oldest_arrival: Some(NOW_MS - 40),
            body,
        }
    }

    #[test]
    fn a_seal_checks_with_its_key_and_fields_only() {
        let key = SealKey::derive(b"a shared secret of some length");
        let genuine = fields(br#"{"seq":7}"#);
        let seal = key.seal(&genuine);
        assert_eq!(seal.len(), 64);
        assert_eq!(key.check(&genuine, &seal), Ok(()));

        let refused = |changed: Fields<'_>| key.check(&changed, &seal);
        assert_eq!(
            refused(fields(br#"{"seq":8}"#)),
            Err(Rejection::BadSignature),
            "tampered body"
        );
        for (what, changed) in [
            (
                "kind",
                Fields {
                    kind: "announcement",
                    ..genuine
                },
            ),
            (
                "node",
                Fields {
                    node: "web-2",
                    ..genuine
                },
            ),
            (
                "nonce",
                Fields {
                    nonce: genuine.nonce + 1,
                    ..genuine
                },
            ),
            (
                "reply-to",
                Fields {
                    reply_to: "amq.gen-x",
                    ..genuine
                },
            ),
            (
                "correlation",
                Fields {
                    correlation: "c-1",
                    ..genuine
                },
            ),
            (
                "arrival",
                Fields {
                    oldest_arrival: None,
                    ..genuine
                },
            ),
        ] {
            assert_eq!(refused(changed), Err(Rejection::BadSignature), "{what}");
        }
        let other = SealKey::derive(b"another secret of some length");
        assert_eq!(other.check(&genuine, &seal), Err(Rejection::BadSignature));
    }

    #[test]
    fn a_cut_garbled_or_padded_seal_is_refused() {
        let key = SealKey::derive(b"a shared secret of some length");
        let genuine = fields(b"{}");
        let seal = key.seal(&genuine);
        for bad in [
            &seal[..62],
            &seal[..32],
            "",
            &format!("{seal}00"),
            &seal.replace(|c: char| c.is_ascii_digit(), "g"),
            &format!("é{}", &seal[2..]),
        ] {
            assert_eq!(
                key.check(&genuine, bad),
                Err(Rejection::BadSignature),
                "{bad}"
            );
        }
    }

    #[test]
    fn fields_cannot_be_shifted_into_each_other() {
        let key = SealKey::derive(b"a shared secret of some length");
        let one = Fields {
            kind: "ab",
            node: "c",
            ..fields(b"")
        };
        let two = Fields {
            kind: "a",
            node: "bc",
            ..fields(b"")
        };
        assert_ne!(key.seal(&one), key.seal(&two));
    }

    #[test]
    fn the_seal_key_is_not_the_secret() {
        // As long as the key: the session key (the secret as it is) would fit it exactly.
        let secret = b"a shared secret of 32 bytes, yes";
        assert_eq!(secret.len(), 32);
        assert_ne!(&SealKey::derive(secret).0, secret);
        assert_ne!(SealKey::derive(secret).0, SealKey::derive(b"x").0);
    }

    #[test]
    fn nonces_rise_even_when_the_clock_stands_still_or_steps_back() {
        let clock = NonceClock::default();
        let first = clock.next(NOW_MS);
        assert_eq!(first, micros(NOW_MS));
        let second = clock.next(NOW_MS);
        let third = clock.next(NOW_MS - 5_000);
        assert!(first < second && second < third, "{first} {second} {third}");
        assert_eq!(clock.next(NOW_MS + 1), micros(NOW_MS + 1));
    }

    #[test]
    fn freshness_refuses_stale_future_and_repeated_nonces() {
        let freshness = Freshness::new(Duration::from_secs(30));
        let at = |ms: i64| micros(ms);
        assert_eq!(freshness.admit("a", at(NOW_MS), NOW_MS), Ok(()));
        assert_eq!(
            freshness.admit("a", at(NOW_MS), NOW_MS),
            Err(Rejection::Replayed)
        );
        assert_eq!(
            freshness.admit("a", at(NOW_MS - 1), NOW_MS),
            Err(Rejection::Replayed)
        );
        assert_eq!(freshness.admit("a", at(NOW_MS) + 1, NOW_MS), Ok(()));
        // Another node has nonces of its own.
        assert_eq!(freshness.admit("b", at(NOW_MS - 1), NOW_MS), Ok(()));
        // Older or newer than the window of this clock: stale, whoever sends it.
        assert_eq!(
            freshness.admit("c", at(NOW_MS - 30_001), NOW_MS),
            Err(Rejection::Stale)
        );
        assert_eq!(
            freshness.admit("c", at(NOW_MS + 30_001), NOW_MS),
            Err(Rejection::Stale)
        );
        assert_eq!(freshness.admit("c", at(NOW_MS - 29_000), NOW_MS), Ok(()));
    }

    #[test]
    fn many_nodes_are_forgotten_once_silent_for_a_window() {
        let freshness = Freshness::new(Duration::from_secs(1));
        for n in 0..=REMEMBERED_NODES {
            let sent = NOW_MS - 2_000 + n as i64;
            assert_eq!(freshness.admit(&n.to_string(), micros(sent), sent), Ok(()));
        }
        assert_eq!(freshness.admit("new", micros(NOW_MS), NOW_MS), Ok(()));
        let remembered = freshness.last_accepted.lock().expect("map").len();
        assert!(remembered < REMEMBERED_NODES, "{remembered}");
    }

    #[test]
    fn the_log_gate_lets_one_line_through_per_interval_and_counts_the_rest() {
        let gate = LogGate::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(gate.admit(start), Some(0));
        for _ in 0..5 {
            assert_eq!(gate.admit(start + Duration::from_secs(1)), None);
        }
        assert_eq!(gate.admit(start + Duration::from_secs(10)), Some(5));
        assert_eq!(gate.admit(start + Duration::from_secs(11)), None);
    }

    #[test]
    fn every_reason_has_its_own_label() {
        let labels: std::collections::BTreeSet<&str> =
            Rejection::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Rejection::ALL.len());
    }
}
