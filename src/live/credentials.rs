//! The credential watch (docs/security.md, Revocation): this instance's table of every user's
//! credential epoch and role ([`KnownUsers`]), read from the database every [`REFRESH_EVERY`] by
//! one task, which then ends the registered connections whose credential is no longer good
//! (reason `revoked` or `expired`). Users are changed by `pulseboard users …`, and kiosk links by
//! `pulseboard tokens …`, separate processes that only write the database: reading it is how
//! every instance learns of a change. Kiosk links are in the same table, under their holder
//! names (`auth::kiosk::holder`) with role `kiosk`, so that one sweep ends both.
//!
//! Whether a credential is good is decided by `auth::grant::judge` alone; what differs is where
//! the user's current state comes from: the table, for a new request with a token (no database
//! round trip, so tokens keep working through a database outage, on the last table read); the
//! database itself before a console command, so that a command sent in the second before the
//! table learns of a change is refused too (the table again when the database fails).

use super::connection::Registry;
use crate::auth::grant::{judge, Grant, GrantKind, KnownUsers, UserState, Verdict};
use crate::auth::Role;
use crate::clock::now_ms;
use crate::store::{Store, StoreError};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the table is read again (and every open connection judged).
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The table and what keeps it current. Shared as an `Arc`.
pub(crate) struct CredentialWatch {
    store: Store,
    registry: Registry,
    /// Replaced whole at each read; readers clone the `Arc` and judge without the lock.
    known: RwLock<Arc<KnownUsers>>,
}

impl CredentialWatch {
    /// Reads the table once: an instance does not serve before it knows its users.
    pub(crate) async fn load(
        store: Store,
        registry: Registry,
    ) -> Result<CredentialWatch, StoreError> {
        let known = read_users(&store).await?;
        Ok(CredentialWatch {
            store,
            registry,
            known: RwLock::new(Arc::new(known)),
        })
    }

    fn known(&self) -> Arc<KnownUsers> {
        // Replaced whole under the lock, never left half-written.
        crate::sync::read(&self.known).clone()
    }

    /// A new request's credential: judged by the table, and by the database only when the table
    /// refuses a credential made after it was read (a user added or a password changed, and a
    /// token issued, within the last second); the table's verdict when the database fails.
    pub(crate) async fn check(&self, grant: &Grant) -> Verdict {
        let known = self.known();
        let verdict = known.judge(grant, now_ms());
        if verdict != Verdict::Revoked || !known.may_predate(grant) {
            return verdict;
        }
        self.judged_by_store(grant).await.unwrap_or(verdict)
    }

    /// A credential judged by what the database says now (a console command's, before it
    /// runs); the table's verdict when the database fails.
    pub(crate) async fn check_fresh(&self, grant: &Grant) -> Verdict {
        match self.judged_by_store(grant).await {
            Some(verdict) => verdict,
            None => self.judge(grant),
        }
    }

    /// The table's verdict alone: what a console's own loop checks, without waiting. A table
    /// read before the grant was made (a user added, a token issued, in the last moments)
    /// cannot revoke it: it may not know the user yet. The sweep after the next read judges
    /// such a grant by the database.
    pub(crate) fn judge(&self, grant: &Grant) -> Verdict {
        doubtful_as_good(&self.known(), grant, now_ms())
    }

    /// `None` when the database cannot say.
    async fn judged_by_store(&self, grant: &Grant) -> Option<Verdict> {
        let current = match &grant.kind {
            GrantKind::Token => self
                .store
                .user_credentials(&grant.user)
                .await
                .map(|user| user.map(|u| u.state)),
            // A revoked link's session has no row; a live one carries its link's epoch.
            GrantKind::Session { key } if grant.role == Role::Kiosk => self
                .store
                .kiosk_session(key, now_ms())
                .await
                .map(|row| row.map(|row| row.state())),
            // A signed-out session has no row; an existing one carries its user's state.
            GrantKind::Session { key } => self.store.session(key, now_ms()).await.map(|row| {
                row.map(|row| UserState {
                    epoch: row.epoch,
                    role: row.role,
                })
            }),
        };
        match current {
            Ok(current) => Some(judge(grant, current.as_ref(), now_ms())),
            Err(error) => {
                tracing::warn!(%error, "cannot check a credential against the database");
                None
            }
        }
    }

    /// Reads the table again and ends the connections it no longer finds good; on a database
    /// error the last table is kept (and still ends what has expired).
    async fn refresh(&self) -> Result<(), StoreError> {
        let read = read_users(&self.store).await.map(|known| {
            *crate::sync::write(&self.known) = Arc::new(known);
        });
        let known = self.known();
        let now = now_ms();
        // Grants the table would revoke but may predate are set aside, judged by the database,
        // then swept by that verdict alone.
        let doubtful = std::sync::Mutex::new(Vec::new());
        let mut ended = self.registry.sweep(|grant| {
            let verdict = known.judge(grant, now);
            if verdict == Verdict::Revoked && known.may_predate(grant) {
                crate::sync::lock(&doubtful).push(grant.clone());
                return Verdict::Good;
            }
            verdict
        });
        let doubtful = doubtful
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut decided: Vec<(Grant, Verdict)> = Vec::new();
        for grant in doubtful {
            if decided.iter().any(|(seen, _)| *seen == grant) {
                continue;
            }
            // The database failing cannot revoke either.
            let verdict = self.judged_by_store(&grant).await.unwrap_or(Verdict::Good);
            decided.push((grant, verdict));
        }
        if decided.iter().any(|(_, verdict)| *verdict != Verdict::Good) {
            ended.extend(self.registry.sweep(|grant| {
                decided
                    .iter()
                    .find(|(seen, _)| seen == grant)
                    .map_or(Verdict::Good, |(_, verdict)| *verdict)
            }));
        }
        for (user, why) in ended {
            tracing::info!(%user, reason = why.label(), "ended a connection: its credential is no longer good");
        }
        read
    }

    /// Runs until `shutdown`: a read every [`REFRESH_EVERY`]; a failing database is logged
    /// once when it starts failing and once when it answers again.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.refresh().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(
                        "the users table is read again: credentials are checked against it"
                    );
                }
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cannot read the users table: tokens are checked against the last one read");
                }
                _ => {}
            }
        }
    }
}

/// The table's verdict, but good where the table may predate the grant and would revoke it.
fn doubtful_as_good(known: &KnownUsers, grant: &Grant, now: i64) -> Verdict {
    match known.judge(grant, now) {
        Verdict::Revoked if known.may_predate(grant) => Verdict::Good,
        verdict => verdict,
    }
}

async fn read_users(store: &Store) -> Result<KnownUsers, StoreError> {
    let read_at = now_ms();
    let mut states = store.user_states().await?;
    states.extend(store.kiosk_states().await?);
    Ok(KnownUsers::new(states, read_at))
}
