//! Prometheus metrics, one registry per process; every series is listed in docs/api.md, Metrics.
//!
//! Every series carries the constant label `node`; the other labels are small fixed sets (never
//! a user, event or connection id). Components get the [`Metrics`] handle from the application
//! state; nothing registers behind its back.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];
const AGE_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0,
];

pub struct Metrics {
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
}

#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new(node: &str) -> Result<Metrics, MetricsError> {
        let labels = HashMap::from([("node".to_string(), node.to_string())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let r = &registry;
        Ok(Metrics {
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
                LATENCY_BUCKETS,
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
                "Console commands",
                &["command", "outcome"],
            )?,
            console_command_duration: histogram_vec(
                r,
                "console_command_duration_seconds",
                "Console command duration",
                &["command"],
                prometheus::DEFAULT_BUCKETS,
            )?,
            http_requests: counter_vec(
                r,
                "http_requests_total",
                "HTTP requests",
                &["method", "route", "status"],
            )?,
            http_request_duration: histogram_vec(
                r,
                "http_request_duration_seconds",
                "HTTP request duration",
                &["method", "route", "status"],
                prometheus::DEFAULT_BUCKETS,
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
            registry,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on an invalid metric family, which registration rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Counts one consumed event.
    pub fn count_event(&self, event_type: &str, outcome: &str) {
        self.events.with_label_values(&[event_type, outcome]).inc();
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
