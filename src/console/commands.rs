//! The console's commands as types (docs/api.md, Console: commands), the one place where what a
//! command is and how it is treated is decided: one [`Definition`] per command (name, payload
//! fields, whether it is audited) and one [`Command`] with its typed, validated payload, which is
//! either an [`InlineCommand`] the session answers on the spot (it waits for nothing and is never
//! audited) or a [`JobCommand`] run apart from the session. A frame's name is looked up in the
//! table once ([`definition_of`]: its audit rule and metrics label, even when the payload is
//! refused), and [`Command::parse`] is the only place a name becomes a command. The tests map
//! every variant back to its definition with an exhaustive `match`, so a new one cannot be
//! forgotten in the table (and so in `help`, the audit rule or the metrics labels). Every command
//! needs the operator role, which the handshake (`http::console`) checks once for the connection.
//!
//! Pure: no I/O. What each job does is `perform`'s business.

use crate::live::announcement::validate_message;
use crate::live::Level;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One payload field as `help` describes it.
#[derive(Debug, Serialize)]
pub(crate) struct Field {
    pub name: &'static str,
    pub rule: &'static str,
}

/// What `help` and the welcome frame say of a command, and how it is treated.
#[derive(Debug)]
pub(crate) struct Definition {
    pub name: &'static str,
    pub fields: &'static [Field],
    /// Written to the audit log (every command that changes something).
    pub audited: bool,
    pub summary: &'static str,
    /// A valid payload, for `help` and the tests.
    pub example: &'static str,
}

const fn def(
    name: &'static str,
    fields: &'static [Field],
    audited: bool,
    summary: &'static str,
    example: &'static str,
) -> Definition {
    Definition {
        name,
        fields,
        audited,
        summary,
        example,
    }
}

const NONE: &[Field] = &[];
const TOPICS: &[Field] = &[Field {
    name: "topics",
    rule: "list of snapshots|events|audit|presence (1 or more)",
}];

/// Every command, in the order `help` lists them.
pub(crate) const DEFINITIONS: [Definition; 16] = [
    def("help", NONE, false, "every command with its payload fields", "null"),
    def("ping", NONE, false, "answers pong with the server time", "null"),
    def(
        "status",
        NONE,
        false,
        "every node (unreachable if silent for 1 s), leader, ingest state, queue depth, dead letters",
        "null",
    ),
    def(
        "subscribe",
        TOPICS,
        false,
        "start pushes of these topics",
        r#"{"topics":["snapshots","presence"]}"#,
    ),
    def(
        "unsubscribe",
        TOPICS,
        false,
        "stop pushes of these topics",
        r#"{"topics":["events"]}"#,
    ),
    def(
        "ingest.pause",
        NONE,
        true,
        "stop consuming, cluster-wide, until resumed (kept across restarts)",
        "null",
    ),
    def(
        "ingest.resume",
        NONE,
        true,
        "consume again, cluster-wide",
        "null",
    ),
    def(
        "dlq.peek",
        &[Field {
            name: "limit",
            rule: "integer 1-100",
        }],
        false,
        "dead letters with reason, routing key and body, left in place",
        r#"{"limit":10}"#,
    ),
    def(
        "dlq.replay",
        &[Field {
            name: "limit",
            rule: "integer 1-1000",
        }],
        true,
        "moves that many dead letters back to the events exchange",
        r#"{"limit":10}"#,
    ),
    def(
        "dlq.purge",
        &[Field {
            name: "confirm",
            rule: "true",
        }],
        true,
        "drops every dead letter",
        r#"{"confirm":true}"#,
    ),
    def(
        "announce",
        &[
            Field {
                name: "message",
                rule: "1-500 characters",
            },
            Field {
                name: "level",
                rule: "info|warning|critical",
            },
        ],
        true,
        "an announcement to every dashboard",
        r#"{"message":"Deploy at 14:00","level":"info"}"#,
    ),
    def(
        "connections.list",
        NONE,
        false,
        "open SSE, long-poll and console connections on every node",
        "null",
    ),
    def(
        "connections.kick",
        &[Field {
            name: "id",
            rule: "a connection id from connections.list",
        }],
        true,
        "closes that connection on whichever node holds it",
        r#"{"id":"web-1/7"}"#,
    ),
    def(
        "audit.tail",
        &[Field {
            name: "limit",
            rule: "integer 1-200",
        }],
        false,
        "latest audit entries, newest first",
        r#"{"limit":20}"#,
    ),
    def(
        "tokens.list",
        NONE,
        false,
        "kiosk links: name, created, expires, last used",
        "null",
    ),
    def(
        "tokens.revoke",
        &[Field {
            name: "name",
            rule: "a kiosk link's name from tokens.list",
        }],
        true,
        "revokes that kiosk link: its screens' streams close on every node",
        r#"{"name":"lobby"}"#,
    ),
];

