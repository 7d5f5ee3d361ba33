//! Comparisons with the same wall-clock time yesterday and last week (docs/api.md, Snapshot:
//! `compare`), from the per-minute history: pure, like the rest of `aggregate`.
//!
//! "The same time one day earlier" is wall-clock time in `PULSEBOARD_TIMEZONE`, not 24 hours:
//! across a daylight-saving change the two instants are 23 or 25 hours apart
//! ([`same_time_earlier`]). History has one point per minute; a figure of the past is taken as
//! it stood at the start of the minute that corresponds to the current one (its *instant*,
//! `E`), plus the part of the compared minute `[E, E+1m)` that corresponds to the seconds
//! elapsed in the current one (`s`/60 of that minute's figure, whole seconds): today's figures
//! include the current partial minute, and cutting the comparison at `E` would favour today by
//! up to 59 s. So revenue today is that day's revenue from its local midnight to `E` plus `s`/60
//! of minute `E`'s; revenue of the last hour is the 60 minutes before `E`, less `s`/60 of the
//! first of them, plus `s`/60 of minute `E`'s; orders per minute is the minute before `E`'s
//! orders and minute `E`'s weighed `(60 - s)` to `s` (today's is a trailing 60 s); active users
//! are those at the end of the minute before `E`. [`Bases`] holds what is known at `E`,
//! computed once a minute, and [`Bases::at`] interpolates for each snapshot.
//!
//! [`Baselines`] holds the minutes these sums need, so that a snapshot never asks the
//! database: the leader loads them once and, as minutes close, only the minutes it lacks
//! ([`Baselines::missing`]). History may have holes of a minute or two (a restart skipped
//! closing a minute): a point missing where a figure needs one is taken from the nearest stored
//! point within [`NEAREST_MINUTES`] minutes. A comparison is `None` when no point is stored that
//! near the minute ending at `E` (the service was not running then); revenue today is `None`
//! unless the history reaches back to that day's midnight, and revenue of the last hour unless
//! it reaches back to `E` minus an hour (a stored point within [`NEAREST_MINUTES`] of either):
//! a sum over part of the window is not that day's figure.

use super::{local_date, minute_of, Millis, Point, MINUTE_MS};
use chrono::{Days, LocalResult, NaiveDateTime, TimeZone};
use chrono_tz::Tz;
use std::collections::BTreeMap;

const HOUR_MS: Millis = 60 * MINUTE_MS;
/// How far from a missing minute the nearest stored point may be taken instead, and how near the
/// start of a sum the history must begin for the sum to count (see the module header).
pub(crate) const NEAREST_MINUTES: i64 = 5;
const NEAREST_MS: Millis = NEAREST_MINUTES * MINUTE_MS;

/// How far back a comparison looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offset {
    /// The same time yesterday (`compare.yesterday`, `compare=1d`).
    Day,
    /// The same time seven days ago (`compare.last_week`, `compare=7d`).
    Week,
}

impl Offset {
    pub const ALL: [Offset; 2] = [Offset::Day, Offset::Week];

    pub fn days(self) -> u64 {
        match self {
            Offset::Day => 1,
            Offset::Week => 7,
        }
    }

    /// The wire name: the history API's `compare` and the metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Offset::Day => "1d",
            Offset::Week => "7d",
        }
    }

    pub fn from_label(label: &str) -> Option<Offset> {
        Offset::ALL.into_iter().find(|o| o.label() == label)
    }

    fn index(self) -> usize {
        match self {
            Offset::Day => 0,
            Offset::Week => 1,
        }
    }
}

/// The figures of one earlier moment, as a snapshot compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compared {
    pub active_users: u64,
    pub orders_per_minute: u64,
    /// `None` unless the history reaches back to that day's midnight.
    pub revenue_today_minor: Option<i64>,
    /// `None` unless the history reaches back an hour before the instant.
    pub revenue_last_hour_minor: Option<i64>,
}

