//! The credential a console was opened with, and whether it is still good (docs/security.md,
//! Revocation): judged by the instance's table of credentials for what the session answers on
//! the spot (at most a second behind), by the database for what a job does; and how the
//! console is ended, and a command refused, once it is not.

use super::protocol::{ErrorCode, Failure};
use crate::app::AppState;
use crate::auth::grant::Grant;
use crate::live::connection::{Ender, Ending};

#[derive(Clone)]
pub(super) struct Credential {
    grant: Grant,
    ender: Ender,
}

impl Credential {
    pub(super) fn new(grant: Grant, ender: Ender) -> Credential {
        Credential { grant, ender }
    }

    /// Why the console must end now, judged by the instance's table (no waiting).
    pub(super) fn ending_now(&self, state: &AppState) -> Option<Ending> {
        self.ender
            .ending()
            .or_else(|| Ending::of(state.core.credentials.judge(&self.grant)))
    }

    /// Why the console must end now, judged by the database (the table when it fails).
    pub(super) async fn ending_fresh(&self, state: &AppState) -> Option<Ending> {
        match self.ender.ending() {
            Some(ending) => Some(ending),
            None => Ending::of(state.core.credentials.check_fresh(&self.grant).await),
        }
    }

    /// Ends the console (the registry closes it, saying why).
    pub(super) fn end(&self, ending: Ending) {
        self.ender.end(ending);
    }

    /// The refusal of a command on a console whose credential is no longer good.
    pub(super) fn refusal(&self, ending: Ending) -> Failure {
        let user = &self.grant.user;
        let message = match ending {
            Ending::Expired => format!("the credential of {user} expired; sign in again"),
            Ending::Kicked => "this console was kicked".to_owned(),
            Ending::Revoked => format!("the credential of {user} was revoked; sign in again"),
        };
        Failure::new(ErrorCode::Forbidden, message)
    }
}
