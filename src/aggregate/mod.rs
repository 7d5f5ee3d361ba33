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
//!   last hour counted them active at its end (one 64-bit mask, see late events below);
//! - per second, orders and net revenue for the last hour: orders per minute and revenue last hour
//!   are sums over these (so windows are precise to one second);
//! - per local day and per minute, net revenue and orders: the same increments the store persists
//!   (see [`Delta`]), for every day and minute an acceptable event can still fall into (24 hours
//!   back), so that the aggregator knows every sum the store will add an event to.
//!
//! Money is bounded: an amount is at most [`MAX_AMOUNT_MINOR`] (docs/api.md, Events), and before an
//! event joins a batch [`Aggregator::admit`] checks that every sum it will add to (its minute, its
//! day, the trailing hour) stays representable, counting the events admitted but not yet committed.
//! An event that would overflow one is refused ([`Overflow`]) instead of wrapping a figure or
//! turning a database column into a floating-point number.
//!
//! A *late* event is one whose minute had already been closed when its batch was judged: the
//! leader closed it ([`Aggregator::close_minutes_before`]) and published its history point in a
//! snapshot as a whole minute, and the event revises it (its orders and revenue, like every
//! figure, are by event time). Lateness is decided against the minutes closed, never against the
//! clock, once per batch before it commits ([`Aggregator::judge`]): an event of 10:14:59.9 whose
//! batch starts committing at 10:15:00.1, before 10:14 was closed, is on time (the leader lands
//! the batch in flight before it closes a minute, so that batch is in the closed point). The
//! [`Judgement`] goes to the commit, which narrows it to the events it applied ([`Revision`]) and
//! stores it in the same transaction: the late events counted on the local day of the commit, the
//! revised minutes marked. The leader counts the same [`Revision`]
//! ([`Aggregator::count_revision`]) and a new one reads it back ([`RestoreInput`]), so
//! `trust` ([`Trust`]) survives a failover.
//!
//! A late event revises the users active at the end of the closed minutes it belongs to (any
//! event but a sign-out makes its user active, a sign-out removes them) where that is known
//! exactly. For that the leader remembers, for each minute it closed in the last hour (the
//! horizon of `trust.revised_minutes`), whether it counted each user active at its end: one bit
//! per minute in a 64-bit mask per user (8 bytes a user), and a user counted in one of those
//! minutes stays in memory until the hour has passed, even when inactive (so memory holds the
//! users of the last hour and the active window, not only of the window). The two registers
//! (latest activity, latest sign-out, once the batch is applied) decide the rest: a late activity
//! at `t` adds its user to each remembered minute end `e` with `t <= e < t + window` where they
//! were not counted, if their latest sign-out is before `t` (then none falls between `t` and
//! `e`; with one at or after `t`, an earlier one may fall between too, unknown, and the points
//! are left as they were); a late sign-out at `s` removes its user from each remembered end
//! `e >= s` where they were counted, if their latest activity is not after `s` (else they may
//! have been active again before `e`, and the points stay). Minutes a leader did not close
//! itself (its predecessor's, before a failover or restart) have no masks: a late event leaves
//! their active users as they were (a late order revises their orders and revenue all the
//! same). Comparisons with yesterday and
//! last week are in [`compare`].

pub(crate) mod compare;
mod event;

pub use compare::{same_time_earlier, Offset};
pub use event::{Event, EventKind, Millis};

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
/// Minutes whose users counted active at their end the leader remembers, back from the last
/// one it closed: the hour of `trust.revised_minutes`. Each is one bit of a 64-bit mask, and
/// a minute 64 closes back shares its bit, so this must stay below 64.
const COUNTED_MINUTES: i64 = 60;
/// Minutes and days are kept this long beyond [`MAX_AGE_MS`]: an event admitted at the edge of
/// the window, or a batch that lingers, still finds its sums in memory.
const SUMS_MARGIN_MS: Millis = 60 * MINUTE_MS;

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

/// What the figures' trustworthiness owes to late events (docs/api.md, Snapshot: `trust`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Trust {
    /// Late events applied since local midnight.
    pub late_events_today: u64,
    /// Minutes of the last hour whose history point a late event revised, oldest first.
    pub revised_minutes: Vec<Millis>,
}

/// Late events seen: how many were committed on each local day, and the minutes they revised.
#[derive(Debug, Clone, Default)]
struct Late {
    per_day: BTreeMap<NaiveDate, u64>,
    revised: BTreeSet<Millis>,
}