/// Yesterday's and last week's figures; `None` where the history does not reach back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Comparison {
    pub yesterday: Option<Compared>,
    pub last_week: Option<Compared>,
}

/// One comparison as it stood at its instant `E`, and what interpolating within the compared
/// minute needs (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Basis {
    at_instant: Compared,
    /// Orders and net revenue of the compared minute `[E, E+1m)` (0 where none is stored).
    minute_orders: i64,
    minute_revenue_minor: i64,
    /// Net revenue of the minute an hour before `E`, which the trailing hour leaves as the
    /// seconds pass.
    leaving_revenue_minor: i64,
}

impl Basis {
    /// The figures `elapsed_secs` (0–59) seconds into the compared minute.
    fn at(&self, elapsed_secs: i64) -> Compared {
        let part = |value: i64| (i128::from(value) * i128::from(elapsed_secs) / 60) as i64;
        let start = self.at_instant;
        let weighed = (i128::from(start.orders_per_minute as i64) * i128::from(60 - elapsed_secs)
            + i128::from(self.minute_orders.max(0)) * i128::from(elapsed_secs)
            + 30)
            / 60;
        Compared {
            active_users: start.active_users,
            orders_per_minute: weighed.max(0) as u64,
            revenue_today_minor: start
                .revenue_today_minor
                .map(|sum| sum.saturating_add(part(self.minute_revenue_minor))),
            revenue_last_hour_minor: start.revenue_last_hour_minor.map(|sum| {
                sum.saturating_sub(part(self.leaving_revenue_minor))
                    .saturating_add(part(self.minute_revenue_minor))
            }),
        }
    }
}

/// Yesterday's and last week's [`Basis`], computed once a minute; `None` where the history does
/// not reach back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bases {
    pub yesterday: Option<Basis>,
    pub last_week: Option<Basis>,
}

impl Bases {
    /// The comparison for a snapshot at `now`, within the minute these were computed for.
    pub(crate) fn at(&self, now: Millis) -> Comparison {
        let elapsed_secs = (now - minute_of(now)) / 1_000;
        Comparison {
            yesterday: self.yesterday.map(|b| b.at(elapsed_secs)),
            last_week: self.last_week.map(|b| b.at(elapsed_secs)),
        }
    }
}

/// The instant showing the same wall-clock time as `at`, `days` calendar days earlier in
/// `timezone`. A time that did not exist that day (the hour skipped when clocks went forward)
/// is read in the offset before the jump (02:30 becomes 03:30 of the new offset); a time that
/// happened twice (the hour repeated when clocks went back) is its first occurrence.
pub fn same_time_earlier(at: Millis, days: u64, timezone: Tz) -> Millis {
    let Some(utc) = chrono::DateTime::from_timestamp_millis(at) else {
        return at;
    };
    let local = utc.with_timezone(&timezone).naive_local();
    match local.checked_sub_days(Days::new(days)) {
        Some(earlier) => instant_of(earlier, timezone),
        None => at,
    }
}

/// The instant of a local wall-clock time (see [`same_time_earlier`] for the gap and the fold).
fn instant_of(local: NaiveDateTime, timezone: Tz) -> Millis {
    match timezone.from_local_datetime(&local) {
        LocalResult::Single(t) => t.timestamp_millis(),
        LocalResult::Ambiguous(first, _) => first.timestamp_millis(),
        // No gap lasts an hour or more in any zone today: an hour earlier exists, and the
        // instant an hour of elapsed time after it is the skipped time in the earlier offset.
        LocalResult::None => {
            let before = local - chrono::Duration::hours(1);
            match timezone.from_local_datetime(&before) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                    t.timestamp_millis() + HOUR_MS
                }
                LocalResult::None => local.and_utc().timestamp_millis(),
            }
        }
    }
}

