//! The audit record of one command (docs/api.md, Console: audit log): the row written before
//! the command's reply goes out, refused and failed attempts included, and its push to every
//! console subscribed to `audit`. Whether a command is audited is its definition's
//! (`commands`); this only writes.

use super::protocol::Failure;
use super::replies::{self, AuditEntry};
use crate::app::AppState;
use crate::clock::now_ms;
use crate::store::NewAudit;
use serde_json::Value;
use std::sync::Arc;

/// How much of a result the row's `detail` keeps, in characters.
const SUMMARY_CHARS: usize = 500;

/// Puts `outcome` of command `name` (sent by `user` with `payload`) on record, and returns the
/// outcome to reply with: the same, or, when the row could not be written, an error saying so
/// (the action may have happened; the operator must know it is not on record).
pub(super) async fn on_record(
    state: &AppState,
    user: &str,
    name: &str,
    payload: &Value,
    outcome: Result<Value, Failure>,
) -> Result<Value, Failure> {
    let Err(failure) = write(state, user, name, payload, &outcome).await else {
        return outcome;
    };
    let done = match &outcome {
        Ok(_) => "done",
        Err(f) => f.message.as_str(),
    };
    let message = format!(
        "{done}; the audit log could not record it: {}",
        failure.message
    );
    Err(Failure::new(failure.code, message))
}

async fn write(
    state: &AppState,
    user: &str,
    name: &str,
    payload: &Value,
    outcome: &Result<Value, Failure>,
) -> Result<(), Failure> {
    let payload = payload.to_string();
    let (result, detail) = match outcome {
        Ok(value) => ("ok", summary(value)),
        Err(failure) => (failure.code.as_str(), failure.message.clone()),
    };
    let row = state
        .core
        .store
        .append_audit(&NewAudit {
            at: now_ms(),
            username: user,
            node: &state.core.node,
            command: name,
            payload: &payload,
            outcome: result,
            detail: &detail,
        })
        .await?;
    let entry = replies::payload(&AuditEntry::of(&row))?;
    state
        .core
        .fanout
        .send_audit(Arc::from(entry.to_string().as_str()));
    Ok(())
}

/// A short account of a result for the audit log.
fn summary(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(SUMMARY_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_result_is_cut_at_a_character_boundary() {
        let long = Value::String("é".repeat(SUMMARY_CHARS + 10));
        let cut = summary(&long);
        assert_eq!(
            cut.chars().count(),
            SUMMARY_CHARS + 1,
            "500 and the ellipsis"
        );
        assert!(cut.ends_with('…'));
        assert_eq!(summary(&Value::Bool(true)), "true");
    }
}
