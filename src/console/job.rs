//! One command finished apart from the session, in a task of its own (docs/api.md, Console):
//! a [`JobCommand`] performed after a fresh check of the credential, or a refusal that must
//! go on the audit record before its reply. Either way it ends the same: on record when its
//! definition says so, counted, logged in its span, answered (waiting for room in the
//! bounded queue; a closed connection just drops it).

use super::audit;
use super::commands::{Definition, JobCommand};
use super::credential::Credential;
use super::observe;
use super::perform;
use super::protocol::{self, Envelope, Failure};
use crate::app::AppState;
use crate::live::connection::Ending;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Instrument;

pub(super) struct Job {
    pub(super) state: Arc<AppState>,
    pub(super) credential: Credential,
    pub(super) user: String,
    /// Where the reply goes (the writer's queue).
    pub(super) frames: mpsc::Sender<String>,
    pub(super) envelope: Envelope,
    pub(super) definition: &'static Definition,
    pub(super) started: Instant,
}

impl Job {
    /// Performs `command` in a task of its own, which holds `permit` (one of the connection's
    /// commands in flight) until it has replied.
    pub(super) fn spawn(self, command: JobCommand, permit: OwnedSemaphorePermit) {
        let span = self.span();
        tokio::spawn(
            async move {
                let _permit = permit;
                self.run(command).await;
            }
            .instrument(span),
        );
    }

    /// Answers `failure` from a task, so that an audited command's refusal is on record before
    /// its reply like any other outcome; then ends the console when `ending` says so.
    pub(super) fn spawn_refusal(self, failure: Failure, ending: Option<Ending>) {
        let span = self.span();
        let credential = self.credential.clone();
        tokio::spawn(
            async move {
                self.finish(Err(failure)).await;
                if let Some(ending) = ending {
                    credential.end(ending);
                }
            }
            .instrument(span),
        );
    }

    fn span(&self) -> tracing::Span {
        observe::command_span(&self.user, self.definition.name)
    }

    /// Checks the credential against the database first: an operator removed, demoted or with
    /// a new password since the connection opened may no longer act, nor read, even in the
    /// second before the registry closes the console (which it is then told to do).
    async fn run(self, command: JobCommand) {
        let ending = self.credential.ending_fresh(&self.state).await;
        let outcome = match ending {
            None => perform::perform(&command, &self.state, &self.user).await,
            Some(ending) => Err(self.credential.refusal(ending)),
        };
        let credential = self.credential.clone();
        self.finish(outcome).await;
        if let Some(ending) = ending {
            credential.end(ending);
        }
    }

    /// Audits (when the command is audited), counts, logs and replies.
    async fn finish(self, outcome: Result<Value, Failure>) {
        let name = self.definition.name;
        let outcome = if self.definition.audited {
            let payload = &self.envelope.payload;
            audit::on_record(&self.state, &self.user, name, payload, outcome).await
        } else {
            outcome
        };
        let label = match &outcome {
            Ok(_) => "ok",
            Err(failure) => failure.code.as_str(),
        };
        tracing::Span::current().record("outcome", label);
        tracing::info!(command = name, outcome = label, "console command");
        observe::count(&self.state.core.metrics, name, label, self.started);
        let id = &self.envelope.id;
        let frame = match outcome {
            Ok(payload) => protocol::reply(id, payload),
            Err(failure) => protocol::error(Some(id), failure.code, &failure.message),
        };
        let _ = self.frames.send(frame).await;
    }
}
