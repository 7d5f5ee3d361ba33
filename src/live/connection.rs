//! Connection accounting for the metrics (docs/api.md, Metrics): open connections by transport,
//! why each one closed.

use crate::metrics::Metrics;
use prometheus::{Histogram, IntCounter};
use std::sync::Arc;

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
        }
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
