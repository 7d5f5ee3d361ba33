//! Console frames (docs/api.md, Console): the envelope of client commands in (`id`, `type`,
//! `payload`); replies, errors (a command's [`Failure`]: its code and message) and pushes
//! ([`PushKind`]) out. Pure: what a command's payload means is `commands`' business, what a
//! reply's payload holds `replies`'.

use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) const MAX_FRAME_BYTES: usize = 64 * 1024;
const MAX_ID_CHARS: usize = 64;

/// The error codes of a refused or failed command (docs/api.md, Console).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// Not JSON, no `id` or `type`, or a binary frame.
    BadRequest,
    UnknownCommand,
    /// The payload does not fit the command; the message names the field.
    InvalidPayload,
    /// The caller may no longer do this (no longer an operator).
    Forbidden,
    RateLimited,
    /// A service it needs (RabbitMQ, the database, another instance) is not answering.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub(crate) const ALL: [ErrorCode; 7] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownCommand,
        ErrorCode::InvalidPayload,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A command that did not succeed: the error code and message of its reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// A decoded client frame: its id, the command name and the raw payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Envelope {
    pub id: String,
    pub name: String,
    pub payload: Value,
}

#[derive(Deserialize)]
struct RawCommand {
    id: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<Value>,
    payload: Option<Value>,
}

/// A refused frame: its id when one could be read, and the error to send back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

pub(crate) fn decode(text: &str) -> Result<Envelope, Refusal> {
    let refuse = |id: Option<String>, message: &str| Refusal {
        id,
        code: ErrorCode::BadRequest,
        message: message.to_owned(),
    };
    if text.len() > MAX_FRAME_BYTES {
        return Err(refuse(None, "frame over 64 KiB"));
    }
    let raw: RawCommand =
        serde_json::from_str(text).map_err(|_| refuse(None, "not a JSON object"))?;
    let id = match raw.id {
        Some(Value::String(id)) if (1..=MAX_ID_CHARS).contains(&id.chars().count()) => id,
        _ => return Err(refuse(None, "id must be a string of 1 to 64 characters")),
    };
    let name = match raw.kind {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => return Err(refuse(Some(id), "type must be a command name")),
    };
    Ok(Envelope {
        id,
        name,
        payload: raw.payload.unwrap_or(Value::Null),
    })
}

pub(crate) fn reply(id: &str, payload: Value) -> String {
    json!({"id": id, "type": "reply", "ok": true, "payload": payload}).to_string()
}

pub(crate) fn error(id: Option<&str>, code: ErrorCode, message: &str) -> String {
    json!({"id": id, "type": "error", "ok": false, "error": {"code": code.as_str(), "message": message}})
        .to_string()
}

/// What a frame without an `id` carries (its `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushKind {
    /// First frame of every connection: who, where, which commands.
    Welcome,
    /// Every announcement, to every console.
    Announcement,
    /// Topic `snapshots`.
    Snapshot,
    /// Topic `events`: one sampled accepted event.
    Event,
    /// Topic `audit`: one audit entry.
    Audit,
    /// Topic `presence`.
    Presence,
}

impl PushKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PushKind::Welcome => "welcome",
            PushKind::Announcement => "announcement",
            PushKind::Snapshot => "snapshot",
            PushKind::Event => "event",
            PushKind::Audit => "audit",
            PushKind::Presence => "presence",
        }
    }
}

pub(crate) fn push(kind: PushKind, payload: Value) -> String {
    json!({"type": kind.as_str(), "payload": payload}).to_string()
}

/// A push whose payload is already JSON text (encoded once for every console).
pub(crate) fn push_raw(kind: PushKind, payload_json: &str) -> String {
    format!(
        r#"{{"type":{},"payload":{payload_json}}}"#,
        json!(kind.as_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_commands_and_refuses_garbage_with_the_id_when_known() {
        let command = decode(r#"{"id":"c-1","type":"ping"}"#).expect("valid");
        assert_eq!(
            (command.id.as_str(), command.name.as_str()),
            ("c-1", "ping")
        );
        assert_eq!(decode("nope").expect_err("refused").id, None);
        assert_eq!(decode(r#"{"type":"ping"}"#).expect_err("refused").id, None);
        let long = format!(r#"{{"id":"{}","type":"ping"}}"#, "x".repeat(65));
        assert_eq!(
            decode(&long).expect_err("refused").code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            decode(r#"{"id":"c-2"}"#)
                .expect_err("refused")
                .id
                .as_deref(),
            Some("c-2")
        );
    }

    #[test]
    fn errors_have_the_spec_shape() {
        let frame: Value =
            serde_json::from_str(&error(None, ErrorCode::BadRequest, "x")).expect("json");
        assert_eq!(frame["id"], Value::Null);
        assert_eq!(frame["ok"], false);
        assert_eq!(frame["error"]["code"], "bad_request");
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3_000))]
        /// Arbitrary text never panics the decoder; what it refuses is `bad_request`, and an
        /// id is kept only when it is a valid one.
        #[test]
        fn any_text_decodes_or_is_refused_as_bad_request(text in ".{0,200}") {
            match decode(&text) {
                Ok(envelope) => {
                    prop_assert!((1..=64).contains(&envelope.id.chars().count()));
                    prop_assert!(!envelope.name.is_empty());
                }
                Err(refusal) => {
                    prop_assert_eq!(refusal.code, ErrorCode::BadRequest);
                    if let Some(id) = refusal.id {
                        prop_assert!((1..=64).contains(&id.chars().count()));
                    }
                }
            }
        }

        /// Frames shaped like commands, with ids and types of every kind.
        #[test]
        fn command_like_frames_never_panic(
            id in prop_oneof![Just(Value::Null), ".{0,80}".prop_map(Value::from), any::<i64>().prop_map(Value::from)],
            kind in prop_oneof![Just(Value::Null), "[a-z.]{0,20}".prop_map(Value::from), any::<bool>().prop_map(Value::from)],
            payload in prop_oneof![Just(Value::Null), ".{0,20}".prop_map(Value::from), Just(json!({"limit": 5}))],
        ) {
            let text = json!({"id": id, "type": kind, "payload": payload}).to_string();
            let _ = decode(&text);
        }
    }
}
