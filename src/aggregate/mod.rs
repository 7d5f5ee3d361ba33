//! Pure aggregation: accepted events in, live figures out.
//!
//! Everything here is deterministic and free of I/O and clock reads: the caller passes the
//! current time (`now`, Unix milliseconds) to every query. Windows are defined over event time
//! (`occurred_at`), so the same set of events gives the same figures whatever order they arrived
//! in. That property is what lets a new leader rebuild the state from the store after a failover.
//!
//! What it keeps in memory, and why:
//! - per user, the latest activity and the latest sign-out (two max-registers): enough to decide
//!   "active now" without keeping every event; and which of the minutes the leader closed in the
//!   last hour counted them active at its end (one 64-bit mask, see [`late`]);
//! - a hash of each user event applied within the active window: what recognises their
//!   repeats ([`recent`]);
//! - per second, orders and net revenue for the last hour: orders per minute and revenue last hour
//!   are sums over these (so windows are precise to one second);
//! - per local day and per minute, net revenue and orders: the same increments the store persists
//!   (see [`Delta`]), for every day and minute an acceptable event can still fall into (24 hours
//!   back), so that the aggregator knows every sum the store will add an event to.
//!
//! Money is bounded: an amount is at most [`MAX_AMOUNT_MINOR`] (docs/api.md, Events), and no sum
//! may overflow ([`bound`]).
//!
//! Rooms of their own, each pure like this one:
//! - [`bound`]: admitting an event only when every sum it will add to stays representable;
//! - [`late`]: which events are late (their minute was already closed and published), what
//!   they revise in the closed minutes (orders, revenue, and the users active at their ends,
//!   from the per-user masks of who was counted), and the `trust` figures that count them;
//! - [`presence`]: one user's registers (latest activity, latest sign-out, the ids that set
//!   them, the mask of closed minutes that counted them) and their stored form;
//! - [`recent`]: the user events applied within the active window, to recognise a repeat;
//! - [`compare`]: comparisons with yesterday and last week;
//! - `event`: the accepted event itself.

mod bound;
pub(crate) mod compare;
mod event;
mod late;
mod presence;
mod recent;

pub use bound::{Figure, Overflow};
pub use compare::{same_time_earlier, Offset};
pub use event::{Event, EventKind, Millis};
pub(crate) use late::Trust;
pub use late::{Judgement, Revision};
pub use presence::{id_hash, StoredPresence};

use bound::InFlight;
use late::Late;
use presence::Presence;
use recent::RecentUserEvents;

use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub const MINUTE_MS: Millis = 60_000;
const SECOND_MS: Millis = 1_000;
const HOUR_SECS: i64 = 3_600;
/// Producers may be a little ahead of us: events up to this far in the future are accepted
/// (see docs/api.md, Events) and count as "now" in the trailing windows.
pub(crate) const MAX_FUTURE_MS: Millis = 5 * MINUTE_MS;
/// Events older than this are rejected, and ids are remembered this long for deduplication.
pub(crate) const MAX_AGE_MS: Millis = 24 * 60 * MINUTE_MS;
/// The largest amount one order or refund may carry: 10^12 minor units (see docs/api.md, Events).
pub(crate) const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;
/// Minutes and days are kept this long beyond [`MAX_AGE_MS`]: an event admitted at the edge of
/// the window, or a batch that lingers, still finds its sums in memory.
const SUMS_MARGIN_MS: Millis = 60 * MINUTE_MS;

/// What the aggregator needs to know about the deployment.
#[derive(Debug, Clone)]
pub(crate) struct AggregateSettings {
    pub active_window_ms: Millis,
    pub timezone: Tz,
}

/// The figures of one moment: what a snapshot shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Figures {
    pub active_users: u64,
    pub orders_per_minute: u64,
    pub revenue_today_minor: i64,
    pub revenue_last_hour_minor: i64,
    pub point: Point,
}

/// One history point: a minute's orders and net revenue, and the users active at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub minute: Millis,
    pub orders: i64,
    pub revenue_minor: i64,
    pub active_users: u64,
}

