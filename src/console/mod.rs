//! The operations console (docs/api.md, Console): one session per upgraded WebSocket connection.
//! The handshake before the upgrade (credentials, role, `Origin`, stream cap) is HTTP's:
//! `http::console`.
//!
//! - `protocol`: the frame envelope, replies, errors, pushes (pure);
//! - `commands`: every command as a type with a validated payload, and `help` (pure);
//! - `perform`: what each command does;
//! - `session` (this file): the connection.
//!
//! A session never blocks itself: one writer task per connection owns the socket and takes
//! replies and event/audit pushes from a bounded queue, snapshots and presence from latest-wins
//! slots, and pings with priority. Commands that wait on something (the broker, the database,
//! other instances) run in tasks of their own (at most [`IN_FLIGHT`] at once), so pings and
//! pushes go on meanwhile. A console that cannot keep up loses event and audit pushes (counted
//! in the next one's `skipped`) and intermediate snapshots, never memory. Audited commands are
//! written to the audit log before their reply goes out.
//!
//! A session remembers the credential it was opened with, and every command is refused
//! (`forbidden`), and the console closed (1008, `revoked: …` or `expired: …`), once that
//! credential is no longer good: commands that run in a task check it against the database
//! first, those answered on the spot against the instance's table of credentials (at most a
//! second behind); and the registry closes the console when the table changes
//! (`live::credentials`).

mod commands;
mod perform;
pub mod protocol;

pub use commands::{export_metrics, DEFINITIONS};

use crate::app::AppState;
use crate::auth::grant::Grant;
use crate::clock::{now_ms, rfc3339};
use crate::live::connection::{CloseReason, ConnectionGuard, Ender, Ending};
use crate::live::limit::StreamSlot;
use crate::store::NewAudit;
use commands::{Command, ParseError, Topic};
use futures_util::StreamExt;
use perform::Failure;
use protocol::ErrorCode;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch, Semaphore};
use tracing::Instrument;

const COMMANDS_PER_SECOND: usize = 20;
/// Commands of one connection running at once; beyond it a command is refused (`rate_limited`).
const IN_FLIGHT: usize = 4;
/// Replies and event/audit pushes waiting for the socket.
const WRITE_QUEUE: usize = 64;

/// What only the writer may do to the socket, ahead of any frame.
enum Control {
    Ping,
    Pong(bytes::Bytes),
    Close(Option<actix_ws::CloseReason>),
}

/// The writer's inputs; dropping them all ends it.
#[derive(Clone)]
struct Outbox {
    control: mpsc::Sender<Control>,
    frames: mpsc::Sender<String>,
    /// Latest snapshot push (latest wins).
    snapshot: Arc<watch::Sender<Option<Arc<str>>>>,
    /// Latest presence push (latest wins).
    presence: Arc<watch::Sender<Option<Arc<str>>>>,
}

/// Serves one upgraded console connection until it closes.
pub async fn run(
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
    let (control_tx, control_rx) = mpsc::channel(8);
    let (frames_tx, frames_rx) = mpsc::channel(WRITE_QUEUE);
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    let (presence_tx, presence_rx) = watch::channel(None);
    let writer = tokio::spawn(write(
        session,
        control_rx,
        frames_rx,
        snapshot_rx,
        presence_rx,
    ));
    let outbox = Outbox {
        control: control_tx,
        frames: frames_tx,
        snapshot: Arc::new(snapshot_tx),
        presence: Arc::new(presence_tx),
    };
    let mut connection = Connection {
        state,
        user,
        credential: Credential { grant, ender },
        outbox,
        recent: VecDeque::new(),
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        rate_limit_audited: None,
        topics: Topics::default(),
        behind: false,
    };
    let reason = connection.serve(messages, kicked, &mut guard).await;
    let _ = connection.outbox.control.send(Control::Close(reason)).await;
    let state = connection.state.clone();
    drop(connection);
    let _ = writer.await;
    drop(guard);
    state.core.refresh_presence();
}

