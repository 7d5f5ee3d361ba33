//! What each command does (docs/api.md, Console: commands), against the application state:
//! cluster-wide questions over `<prefix>.live` (see `control`), the stored ingest pause, the
//! dead-letter queue, announcements (`announce`: the same path as `POST /api/announcements`),
//! the audit log. Returns the reply's payload or a [`Failure`] with its error code; auditing
//! and sending are the session's.

use super::commands::Command;
use super::protocol::ErrorCode;
use crate::app::AppState;
use crate::clock::{now_ms, rfc3339};
use crate::control::{Answer, NodeStatus, Request};
use crate::dlq::{self, DlqError};
use crate::live::{IngestState, Snapshot};
use crate::rabbitmq::BrokerError;
use crate::store::{AuditRow, StoreError};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use std::time::Duration;

/// How long other instances have to answer a cluster-wide question.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// How long `ingest.pause`/`resume` wait for the leader's snapshot to show the new state.
const APPLIED_WITHIN: Duration = Duration::from_secs(3);

/// A command that did not succeed: the error code and message of its reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        let code = if store_unreachable(&error) {
            ErrorCode::Unavailable
        } else {
            ErrorCode::Internal
        };
        Failure::new(code, format!("database: {error}"))
    }
}

/// The database did not answer (as opposed to answering with an error).
fn store_unreachable(error: &StoreError) -> bool {
    match error {
        StoreError::Connect(_) => true,
        StoreError::Database(error) => matches!(
            error,
            sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed
        ),
        _ => false,
    }
}

impl From<DlqError> for Failure {
    fn from(error: DlqError) -> Self {
        let code = match &error {
            DlqError::Broker(BrokerError::DeadLetterRefused) | DlqError::NotRouted(_) => {
                ErrorCode::Internal
            }
            DlqError::Broker(_) | DlqError::Amqp(_) | DlqError::Slow(_) => ErrorCode::Unavailable,
        };
        Failure::new(code, error.to_string())
    }
}

/// Performs a command that runs apart from the session (the session answers `help`, `ping`,
/// `subscribe` and `unsubscribe` itself).
pub async fn perform(command: &Command, state: &AppState, user: &str) -> Result<Value, Failure> {
    match command {
        Command::Help => Ok(super::commands::help()),
        Command::Ping => Ok(json!({"pong": true, "server_time": rfc3339(now_ms())})),
        Command::Subscribe(_) | Command::Unsubscribe(_) => Err(Failure::new(
            ErrorCode::Internal,
            "subscriptions belong to the session",
        )),
        Command::Status => Ok(status(state).await),
        Command::IngestPause => set_paused(state, true).await,
        Command::IngestResume => set_paused(state, false).await,
        Command::DlqPeek { limit } => {
            let letters = dlq::peek(amqp(state), &state.broker.topology, *limit).await?;
            Ok(json!({"count": letters.len(), "messages": letters}))
        }
        Command::DlqReplay { limit } => {
            let replayed = dlq::replay(amqp(state), &state.broker.topology, *limit).await?;
            Ok(json!(replayed))
        }
        Command::DlqPurge => {
            let purged = dlq::purge(amqp(state), &state.broker.topology).await?;
            Ok(json!({"purged": purged}))
        }
        Command::Announce { message, level } => {
            let announcement = state
                .core
                .publish_announcement(*level, message, user, now_ms())
                .await?;
            Ok(json!(announcement))
        }
        Command::ConnectionsList => Ok(connections(state).await),
        Command::ConnectionsKick { id } => kick(state, id).await,
        Command::AuditTail { limit } => {
            let rows = state.core.store.audit_tail(i64::from(*limit)).await?;
            Ok(json!({"entries": rows.iter().map(audit_json).collect::<Vec<_>>()}))
        }
    }
}

fn amqp(state: &AppState) -> &str {
    state.broker.amqp_url.expose_secret()
}