/// The start of the local day that `at` falls on.
fn local_midnight(at: Millis, timezone: Tz) -> Millis {
    let day = local_date(at, timezone);
    instant_of(day.and_time(chrono::NaiveTime::MIN), timezone)
}

/// What one comparison needs: its instant `E`, the minutes `[from, E)` it sums over, read from
/// [`NEAREST_MINUTES`] before the sums' start (to tell whether the history reaches it), and the
/// compared minute `[E, E+1m)` ([`Window::to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub from: Millis,
    pub instant: Millis,
}

impl Window {
    /// The window compared with the minute that contains `now`.
    pub(crate) fn of(now: Millis, offset: Offset, timezone: Tz) -> Window {
        let instant = minute_of(same_time_earlier(minute_of(now), offset.days(), timezone));
        let from = minute_of(local_midnight(instant, timezone).min(instant - HOUR_MS)) - NEAREST_MS;
        Window { from, instant }
    }

    /// The end of the minutes to read: the compared minute included.
    pub(crate) fn to(&self) -> Millis {
        self.instant + MINUTE_MS
    }

    /// What the comparison needs from `points` (every stored minute of the window); `None`
    /// when no point is stored near the minute ending at the instant.
    pub(crate) fn basis(&self, points: &BTreeMap<Millis, Point>, timezone: Tz) -> Option<Basis> {
        let at_instant = self.figures(points, timezone)?;
        let minute = points.get(&self.instant);
        Some(Basis {
            at_instant,
            minute_orders: minute.map_or(0, |p| p.orders),
            minute_revenue_minor: minute.map_or(0, |p| p.revenue_minor),
            leaving_revenue_minor: points
                .get(&(self.instant - HOUR_MS))
                .map_or(0, |p| p.revenue_minor),
        })
    }

    /// The figures as they stood at the window's instant, from `points` (every stored minute
    /// of the window); `None` when no point is stored near the minute ending at the instant.
    pub(crate) fn figures(
        &self,
        points: &BTreeMap<Millis, Point>,
        timezone: Tz,
    ) -> Option<Compared> {
        let last = nearest(points, self.instant - MINUTE_MS)?;
        let midnight = local_midnight(self.instant, timezone);
        let sum = |from: Millis| -> Option<i64> {
            reaches_back(points, from).then(|| {
                points
                    .range(from..self.instant)
                    .fold(0i64, |sum, (_, p)| sum.saturating_add(p.revenue_minor))
            })
        };
        Some(Compared {
            active_users: last.active_users,
            orders_per_minute: last.orders.max(0) as u64,
            revenue_today_minor: sum(midnight),
            revenue_last_hour_minor: sum(self.instant - HOUR_MS),
        })
    }
}

/// The point of `minute`, or else the nearest stored one within [`NEAREST_MINUTES`] (the
/// earlier one of two as near).
fn nearest(points: &BTreeMap<Millis, Point>, minute: Millis) -> Option<&Point> {
    points
        .range(minute - NEAREST_MS..=minute + NEAREST_MS)
        .min_by_key(|(at, _)| ((*at - minute).abs(), **at))
        .map(|(_, point)| point)
}

/// Whether the stored history reaches back to `start`: a point is stored within
/// [`NEAREST_MINUTES`] of it.
fn reaches_back(points: &BTreeMap<Millis, Point>, start: Millis) -> bool {
    points
        .range(start - NEAREST_MS..=start + NEAREST_MS)
        .next()
        .is_some()
}

/// The stored minutes of one comparison's window, and which span of minutes was read.
#[derive(Debug, Clone, Default)]
struct Loaded {
    /// `[from, to)` as read from the store (minutes without a row are simply absent).
    span: Option<(Millis, Millis)>,
    points: BTreeMap<Millis, Point>,
}

/// The history the comparisons need, kept in memory by the leader (see the module header).
#[derive(Debug, Clone)]
pub(crate) struct Baselines {
    timezone: Tz,
    loaded: [Loaded; 2],
}