/// The credential a console was opened with, and how to end the console when it is no longer
/// good.
#[derive(Clone)]
struct Credential {
    grant: Grant,
    ender: Ender,
}

impl Credential {
    /// Why the console must end now, judged by the instance's table (no waiting).
    fn ending_now(&self, state: &AppState) -> Option<Ending> {
        self.ender
            .ending()
            .or_else(|| Ending::of(state.core.credentials.judge(&self.grant)))
    }

    /// Why the console must end now, judged by the database (the table when it fails).
    async fn ending_fresh(&self, state: &AppState) -> Option<Ending> {
        match self.ender.ending() {
            Some(ending) => Some(ending),
            None => Ending::of(state.core.credentials.check_fresh(&self.grant).await),
        }
    }
}

/// The refusal of a command whose connection's credential is no longer good.
fn no_longer_good(user: &str, ending: Ending) -> Failure {
    let message = match ending {
        Ending::Expired => format!("the credential of {user} expired; sign in again"),
        Ending::Kicked => "this console was kicked".to_owned(),
        Ending::Revoked => format!("the credential of {user} was revoked; sign in again"),
    };
    Failure::new(ErrorCode::Forbidden, message)
}

/// The topics a console subscribed to, each with where it is read from.
#[derive(Default)]
struct Topics {
    snapshots: Option<watch::Receiver<Option<Arc<crate::live::hub::PublishedSnapshot>>>>,
    events: Option<broadcast::Receiver<Arc<str>>>,
    audit: Option<broadcast::Receiver<Arc<str>>>,
    presence: Option<watch::Receiver<Arc<str>>>,
    /// Events this console dropped itself (it was behind), added to the next event's count.
    events_skipped: u64,
    audit_skipped: u64,
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

impl Connection {
    async fn serve(
        &mut self,
        mut messages: actix_ws::AggregatedMessageStream,
        kicked: tokio_util::sync::CancellationToken,
        guard: &mut ConnectionGuard,
    ) -> Option<actix_ws::CloseReason> {
        let welcome = protocol::push(
            "welcome",
            json!({"user": self.user, "node": self.state.core.node,
                   "commands": DEFINITIONS.iter().map(|c| c.name).collect::<Vec<_>>()}),
        );
        if self.outbox.frames.send(welcome).await.is_err() {
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
                    if self.outbox.control.try_send(Control::Ping).is_err() { return None; }
                }
                message = messages.next() => match message {
                    Some(Ok(actix_ws::AggregatedMessage::Text(text))) => self.on_text(&text),
                    Some(Ok(actix_ws::AggregatedMessage::Pong(_))) => unanswered_pings = 0,
                    Some(Ok(actix_ws::AggregatedMessage::Ping(bytes))) => {
                        let _ = self.outbox.control.try_send(Control::Pong(bytes));
                    }
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
                    Ok(frame) => self.push_frame("announcement", serde_json::to_value(&frame.announcement).unwrap_or(Value::Null)),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                changed = next_snapshot(&mut self.topics.snapshots) => self.push_snapshot(changed),
                received = next_item(&mut self.topics.events) => self.push_counted("event", received),
                received = next_item(&mut self.topics.audit) => self.push_counted("audit", received),
                changed = next_presence(&mut self.topics.presence) => {
                    if let Some(payload) = changed {
                        let frame = protocol::push_raw("presence", &payload);
                        self.outbox.presence.send_replace(Some(Arc::from(frame.as_str())));
                    }
                }
            }
        }
    }

