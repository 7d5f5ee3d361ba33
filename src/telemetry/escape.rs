//! Escaping of every recorded value, in the formatter, so that text from outside (a user name,
//! a routing key, a header, a rejection reason, the message itself) cannot end its line, forge
//! another, or drive the terminal that shows the log. Call sites log values as they are.
//!
//! - Text: [`EscapingFields`] writes each field the way `tracing_subscriber`'s default does
//!   (`message` bare, then `name=value`), with every value passed through [`Escaper`].
//! - JSON: serde_json already escapes C0 controls (`\n`, ESC, NUL …) inside strings;
//!   [`EscapedJson`] escapes what it leaves raw (DEL, C1, line separators, bidi controls).

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Characters a terminal or a line-oriented reader acts on instead of showing: every control
/// character (C0 with `\n`, `\r`, `\t`, NUL, ESC; DEL; C1, which some terminals take as escape
/// introducers), the Unicode line and paragraph separators (line breaks to some viewers and to
/// JavaScript), and the bidirectional controls that can reorder what a reader sees.
pub(super) fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// A `fmt::Write` that escapes what passes through it: `\\`, `\n`, `\r`, `\t`, and `\u{hex}` for
/// the rest of [`needs_escape`]; with `quotes`, also `\"`. The backslash is escaped too, so the
/// text form stays one-to-one (`tests::unescape` reverses it).
/// Anything else (é, 日本) is written as it is.
pub(super) struct Escaper<W> {
    inner: W,
    quotes: bool,
}

impl<W: fmt::Write> Escaper<W> {
    pub(super) fn new(inner: W) -> Self {
        Escaper {
            inner,
            quotes: false,
        }
    }

    fn quoted(inner: W) -> Self {
        Escaper {
            inner,
            quotes: true,
        }
    }

    fn escapes(&self, c: char) -> bool {
        c == '\\' || (self.quotes && c == '"') || needs_escape(c)
    }
}

impl<W: fmt::Write> fmt::Write for Escaper<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Plain runs are written in one piece; only the characters to escape are split out.
        let mut plain_from = 0;
        for (at, c) in text.char_indices() {
            if self.escapes(c) {
                self.inner.write_str(&text[plain_from..at])?;
                match c {
                    '\\' => self.inner.write_str("\\\\")?,
                    '"' => self.inner.write_str("\\\"")?,
                    '\n' => self.inner.write_str("\\n")?,
                    '\r' => self.inner.write_str("\\r")?,
                    '\t' => self.inner.write_str("\\t")?,
                    c => write!(self.inner, "\\u{{{:x}}}", u32::from(c))?,
                }
                plain_from = at + c.len_utf8();
            }
        }
        self.inner.write_str(&text[plain_from..])
    }
}

/// The text format's [`FormatFields`]: the default layout, every value escaped. Used for event
/// fields and span fields alike.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct EscapingFields;

impl<'a> MakeVisitor<Writer<'a>> for EscapingFields {
    type Visitor = EscapingVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> Self::Visitor {
        EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

pub(super) struct EscapingVisitor<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    /// Writes `name=` (or nothing for the message) with the default format's styling: the
    /// formatter's own colours go straight to the writer, never through the escaper.
    fn start_field(&mut self, name: &str) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        if name == "message" {
            return Ok(());
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        if self.writer.has_ansi_escapes() {
            write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")
        } else {
            write!(self.writer, "{name}=")
        }
    }

    fn record(&mut self, field: &Field, value: fmt::Arguments<'_>, quotes: bool) {
        // `log.*` fields carry a `log` record's metadata, already shown as target and level.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = self.start_field(field.name()).and_then(|()| {
            if quotes {
                self.writer.write_char('"')?;
                Escaper::quoted(&mut self.writer).write_fmt(value)?;
                self.writer.write_char('"')
            } else {
                Escaper::new(&mut self.writer).write_fmt(value)
            }
        });
    }
}

