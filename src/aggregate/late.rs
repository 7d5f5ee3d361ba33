//! Late events: which events of a batch are late, what they revise in the minutes the leader
//! already closed, and the `trust` figures that count them (docs/api.md, Snapshot: `trust`).
//! Pure like the rest of `aggregate`; it extends [`Aggregator`] with the closing of minutes and
//! the judging of batches, and reads the users' registers ([`Presence`]) but not the sums.
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
//! ([`Aggregator::count_revision`]) and a new one reads it back ([`super::RestoreInput`]), so
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
//! same).

use super::presence::Presence;
use super::{
    local_date, minute_of, Aggregator, Event, EventKind, Millis, HOUR_SECS, MINUTE_MS, SECOND_MS,
};
use chrono::NaiveDate;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Minutes whose users counted active at their end the leader remembers, back from the last
/// one it closed: the hour of `trust.revised_minutes`. Each is one bit of a 64-bit mask, and
/// a minute 64 closes back shares its bit, so this must stay below 64.
pub(super) const COUNTED_MINUTES: i64 = 60;

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
pub(super) struct Late {
    per_day: BTreeMap<NaiveDate, u64>,
    revised: BTreeSet<Millis>,
}

impl Late {
    /// What a new leader reads back from the store (see [`super::RestoreInput`]).
    pub(super) fn restore(
        late_events: Vec<(NaiveDate, u64)>,
        revised_minutes: Vec<Millis>,
    ) -> Late {
        Late {
            per_day: late_events.into_iter().collect(),
            revised: revised_minutes.into_iter().collect(),
        }
    }

    /// Forgets the days before `today` and the minutes before `revised_since`.
    pub(super) fn prune(&mut self, today: NaiveDate, revised_since: Millis) {
        self.per_day = self.per_day.split_off(&today);
        self.revised = self.revised.split_off(&revised_since);
    }
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

impl Aggregator {
    /// The first minute `trust.revised_minutes` holds at `now`: the hour before `now`'s minute.
    pub(crate) fn revised_since(now: Millis) -> Millis {
        minute_of(now) - HOUR_SECS * SECOND_MS
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
    /// is closed, and they are not a repeat [`recognises`](Self::recognises) knows; a batch
    /// holds no id twice, see `ingest::pipeline`), and what the late ones change in the
    /// active users of the minutes this leader closed (see the module header). The changes
    /// are made to the masks now, so that the next batch is judged on top of them; the leader
    /// must not judge a batch holding late events while the one before it is committed but
    /// not applied (the registers would lack it), and a commit that fails ends the term,
    /// whose state is rebuilt from the store.
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

    /// Forgets the closed minutes before the hour of `trust.revised_minutes` and gives the
    /// bits of those still remembered: a user with one of them set is kept in memory for the
    /// late events that may revise that minute.
    pub(super) fn prune_counted(&mut self, now: Millis) -> u64 {
        self.counted = self.counted.split_off(&Self::revised_since(now));
        self.counted
            .iter()
            .fold(0u64, |mask, minute| mask | counted_bit(*minute))
    }
}

/// The bit of a user's `counted` mask that stands for `minute` (the minute's number modulo 64).
fn counted_bit(minute: Millis) -> u64 {
    1 << minute.div_euclid(MINUTE_MS).rem_euclid(64)
}
