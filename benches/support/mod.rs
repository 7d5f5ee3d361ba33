//! The bare `INSERT` the store and ingest benchmarks compare the service with: only what any
//! durable consumer of these rows must pay. (What the benchmarks share with the tests, the
//! service, databases, names and CPU accounting, is the kit in `tests/kit`.)

use pulseboard::aggregate::Event;
use pulseboard::config::Backend;
use pulseboard::for_benchmarks::{signed_minor, SQLITE_PRAGMAS};
use pulseboard::store::{order_digest, Store};
use sqlx::{AnyPool, Executor};

/// `order_ids` of a database migrated by the store, written with nothing but an INSERT: the
/// rows of the batch's orders and refunds (user events leave no row of their own).
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
                    if backend == Backend::Sqlite {
                        connection.execute(SQLITE_PRAGMAS).await?;
                    }
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
