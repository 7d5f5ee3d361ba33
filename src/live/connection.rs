//! Connection accounting for SPEC §8: open connections by transport, why each one closed.

use crate::metrics::Metrics;
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

/// Counts a connection open while it lives, and closed, with its reason, when dropped.
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    transport: Transport,
    reason: &'static str,
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
        ConnectionGuard {
            metrics,
            transport,
            reason: "client_closed",
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records why the server ends this connection (the default is that the client left).
    pub fn set_reason(&mut self, reason: &'static str) {
        self.reason = reason;
    }

    pub fn count_sent(&self, kind: &str) {
        self.metrics
            .messages_sent
            .with_label_values(&[self.transport.label(), kind])
            .inc();
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
