//! Connection accounting for the metrics (docs/api.md, Metrics): open connections by transport,
//! why each one closed; and the [`Registry`] of this instance's live connections (who, with
//! which credential, how, since when), which the console lists and kicks from, and which ends
//! the connections whose credential is no longer good (docs/live.md, Ending a connection).
//!
//! A connection that registers gets one `Arc`'d entry at open, removed when its guard drops:
//! nothing is paid per delivery, the stream loops only watch one cancellation token. An entry
//! is ended at most once, for one [`Ending`]: a kick, its credential revoked, or expired.

use crate::aggregate::Millis;
use crate::auth::grant::{Grant, GrantKind, Verdict};
use crate::metrics::Metrics;
use futures_util::task::AtomicWaker;
use prometheus::{Histogram, IntCounter};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Sse,
    Poll,
    Ws,
}

impl Transport {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Ws => "ws",
        }
    }
}

/// What a connection sent, for `pulseboard_messages_sent_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Snapshot,
    Announcement,
    Heartbeat,
}

impl Sent {
    /// In declaration order, so that `kind as usize` indexes a per-kind array built from it.
    const ALL: [Sent; 3] = [Sent::Snapshot, Sent::Announcement, Sent::Heartbeat];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Sent::Snapshot => "snapshot",
            Sent::Announcement => "announcement",
            Sent::Heartbeat => "heartbeat",
        }
    }
}

/// Why the server ends a registered connection before its client leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// An operator's `connections.kick`.
    Kicked,
    /// Its credential was revoked: the user removed, their password or role changed, or the
    /// session signed out.
    Revoked,
    /// Its credential (token or session) expired.
    Expired,
}

impl Ending {
    /// In declaration order from 1: an entry's `ending` holds `index + 1`, 0 while it lives.
    const ALL: [Ending; 3] = [Ending::Kicked, Ending::Revoked, Ending::Expired];

