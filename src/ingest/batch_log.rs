//! The committed-batch log line, the one line of the log that a program reads: the live
//! benchmark numbers its orders by these lines and times each from its arrival. Its shape is
//! therefore defined here once, writer and reader side by side, instead of being a format the
//! reader has to guess from the call site.
//!
//! At DEBUG under [`TARGET`], for every batch whose commit landed, in commit order (one commit
//! at a time): `batch committed messages=… events=… commit_ms=… first_arrival_ms=…
//! last_arrival_ms=…`, arrivals in Unix milliseconds (docs/operations.md, "Logs"). A metric
//! cannot carry it: the benchmark needs every event's arrival, not a distribution.

use crate::aggregate::Millis;

/// The target the line is logged under, as `RUST_LOG` names it (docs/operations.md): a fixed
/// name, kept when the leader was split into files, so that filters and readers keep working.
pub const TARGET: &str = "pulseboard::ingest::leader";
/// The line's message.
pub(crate) const MESSAGE: &str = "batch committed";

/// One committed batch, as logged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommittedBatch {
    /// Messages of every kind, acknowledged together.
    pub messages: usize,
    /// Events among them, committed in one transaction.
    pub events: usize,
    pub commit_ms: f64,
    /// Arrival of the batch's first and last event (0 when it has none).
    pub first_arrival_ms: Millis,
    pub last_arrival_ms: Millis,
}

impl CommittedBatch {
    pub fn log(&self) {
        tracing::debug!(
            target: TARGET,
            messages = self.messages,
            events = self.events,
            commit_ms = self.commit_ms,
            first_arrival_ms = self.first_arrival_ms,
            last_arrival_ms = self.last_arrival_ms,
            "batch committed"
        );
    }

    /// Reads the line back from the text log format (`PULSEBOARD_LOG_FORMAT=text`, no colours);
    /// `None` for any other line.
    pub fn from_log_line(line: &str) -> Option<CommittedBatch> {
        if !line.contains(TARGET) {
            return None;
        }
        // The event's own fields follow its message; the spans before it (the leader logs
        // this inside the batch's span) may carry fields of the same names.
        let (_, fields) = line.split_once(MESSAGE)?;
        let field = |name: &str| {
            fields
                .split_whitespace()
                .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
        };
        Some(CommittedBatch {
            messages: field("messages")?.parse().ok()?,
            events: field("events")?.parse().ok()?,
            commit_ms: field("commit_ms")?.parse().ok()?,
            first_arrival_ms: field("first_arrival_ms")?.parse().ok()?,
            last_arrival_ms: field("last_arrival_ms")?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;
    use crate::telemetry::get_subscriber;
    use std::sync::Arc;
    use tracing_subscriber::EnvFilter;

    #[test]
    fn the_logged_line_reads_back_as_the_batch() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("log");
        let file = std::fs::File::create(&path).expect("log file");
        let subscriber = get_subscriber(
            EnvFilter::new("info,pulseboard::ingest::leader=debug"),
            LogFormat::Text,
            false,
            Arc::new(file),
        );
        let batch = CommittedBatch {
            messages: 7,
            events: 5,
            commit_ms: 1.25,
            first_arrival_ms: 1_795_428_930_000,
            last_arrival_ms: 1_795_428_930_004,
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: TARGET, "another line of the same target");
            // As the leader logs it: inside the batch's span, whose fields share the names.
            let span = tracing::info_span!("batch", messages = 1, events = 2, commit_ms = 9.5);
            span.in_scope(|| batch.log());
        });
        let text = std::fs::read_to_string(&path).expect("log text");
        let read: Vec<CommittedBatch> = text
            .lines()
            .filter_map(CommittedBatch::from_log_line)
            .collect();
        assert_eq!(read, vec![batch], "log: {text}");
    }
}
