//! The bare `INSERT` the store and ingest benchmarks compare the service with: only what any
//! durable consumer of these rows must pay. (What the benchmarks share with the tests, the
//! service, databases, names and CPU accounting, is the kit in `tests/kit`.)

use pulseboard::aggregate::Event;
use pulseboard::config::Backend;
use pulseboard::for_benchmarks::{applied_event_columns, SQLITE_PRAGMAS};
use pulseboard::store::{event_id_key, Store};
use sqlx::{AnyPool, Executor};

/// `applied_events` of a database migrated by the store, written with nothing but an INSERT.
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

    /// The columns the store writes: SQLite's rows lead with the id's key (its index holds that).
    fn columns(&self) -> &'static [&'static str] {
        applied_event_columns(self.backend)
    }

    /// The rows, in one transaction committed as the store commits.
    pub async fn insert(&self, events: &[Event], now: i64) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for chunk in events.chunks(1_000) {
            let sql = format!(
                "INSERT INTO applied_events \
                 ({}) VALUES {}",
                self.columns().join(", "),
                placeholders(chunk.len(), self.columns().len(), self.backend)
            );
            let mut query = sqlx::query(&sql);
            for event in chunk {
                if self.backend == Backend::Sqlite {
                    query = query.bind(event_id_key(&event.id));
                }
                query = query
                    .bind(event.id.as_str())
                    .bind(event.kind.label())
                    .bind(event.user_id.as_str())
                    .bind(event.occurred_at)
                    .bind(event.kind.amount_minor())
                    .bind(now);
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
