//! One console connection from the upgrade to its close: registers it, starts its writer, and
//! reads. Each text frame is rate-limited, decoded, checked against the credential and parsed
//! here; an [`InlineCommand`] is answered on the spot, a [`JobCommand`] handed to a [`Job`] (at
//! most [`IN_FLIGHT`] at once), so that pings and pushes go on meanwhile. The session also
//! forwards announcements and the subscribed topics, and decides how the connection ends and
//! why (close code, metrics reason).

use super::commands::{self, Command, Definition, InlineCommand, JobCommand, ParseError};
use super::credential::Credential;
use super::job::Job;
use super::observe;
use super::protocol::{self, Envelope, ErrorCode, Failure, PushKind};
use super::replies::{self, Pong, Welcome};
use super::topics::Topics;
use super::writer::Outbox;
use crate::app::AppState;
use crate::auth::grant::Grant;
use crate::clock::{now_ms, rfc3339};
use crate::live::connection::{CloseReason, ConnectionGuard, Ending};
use crate::live::limit::StreamSlot;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Semaphore;

const COMMANDS_PER_SECOND: usize = 20;
/// Commands of one connection running at once; beyond it a command is refused (`rate_limited`).
const IN_FLIGHT: usize = 4;

/// Serves one upgraded console connection until it closes.
pub(crate) async fn run(
    session: actix_ws::Session,
    messages: actix_ws::AggregatedMessageStream,
    grant: Grant,
    state: Arc<AppState>,
    // Metrics and this user's stream slot, both released when the session ends.
    held: (ConnectionGuard, StreamSlot),
) {
    let (mut guard, _slot) = held;
    let user = grant.user.clone();
    let kicked = guard.register(&state.core.registry, grant.clone());
    let Some(ender) = guard.ender() else {
        // `register` just made the registration `ender` comes from.
        return;
    };
    state.core.refresh_presence();
    let (outbox, writer) = Outbox::open(session);
    let mut connection = Connection {
        state,
        user,
        credential: Credential::new(grant, ender),
        outbox,
        recent: VecDeque::new(),
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        rate_limit_audited: None,
        topics: Topics::new(),
        behind: false,
    };
    let reason = connection.serve(messages, kicked, &mut guard).await;
    connection.outbox.close(reason).await;
    let state = connection.state.clone();
    drop(connection);
    let _ = writer.await;
    drop(guard);
    state.core.refresh_presence();
}

struct Connection {
    state: Arc<AppState>,
    user: String,
    credential: Credential,
    outbox: Outbox,
    /// When the commands of the last second arrived.
    recent: VecDeque<Instant>,
    in_flight: Arc<Semaphore>,
    /// When this connection last put a rate-limited command on the audit record.
    rate_limit_audited: Option<Instant>,
    topics: Topics,
    /// A reply or an announcement found the write queue full: the client does not read, and
    /// the connection is closed rather than a frame lost without a word.
    behind: bool,
}

/// A decoded frame on its way: its envelope, the definition its name names (looked up once),
/// and when it arrived.
struct Incoming {
    envelope: Envelope,
    definition: Option<&'static Definition>,
    started: Instant,
}