    /// The `reason` of `pulseboard_connections_closed_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Ending::Kicked => "kicked",
            Ending::Revoked => "revoked",
            Ending::Expired => "expired",
        }
    }

    /// What a client is told (a console's close frame, a stream's last comment).
    pub(crate) fn explanation(self) -> &'static str {
        match self {
            Ending::Kicked => "kicked",
            Ending::Revoked => "revoked: the credential is no longer valid; sign in again",
            Ending::Expired => "expired: the credential expired; sign in again",
        }
    }

    /// The ending for a credential that is no longer good; `None` for a good one.
    pub(crate) fn of(verdict: Verdict) -> Option<Ending> {
        match verdict {
            Verdict::Good => None,
            Verdict::Revoked => Some(Ending::Revoked),
            Verdict::Expired => Some(Ending::Expired),
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Ending> {
        Ending::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

/// Why a connection closed: the `reason` of `pulseboard_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// As far as the server knows, the client left (the default).
    ClientClosed,
    /// It did not keep up and was cut off.
    SlowClient,
    /// The instance is stopping.
    Shutdown,
    /// The server ended it (kicked, revoked, expired).
    Ended(Ending),
    /// A console that did not answer pings.
    PingTimeout,
    /// A console message over the frame limit.
    TooLarge,
}

impl CloseReason {
    /// Every reason a transport can close with, as `metrics::CLOSE_REASONS` (which exports
    /// them from the start, below this module) must list them: checked by a test.
    #[cfg(test)]
    pub(crate) fn all_for(transport: Transport) -> Vec<CloseReason> {
        let mut all = vec![CloseReason::ClientClosed];
        if transport != Transport::Poll {
            all.extend([CloseReason::SlowClient, CloseReason::Shutdown]);
        }
        all.extend(Ending::ALL.map(CloseReason::Ended));
        if transport == Transport::Ws {
            all.extend([CloseReason::PingTimeout, CloseReason::TooLarge]);
        }
        all
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::SlowClient => "slow_client",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Ended(ending) => ending.label(),
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::TooLarge => "too_large",
        }
    }
}

/// Counts a connection open while it lives, and closed, with its reason, when dropped.
///
/// The per-message series are resolved once, at open: looking a label set up costs a hash and a
/// lock, paid for every message on every connection (40 000 times a second at 10 000 clients).
pub(crate) struct ConnectionGuard {
    metrics: Arc<Metrics>,
    transport: Transport,
    reason: CloseReason,
    sent: [IntCounter; 3],
    latency: Histogram,
    coalesced: IntCounter,
    /// Its entry in the registry, while it lives (removed on drop).
    registration: Option<Registration>,
}

impl ConnectionGuard {
    /// `resuming`: the request carried a `Last-Event-ID` (or `after`), so it is a reconnect.
    pub(crate) fn open(metrics: Arc<Metrics>, transport: Transport, resuming: bool) -> Self {
        let label = [transport.label()];
        metrics.connections.with_label_values(&label).inc();
        metrics.connections_opened.with_label_values(&label).inc();
        if resuming {
            metrics.reconnects.with_label_values(&label).inc();
        }
        let sent = Sent::ALL.map(|kind| {
            metrics
                .messages_sent
                .with_label_values(&[label[0], kind.label()])
        });
        ConnectionGuard {
            latency: metrics.delivery_latency.with_label_values(&label),
            coalesced: metrics.slow_client_coalesced.with_label_values(&label),
            sent,
            metrics,
            transport,
            reason: CloseReason::ClientClosed,
            registration: None,
        }
    }

    /// Lists this connection in `registry` with the credential it was opened with until it
    /// drops; the token it returns is cancelled when the connection is ended (see
    /// [`ConnectionGuard::ending`] for why) or at shutdown.
    pub(crate) fn register(&mut self, registry: &Registry, grant: Grant) -> CancellationToken {
        let kick = registry.inner.closing.child_token();
        self.registration = Some(registry.add(grant, self.transport, Some(kick.clone())));
        kick
    }

    /// Lists this connection like [`ConnectionGuard::register`], for a stream that polls
    /// [`ConnectionGuard::ended`] instead of waiting on a token (and learns of shutdown
    /// elsewhere): no token, no lock, a few bytes less per connection.
    pub(crate) fn register_stream(&mut self, registry: &Registry, grant: Grant) {
        self.registration = Some(registry.add(grant, self.transport, None));
    }

    /// Why this connection was ended, if it was; if not yet, `waker` is woken when it is.
    pub(crate) fn ended(&self, waker: &Waker) -> Option<Ending> {
        let registration = self.registration.as_ref()?;
        registration.entry.ending_waker.register(waker);
        registration.entry.ending()
    }

    /// Why this connection was ended, if it was.
    pub(crate) fn ending(&self) -> Option<Ending> {
        self.registration.as_ref()?.entry.ending()
    }

    /// A handle that ends this connection from elsewhere (a console command that found its
    /// credential no longer good); `None` when it is not registered.
    pub(crate) fn ender(&self) -> Option<Ender> {
        Some(Ender(self.registration.as_ref()?.entry.clone()))
    }

    /// No other reason was recorded: as far as the server knows, the client left.
    pub(crate) fn closed_by_client(&self) -> bool {
        self.reason == CloseReason::ClientClosed
    }

    /// Records why the server ends this connection (the default is that the client left).
    pub(crate) fn set_reason(&mut self, reason: CloseReason) {
        self.reason = reason;
    }

    pub(crate) fn count_sent(&self, kind: Sent) {
        self.sent[kind as usize].inc();
    }

    /// `pulseboard_delivery_latency_seconds`: from the arrival of the oldest event a snapshot
    /// holds to now, when its bytes are handed to the socket.
    pub(crate) fn observe_delivery(&self, oldest_arrival: crate::aggregate::Millis) {
        let seconds = (crate::clock::now_ms() - oldest_arrival).max(0) as f64 / 1000.0;
        self.latency.observe(seconds);
    }

    /// Snapshots this connection skipped because it was behind (latest wins).
    pub(crate) fn count_coalesced(&self, skipped: u64) {
        self.coalesced.inc_by(skipped);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let label = self.transport.label();
        self.metrics.connections.with_label_values(&[label]).dec();
        self.metrics
            .connections_closed
            .with_label_values(&[label, self.reason.label()])
            .inc();
        if self.reason == CloseReason::SlowClient {
            self.metrics
                .slow_client_disconnects
                .with_label_values(&[label])
                .inc();
        }
    }
}

/// One listed connection: what `connections.list` shows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct ConnectionInfo {
    /// `<node>/<n>`: unique in the cluster, so a kick can be sent to every node.
    pub id: String,
    pub user: String,
    pub transport: String,
    /// RFC 3339, when it opened.
    pub since: String,
}

struct Entry {
    /// The credential it was opened with.
    grant: Grant,
    transport: Transport,
    since: Millis,
    /// Cancelled when it is ended, and at shutdown (a child of the registry's closing token);
    /// `None` for a stream registered with [`ConnectionGuard::register_stream`].
    kick: Option<CancellationToken>,
    /// 0 while it lives, then its [`Ending`]'s code (set once), which wakes `ending_waker`.
    ending: AtomicU8,
    ending_waker: AtomicWaker,
}

impl Entry {
    fn ending(&self) -> Option<Ending> {
        Ending::from_code(self.ending.load(Ordering::Acquire))
    }

    /// Ends it for `why`, unless it was ended already (the first reason stays); `true` when
    /// this call ended it.
    fn end(&self, why: Ending) -> bool {
        let first = self
            .ending
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.ending_waker.wake();
            if let Some(kick) = &self.kick {
                kick.cancel();
            }
        }
        first
    }
}

