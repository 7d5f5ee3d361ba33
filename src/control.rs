//! The cluster as one console sees it (docs/api.md, Console): questions every instance answers
//! (`status`, `connections.list`, `connections.kick`), the beacons by which instances know each
//! other, and presence (which operators have a console open, on any instance).
//!
//! Only the types and the bookkeeping live here; the messages travel over `<prefix>.live` (see
//! `fanout`): a request goes to every instance at once, each answers to the asker's own queue
//! with the request's correlation id. An instance knows the others from their beacons (every
//! [`BEACON_EVERY`]), so one that stops answering is listed as `unreachable` instead of
//! missing. No transport and no broker here.

use crate::live::connection::{ConnectionInfo, Registry};
use crate::live::feeds::ConsoleFeeds;
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::status::StatusCell;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often every instance says it is there (and who has a console open on it).
pub const BEACON_EVERY: Duration = Duration::from_secs(2);
/// An instance silent this long is no longer listed at all (until then: `unreachable`).
const FORGET_AFTER: Duration = Duration::from_secs(30);
/// Operators of an instance silent this long are no longer shown as present.
const PRESENT_WITHIN: Duration = Duration::from_secs(6);

/// A question to every instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    Connections,
    Kick { id: String },
}

/// One instance's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Status(NodeStatus),
    Connections { connections: Vec<ConnectionInfo> },
    Kick { kicked: bool },
}

/// What `status` shows of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// `ok`, or `unreachable` for an instance that did not answer in time.
    pub state: String,
    pub is_leader: bool,
    pub leader: Option<String>,
    /// The ingest state of the latest snapshot this instance has.
    pub ingest: Option<String>,
    pub queue_depth: u64,
    pub dead_letters: u64,
    /// Open connections by transport (`sse`, `ws`, `poll`).
    pub connections: BTreeMap<String, i64>,
}

impl NodeStatus {
    pub fn unreachable(node: &str) -> NodeStatus {
        NodeStatus {
            node: node.to_owned(),
            state: "unreachable".into(),
            is_leader: false,
            leader: None,
            ingest: None,
            queue_depth: 0,
            dead_letters: 0,
            connections: BTreeMap::new(),
        }
    }
}

/// "I am here, and these operators have a console open on me."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    pub node: String,
    pub operators: Vec<String>,
    /// Sent once when an instance stops: forget it at once.
    #[serde(default)]
    pub leaving: bool,
}

/// One operator with a console open, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Present {
    pub user: String,
    pub node: String,
}

/// This instance, as it answers the others.
pub struct LocalNode {
    pub node: String,
    pub status: Arc<StatusCell>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    pub hub: Hub,
}

impl LocalNode {
    pub fn report(&self) -> NodeStatus {
        let status = self.status.get();
        let connections = ["sse", "ws", "poll"]
            .iter()
            .map(|t| {
                let open = self.metrics.connections.with_label_values(&[*t]).get();
                ((*t).to_owned(), open)
            })
            .collect();
        let ingest = self
            .hub
            .latest_frame()
            .map(|f| f.snapshot.ingest.state.as_str().to_owned());
        NodeStatus {
            node: self.node.clone(),
            state: "ok".into(),
            is_leader: status.ingest.is_leader,
            leader: status.ingest.leader,
            ingest,
            queue_depth: status.fanout.queue_depth,
            dead_letters: status.fanout.dead_letters,
            connections,
        }
    }

    pub fn answer(&self, request: &Request) -> Answer {
        match request {
            Request::Status => Answer::Status(self.report()),
            Request::Connections => Answer::Connections {
                connections: self.registry.list(),
            },
            Request::Kick { id } => Answer::Kick {
                kicked: self.registry.kick(id),
            },
        }
    }

    pub fn beacon(&self) -> Beacon {
        Beacon {
            node: self.node.clone(),
            operators: self.registry.operators(),
            leaving: false,
        }
    }
}

/// Answers on their way to one asker.
pub type AnswerSender = mpsc::Sender<(String, Answer)>;

/// What this instance knows of the cluster. Shared by `fanout` (which feeds it) and the console
/// (which asks).
pub struct Cluster {
    pub local: LocalNode,
    pub feeds: ConsoleFeeds,
    /// Other instances by name: when their last beacon came, and their operators.
    others: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    /// Questions waiting for answers, by correlation id.
    pending: Mutex<HashMap<String, AnswerSender>>,
}