impl Baselines {
    pub(crate) fn new(timezone: Tz) -> Baselines {
        Baselines {
            timezone,
            loaded: Default::default(),
        }
    }

    /// The spans of minutes `[from, to)` to read from the store before [`Baselines::compare`]
    /// at `now`: usually the one minute that closed since the last call, the whole window
    /// at first and when the window jumped (a new day, a daylight-saving change).
    pub(crate) fn missing(&self, now: Millis) -> Vec<(Offset, Millis, Millis)> {
        Offset::ALL
            .into_iter()
            .filter_map(|offset| {
                let window = Window::of(now, offset, self.timezone);
                let (from, to) = (window.from, window.to());
                match self.loaded[offset.index()].span {
                    Some((start, end)) if start <= from && end >= to => None,
                    Some((start, end)) if start <= from && end >= from => Some((offset, end, to)),
                    _ => Some((offset, from, to)),
                }
            })
            .collect()
    }

    /// Takes in the stored points of `[from, to)` for `offset`, as [`Baselines::missing`]
    /// asked, and forgets the minutes its window no longer needs.
    pub(crate) fn load(
        &mut self,
        offset: Offset,
        from: Millis,
        to: Millis,
        points: impl IntoIterator<Item = Point>,
        now: Millis,
    ) {
        let window = Window::of(now, offset, self.timezone);
        let loaded = &mut self.loaded[offset.index()];
        let span = match loaded.span {
            Some((start, end)) if start <= from && end >= from => (start.max(window.from), to),
            _ => {
                loaded.points.clear();
                (from, to)
            }
        };
        loaded.points.extend(
            points
                .into_iter()
                .filter(|p| p.minute >= from && p.minute < to)
                .map(|p| (p.minute, p)),
        );
        loaded.points = loaded.points.split_off(&span.0);
        loaded.span = Some(span);
    }

    /// Adds a newly applied event's tally to a loaded minute (a late event can revise a minute
    /// that a comparison sums over); `true` when it did.
    pub(crate) fn revise(&mut self, minute: Millis, orders: i64, revenue_minor: i64) -> bool {
        let mut revised = false;
        for loaded in &mut self.loaded {
            let Some((start, end)) = loaded.span else {
                continue;
            };
            if minute < start || minute >= end {
                continue;
            }
            let point = loaded.points.entry(minute).or_insert(Point {
                minute,
                orders: 0,
                revenue_minor: 0,
                active_users: 0,
            });
            point.orders = point.orders.saturating_add(orders);
            point.revenue_minor = point.revenue_minor.saturating_add(revenue_minor);
            revised = true;
        }
        revised
    }

