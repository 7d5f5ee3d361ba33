//! The operations console (docs/api.md, Console): one session per upgraded WebSocket connection. The
//! handshake before the upgrade (credentials, role, `Origin`, stream cap) is HTTP's:
//! `http::console`. A session greets with `welcome`, answers commands, limits each connection to
//! 20 commands a second, pings every heartbeat interval and closes a connection that left two
//! pings unanswered.
//!
//! This version answers `help`, `ping` and `status`; the other commands (planned, listed in
//! docs/api.md, Console) answer `unavailable` until they are built (`help` lists them with that
//! note).

pub mod protocol;

use crate::app::AppState;
use crate::clock::{now_ms, rfc3339};
use crate::live::connection::ConnectionGuard;
use crate::live::limit::StreamSlot;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A console command, with whether this version performs it.
pub struct CommandInfo {
    pub name: &'static str,
    pub payload: &'static str,
    pub available: bool,
}

pub const COMMANDS: &[CommandInfo] = &[
    CommandInfo {
        name: "help",
        payload: "-",
        available: true,
    },
    CommandInfo {
        name: "ping",
        payload: "-",
        available: true,
    },
    CommandInfo {
        name: "status",
        payload: "-",
        available: true,
    },
    CommandInfo {
        name: "subscribe",
        payload: "{topics: [snapshots|events|audit|presence]}",
        available: false,
    },
    CommandInfo {
        name: "unsubscribe",
        payload: "{topics: [...]}",
        available: false,
    },
    CommandInfo {
        name: "ingest.pause",
        payload: "-",
        available: false,
    },
    CommandInfo {
        name: "ingest.resume",
        payload: "-",
        available: false,
    },
    CommandInfo {
        name: "dlq.peek",
        payload: "{limit: 1-100}",
        available: false,
    },
    CommandInfo {
        name: "dlq.replay",
        payload: "{limit: 1-1000}",
        available: false,
    },
    CommandInfo {
        name: "dlq.purge",
        payload: "{confirm: true}",
        available: false,
    },
    CommandInfo {
        name: "announce",
        payload: "{message: 1-500 chars, level: info|warning|critical}",
        available: false,
    },
    CommandInfo {
        name: "connections.list",
        payload: "-",
        available: false,
    },
    CommandInfo {
        name: "connections.kick",
        payload: "{id}",
        available: false,
    },
    CommandInfo {
        name: "audit.tail",
        payload: "{limit: 1-200}",
        available: false,
    },
];

const COMMANDS_PER_SECOND: usize = 20;

