//! The operations console (docs/api.md, Console): one session per upgraded WebSocket connection.
//! The handshake before the upgrade (credentials, the operator role every command needs,
//! `Origin`, stream cap) is HTTP's: `http::console`.
//!
//! Rooms, each with one job (docs/live.md, "How a console command travels", follows one frame
//! through them):
//!
//! - `protocol`: the frame envelope in; replies, errors and pushes ([`protocol::PushKind`])
//!   out (pure);
//! - `commands`: every command as a type with a validated payload, and the one table of what
//!   each is: answered inline or run as a job, audited or not; and `help` (pure);
//! - `replies`: the payload of every reply the console builds, as types (pure);
//! - `session`: the connection: its reader loop, rate limit, credential check, parsing, the
//!   inline answers, and how it ends;
//! - `writer`: the one task that writes to the socket, and the outbox everything else queues in;
//! - `topics`: the subscribed topics and how what arrives on them becomes pushes;
//! - `job`: a command finished apart from the session (performed, or refused on the record);
//! - `perform`: what each job command does;
//! - `audit`: the audit row written before an audited command's reply, and its push;
//! - `credential`: whether the connection's credential is still good, and the refusal if not;
//! - `observe`: a command's tracing span and metrics.
//!
//! A session never blocks itself: the writer owns the socket and takes replies and event/audit
//! pushes from a bounded queue, snapshots and presence from latest-wins slots, and pings with
//! priority. Jobs (at most four at once per connection) wait on the broker, the database or
//! other instances while pings and pushes go on. A console that cannot keep up loses event and
//! audit pushes (counted in the next one's `skipped`) and intermediate snapshots, never memory.
//! Audited commands are written to the audit log before their reply goes out.
//!
//! A session remembers the credential it was opened with, and every command is refused
//! (`forbidden`), and the console closed (1008, `revoked: …` or `expired: …`), once that
//! credential is no longer good: jobs check it against the database first, inline commands
//! against the instance's table of credentials (at most a second behind); and the registry
//! closes the console when the table changes (`live::credentials`).

mod audit;
mod commands;
mod credential;
mod job;
mod observe;
mod perform;
pub(crate) mod protocol;
mod replies;
mod session;
mod topics;
mod writer;

pub(crate) use commands::{export_metrics, DEFINITIONS};
pub(crate) use session::run;