/// Ends one connection from outside its own loop.
#[derive(Clone)]
pub(crate) struct Ender(Arc<Entry>);

impl Ender {
    pub(crate) fn end(&self, why: Ending) {
        self.0.end(why);
    }

    /// Why the connection was ended, if it was.
    pub(crate) fn ending(&self) -> Option<Ending> {
        self.0.ending()
    }
}

/// This instance's live connections. Cloning is shallow.
#[derive(Clone)]
pub(crate) struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    node: String,
    /// Cancelled at shutdown; every entry's kick token is its child, so that a live connection
    /// waits on one signal for both (a shared token would be one lock all connections contend
    /// for on every wake-up).
    closing: CancellationToken,
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, Arc<Entry>>>,
    /// Bumped when a console connection opens or closes: presence changed.
    consoles: watch::Sender<u64>,
}

/// A connection's place in the registry; dropping it removes the entry.
pub(crate) struct Registration {
    registry: Registry,
    number: u64,
    entry: Arc<Entry>,
}

impl Registry {
    /// `closing`: the hub's shutdown token (`Hub::closing`).
    pub(crate) fn new(node: &str, closing: CancellationToken) -> Registry {
        Registry {
            inner: Arc::new(RegistryInner {
                node: node.to_owned(),
                closing,
                next: AtomicU64::new(1),
                entries: Mutex::default(),
                consoles: watch::channel(0).0,
            }),
        }
    }

