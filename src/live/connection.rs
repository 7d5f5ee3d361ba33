//! Connection accounting for the metrics (docs/api.md, Metrics): open connections by transport,
//! why each one closed; and the [`Registry`] of this instance's live connections (who, how,
//! since when), which the console lists and kicks from.
//!
//! A connection that registers gets one `Arc`'d entry at open, removed when its guard drops:
//! nothing is paid per delivery, the stream loops only watch one cancellation token.

use crate::aggregate::Millis;
use crate::metrics::Metrics;
use futures_util::task::AtomicWaker;
use prometheus::{Histogram, IntCounter};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Poll,
    Ws,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Ws => "ws",
        }
    }
}

/// What a connection sent, for `pulseboard_messages_sent_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Snapshot,
    Announcement,
    Heartbeat,
}

impl Sent {
    /// In declaration order, so that `kind as usize` indexes a per-kind array built from it.
    const ALL: [Sent; 3] = [Sent::Snapshot, Sent::Announcement, Sent::Heartbeat];

    pub fn label(self) -> &'static str {
        match self {
            Sent::Snapshot => "snapshot",
            Sent::Announcement => "announcement",
            Sent::Heartbeat => "heartbeat",
        }
    }
}

/// Counts a connection open while it lives, and closed, with its reason, when dropped.
///
/// The per-message series are resolved once, at open: looking a label set up costs a hash and a
/// lock, paid for every message on every connection (40 000 times a second at 10 000 clients).
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    transport: Transport,
    reason: &'static str,
    sent: [IntCounter; 3],
    latency: Histogram,
    coalesced: IntCounter,
    /// Its entry in the registry, while it lives (removed on drop).
    registration: Option<Registration>,
}

impl ConnectionGuard {
    /// `resuming`: the request carried a `Last-Event-ID` (or `after`), so it is a reconnect.
    pub fn open(metrics: Arc<Metrics>, transport: Transport, resuming: bool) -> Self {
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
            reason: "client_closed",
            registration: None,
        }
    }

    /// Lists this connection in `registry` under `user` until it drops; the token it returns
    /// is cancelled by an operator's kick (the stream then ends with reason `kicked`) or at
    /// shutdown.
    pub fn register(&mut self, registry: &Registry, user: &str) -> CancellationToken {
        let kick = registry.inner.closing.child_token();
        self.registration = Some(registry.add(user, self.transport, Some(kick.clone())));
        kick
    }

    /// Lists this connection like [`ConnectionGuard::register`], for a stream that polls
    /// [`ConnectionGuard::kicked`] instead of waiting on a token (and learns of shutdown
    /// elsewhere): no token, no lock, a few bytes less per connection.
    pub fn register_stream(&mut self, registry: &Registry, user: &str) {
        self.registration = Some(registry.add(user, self.transport, None));
    }

    /// Whether an operator kicked this connection; if not yet, `waker` is woken when one does.
    pub fn kicked(&self, waker: &Waker) -> bool {
        self.registration.as_ref().is_some_and(|r| {
            r.entry.kicked_waker.register(waker);
            r.entry.kicked.load(Ordering::Acquire)
        })
    }

    /// No other reason was recorded: as far as the server knows, the client left.
    pub fn closed_by_client(&self) -> bool {
        self.reason == "client_closed"
    }

    /// Records why the server ends this connection (the default is that the client left).
    pub fn set_reason(&mut self, reason: &'static str) {
        self.reason = reason;
    }

    pub fn count_sent(&self, kind: Sent) {
        self.sent[kind as usize].inc();
    }

    /// `pulseboard_delivery_latency_seconds`: from the arrival of the oldest event a snapshot
    /// holds to now, when its bytes are handed to the socket.
    pub fn observe_delivery(&self, oldest_arrival: crate::aggregate::Millis) {
        let seconds = (crate::clock::now_ms() - oldest_arrival).max(0) as f64 / 1000.0;
        self.latency.observe(seconds);
    }

    /// Snapshots this connection skipped because it was behind (latest wins).
    pub fn count_coalesced(&self, skipped: u64) {
        self.coalesced.inc_by(skipped);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let label = self.transport.label();
        self.metrics.connections.with_label_values(&[label]).dec();
        self.metrics
            .connections_closed
            .with_label_values(&[label, self.reason])
            .inc();
        if self.reason == "slow_client" {
            self.metrics
                .slow_client_disconnects
                .with_label_values(&[label])
                .inc();
        }
    }
}