    /// One text frame: rate limit, decode, parse, then answer here or in a task.
    fn on_text(&mut self, text: &str) {
        let started = Instant::now();
        let envelope = protocol::decode(text);
        let id = match &envelope {
            Ok(envelope) => Some(envelope.id.clone()),
            Err(refusal) => refusal.id.clone(),
        };
        // Every frame counts, garbage included: a flood is a flood.
        if !self.within_rate(started) {
            self.refuse_rate_limited(
                envelope.ok(),
                id.as_deref(),
                "more than 20 commands a second",
                started,
            );
            return;
        }
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(refusal) => {
                let id = refusal.id.as_deref();
                self.refuse_counted("invalid", id, refusal.code, &refusal.message, started);
                return;
            }
        };
        if let Some(ending) = self.credential.ending_now(&self.state) {
            self.refuse_for(envelope, ending, started);
            return;
        }
        let parsed = Command::parse(&envelope.name, &envelope.payload);
        self.dispatch(envelope, parsed, started);
    }

    /// Refuses a command because the credential is no longer good, and ends the connection
    /// once the refusal is on its way (an audited command's, once it is on record).
    fn refuse_for(&mut self, envelope: protocol::Envelope, ending: Ending, started: Instant) {
        let failure = no_longer_good(&self.user, ending);
        let audited = commands::definition_of(&envelope.name).filter(|d| d.audited);
        match audited {
            Some(definition) => {
                let (job, span) = self.job(envelope, definition.name, started);
                let ender = self.credential.ender.clone();
                tokio::spawn(
                    async move {
                        job.finish(definition.name, Err(failure)).await;
                        ender.end(ending);
                    }
                    .instrument(span),
                );
            }
            None => {
                let name = commands::definition_of(&envelope.name).map_or("unknown", |d| d.name);
                let id = envelope.id.clone();
                self.refuse_counted(name, Some(&id), failure.code, &failure.message, started);
                self.credential.ender.end(ending);
            }
        }
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

    fn dispatch(
        &mut self,
        envelope: protocol::Envelope,
        parsed: Result<Command, ParseError>,
        started: Instant,
    ) {
        let command = match parsed {
            Ok(command) => command,
            Err(ParseError::Unknown(name)) => {
                let message = ParseError::Unknown(name).to_string();
                let id = Some(envelope.id.as_str());
                self.refuse_counted("unknown", id, ErrorCode::UnknownCommand, &message, started);
                return;
            }
            Err(error @ ParseError::InvalidPayload { .. }) => {
                // Refused before anything happened; still on the record when it is audited.
                let failure = Failure::new(ErrorCode::InvalidPayload, error.to_string());
                self.spawn_refusal(envelope, failure, started);
                return;
            }
        };
        match command {
            Command::Help => self.answer_now(&envelope, &command, commands::help(), started),
            Command::Ping => {
                let pong = json!({"pong": true, "server_time": rfc3339(now_ms())});
                self.answer_now(&envelope, &command, pong, started);
            }
            Command::Subscribe(ref topics) => {
                let payload = self.subscribe(topics, true);
                self.answer_now(&envelope, &command, payload, started);
            }
            Command::Unsubscribe(ref topics) => {
                let payload = self.subscribe(topics, false);
                self.answer_now(&envelope, &command, payload, started);
            }
            Command::Status
            | Command::IngestPause
            | Command::IngestResume
            | Command::DlqPeek { .. }
            | Command::DlqReplay { .. }
            | Command::DlqPurge
            | Command::Announce { .. }
            | Command::ConnectionsList
            | Command::ConnectionsKick { .. }
            | Command::AuditTail { .. } => self.spawn_command(envelope, command, started),
        }
    }

    /// Replies to a command answered on the spot (it waits for nothing and is not audited).
    fn answer_now(
        &mut self,
        envelope: &protocol::Envelope,
        command: &Command,
        payload: Value,
        started: Instant,
    ) {
        let span = self.command_span(command.name());
        span.record("outcome", "ok");
        tracing::debug!(parent: &span, "command answered");
        count(&self.state, command.name(), "ok", started);
        self.send_now(protocol::reply(&envelope.id, payload));
    }

    /// Queues a frame that must not be lost (a reply, an announcement); a full queue means the
    /// client stopped reading, and the connection is closed (`behind`).
    fn send_now(&mut self, frame: String) {
        if self.outbox.frames.try_send(frame).is_err() {
            self.behind = true;
        }
    }

    /// The span of one command (`docs/operations.md`, Logs); `outcome` is recorded at the end.
    fn command_span(&self, name: &str) -> tracing::Span {
        tracing::info_span!(
            "console_command",
            command = name,
            user = %self.user,
            outcome = tracing::field::Empty
        )
    }

    /// Runs a command in a task of its own, if this connection has room for one more.
    fn spawn_command(&mut self, envelope: protocol::Envelope, command: Command, started: Instant) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let id = envelope.id.clone();
            self.refuse_rate_limited(
                Some(envelope),
                Some(&id),
                "too many commands still running on this connection",
                started,
            );
            return;
        };
        let (job, span) = self.job(envelope, command.name(), started);
        tokio::spawn(
            async move {
                let _permit = permit;
                job.run(command).await;
            }
            .instrument(span),
        );
    }

    /// Refuses a command over the rate. A refused audited command is on the record too, but
    /// only the first of each second on this connection: a flood must not become a flood of
    /// database writes. The others are counted in the metrics only.
    fn refuse_rate_limited(
        &mut self,
        envelope: Option<protocol::Envelope>,
        id: Option<&str>,
        message: &str,
        started: Instant,
    ) {
        let definition = envelope
            .as_ref()
            .and_then(|e| commands::definition_of(&e.name));
        let audit_due = self
            .rate_limit_audited
            .is_none_or(|at| started.duration_since(at) >= Duration::from_secs(1));
        if let (Some(envelope), Some(true), true) =
            (envelope, definition.map(|d| d.audited), audit_due)
        {
            self.rate_limit_audited = Some(started);
            let message = format!("{message}; later refusals within this second are not audited");
            self.spawn_refusal(
                envelope,
                Failure::new(ErrorCode::RateLimited, message),
                started,
            );
            return;
        }
        let label = definition.map_or("unknown", |d| d.name);
        self.refuse_counted(label, id, ErrorCode::RateLimited, message, started);
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
        let span = self.command_span(label);
        span.record("outcome", code.as_str());
        tracing::debug!(parent: &span, reason = message, "command refused");
        count(&self.state, label, code.as_str(), started);
        self.refuse(id, code, message);
    }

    /// A command to finish apart from the session, and the span it runs in.
    fn job(
        &self,
        envelope: protocol::Envelope,
        name: &'static str,
        started: Instant,
    ) -> (Job, tracing::Span) {
        let span = self.command_span(name);
        let job = Job {
            state: self.state.clone(),
            user: self.user.clone(),
            credential: self.credential.clone(),
            frames: self.outbox.frames.clone(),
            envelope,
            started,
        };
        (job, span)
    }

    /// Answers a refused payload from a task too: an audited command's refusal is written to
    /// the log before the reply, like any other outcome.
    fn spawn_refusal(&mut self, envelope: protocol::Envelope, failure: Failure, started: Instant) {
        let name = commands::definition_of(&envelope.name).map_or("unknown", |d| d.name);
        let (job, span) = self.job(envelope, name, started);
        tokio::spawn(async move { job.finish(name, Err(failure)).await }.instrument(span));
    }

    fn subscribe(&mut self, topics: &[Topic], on: bool) -> Value {
        let state = &self.state;
        for topic in topics {
            match (topic, on) {
                (Topic::Snapshots, true) => {
                    let mut receiver = state.core.hub.subscribe().snapshots;
                    // The current snapshot at once, then every change.
                    receiver.mark_changed();
                    self.topics.snapshots = Some(receiver);
                }
                (Topic::Events, true) => {
                    self.topics.events = Some(state.core.feeds.events.subscribe())
                }
                (Topic::Audit, true) => {
                    self.topics.audit = Some(state.core.feeds.audit.subscribe())
                }
                (Topic::Presence, true) => {
                    let mut receiver = state.core.feeds.presence.subscribe();
                    receiver.mark_changed();
                    self.topics.presence = Some(receiver);
                }
                (Topic::Snapshots, false) => self.topics.snapshots = None,
                (Topic::Events, false) => self.topics.events = None,
                (Topic::Audit, false) => self.topics.audit = None,
                (Topic::Presence, false) => self.topics.presence = None,
            }
        }
        let mut subscribed = Vec::new();
        for (name, on) in [
            ("snapshots", self.topics.snapshots.is_some()),
            ("events", self.topics.events.is_some()),
            ("audit", self.topics.audit.is_some()),
            ("presence", self.topics.presence.is_some()),
        ] {
            if on {
                subscribed.push(name);
            }
        }
        json!({ "subscribed": subscribed })
    }

    fn push_snapshot(&mut self, changed: Option<Arc<crate::live::hub::PublishedSnapshot>>) {
        if let Some(published) = changed {
            let frame = protocol::push_raw("snapshot", &published.frame.json);
            // Latest wins: a console behind on snapshots gets only the newest.
            self.outbox
                .snapshot
                .send_replace(Some(Arc::from(frame.as_str())));
        }
    }

    /// An event or audit push, or the count of those this console missed.
    fn push_counted(&mut self, kind: &str, received: Result<Arc<str>, u64>) {
        let skipped = match kind {
            "event" => &mut self.topics.events_skipped,
            _ => &mut self.topics.audit_skipped,
        };
        let payload = match received {
            Ok(payload) => payload,
            Err(missed) => {
                *skipped += missed;
                return;
            }
        };
        // Encoded once for every console; decoded again only to add what this one missed.
        let frame = if *skipped == 0 {
            protocol::push_raw(kind, &payload)
        } else {
            let mut value: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
            let upstream = value["skipped"].as_u64().unwrap_or(0);
            value["skipped"] = json!(upstream + *skipped);
            protocol::push(kind, value)
        };
        match self.outbox.frames.try_send(frame) {
            Ok(()) => *skipped = 0,
            // The socket is behind: drop it and say so in the next one.
            Err(_) => *skipped += 1,
        }
    }

    fn push_frame(&mut self, kind: &str, payload: Value) {
        self.send_now(protocol::push(kind, payload));
    }

    fn refuse(&mut self, id: Option<&str>, code: ErrorCode, message: &str) {
        self.send_now(protocol::error(id, code, message));
    }
}