/// Serves one upgraded console connection until it closes.
pub async fn run(
    mut session: actix_ws::Session,
    mut messages: actix_ws::AggregatedMessageStream,
    user: String,
    state: std::sync::Arc<AppState>,
    // Metrics and this user's stream slot, both released when the session ends.
    _held: (ConnectionGuard, StreamSlot),
) {
    let welcome = protocol::push(
        "welcome",
        json!({"user": user, "node": state.node, "commands": COMMANDS.iter().map(|c| c.name).collect::<Vec<_>>()}),
    );
    if session.text(welcome).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(state.live.heartbeat);
    ping.tick().await;
    let mut unanswered_pings = 0u8;
    let mut recent: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let closing = state.hub.closing();
    let reason = loop {
        tokio::select! {
            // Shutdown: 1001 "going away" tells the client to reconnect (to another instance).
            _ = closing.cancelled() => break Some(going_away()),
            _ = ping.tick() => {
                if unanswered_pings >= 2 {
                    break Some(actix_ws::CloseReason::from(actix_ws::CloseCode::Away));
                }
                unanswered_pings += 1;
                if session.ping(b"").await.is_err() { break None; }
            }
            message = messages.next() => match message {
                Some(Ok(actix_ws::AggregatedMessage::Text(text))) => {
                    let answer = answer(&text, &state, &mut recent).await;
                    if session.text(answer).await.is_err() { break None; }
                }
                Some(Ok(actix_ws::AggregatedMessage::Pong(_))) => unanswered_pings = 0,
                Some(Ok(actix_ws::AggregatedMessage::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() { break None; }
                }
                Some(Ok(actix_ws::AggregatedMessage::Binary(_))) => {
                    let refusal = protocol::error(None, "bad_request", "send text frames of JSON");
                    if session.text(refusal).await.is_err() { break None; }
                }
                Some(Ok(actix_ws::AggregatedMessage::Close(reason))) => break reason,
                Some(Err(_)) | None => break None,
            },
        }
    };
    let _ = session.close(reason).await;
}

/// The close frame of a session ended by this instance's shutdown.
fn going_away() -> actix_ws::CloseReason {
    actix_ws::CloseReason {
        code: actix_ws::CloseCode::Away,
        description: Some("going away".to_owned()),
    }
}

async fn answer(
    text: &str,
    state: &AppState,
    recent: &mut std::collections::VecDeque<Instant>,
) -> String {
    let now = Instant::now();
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        recent.pop_front();
    }
    let command = match protocol::decode(text) {
        Ok(command) => command,
        Err(refusal) => {
            count(state, "invalid", "bad_request", now);
            return protocol::error(refusal.id.as_deref(), refusal.code, &refusal.message);
        }
    };
    if recent.len() >= COMMANDS_PER_SECOND {
        count(state, label(&command.name), "rate_limited", now);
        return protocol::error(
            Some(&command.id),
            "rate_limited",
            "more than 20 commands a second",
        );
    }
    recent.push_back(now);
    let outcome = perform(&command.name, state);
    let (frame, outcome_label) = match outcome {
        Ok(payload) => (protocol::reply(&command.id, payload), "ok"),
        Err((code, message)) => (protocol::error(Some(&command.id), code, &message), code),
    };
    count(state, label(&command.name), outcome_label, now);
    frame
}

fn perform(name: &str, state: &AppState) -> Result<Value, (&'static str, String)> {
    match COMMANDS.iter().find(|c| c.name == name) {
        None => Err(("unknown_command", format!("no command {name:?}; try help"))),
        Some(info) if !info.available => Err((
            "unavailable",
            format!("{name} is not available in this version"),
        )),
        Some(_) => Ok(match name {
            "help" => {
                json!({"commands": COMMANDS.iter().map(|c| json!({"name": c.name, "payload": c.payload, "available": c.available})).collect::<Vec<_>>()})
            }
            "ping" => json!({"pong": true, "server_time": rfc3339(now_ms())}),
            _ => status(state),
        }),
    }
}

fn status(state: &AppState) -> Value {
    let status = state.status.get();
    let frame = state.hub.latest_frame();
    let connections: serde_json::Map<String, Value> = ["sse", "ws", "poll"]
        .iter()
        .map(|t| {
            (
                (*t).to_owned(),
                json!(state.metrics.connections.with_label_values(&[*t]).get()),
            )
        })
        .collect();
    let mut nodes = vec![state.node.clone()];
    nodes.extend(
        status
            .ingest
            .leader
            .clone()
            .filter(|leader| *leader != state.node),
    );
    json!({
        "nodes": nodes,
        "node": state.node,
        "leader": status.ingest.leader,
        "ingest": frame.as_ref().map(|f| f.snapshot.ingest.state),
        "queue_depth": status.fanout.queue_depth,
        "dead_letters": status.fanout.dead_letters,
        "connections": connections,
    })
}

/// Metric label for a command: the known names, or `unknown` (bounded cardinality).
fn label(name: &str) -> &'static str {
    COMMANDS
        .iter()
        .find(|c| c.name == name)
        .map_or("unknown", |c| c.name)
}

fn count(state: &AppState, command: &str, outcome: &str, started: Instant) {
    state
        .metrics
        .console_commands
        .with_label_values(&[command, outcome])
        .inc();
    state
        .metrics
        .console_command_duration
        .with_label_values(&[command])
        .observe(started.elapsed().as_secs_f64());
}
