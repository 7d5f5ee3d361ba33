//! Announcements: an operator's message to every dashboard (docs/api.md, Announcements): its fields, their
//! rules, and its one JSON form. Publishing one is `crate::announce`.

use crate::clock::rfc3339;
use crate::store::StoredAnnouncement;
use serde::{Deserialize, Serialize};

pub const MAX_MESSAGE_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "info" => Some(Level::Info),
            "warning" => Some(Level::Warning),
            "critical" => Some(Level::Critical),
            _ => None,
        }
    }
}

/// An announcement as clients receive it: `{"id","level","message","author","created_at"}`
/// (see docs/api.md, Announcements).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub id: i64,
    pub level: Level,
    pub message: String,
    pub author: String,
    pub created_at: String,
}

impl From<StoredAnnouncement> for Announcement {
    fn from(stored: StoredAnnouncement) -> Self {
        Announcement {
            id: stored.id,
            // Only valid levels are ever stored; an unknown one is shown as info.
            level: Level::parse(&stored.level).unwrap_or(Level::Info),
            message: stored.message,
            author: stored.author,
            created_at: rfc3339(stored.created_at),
        }
    }
}

/// Checks a message: 1 to 500 characters, not only blanks, no U+0000 (PostgreSQL cannot store
/// it).
pub fn validate_message(message: &str) -> Result<(), String> {
    let chars = message.chars().count();
    if message.trim().is_empty() || chars > MAX_MESSAGE_CHARS {
        return Err(format!(
            "message must have 1 to {MAX_MESSAGE_CHARS} characters"
        ));
    }
    if message.contains('\0') {
        return Err("message must not contain U+0000".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_must_be_one_to_five_hundred_characters() {
        assert!(validate_message("deploy at 5").is_ok());
        assert!(validate_message(&"é".repeat(500)).is_ok());
        assert!(validate_message(&"x".repeat(501)).is_err());
        assert!(validate_message("   ").is_err());
        assert!(validate_message("").is_err());
        assert!(validate_message("nul \u{0} byte").is_err());
    }

    #[test]
    fn levels_are_lowercase_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&Level::Critical).ok().as_deref(),
            Some("\"critical\"")
        );
        assert_eq!(Level::parse("warning"), Some(Level::Warning));
        assert_eq!(Level::parse("WARNING"), None);
    }
}
