//! What each job does (docs/api.md, Console: commands), against the application state:
//! cluster-wide questions over `<prefix>.live` (see `control`), the stored ingest pause, the
//! dead-letter queue, announcements (`announce`: the same path as `POST /api/announcements`),
//! the audit log. Returns the reply's payload (a `replies` type, as JSON) or a [`Failure`] with
//! its error code; auditing and sending are the job's (`job`).

use super::commands::JobCommand;
use super::protocol::{ErrorCode, Failure};
use super::replies::{
    payload, AuditEntry, AuditTail, ClusterStatus, Connections, Kicked, KioskLinks, NodeReach,
    Paused, Peeked, Purged, Reach, Revoked,
};
use crate::app::AppState;
use crate::clock::now_ms;
use crate::control::{Answer, NodeStatus, Request};
use crate::dlq::{self, DlqError};
use crate::live::{IngestState, Snapshot};
use crate::rabbitmq::BrokerError;
use crate::store::StoreError;
use secrecy::ExposeSecret;
use serde_json::Value;
use std::time::Duration;

/// How long other instances have to answer a cluster-wide question.
pub(super) const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// How long `ingest.pause`/`resume` wait for the leader's snapshot to show the new state.
const APPLIED_WITHIN: Duration = Duration::from_secs(3);

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        let code = if error.is_unavailable() {
            ErrorCode::Unavailable
        } else {
            ErrorCode::Internal
        };
        Failure::new(code, format!("database: {error}"))
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

/// Performs a job.
pub(super) async fn perform(
    command: &JobCommand,
    state: &AppState,
    user: &str,
) -> Result<Value, Failure> {
    match command {
        JobCommand::Status => payload(&status(state).await),
        JobCommand::IngestPause => payload(&set_paused(state, true).await?),
        JobCommand::IngestResume => payload(&set_paused(state, false).await?),
        JobCommand::DlqPeek { limit } => {
            let messages = dlq::peek(amqp(state), &state.broker.topology, *limit).await?;
            let count = messages.len();
            payload(&Peeked { count, messages })
        }
        JobCommand::DlqReplay { limit } => {
            payload(&dlq::replay(amqp(state), &state.broker.topology, *limit).await?)
        }
        JobCommand::DlqPurge => {
            let purged = dlq::purge(amqp(state), &state.broker.topology).await?;
            payload(&Purged { purged })
        }
        JobCommand::Announce { message, level } => {
            let announcement = state
                .core
                .publish_announcement(*level, message, user, now_ms())
                .await?;
            payload(&announcement)
        }
        JobCommand::ConnectionsList => payload(&connections(state).await),
        JobCommand::ConnectionsKick { id } => payload(&kick(state, id).await?),
        JobCommand::AuditTail { limit } => {
            let rows = state.core.store.audit_tail(i64::from(*limit)).await?;
            let entries = rows.iter().map(AuditEntry::of).collect();
            payload(&AuditTail { entries })
        }
        JobCommand::TokensList => {
            let links = state.core.store.kiosk_links().await?;
            payload(&KioskLinks::of(&links))
        }
        JobCommand::TokensRevoke { name } => match state.core.revoke_kiosk_link(name).await? {
            Some(ended) => payload(&Revoked {
                revoked: name.clone(),
                ended_here: ended,
            }),
            None => Err(Failure::new(
                ErrorCode::InvalidPayload,
                format!("name: no kiosk link {name}"),
            )),
        },
    }
}

fn amqp(state: &AppState) -> &str {
    state.broker.amqp_url.expose_secret()
}

async fn status(state: &AppState) -> ClusterStatus {
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
    ClusterStatus {
        node: state.core.node.clone(),
        leader: leader_report.leader.clone().or(local.leader.clone()),
        ingest: leader_report.ingest.clone().or(local.ingest.clone()),
        queue_depth: leader_report.queue_depth,
        dead_letters: leader_report.dead_letters,
        nodes,
    }
}

async fn connections(state: &AppState) -> Connections {
    let reach = |node: &str, state: Reach| NodeReach {
        node: node.to_owned(),
        state,
    };
    let mut listed = state.core.registry.list();
    let mut nodes = vec![reach(&state.core.node, Reach::Ok)];
    let (answers, silent) = state
        .core
        .ask_others(ANSWER_WITHIN, Request::Connections)
        .await;
    for (node, answer) in answers {
        if let Answer::Connections { connections } = answer {
            listed.extend(connections);
        }
        nodes.push(reach(&node, Reach::Ok));
    }
    nodes.extend(silent.iter().map(|node| reach(node, Reach::Unreachable)));
    Connections {
        connections: listed,
        nodes,
    }
}

async fn kick(state: &AppState, id: &str) -> Result<Kicked, Failure> {
    let kicked = |node: &str| Kicked {
        kicked: id.to_owned(),
        node: node.to_owned(),
    };
    if state.core.registry.kick(id) {
        return Ok(kicked(&state.core.node));
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
        Some(node) => Ok(kicked(&node)),
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
async fn set_paused(state: &AppState, paused: bool) -> Result<Paused, Failure> {
    state.core.store.set_ingest_paused(paused).await?;
    let wanted = |s: &Snapshot| (s.ingest.state == IngestState::Paused) == paused;
    let applied = state.core.snapshot_shows(wanted, APPLIED_WITHIN).await;
    let leader = state.core.status.get().ingest.leader;
    Ok(Paused {
        paused,
        applied,
        leader,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_that_does_not_answer_is_unavailable_and_one_that_errs_is_internal() {
        let down = Failure::from(StoreError::Refused {
            waited: Duration::from_secs(5),
            cause: "the database system is shutting down (SQLSTATE 57P03)".into(),
        });
        assert_eq!(down.code, ErrorCode::Unavailable);
        let wrong = Failure::from(StoreError::Corrupt("x".into()));
        assert_eq!(wrong.code, ErrorCode::Internal);
    }
}
