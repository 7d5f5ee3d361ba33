//! The core: this instance's shared state, built once by `startup` and shared by `Arc` with
//! every transport (`http`, `console`) and task (`ingest`, `fanout`): the live hub, the
//! registry of live connections, the console feeds, what ingest and fan-out know (`status`),
//! the metrics, the queue to the other instances, and what this instance knows of them.
//!
//! The operations more than one of them perform are methods here, so each is written once:
//! asking the leader for a snapshot and waiting for it, recording a published snapshot in the
//! gauges, answering the other instances' questions, presence, publishing an announcement and
//! filling a hub's gaps from the store, recognising a resume id. Transport settings stay with
//! each transport (`app::AppState` for HTTP and the console), task settings with each task.
//! No transport, no broker, no SQL here.

pub(crate) mod outbox;

use crate::aggregate::{Millis, Offset};
use crate::auth::kiosk::LinkUse;
use crate::control::{Answer, Beacon, Cluster, NodeStatus, Present, Request};
use crate::live::connection::Registry;
use crate::live::credentials::CredentialWatch;
use crate::live::feeds::ConsoleFeeds;
use crate::live::hub::{EventId, PublishedSnapshot, REPLAY_WINDOW_MS};
use crate::live::{Announcement, Hub, Level, Snapshot};
use crate::metrics::Metrics;
use crate::status::StatusCell;
use crate::store::{Store, StoreError};
use outbox::FanoutSender;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// This instance's shared state (see the module header).
pub(crate) struct Core {
    /// This instance's name (`PULSEBOARD_NODE_ID`, or host:port).
    pub node: String,
    pub store: Store,
    pub hub: Hub,
    /// Every live connection of this instance registers here (listing, kicking, revocation).
    pub registry: Registry,
    /// The console's audit, event-tail and presence feeds.
    pub feeds: ConsoleFeeds,
    pub status: Arc<StatusCell>,
    pub metrics: Arc<Metrics>,
    /// What this instance tells the others (through `fanout`).
    pub fanout: FanoutSender,
    /// The users' credential epochs: whether a credential is still good.
    pub credentials: Arc<CredentialWatch>,
    /// The other instances, as their beacons and answers tell.
    pub cluster: Cluster,
    /// When this instance last wrote each kiosk link's "last used".
    pub kiosk_use: LinkUse,
    /// Asks this instance's leader loop for a snapshot at its next tick.
    refresh: mpsc::Sender<()>,
}

/// What `startup` hands [`Core::new`]; the rest the core makes itself.
pub(crate) struct CoreParts {
    pub node: String,
    pub store: Store,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub fanout: FanoutSender,
    pub refresh: mpsc::Sender<()>,
}

impl Core {
    /// The core, with the users' credential epochs loaded from the store.
    pub(crate) async fn new(parts: CoreParts) -> Result<Core, StoreError> {
        let registry = Registry::new(&parts.node, parts.hub.closing());
        let credentials = CredentialWatch::load(parts.store.clone(), registry.clone()).await?;
        Ok(Core {
            node: parts.node,
            store: parts.store,
            hub: parts.hub,
            registry,
            feeds: ConsoleFeeds::default(),
            status: Arc::new(StatusCell::default()),
            metrics: parts.metrics,
            fanout: parts.fanout,
            credentials: Arc::new(credentials),
            cluster: Cluster::default(),
            kiosk_use: LinkUse::default(),
            refresh: parts.refresh,
        })
    }

    /// Asks whichever instance leads for a snapshot at its next tick: this one directly, the
    /// others through the fan-out (its receivers pass it on only if they lead).
    pub(crate) fn ask_leader_for_snapshot(&self) {
        if self.status.get().ingest.is_leader {
            let _ = self.refresh.try_send(());
        } else {
            self.fanout.request_refresh();
        }
    }

