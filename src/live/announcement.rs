//! Announcements: an operator's message to every dashboard (docs/api.md, Announcements): its fields, their
//! rules, and its one JSON form. Publishing one is `crate::announce`.

use crate::clock::rfc3339;
use crate::store::StoredAnnouncement;
use serde::{Deserialize, Serialize};

pub(crate) const MAX_MESSAGE_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Level {
    Info,
    Warning,
    Critical,
}

impl Level {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Level> {
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
pub(crate) struct Announcement {
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

/// Checks a message, for both `POST /api/announcements` and the console's `announce`: 1 to
/// 500 characters, at least one of them visible, no U+0000 (PostgreSQL cannot store it), and
/// no bidirectional override or isolate: those reorder what follows them on screen, so a
/// banner could show other words than it holds (and than the audit log records).
pub(crate) fn validate_message(message: &str) -> Result<(), String> {
    let chars = message.chars().count();
    if chars == 0 || chars > MAX_MESSAGE_CHARS {
        return Err(format!(
            "message must have 1 to {MAX_MESSAGE_CHARS} characters"
        ));
    }
    if message.contains('\0') {
        return Err("message must not contain U+0000".to_owned());
    }
    if message.chars().any(is_bidi_control) {
        return Err(
            "message must not contain bidirectional overrides or isolates \
             (U+202A to U+202E, U+2066 to U+2069)"
                .to_owned(),
        );
    }
    if message.chars().all(is_invisible) {
        return Err("message must contain at least one visible character".to_owned());
    }
    Ok(())
}

/// The embeddings and overrides (U+202A–U+202E) and the isolates (U+2066–U+2069).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Shows nothing by itself: white space, control characters, and Unicode's default-ignorable
/// code points (zero-width spaces and joiners, direction marks, soft hyphen, fillers, variation
/// selectors, tags…), which a renderer draws as nothing.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
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
    fn a_message_of_nothing_visible_is_refused() {
        for invisible in [
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
            "\u{200E}\u{200F}\u{061C}",
            "\u{7}\u{1B}\u{7F}\u{85}",
            " \t\n\u{00A0}\u{3000}\u{00AD}",
            "\u{3164}\u{FE0F}\u{E0041}",
        ] {
            let refused = validate_message(invisible).expect_err(invisible);
            assert!(refused.contains("visible"), "{invisible:?}: {refused}");
        }
        // Invisible characters beside visible ones are left alone (a joiner in an emoji).
        assert!(validate_message("deploy \u{200B}at 5").is_ok());
        assert!(validate_message("\u{1F469}\u{200D}\u{1F4BB} on call").is_ok());
        assert!(validate_message("ok").is_ok());
    }

    #[test]
    fn bidirectional_overrides_and_isolates_are_refused_anywhere() {
        for control in ['\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}']
            .into_iter()
            .chain(['\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}'])
        {
            let message = format!("maintenance at 5 {control}.m.a 01");
            let refused = validate_message(&message).expect_err("refused");
            assert!(refused.contains("bidirectional"), "{control:?}: {refused}");
            assert!(validate_message(&control.to_string()).is_err());
        }
        // Direction marks only mark a direction; they reorder nothing that follows them.
        assert!(validate_message("price \u{200F}100\u{200E} USD").is_ok());
        // Right-to-left text itself is welcome.
        assert!(validate_message("שלום עולם").is_ok());
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
