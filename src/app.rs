//! The application state: the core and the transports' settings, everything a request
//! handler or a console session may use, built once by `startup` and passed in (no globals
//! beyond the metrics registry). It sits below the transports (`http`, `console`), which read
//! it, and above everything they read through it.

use crate::core::Core;
use crate::rabbitmq::Topology;
use std::sync::Arc;
use std::time::Duration;

/// Everything a request handler or console session may use: the core, and the settings of
/// the transports.
pub(crate) struct AppState {
    /// This instance's shared state (hub, registry, feeds, status, metrics, fan-out, store).
    pub core: Arc<Core>,
    pub auth: crate::auth::AuthState,
    /// `PULSEBOARD_METRICS_TOKEN`: the bearer token `/metrics` asks for, when set.
    pub metrics_token: Option<secrecy::SecretString>,
    pub live: LiveSettings,
    /// How often each user may ask for a snapshot (`POST /api/dashboard/refresh`).
    pub refresh_limit: crate::live::limit::RefreshLimiter,
    /// `PULSEBOARD_TRUST_PROXY`: believe `X-Forwarded-*` (see `http::proxy`).
    pub trust_proxy: bool,
    /// `PULSEBOARD_MAX_STREAMS_PER_USER`: live connections per user on this instance.
    pub streams: crate::live::limit::StreamLimiter,
    /// Where the console reaches RabbitMQ for the dead-letter commands.
    pub broker: BrokerSettings,
    /// Cancelled when shutdown begins: `/readyz` answers 503 from then on, while everything
    /// else is still served for the drain period (`PULSEBOARD_SHUTDOWN_DRAIN_MS`).
    pub draining: tokio_util::sync::CancellationToken,
    /// `PULSEBOARD_TIMEZONE`: the history API's `compare` shifts by wall-clock days in it.
    pub timezone: chrono_tz::Tz,
}

/// RabbitMQ as the console's dead-letter commands reach it: a connection of their own per
/// command, so a slow broker never holds up ingest or fan-out.
#[derive(Debug, Clone)]
pub(crate) struct BrokerSettings {
    pub amqp_url: secrecy::SecretString,
    pub topology: Topology,
}

/// Timing of live connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiveSettings {
    /// At most one snapshot per this interval (the page shows when figures are stale).
    pub snapshot_interval: Duration,
    /// SSE comment heartbeat (and WebSocket ping) interval.
    pub heartbeat: Duration,
    /// How long a client may leave sent data unread before the kernel aborts its connection.
    pub stall_timeout: Duration,
}

impl LiveSettings {
    pub(crate) fn new(snapshot_interval: Duration, heartbeat: Duration) -> Self {
        LiveSettings {
            snapshot_interval,
            heartbeat,
            stall_timeout: (heartbeat * 2).clamp(Duration::from_secs(5), Duration::from_secs(60)),
        }
    }
}