/// Orders and net revenue of one bucket (a second, a minute).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub orders: i64,
    pub revenue_minor: i64,
}

impl Tally {
    /// Saturates rather than wraps; [`Aggregator::admit`] keeps every sum it is asked for far
    /// from the limits, so this never saturates in practice.
    fn add(&mut self, other: Tally) {
        self.orders = self.orders.saturating_add(other.orders);
        self.revenue_minor = self.revenue_minor.saturating_add(other.revenue_minor);
    }

    fn is_zero(&self) -> bool {
        self.orders == 0 && self.revenue_minor == 0
    }
}

/// The durable effect of a set of newly applied events: increments per minute and per local day.
/// The store adds these to its tables in the same transaction that records the event ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub minutes: BTreeMap<Millis, Tally>,
    pub days: BTreeMap<NaiveDate, i64>,
}

impl Delta {
    pub(crate) fn of<'a>(events: impl IntoIterator<Item = &'a Event>, timezone: Tz) -> Delta {
        let mut delta = Delta::default();
        for event in events {
            let tally = event.tally();
            if tally.is_zero() {
                continue;
            }
            delta
                .minutes
                .entry(minute_of(event.occurred_at))
                .or_default()
                .add(tally);
            let day = delta
                .days
                .entry(local_date(event.occurred_at, timezone))
                .or_default();
            *day = day.saturating_add(tally.revenue_minor);
        }
        delta.days.retain(|_, revenue| *revenue != 0);
        delta
    }
}

/// The persisted state a new leader rebuilds from (see `store::Store::load_restore`).
#[derive(Debug, Clone, Default)]
pub struct RestoreInput {
    /// The users whose last activity or sign-out can still affect the active window at `now`.
    pub users: Vec<StoredPresence>,
    /// Every applied order and refund that can still affect a trailing window at `now`: its
    /// `occurred_at` and kind (with the amount).
    pub recent_orders: Vec<(Millis, EventKind)>,
    /// Net revenue per local day, for the days around `now`.
    pub days: Vec<(NaiveDate, i64)>,
    /// History tallies of the minutes around `now`.
    pub minutes: Vec<(Millis, Tally)>,
    /// Late events counted per local day of their commit, for the days around `now` (days
    /// without one may be absent).
    pub late_events: Vec<(NaiveDate, u64)>,
    /// The minutes since [`Aggregator::revised_since`] that late events revised.
    pub revised_minutes: Vec<Millis>,
}

/// One second's tally and its gross: the sum of the amounts in it, refunds counted positive.
#[derive(Debug, Clone, Copy, Default)]
struct Second {
    tally: Tally,
    gross_minor: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct Aggregator {
    settings: AggregateSettings,
    users: HashMap<String, Presence>,
    /// The user events applied within the active window (see [`Aggregator::recognises`]).
    recent_user_events: RecentUserEvents,
    seconds: BTreeMap<i64, Second>,
    /// Gross of every second in `seconds`: no sum over any of them can be larger.
    seconds_gross_minor: i64,
    minutes: BTreeMap<Millis, Tally>,
    days: BTreeMap<NaiveDate, i64>,
    /// Amounts admitted but not yet applied or released: they may land in any sum.
    in_flight: InFlight,
    late: Late,
    /// Every minute before this one was closed and published as whole: an event of one is late.
    open_from: Millis,
    /// The minutes this leader closed in the last hour ([`late::COUNTED_MINUTES`]): each user's
    /// `counted` bit of them says whether they were counted active at its end.
    counted: BTreeSet<Millis>,
}

impl Aggregator {
    pub(crate) fn new(settings: AggregateSettings) -> Self {
        Self {
            settings,
            users: HashMap::new(),
            recent_user_events: RecentUserEvents::default(),
            seconds: BTreeMap::new(),
            seconds_gross_minor: 0,
            minutes: BTreeMap::new(),
            days: BTreeMap::new(),
            in_flight: InFlight::default(),
            late: Late::default(),
            open_from: Millis::MIN,
            counted: BTreeSet::new(),
        }
    }

