//! What consoles may subscribe to besides snapshots (docs/api.md, Console: pushes): the sampled
//! tail of accepted events, audit entries and presence. Each item is the push's payload, JSON
//! encoded once for every console of this instance.
//!
//! Bounded on purpose: a console that falls behind the events or audit channel loses the oldest
//! items (it counts them as skipped); presence is latest-wins.

use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// Items a console may fall behind by before it starts skipping.
const CHANNEL: usize = 256;

/// Cloning is shallow.
#[derive(Clone)]
pub(crate) struct ConsoleFeeds {
    /// `{"event": {…}, "skipped": n}`, at most 50 a second (the leader samples).
    pub events: broadcast::Sender<Arc<str>>,
    /// One audit row each.
    pub audit: broadcast::Sender<Arc<str>>,
    /// `{"operators": [{"user","node"}…]}`, the cluster's consoles.
    pub presence: watch::Sender<Arc<str>>,
}

impl Default for ConsoleFeeds {
    fn default() -> Self {
        ConsoleFeeds {
            events: broadcast::channel(CHANNEL).0,
            audit: broadcast::channel(CHANNEL).0,
            presence: watch::channel(Arc::from(r#"{"operators":[]}"#)).0,
        }
    }
}
