//! Console frames (docs/api.md, Console): client commands in, replies, errors and pushes out.
//! Pure decoding.

use serde::Deserialize;
use serde_json::{json, Value};

pub const MAX_FRAME_BYTES: usize = 64 * 1024;
const MAX_ID_CHARS: usize = 64;

/// A decoded client command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
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
pub struct Refusal {
    pub id: Option<String>,
    pub code: &'static str,
    pub message: String,
}

pub fn decode(text: &str) -> Result<Command, Refusal> {
    let refuse = |id: Option<String>, message: &str| Refusal {
        id,
        code: "bad_request",
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
    Ok(Command {
        id,
        name,
        payload: raw.payload.unwrap_or(Value::Null),
    })
}

pub fn reply(id: &str, payload: Value) -> String {
    json!({"id": id, "type": "reply", "ok": true, "payload": payload}).to_string()
}

pub fn error(id: Option<&str>, code: &str, message: &str) -> String {
    json!({"id": id, "type": "error", "ok": false, "error": {"code": code, "message": message}})
        .to_string()
}

pub fn push(kind: &str, payload: Value) -> String {
    json!({"type": kind, "payload": payload}).to_string()
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
        assert_eq!(decode(&long).expect_err("refused").code, "bad_request");
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
        let frame: Value = serde_json::from_str(&error(None, "bad_request", "x")).expect("json");
        assert_eq!(frame["id"], Value::Null);
        assert_eq!(frame["ok"], false);
        assert_eq!(frame["error"]["code"], "bad_request");
    }
}
