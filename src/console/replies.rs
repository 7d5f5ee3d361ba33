//! The payloads the console builds (docs/api.md, Console: commands and pushes), as types: what
//! the contract promises each reply holds, and the `welcome` and `audit` pushes. Pure.
//!
//! They reach the wire through `serde_json::Value` ([`payload`]), whose objects keep their
//! keys sorted (serde_json without `preserve_order`), exactly as the `json!` literals they
//! replace did: the order of a struct's fields does not change a byte of a frame.

use super::commands::Topic;
use super::protocol::{ErrorCode, Failure};
use crate::clock::rfc3339;
use crate::control::NodeStatus;
use crate::dlq::DeadLetter;
use crate::live::connection::ConnectionInfo;
use crate::store::{AuditRow, KioskLink};
use serde::Serialize;
use serde_json::Value;

/// The first frame of a connection.
#[derive(Debug, Serialize)]
pub(super) struct Welcome<'a> {
    pub user: &'a str,
    pub node: &'a str,
    pub commands: Vec<&'static str>,
}

/// `ping`.
#[derive(Debug, Serialize)]
pub(super) struct Pong {
    pub pong: bool,
    pub server_time: String,
}

/// `subscribe` and `unsubscribe`: the topics now on, in the order of [`Topic`].
#[derive(Debug, Serialize)]
pub(super) struct Subscribed {
    pub subscribed: Vec<Topic>,
}

/// `status`: the cluster as the leader's report (else this instance's) says it, and every node.
#[derive(Debug, Serialize)]
pub(super) struct ClusterStatus {
    pub node: String,
    pub leader: Option<String>,
    pub ingest: Option<String>,
    pub queue_depth: u64,
    pub dead_letters: u64,
    pub nodes: Vec<NodeStatus>,
}

/// `connections.list`.
#[derive(Debug, Serialize)]
pub(super) struct Connections {
    pub connections: Vec<ConnectionInfo>,
    pub nodes: Vec<NodeReach>,
}

/// Whether a node answered a `connections.list` in time.
#[derive(Debug, Serialize)]
pub(super) struct NodeReach {
    pub node: String,
    pub state: Reach,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Reach {
    Ok,
    Unreachable,
}

/// `connections.kick`: which node closed it.
#[derive(Debug, Serialize)]
pub(super) struct Kicked {
    pub kicked: String,
    pub node: String,
}

/// `tokens.list`: every kiosk link, by name.
#[derive(Debug, Serialize)]
pub(super) struct KioskLinks {
    pub links: Vec<KioskLinkEntry>,
}

#[derive(Debug, Serialize)]
pub(super) struct KioskLinkEntry {
    pub name: String,
    pub created: String,
    pub expires: String,
    /// `null` until a screen used it.
    pub last_used: Option<String>,
}

impl KioskLinks {
    pub(super) fn of(links: &[KioskLink]) -> KioskLinks {
        let links = links
            .iter()
            .map(|link| KioskLinkEntry {
                name: link.name.clone(),
                created: rfc3339(link.created_at),
                expires: rfc3339(link.expires_at),
                last_used: link.last_used_at.map(rfc3339),
            })
            .collect();
        KioskLinks { links }
    }
}

/// `tokens.revoke`: which link, and how many of its connections this node closed (the other
/// nodes close theirs on the fan-out's word, or within a second of reading the database).
#[derive(Debug, Serialize)]
pub(super) struct Revoked {
    pub revoked: String,
    pub ended_here: usize,
}

/// `ingest.pause` and `ingest.resume`.
#[derive(Debug, Serialize)]
pub(super) struct Paused {
    pub paused: bool,
    /// The leader's snapshot showed the new state in time.
    pub applied: bool,
    pub leader: Option<String>,
}

/// `dlq.peek`.
#[derive(Debug, Serialize)]
pub(super) struct Peeked {
    pub count: usize,
    pub messages: Vec<DeadLetter>,
}

/// `dlq.purge`.
#[derive(Debug, Serialize)]
pub(super) struct Purged {
    pub purged: u32,
}

/// `audit.tail`, newest first.
#[derive(Debug, Serialize)]
pub(super) struct AuditTail {
    pub entries: Vec<AuditEntry>,
}

/// An audit row as consoles see it (in `audit.tail` and in `audit` pushes).
#[derive(Debug, Serialize)]
pub(super) struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub user: String,
    pub node: String,
    pub command: String,
    /// The payload the command was sent with, as JSON (`null` if the stored text is not).
    pub payload: Value,
    pub outcome: String,
    pub detail: String,
}

