//! The one place that reads the wall clock. Everything downstream takes `now` as a value.

use crate::aggregate::Millis;

/// Unix time in milliseconds.
pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 with milliseconds and `Z`, as every timestamp on the wire.
pub fn rfc3339(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
