//! Live state, without transports: the snapshot and announcements every client sees, each
//! encoded once, and what every live connection shares. It knows nothing of HTTP or RabbitMQ;
//! the transports (`http::sse`, `http::poll`, `console`) read it, and `fanout` feeds it from
//! the other instances. One thing of a wire format is here on purpose: each frame is also kept
//! in the event-stream text form (`id:`/`event:`/`data:` lines, `hub::sse_event`), made once
//! when the frame is published, because ten thousand streams writing the same bytes must not
//! each format them; `http::sse` only writes those bytes.
//!
//! - [`hub`]: this instance's latest snapshot and announcement ring, and event ids;
//! - [`announcement`]: an announcement's fields and rules;
//! - [`connection`]: per-connection metrics and close reasons, the registry of connections;
//! - [`credentials`]: the users' credential epochs, and the task that ends the connections
//!   whose credential is no longer good;
//! - [`feeds`]: the console's pushes besides snapshots (event tail, audit, presence);
//! - [`limit`]: the cap on live connections one user may hold (SSE, long-poll, console);
//! - [`worker_feed`]: one HTTP worker's copy of the hub, which wakes that worker's streams.

pub(crate) mod announcement;
pub(crate) mod connection;
pub(crate) mod credentials;
pub(crate) mod feeds;
pub(crate) mod hub;
pub(crate) mod limit;
pub(crate) mod worker_feed;

pub(crate) use announcement::{Announcement, Level};
pub(crate) use hub::{EventId, Hub};

use crate::aggregate::compare::{Compared, Comparison};
use crate::aggregate::{Figures, Millis, Offset, Trust};
use crate::clock::rfc3339;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The figures at one moment: what every dashboard shows, in one JSON shape (see docs/api.md,
/// Snapshot). The leader makes it; every instance serves it as the body of
/// `/api/dashboard/snapshot` and `/api/dashboard/refresh`, the `data` of `snapshot` events on
/// the stream and in long-poll answers. Field names are the wire names: renaming one breaks
/// clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Strictly increasing across restarts and leaders (reserved from the store in blocks), so
    /// a client or an instance can drop anything not newer than what it has.
    pub seq: i64,
    /// When the leader made it: RFC 3339, UTC, milliseconds.
    pub generated_at: String,
    /// The instance that made it (`PULSEBOARD_NODE_ID` of the leader).
    pub node: String,
    /// Users with an event within the active window and no later sign-out.
    pub active_users: u64,
    /// `order.placed` events that occurred in the trailing 60 seconds.
    pub orders_per_minute: u64,
    pub revenue: Revenue,
    pub ingest: IngestView,
    /// The current minute's history point, so a chart can move without asking for history.
    pub point: PointView,
    /// The figures at the same time yesterday and last week (`null` where history does not
    /// reach back). Absent from a leader of an older version: both `null` then.
    #[serde(default)]
    pub compare: CompareView,
    /// How far the figures can be trusted: complete through when, the queue, late events.
    #[serde(default)]
    pub trust: TrustView,
}

/// `compare` on the wire (docs/api.md, Snapshot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct CompareView {
    pub yesterday: Option<ComparedView>,
    pub last_week: Option<ComparedView>,
}

/// One earlier moment's figures, named as the snapshot's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ComparedView {
    pub active_users: u64,
    pub orders_per_minute: u64,
    /// `null` unless the history reaches back to that day's midnight.
    pub revenue_today_minor: Option<i64>,
    /// `null` unless the history reaches back an hour.
    pub revenue_last_hour_minor: Option<i64>,
}

impl From<Compared> for ComparedView {
    fn from(c: Compared) -> Self {
        ComparedView {
            active_users: c.active_users,
            orders_per_minute: c.orders_per_minute,
            revenue_today_minor: c.revenue_today_minor,
            revenue_last_hour_minor: c.revenue_last_hour_minor,
        }
    }
}

impl From<Comparison> for CompareView {
    fn from(c: Comparison) -> Self {
        CompareView {
            yesterday: c.yesterday.map(Into::into),
            last_week: c.last_week.map(Into::into),
        }
    }
}

impl CompareView {
    pub(crate) fn get(&self, offset: Offset) -> Option<&ComparedView> {
        match offset {
            Offset::Day => self.yesterday.as_ref(),
            Offset::Week => self.last_week.as_ref(),
        }
    }
}