    /// Rebuilds the state a leader had, from what the store kept.
    pub(crate) fn restore(settings: AggregateSettings, input: RestoreInput) -> Self {
        let mut aggregator = Self::new(settings);
        for user in input.users {
            aggregator.users.insert(
                user.user_id,
                Presence {
                    last_active: user.last_active.unwrap_or(Millis::MIN),
                    last_signed_out: user.last_signed_out.unwrap_or(Millis::MIN),
                    active_id: user.active_id as u64,
                    signed_out_id: user.signed_out_id as u64,
                    // Who the predecessor counted is not stored: its minutes have no masks.
                    counted: 0,
                },
            );
        }
        for (occurred_at, kind) in input.recent_orders {
            aggregator.observe_tally(occurred_at, &kind);
        }
        aggregator.days = input.days.into_iter().collect();
        aggregator.minutes = input.minutes.into_iter().collect();
        aggregator.late = Late::restore(input.late_events, input.revised_minutes);
        aggregator
    }

    /// How far back `restore` needs events: the longest trailing window.
    pub(crate) fn restore_horizon_ms(&self) -> Millis {
        self.settings.active_window_ms.max(HOUR_SECS * SECOND_MS)
    }

    /// The oldest instant whose minute and day sums `restore` needs: every event still
    /// acceptable at `now` falls on or after it.
    pub(crate) fn sums_since(now: Millis) -> Millis {
        now - MAX_AGE_MS - SUMS_MARGIN_MS
    }

    /// Applies one newly accepted (not duplicate) event.
    pub(crate) fn apply(&mut self, event: &Event) {
        self.observe(event);
        let tally = event.tally();
        if tally.is_zero() {
            return;
        }
        self.minutes
            .entry(minute_of(event.occurred_at))
            .or_default()
            .add(tally);
        let day = self
            .days
            .entry(local_date(event.occurred_at, self.settings.timezone))
            .or_default();
        *day = day.saturating_add(tally.revenue_minor);
    }

    /// Whether `event` repeats one already applied, as far as memory tells: a user event (of
    /// a kind that has no id record in the store) of the same user, kind, `occurred_at` and id
    /// as one applied in the active window ([`recent`]), or as the one that set that user's
    /// latest activity or latest sign-out (which a new leader restores from the store).
    /// Applying it again would change nothing, so it counts as a duplicate. Not recognised: a
    /// repeat of an event older than the window but for the latest of its user, or of one
    /// applied before a restore but for the latest: the count of user-kind duplicates is
    /// best-effort while their effect is exact (docs/events.md). Orders are never judged
    /// here: the store's id records decide them.
    pub(crate) fn recognises(&self, event: &Event) -> bool {
        self.recent_user_events.contains(event) || self.set_a_register(event)
    }

    /// `event` set its user's latest activity or latest sign-out (see [`recognises`]).
    ///
    /// [`recognises`]: Aggregator::recognises
    fn set_a_register(&self, event: &Event) -> bool {
        let Some(presence) = self.users.get(&event.user_id) else {
            return false;
        };
        let (at, id) = match event.kind {
            EventKind::UserSignedOut => (presence.last_signed_out, presence.signed_out_id),
            EventKind::UserActive | EventKind::Other => (presence.last_active, presence.active_id),
            EventKind::OrderPlaced { .. } | EventKind::OrderRefunded { .. } => return false,
        };
        at == event.occurred_at && id == id_hash(&event.id)
    }

    /// The parts of an event that only live in memory: presence and per-second tallies.
    fn observe(&mut self, event: &Event) {
        self.recent_user_events.remember(event);
        self.users
            .entry(event.user_id.clone())
            .or_insert_with(Presence::unseen)
            .record(event);
        self.observe_tally(event.occurred_at, &event.kind);
    }