    fn add(
        &self,
        grant: Grant,
        transport: Transport,
        kick: Option<CancellationToken>,
    ) -> Registration {
        let number = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            grant,
            transport,
            since: crate::clock::now_ms(),
            kick,
            ending: AtomicU8::new(0),
            ending_waker: AtomicWaker::new(),
        });
        self.lock().insert(number, entry.clone());
        self.console_changed(transport);
        Registration {
            registry: self.clone(),
            number,
            entry,
        }
    }

    fn console_changed(&self, transport: Transport) {
        if transport == Transport::Ws {
            self.inner.consoles.send_modify(|version| *version += 1);
        }
    }

    /// Every listed connection, oldest first.
    pub(crate) fn list(&self) -> Vec<ConnectionInfo> {
        self.lock()
            .iter()
            .map(|(number, entry)| ConnectionInfo {
                id: format!("{}/{number}", self.inner.node),
                user: entry.grant.user.clone(),
                transport: entry.transport.label().to_owned(),
                since: crate::clock::rfc3339(entry.since),
            })
            .collect()
    }

    /// Operators with a console open here (sorted, each once).
    pub(crate) fn operators(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .lock()
            .values()
            .filter(|e| e.transport == Transport::Ws)
            .map(|e| e.grant.user.clone())
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// Changes whenever a console connection opens or closes.
    pub(crate) fn watch_consoles(&self) -> watch::Receiver<u64> {
        self.inner.consoles.subscribe()
    }

    /// Ends the connection `id` if this instance holds it.
    pub(crate) fn kick(&self, id: &str) -> bool {
        let number = id
            .strip_prefix(self.inner.node.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|n| n.parse::<u64>().ok());
        let Some(number) = number else { return false };
        match self.lock().get(&number) {
            Some(entry) => {
                entry.end(Ending::Kicked);
                true
            }
            None => false,
        }
    }

    /// Ends every connection opened with the session whose key hash is `key` (it signed out);
    /// returns how many.
    pub(crate) fn end_session(&self, key: &str) -> usize {
        self.lock()
            .values()
            .filter(|e| matches!(&e.grant.kind, GrantKind::Session { key: k } if k == key))
            .filter(|e| e.end(Ending::Revoked))
            .count()
    }

    /// Ends every connection whose credential `judge` no longer finds good, each for the
    /// verdict's reason; returns the user and reason of each one ended.
    pub(crate) fn sweep(&self, judge: impl Fn(&Grant) -> Verdict) -> Vec<(String, Ending)> {
        let mut ended = Vec::new();
        for entry in self.lock().values() {
            if let Some(why) = Ending::of(judge(&entry.grant)) {
                if entry.end(why) {
                    ended.push((entry.grant.user.clone(), why));
                }
            }
        }
        ended
    }

    /// Plain map: a panic elsewhere cannot leave it half-changed; no `.await` while held.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Entry>>> {
        crate::sync::lock(&self.inner.entries)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.number);
        self.registry.console_changed(self.entry.transport);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn every_transport_and_kind_is_exported_from_the_start() {
        let transports = [Transport::Sse, Transport::Ws, Transport::Poll].map(Transport::label);
        assert_eq!(transports, crate::metrics::TRANSPORTS);
        assert_eq!(Sent::ALL.map(Sent::label), crate::metrics::MESSAGE_KINDS);
    }

    fn grant(user: &str, kind: GrantKind) -> Grant {
        Grant {
            user: user.into(),
            role: Role::Operator,
            epoch: "e1".into(),
            kind,
            issued_at: 0,
            expires_at: Millis::MAX,
        }
    }

    fn session(key: &str) -> GrantKind {
        GrantKind::Session { key: key.into() }
    }

    #[test]
    fn entries_live_as_long_as_their_registration_and_a_kick_finds_only_its_own() {
        let registry = Registry::new("web-1", CancellationToken::new());
        let closing = registry.inner.closing.clone();
        let sse = registry.add(grant("ada", GrantKind::Token), Transport::Sse, None);
        let console = registry.add(
            grant("bob", GrantKind::Token),
            Transport::Ws,
            Some(closing.child_token()),
        );
        let listed = registry.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, "web-1/1");
        assert_eq!(registry.operators(), vec!["bob".to_owned()]);
        assert!(!registry.kick("web-2/1"), "another node's id");
        assert!(registry.kick("web-1/1"));
        assert_eq!(sse.entry.ending(), Some(Ending::Kicked));
        let console_kick = console.entry.kick.clone().expect("a token");
        assert!(!console_kick.is_cancelled());
        assert!(registry.kick("web-1/2"));
        assert!(console_kick.is_cancelled());
        drop(console);
        assert!(registry.operators().is_empty());
        drop(sse);
        assert!(registry.list().is_empty());
    }

    #[test]
    fn a_sign_out_ends_exactly_the_connections_of_that_session() {
        let registry = Registry::new("web-1", CancellationToken::new());
        let closing = registry.inner.closing.clone();
        let signed_out = registry.add(grant("ada", session("k1")), Transport::Sse, None);
        let console = registry.add(
            grant("ada", session("k1")),
            Transport::Ws,
            Some(closing.child_token()),
        );
        let other_session = registry.add(grant("ada", session("k2")), Transport::Sse, None);
        let token = registry.add(grant("ada", GrantKind::Token), Transport::Poll, None);
        assert_eq!(registry.end_session("k1"), 2);
        assert_eq!(signed_out.entry.ending(), Some(Ending::Revoked));
        assert!(console
            .entry
            .kick
            .as_ref()
            .is_some_and(|k| k.is_cancelled()));
        assert_eq!(other_session.entry.ending(), None);
        assert_eq!(token.entry.ending(), None);
        assert_eq!(registry.end_session("k1"), 0, "each is ended once");
    }

    #[test]
    fn a_sweep_ends_what_the_judge_refuses_for_its_reason_and_keeps_the_first_reason() {
        let registry = Registry::new("web-1", CancellationToken::new());
        let kept = registry.add(grant("ada", GrantKind::Token), Transport::Sse, None);
        let revoked = registry.add(grant("bob", GrantKind::Token), Transport::Sse, None);
        let expired = registry.add(grant("cy", session("k")), Transport::Ws, None);
        let kicked = registry.add(grant("bob", session("k2")), Transport::Sse, None);
        assert!(registry.kick("web-1/4"));
        let ended = registry.sweep(|g| match g.user.as_str() {
            "bob" => Verdict::Revoked,
            "cy" => Verdict::Expired,
            _ => Verdict::Good,
        });
        assert_eq!(
            ended,
            vec![
                ("bob".to_owned(), Ending::Revoked),
                ("cy".to_owned(), Ending::Expired)
            ]
        );
        assert_eq!(kept.entry.ending(), None);
        assert_eq!(revoked.entry.ending(), Some(Ending::Revoked));
        assert_eq!(expired.entry.ending(), Some(Ending::Expired));
        assert_eq!(kicked.entry.ending(), Some(Ending::Kicked));
        assert!(registry
            .sweep(|_| Verdict::Revoked)
            .iter()
            .all(|(u, _)| u == "ada"));
    }

    #[test]
    fn an_ending_round_trips_through_its_code() {
        for ending in Ending::ALL {
            assert_eq!(Ending::from_code(ending.code()), Some(ending));
        }
        assert_eq!(Ending::from_code(0), None);
        assert_eq!(Ending::from_code(9), None);
    }

    #[test]
    fn every_close_reason_of_a_transport_is_exported_for_it() {
        for transport in [Transport::Sse, Transport::Ws, Transport::Poll] {
            let (_, exported) = crate::metrics::CLOSE_REASONS
                .iter()
                .find(|(name, _)| *name == transport.label())
                .expect("listed");
            let reasons: Vec<&str> = CloseReason::all_for(transport)
                .into_iter()
                .map(CloseReason::label)
                .collect();
            assert_eq!(&reasons, exported, "{transport:?}");
        }
    }
}