impl Connection {
    async fn serve(
        &mut self,
        mut messages: actix_ws::AggregatedMessageStream,
        kicked: tokio_util::sync::CancellationToken,
        guard: &mut ConnectionGuard,
    ) -> Option<actix_ws::CloseReason> {
        let welcome = Welcome {
            user: &self.user,
            node: &self.state.core.node,
            commands: commands::DEFINITIONS.iter().map(|c| c.name).collect(),
        };
        let Ok(welcome) = replies::payload(&welcome) else {
            return None;
        };
        if !self
            .outbox
            .frame(protocol::push(PushKind::Welcome, welcome))
            .await
        {
            return None;
        }
        let heartbeat = self.state.live.heartbeat;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut unanswered_pings = 0u8;
        let mut announcements = self.state.core.hub.subscribe().announcements;
        let closing = self.state.core.hub.closing();
        loop {
            if self.behind {
                guard.set_reason(CloseReason::SlowClient);
                return Some(actix_ws::CloseReason {
                    code: actix_ws::CloseCode::Again,
                    description: Some("not reading: a reply could not be queued".into()),
                });
            }
            tokio::select! {
                // The registry's token is a child of `closing`: both end here. Shutdown says
                // 1001 "going away", which tells the client to reconnect (to another instance);
                // a kick or a credential no longer good says 1008 and why.
                _ = kicked.cancelled() => {
                    let ending = guard.ending().filter(|_| !closing.is_cancelled());
                    let Some(ending) = ending else {
                        guard.set_reason(CloseReason::Shutdown);
                        return Some(actix_ws::CloseReason {
                            code: actix_ws::CloseCode::Away,
                            description: Some("going away".to_owned()),
                        });
                    };
                    guard.set_reason(CloseReason::Ended(ending));
                    return Some(actix_ws::CloseReason {
                        code: actix_ws::CloseCode::Policy,
                        description: Some(ending.explanation().into()),
                    });
                }
                _ = ping.tick() => {
                    if unanswered_pings >= 2 {
                        guard.set_reason(CloseReason::PingTimeout);
                        return Some(actix_ws::CloseCode::Away.into());
                    }
                    unanswered_pings += 1;
                    if !self.outbox.ping() { return None; }
                }
                message = messages.next() => match message {
                    Some(Ok(actix_ws::AggregatedMessage::Text(text))) => self.on_text(&text),
                    Some(Ok(actix_ws::AggregatedMessage::Pong(_))) => unanswered_pings = 0,
                    Some(Ok(actix_ws::AggregatedMessage::Ping(bytes))) => self.outbox.pong(bytes),
                    Some(Ok(actix_ws::AggregatedMessage::Binary(_))) => {
                        self.refuse(None, ErrorCode::BadRequest, "send text frames of JSON");
                    }
                    Some(Ok(actix_ws::AggregatedMessage::Close(reason))) => return reason,
                    Some(Err(error)) if too_large(&error) => {
                        guard.set_reason(CloseReason::TooLarge);
                        return Some(actix_ws::CloseReason {
                            code: actix_ws::CloseCode::Size,
                            description: Some("messages are limited to 64 KiB".into()),
                        });
                    }
                    Some(Err(_)) => return Some(actix_ws::CloseCode::Protocol.into()),
                    None => return None,
                },
                received = announcements.recv() => match received {
                    Ok(frame) => {
                        let payload = serde_json::to_value(&frame.announcement).unwrap_or(Value::Null);
                        self.send_now(protocol::push(PushKind::Announcement, payload));
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                arrival = self.topics.next() => self.topics.forward(arrival, &self.outbox),
            }
        }
    }

    /// One text frame: rate limit, decode, credential, parse, then answer here or in a job.
    fn on_text(&mut self, text: &str) {
        let started = Instant::now();
        let decoded = protocol::decode(text);
        let incoming = decoded.map(|envelope| Incoming {
            definition: commands::definition_of(&envelope.name),
            envelope,
            started,
        });
        // Every frame counts, garbage included: a flood is a flood.
        if !self.within_rate(started) {
            let message = "more than 20 commands a second";
            match incoming {
                Ok(incoming) => self.refuse_rate_limited(incoming, message),
                Err(refusal) => self.refuse_counted(
                    "unknown",
                    refusal.id.as_deref(),
                    ErrorCode::RateLimited,
                    message,
                    started,
                ),
            }
            return;
        }
        let incoming = match incoming {
            Ok(incoming) => incoming,
            Err(refusal) => {
                let id = refusal.id.as_deref();
                self.refuse_counted("invalid", id, refusal.code, &refusal.message, started);
                return;
            }
        };
        if let Some(ending) = self.credential.ending_now(&self.state) {
            self.refuse_for(incoming, ending);
            return;
        }
        let parsed = Command::parse(&incoming.envelope.name, &incoming.envelope.payload);
        self.dispatch(incoming, parsed);
    }

    fn within_rate(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= COMMANDS_PER_SECOND {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// Refuses a command because the credential is no longer good, and ends the connection
    /// once the refusal is on its way (an audited command's, once it is on record).
    fn refuse_for(&mut self, incoming: Incoming, ending: Ending) {
        let failure = self.credential.refusal(ending);
        match incoming.definition {
            Some(definition) if definition.audited => {
                self.job(incoming, definition)
                    .spawn_refusal(failure, Some(ending));
            }
            definition => {
                let name = definition.map_or("unknown", |d| d.name);
                let Incoming {
                    envelope, started, ..
                } = incoming;
                let id = Some(envelope.id.as_str());
                self.refuse_counted(name, id, failure.code, &failure.message, started);
                self.credential.end(ending);
            }
        }
    }

    fn dispatch(&mut self, incoming: Incoming, parsed: Result<Command, ParseError>) {
        let (definition, command) = match (incoming.definition, parsed) {
            (Some(definition), Ok(command)) => (definition, command),
            (Some(definition), Err(error @ ParseError::InvalidPayload { .. })) => {
                // Refused before anything happened; still on the record when it is audited.
                let failure = Failure::new(ErrorCode::InvalidPayload, error.to_string());
                self.job(incoming, definition).spawn_refusal(failure, None);
                return;
            }
            // A name no definition has (parsing knows the same names).
            _ => {
                let message = ParseError::Unknown(incoming.envelope.name.clone()).to_string();
                let id = Some(incoming.envelope.id.as_str());
                let code = ErrorCode::UnknownCommand;
                self.refuse_counted("unknown", id, code, &message, incoming.started);
                return;
            }
        };
        match command {
            Command::Inline(command) => self.answer_inline(incoming, definition, command),
            Command::Job(command) => self.spawn_job(incoming, definition, command),
        }
    }

    /// Answers a command that waits for nothing and is not audited, on the spot.
    fn answer_inline(
        &mut self,
        incoming: Incoming,
        definition: &'static Definition,
        command: InlineCommand,
    ) {
        let name = definition.name;
        let payload = match &command {
            InlineCommand::Help => replies::payload(&commands::help()),
            InlineCommand::Ping => replies::payload(&Pong {
                pong: true,
                server_time: rfc3339(now_ms()),
            }),
            InlineCommand::Subscribe(topics) => {
                replies::payload(&self.topics.change(&self.state, topics, true))
            }
            InlineCommand::Unsubscribe(topics) => {
                replies::payload(&self.topics.change(&self.state, topics, false))
            }
        };
        let Incoming {
            envelope, started, ..
        } = incoming;
        match payload {
            Ok(payload) => {
                let span = observe::command_span(&self.user, name);
                span.record("outcome", "ok");
                tracing::debug!(parent: &span, "command answered");
                observe::count(&self.state.core.metrics, name, "ok", started);
                self.send_now(protocol::reply(&envelope.id, payload));
            }
            Err(failure) => {
                let (id, code) = (Some(envelope.id.as_str()), failure.code);
                self.refuse_counted(name, id, code, &failure.message, started);
            }
        }
    }

    /// Runs a command in a job of its own, if this connection has room for one more.
    fn spawn_job(
        &mut self,
        incoming: Incoming,
        definition: &'static Definition,
        command: JobCommand,
    ) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let message = "too many commands still running on this connection";
            self.refuse_rate_limited(incoming, message);
            return;
        };
        self.job(incoming, definition).spawn(command, permit);
    }

    /// Refuses a command over the rate. A refused audited command is on the record too, but
    /// only the first of each second on this connection: a flood must not become a flood of
    /// database writes. The others are counted in the metrics only.
    fn refuse_rate_limited(&mut self, incoming: Incoming, message: &str) {
        let started = incoming.started;
        let audit_due = self
            .rate_limit_audited
            .is_none_or(|at| started.duration_since(at) >= Duration::from_secs(1));
        match incoming.definition {
            Some(definition) if definition.audited && audit_due => {
                self.rate_limit_audited = Some(started);
                let message =
                    format!("{message}; later refusals within this second are not audited");
                let failure = Failure::new(ErrorCode::RateLimited, message);
                self.job(incoming, definition).spawn_refusal(failure, None);
            }
            definition => {
                let label = definition.map_or("unknown", |d| d.name);
                let (id, code) = (Some(incoming.envelope.id.as_str()), ErrorCode::RateLimited);
                self.refuse_counted(label, id, code, message, started);
            }
        }
    }

    /// A command to finish apart from the session.
    fn job(&self, incoming: Incoming, definition: &'static Definition) -> Job {
        Job {
            state: self.state.clone(),
            credential: self.credential.clone(),
            user: self.user.clone(),
            frames: self.outbox.frames(),
            envelope: incoming.envelope,
            definition,
            started: incoming.started,
        }
    }

    /// Queues a frame that must not be lost (a reply, an announcement); a full queue means the
    /// client stopped reading, and the connection is closed (`behind`).
    fn send_now(&mut self, frame: String) {
        if !self.outbox.try_frame(frame) {
            self.behind = true;
        }
    }

    /// Refuses a frame on the spot, in its command's span (`unknown` or `invalid` when it names
    /// none), and counts it with the error code as its outcome.
    fn refuse_counted(
        &mut self,
        label: &str,
        id: Option<&str>,
        code: ErrorCode,
        message: &str,
        started: Instant,
    ) {
        let span = observe::command_span(&self.user, label);
        span.record("outcome", code.as_str());
        tracing::debug!(parent: &span, reason = message, "command refused");
        observe::count(&self.state.core.metrics, label, code.as_str(), started);
        self.refuse(id, code, message);
    }

    fn refuse(&mut self, id: Option<&str>, code: ErrorCode, message: &str) {
        self.send_now(protocol::error(id, code, message));
    }
}

/// What actix-ws's aggregation says, as an I/O error, when a fragmented message outgrows
/// `max_continuation_size` (it has no variant of its own for it).
const CONTINUATION_TOO_LARGE: &str = "Exceeded maximum continuation size";

/// Whether the socket failed because a message is over the 64 KiB limit: one frame over
/// `max_frame_size` (`Overflow`), or fragments that add up to more. Either is 1009 (Message
/// Too Big); anything else the peer sent wrong is 1002.
fn too_large(error: &actix_ws::ProtocolError) -> bool {
    match error {
        actix_ws::ProtocolError::Overflow => true,
        actix_ws::ProtocolError::Io(io) => io.to_string() == CONTINUATION_TOO_LARGE,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commands::DEFINITIONS;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_frame_or_a_fragmented_message_over_the_limit_is_too_large_and_nothing_else_is() {
        use actix_ws::ProtocolError;
        let io = |text: &str| ProtocolError::Io(std::io::Error::other(text.to_owned()));
        assert!(too_large(&ProtocolError::Overflow));
        assert!(too_large(&io(CONTINUATION_TOO_LARGE)));
        assert!(!too_large(&io("connection reset")));
        assert!(!too_large(&ProtocolError::BadOpCode));
        assert!(!too_large(&ProtocolError::ContinuationNotStarted));
    }

    /// The frame a text gets when it is refused before running: `None` when it parses.
    fn refusal(text: &str) -> Option<String> {
        match protocol::decode(text) {
            Err(refusal) => Some(protocol::error(
                refusal.id.as_deref(),
                refusal.code,
                &refusal.message,
            )),
            Ok(envelope) => match Command::parse(&envelope.name, &envelope.payload) {
                Ok(_) => None,
                Err(ParseError::Unknown(name)) => Some(protocol::error(
                    Some(&envelope.id),
                    ErrorCode::UnknownCommand,
                    &name,
                )),
                Err(error) => Some(protocol::error(
                    Some(&envelope.id),
                    ErrorCode::InvalidPayload,
                    &error.to_string(),
                )),
            },
        }
    }

    fn frame() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            proptest::sample::select(DEFINITIONS.iter().map(|d| d.name).collect::<Vec<_>>()),
            Just("reboot"),
        ];
        prop_oneof![
            ".{0,100}",
            (name, ".{0,30}", "[0-9]{0,4}").prop_map(|(name, id, limit)| {
                format!(
                    r#"{{"id":{},"type":"{name}","payload":{{"limit":{limit}1}}}}"#,
                    json!(id)
                )
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// Whatever arrives, a refused frame's answer has the shape of docs/api.md, Console.
        #[test]
        fn every_refusal_has_the_error_shape(text in frame()) {
            if let Some(answer) = refusal(&text) {
                let value: Value = serde_json::from_str(&answer).expect("json");
                prop_assert_eq!(&value["type"], "error");
                prop_assert_eq!(&value["ok"], false);
                prop_assert!(value["id"].is_null() || value["id"].is_string());
                prop_assert!(value["error"]["code"].is_string());
                prop_assert!(value["error"]["message"].is_string());
            }
        }
    }
}