/// A push topic of `subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Topic {
    Snapshots,
    Events,
    Audit,
    Presence,
}

/// A command with its validated payload: answered by the session or run as a job.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Command {
    Inline(InlineCommand),
    Job(JobCommand),
}

/// A command the session answers on the spot: it waits for nothing and changes nothing, so it
/// is never audited.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum InlineCommand {
    Help,
    Ping,
    Subscribe(Vec<Topic>),
    Unsubscribe(Vec<Topic>),
}

/// A command that waits on something (the broker, the database, other instances): it runs in a
/// task of its own, after a fresh check of the credential.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum JobCommand {
    Status,
    IngestPause,
    IngestResume,
    DlqPeek { limit: u32 },
    DlqReplay { limit: u32 },
    DlqPurge,
    Announce { message: String, level: Level },
    ConnectionsList,
    ConnectionsKick { id: String },
    AuditTail { limit: u32 },
    TokensList,
    TokensRevoke { name: String },
}

/// Why a command was not parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ParseError {
    #[error("no command {0:?}; try help")]
    Unknown(String),
    /// `field` is the payload field at fault (or `payload` for the whole).
    #[error("{field}: {message}")]
    InvalidPayload { field: String, message: String },
}

fn invalid(field: &str, message: impl Into<String>) -> ParseError {
    ParseError::InvalidPayload {
        field: field.to_owned(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limit {
    limit: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Topics {
    topics: Vec<Topic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Confirm {
    confirm: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Announce {
    message: String,
    level: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kick {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

impl Command {
    /// `name` and `payload` (`null` when the frame had none) into a command, or why not.
    pub(super) fn parse(name: &str, payload: &Value) -> Result<Command, ParseError> {
        use InlineCommand as I;
        use JobCommand as J;
        let inline = Command::Inline;
        let job = Command::Job;
        Ok(match name {
            "help" => no_fields(payload).map(|()| inline(I::Help))?,
            "ping" => no_fields(payload).map(|()| inline(I::Ping))?,
            "status" => no_fields(payload).map(|()| job(J::Status))?,
            "subscribe" => inline(I::Subscribe(topics(payload)?)),
            "unsubscribe" => inline(I::Unsubscribe(topics(payload)?)),
            "ingest.pause" => no_fields(payload).map(|()| job(J::IngestPause))?,
            "ingest.resume" => no_fields(payload).map(|()| job(J::IngestResume))?,
            "dlq.peek" => job(J::DlqPeek {
                limit: limit(payload, 100)?,
            }),
            "dlq.replay" => job(J::DlqReplay {
                limit: limit(payload, 1_000)?,
            }),
            "dlq.purge" => {
                let Confirm { confirm } = fields(payload)?;
                if !confirm {
                    return Err(invalid("confirm", "must be true to drop every dead letter"));
                }
                job(J::DlqPurge)
            }
            "announce" => {
                let Announce { message, level } = fields(payload)?;
                validate_message(&message).map_err(|m| invalid("message", m))?;
                let level = Level::parse(&level)
                    .ok_or_else(|| invalid("level", "must be info, warning or critical"))?;
                job(J::Announce { message, level })
            }
            "connections.list" => no_fields(payload).map(|()| job(J::ConnectionsList))?,
            "connections.kick" => {
                let Kick { id } = fields(payload)?;
                if id.is_empty() || id.chars().count() > 200 {
                    return Err(invalid(
                        "id",
                        "must be a connection id from connections.list",
                    ));
                }
                job(J::ConnectionsKick { id })
            }
            "audit.tail" => job(J::AuditTail {
                limit: limit(payload, 200)?,
            }),
            "tokens.list" => no_fields(payload).map(|()| job(J::TokensList))?,
            "tokens.revoke" => {
                let Name { name } = fields(payload)?;
                crate::auth::kiosk::validate_name(&name).map_err(|m| invalid("name", m))?;
                job(J::TokensRevoke { name })
            }
            other => return Err(ParseError::Unknown(other.to_owned())),
        })
    }

    /// This command's definition (for the tests: the session carries the one it looked up).
    #[cfg(test)]
    pub(super) fn definition(&self) -> &'static Definition {
        match self {
            Command::Inline(command) => command.definition(),
            Command::Job(command) => command.definition(),
        }
    }
}

#[cfg(test)]
impl InlineCommand {
    pub(super) fn definition(&self) -> &'static Definition {
        &DEFINITIONS[match self {
            InlineCommand::Help => 0,
            InlineCommand::Ping => 1,
            InlineCommand::Subscribe(_) => 3,
            InlineCommand::Unsubscribe(_) => 4,
        }]
    }
}

#[cfg(test)]
impl JobCommand {
    pub(super) fn definition(&self) -> &'static Definition {
        &DEFINITIONS[match self {
            JobCommand::Status => 2,
            JobCommand::IngestPause => 5,
            JobCommand::IngestResume => 6,
            JobCommand::DlqPeek { .. } => 7,
            JobCommand::DlqReplay { .. } => 8,
            JobCommand::DlqPurge => 9,
            JobCommand::Announce { .. } => 10,
            JobCommand::ConnectionsList => 11,
            JobCommand::ConnectionsKick { .. } => 12,
            JobCommand::AuditTail { .. } => 13,
            JobCommand::TokensList => 14,
            JobCommand::TokensRevoke { .. } => 15,
        }]
    }
}

/// The definition of a command name, if there is one: read once per frame, before parsing, so
/// that a refusal knows whether it goes on the audit record.
pub(super) fn definition_of(name: &str) -> Option<&'static Definition> {
    DEFINITIONS.iter().find(|d| d.name == name)
}

/// `help`'s answer: every command with its payload fields.
#[derive(Debug, Serialize)]
pub(super) struct Help {
    commands: Vec<CommandHelp>,
}

#[derive(Debug, Serialize)]
struct CommandHelp {
    name: &'static str,
    summary: &'static str,
    payload: &'static [Field],
    audited: bool,
    example: Value,
}

pub(super) fn help() -> Help {
    let commands = DEFINITIONS
        .iter()
        .map(|d| CommandHelp {
            name: d.name,
            summary: d.summary,
            payload: d.fields,
            audited: d.audited,
            example: serde_json::from_str(d.example).unwrap_or(Value::Null),
        })
        .collect();
    Help { commands }
}

/// Commands without fields take no payload, `null` or `{}`.
fn no_fields(payload: &Value) -> Result<(), ParseError> {
    match payload {
        Value::Null => Ok(()),
        Value::Object(map) => match map.keys().next() {
            None => Ok(()),
            Some(key) => Err(invalid(key, "this command takes no payload fields")),
        },
        _ => Err(invalid("payload", "must be an object or absent")),
    }
}

fn limit(payload: &Value, max: i64) -> Result<u32, ParseError> {
    let Limit { limit } = fields(payload)?;
    if !(1..=max).contains(&limit) {
        return Err(invalid("limit", format!("must be from 1 to {max}")));
    }
    // In 1..=1000: fits.
    Ok(limit as u32)
}

fn topics(payload: &Value) -> Result<Vec<Topic>, ParseError> {
    let Topics { mut topics } = fields(payload)?;
    if topics.is_empty() {
        return Err(invalid("topics", "name at least one topic"));
    }
    topics.dedup();
    Ok(topics)
}

/// Deserializes a payload object, naming the field at fault on failure.
fn fields<T: DeserializeOwned>(payload: &Value) -> Result<T, ParseError> {
    if !payload.is_object() {
        return Err(invalid(
            "payload",
            "must be an object with the command's fields",
        ));
    }
    serde_path_to_error::deserialize(payload).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        let field = if path == "." {
            // Missing and unknown fields are reported at the top, named between backticks.
            inner.split('`').nth(1).unwrap_or("payload").to_owned()
        } else {
            path.split(['.', '['])
                .next()
                .unwrap_or("payload")
                .to_owned()
        };
        invalid(&field, inner)
    })
}

/// Every `command` label the console counts under (each known command, `unknown` and
/// `invalid`) with every `outcome` (`ok` and each error code), exported at 0 from the start.
pub(crate) fn export_metrics(metrics: &crate::metrics::Metrics) {
    let mut commands: Vec<&str> = DEFINITIONS.iter().map(|d| d.name).collect();
    commands.extend(["unknown", "invalid"]);
    let mut outcomes = vec!["ok"];
    outcomes.extend(super::protocol::ErrorCode::ALL.map(|code| code.as_str()));
    metrics.export_console_commands(&commands, &outcomes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn every_definition_parses_its_example_and_maps_back_to_itself() {
        for definition in &DEFINITIONS {
            let payload: Value = serde_json::from_str(definition.example).expect("example");
            let command = Command::parse(definition.name, &payload)
                .unwrap_or_else(|e| panic!("{}: {e}", definition.name));
            assert_eq!(command.definition().name, definition.name);
        }
    }

    #[test]
    fn no_command_the_session_answers_inline_is_audited() {
        for definition in &DEFINITIONS {
            let payload: Value = serde_json::from_str(definition.example).expect("example");
            if let Ok(Command::Inline(command)) = Command::parse(definition.name, &payload) {
                assert!(!command.definition().audited, "{}", definition.name);
            }
        }
    }

    #[test]
    fn the_audited_commands_are_those_spec_names() {
        let read_only = [
            "help",
            "ping",
            "status",
            "subscribe",
            "unsubscribe",
            "connections.list",
            "dlq.peek",
            "audit.tail",
            "tokens.list",
        ];
        for definition in &DEFINITIONS {
            assert_eq!(
                definition.audited,
                !read_only.contains(&definition.name),
                "{}",
                definition.name
            );
        }
    }

    #[test]
    fn invalid_payloads_name_their_field() {
        let field = |name: &str, payload: Value| match Command::parse(name, &payload) {
            Err(ParseError::InvalidPayload { field, .. }) => field,
            other => panic!("{name} {payload}: {other:?}"),
        };
        assert_eq!(field("dlq.peek", json!({"limit": 0})), "limit");
        assert_eq!(field("dlq.peek", json!({"limit": "x"})), "limit");
        assert_eq!(field("dlq.peek", json!({})), "limit");
        assert_eq!(field("dlq.peek", Value::Null), "payload");
        assert_eq!(field("dlq.peek", json!({"limit": 1, "extra": 2})), "extra");
        assert_eq!(field("dlq.purge", json!({"confirm": false})), "confirm");
        assert_eq!(
            field("announce", json!({"message": "", "level": "info"})),
            "message"
        );
        assert_eq!(
            field("announce", json!({"message": "m", "level": "loud"})),
            "level"
        );
        assert_eq!(field("subscribe", json!({"topics": ["weather"]})), "topics");
        assert_eq!(field("subscribe", json!({"topics": []})), "topics");
        assert_eq!(field("ping", json!({"x": 1})), "x");
        assert_eq!(field("tokens.revoke", json!({"name": "a b"})), "name");
        assert_eq!(field("tokens.revoke", json!({})), "name");
        assert_eq!(
            Command::parse("reboot", &Value::Null),
            Err(ParseError::Unknown("reboot".into()))
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,20}".prop_map(Value::from),
            Just(json!("info")),
            Just(json!("snapshots")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("limit".to_owned()),
                        Just("topics".to_owned()),
                        Just("confirm".to_owned()),
                        Just("message".to_owned()),
                        Just("level".to_owned()),
                        Just("id".to_owned()),
                        Just("name".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// Any payload for any command: a command of that name, or a refusal naming a field
        /// (never a panic).
        #[test]
        fn every_payload_yields_the_command_or_a_named_refusal(
            index in 0..DEFINITIONS.len(),
            payload in json_value(),
        ) {
            let name = DEFINITIONS[index].name;
            match Command::parse(name, &payload) {
                Ok(command) => prop_assert_eq!(command.definition().name, name),
                Err(ParseError::InvalidPayload { field, message }) => {
                    prop_assert!(!field.is_empty());
                    prop_assert!(!message.is_empty());
                }
                Err(ParseError::Unknown(_)) => prop_assert!(false, "known name refused"),
            }
        }
    }
}