    /// Passes a refresh asked for by another instance to this instance's leader loop, if it
    /// leads.
    pub(crate) fn refresh_if_leading(&self) {
        if self.status.get().ingest.is_leader {
            let _ = self.refresh.try_send(());
        }
    }

    /// Asks the leader for a snapshot and waits (at most one snapshot interval plus `grace`)
    /// until one newer than the current one reached this instance, so that every dashboard
    /// has it too; `None` when none came in time.
    pub(crate) async fn fresh_snapshot(
        &self,
        interval: Duration,
        grace: Duration,
    ) -> Option<Arc<PublishedSnapshot>> {
        let mut snapshots = self.hub.subscribe().snapshots;
        let before = snapshots
            .borrow_and_update()
            .as_ref()
            .map_or(0, |p| p.id.seq);
        self.ask_leader_for_snapshot();
        // The leader publishes at its next tick, then the snapshot travels here.
        tokio::time::timeout(interval + grace, async {
            loop {
                snapshots.changed().await.ok()?;
                let current = snapshots.borrow_and_update().clone();
                if let Some(published) = current.filter(|p| p.id.seq > before) {
                    return Some(published);
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Waits until the latest snapshot satisfies `wanted`, asking the leader for one first;
    /// `false` when none did within `within`.
    pub(crate) async fn snapshot_shows(
        &self,
        wanted: impl Fn(&Snapshot) -> bool,
        within: Duration,
    ) -> bool {
        let mut subscription = self.hub.subscribe();
        self.ask_leader_for_snapshot();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.hub.latest_frame().is_some_and(|f| wanted(&f.snapshot)) {
                return true;
            }
            match tokio::time::timeout_at(deadline, subscription.snapshots.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    /// The figures of a snapshot this instance made or received, in the gauges.
    pub(crate) fn record_snapshot(&self, snapshot: &Snapshot) {
        self.metrics.active_users.set(snapshot.active_users as i64);
        self.metrics
            .orders_per_minute
            .set(snapshot.orders_per_minute as i64);
        self.metrics
            .revenue_today_minor
            .set(snapshot.revenue.today_minor);
        // The baselines from the same numbers as the snapshot's `compare`; a label set is
        // absent while the history does not reach back (docs/api.md, Metrics).
        for offset in Offset::ALL {
            let label = [offset.label()];
            match snapshot.compare.get(offset) {
                Some(then) => {
                    self.metrics
                        .orders_per_minute_baseline
                        .with_label_values(&label)
                        .set(then.orders_per_minute as i64);
                    self.metrics
                        .active_users_baseline
                        .with_label_values(&label)
                        .set(then.active_users as i64);
                }
                None => {
                    let _ = self
                        .metrics
                        .orders_per_minute_baseline
                        .remove_label_values(&label);
                    let _ = self
                        .metrics
                        .active_users_baseline
                        .remove_label_values(&label);
                }
            }
        }
    }

    /// Asks every other instance heard from lately; returns their answers and the names of
    /// those that did not answer `within`.
    pub(crate) async fn ask_others(
        &self,
        within: Duration,
        request: Request,
    ) -> (Vec<(String, Answer)>, Vec<String>) {
        let mut waiting = self.cluster.other_nodes();
        if waiting.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let correlation = uuid::Uuid::new_v4().simple().to_string();
        let mut answers = self.cluster.expect(&correlation);
        let mut received = Vec::new();
        if self.fanout.send_request(correlation.clone(), request) {
            let deadline = tokio::time::Instant::now() + within;
            while !waiting.is_empty() {
                let Ok(Some((node, answer))) =
                    tokio::time::timeout_at(deadline, answers.recv()).await
                else {
                    break;
                };
                // This instance hears its own question too; it answered locally already.
                if let Some(at) = waiting.iter().position(|n| *n == node) {
                    waiting.remove(at);
                    received.push((node, answer));
                }
            }
        }
        self.cluster.forget(&correlation);
        (received, waiting)
    }

    /// Revokes kiosk link `name` (the console's `tokens.revoke`): deletes it and its sessions,
    /// ends their connections here at once and tells the other instances, as a sign-out does
    /// (each ends them on the fan-out's message, or at its next read of the credential epochs
    /// within a second when the message is lost: the only way `pulseboard tokens revoke`, which
    /// only writes the database, reaches them). `None` when there is no such link; otherwise
    /// how many connections ended here.
    pub(crate) async fn revoke_kiosk_link(&self, name: &str) -> Result<Option<usize>, StoreError> {
        let Some(sessions) = self.store.revoke_kiosk_link(name).await? else {
            return Ok(None);
        };
        let mut ended = 0;
        for key in &sessions {
            ended += self.registry.end_session(key);
            self.fanout.send_sign_out(key);
        }
        tracing::info!(link = %name, sessions = sessions.len(), ended, "revoked a kiosk link");
        Ok(Some(ended))
    }

    /// Stores an announcement, delivers it on this instance and tells the others: the one
    /// code path of `POST /api/announcements` and the console's `announce`.
    pub(crate) async fn publish_announcement(
        &self,
        level: Level,
        message: &str,
        author: &str,
        now: Millis,
    ) -> Result<Announcement, StoreError> {
        let announcement: Announcement = self
            .store
            .create_announcement(level.as_str(), message, author, now)
            .await?
            .into();
        self.announce(announcement.clone()).await?;
        self.fanout.send_announcement(announcement.clone());
        Ok(announcement)
    }

    /// Delivers an announcement on this instance, in id order: one already delivered is
    /// ignored; a gap (one this instance missed) is filled from the store first.
    pub(crate) async fn announce(&self, announcement: Announcement) -> Result<(), StoreError> {
        let last = self.hub.last_announcement();
        if announcement.id <= last {
            return Ok(());
        }
        if announcement.id > last + 1 {
            return self.catch_up_announcements().await;
        }
        self.hub.deliver(announcement);
        Ok(())
    }

    /// Delivers, in order, every stored announcement the hub has not delivered yet.
    pub(crate) async fn catch_up_announcements(&self) -> Result<(), StoreError> {
        let since = crate::clock::now_ms() - REPLAY_WINDOW_MS;
        let missed = self
            .store
            .announcements_after(self.hub.last_announcement(), since, 1_000)
            .await?;
        for stored in missed {
            self.hub.deliver(stored.into());
        }
        Ok(())
    }

    /// `id` if the service has been there; `None` for an id from the future (a database
    /// restored from a backup, a made-up id), which the caller treats as unknown: a full replay
    /// of what is kept, then the current snapshot, as for a new client. Waiting for the
    /// service to reach such an id would silence the client for good.
    ///
    /// The store is asked only when the hub has not reached the id itself: another instance
    /// may be an announcement or a snapshot ahead, and what the store holds (announcements,
    /// seqs reserved by a leader) is what every instance will reach.
    pub(crate) async fn recognise(&self, id: EventId) -> Result<Option<EventId>, StoreError> {
        let (announcement_reached, seq_reached) = self.hub.has_reached(id);
        let announcement_known =
            announcement_reached || id.announcement <= self.store.last_announcement_id().await?;
        if !announcement_known {
            return Ok(None);
        }
        let seq_known = seq_reached || id.seq <= self.store.reserved_seq().await?;
        Ok(seq_known.then_some(id))
    }

    /// What `status` shows of this instance.
    pub(crate) fn report(&self) -> NodeStatus {
        let status = self.status.get();
        let connections = crate::metrics::TRANSPORTS
            .iter()
            .map(|t| {
                let open = self.metrics.connections.with_label_values(&[*t]).get();
                ((*t).to_owned(), open)
            })
            .collect();
        let ingest = self
            .hub
            .latest_frame()
            .map(|f| f.snapshot.ingest.state.as_str().to_owned());
        NodeStatus {
            node: self.node.clone(),
            state: "ok".into(),
            is_leader: status.ingest.is_leader,
            leader: status.ingest.leader,
            ingest,
            queue_depth: status.fanout.queue_depth,
            dead_letters: status.fanout.dead_letters,
            connections,
        }
    }

    /// This instance's answer to a question every instance answers.
    pub(crate) fn answer(&self, request: &Request) -> Answer {
        match request {
            Request::Status => Answer::Status(self.report()),
            Request::Connections => Answer::Connections {
                connections: self.registry.list(),
            },
            Request::Kick { id } => Answer::Kick {
                kicked: self.registry.kick(id),
            },
        }
    }

    /// "I am here, and these operators have a console open on me."
    pub(crate) fn beacon(&self) -> Beacon {
        Beacon {
            node: self.node.clone(),
            operators: self.registry.operators(),
            leaving: false,
        }
    }

    /// Records another instance's beacon; pushes presence to the consoles when it changed.
    pub(crate) fn saw(&self, beacon: Beacon) {
        if beacon.node != self.node {
            self.cluster.saw(beacon);
            self.refresh_presence();
        }
    }

    /// Every operator with a console open here or on an instance heard from lately.
    pub(crate) fn presence(&self) -> Vec<Present> {
        let mut present: Vec<Present> = self
            .registry
            .operators()
            .into_iter()
            .map(|user| Present {
                user,
                node: self.node.clone(),
            })
            .collect();
        present.extend(self.cluster.present_elsewhere());
        present.sort();
        present
    }

    /// Pushes presence to this instance's consoles if it changed.
    pub(crate) fn refresh_presence(&self) {
        let payload = serde_json::json!({ "operators": self.presence() }).to_string();
        self.feeds.presence.send_if_modified(|current| {
            if **current == *payload {
                false
            } else {
                *current = Arc::from(payload.as_str());
                true
            }
        });
    }
}

/// A core over `store` with nothing listening to its queues, for unit tests.
#[cfg(test)]
pub(crate) async fn for_tests(node: &str, store: Store) -> Core {
    let (fanout, _) = FanoutSender::channel();
    let (refresh, _) = mpsc::channel(1);
    Core::new(CoreParts {
        node: node.into(),
        store,
        hub: Hub::new(0),
        metrics: Arc::new(Metrics::new(node).expect("metrics")),
        fanout,
        refresh,
    })
    .await
    .expect("core")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn core() -> Core {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let url: crate::config::DatabaseUrl =
            format!("sqlite:file:{name}?mode=memory&cache=shared")
                .parse()
                .expect("a SQLite URL");
        let store = Store::connect(&url).await.expect("store");
        store.migrate().await.expect("migrate");
        for_tests("a", store).await
    }
    #[tokio::test]
    async fn beacons_make_nodes_known_and_operators_present_until_they_leave() {
        let core = core().await;
        let mut presence = core.feeds.presence.subscribe();
        core.saw(Beacon {
            node: "b".into(),
            operators: vec!["ops".into()],
            leaving: false,
        });
        assert_eq!(core.cluster.other_nodes(), vec!["b".to_owned()]);
        assert!(presence.has_changed().unwrap_or(false));
        assert!(presence.borrow_and_update().contains(r#""user":"ops""#));
        core.saw(Beacon {
            node: "b".into(),
            operators: vec![],
            leaving: true,
        });
        assert!(core.cluster.other_nodes().is_empty());
        assert!(core.presence().is_empty());
    }

    #[tokio::test]
    async fn its_own_beacon_does_not_make_an_instance_another() {
        let core = core().await;
        core.saw(core.beacon());
        assert!(core.cluster.other_nodes().is_empty());
    }

    #[tokio::test]
    async fn answers_keep_their_wire_shape() {
        let core = core().await;
        let answer = core.answer(&Request::Status);
        let text = serde_json::to_string(&answer).expect("json");
        assert_eq!(serde_json::from_str::<Answer>(&text).expect("back"), answer);
    }
}