/// `trust` on the wire (docs/api.md, Snapshot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrustView {
    /// Every event that reached the leader before (and at) this instant is in the figures:
    /// the arrival of the newest event of the last batch it applied (docs/live.md).
    pub complete_through: String,
    /// Messages waiting in `<prefix>.events`, as last polled.
    pub queue_depth: u64,
    pub late_events_today: u64,
    /// Minutes (UTC starts) of the last hour revised by late events, oldest first.
    pub revised_minutes: Vec<String>,
}

/// What a snapshot says beyond the figures of the moment: made by the leader's term.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SnapshotContext {
    pub comparison: Comparison,
    pub trust: Trust,
    pub complete_through: Millis,
    pub queue_depth: u64,
}

/// Net revenue (orders minus refunds), in minor units of the one configured currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Revenue {
    /// `PULSEBOARD_CURRENCY`: clients need it to format the amounts.
    pub currency: String,
    /// Events that occurred today in `PULSEBOARD_TIMEZONE`.
    pub today_minor: i64,
    /// Events that occurred in the trailing hour.
    pub last_hour_minor: i64,
}

/// How ingest is doing, as the leader sees it: lets a dashboard tell "quiet" from "stuck".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct IngestView {
    pub state: IngestState,
    /// The instance that aggregates.
    pub leader: Option<String>,
    /// Age of the newest event of the last committed batch when it was committed.
    pub lag_seconds: f64,
    /// Messages waiting in the dead-letter queue `<prefix>.dead`.
    pub dead_letters: u64,
    /// Why ingest is `disconnected` (RabbitMQ lost, or the database failing); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `ingest.state` on the wire, in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum IngestState {
    /// Consuming RabbitMQ.
    Running,
    /// Stopped on an operator's request (the console's `ingest.pause`).
    Paused,
    /// The leader lost RabbitMQ, or cannot write to the database: the figures stand still
    /// until it is back.
    Disconnected,
    /// `serve --demo`: the figures come from generated traffic.
    Demo,
}

impl IngestState {
    /// The wire name (as serialized).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IngestState::Running => "running",
            IngestState::Paused => "paused",
            IngestState::Disconnected => "disconnected",
            IngestState::Demo => "demo",
        }
    }
}

/// A history point as it appears on the wire: a snapshot's `point` and each entry of
/// `/api/dashboard/history` (see docs/api.md, Snapshot). The minute is its UTC start; the
/// counts are of events that occurred in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PointView {
    pub minute: String,
    pub orders: i64,
    pub revenue_minor: i64,
    pub active_users: u64,
}

impl From<crate::aggregate::Point> for PointView {
    fn from(point: crate::aggregate::Point) -> Self {
        PointView {
            minute: rfc3339_minute(point.minute),
            orders: point.orders,
            revenue_minor: point.revenue_minor,
            active_users: point.active_users,
        }
    }
}