/// A batch's late events and what they change in the closed minutes' active users, decided
/// once before it commits ([`Aggregator::judge`]); the commit narrows it to the events it
/// applied ([`Judgement::revision`]). The default judges no event late.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Per event of the batch, in order: its minute was closed, and it is not a repeat the
    /// leader recognises (see [`Aggregator::recognises`]). Shorter than the batch (empty):
    /// the events beyond are on time.
    late: Vec<bool>,
    /// Changes to the users active at the end of closed minutes, by minute (none is 0).
    active_users: BTreeMap<Millis, i64>,
}

impl Judgement {
    /// `late` per event, and the changes to the closed minutes' active users (those of 0
    /// dropped): what [`Aggregator::judge`] decides, and what the store's tests give it.
    pub fn new(late: Vec<bool>, mut active_users: BTreeMap<Millis, i64>) -> Judgement {
        active_users.retain(|_, change| *change != 0);
        Judgement { late, active_users }
    }

    fn is_late(&self, index: usize) -> bool {
        self.late.get(index).copied().unwrap_or(false)
    }

    /// What the late events among those applied (`fresh`, per event) revise, counted on `day`
    /// (the local day of the commit): a late order or refund its minute's orders and revenue,
    /// and the changes to active users their minutes (whichever event brought them: a repeat's
    /// changes are none, see [`Aggregator::judge`]).
    pub fn revision(&self, events: &[Event], fresh: &[bool], day: NaiveDate) -> Revision {
        let mut revision = Revision {
            day,
            ..Revision::default()
        };
        for (index, (event, fresh)) in events.iter().zip(fresh).enumerate() {
            let late = *fresh && self.is_late(index);
            revision.late.push(late);
            if !late {
                continue;
            }
            revision.late_events += 1;
            if !event.tally().is_zero() {
                revision
                    .minutes
                    .entry(minute_of(event.occurred_at))
                    .or_insert(0);
            }
        }
        for (minute, change) in &self.active_users {
            *revision.minutes.entry(*minute).or_insert(0) += change;
        }
        revision
    }
}

/// What a committed batch's late events revised: its [`Judgement`] narrowed to the events the
/// commit applied. The store writes it in the batch's transaction, and the leader counts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revision {
    /// Per event of the batch: late, and applied.
    pub late: Vec<bool>,
    /// The local day (`PULSEBOARD_TIMEZONE`) they are counted on: the commit's.
    pub day: NaiveDate,
    pub late_events: u64,
    /// Every minute revised, with the change to the users active at its end (0: its orders
    /// and revenue only).
    pub minutes: BTreeMap<Millis, i64>,
}

/// One history point: a minute's orders and net revenue, and the users active at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub minute: Millis,
    pub orders: i64,
    pub revenue_minor: i64,
    pub active_users: u64,
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

/// One user's latest activity and latest sign-out by event time, as the store keeps them
/// (`None`: never seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPresence {
    pub user_id: String,
    pub last_active: Option<Millis>,
    pub last_signed_out: Option<Millis>,
    /// [`id_hash`] of the event that set each (0: unknown).
    pub active_id: i64,
    pub signed_out_id: i64,
}

#[derive(Debug, Clone, Copy)]
struct Presence {
    last_active: Millis,
    last_signed_out: Millis,
    /// A hash of the id of the first event applied at `last_active` (and at `last_signed_out`),
    /// 0 when unknown (restored from the store): what [`Aggregator::recognises`] compares.
    active_id: u64,
    signed_out_id: u64,
    /// Bit [`counted_bit`] of each minute the leader closed in the last hour
    /// (`Aggregator::counted`): set when this user was counted active at its end.
    counted: u64,
}