/// An audit row as consoles see it (reply of `audit.tail` and `audit` pushes).
pub fn audit_json(row: &AuditRow) -> Value {
    json!({
        "id": row.id,
        "at": rfc3339(row.at),
        "user": row.username,
        "node": row.node,
        "command": row.command,
        "payload": serde_json::from_str::<Value>(&row.payload).unwrap_or(Value::Null),
        "outcome": row.outcome,
        "detail": row.detail,
    })
}

async fn status(state: &AppState) -> Value {
    let local = state.core.report();
    let (answers, silent) = state.core.ask_others(ANSWER_WITHIN, Request::Status).await;
    let mut nodes = vec![local.clone()];
    nodes.extend(answers.into_iter().filter_map(|(_, answer)| match answer {
        Answer::Status(status) => Some(status),
        _ => None,
    }));
    nodes.extend(silent.iter().map(|node| NodeStatus::unreachable(node)));
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    // The leader's own report is the freshest about ingest; else this instance's view.
    let leader_report = nodes.iter().find(|n| n.is_leader).unwrap_or(&local);
    json!({
        "node": state.core.node,
        "leader": leader_report.leader.clone().or(local.leader.clone()),
        "ingest": leader_report.ingest.clone().or(local.ingest.clone()),
        "queue_depth": leader_report.queue_depth,
        "dead_letters": leader_report.dead_letters,
        "nodes": nodes,
    })
}

async fn connections(state: &AppState) -> Value {
    let mut listed = state.core.registry.list();
    let mut nodes = vec![json!({"node": state.core.node, "state": "ok"})];
    let (answers, silent) = state
        .core
        .ask_others(ANSWER_WITHIN, Request::Connections)
        .await;
    for (node, answer) in answers {
        if let Answer::Connections { connections } = answer {
            listed.extend(connections);
        }
        nodes.push(json!({"node": node, "state": "ok"}));
    }
    nodes.extend(
        silent
            .iter()
            .map(|node| json!({"node": node, "state": "unreachable"})),
    );
    json!({"connections": listed, "nodes": nodes})
}

async fn kick(state: &AppState, id: &str) -> Result<Value, Failure> {
    if state.core.registry.kick(id) {
        return Ok(json!({"kicked": id, "node": state.core.node}));
    }
    let (answers, silent) = state
        .core
        .ask_others(ANSWER_WITHIN, Request::Kick { id: id.to_owned() })
        .await;
    let holder = answers.into_iter().find_map(|(node, answer)| match answer {
        Answer::Kick { kicked: true } => Some(node),
        _ => None,
    });
    match holder {
        Some(node) => Ok(json!({"kicked": id, "node": node})),
        None if !silent.is_empty() => Err(Failure::new(
            ErrorCode::Unavailable,
            format!(
                "no answering node holds {id}; not answering: {}",
                silent.join(", ")
            ),
        )),
        None => Err(Failure::new(
            ErrorCode::InvalidPayload,
            format!("id: no open connection {id} (it may have closed)"),
        )),
    }
}

/// Stores the pause flag (every leader reads it, now and at the start of every term), tells
/// the leader to read it now, and waits briefly for its snapshot to show the new state.
async fn set_paused(state: &AppState, paused: bool) -> Result<Value, Failure> {
    state.core.store.set_ingest_paused(paused).await?;
    let wanted = |s: &Snapshot| (s.ingest.state == IngestState::Paused) == paused;
    let applied = state.core.snapshot_shows(wanted, APPLIED_WITHIN).await;
    let leader = state.core.status.get().ingest.leader;
    Ok(json!({"paused": paused, "applied": applied, "leader": leader}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_that_does_not_answer_is_unavailable_and_one_that_errs_is_internal() {
        let down = Failure::from(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(down.code, ErrorCode::Unavailable);
        let wrong = Failure::from(StoreError::Corrupt("x".into()));
        assert_eq!(wrong.code, ErrorCode::Internal);
    }
}