    /// An order's or refund's part in the per-second tallies of the trailing hour.
    fn observe_tally(&mut self, occurred_at: Millis, kind: &EventKind) {
        let tally = Tally::of(kind);
        if !tally.is_zero() {
            let gross = kind.amount_minor();
            let second = self
                .seconds
                .entry(occurred_at.div_euclid(SECOND_MS))
                .or_default();
            second.tally.add(tally);
            second.gross_minor = second.gross_minor.saturating_add(gross);
            self.seconds_gross_minor = self.seconds_gross_minor.saturating_add(gross);
        }
    }

    /// The figures at `now`.
    pub(crate) fn figures(&self, now: Millis) -> Figures {
        let active_users = self.active_users_at(now);
        let now_sec = now.div_euclid(SECOND_MS);
        let orders_per_minute = self.sum_seconds_since(now_sec - 60).orders.max(0) as u64;
        let revenue_last_hour_minor = self.sum_seconds_since(now_sec - HOUR_SECS).revenue_minor;
        let today = local_date(now, self.settings.timezone);
        let minute = minute_of(now);
        let current = self.minutes.get(&minute).copied().unwrap_or_default();
        Figures {
            active_users,
            orders_per_minute,
            revenue_today_minor: self.days.get(&today).copied().unwrap_or(0),
            revenue_last_hour_minor,
            point: Point {
                minute,
                orders: current.orders,
                revenue_minor: current.revenue_minor,
                active_users,
            },
        }
    }

    /// Users whose latest event falls within the active window ending at `at`.
    pub(crate) fn active_users_at(&self, at: Millis) -> u64 {
        let window = self.settings.active_window_ms;
        self.users
            .values()
            .filter(|presence| presence.is_active(at, window))
            .count() as u64
    }

    /// Sum of the per-second tallies strictly after `after_sec` (future-dated events included).
    fn sum_seconds_since(&self, after_sec: i64) -> Tally {
        let mut sum = Tally::default();
        for second in self.seconds.range(after_sec + 1..).map(|(_, s)| *s) {
            sum.add(second.tally);
        }
        sum
    }

    /// Forgets what can no longer affect any figure at `now` or later, so memory stays bounded.
    pub(crate) fn prune(&mut self, now: Millis) {
        let window = self.settings.active_window_ms;
        let remembered = self.prune_counted(now);
        // A recent sign-out is kept even when the activity before it is old: an event of that
        // user arriving late, but older than the sign-out, must not bring them back. A user
        // counted at the end of a remembered minute is kept for the late events that may
        // revise it.
        self.users.retain(|_, presence| {
            presence.last_active > now - window
                || presence.last_signed_out > now - window
                || presence.counted & remembered != 0
        });
        self.recent_user_events.rotate(now, window);
        let oldest_second = now.div_euclid(SECOND_MS) - HOUR_SECS;
        let kept = self.seconds.split_off(&oldest_second);
        let dropped_gross = self
            .seconds
            .values()
            .fold(0i64, |sum, s| sum.saturating_add(s.gross_minor));
        self.seconds = kept;
        self.seconds_gross_minor = self.seconds_gross_minor.saturating_sub(dropped_gross);
        let today = local_date(now, self.settings.timezone);
        self.late.prune(today, Self::revised_since(now));
        let since = Self::sums_since(now);
        self.minutes = self.minutes.split_off(&minute_of(since));
        self.days = self
            .days
            .split_off(&local_date(since, self.settings.timezone));
    }
}

/// Start of the minute containing `at`.
pub fn minute_of(at: Millis) -> Millis {
    at - at.rem_euclid(MINUTE_MS)
}

/// The calendar date of `at` in `timezone`.
pub(crate) fn local_date(at: Millis, timezone: Tz) -> NaiveDate {
    match timezone.timestamp_millis_opt(at) {
        chrono::LocalResult::Single(t) => t.date_naive(),
        chrono::LocalResult::Ambiguous(t, _) => t.date_naive(),
        // An instant always maps to exactly one local time; this arm only exists for the type.
        chrono::LocalResult::None => chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.date_naive())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
