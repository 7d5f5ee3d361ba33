//! Prometheus metrics, one registry per process; every series is listed in docs/api.md, Metrics.
//!
//! Every series carries the constant label `node` (`PULSEBOARD_NODE_ID`, host name and port by
//! default), so that two instances behind one Prometheus job stay apart even when their
//! `instance` label is a load balancer's. The other labels are small fixed sets: transports,
//! close reasons, event types, outcomes, console command names (`unknown` for any other), HTTP
//! route *patterns* (`unmatched` for unknown paths), never a user, event or connection id.
//! Components get the [`Metrics`] handle from the application state; nothing registers behind
//! its back.
//!
//! The histogram buckets are chosen for the questions the dashboards and alerts of `grafana/`
//! ask (docs/operations.md, Alerting): delivery and HTTP latency in milliseconds, with a bound at exactly 0.5 s where
//! the delivery alert's threshold is; event age in seconds, with a bound at exactly 30 s where
//! its alert's threshold is (`histogram_quantile` interpolates inside a bucket, so a threshold
//! on a bucket bound is where the estimate is exact).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;

/// `pulseboard_delivery_latency_seconds`: 1 ms to 10 s; a snapshot tick is 250 ms by default,
/// so the interesting range is a few ms to about a second, and 0.5 s is the alert threshold.
const DELIVERY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];
/// `pulseboard_http_request_duration_seconds` and console commands: 1 ms to 30 s (a long-poll
/// answers after at most 30 s).
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// `pulseboard_event_age_seconds`: 100 ms to a day (older events are rejected); 30 s is the
/// alert threshold.
const AGE_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0,
];

pub(crate) struct Metrics {
    registry: Registry,
    pub connections: IntGaugeVec,
    pub connections_opened: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub reconnects: IntCounterVec,
    pub messages_sent: IntCounterVec,
    pub delivery_latency: HistogramVec,
    pub event_age: Histogram,
    pub events: IntCounterVec,
    pub slow_client_coalesced: IntCounterVec,
    pub slow_client_disconnects: IntCounterVec,
    pub ingest_up: IntGauge,
    pub leader: IntGauge,
    pub queue_depth: IntGauge,
    pub dead_letters: IntGauge,
    pub console_commands: IntCounterVec,
    pub console_command_duration: HistogramVec,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub active_users: IntGauge,
    pub orders_per_minute: IntGauge,
    pub revenue_today_minor: IntGauge,
    /// Applied amounts by `type` (`order.placed`, `order.refunded`): revenue per minute is the
    /// difference of their increases, with no dip at midnight.
    pub order_amount_minor: IntCounterVec,
    /// The figures at the same time yesterday / last week (`compare` = `1d`, `7d`); a label
    /// set is absent while the history does not reach back.
    pub orders_per_minute_baseline: IntGaugeVec,
    pub active_users_baseline: IntGaugeVec,
    pub late_events: IntCounter,
    pub fanout_rejected: IntCounterVec,
}

/// The `type`s of `pulseboard_order_amount_minor_total`.
pub(crate) const ORDER_TYPES: [&str; 2] = ["order.placed", "order.refunded"];

/// The `reason`s of `pulseboard_fanout_rejected_total` (docs/security.md, Messages between
/// instances), each exported at 0 from the start.
pub(crate) const FANOUT_REJECTION_REASONS: [&str; 6] = [
    "unsigned",
    "bad_signature",
    "stale",
    "replayed",
    "malformed",
    "seq_ahead",
];

/// The `transport`s of the connection families.
pub(crate) const TRANSPORTS: [&str; 3] = ["sse", "ws", "poll"];

/// The `kind`s of `pulseboard_messages_sent_total` (`live::connection::Sent`).
pub(crate) const MESSAGE_KINDS: [&str; 3] = ["snapshot", "announcement", "heartbeat"];