/// One command running apart from the session.
struct Job {
    state: Arc<AppState>,
    user: String,
    credential: Credential,
    frames: mpsc::Sender<String>,
    envelope: protocol::Envelope,
    started: Instant,
}

impl Job {
    /// Checks the credential against the database first: an operator removed, demoted or with
    /// a new password since the connection opened may no longer act, nor read, even in the
    /// second before the registry closes the console (which it is then told to do).
    async fn run(self, command: Command) {
        let ending = self.credential.ending_fresh(&self.state).await;
        let outcome = match ending {
            None => perform::perform(&command, &self.state, &self.user).await,
            Some(ending) => Err(no_longer_good(&self.user, ending)),
        };
        let ender = self.credential.ender.clone();
        self.finish(command.name(), outcome).await;
        if let Some(ending) = ending {
            ender.end(ending);
        }
    }

    /// Audits (when the command is audited), counts, logs and replies.
    async fn finish(self, name: &'static str, outcome: Result<Value, Failure>) {
        let mut outcome = outcome;
        if commands::definition_of(name).is_some_and(|d| d.audited) {
            if let Err(failure) = self.audit(name, &outcome).await {
                // The action may have happened; the operator must know it is not on record.
                outcome = Err(Failure::new(
                    failure.code,
                    format!(
                        "{}; the audit log could not record it: {}",
                        match &outcome {
                            Ok(_) => "done",
                            Err(f) => f.message.as_str(),
                        },
                        failure.message
                    ),
                ));
            }
        }
        let label = match &outcome {
            Ok(_) => "ok",
            Err(failure) => failure.code.as_str(),
        };
        tracing::Span::current().record("outcome", label);
        tracing::info!(command = name, outcome = label, "console command");
        count(&self.state, name, label, self.started);
        let frame = match outcome {
            Ok(payload) => protocol::reply(&self.envelope.id, payload),
            Err(failure) => {
                protocol::error(Some(&self.envelope.id), failure.code, &failure.message)
            }
        };
        // Replies wait for room (bounded); a closed connection just drops them.
        let _ = self.frames.send(frame).await;
    }

