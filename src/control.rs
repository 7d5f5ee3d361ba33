//! The cluster as one console sees it (docs/api.md, Console): questions every instance answers
//! (`status`, `connections.list`, `connections.kick`), the beacons by which instances know each
//! other, and presence (which operators have a console open, on any instance).
//!
//! Only the types and the bookkeeping live here; the messages travel over `<prefix>.live` (see
//! `fanout`): a request goes to every instance at once, each answers to the asker's own queue
//! with the request's correlation id. An instance knows the others from their beacons (every
//! [`BEACON_EVERY`]), so one that stops answering is listed as `unreachable` instead of
//! missing. No transport and no broker here.

use crate::live::connection::ConnectionInfo;
use crate::sync::lock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often every instance says it is there (and who has a console open on it).
pub(crate) const BEACON_EVERY: Duration = Duration::from_secs(2);
/// An instance silent this long is no longer listed at all (until then: `unreachable`).
const FORGET_AFTER: Duration = Duration::from_secs(30);
/// Operators of an instance silent this long are no longer shown as present.
const PRESENT_WITHIN: Duration = Duration::from_secs(6);

/// A question to every instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub(crate) enum Request {
    Status,
    Connections,
    Kick { id: String },
}

/// One instance's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub(crate) enum Answer {
    Status(NodeStatus),
    Connections { connections: Vec<ConnectionInfo> },
    Kick { kicked: bool },
}

/// What `status` shows of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeStatus {
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
    pub(crate) fn unreachable(node: &str) -> NodeStatus {
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
pub(crate) struct Beacon {
    pub node: String,
    pub operators: Vec<String>,
    /// Sent once when an instance stops: forget it at once.
    #[serde(default)]
    pub leaving: bool,
}

/// One operator with a console open, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct Present {
    pub user: String,
    pub node: String,
}

/// Answers on their way to one asker.
pub(crate) type AnswerSender = mpsc::Sender<(String, Answer)>;

/// What this instance knows of the other instances: their beacons, and the questions it
/// waits for answers to. Fed by `fanout`, asked by the console (through `core::Core`).
#[derive(Default)]
pub(crate) struct Cluster {
    /// Other instances by name: when their last beacon came, and their operators.
    others: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    /// Questions waiting for answers, by correlation id.
    pending: Mutex<HashMap<String, AnswerSender>>,
}

impl Cluster {
    /// Records another instance's beacon (or, when it is leaving, forgets it at once).
    pub(crate) fn saw(&self, beacon: Beacon) {
        let mut others = lock(&self.others);
        if beacon.leaving {
            others.remove(&beacon.node);
        } else {
            others.insert(beacon.node, (Instant::now(), beacon.operators));
        }
    }

    /// Other instances heard from lately, by name.
    pub(crate) fn other_nodes(&self) -> Vec<String> {
        let mut others = lock(&self.others);
        others.retain(|_, (seen, _)| seen.elapsed() < FORGET_AFTER);
        let mut nodes: Vec<String> = others.keys().cloned().collect();
        nodes.sort();
        nodes
    }

    /// The operators with a console open on an instance heard from lately.
    pub(crate) fn present_elsewhere(&self) -> Vec<Present> {
        let mut present = Vec::new();
        for (node, (seen, operators)) in lock(&self.others).iter() {
            if seen.elapsed() < PRESENT_WITHIN {
                present.extend(operators.iter().map(|user| Present {
                    user: user.clone(),
                    node: node.clone(),
                }));
            }
        }
        present
    }

    /// Registers a question; answers to `correlation` go to the returned receiver until
    /// [`Cluster::forget`].
    pub(crate) fn expect(&self, correlation: &str) -> mpsc::Receiver<(String, Answer)> {
        let (sender, receiver) = mpsc::channel(64);
        lock(&self.pending).insert(correlation.to_owned(), sender);
        receiver
    }

    pub(crate) fn forget(&self, correlation: &str) {
        lock(&self.pending).remove(correlation);
    }

    /// Hands an answer to whoever asks under `correlation` (late ones are dropped).
    pub(crate) fn deliver(&self, correlation: &str, node: String, answer: Answer) {
        if let Some(sender) = lock(&self.pending).get(correlation) {
            let _ = sender.try_send((node, answer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beacons_make_nodes_known_and_operators_present_until_they_leave() {
        let cluster = Cluster::default();
        cluster.saw(Beacon {
            node: "b".into(),
            operators: vec!["ops".into()],
            leaving: false,
        });
        assert_eq!(cluster.other_nodes(), vec!["b".to_owned()]);
        assert_eq!(
            cluster.present_elsewhere(),
            vec![Present {
                user: "ops".into(),
                node: "b".into()
            }]
        );
        cluster.saw(Beacon {
            node: "b".into(),
            operators: vec![],
            leaving: true,
        });
        assert!(cluster.other_nodes().is_empty());
        assert!(cluster.present_elsewhere().is_empty());
    }

    #[test]
    fn requests_keep_their_wire_shape() {
        let request: Request =
            serde_json::from_str(r#"{"request":"kick","id":"a/1"}"#).expect("request");
        assert_eq!(request, Request::Kick { id: "a/1".into() });
    }
}
