//! The bound on sums: before an event joins a batch, [`Aggregator::admit`] checks that every
//! sum it will add to (its minute, its day, the trailing hour) stays representable, counting the
//! events admitted but not yet committed ([`InFlight`]). An event that would overflow one is
//! refused ([`Overflow`]) instead of wrapping a figure or turning a database column into a
//! floating-point number. An amount is at most
//! [`MAX_AMOUNT_MINOR`](super::MAX_AMOUNT_MINOR) (docs/api.md, Events). Pure like the rest of
//! `aggregate`; it reads the sums and changes only the room reserved.

use super::{local_date, minute_of, Aggregator, Event, EventKind, Millis};
use chrono::NaiveDate;

/// An event refused because a sum it would add to could no longer be represented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "adding {amount_minor} to {figure} would overflow: it holds {sum_minor}, and events not yet \
     committed may add {in_flight_minor}"
)]
pub struct Overflow {
    pub figure: Figure,
    pub sum_minor: i64,
    pub amount_minor: i64,
    pub in_flight_minor: i64,
}

/// A sum that [`Aggregator::admit`] keeps from overflowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// Net revenue of a local day.
    Day(NaiveDate),
    /// Net revenue of the minute starting at this instant.
    Minute(Millis),
    /// Any sum over the seconds of the trailing hour (bounded by their gross).
    LastHour,
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Figure::Day(day) => write!(f, "the revenue of {day}"),
            Figure::Minute(minute) => match chrono::DateTime::from_timestamp_millis(*minute) {
                Some(start) => write!(
                    f,
                    "the revenue of the minute {}",
                    start.format("%Y-%m-%dT%H:%MZ")
                ),
                None => write!(f, "the revenue of the minute at {minute} ms"),
            },
            Figure::LastHour => f.write_str("the revenue of the last hour"),
        }
    }
}

impl Aggregator {
    /// Reserves room for `event` in every sum it will add to if it turns out new: its minute,
    /// its day and the trailing hour, on top of what earlier admitted events may still add.
    /// Each admitted event must later be [`apply`](Self::apply)'d or
    /// [`release`](Self::release)'d.
    pub(crate) fn admit(&mut self, event: &Event) -> Result<(), Overflow> {
        let amount_minor = event.kind.amount_minor();
        if amount_minor == 0 {
            return Ok(());
        }
        let mut in_flight = self.in_flight;
        in_flight.add(&event.kind);
        let day = local_date(event.occurred_at, self.settings.timezone);
        let minute = minute_of(event.occurred_at);
        let day_sum = self.days.get(&day).copied().unwrap_or(0);
        let minute_sum = self.minutes.get(&minute).map_or(0, |t| t.revenue_minor);
        let refused = |figure, sum_minor| Overflow {
            figure,
            sum_minor,
            amount_minor,
            in_flight_minor: self.in_flight.gross(),
        };
        if !in_flight.fits_net(day_sum) {
            return Err(refused(Figure::Day(day), day_sum));
        }
        if !in_flight.fits_net(minute_sum) {
            return Err(refused(Figure::Minute(minute), minute_sum));
        }
        if !in_flight.fits_gross(self.seconds_gross_minor) {
            return Err(refused(Figure::LastHour, self.seconds_gross_minor));
        }
        self.in_flight = in_flight;
        Ok(())
    }

    /// Gives back the room [`admit`](Self::admit) reserved for `events`, once they are
    /// applied or dropped.
    pub(crate) fn release<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) {
        for event in events {
            self.in_flight.remove(&event.kind);
        }
    }
}

/// Orders and refunds admitted but not yet applied: any sum may still gain all of the first
/// and lose all of the second.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct InFlight {
    placed_minor: i64,
    refunded_minor: i64,
}

impl InFlight {
    fn add(&mut self, kind: &EventKind) {
        match kind {
            EventKind::OrderPlaced { amount_minor } => {
                self.placed_minor = self.placed_minor.saturating_add(*amount_minor)
            }
            EventKind::OrderRefunded { amount_minor } => {
                self.refunded_minor = self.refunded_minor.saturating_add(*amount_minor)
            }
            _ => {}
        }
    }

    fn remove(&mut self, kind: &EventKind) {
        match kind {
            EventKind::OrderPlaced { amount_minor } => {
                self.placed_minor = self.placed_minor.saturating_sub(*amount_minor).max(0)
            }
            EventKind::OrderRefunded { amount_minor } => {
                self.refunded_minor = self.refunded_minor.saturating_sub(*amount_minor).max(0)
            }
            _ => {}
        }
    }

    /// A net sum holding `sum` stays an `i64` whatever part of these lands in it. A saturated
    /// total is treated as overflowing.
    fn fits_net(&self, sum: i64) -> bool {
        self.placed_minor < i64::MAX
            && self.refunded_minor < i64::MAX
            && sum.checked_add(self.placed_minor).is_some()
            && sum.checked_sub(self.refunded_minor).is_some()
    }

    /// A gross sum holding `gross` stays an `i64` with all of these added.
    fn fits_gross(&self, gross: i64) -> bool {
        gross
            .checked_add(self.placed_minor)
            .and_then(|g| g.checked_add(self.refunded_minor))
            .is_some()
    }

    fn gross(&self) -> i64 {
        self.placed_minor.saturating_add(self.refunded_minor)
    }
}