    async fn audit(&self, name: &str, outcome: &Result<Value, Failure>) -> Result<(), Failure> {
        let payload = self.envelope.payload.to_string();
        let (result, detail) = match outcome {
            Ok(value) => ("ok", summary(value)),
            Err(failure) => (failure.code.as_str(), failure.message.clone()),
        };
        let row = self
            .state
            .core
            .store
            .append_audit(&NewAudit {
                at: now_ms(),
                username: &self.user,
                node: &self.state.core.node,
                command: name,
                payload: &payload,
                outcome: result,
                detail: &detail,
            })
            .await?;
        let json = perform::audit_json(&row).to_string();
        self.state.core.fanout.send_audit(Arc::from(json.as_str()));
        Ok(())
    }
}

/// A short account of a result for the audit log.
fn summary(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(500) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
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

/// The next snapshot of a subscribed console; never ready when it is not subscribed.
async fn next_snapshot(
    receiver: &mut Option<watch::Receiver<Option<Arc<crate::live::hub::PublishedSnapshot>>>>,
) -> Option<Arc<crate::live::hub::PublishedSnapshot>> {
    match receiver {
        Some(receiver) => match receiver.changed().await {
            Ok(()) => receiver.borrow_and_update().clone(),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn next_presence(receiver: &mut Option<watch::Receiver<Arc<str>>>) -> Option<Arc<str>> {
    match receiver {
        Some(receiver) => match receiver.changed().await {
            Ok(()) => Some(receiver.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The next event or audit item, or how many were missed (`Err`).
async fn next_item(receiver: &mut Option<broadcast::Receiver<Arc<str>>>) -> Result<Arc<str>, u64> {
    match receiver {
        Some(inner) => match inner.recv().await {
            Ok(item) => Ok(item),
            Err(RecvError::Lagged(missed)) => Err(missed),
            Err(RecvError::Closed) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The one task that writes to the socket: control first, then replies and pushes, then the
/// latest snapshot and presence. Ends when the socket fails or it is told to close.
async fn write(
    mut session: actix_ws::Session,
    mut control: mpsc::Receiver<Control>,
    mut frames: mpsc::Receiver<String>,
    mut snapshot: watch::Receiver<Option<Arc<str>>>,
    mut presence: watch::Receiver<Option<Arc<str>>>,
) {
    let reason = loop {
        let sent = tokio::select! {
            biased;
            item = control.recv() => match item {
                Some(Control::Ping) => session.ping(b"").await,
                Some(Control::Pong(bytes)) => session.pong(&bytes).await,
                Some(Control::Close(reason)) => break reason,
                None => break None,
            },
            frame = frames.recv() => match frame {
                Some(frame) => session.text(frame).await,
                None => break None,
            },
            Ok(()) = snapshot.changed() => {
                let frame = snapshot.borrow_and_update().clone();
                match frame {
                    Some(frame) => session.text(frame.to_string()).await,
                    None => Ok(()),
                }
            }
            Ok(()) = presence.changed() => {
                let frame = presence.borrow_and_update().clone();
                match frame {
                    Some(frame) => session.text(frame.to_string()).await,
                    None => Ok(()),
                }
            }
        };
        if sent.is_err() {
            // The client is gone.
            return;
        }
    };
    // Replies already queued still go out before the close.
    while let Ok(frame) = frames.try_recv() {
        if session.text(frame).await.is_err() {
            return;
        }
    }
    let _ = session.close(reason).await;
}

/// Metric label for a command: the known names, `unknown`, or `invalid` (bounded cardinality).
fn count(state: &AppState, command: &str, outcome: &str, started: Instant) {
    state
        .core
        .metrics
        .console_commands
        .with_label_values(&[command, outcome])
        .inc();
    state
        .core
        .metrics
        .console_command_duration
        .with_label_values(&[command])
        .observe(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