/// The `type`s of `pulseboard_events_total`: the event types, `other` for an unknown type,
/// `unknown` for a message that is not an event at all.
pub(crate) const EVENT_TYPES: [&str; 6] = [
    "order.placed",
    "order.refunded",
    "user.active",
    "user.signed_out",
    "other",
    "unknown",
];

/// The `outcome`s of `pulseboard_events_total` (SPEC §8).
pub(crate) const EVENT_OUTCOMES: [&str; 4] = ["applied", "duplicate", "ignored", "rejected"];

/// The `reason`s of `pulseboard_connections_closed_total` for each `transport` (docs/api.md,
/// Metrics), each pair exported at 0 from the start.
pub(crate) const CLOSE_REASONS: [(&str, &[&str]); 3] = [
    (
        "sse",
        &[
            "client_closed",
            "slow_client",
            "shutdown",
            "kicked",
            "revoked",
            "expired",
        ],
    ),
    ("poll", &["client_closed", "kicked", "revoked", "expired"]),
    (
        "ws",
        &[
            "client_closed",
            "slow_client",
            "shutdown",
            "kicked",
            "revoked",
            "expired",
            "ping_timeout",
            "too_large",
        ],
    ),
];

#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub(crate) struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub(crate) fn new(node: &str) -> Result<Metrics, MetricsError> {
        let labels = HashMap::from([("node".to_string(), node.to_string())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let r = &registry;
        let metrics = Metrics {
            connections: gauge_vec(r, "connections", "Open client connections", &["transport"])?,
            connections_opened: counter_vec(
                r,
                "connections_opened_total",
                "Client connections opened",
                &["transport"],
            )?,
            connections_closed: counter_vec(
                r,
                "connections_closed_total",
                "Client connections closed",
                &["transport", "reason"],
            )?,
            reconnects: counter_vec(
                r,
                "reconnects_total",
                "Requests resuming with Last-Event-ID",
                &["transport"],
            )?,
            messages_sent: counter_vec(
                r,
                "messages_sent_total",
                "Messages written to clients",
                &["transport", "kind"],
            )?,
            delivery_latency: histogram_vec(
                r,
                "delivery_latency_seconds",
                "Event arrival to the write of the snapshot that includes it",
                &["transport"],
                DELIVERY_BUCKETS,
            )?,
            event_age: histogram(
                r,
                "event_age_seconds",
                "Arrival time minus occurred_at",
                AGE_BUCKETS,
            )?,
            events: counter_vec(
                r,
                "events_total",
                "Events consumed by outcome",
                &["type", "outcome"],
            )?,
            slow_client_coalesced: counter_vec(
                r,
                "slow_client_coalesced_total",
                "Snapshots skipped for a slow client",
                &["transport"],
            )?,
            slow_client_disconnects: counter_vec(
                r,
                "slow_client_disconnects_total",
                "Clients disconnected for not keeping up",
                &["transport"],
            )?,
            ingest_up: gauge(
                r,
                "ingest_up",
                "1 when this instance is connected to its event source",
            )?,
            leader: gauge(r, "leader", "1 when this instance aggregates")?,
            queue_depth: gauge(r, "queue_depth", "Messages ready in the events queue")?,
            dead_letters: gauge(r, "dead_letters", "Messages in the dead-letter queue")?,
            console_commands: counter_vec(
                r,
                "console_commands_total",
                "Console commands by outcome",
                &["command", "outcome"],
            )?,
            console_command_duration: histogram_vec(
                r,
                "console_command_duration_seconds",
                "Console command duration, to the reply",
                &["command"],
                REQUEST_BUCKETS,
            )?,
            http_requests: counter_vec(
                r,
                "http_requests_total",
                "HTTP requests by method, route pattern and status",
                &["method", "route", "status"],
            )?,
            http_request_duration: histogram_vec(
                r,
                "http_request_duration_seconds",
                "HTTP request duration, to the response head",
                &["method", "route", "status"],
                REQUEST_BUCKETS,
            )?,
            active_users: gauge(r, "active_users", "Active users in the last snapshot")?,
            orders_per_minute: gauge(
                r,
                "orders_per_minute",
                "Orders per minute in the last snapshot",
            )?,
            revenue_today_minor: gauge(
                r,
                "revenue_today_minor",
                "Revenue today (minor units) in the last snapshot",
            )?,
            order_amount_minor: counter_vec(
                r,
                "order_amount_minor_total",
                "Applied order and refund amounts (minor units)",
                &["type"],
            )?,
            orders_per_minute_baseline: gauge_vec(
                r,
                "orders_per_minute_baseline",
                "Orders per minute at the same time yesterday (1d) or last week (7d), from history",
                &["compare"],
            )?,
            active_users_baseline: gauge_vec(
                r,
                "active_users_baseline",
                "Active users at the same time yesterday (1d) or last week (7d), from history",
                &["compare"],
            )?,
            late_events: counter(
                r,
                "late_events_total",
                "Events applied after their minute had been published",
            )?,
            fanout_rejected: counter_vec(
                r,
                "fanout_rejected_total",
                "Messages from <prefix>.live refused (bad or missing seal, stale, replayed, malformed, seq ahead)",
                &["reason"],
            )?,
            registry,
        };
        metrics.export_known_label_sets();
        Ok(metrics)
    }

    /// Every known label set at 0 from the start (SPEC §8): a fresh instance already has each
    /// series a dashboard panel or an alert rule reads. Not `http_*`, whose label sets (route
    /// and status) exist only once a request had them.
    fn export_known_label_sets(&self) {
        for reason in FANOUT_REJECTION_REASONS {
            self.fanout_rejected.with_label_values(&[reason]);
        }
        for (transport, reasons) in CLOSE_REASONS {
            for reason in reasons {
                self.connections_closed
                    .with_label_values(&[transport, reason]);
            }
        }
        for transport in TRANSPORTS {
            let label = [transport];
            self.connections.with_label_values(&label);
            self.connections_opened.with_label_values(&label);
            self.reconnects.with_label_values(&label);
            self.delivery_latency.with_label_values(&label);
            self.slow_client_coalesced.with_label_values(&label);
            self.slow_client_disconnects.with_label_values(&label);
            for kind in MESSAGE_KINDS {
                self.messages_sent.with_label_values(&[transport, kind]);
            }
        }
        for order_type in ORDER_TYPES {
            self.order_amount_minor.with_label_values(&[order_type]);
        }
        for event_type in EVENT_TYPES {
            for outcome in EVENT_OUTCOMES {
                self.events.with_label_values(&[event_type, outcome]);
            }
        }
    }

    /// The console's commands and outcomes at 0, for `pulseboard_console_commands_total` and
    /// its duration (the console knows them; the metrics are made before it).
    pub(crate) fn export_console_commands(&self, commands: &[&str], outcomes: &[&str]) {
        for command in commands {
            self.console_command_duration.with_label_values(&[command]);
            for outcome in outcomes {
                self.console_commands.with_label_values(&[command, outcome]);
            }
        }
    }

    /// The text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on an invalid metric family, which registration rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Counts one consumed event.
    pub(crate) fn count_event(&self, event_type: &str, outcome: &str) {
        self.count_events(event_type, outcome, 1);
    }

    /// Counts `n` consumed events of one type and outcome.
    pub(crate) fn count_events(&self, event_type: &str, outcome: &str, n: u64) {
        self.events
            .with_label_values(&[event_type, outcome])
            .inc_by(n);
    }
}