    /// Yesterday's and last week's bases for the minute containing `now`, from what was
    /// loaded ([`Bases::at`] gives each snapshot's figures). Call [`Baselines::missing`] and
    /// [`Baselines::load`] first.
    pub(crate) fn compare(&self, now: Millis) -> Bases {
        let basis = |offset: Offset| {
            let window = Window::of(now, offset, self.timezone);
            window.basis(&self.loaded[offset.index()].points, self.timezone)
        };
        Bases {
            yesterday: basis(Offset::Day),
            last_week: basis(Offset::Week),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn at(rfc3339: &str) -> Millis {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("test timestamps are valid")
            .timestamp_millis()
    }

    const BERLIN: Tz = chrono_tz::Europe::Berlin;

    fn point(minute: Millis, orders: i64, revenue_minor: i64, active_users: u64) -> Point {
        Point {
            minute,
            orders,
            revenue_minor,
            active_users,
        }
    }

    /// Every minute of `[from, to)` with `revenue` and one order, 7 users active.
    fn minutes(from: Millis, to: Millis, revenue: i64) -> Vec<Point> {
        (0..)
            .map(|i| minute_of(from) + i * MINUTE_MS)
            .take_while(|m| *m < to)
            .map(|m| point(m, 1, revenue, 7))
            .collect()
    }

    fn loaded(now: Millis, points: &[Point], timezone: Tz) -> Baselines {
        let mut baselines = Baselines::new(timezone);
        for (offset, from, to) in baselines.missing(now) {
            baselines.load(offset, from, to, points.iter().copied(), now);
        }
        baselines
    }

    #[test]
    fn the_same_time_yesterday_is_24_hours_back_on_an_ordinary_day() {
        let now = at("2026-11-23T10:15:30+01:00");
        assert_eq!(
            same_time_earlier(now, 1, BERLIN),
            at("2026-11-22T10:15:30+01:00")
        );
        assert_eq!(
            same_time_earlier(now, 7, BERLIN),
            at("2026-11-16T10:15:30+01:00")
        );
        assert_eq!(same_time_earlier(now, 1, Tz::UTC), now - 24 * HOUR_MS);
    }

    /// 2026-03-29 in Berlin has 23 hours (02:00 CET → 03:00 CEST).
    #[test]
    fn across_a_day_of_23_hours_the_same_time_yesterday_is_23_hours_back() {
        let now = at("2026-03-30T10:00:00+02:00");
        let yesterday = same_time_earlier(now, 1, BERLIN);
        assert_eq!(yesterday, at("2026-03-29T10:00:00+02:00"));
        assert_eq!(now - yesterday, 24 * HOUR_MS);
        // The morning of the short day itself: its 10:00 is 23 hours after the day before's.
        let short = at("2026-03-29T10:00:00+02:00");
        assert_eq!(short - same_time_earlier(short, 1, BERLIN), 23 * HOUR_MS);
        // A week spanning the change: 7 days minus an hour.
        let week = same_time_earlier(now, 7, BERLIN);
        assert_eq!(week, at("2026-03-23T10:00:00+01:00"));
        assert_eq!(now - week, 7 * 24 * HOUR_MS - HOUR_MS);
        // 02:30 did not exist on the 29th: the day after's 02:30 compares with 03:30 CEST.
        let after_gap = at("2026-03-30T02:30:00+02:00");
        assert_eq!(
            same_time_earlier(after_gap, 1, BERLIN),
            at("2026-03-29T03:30:00+02:00")
        );
    }

    /// 2026-10-25 in Berlin has 25 hours (03:00 CEST → 02:00 CET).
    #[test]
    fn across_a_day_of_25_hours_the_same_time_yesterday_is_25_hours_back() {
        let long = at("2026-10-25T10:00:00+01:00");
        let yesterday = same_time_earlier(long, 1, BERLIN);
        assert_eq!(yesterday, at("2026-10-24T10:00:00+02:00"));
        assert_eq!(long - yesterday, 25 * HOUR_MS);
        // 02:30 happened twice on the 25th: the day after compares with the first one.
        let after_fold = at("2026-10-26T02:30:00+01:00");
        assert_eq!(
            same_time_earlier(after_fold, 1, BERLIN),
            at("2026-10-25T02:30:00+02:00")
        );
    }

    /// Havana moves its clocks at midnight: 2026-03-08 begins at 01:00 CDT.
    #[test]
    fn a_day_whose_midnight_was_skipped_begins_at_its_first_instant() {
        let havana: Tz = chrono_tz::America::Havana;
        let noon = at("2026-03-08T12:00:00-04:00");
        assert_eq!(
            local_midnight(noon, havana),
            at("2026-03-08T01:00:00-04:00")
        );
        let points = minutes(
            at("2026-03-07T00:00:00-05:00"),
            at("2026-03-09T00:00:00-04:00"),
            1,
        );
        let after = at("2026-03-09T12:00:30-04:00");
        let yesterday = loaded(after, &points, havana)
            .compare(after)
            .at(minute_of(after))
            .yesterday
            .expect("history");
        // From 01:00 to 12:00: the 23-hour day's 11 hours.
        assert_eq!(yesterday.revenue_today_minor, Some(11 * 60));
    }

    #[test]
    fn revenue_today_compares_with_that_day_from_its_midnight_to_the_same_time() {
        let now = at("2026-11-23T10:15:30+01:00");
        // Yesterday: every minute from 22:00 the day before yesterday to noon, 10 each.
        let points = minutes(
            at("2026-11-21T22:00:00+01:00"),
            at("2026-11-22T12:00:00+01:00"),
            10,
        );
        let yesterday = loaded(now, &points, BERLIN)
            .compare(now)
            .at(minute_of(now))
            .yesterday
            .expect("history reaches back a day");
        // Midnight to 10:15: 615 minutes; the minutes before midnight are another day.
        assert_eq!(yesterday.revenue_today_minor, Some(615 * 10));
        assert_eq!(yesterday.revenue_last_hour_minor, Some(60 * 10));
        assert_eq!(yesterday.orders_per_minute, 1);
        assert_eq!(yesterday.active_users, 7);
    }

    #[test]
    fn the_last_hour_reaches_over_midnight_but_revenue_today_does_not() {
        let now = at("2026-11-23T00:20:10+01:00");
        let points = minutes(
            at("2026-11-21T22:00:00+01:00"),
            at("2026-11-22T12:00:00+01:00"),
            10,
        );
        let yesterday = loaded(now, &points, BERLIN)
            .compare(now)
            .at(minute_of(now))
            .yesterday
            .expect("history");
        assert_eq!(yesterday.revenue_today_minor, Some(20 * 10));
        assert_eq!(yesterday.revenue_last_hour_minor, Some(60 * 10));
    }

    #[test]
    fn revenue_today_of_a_23_hour_and_a_25_hour_day_counts_the_minutes_that_day_had() {
        // The day after the short day, 12:00: the short day had 11 hours to its noon.
        let after_short = at("2026-03-30T12:00:20+02:00");
        let points = minutes(
            at("2026-03-28T00:00:00+01:00"),
            at("2026-03-30T00:00:00+02:00"),
            1,
        );
        let compared = loaded(after_short, &points, BERLIN)
            .compare(after_short)
            .at(minute_of(after_short))
            .yesterday
            .expect("history");
        assert_eq!(compared.revenue_today_minor, Some(11 * 60));
        // The day after the long day, 12:00: the long day had 13 hours to its noon.
        let after_long = at("2026-10-26T12:00:20+01:00");
        let points = minutes(
            at("2026-10-24T00:00:00+02:00"),
            at("2026-10-26T00:00:00+01:00"),
            1,
        );
        let compared = loaded(after_long, &points, BERLIN)
            .compare(after_long)
            .at(minute_of(after_long))
            .yesterday
            .expect("history");
        assert_eq!(compared.revenue_today_minor, Some(13 * 60));
    }

    #[test]
    fn where_the_history_does_not_reach_back_the_comparison_is_none() {
        let now = at("2026-11-23T10:15:30Z");
        // Two days of history: yesterday is there, last week is not.
        let points = minutes(now - 2 * 24 * HOUR_MS, now, 5);
        let comparison = loaded(now, &points, Tz::UTC)
            .compare(now)
            .at(minute_of(now));
        assert!(comparison.yesterday.is_some());
        assert_eq!(comparison.last_week, None);
        // No point within five minutes of the minute ending at yesterday's instant: not known.
        let instant = Window::of(now, Offset::Day, Tz::UTC).instant;
        let gap: Vec<Point> = points
            .iter()
            .copied()
            .filter(|p| p.minute < instant - 7 * MINUTE_MS || p.minute >= instant + 5 * MINUTE_MS)
            .collect();
        assert_eq!(
            loaded(now, &gap, Tz::UTC)
                .compare(now)
                .at(minute_of(now))
                .yesterday,
            None
        );
        // Nothing at all.
        assert_eq!(
            loaded(now, &[], Tz::UTC).compare(now).at(minute_of(now)),
            Comparison::default()
        );
    }

    /// A restart skipped closing a minute: a day later the comparison takes the nearest point
    /// instead of going null (which would remove the baseline gauge and reset its alert).
    #[test]
    fn a_minute_missing_from_the_history_is_taken_from_the_nearest_stored_point() {
        let now = at("2026-11-23T10:15:30Z");
        let instant = Window::of(now, Offset::Day, Tz::UTC).instant;
        let mut points = minutes(now - 2 * 24 * HOUR_MS, now, 5);
        points.retain(|p| p.minute != instant - MINUTE_MS);
        // The minute before the hole had 4 orders and 9 users.
        for p in points
            .iter_mut()
            .filter(|p| p.minute == instant - 2 * MINUTE_MS)
        {
            p.orders = 4;
            p.active_users = 9;
        }
        let yesterday = loaded(now, &points, Tz::UTC)
            .compare(now)
            .at(minute_of(now))
            .yesterday
            .expect("the nearest minute stands in");
        assert_eq!(yesterday.orders_per_minute, 4);
        assert_eq!(yesterday.active_users, 9);
        // The sums miss the one minute, and still count.
        assert_eq!(yesterday.revenue_last_hour_minor, Some(59 * 5));
    }

    /// The service started at 08:00 yesterday: yesterday's revenue to 10:15 is not the sum
    /// from 08:00, it is unknown; the last hour (from 09:15) is known.
    #[test]
    fn a_sum_is_none_unless_the_history_reaches_back_to_its_start() {
        let now = at("2026-11-23T10:15:30Z");
        let points = minutes(at("2026-11-22T08:00:00Z"), now, 5);
        let yesterday = loaded(now, &points, Tz::UTC)
            .compare(now)
            .at(minute_of(now))
            .yesterday
            .expect("history at the instant");
        assert_eq!(yesterday.revenue_today_minor, None);
        assert_eq!(yesterday.revenue_last_hour_minor, Some(60 * 5));
        assert_eq!(yesterday.orders_per_minute, 1);
        // Started at 09:30: the last hour is not known either.
        let points = minutes(at("2026-11-22T09:30:00Z"), now, 5);
        let yesterday = loaded(now, &points, Tz::UTC)
            .compare(now)
            .at(minute_of(now))
            .yesterday
            .expect("history at the instant");
        assert_eq!(yesterday.revenue_last_hour_minor, None);
        // Started at 00:03, within five minutes of midnight: counted.
        let points = minutes(at("2026-11-22T00:03:00Z"), now, 5);
        let yesterday = loaded(now, &points, Tz::UTC)
            .compare(now)
            .at(minute_of(now))
            .yesterday;
        assert_eq!(
            yesterday.and_then(|c| c.revenue_today_minor),
            Some((10 * 60 + 12) * 5)
        );
    }

    /// Today's figures include the seconds of the current minute: so do the comparisons.
    #[test]
    fn the_comparison_takes_the_elapsed_part_of_the_compared_minute() {
        let minute = at("2026-11-23T10:15:00Z");
        let instant = Window::of(minute, Offset::Day, Tz::UTC).instant;
        // Every minute 10 and 1 order; the compared minute 10:15 yesterday 600 and 7 orders;
        // the minute leaving the hour (09:15) 120.
        let mut points = minutes(minute - 2 * 24 * HOUR_MS, minute, 10);
        for p in points.iter_mut() {
            if p.minute == instant {
                (p.revenue_minor, p.orders) = (600, 7);
            }
            if p.minute == instant - HOUR_MS {
                p.revenue_minor = 120;
            }
        }
        let bases = loaded(minute, &points, Tz::UTC).compare(minute);
        let start = bases.at(minute).yesterday.expect("history");
        let today_at_start = (10 * 60 + 15 - 1) * 10 + 120;
        assert_eq!(start.revenue_today_minor, Some(today_at_start));
        assert_eq!(start.revenue_last_hour_minor, Some(59 * 10 + 120));
        assert_eq!(start.orders_per_minute, 1);
        // 30 s in: half of the compared minute is in, half of the leaving one out.
        let half = bases.at(minute + 30_000).yesterday.expect("history");
        assert_eq!(half.revenue_today_minor, Some(today_at_start + 300));
        assert_eq!(half.revenue_last_hour_minor, Some(59 * 10 + 120 - 60 + 300));
        assert_eq!(half.orders_per_minute, 4);
        // 59.9 s in: whole seconds, 59 of 60.
        let late = bases.at(minute + 59_900).yesterday.expect("history");
        assert_eq!(late.revenue_today_minor, Some(today_at_start + 590));
        assert_eq!(late.orders_per_minute, 7);
    }

    #[test]
    fn as_minutes_close_only_the_new_minute_is_read_and_a_late_event_revises_a_loaded_one() {
        let now = at("2026-11-23T10:15:30Z");
        let points = minutes(now - 8 * 24 * HOUR_MS, now + 2 * MINUTE_MS, 3);
        let mut baselines = loaded(now, &points, Tz::UTC);
        assert!(baselines.missing(now).is_empty());
        let later = now + MINUTE_MS;
        let missing = baselines.missing(later);
        assert_eq!(missing.len(), 2);
        for (offset, from, to) in missing {
            assert_eq!(
                to - from,
                MINUTE_MS,
                "{offset:?}: only the minute that closed"
            );
            baselines.load(offset, from, to, points.iter().copied(), later);
        }
        let before = baselines
            .compare(later)
            .at(minute_of(later))
            .yesterday
            .expect("history");
        let fresh = loaded(later, &points, Tz::UTC)
            .compare(later)
            .at(minute_of(later));
        assert_eq!(Some(before), fresh.yesterday, "the same as reading it all");
        assert_eq!(
            baselines.compare(later).at(minute_of(later)).last_week,
            fresh.last_week
        );

        let revised_minute = Window::of(later, Offset::Day, Tz::UTC).instant - 2 * MINUTE_MS;
        assert!(baselines.revise(revised_minute, 1, 100));
        let after = baselines
            .compare(later)
            .at(minute_of(later))
            .yesterday
            .expect("history");
        let plus = |sum: Option<i64>| sum.map(|s| s + 100);
        assert_eq!(after.revenue_today_minor, plus(before.revenue_today_minor));
        assert_eq!(
            after.revenue_last_hour_minor,
            plus(before.revenue_last_hour_minor)
        );
        // A minute outside every window changes nothing.
        assert!(!baselines.revise(later, 1, 100));
    }

    #[test]
    fn a_new_day_reads_its_window_again() {
        let now = at("2026-11-23T23:59:30Z");
        let points = minutes(now - 8 * 24 * HOUR_MS, now + 2 * HOUR_MS, 2);
        let mut baselines = loaded(now, &points, Tz::UTC);
        let next_day = now + MINUTE_MS;
        for (offset, from, to) in baselines.missing(next_day) {
            baselines.load(offset, from, to, points.iter().copied(), next_day);
        }
        let yesterday = baselines
            .compare(next_day)
            .at(minute_of(next_day))
            .yesterday
            .expect("history");
        assert_eq!(
            yesterday.revenue_today_minor,
            Some(0),
            "midnight: nothing yet"
        );
        assert_eq!(yesterday.revenue_last_hour_minor, Some(60 * 2));
    }

    #[test]
    fn offsets_have_their_wire_names() {
        for offset in Offset::ALL {
            assert_eq!(Offset::from_label(offset.label()), Some(offset));
        }
        assert_eq!(Offset::from_label("2d"), None);
    }
}