/// One listed connection: what `connections.list` shows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConnectionInfo {
    /// `<node>/<n>`: unique in the cluster, so a kick can be sent to every node.
    pub id: String,
    pub user: String,
    pub transport: String,
    /// RFC 3339, when it opened.
    pub since: String,
}

struct Entry {
    user: String,
    transport: Transport,
    since: Millis,
    /// Cancelled by a kick, and at shutdown (a child of the registry's closing token); `None`
    /// for a stream registered with [`ConnectionGuard::register_stream`].
    kick: Option<CancellationToken>,
    /// Set by a kick, which then wakes `kicked_waker`.
    kicked: AtomicBool,
    kicked_waker: AtomicWaker,
}

/// This instance's live connections. Cloning is shallow.
#[derive(Clone)]
pub struct Registry {
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
pub struct Registration {
    registry: Registry,
    number: u64,
    entry: Arc<Entry>,
}

impl Registry {
    /// `closing`: the hub's shutdown token (`Hub::closing`).
    pub fn new(node: &str, closing: CancellationToken) -> Registry {
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
        user: &str,
        transport: Transport,
        kick: Option<CancellationToken>,
    ) -> Registration {
        let number = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            user: user.to_owned(),
            transport,
            since: crate::clock::now_ms(),
            kick,
            kicked: AtomicBool::new(false),
            kicked_waker: AtomicWaker::new(),
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
    pub fn list(&self) -> Vec<ConnectionInfo> {
        self.lock()
            .iter()
            .map(|(number, entry)| ConnectionInfo {
                id: format!("{}/{number}", self.inner.node),
                user: entry.user.clone(),
                transport: entry.transport.label().to_owned(),
                since: crate::clock::rfc3339(entry.since),
            })
            .collect()
    }

    /// Operators with a console open here (sorted, each once).
    pub fn operators(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .lock()
            .values()
            .filter(|e| e.transport == Transport::Ws)
            .map(|e| e.user.clone())
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// Changes whenever a console connection opens or closes.
    pub fn watch_consoles(&self) -> watch::Receiver<u64> {
        self.inner.consoles.subscribe()
    }

    /// Ends the connection `id` if this instance holds it.
    pub fn kick(&self, id: &str) -> bool {
        let number = id
            .strip_prefix(self.inner.node.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|n| n.parse::<u64>().ok());
        let Some(number) = number else { return false };
        match self.lock().get(&number) {
            Some(entry) => {
                entry.kicked.store(true, Ordering::Release);
                entry.kicked_waker.wake();
                if let Some(kick) = &entry.kick {
                    kick.cancel();
                }
                true
            }
            None => false,
        }
    }

    /// Plain map: a panic elsewhere cannot leave it half-changed; no `.await` while held.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Entry>>> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    #[test]
    fn entries_live_as_long_as_their_registration_and_a_kick_finds_only_its_own() {
        let registry = Registry::new("web-1", CancellationToken::new());
        let closing = registry.inner.closing.clone();
        let sse = registry.add("ada", Transport::Sse, None);
        let console = registry.add("bob", Transport::Ws, Some(closing.child_token()));
        let listed = registry.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, "web-1/1");
        assert_eq!(registry.operators(), vec!["bob".to_owned()]);
        assert!(!registry.kick("web-2/1"), "another node's id");
        assert!(registry.kick("web-1/1"));
        assert!(sse.entry.kicked.load(Ordering::Acquire));
        let console_kick = console.entry.kick.clone().expect("a token");
        assert!(!console_kick.is_cancelled());
        assert!(registry.kick("web-1/2"));
        assert!(console_kick.is_cancelled());
        drop(console);
        assert!(registry.operators().is_empty());
        drop(sse);
        assert!(registry.list().is_empty());
    }
}