fn name(short: &str) -> String {
    format!("pulseboard_{short}")
}

fn gauge(r: &Registry, short: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let metric = IntGauge::new(name(short), help)?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter(r: &Registry, short: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let metric = IntCounter::new(name(short), help)?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge_vec(
    r: &Registry,
    short: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let metric = IntGaugeVec::new(Opts::new(name(short), help), labels)?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter_vec(
    r: &Registry,
    short: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let metric = IntCounterVec::new(Opts::new(name(short), help), labels)?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram(
    r: &Registry,
    short: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, prometheus::Error> {
    let metric =
        Histogram::with_opts(HistogramOpts::new(name(short), help).buckets(buckets.to_vec()))?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram_vec(
    r: &Registry,
    short: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, prometheus::Error> {
    let metric = HistogramVec::new(
        HistogramOpts::new(name(short), help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::proto::MetricType;

    /// docs/api.md, Metrics: name, type and labels (besides `node`) of every metric.
    const DOCUMENTED: &[(&str, MetricType, &[&str])] = &[
        ("pulseboard_connections", MetricType::GAUGE, &["transport"]),
        (
            "pulseboard_connections_opened_total",
            MetricType::COUNTER,
            &["transport"],
        ),
        (
            "pulseboard_connections_closed_total",
            MetricType::COUNTER,
            &["reason", "transport"],
        ),
        (
            "pulseboard_reconnects_total",
            MetricType::COUNTER,
            &["transport"],
        ),
        (
            "pulseboard_messages_sent_total",
            MetricType::COUNTER,
            &["kind", "transport"],
        ),
        (
            "pulseboard_delivery_latency_seconds",
            MetricType::HISTOGRAM,
            &["transport"],
        ),
        ("pulseboard_event_age_seconds", MetricType::HISTOGRAM, &[]),
        (
            "pulseboard_events_total",
            MetricType::COUNTER,
            &["outcome", "type"],
        ),
        (
            "pulseboard_slow_client_coalesced_total",
            MetricType::COUNTER,
            &["transport"],
        ),
        (
            "pulseboard_slow_client_disconnects_total",
            MetricType::COUNTER,
            &["transport"],
        ),
        ("pulseboard_ingest_up", MetricType::GAUGE, &[]),
        ("pulseboard_leader", MetricType::GAUGE, &[]),
        ("pulseboard_queue_depth", MetricType::GAUGE, &[]),
        ("pulseboard_dead_letters", MetricType::GAUGE, &[]),
        (
            "pulseboard_console_commands_total",
            MetricType::COUNTER,
            &["command", "outcome"],
        ),
        (
            "pulseboard_console_command_duration_seconds",
            MetricType::HISTOGRAM,
            &["command"],
        ),
        (
            "pulseboard_http_requests_total",
            MetricType::COUNTER,
            &["method", "route", "status"],
        ),
        (
            "pulseboard_http_request_duration_seconds",
            MetricType::HISTOGRAM,
            &["method", "route", "status"],
        ),
        ("pulseboard_active_users", MetricType::GAUGE, &[]),
        ("pulseboard_orders_per_minute", MetricType::GAUGE, &[]),
        ("pulseboard_revenue_today_minor", MetricType::GAUGE, &[]),
        (
            "pulseboard_order_amount_minor_total",
            MetricType::COUNTER,
            &["type"],
        ),
        (
            "pulseboard_orders_per_minute_baseline",
            MetricType::GAUGE,
            &["compare"],
        ),
        (
            "pulseboard_active_users_baseline",
            MetricType::GAUGE,
            &["compare"],
        ),
        ("pulseboard_late_events_total", MetricType::COUNTER, &[]),
        (
            "pulseboard_fanout_rejected_total",
            MetricType::COUNTER,
            &["reason"],
        ),
    ];

    /// A registry where every labelled family has one series (they appear only once used).
    fn touched() -> Metrics {
        let m = Metrics::new("web-1").expect("metrics");
        m.connections.with_label_values(&["sse"]).inc();
        m.connections_opened.with_label_values(&["sse"]).inc();
        m.connections_closed
            .with_label_values(&["sse", "client_closed"])
            .inc();
        m.reconnects.with_label_values(&["sse"]).inc();
        m.messages_sent
            .with_label_values(&["sse", "snapshot"])
            .inc();
        m.delivery_latency
            .with_label_values(&["sse"])
            .observe(0.004);
        m.event_age.observe(1.5);
        m.count_event("order.placed", "applied");
        m.slow_client_coalesced.with_label_values(&["sse"]).inc();
        m.orders_per_minute_baseline
            .with_label_values(&["1d"])
            .set(3);
        m.active_users_baseline.with_label_values(&["7d"]).set(9);
        m.slow_client_disconnects.with_label_values(&["sse"]).inc();
        m.console_commands.with_label_values(&["ping", "ok"]).inc();
        m.console_command_duration
            .with_label_values(&["ping"])
            .observe(0.001);
        let http = ["GET", "/api/dashboard/snapshot", "200"];
        m.http_requests.with_label_values(&http).inc();
        m.http_request_duration
            .with_label_values(&http)
            .observe(0.002);
        m
    }

    #[test]
    fn every_metric_of_spec_8_has_its_name_type_and_labels_plus_node() {
        let metrics = touched();
        let families = metrics.registry.gather();
        for (name, kind, labels) in DOCUMENTED {
            let family = families
                .iter()
                .find(|f| f.name() == *name)
                .unwrap_or_else(|| panic!("{name} is not exported"));
            assert_eq!(family.get_field_type(), *kind, "{name}: type");
            assert!(!family.help().is_empty(), "{name}: help");
            for metric in family.get_metric() {
                let mut names: Vec<&str> = metric.get_label().iter().map(|l| l.name()).collect();
                names.sort_unstable();
                let mut expected: Vec<&str> = labels.iter().copied().chain(["node"]).collect();
                expected.sort_unstable();
                assert_eq!(names, expected, "{name}: labels");
                let node = metric.get_label().iter().find(|l| l.name() == "node");
                assert_eq!(node.map(|l| l.value()), Some("web-1"), "{name}: node");
            }
        }
        assert_eq!(
            families.len(),
            DOCUMENTED.len(),
            "a metric outside docs/api.md, Metrics"
        );
    }

    #[test]
    fn buckets_resolve_milliseconds_and_put_a_bound_on_each_alert_threshold() {
        for buckets in [DELIVERY_BUCKETS, REQUEST_BUCKETS] {
            assert_eq!(buckets[0], 0.001, "the first bucket is one millisecond");
            assert!(buckets.windows(2).all(|w| w[0] < w[1]));
        }
        assert!(AGE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        // The alerts of prometheus/alerts.yml: delivery p99 > 0.5 s, event age p99 > 30 s.
        assert!(DELIVERY_BUCKETS.contains(&0.5));
        assert!(AGE_BUCKETS.contains(&30.0));
        // A long-poll lasts up to 30 s; events older than a day are rejected.
        assert_eq!(REQUEST_BUCKETS.last(), Some(&30.0));
        assert_eq!(AGE_BUCKETS.last(), Some(&86400.0));
    }

    #[test]
    fn every_close_reason_is_exported_from_the_start_and_documented() {
        let text = Metrics::new("web-1").expect("metrics").render();
        let docs = include_str!("../docs/api.md");
        let row = docs
            .lines()
            .find(|l| l.starts_with("| `pulseboard_connections_closed_total`"))
            .expect("the row of pulseboard_connections_closed_total in docs/api.md");
        for (transport, reasons) in CLOSE_REASONS {
            for reason in reasons {
                let labels = format!("reason=\"{reason}\",transport=\"{transport}\"");
                let exported = text.lines().any(|line| {
                    line.starts_with("pulseboard_connections_closed_total{")
                        && line.contains(&labels)
                        && line.ends_with(" 0")
                });
                assert!(exported, "{labels} in\n{text}");
                assert!(row.contains(&format!("`{reason}`")), "{reason} in {row}");
            }
        }
    }

    #[test]
    fn the_exposition_carries_the_node_label_on_every_sample() {
        let text = touched().render();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(!samples.is_empty());
        for sample in samples {
            assert!(sample.contains("node=\"web-1\""), "{sample}");
        }
    }
}