impl AuditEntry {
    pub(super) fn of(row: &AuditRow) -> AuditEntry {
        AuditEntry {
            id: row.id,
            at: rfc3339(row.at),
            user: row.username.clone(),
            node: row.node.clone(),
            command: row.command.clone(),
            payload: serde_json::from_str(&row.payload).unwrap_or(Value::Null),
            outcome: row.outcome.clone(),
            detail: row.detail.clone(),
        }
    }
}

/// A reply's payload as JSON, its objects' keys sorted as in every frame.
pub(super) fn payload(reply: &impl Serialize) -> Result<Value, Failure> {
    // Only a map whose keys are not text could fail; no reply has one.
    serde_json::to_value(reply)
        .map_err(|e| Failure::new(ErrorCode::Internal, format!("the reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The text of `reply` as a frame carries it.
    fn wire(reply: impl Serialize) -> String {
        serde_json::to_value(reply).expect("encodes").to_string()
    }

    /// Each typed reply gives the very bytes of the `json!` literal it replaced.
    #[test]
    fn typed_replies_encode_as_the_literals_they_replaced() {
        let welcome = Welcome {
            user: "ada",
            node: "web-1",
            commands: vec!["help", "ping"],
        };
        let literal = json!({"user": "ada", "node": "web-1", "commands": ["help", "ping"]});
        assert_eq!(wire(welcome), literal.to_string());
        let subscribed = Subscribed {
            subscribed: vec![Topic::Snapshots, Topic::Presence],
        };
        let literal = json!({"subscribed": ["snapshots", "presence"]});
        assert_eq!(wire(subscribed), literal.to_string());
        let status = ClusterStatus {
            node: "web-1".into(),
            leader: None,
            ingest: Some("running".into()),
            queue_depth: 3,
            dead_letters: 0,
            nodes: vec![NodeStatus::unreachable("web-2")],
        };
        let literal = json!({"node": "web-1", "leader": null, "ingest": "running",
            "queue_depth": 3, "dead_letters": 0, "nodes": [NodeStatus::unreachable("web-2")]});
        assert_eq!(wire(status), literal.to_string());
        let listed = Connections {
            connections: Vec::new(),
            nodes: vec![
                NodeReach {
                    node: "web-1".into(),
                    state: Reach::Ok,
                },
                NodeReach {
                    node: "web-2".into(),
                    state: Reach::Unreachable,
                },
            ],
        };
        let literal = json!({"connections": [], "nodes": [{"node": "web-1", "state": "ok"},
            {"node": "web-2", "state": "unreachable"}]});
        assert_eq!(wire(listed), literal.to_string());
        let paused = Paused {
            paused: true,
            applied: false,
            leader: Some("web-1".into()),
        };
        let literal = json!({"paused": true, "applied": false, "leader": "web-1"});
        assert_eq!(wire(paused), literal.to_string());
    }

    #[test]
    fn an_audit_entry_shows_its_payload_as_json_and_its_time_as_rfc_3339() {
        let row = AuditRow {
            id: 7,
            at: 0,
            username: "ada".into(),
            node: "web-1".into(),
            command: "dlq.purge".into(),
            payload: r#"{"confirm":true}"#.into(),
            outcome: "ok".into(),
            detail: "{}".into(),
        };
        let literal = json!({"id": 7, "at": rfc3339(0), "user": "ada", "node": "web-1",
            "command": "dlq.purge", "payload": {"confirm": true}, "outcome": "ok", "detail": "{}"});
        assert_eq!(wire(AuditEntry::of(&row)), literal.to_string());
    }
}
