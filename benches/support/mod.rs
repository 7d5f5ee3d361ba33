//! The bare `INSERT` the store and ingest benchmarks compare the service with: only what any
//! durable consumer of these rows must pay. (What the benchmarks share with the tests, the
//! service, databases, names and CPU accounting, is the kit in `tests/kit`.)

use pulseboard::aggregate::{Event, EventKind};
use pulseboard::config::Backend;
use pulseboard::for_benchmarks::{signed_minor, POSTGRES_SESSION, SQLITE_PRAGMAS};
use pulseboard::store::{order_digest, Store};
use sqlx::{AnyPool, Executor};
use std::collections::BTreeMap;

/// The rows the store keeps for a batch, in a database it migrated, written with nothing but
/// plain statements: an `order_ids` row per order and refund (one multi-row `INSERT`), and one
/// `user_presence` row per user with an event in the batch (one multi-row upsert that takes the
/// batch's latest time as it is; the store's keeps the later of the stored and the new).
#[derive(Clone)]
pub struct BareTable {
    pub pool: AnyPool,
    backend: Backend,
}

impl BareTable {
    pub async fn open(url: &str) -> anyhow::Result<BareTable> {
        let store = Store::connect(&url.parse().map_err(anyhow::Error::msg)?).await?;
        store.migrate().await?;
        store.close().await;
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    // The store's own settings: the baseline must be as durable.
                    match backend {
                        Backend::Sqlite => connection.execute(SQLITE_PRAGMAS).await?,
                        Backend::Postgres => connection.execute(POSTGRES_SESSION).await?,
                    };
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(BareTable { pool, backend })
    }

    /// The rows, in one transaction committed as the store commits.
    pub async fn insert(&self, events: &[Event], now: i64) -> anyhow::Result<()> {
        let rows: Vec<(i64, i64, i64, i64)> = events
            .iter()
            .filter_map(|event| {
                let (hi, lo) = order_digest(&event.id);
                signed_minor(&event.kind).map(|signed| (hi, lo, event.occurred_at, signed))
            })
            .collect();
        // Each user's latest activity and sign-out in the batch.
        let mut users: BTreeMap<&str, (Option<i64>, Option<i64>)> = BTreeMap::new();
        for event in events {
            let seen = users.entry(event.user_id.as_str()).or_default();
            let slot = match event.kind {
                EventKind::UserSignedOut => &mut seen.1,
                _ => &mut seen.0,
            };
            *slot = (*slot).max(Some(event.occurred_at));
        }
        let users: Vec<_> = users.into_iter().collect();
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(180) {
            let sql = format!(
                "INSERT INTO order_ids (bucket, hi, lo, occurred_at, signed_minor) VALUES {}",
                placeholders(chunk.len(), 5, self.backend)
            );
            let mut query = sqlx::query(&sql);
            for &(hi, lo, occurred_at, signed) in chunk {
                query = query
                    .bind(now - now % 3_600_000)
                    .bind(hi)
                    .bind(lo)
                    .bind(occurred_at)
                    .bind(signed);
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in users.chunks(300) {
            let sql = format!(
                "INSERT INTO user_presence (user_id, last_active, last_signed_out) VALUES {} \
                 ON CONFLICT (user_id) DO UPDATE SET last_active = excluded.last_active, \
                 last_signed_out = excluded.last_signed_out",
                placeholders(chunk.len(), 3, self.backend)
            );
            let mut query = sqlx::query(&sql);
            for &(user, (active, signed_out)) in chunk {
                query = query.bind(user).bind(active).bind(signed_out);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn placeholders(rows: usize, width: usize, backend: Backend) -> String {
    (0..rows)
        .map(|row| {
            let values: Vec<String> = (1..=width)
                .map(|column| match backend {
                    Backend::Sqlite => "?".to_owned(),
                    Backend::Postgres => format!("${}", row * width + column),
                })
                .collect();
            format!("({})", values.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
