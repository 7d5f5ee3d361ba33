//! The subscriber as the binary builds it, writing to memory: whatever text an event carries (as a
//! `%` field, a `?` field, the message, a span field), each format writes one line with no
//! control character, and JSON gives the text back.

use super::escape::needs_escape;
use super::escape::tests::{escape, tricky_text};
use super::{filter_directives, get_subscriber, HTTP_PARSER_TARGET};
use crate::config::LogFormat;
use proptest::prelude::*;
use serde_json::Value;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// An in-memory sink.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8(bytes.clone()).expect("the log is UTF-8")
    }
}

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A value whose `Debug` writes the text raw, as a careless `Debug` impl would (a `String`'s own
/// `Debug` escapes, which would hide a formatter that does not).
struct Raw<'a>(&'a str);

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Logs one event carrying `text` everywhere a caller can put it, inside a span carrying it too.
fn log_text_everywhere(log_format: LogFormat, ansi: bool, text: &str) -> String {
    let capture = Capture::default();
    let subscriber = get_subscriber(EnvFilter::new("info"), log_format, ansi, capture.clone());
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("request", user = %text);
        let _entered = span.enter();
        tracing::info!(shown = %text, debugged = ?Raw(text), "{text}");
    });
    capture.text()
}

/// One line: a single final newline and nothing a terminal would act on before it.
fn assert_one_clean_line(out: &str) -> Result<(), TestCaseError> {
    let body = out.strip_suffix('\n');
    prop_assert!(body.is_some(), "no final newline: {:?}", out);
    let body = body.unwrap_or_default();
    prop_assert!(!body.chars().any(needs_escape), "raw: {:?}", body);
    Ok(())
}

proptest! {
    #[test]
    fn telemetry_text_is_one_escaped_line(text in tricky_text()) {
        let out = log_text_everywhere(LogFormat::Text, false, &text);
        assert_one_clean_line(&out)?;
        let escaped = escape(&text);
        let expected_span = format!("request{{user={escaped}}}:");
        prop_assert!(out.contains(&expected_span), "{:?}", out);
        let expected = format!(": {escaped} shown={escaped} debugged={escaped}\n");
        prop_assert!(out.ends_with(&expected), "{:?} does not end with {:?}", out, expected);
    }

    #[test]
    fn telemetry_json_is_one_line_that_gives_the_text_back(text in tricky_text()) {
        let out = log_text_everywhere(LogFormat::Json, false, &text);
        assert_one_clean_line(&out)?;
        let object: Value = serde_json::from_str(&out).map_err(|e| {
            TestCaseError::fail(format!("{e}: {out:?}"))
        })?;
        prop_assert_eq!(&object["message"], &Value::from(text.as_str()));
        prop_assert_eq!(&object["shown"], &Value::from(text.as_str()));
        prop_assert_eq!(&object["debugged"], &Value::from(text.as_str()));
        prop_assert_eq!(&object["span"]["user"], &Value::from(text.as_str()));
    }

    /// With colours, the only escape sequences left are the formatter's own styling.
    #[test]
    fn telemetry_text_colours_survive_and_are_the_only_escapes(text in tricky_text()) {
        let out = log_text_everywhere(LogFormat::Text, true, &text);
        prop_assert!(out.contains("\u{1b}[3mshown\u{1b}[0m"), "no colours: {:?}", out);
        let plain = without_colours(&out);
        assert_one_clean_line(&plain)?;
        let escaped = escape(&text);
        let expected = format!("shown={escaped} debugged={escaped}\n");
        prop_assert!(plain.ends_with(&expected), "{:?}", plain);
    }
}

/// Removes SGR sequences (`ESC [ digits ; … m`), the only ones the formatter writes.
fn without_colours(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find('\u{1b}') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let sequence = after.strip_prefix('[').and_then(|params| {
            let end = params.find(|c: char| !c.is_ascii_digit() && c != ';')?;
            params[end..].starts_with('m').then(|| &params[end + 1..])
        });
        match sequence {
            Some(after_sequence) => rest = after_sequence,
            None => {
                // Not an SGR sequence: keep the ESC, so the caller sees it.
                out.push('\u{1b}');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn telemetry_ordinary_text_reads_as_usual() {
    let out = log_text_everywhere(LogFormat::Text, false, "Zoë 日本");
    assert!(
        out.ends_with(
            "request{user=Zoë 日本}: pulseboard::telemetry::tests: Zoë 日本 shown=Zoë 日本 debugged=Zoë 日本\n"
        ),
        "{out:?}"
    );
}

#[test]
fn telemetry_string_and_error_fields_are_escaped_too() {
    let capture = Capture::default();
    let subscriber = get_subscriber(
        EnvFilter::new("info"),
        LogFormat::Text,
        false,
        capture.clone(),
    );
    let error = io::Error::other(Wrapped(io::Error::other("inner\nline")));
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!(
            name = "a\"b\nc",
            error = &error as &dyn std::error::Error,
            "done"
        );
    });
    let out = capture.text();
    assert!(
        out.ends_with(
            "done name=\"a\\\"b\\nc\" error=outer: inner\\nline error.sources=[inner\\nline]\n"
        ),
        "{out:?}"
    );
}

#[derive(Debug)]
struct Wrapped(io::Error);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "outer: {}", self.0)
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn telemetry_parser_errors_are_off_unless_named() {
    let off = format!("{HTTP_PARSER_TARGET}=off");
    for (rust_log, expected) in [
        (None, format!("info,{off}")),
        (Some("  "), format!("info,{off}")),
        (Some("debug"), format!("debug,{off}")),
        (
            Some("warn,actix_web=debug"),
            format!("warn,actix_web=debug,{off}"),
        ),
        (
            Some("info,actix_http=debug"),
            "info,actix_http=debug".to_owned(),
        ),
        (
            Some("actix_http::h1=warn"),
            "actix_http::h1=warn".to_owned(),
        ),
        (
            Some("actix_http::h1::dispatcher[conn]=error"),
            "actix_http::h1::dispatcher[conn]=error".to_owned(),
        ),
    ] {
        assert_eq!(
            filter_directives(rust_log),
            expected,
            "RUST_LOG={rust_log:?}"
        );
    }
}

/// The directives do what they say in a real `EnvFilter`.
#[test]
fn telemetry_parser_errors_reach_the_log_only_when_asked_for() {
    let logged = |rust_log: Option<&str>| {
        let capture = Capture::default();
        let filter = EnvFilter::new(filter_directives(rust_log));
        let subscriber = get_subscriber(filter, LogFormat::Text, false, capture.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "actix_http::h1::dispatcher", "stream error: request parse error");
            tracing::error!(target: "actix_http::h1::service", "HTTP/1 service readiness error");
        });
        capture.text()
    };
    let default = logged(None);
    assert!(!default.contains("stream error"), "{default}");
    assert!(
        default.contains("readiness error"),
        "other actix_http errors stay: {default}"
    );
    let asked = logged(Some("info,actix_http=error"));
    assert!(asked.contains("stream error"), "{asked}");
}