/// `2026-11-23T10:15:00Z`: minutes are whole, so no fraction.
fn rfc3339_minute(minute: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(minute)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Snapshot {
    pub(crate) fn new(
        seq: i64,
        now: Millis,
        node: &str,
        figures: &Figures,
        currency: &str,
        ingest: IngestView,
        context: &SnapshotContext,
    ) -> Self {
        Snapshot {
            seq,
            generated_at: rfc3339(now),
            node: node.to_owned(),
            active_users: figures.active_users,
            orders_per_minute: figures.orders_per_minute,
            revenue: Revenue {
                currency: currency.to_owned(),
                today_minor: figures.revenue_today_minor,
                last_hour_minor: figures.revenue_last_hour_minor,
            },
            ingest,
            point: figures.point.into(),
            compare: context.comparison.into(),
            trust: TrustView {
                complete_through: rfc3339(context.complete_through),
                queue_depth: context.queue_depth,
                late_events_today: context.trust.late_events_today,
                revised_minutes: context
                    .trust
                    .revised_minutes
                    .iter()
                    .map(|m| rfc3339_minute(*m))
                    .collect(),
            },
        }
    }
}

/// A published snapshot with its one JSON encoding, always made here (a snapshot from another
/// instance is encoded again, never relayed as it came: its JSON is one line, whatever was sent).
#[derive(Debug)]
pub(crate) struct SnapshotFrame {
    pub snapshot: Snapshot,
    pub json: Arc<str>,
    /// Arrival time of the oldest event first reflected in this snapshot, for the delivery
    /// latency metric (`None` when no new event is in it).
    pub oldest_arrival: Option<Millis>,
}

impl SnapshotFrame {
    pub(crate) fn new(snapshot: Snapshot, oldest_arrival: Option<Millis>) -> Arc<Self> {
        // Serializing a struct of strings and numbers cannot fail.
        let json = serde_json::to_string(&snapshot).unwrap_or_default();
        Arc::new(SnapshotFrame {
            snapshot,
            json: json.into(),
            oldest_arrival,
        })
    }

    pub(crate) fn seq(&self) -> i64 {
        self.snapshot.seq
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::aggregate::Point;

    pub(crate) fn frame(seq: i64) -> Arc<SnapshotFrame> {
        let figures = Figures {
            active_users: 3,
            orders_per_minute: 2,
            revenue_today_minor: 1999,
            revenue_last_hour_minor: 500,
            point: Point {
                minute: 1_795_428_900_000,
                orders: 2,
                revenue_minor: 500,
                active_users: 3,
            },
        };
        let ingest = IngestView {
            state: IngestState::Running,
            leader: Some("web-1".into()),
            lag_seconds: 0.04,
            dead_letters: 0,
            reason: None,
        };
        let context = SnapshotContext {
            comparison: Comparison {
                yesterday: Some(Compared {
                    active_users: 2,
                    orders_per_minute: 1,
                    revenue_today_minor: Some(1500),
                    revenue_last_hour_minor: Some(400),
                }),
                last_week: None,
            },
            trust: Trust {
                late_events_today: 1,
                revised_minutes: vec![1_795_428_720_000],
            },
            complete_through: 1_795_428_929_980,
            queue_depth: 0,
        };
        SnapshotFrame::new(
            Snapshot::new(
                seq,
                1_795_428_930_250,
                "web-1",
                &figures,
                "USD",
                ingest,
                &context,
            ),
            None,
        )
    }

    #[test]
    fn an_ingest_state_names_itself_as_it_serializes() {
        use IngestState::*;
        for state in [Running, Paused, Disconnected, Demo] {
            assert_eq!(serde_json::to_value(state).expect("json"), state.as_str());
        }
    }

    #[test]
    fn snapshot_json_has_the_spec_shape() {
        let json: serde_json::Value = serde_json::from_str(&frame(1042).json).expect("json");
        assert_eq!(json["seq"], 1042);
        assert_eq!(json["generated_at"], "2026-11-23T10:15:30.250Z");
        assert_eq!(json["revenue"]["currency"], "USD");
        assert_eq!(json["revenue"]["today_minor"], 1999);
        assert_eq!(json["ingest"]["state"], "running");
        assert_eq!(json["ingest"]["leader"], "web-1");
        // Only a disconnected ingest says why.
        assert!(json["ingest"].get("reason").is_none(), "{json}");
        assert_eq!(json["point"]["minute"], "2026-11-23T10:15:00Z");
        assert_eq!(json["point"]["active_users"], 3);
        assert_eq!(json["compare"]["yesterday"]["active_users"], 2);
        assert_eq!(json["compare"]["yesterday"]["orders_per_minute"], 1);
        assert_eq!(json["compare"]["yesterday"]["revenue_today_minor"], 1500);
        assert_eq!(json["compare"]["yesterday"]["revenue_last_hour_minor"], 400);
        assert!(json["compare"]["last_week"].is_null(), "{json}");
        assert_eq!(
            json["trust"]["complete_through"],
            "2026-11-23T10:15:29.980Z"
        );
        assert_eq!(json["trust"]["queue_depth"], 0);
        assert_eq!(json["trust"]["late_events_today"], 1);
        assert_eq!(
            json["trust"]["revised_minutes"],
            serde_json::json!(["2026-11-23T10:12:00Z"])
        );
    }

    #[test]
    fn a_snapshot_of_an_older_leader_without_compare_or_trust_is_read() {
        let mut json: serde_json::Value = serde_json::from_str(&frame(7).json).expect("json");
        let object = json.as_object_mut().expect("object");
        object.remove("compare");
        object.remove("trust");
        let snapshot: Snapshot = serde_json::from_value(json).expect("an older snapshot");
        assert_eq!(snapshot.compare, CompareView::default());
    }

    #[test]
    fn the_hub_never_goes_back_in_seq() {
        let hub = Hub::new(3);
        assert!(hub.publish(frame(5)));
        assert!(!hub.publish(frame(4)));
        assert!(!hub.publish(frame(5)));
        assert!(hub.publish(frame(6)));
        let latest = hub.latest().expect("published");
        assert_eq!(latest.frame.seq(), 6);
        assert_eq!(latest.index, 2);
        assert_eq!(latest.id.to_string(), "3-6");
        let sse = std::str::from_utf8(&latest.sse).expect("utf-8");
        assert!(
            sse.starts_with("id: 3-6\nevent: snapshot\ndata: {\"seq\":6,"),
            "{sse}"
        );
        assert!(sse.ends_with("}\n\n"), "{sse}");
    }
}