impl Cluster {
    pub fn new(local: LocalNode, feeds: ConsoleFeeds) -> Cluster {
        Cluster {
            local,
            feeds,
            others: Mutex::default(),
            pending: Mutex::default(),
        }
    }

    /// Records another instance's beacon; refreshes presence when it changed.
    pub fn saw(&self, beacon: Beacon) {
        if beacon.node == self.local.node {
            return;
        }
        {
            let mut others = lock(&self.others);
            if beacon.leaving {
                others.remove(&beacon.node);
            } else {
                others.insert(beacon.node, (Instant::now(), beacon.operators));
            }
        }
        self.refresh_presence();
    }

    /// Other instances heard from lately, by name.
    pub fn other_nodes(&self) -> Vec<String> {
        let mut others = lock(&self.others);
        others.retain(|_, (seen, _)| seen.elapsed() < FORGET_AFTER);
        let mut nodes: Vec<String> = others.keys().cloned().collect();
        nodes.sort();
        nodes
    }

    /// Every operator with a console open on an instance heard from lately.
    pub fn presence(&self) -> Vec<Present> {
        let mut present: Vec<Present> = self
            .local
            .registry
            .operators()
            .into_iter()
            .map(|user| Present {
                user,
                node: self.local.node.clone(),
            })
            .collect();
        for (node, (seen, operators)) in lock(&self.others).iter() {
            if seen.elapsed() < PRESENT_WITHIN {
                present.extend(operators.iter().map(|user| Present {
                    user: user.clone(),
                    node: node.clone(),
                }));
            }
        }
        present.sort();
        present
    }

    /// Pushes presence to this instance's consoles if it changed.
    pub fn refresh_presence(&self) {
        let payload = serde_json::json!({ "operators": self.presence() }).to_string();
        self.feeds.presence.send_if_modified(|current| {
            if **current == *payload {
                false
            } else {
                *current = Arc::from(payload.as_str());
                true
            }
        });
    }

    /// Registers a question; answers to `correlation` go to the returned receiver until
    /// [`Cluster::forget`].
    pub fn expect(&self, correlation: &str) -> mpsc::Receiver<(String, Answer)> {
        let (sender, receiver) = mpsc::channel(64);
        lock(&self.pending).insert(correlation.to_owned(), sender);
        receiver
    }

    pub fn forget(&self, correlation: &str) {
        lock(&self.pending).remove(correlation);
    }

    /// Hands an answer to whoever asks under `correlation` (late ones are dropped).
    pub fn deliver(&self, correlation: &str, node: String, answer: Answer) {
        if let Some(sender) = lock(&self.pending).get(correlation) {
            let _ = sender.try_send((node, answer));
        }
    }
}

/// Plain maps: a panic elsewhere cannot leave them half-changed; no `.await` while held.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let local = LocalNode {
            node: "a".into(),
            status: Arc::default(),
            metrics: Arc::new(Metrics::new("a").expect("metrics")),
            registry: Registry::new("a", tokio_util::sync::CancellationToken::new()),
            hub: Hub::new(0),
        };
        Cluster::new(local, ConsoleFeeds::default())
    }

    #[test]
    fn beacons_make_nodes_known_and_operators_present_until_they_leave() {
        let cluster = cluster();
        let mut presence = cluster.feeds.presence.subscribe();
        cluster.saw(Beacon {
            node: "b".into(),
            operators: vec!["ops".into()],
            leaving: false,
        });
        assert_eq!(cluster.other_nodes(), vec!["b".to_owned()]);
        assert!(presence.has_changed().unwrap_or(false));
        assert!(presence.borrow_and_update().contains(r#""user":"ops""#));
        cluster.saw(Beacon {
            node: "b".into(),
            operators: vec![],
            leaving: true,
        });
        assert!(cluster.other_nodes().is_empty());
        assert!(cluster.presence().is_empty());
    }

    #[test]
    fn requests_and_answers_keep_their_wire_shape() {
        let request: Request =
            serde_json::from_str(r#"{"request":"kick","id":"a/1"}"#).expect("request");
        assert_eq!(request, Request::Kick { id: "a/1".into() });
        let cluster = cluster();
        let answer = cluster.local.answer(&Request::Status);
        let text = serde_json::to_string(&answer).expect("json");
        assert_eq!(serde_json::from_str::<Answer>(&text).expect("back"), answer);
    }
}
