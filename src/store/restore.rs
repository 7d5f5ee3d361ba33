//! What a new leader rebuilds its figures from: the users seen within the trailing windows,
//! the orders of the last hour, and the minute and day sums an acceptable event can still
//! fall into. Reads only.

use super::{batch, Store, StoreError};
use crate::aggregate::{
    minute_of, Aggregator, EventKind, Millis, RestoreInput, StoredPresence, Tally, MAX_FUTURE_MS,
    MINUTE_MS,
};
use chrono::NaiveDate;
use chrono_tz::Tz;
use sqlx::Row;

impl Store {
    /// Everything a new leader needs to rebuild the live figures at `now`.
    pub async fn load_restore(
        &self,
        now: Millis,
        horizon_ms: Millis,
        timezone: Tz,
    ) -> Result<RestoreInput, StoreError> {
        let since = now - horizon_ms;
        let users = sqlx::query(
            "SELECT user_id, last_active, last_signed_out, active_id, signed_out_id \
             FROM user_presence WHERE last_active > $1 OR last_signed_out > $1",
        )
        .bind(since)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|row| {
            Ok(StoredPresence {
                user_id: row.try_get(0)?,
                last_active: row.try_get(1)?,
                last_signed_out: row.try_get(2)?,
                active_id: row.try_get(3)?,
                signed_out_id: row.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let recent_orders = self.orders_since(since).await?;

        // Every minute and day an event still acceptable at `now` can fall into: the
        // aggregator checks each new event against these sums before it is committed.
        let sums_since = Aggregator::sums_since(now);
        let first_day = crate::aggregate::local_date(sums_since, timezone);
        let mut days = Vec::new();
        let mut late_events = Vec::new();
        let rows = sqlx::query(
            "SELECT day, revenue_minor, late_events FROM daily_revenue WHERE day >= $1",
        )
        .bind(first_day.to_string())
        .fetch_all(&self.reader)
        .await?;
        for row in &rows {
            let day: String = row.try_get(0)?;
            let day = day
                .parse::<NaiveDate>()
                .map_err(|e| StoreError::Corrupt(format!("day {day:?}: {e}")))?;
            days.push((day, row.try_get::<i64, _>(1)?));
            let late = row.try_get::<i64, _>(2)?;
            if late > 0 {
                late_events.push((day, u64::try_from(late).unwrap_or(0)));
            }
        }
        let revised_minutes = sqlx::query_scalar(
            "SELECT minute FROM minute_stats WHERE minute >= $1 AND revised <> 0 ORDER BY minute",
        )
        .bind(Aggregator::revised_since(now))
        .fetch_all(&self.reader)
        .await?;

        let minutes = sqlx::query(
            "SELECT minute, orders, revenue_minor FROM minute_stats WHERE minute >= $1",
        )
        .bind(minute_of(sums_since))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get::<i64, _>(0)?,
                Tally {
                    orders: row.try_get(1)?,
                    revenue_minor: row.try_get(2)?,
                },
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;

        Ok(RestoreInput {
            users,
            recent_orders,
            days,
            minutes,
            late_events,
            revised_minutes,
        })
    }

    /// The orders and refunds that occurred after `since`, from the buckets they can be in:
    /// an event that occurred then was applied at most 5 minutes before (it may come from the
    /// future), so only the buckets ending after that are read (a bucket is a sixth of the
    /// dedupe window: the last hour and at most 4 h 10 min beyond it by default).
    async fn orders_since(&self, since: Millis) -> Result<Vec<(Millis, EventKind)>, StoreError> {
        let buckets: Vec<i64> =
            sqlx::query_scalar("SELECT bucket FROM order_id_buckets WHERE ends_at > $1")
                .bind(since - MAX_FUTURE_MS - MINUTE_MS)
                .fetch_all(&self.reader)
                .await?;
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let list = buckets
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        // The bucket numbers are the store's own integers: written into the text, they make
        // one statement for both backends.
        let rows = sqlx::query(&format!(
            "SELECT occurred_at, signed_minor FROM order_ids \
             WHERE bucket IN ({list}) AND occurred_at > $1"
        ))
        .bind(since)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>(0)?,
                    batch::kind_of_signed(row.try_get(1)?),
                ))
            })
            .collect()
    }
}