impl Visit for EscapingVisitor<'_> {
    /// Strings are quoted, as by the default formatter (`?` on a `&str`), but escaped once by
    /// us rather than by `Debug` and again by us.
    fn record_str(&mut self, field: &Field, value: &str) {
        let quotes = field.name() != "message";
        self.record(field, format_args!("{value}"), quotes);
    }

    /// The error and its sources, like the default formatter (`error error.sources=[…]`).
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record(field, format_args!("{value}"), false);
        let mut sources = std::iter::successors(value.source(), |e| e.source()).peekable();
        if self.result.is_err() || sources.peek().is_none() {
            return;
        }
        let name = format!("{}.sources", field.name());
        self.result = self.start_field(&name).and_then(|()| {
            let mut out = Escaper::new(&mut self.writer);
            out.write_char('[')?;
            for (index, source) in sources.enumerate() {
                let separator = if index == 0 { "" } else { ", " };
                write!(out, "{separator}{source}")?;
            }
            out.write_char(']')
        });
    }

    /// `%` and `?` fields and the message: whatever `Display` or `Debug` writes, escaped.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, format_args!("{value:?}"), false);
    }
}

impl VisitOutput<fmt::Result> for EscapingVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapingVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Wraps the JSON event format: the event is written to a buffer, then every character of
/// [`needs_escape`] still raw is written as `\uXXXX`. That is always sound: outside its strings,
/// JSON is ASCII without controls, so such a character can only be inside a string, where the
/// escape stands for the same character and the line parses back to the same value.
pub(super) struct EscapedJson<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for EscapedJson<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0
            .format_event(context, Writer::new(&mut line), event)?;
        write_json_escaped(&mut writer, &line)
    }
}

fn write_json_escaped(out: &mut impl fmt::Write, json: &str) -> fmt::Result {
    let mut plain_from = 0;
    for (at, c) in json.char_indices() {
        // The event's own final newline stays: it ends the line.
        if needs_escape(c) && !(c == '\n' && at + 1 == json.len()) {
            out.write_str(&json[plain_from..at])?;
            write!(out, "\\u{:04x}", u32::from(c))?;
            plain_from = at + c.len_utf8();
        }
    }
    out.write_str(&json[plain_from..])
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn escape(text: &str) -> String {
        let mut out = String::new();
        let _ = Escaper::new(&mut out).write_str(text);
        out
    }

    /// The inverse of [`Escaper`] without quotes; `None` for text it cannot have written.
    pub(crate) fn unescape(text: &str) -> Option<String> {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next()? {
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let rest = chars.as_str().strip_prefix('{')?;
                    let (hex, after) = rest.split_once('}')?;
                    out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
                    chars = after.chars();
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// Mostly the characters that matter here, with any character now and then.
    pub(crate) fn tricky_text() -> impl Strategy<Value = String> {
        let tricky = prop::sample::select(vec![
            '\n', '\r', '\t', '\0', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}',
            '\u{202e}', '\u{2066}', '\\', '"', '=', ' ', '{', '}', 'u', 'a', 'é', '日', '本', '😀',
        ]);
        let one = prop_oneof![4 => tricky, 1 => any::<char>()];
        prop::collection::vec(one, 0..40).prop_map(String::from_iter)
    }

    proptest! {
        #[test]
        fn telemetry_escape_round_trips(text in tricky_text()) {
            prop_assert_eq!(unescape(&escape(&text)), Some(text));
        }

        #[test]
        fn telemetry_escape_leaves_nothing_to_act_on(text in tricky_text()) {
            let escaped = escape(&text);
            prop_assert!(!escaped.chars().any(needs_escape), "{:?}", escaped);
        }

        /// Two texts that differ only in one control character stay apart.
        #[test]
        fn telemetry_escape_keeps_control_characters_apart(
            before in tricky_text(),
            after in tricky_text(),
            one in any::<char>().prop_filter("a control", |c| needs_escape(*c)),
            other in any::<char>().prop_filter("a control", |c| needs_escape(*c)),
        ) {
            prop_assume!(one != other);
            prop_assert_ne!(
                escape(&format!("{before}{one}{after}")),
                escape(&format!("{before}{other}{after}"))
            );
        }
    }

    #[test]
    fn telemetry_escape_keeps_ordinary_text_readable() {
        let text = "Zoë paid 12,50 € — 日本語 \"quoted\" path=/a/b";
        assert_eq!(escape(text), text);
        assert_eq!(
            escape("a\\b\nc\u{1b}[31m\u{2028}"),
            "a\\\\b\\nc\\u{1b}[31m\\u{2028}"
        );
    }

    #[test]
    fn telemetry_json_escape_keeps_the_final_newline_only() {
        let mut out = String::new();
        let written = write_json_escaped(&mut out, "{\"a\":\"x\u{85}\u{2028}\u{7f}\"}\n");
        assert_eq!(written, Ok(()));
        assert_eq!(out, "{\"a\":\"x\\u0085\\u2028\\u007f\"}\n");
    }
}