/// The id hash [`Presence`] keeps, and the store with it (never 0, which means unknown): the
/// first 8 bytes of the id's SHA-256 (stable across versions, unlike std's hasher).
pub fn id_hash(id: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

impl Presence {
    /// A user of whom nothing was applied yet.
    fn unseen() -> Presence {
        Presence {
            last_active: Millis::MIN,
            last_signed_out: Millis::MIN,
            active_id: 0,
            signed_out_id: 0,
            counted: 0,
        }
    }

    /// Moves the register `event` sets (its latest sign-out, or its latest activity for any
    /// other kind) to its `occurred_at` if that is later: last writer wins by event time.
    fn record(&mut self, event: &Event) {
        let (at, id) = match event.kind {
            EventKind::UserSignedOut => (&mut self.last_signed_out, &mut self.signed_out_id),
            _ => (&mut self.last_active, &mut self.active_id),
        };
        if event.occurred_at > *at {
            *at = event.occurred_at;
            *id = id_hash(&event.id);
        }
    }

    fn is_active(&self, now: Millis, window: Millis) -> bool {
        // A sign-out at the same instant as the last activity wins: it is the user's last word.
        self.last_active > self.last_signed_out && self.last_active > now - window
    }
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
    /// The minutes this leader closed in the last hour ([`COUNTED_MINUTES`]): each user's
    /// `counted` bit of them says whether they were counted active at its end.
    counted: BTreeSet<Millis>,
}

impl Aggregator {
    pub(crate) fn new(settings: AggregateSettings) -> Self {
        Self {
            settings,
            users: HashMap::new(),
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
        aggregator.late.per_day = input.late_events.into_iter().collect();
        aggregator.late.revised = input.revised_minutes.into_iter().collect();
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

    /// The first minute `trust.revised_minutes` holds at `now`: the hour before `now`'s minute.
    pub(crate) fn revised_since(now: Millis) -> Millis {
        minute_of(now) - HOUR_SECS * SECOND_MS
    }

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

    /// Records that every minute before `minute` is closed: its history point was (or is about
    /// to be, in the same tick) published as a whole minute. Events of those minutes are late
    /// from now on. Never moves back.
    pub(crate) fn close_minutes_before(&mut self, minute: Millis) {
        self.open_from = self.open_from.max(minute);
    }

    /// Whether the minute of `at` is closed: an event of it is late.
    pub(crate) fn is_closed(&self, at: Millis) -> bool {
        minute_of(at) < self.open_from
    }

    /// The users active at the end of `minute`, its history point's, which the leader is about
    /// to store: remembers who they were, for the hour in which a late event may revise them.
    pub(crate) fn close_minute(&mut self, minute: Millis) -> u64 {
        let end = minute + MINUTE_MS - 1;
        let window = self.settings.active_window_ms;
        let bit = counted_bit(minute);
        let mut active = 0;
        for presence in self.users.values_mut() {
            if presence.is_active(end, window) {
                presence.counted |= bit;
                active += 1;
            } else {
                presence.counted &= !bit;
            }
        }
        self.counted.insert(minute);
        self.counted = self
            .counted
            .split_off(&(minute - (COUNTED_MINUTES - 1) * MINUTE_MS));
        active
    }

    /// Decides, once and before the batch commits, which of `events` are late (their minute
    /// is closed, and they are not a repeat [`recognises`](Self::recognises) knows), and what
    /// the late ones change in the active users of the minutes this leader closed (see the
    /// module header). The changes are made to the masks now, so that the next batch is
    /// judged on top of them; the leader must not judge a batch holding late events while
    /// the one before it is committed but not applied (the registers would lack it), and a
    /// commit that fails ends the term, whose state is rebuilt from the store.
    ///
    /// A repeat of an event already applied (a redelivered order that the commit will find a
    /// duplicate) changes nothing here: its first copy set the masks or the registers they
    /// were made from. So the changes hold whichever events the commit finds new.
    pub(crate) fn judge(&mut self, events: &[Event]) -> Judgement {
        let late: Vec<bool> = events
            .iter()
            .map(|event| self.is_closed(event.occurred_at) && !self.recognises(event))
            .collect();
        if !late.contains(&true) {
            return Judgement::default();
        }
        // Each user's registers once the whole batch is applied: judged against these, a
        // late activity and a late sign-out of one user never touch the same minute (one
        // adds only when every sign-out is before it, the other removes only when every
        // activity is not after it), so the order of the batch does not matter.
        let mut latest: HashMap<&str, Presence> = HashMap::new();
        for event in events {
            latest
                .entry(event.user_id.as_str())
                .or_insert_with(|| {
                    self.users
                        .get(&event.user_id)
                        .copied()
                        .unwrap_or_else(Presence::unseen)
                })
                .record(event);
        }
        let mut active_users = BTreeMap::new();
        for (event, _) in events.iter().zip(&late).filter(|(_, late)| **late) {
            let registers = latest[event.user_id.as_str()];
            self.revise_counted(event, &registers, &mut active_users);
        }
        Judgement::new(late, active_users)
    }

    /// What one late event changes in the remembered minutes' active users (see the module
    /// header), given its user's registers once the batch is applied; adds the changes to
    /// `changes` and makes them to the user's mask.
    fn revise_counted(
        &mut self,
        event: &Event,
        registers: &Presence,
        changes: &mut BTreeMap<Millis, i64>,
    ) {
        let at = event.occurred_at;
        let window = self.settings.active_window_ms;
        let signs_out = event.kind == EventKind::UserSignedOut;
        // Removing needs a sign-out after everything the user did; adding, an activity after
        // every sign-out. Otherwise a register that moved on hides what happened in between.
        if (signs_out && registers.last_active > at)
            || (!signs_out && registers.last_signed_out >= at)
        {
            return;
        }
        let minutes: Vec<Millis> = self
            .counted
            .range(minute_of(at)..)
            .copied()
            .take_while(|minute| signs_out || minute + MINUTE_MS - 1 < at + window)
            .collect();
        if minutes.is_empty() {
            return;
        }
        // A user not in memory was never counted: nothing to remove; a late activity may be
        // their first trace.
        if signs_out && !self.users.contains_key(&event.user_id) {
            return;
        }
        let presence = self
            .users
            .entry(event.user_id.clone())
            .or_insert_with(Presence::unseen);
        for minute in minutes {
            let bit = counted_bit(minute);
            let counted = presence.counted & bit != 0;
            if counted == signs_out {
                presence.counted ^= bit;
                *changes.entry(minute).or_insert(0) += if signs_out { -1 } else { 1 };
            }
        }
    }

    /// Counts a committed batch's late events on the day of its commit and remembers the
    /// minutes they revised: the same [`Revision`] the store wrote with the batch.
    pub(crate) fn count_revision(&mut self, revision: &Revision) {
        if revision.late_events > 0 {
            *self.late.per_day.entry(revision.day).or_default() += revision.late_events;
        }
        self.late.revised.extend(revision.minutes.keys().copied());
    }

    /// Late events of today, and the minutes of the hour before `now`'s minute they revised.
    pub(crate) fn trust(&self, now: Millis) -> Trust {
        let today = local_date(now, self.settings.timezone);
        Trust {
            late_events_today: self.late.per_day.get(&today).copied().unwrap_or(0),
            revised_minutes: self
                .late
                .revised
                .range(Self::revised_since(now)..)
                .copied()
                .collect(),
        }
    }

    /// Whether `event` repeats one already applied, as far as memory tells: a user event (of
    /// a kind that has no id record in the store) of the same user, kind, `occurred_at` and id
    /// as the one that set that user's latest activity, or latest sign-out. Applying it again
    /// would change nothing, so it counts as a duplicate. Not recognised: a repeat of an
    /// earlier event of the user, of a user the aggregator has forgotten (inactive beyond the
    /// window), or of one applied before a restore (the store keeps no ids of user events):
    /// the count of user-kind duplicates is best-effort while their effect is exact
    /// (docs/events.md). Orders are never judged here: the store's id records decide them.
    pub(crate) fn recognises(&self, event: &Event) -> bool {
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
        self.counted = self.counted.split_off(&Self::revised_since(now));
        let remembered = self
            .counted
            .iter()
            .fold(0u64, |mask, minute| mask | counted_bit(*minute));
        // A recent sign-out is kept even when the activity before it is old: an event of that
        // user arriving late, but older than the sign-out, must not bring them back. A user
        // counted at the end of a remembered minute is kept for the late events that may
        // revise it.
        self.users.retain(|_, presence| {
            presence.last_active > now - window
                || presence.last_signed_out > now - window
                || presence.counted & remembered != 0
        });
        let oldest_second = now.div_euclid(SECOND_MS) - HOUR_SECS;
        let kept = self.seconds.split_off(&oldest_second);
        let dropped_gross = self
            .seconds
            .values()
            .fold(0i64, |sum, s| sum.saturating_add(s.gross_minor));
        self.seconds = kept;
        self.seconds_gross_minor = self.seconds_gross_minor.saturating_sub(dropped_gross);
        let today = local_date(now, self.settings.timezone);
        self.late.per_day = self.late.per_day.split_off(&today);
        self.late.revised = self.late.revised.split_off(&Self::revised_since(now));
        let since = Self::sums_since(now);
        self.minutes = self.minutes.split_off(&minute_of(since));
        self.days = self
            .days
            .split_off(&local_date(since, self.settings.timezone));
    }
}

/// Orders and refunds admitted but not yet applied: any sum may still gain all of the first
/// and lose all of the second.
#[derive(Debug, Clone, Copy, Default)]
struct InFlight {
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

/// The bit of a user's `counted` mask that stands for `minute` (the minute's number modulo 64).
fn counted_bit(minute: Millis) -> u64 {
    1 << minute.div_euclid(MINUTE_MS).rem_euclid(64)
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
