//! How one console command is seen from outside: its tracing span (`console_command`, with
//! `command`, `user` and an `outcome` recorded at the end; docs/operations.md, Logs) and its two
//! metrics, counted once whichever way the command ends (answered on the spot, refused, or
//! finished by a job).

use crate::metrics::Metrics;
use std::time::Instant;

/// The span of one command; `name` is a command's name, `unknown` or `invalid`.
pub(super) fn command_span(user: &str, name: &str) -> tracing::Span {
    tracing::info_span!(
        "console_command",
        command = name,
        user = %user,
        outcome = tracing::field::Empty
    )
}

/// Counts a command by name (a known one, `unknown` or `invalid`: bounded cardinality) and
/// outcome (`ok` or the error code), with how long it took since `started`.
pub(super) fn count(metrics: &Metrics, command: &str, outcome: &str, started: Instant) {
    metrics
        .console_commands
        .with_label_values(&[command, outcome])
        .inc();
    metrics
        .console_command_duration
        .with_label_values(&[command])
        .observe(started.elapsed().as_secs_f64());
}
