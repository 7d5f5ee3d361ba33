//! The schema: applying the migrations, refusing to lead on a database whose schema is not
//! this version's, and refusing one whose figures are not whole numbers.

use super::error::schema_error;
use super::{Store, StoreError};
use crate::config::{Backend, DatabaseUrl};
use sqlx::Row;

/// Tables of figures, their key column and their figure columns: what
/// [`Store::check_figures`] inspects.
const FIGURE_TABLES: [(&str, &str, &[&str]); 2] = [
    (
        "minute_stats",
        "minute",
        &["orders", "revenue_minor", "active_users"],
    ),
    ("daily_revenue", "day", &["revenue_minor"]),
];

impl Store {
    /// Connects and applies the migrations: what the one-shot commands (`migrate`, `users`,
    /// `tokens`) do before anything else.
    pub async fn open_migrated(database: &DatabaseUrl) -> Result<Store, StoreError> {
        let store = Store::connect(database).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = self.migrator();
        migrator.run(&self.writer).await.map_err(schema_error)?;
        match self.backend {
            Backend::Sqlite => {
                self.digest_staged_orders().await?;
                self.check_figures().await?;
            }
            Backend::Postgres => self.check_figure_columns().await?,
        }
        Ok(())
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        }
    }

    /// Refuses to lead on a database whose schema is not this version's: one that misses a
    /// migration this version has (restored from an older backup, or never migrated by this
    /// version), or holds one it does not know (migrated by a newer version). A new leader
    /// asks before it rebuilds: the figures it would compute and write there would be wrong.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.reader)
        .await?;
        let migrator = self.migrator();
        let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        if let Some(unknown) = applied.iter().find(|v| !known.contains(v)) {
            return Err(StoreError::NewerSchema { version: *unknown });
        }
        if let Some(missing) = known.iter().find(|v| !applied.contains(v)) {
            return Err(StoreError::OlderSchema { version: *missing });
        }
        Ok(())
    }

    /// Refuses a PostgreSQL database where a figure column is no longer BIGINT (altered by
    /// hand, or restored from another schema): such a column may hold fractions, and no
    /// reader decodes it as a whole number. The PostgreSQL side of [`Store::check_figures`].
    async fn check_figure_columns(&self) -> Result<(), StoreError> {
        for (table, _, columns) in FIGURE_TABLES {
            for &column in columns {
                // The table as the service's own unqualified queries find it.
                let found: Option<String> = sqlx::query_scalar(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = $1::text::regclass AND attname = $2 AND NOT attisdropped",
                )
                .bind(table)
                .bind(column)
                .fetch_optional(&self.reader)
                .await?;
                match found {
                    Some(found) if found == "bigint" => {}
                    found => {
                        return Err(StoreError::FigureColumnType {
                            table,
                            column,
                            found: found.unwrap_or_else(|| "missing".to_owned()),
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Refuses a SQLite database where a figure is not an integer: an earlier version let a
    /// sum that overflowed become a floating-point number there, which no reader can decode.
    /// Found at start, it is one clear message instead of a leader failing its every term.
    /// PostgreSQL's BIGINT columns cannot hold such a value ([`Store::check_figure_columns`]).
    async fn check_figures(&self) -> Result<(), StoreError> {
        for (table, key_column, columns) in FIGURE_TABLES {
            let not_integer = columns
                .iter()
                .map(|column| format!("typeof({column}) <> 'integer'"))
                .collect::<Vec<_>>()
                .join(" OR ");
            let row = sqlx::query(&format!(
                "SELECT COUNT(*), CAST(MIN({key_column}) AS TEXT) FROM {table} WHERE {not_integer}"
            ))
            .fetch_one(&self.reader)
            .await?;
            let rows: i64 = row.try_get(0)?;
            if rows > 0 {
                return Err(StoreError::NonIntegerFigures {
                    table,
                    key_column,
                    rows,
                    first_key: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                });
            }
        }
        Ok(())
    }
}
