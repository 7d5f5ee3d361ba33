//! Logging: `tracing` to standard error, filtered by `RUST_LOG` (default `info`), as text or as
//! one JSON object a line. Initialised once by the binary; standard output stays free for
//! command results (`simulate`'s summary, `users add`'s password).
//!
//! Every recorded value is escaped by the formatter ([`escape`]), so that no call site can forget
//! it: one event is one physical line, and no control character reaches the log (the formatter's
//! own colours aside).

mod escape;
#[cfg(test)]
mod tests;

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing::Subscriber;
use tracing_subscriber::fmt::{format, MakeWriter};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The filter from the environment; an invalid `RUST_LOG` falls back to the default.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// A subscriber writing to `sink` (generic so that tests can read what it writes); `ansi`
/// colours the text format's level, target and field names.
pub fn get_subscriber<W>(
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
