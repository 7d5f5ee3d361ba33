//! Logging: `tracing` to standard error, filtered by `RUST_LOG` (default `info`), as text or as
//! one JSON object a line. Initialised once by the binary; standard output stays free for
//! command results (`simulate`'s summary, `users add`'s password).
//!
//! Two defences against anonymous clients, both here so that no call site can forget them:
//! - every recorded value is escaped by the formatter (`escape`): one event is one physical
//!   line, and no control character reaches the log (the formatter's own colours aside);
//! - the HTTP parser's complaints about malformed requests (logged by actix-http at ERROR) are
//!   off unless `RUST_LOG` names their target ([`filter_directives`]).

mod escape;
#[cfg(test)]
mod tests;

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing::Subscriber;
use tracing_subscriber::fmt::{format, MakeWriter};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Where actix-http logs `stream error: request parse error: …` at ERROR for every malformed
/// request (400, 431): any client could fill the error log with them.
pub(crate) const HTTP_PARSER_TARGET: &str = "actix_http::h1::dispatcher";

const DEFAULT_DIRECTIVES: &str = "info";

/// The filter: `RUST_LOG` (or `info` when unset or empty), plus `actix_http::h1::dispatcher=off`
/// unless one of its directives names that target (or a prefix of it, such as `actix_http`,
/// which is how `EnvFilter` matches targets): an operator who asks for it gets it.
pub(crate) fn filter_directives(rust_log: Option<&str>) -> String {
    let rust_log = rust_log
        .map(str::trim)
        .filter(|directives| !directives.is_empty())
        .unwrap_or(DEFAULT_DIRECTIVES);
    if names_http_parser(rust_log) {
        rust_log.to_owned()
    } else {
        format!("{rust_log},{HTTP_PARSER_TARGET}=off")
    }
}

/// Whether a directive's target (`target[span{field}]=level`) covers the parser's target.
fn names_http_parser(rust_log: &str) -> bool {
    rust_log
        .split(',')
        .filter_map(|directive| directive.split(['[', '=']).next())
        .map(str::trim)
        .any(|target| !target.is_empty() && HTTP_PARSER_TARGET.starts_with(target))
}

/// The filter from the environment; an invalid `RUST_LOG` falls back to the default.
pub(crate) fn env_filter() -> EnvFilter {
    let rust_log = std::env::var("RUST_LOG").ok();
    EnvFilter::try_new(filter_directives(rust_log.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(filter_directives(None)))
}

/// A subscriber writing to `sink` (generic so that tests can read what it writes); `ansi`
/// colours the text format's level, target and field names.
pub(crate) fn get_subscriber<W>(
    filter: EnvFilter,
    log_format: LogFormat,
    ansi: bool,
    sink: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink);
    match log_format {
        LogFormat::Text => Box::new(
            builder
                .with_ansi(ansi)
                .fmt_fields(escape::EscapingFields)
                .finish(),
        ),
        LogFormat::Json => Box::new(
            builder
                .with_ansi(false)
                .fmt_fields(format::JsonFields::new())
                .event_format(escape::EscapedJson(format::json().flatten_event(true)))
                .finish(),
        ),
    }
}

/// Installs the subscriber for the process: standard error, colours only on a terminal.
pub fn init(format: LogFormat) {
    let ansi = std::io::stderr().is_terminal();
    let subscriber = get_subscriber(env_filter(), format, ansi, std::io::stderr);
    // A second initialisation (in tests) is harmless: the first subscriber stays.
    let _ = subscriber.try_init();
}
