use super::*;
use chrono::{DateTime, NaiveDate};

const WINDOW_MS: Millis = 300_000;

fn at(rfc3339: &str) -> Millis {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test timestamps are valid")
        .timestamp_millis()
}

fn settings(timezone: Tz) -> AggregateSettings {
    AggregateSettings {
        active_window_ms: WINDOW_MS,
        timezone,
    }
}

fn event(id: &str, kind: EventKind, occurred_at: Millis, user: &str) -> Event {
    Event {
        id: id.into(),
        kind,
        occurred_at,
        user_id: user.into(),
    }
}

fn placed(id: &str, amount_minor: i64, occurred_at: Millis, user: &str) -> Event {
    event(
        id,
        EventKind::OrderPlaced { amount_minor },
        occurred_at,
        user,
    )
}

fn refunded(id: &str, amount_minor: i64, occurred_at: Millis, user: &str) -> Event {
    event(
        id,
        EventKind::OrderRefunded { amount_minor },
        occurred_at,
        user,
    )
}

fn aggregate(events: &[Event], timezone: Tz) -> Aggregator {
    let mut aggregator = Aggregator::new(settings(timezone));
    for e in events {
        aggregator.apply(e);
    }
    aggregator
}

#[test]
fn orders_and_refunds_make_net_revenue_and_order_rate() {
    let now = at("2026-11-23T10:15:30Z");
    let events = [
        placed("a", 1999, now - 10_000, "u1"),
        placed("b", 500, now - 20_000, "u2"),
        refunded("c", 300, now - 5_000, "u1"),
    ];
    let figures = aggregate(&events, Tz::UTC).figures(now);
    assert_eq!(figures.orders_per_minute, 2);
    assert_eq!(figures.revenue_today_minor, 2199);
    assert_eq!(figures.revenue_last_hour_minor, 2199);
    assert_eq!(figures.active_users, 2);
    assert_eq!(figures.point.minute, at("2026-11-23T10:15:00Z"));
    assert_eq!(figures.point.orders, 2);
    assert_eq!(figures.point.revenue_minor, 2199);
}

#[test]
fn trailing_windows_drop_old_orders() {
    let now = at("2026-11-23T10:15:30Z");
    let events = [
        placed("recent", 100, now - 59_000, "u1"),
        placed("two-minutes", 200, now - 120_000, "u1"),
        placed("two-hours", 400, now - 2 * 3_600_000, "u1"),
    ];
    let figures = aggregate(&events, Tz::UTC).figures(now);
    assert_eq!(figures.orders_per_minute, 1);
    assert_eq!(figures.revenue_last_hour_minor, 300);
    assert_eq!(figures.revenue_today_minor, 700);
}

#[test]
fn a_user_is_active_within_the_window_only() {
    let now = at("2026-11-23T10:15:30Z");
    let events = [
        event(
            "in",
            EventKind::UserActive,
            now - WINDOW_MS + 1_000,
            "inside",
        ),
        event(
            "out",
            EventKind::UserActive,
            now - WINDOW_MS - 1_000,
            "outside",
        ),
        event("other", EventKind::Other, now - 1_000, "shipper"),
    ];
    assert_eq!(aggregate(&events, Tz::UTC).figures(now).active_users, 2);
}

#[test]
fn sign_out_removes_a_user_until_their_next_event() {
    let now = at("2026-11-23T10:15:30Z");
    let mut events = vec![
        event("a", EventKind::UserActive, now - 60_000, "u1"),
        event("b", EventKind::UserSignedOut, now - 30_000, "u1"),
    ];
    assert_eq!(aggregate(&events, Tz::UTC).figures(now).active_users, 0);
    events.push(event("c", EventKind::UserActive, now - 10_000, "u1"));
    assert_eq!(aggregate(&events, Tz::UTC).figures(now).active_users, 1);
}

#[test]
fn figures_do_not_depend_on_arrival_order() {
    let now = at("2026-11-23T10:15:30Z");
    let events = vec![
        event("a", EventKind::UserActive, now - 60_000, "u1"),
        event("b", EventKind::UserSignedOut, now - 30_000, "u1"),
        placed("c", 700, now - 90_000, "u2"),
        refunded("d", 200, now - 10_000, "u2"),
        event("e", EventKind::UserActive, now - 5_000, "u3"),
    ];
    let forward = aggregate(&events, Tz::UTC).figures(now);
    let mut reversed = events.clone();
    reversed.reverse();
    assert_eq!(aggregate(&reversed, Tz::UTC).figures(now), forward);
    assert_eq!(forward.active_users, 2);
}

#[test]
fn late_events_count_in_history_and_revenue_but_never_make_a_user_active() {
    let now = at("2026-11-23T10:15:30Z");
    let late = placed("late", 1_000, now - 2 * 3_600_000, "sleeper");
    let aggregator = aggregate(std::slice::from_ref(&late), Tz::UTC);
    let figures = aggregator.figures(now);
    assert_eq!(figures.active_users, 0);
    assert_eq!(figures.revenue_today_minor, 1_000);
    assert_eq!(figures.revenue_last_hour_minor, 0);
    let delta = Delta::of([&late], Tz::UTC);
    assert_eq!(
        delta.minutes.get(&at("2026-11-23T08:15:00Z")),
        Some(&Tally {
            orders: 1,
            revenue_minor: 1_000
        })
    );
}

#[test]
fn today_follows_the_configured_timezone() {
    let new_york: Tz = "America/New_York".parse().expect("known zone");
    // 03:00 UTC on the 24th is still the 23rd in New York (UTC-5).
    let now = at("2026-11-24T03:00:00Z");
    let events = [
        placed("yesterday-utc", 100, at("2026-11-23T06:00:00Z"), "u"),
        placed("today-local", 200, at("2026-11-23T23:00:00Z"), "u"),
        placed(
            "before-local-midnight",
            400,
            at("2026-11-23T04:59:59Z"),
            "u",
        ),
    ];
    assert_eq!(
        aggregate(&events, new_york)
            .figures(now)
            .revenue_today_minor,
        300
    );
    assert_eq!(
        aggregate(&events, Tz::UTC).figures(now).revenue_today_minor,
        0
    );
    assert_eq!(
        local_date(at("2026-11-23T04:59:59Z"), new_york),
        NaiveDate::from_ymd_opt(2026, 11, 22).expect("valid date")
    );
}

#[test]
fn future_events_within_the_tolerance_count_as_now() {
    let now = at("2026-11-23T10:15:30Z");
    let events = [placed("ahead", 100, now + 60_000, "u1")];
    let figures = aggregate(&events, Tz::UTC).figures(now);
    assert_eq!(figures.orders_per_minute, 1);
    assert_eq!(figures.active_users, 1);
}

#[test]
fn restore_from_stored_effects_gives_the_same_figures() {
    let now = at("2026-11-23T10:15:30Z");
    let events = vec![
        placed("a", 1999, now - 10_000, "u1"),
        refunded("b", 500, now - 3 * 3_600_000, "u2"),
        event("c", EventKind::UserActive, now - 100_000, "u3"),
        event("d", EventKind::UserSignedOut, now - 50_000, "u3"),
        placed("e", 250, now - 1_800_000, "u4"),
    ];
    let live = aggregate(&events, Tz::UTC);
    let delta = Delta::of(&events, Tz::UTC);
    let horizon = live.restore_horizon_ms();
    let restored = Aggregator::restore(
        settings(Tz::UTC),
        RestoreInput {
            days: delta.days.into_iter().collect(),
            minutes: delta.minutes.into_iter().collect(),
            ..stored(&events, now - horizon)
        },
    );
    assert_eq!(restored.figures(now), live.figures(now));
}

/// What the store keeps of `events` for a restore: one presence per user (latest activity and
/// sign-out) and the orders and refunds that occurred after `since`.
fn stored(events: &[Event], since: Millis) -> RestoreInput {
    let mut users: std::collections::BTreeMap<String, StoredPresence> = Default::default();
    for event in events {
        let user = users
            .entry(event.user_id.clone())
            .or_insert(StoredPresence {
                user_id: event.user_id.clone(),
                last_active: None,
                last_signed_out: None,
                active_id: 0,
                signed_out_id: 0,
            });
        let (slot, id) = match event.kind {
            EventKind::UserSignedOut => (&mut user.last_signed_out, &mut user.signed_out_id),
            _ => (&mut user.last_active, &mut user.active_id),
        };
        if Some(event.occurred_at) > *slot {
            *slot = Some(event.occurred_at);
            *id = id_hash(&event.id) as i64;
        }
    }
    RestoreInput {
        users: users.into_values().collect(),
        recent_orders: events
            .iter()
            .filter(|e| e.occurred_at > since && e.kind.amount_minor() != 0)
            .map(|e| (e.occurred_at, e.kind.clone()))
            .collect(),
        ..RestoreInput::default()
    }
}

#[test]
fn a_user_event_seen_before_is_recognised_and_an_order_never_is() {
    let now = at("2026-11-23T10:15:30Z");
    let active = event("a", EventKind::UserActive, now - 10_000, "u1");
    let signed_out = event("s", EventKind::UserSignedOut, now - 20_000, "u1");
    let order = placed("o", 5, now - 10_000, "u2");
    let aggregator = aggregate(
        &[active.clone(), signed_out.clone(), order.clone()],
        Tz::UTC,
    );
    assert!(aggregator.recognises(&active));
    // Another event of the same user, kind and instant is not a repeat (it is applied again,
    // which changes nothing either).
    let mut twin = active.clone();
    twin.id = "a-twin".into();
    assert!(!aggregator.recognises(&twin));
    assert!(aggregator.recognises(&signed_out));
    assert!(!aggregator.recognises(&order), "the store decides orders");
    let later = event("b", EventKind::UserActive, now - 5_000, "u1");
    assert!(!aggregator.recognises(&later));
    let stranger = event("c", EventKind::UserActive, now - 10_000, "u9");
    assert!(!aggregator.recognises(&stranger));
}

/// A sign-out redelivered after a later activity of the same user leaves them active, live
/// and after a restore from what the store keeps.
#[test]
fn a_sign_out_older_than_the_last_activity_does_not_remove_the_user() {
    let now = at("2026-11-23T10:15:30Z");
    let signed_out = event("s", EventKind::UserSignedOut, now - 20_000, "u1");
    let active = event("a", EventKind::UserActive, now - 10_000, "u1");
    let events = [signed_out.clone(), active, signed_out];
    let live = aggregate(&events, Tz::UTC);
    assert_eq!(live.figures(now).active_users, 1);
    let restored = Aggregator::restore(settings(Tz::UTC), stored(&events, now - 3_600_000));
    assert_eq!(restored.figures(now).active_users, 1);
    // The latest of each is still recognised after the restore.
    assert!(restored.recognises(&events[1]) && restored.recognises(&events[2]));
}

/// Pruning keeps a recent sign-out whose user's activity is older than the window: a late
/// event between the two must not bring them back.
#[test]
fn pruning_keeps_a_recent_sign_out() {
    let now = at("2026-11-23T10:15:30Z");
    let window = settings(Tz::UTC).active_window_ms;
    let mut aggregator = aggregate(
        &[
            event("a", EventKind::UserActive, now - window - 60_000, "u1"),
            event("s", EventKind::UserSignedOut, now - 10_000, "u1"),
        ],
        Tz::UTC,
    );
    aggregator.prune(now);
    aggregator.apply(&event("late", EventKind::UserActive, now - 20_000, "u1"));
    assert_eq!(aggregator.figures(now).active_users, 0);
}

#[test]
fn pruning_keeps_the_figures_and_bounds_memory() {
    let now = at("2026-11-23T10:15:30Z");
    let events: Vec<Event> = (0..5_000)
        .map(|i| placed(&format!("e{i}"), 10, now - i * 1_000, &format!("u{i}")))
        .collect();
    let mut aggregator = aggregate(&events, Tz::UTC);
    let before = aggregator.figures(now);
    aggregator.prune(now);
    assert_eq!(aggregator.figures(now), before);
    assert!(aggregator.users.len() <= 301, "{}", aggregator.users.len());
    assert!(
        aggregator.seconds.len() <= 3_601,
        "{}",
        aggregator.seconds.len()
    );
}

#[test]
fn delta_sums_per_minute_and_day_and_skips_non_orders() {
    let base = at("2026-11-23T10:15:00Z");
    let events = [
        placed("a", 100, base + 1_000, "u"),
        placed("b", 200, base + 59_000, "u"),
        refunded("c", 50, base + 61_000, "u"),
        event("d", EventKind::UserActive, base + 2_000, "u"),
    ];
    let delta = Delta::of(&events, Tz::UTC);
    assert_eq!(delta.minutes.len(), 2);
    assert_eq!(
        delta.minutes[&base],
        Tally {
            orders: 2,
            revenue_minor: 300
        }
    );
    assert_eq!(
        delta.minutes[&(base + MINUTE_MS)],
        Tally {
            orders: 0,
            revenue_minor: -50
        }
    );
    assert_eq!(delta.days.values().sum::<i64>(), 250);
}

/// An aggregator whose day and minute sums for `at` already hold `sum` (as after a restore).
fn holding(sum: i64, at: Millis) -> Aggregator {
    Aggregator::restore(
        settings(Tz::UTC),
        RestoreInput {
            days: vec![(local_date(at, Tz::UTC), sum)],
            minutes: vec![(
                minute_of(at),
                Tally {
                    orders: 1,
                    revenue_minor: sum,
                },
            )],
            ..RestoreInput::default()
        },
    )
}

#[test]
fn an_order_that_would_overflow_its_day_is_refused_and_changes_nothing() {
    let now = at("2026-11-23T10:15:30Z");
    let mut aggregator = holding(i64::MAX - MAX_AMOUNT_MINOR + 1, now);
    let before = aggregator.figures(now);
    let order = placed("a", MAX_AMOUNT_MINOR, now, "u1");
    let refused = aggregator.admit(&order).expect_err("no room");
    assert!(matches!(refused.figure, Figure::Day(_)), "{refused}");
    assert_eq!(aggregator.figures(now), before);
    // A refund fits: the day's net falls.
    let refund = refunded("b", MAX_AMOUNT_MINOR, now, "u1");
    aggregator.admit(&refund).expect("a refund lowers the sum");
    aggregator.apply(&refund);
    aggregator.release([&refund]);
    assert_eq!(
        aggregator.figures(now).revenue_today_minor,
        i64::MAX - 2 * MAX_AMOUNT_MINOR + 1
    );
}

#[test]
fn a_negative_day_is_bounded_too() {
    let now = at("2026-11-23T10:15:30Z");
    let mut aggregator = holding(i64::MIN + MAX_AMOUNT_MINOR - 1, now);
    let refund = refunded("a", MAX_AMOUNT_MINOR, now, "u1");
    assert!(aggregator.admit(&refund).is_err());
}

#[test]
fn events_admitted_but_not_yet_applied_take_room_until_released() {
    let now = at("2026-11-23T10:15:30Z");
    let mut aggregator = holding(i64::MAX - 2 * MAX_AMOUNT_MINOR, now);
    let first = placed("a", MAX_AMOUNT_MINOR, now, "u1");
    let second = placed("b", MAX_AMOUNT_MINOR, now, "u2");
    let third = placed("c", MAX_AMOUNT_MINOR, now, "u3");
    aggregator.admit(&first).expect("room for one");
    aggregator.admit(&second).expect("room for two");
    assert!(aggregator.admit(&third).is_err(), "two are in flight");
    // The batch is dropped (its messages come back from the broker): the room comes back.
    aggregator.release([&first, &second]);
    aggregator.admit(&third).expect("room again");
    aggregator.apply(&third);
    aggregator.release([&third]);
    assert_eq!(
        aggregator.figures(now).revenue_today_minor,
        i64::MAX - MAX_AMOUNT_MINOR
    );
}

#[test]
fn the_last_hour_is_bounded_by_its_gross() {
    let now = at("2026-11-23T10:15:30Z");
    // An order and a refund that cancel out in every net sum, in seconds of the last hour of
    // different days, with a gross near the limit (as a restore from an earlier version could
    // bring back: the ceiling on amounts is the decoder's).
    let mut aggregator = Aggregator::restore(
        settings(Tz::UTC),
        RestoreInput {
            recent_orders: vec![
                (
                    now - 1_000,
                    EventKind::OrderPlaced {
                        amount_minor: i64::MAX / 2,
                    },
                ),
                (
                    now - 2_000,
                    EventKind::OrderRefunded {
                        amount_minor: i64::MAX / 2,
                    },
                ),
            ],
            ..RestoreInput::default()
        },
    );
    let order = placed("a", MAX_AMOUNT_MINOR, now - 3_000, "u");
    let refused = aggregator
        .admit(&order)
        .expect_err("the hour's gross is full");
    assert_eq!(refused.figure, Figure::LastHour);
    assert_eq!(aggregator.figures(now).revenue_last_hour_minor, 0);
    // An hour later those seconds are pruned and their room comes back.
    let later = now + 3_600_000 + 10_000;
    aggregator.prune(later);
    let order = placed("b", MAX_AMOUNT_MINOR, later, "u");
    aggregator.admit(&order).expect("room after pruning");
}

#[test]
fn sums_stay_known_for_every_minute_an_acceptable_event_can_reach() {
    let now = at("2026-11-23T10:15:30Z");
    let old = now - MAX_AGE_MS + MINUTE_MS;
    let mut aggregator = holding(i64::MAX, old);
    aggregator.prune(now);
    let late = placed("late", 1, old, "u");
    let refused = aggregator
        .admit(&late)
        .expect_err("the old minute is still known");
    assert!(matches!(refused.figure, Figure::Day(_) | Figure::Minute(_)));
    assert!(Aggregator::sums_since(now) <= now - MAX_AGE_MS);
}

mod overflow_properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Order(i64, i64),
        Refund(i64, i64),
        /// Commit and apply what is in flight.
        Commit,
        /// Drop what is in flight (a lost broker link).
        Drop,
    }

    fn step() -> impl Strategy<Value = Step> {
        let amount = prop_oneof![0..=MAX_AMOUNT_MINOR, Just(MAX_AMOUNT_MINOR)];
        let offset = 0..7_200_000i64;
        prop_oneof![
            4 => (amount.clone(), offset.clone()).prop_map(|(a, o)| Step::Order(a, o)),
            2 => (amount, offset).prop_map(|(a, o)| Step::Refund(a, o)),
            1 => Just(Step::Commit),
            1 => Just(Step::Drop),
        ]
    }

    proptest! {
        /// Starting from sums near either limit, whatever is admitted and applied, every figure
        /// equals its exact (128-bit) sum: nothing wraps, nothing saturates.
        #[test]
        fn admitted_events_never_overflow_a_figure(
            start in prop_oneof![
                Just(i64::MAX - 3 * MAX_AMOUNT_MINOR),
                Just(i64::MIN + 3 * MAX_AMOUNT_MINOR),
                Just(0i64),
            ],
            steps in proptest::collection::vec(step(), 1..60),
        ) {
            let now = at("2026-11-23T10:15:30Z");
            let mut aggregator = holding(start, now);
            let mut in_flight: Vec<Event> = Vec::new();
            let mut today = i128::from(start);
            for (n, step) in steps.into_iter().enumerate() {
                let event = match step {
                    Step::Order(amount, offset) => placed(&n.to_string(), amount, now - offset, "u"),
                    Step::Refund(amount, offset) => refunded(&n.to_string(), amount, now - offset, "u"),
                    Step::Commit => {
                        for event in &in_flight {
                            aggregator.apply(event);
                            if local_date(event.occurred_at, Tz::UTC) == local_date(now, Tz::UTC) {
                                today += i128::from(event.tally().revenue_minor);
                            }
                        }
                        aggregator.release(&in_flight);
                        in_flight.clear();
                        continue;
                    }
                    Step::Drop => {
                        aggregator.release(&in_flight);
                        in_flight.clear();
                        continue;
                    }
                };
                if aggregator.admit(&event).is_ok() {
                    in_flight.push(event);
                }
            }
            let figures = aggregator.figures(now);
            prop_assert_eq!(i128::from(figures.revenue_today_minor), today);
        }
    }
}

/// What the leader does with a batch the store finds wholly new: judges it before the commit,
/// narrows the judgement as the commit does (every event applied, counted on `now`'s day),
/// counts the revision and applies the events.
fn land(aggregator: &mut Aggregator, events: &[Event], now: Millis) -> Revision {
    let judgement = aggregator.judge(events);
    let fresh = vec![true; events.len()];
    let day = local_date(now, aggregator.settings.timezone);
    let revision = judgement.revision(events, &fresh, day);
    aggregator.count_revision(&revision);
    for event in events {
        aggregator.apply(event);
    }
    revision
}

/// Closes `minute` as the leader's tick does: its users active at its end, then the minutes
/// before the next one closed.
fn close(aggregator: &mut Aggregator, minute: Millis) -> u64 {
    let active = aggregator.close_minute(minute);
    aggregator.close_minutes_before(minute + MINUTE_MS);
    active
}

/// Closes every minute of `[from, to)`, returning the users active at each end.
fn close_each(aggregator: &mut Aggregator, from: Millis, to: Millis) -> Vec<u64> {
    (0..)
        .map(|n| from + n * MINUTE_MS)
        .take_while(|minute| *minute < to)
        .map(|minute| close(aggregator, minute))
        .collect()
}

/// `(minute, change)` for the minutes from `from`, `count` of them, each changed by `change`.
fn changes(from: Millis, count: i64, change: i64) -> Vec<(Millis, i64)> {
    (0..count).map(|n| (from + n * MINUTE_MS, change)).collect()
}

fn active(id: &str, occurred_at: Millis, user: &str) -> Event {
    event(id, EventKind::UserActive, occurred_at, user)
}

fn signed_out(id: &str, occurred_at: Millis, user: &str) -> Event {
    event(id, EventKind::UserSignedOut, occurred_at, user)
}

#[test]
fn an_event_of_a_minute_already_ended_is_late_and_revises_that_minute() {
    let now = at("2026-11-23T10:15:30Z");
    let mut aggregator = Aggregator::new(settings(Tz::UTC));
    aggregator.close_minutes_before(minute_of(now));
    // In the current minute: on time. In 10:12, 10:13 (an order and a refund) and an activity
    // in 10:14: late.
    let revised = at("2026-11-23T10:12:00Z");
    let batch = [
        placed("a", 100, now - 20_000, "u1"),
        placed("b", 500, revised + 5_000, "u2"),
        refunded("c", 200, revised + 61_000, "u2"),
        active("d", revised + 125_000, "u3"),
    ];
    let revision = land(&mut aggregator, &batch, now);
    assert_eq!(revision.late, vec![false, true, true, true]);
    assert_eq!(revision.late_events, 3);
    let trust = aggregator.trust(now);
    assert_eq!(trust.late_events_today, 3);
    // The order and the refund revise their minutes' points; the activity is counted, but no
    // minute this leader closed remembers who was active at its end (it closed none), so it
    // revises none.
    assert_eq!(trust.revised_minutes, vec![revised, revised + MINUTE_MS]);
    assert_eq!(
        revision.minutes,
        BTreeMap::from([(revised, 0), (revised + MINUTE_MS, 0)])
    );
    // The revision is in the figures: revenue today and last hour hold the late amounts.
    let figures = aggregator.figures(now);
    assert_eq!(figures.revenue_today_minor, 100 + 500 - 200);
    assert_eq!(figures.revenue_last_hour_minor, 400);
    assert_eq!(figures.active_users, 3);
    // The revised minutes' own points hold the late order and refund.
    let point = aggregator.figures(revised + 30_000).point;
    assert_eq!((point.orders, point.revenue_minor), (1, 500));
    let point = aggregator.figures(revised + MINUTE_MS + 30_000).point;
    assert_eq!((point.orders, point.revenue_minor), (0, -200));

    // An hour later the minutes are no longer "of the last hour"; the count stays for the day.
    let later = now + 61 * MINUTE_MS;
    aggregator.prune(later);
    let trust = aggregator.trust(later);
    assert_eq!(trust.revised_minutes, Vec::<Millis>::new());
    assert_eq!(trust.late_events_today, 3);
}

#[test]
fn a_late_event_the_commit_found_a_duplicate_is_not_counted() {
    let now = at("2026-11-23T10:15:30Z");
    let mut aggregator = Aggregator::new(settings(Tz::UTC));
    aggregator.close_minutes_before(minute_of(now));
    let batch = [
        placed("a", 100, now - 180_000, "u1"),
        placed("b", 1, now, "u1"),
    ];
    let judgement = aggregator.judge(&batch);
    // The store knew "a" already: a redelivery of a batch that was committed.
    let revision = judgement.revision(&batch, &[false, true], local_date(now, Tz::UTC));
    assert_eq!(revision.late, vec![false, false]);
    assert_eq!(revision.late_events, 0);
    assert!(revision.minutes.is_empty(), "{revision:?}");
    aggregator.count_revision(&revision);
    assert_eq!(aggregator.trust(now), Trust::default());
}

#[test]
fn late_events_today_start_again_at_local_midnight() {
    let tz: Tz = chrono_tz::America::New_York;
    // 23:59:30 in New York is 04:59:30 UTC the next day.
    let evening = at("2026-11-23T23:59:30-05:00");
    let mut aggregator = Aggregator::new(settings(tz));
    aggregator.close_minutes_before(minute_of(evening));
    land(
        &mut aggregator,
        &[placed("a", 1, evening - 120_000, "u")],
        evening,
    );
    assert_eq!(aggregator.trust(evening).late_events_today, 1);
    let after_midnight = at("2026-11-24T00:00:30-05:00");
    assert_eq!(aggregator.trust(after_midnight).late_events_today, 0);
    // Revised minutes are of the last hour, whichever day they fall on.
    assert_eq!(
        aggregator.trust(after_midnight).revised_minutes,
        vec![minute_of(evening - 120_000)]
    );
    aggregator.close_minutes_before(minute_of(after_midnight));
    let revision = land(
        &mut aggregator,
        &[placed("b", 1, evening, "u")],
        after_midnight,
    );
    assert_eq!(
        revision.day,
        NaiveDate::from_ymd_opt(2026, 11, 24).expect("a day")
    );
    assert_eq!(aggregator.trust(after_midnight).late_events_today, 1);
}

#[test]
fn an_event_of_the_last_instant_of_a_minute_judged_before_it_closed_is_on_time() {
    let minute = at("2026-11-23T10:14:00Z");
    let next = minute + MINUTE_MS;
    let mut aggregator = Aggregator::new(settings(Tz::UTC));
    aggregator.close_minutes_before(minute);
    // Arrived at 10:14:59.9, its batch judged at 10:15:00.1 before the tick closed 10:14.
    let revision = land(
        &mut aggregator,
        &[placed("a", 100, next - 100, "u1")],
        next + 100,
    );
    assert_eq!(revision.late_events, 0);
    assert_eq!(aggregator.trust(next + 100), Trust::default());
    // The leader closes 10:14 (and publishes it whole): an event of it is late from then on.
    close(&mut aggregator, minute);
    land(
        &mut aggregator,
        &[placed("b", 100, next - 50, "u1")],
        next + 200,
    );
    let trust = aggregator.trust(next + 200);
    assert_eq!(trust.late_events_today, 1);
    assert_eq!(trust.revised_minutes, vec![minute]);
    // Closing never moves back.
    aggregator.close_minutes_before(minute);
    let revision = land(
        &mut aggregator,
        &[placed("c", 100, next - 10, "u1")],
        next + 300,
    );
    assert_eq!(revision.late_events, 1);
}

/// 10:00 to 10:09 closed, with u1 active at 10:00:10: counted at the ends of 10:00 to 10:04
/// (the window is 5 minutes).
fn ten_minutes_closed() -> (Aggregator, Millis) {
    let start = at("2026-11-23T10:00:00Z");
    let mut aggregator = Aggregator::new(settings(Tz::UTC));
    aggregator.apply(&active("u1-first", start + 10_000, "u1"));
    let counted = close_each(&mut aggregator, start, start + 10 * MINUTE_MS);
    assert_eq!(counted, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
    (aggregator, start)
}

#[test]
fn a_late_activity_adds_its_user_to_the_closed_minutes_it_was_active_at_the_end_of_once() {
    let (mut aggregator, start) = ten_minutes_closed();
    let now = start + 10 * MINUTE_MS + 5_000;
    // u2, unseen, active at 10:03:30: active at the ends of 10:03 to 10:07 (10:07:59.999 is
    // within 5 minutes of it, 10:08:59.999 is not).
    let late = active("u2-late", start + 210_000, "u2");
    let revision = land(&mut aggregator, std::slice::from_ref(&late), now);
    assert_eq!(revision.late_events, 1);
    assert_eq!(
        revision.minutes,
        changes(start + 3 * MINUTE_MS, 5, 1).into_iter().collect()
    );
    // u1 at 10:02: already counted at the ends of 10:02 to 10:04, so only 10:05 and 10:06
    // (10:06:59.999 is before 10:07:00) gain them. An unknown type marks its user active too.
    let other = event("u1-other", EventKind::Other, start + 120_000, "u1");
    let revision = land(&mut aggregator, std::slice::from_ref(&other), now);
    assert_eq!(
        revision.minutes,
        changes(start + 5 * MINUTE_MS, 2, 1).into_iter().collect()
    );
    // A late order marks its user active like any event.
    let order = placed("u3-order", 10, start + 9 * MINUTE_MS + 1_000, "u3");
    let revision = land(&mut aggregator, &[order], now);
    assert_eq!(
        revision.minutes,
        BTreeMap::from([(start + 9 * MINUTE_MS, 1)])
    );
    // The repeat of u2's event is the one that set their latest activity: recognised, neither
    // counted nor revising anything.
    let revision = land(&mut aggregator, &[late], now);
    assert_eq!(
        revision,
        Revision {
            late: vec![false],
            day: revision.day,
            ..Revision::default()
        }
    );
    // Once u1 is active again (on time), the repeat of their late event is no longer their
    // latest: counted again (best-effort, as a duplicate of a user event is), but they are
    // counted wherever it made them active, so nothing changes.
    let revision = land(&mut aggregator, &[active("u1-now", now, "u1")], now);
    assert_eq!(revision.late_events, 0);
    let revision = land(&mut aggregator, &[other], now);
    assert_eq!(revision.late_events, 1);
    assert!(revision.minutes.is_empty(), "{revision:?}");

    let trust = aggregator.trust(now);
    assert_eq!(trust.late_events_today, 4);
    let minute = |n: i64| start + n * MINUTE_MS;
    assert_eq!(
        trust.revised_minutes,
        vec![
            minute(3),
            minute(4),
            minute(5),
            minute(6),
            minute(7),
            minute(9)
        ]
    );
}

#[test]
fn a_late_activity_before_a_known_sign_out_revises_nothing_and_after_one_it_does() {
    let (mut aggregator, start) = ten_minutes_closed();
    let now = start + 10 * MINUTE_MS + 5_000;
    // u4 signed out at 10:05 (applied before, counted nowhere): whether they signed out
    // between a late activity at 10:04 and the ends after it is not known (the register
    // keeps the latest sign-out only), so those points stay.
    aggregator.apply(&signed_out("u4-out", start + 5 * MINUTE_MS, "u4"));
    let revision = land(
        &mut aggregator,
        &[active("u4-late", start + 4 * MINUTE_MS, "u4")],
        now,
    );
    assert_eq!(revision.late_events, 1);
    assert!(revision.minutes.is_empty(), "{revision:?}");
    // At the same instant as the sign-out: the sign-out wins.
    let revision = land(
        &mut aggregator,
        &[active("u4-same", start + 5 * MINUTE_MS, "u4")],
        now,
    );
    assert!(revision.minutes.is_empty(), "{revision:?}");
    // After it: no sign-out falls between, so from 10:06 to 10:09 (the last one closed).
    let revision = land(
        &mut aggregator,
        &[active("u4-after", start + 6 * MINUTE_MS + 1, "u4")],
        now,
    );
    assert_eq!(
        revision.minutes,
        changes(start + 6 * MINUTE_MS, 4, 1).into_iter().collect()
    );
}

#[test]
fn a_late_sign_out_removes_its_user_where_no_later_activity_is_known() {
    let (mut aggregator, start) = ten_minutes_closed();
    let now = start + 10 * MINUTE_MS + 5_000;
    // u1's only activity is 10:00:10: signed out at 10:02:30, they were not active at the
    // ends of 10:02 to 10:04.
    let revision = land(
        &mut aggregator,
        &[signed_out("u1-out", start + 150_000, "u1")],
        now,
    );
    assert_eq!(revision.late_events, 1);
    assert_eq!(
        revision.minutes,
        changes(start + 2 * MINUTE_MS, 3, -1).into_iter().collect()
    );
    // u5 active at 10:00 and, applied after 10:05 closed, at 10:06: a late sign-out at 10:03
    // may have been followed by activity before 10:06 that the register forgot, so nothing
    // changes.
    let mut aggregator = Aggregator::new(settings(Tz::UTC));
    aggregator.apply(&active("u5-a", start, "u5"));
    let mut counted = close_each(&mut aggregator, start, start + 6 * MINUTE_MS);
    aggregator.apply(&active("u5-b", start + 6 * MINUTE_MS, "u5"));
    counted.extend(close_each(
        &mut aggregator,
        start + 6 * MINUTE_MS,
        start + 10 * MINUTE_MS,
    ));
    assert_eq!(counted, [1, 1, 1, 1, 1, 0, 1, 1, 1, 1]);
    let revision = land(
        &mut aggregator,
        &[signed_out("u5-out", start + 3 * MINUTE_MS, "u5")],
        now,
    );
    assert_eq!(revision.late_events, 1);
    assert!(revision.minutes.is_empty(), "{revision:?}");
}

#[test]
fn a_late_activity_and_sign_out_in_one_batch_revise_alike_in_either_order() {
    for reversed in [false, true] {
        let (mut aggregator, start) = ten_minutes_closed();
        let now = start + 10 * MINUTE_MS + 5_000;
        // u6, unseen, active at 10:06:10 and signed out at 10:08:30: the activity is judged
        // against the latest sign-out once the batch is applied (after it: an earlier one
        // may fall between), and the sign-out finds the user counted nowhere, so nothing
        // changes, whichever comes first.
        let mut batch = vec![
            active("u6-a", start + 6 * MINUTE_MS + 10_000, "u6"),
            signed_out("u6-out", start + 8 * MINUTE_MS + 30_000, "u6"),
        ];
        if reversed {
            batch.reverse();
        }
        let revision = land(&mut aggregator, &batch, now);
        assert_eq!(revision.late_events, 2, "reversed: {reversed}");
        assert!(
            revision.minutes.is_empty(),
            "reversed: {reversed}: {revision:?}"
        );
        // u1 (counted at the ends of 10:00 to 10:04) signed out at 10:01:30 and active again
        // at 10:02:30: the sign-out is judged against the latest activity once the batch is
        // applied, 10:02:30, after it, so it removes nothing (the registers cannot say what
        // happened in between: 10:01 keeps u1, the cautious side); the activity is after
        // every sign-out and adds u1 to 10:05 and 10:06, whichever comes first.
        let mut batch = vec![
            signed_out("u1-out", start + 90_000, "u1"),
            active("u1-again", start + 150_000, "u1"),
        ];
        if reversed {
            batch.reverse();
        }
        let revision = land(&mut aggregator, &batch, now);
        assert_eq!(
            revision.minutes,
            changes(start + 5 * MINUTE_MS, 2, 1).into_iter().collect(),
            "reversed: {reversed}"
        );
    }
}

#[test]
fn a_user_counted_in_the_last_hour_stays_in_memory_for_a_late_sign_out() {
    let (mut aggregator, start) = ten_minutes_closed();
    // At 10:20 u1 is long out of the window, but counted at the end of 10:00 to 10:04.
    let now = start + 20 * MINUTE_MS;
    close_each(
        &mut aggregator,
        start + 10 * MINUTE_MS,
        start + 20 * MINUTE_MS,
    );
    aggregator.prune(now);
    let revision = land(
        &mut aggregator,
        &[signed_out("u1-out", start + 3 * MINUTE_MS, "u1")],
        now,
    );
    assert_eq!(
        revision.minutes,
        changes(start + 3 * MINUTE_MS, 2, -1).into_iter().collect()
    );
    // An hour on, those minutes are no longer remembered, and the user is forgotten.
    let later = start + 70 * MINUTE_MS;
    close_each(
        &mut aggregator,
        start + 20 * MINUTE_MS,
        start + 70 * MINUTE_MS,
    );
    aggregator.prune(later);
    assert!(aggregator.users.is_empty(), "{:?}", aggregator.users.keys());
    assert!(aggregator.counted.len() as i64 <= COUNTED_MINUTES);
}

#[test]
fn minutes_a_restored_leader_did_not_close_keep_their_active_users() {
    let start = at("2026-11-23T10:00:00Z");
    let now = start + 10 * MINUTE_MS + 5_000;
    let mut aggregator = Aggregator::restore(settings(Tz::UTC), RestoreInput::default());
    aggregator.close_minutes_before(minute_of(now));
    let revision = land(
        &mut aggregator,
        &[
            active("u1-late", start + 8 * MINUTE_MS, "u1"),
            placed("o", 5, start, "u2"),
        ],
        now,
    );
    // Both are late and counted; only the order's minute is revised, by its order.
    assert_eq!(revision.late_events, 2);
    assert_eq!(revision.minutes, BTreeMap::from([(start, 0)]));
    // The minute it closes itself is remembered.
    close(&mut aggregator, minute_of(now));
    let revision = land(
        &mut aggregator,
        &[active("u3-late", now - 1_000, "u3")],
        now + MINUTE_MS,
    );
    assert_eq!(revision.minutes, BTreeMap::from([(minute_of(now), 1)]));
}

#[test]
fn restored_trust_is_the_stored_count_of_today_and_the_stored_revised_minutes() {
    let now = at("2026-11-23T10:15:30Z");
    let today = local_date(now, Tz::UTC);
    let yesterday = today.pred_opt().expect("a day");
    let revised = [now - 50 * MINUTE_MS, now - 2 * MINUTE_MS];
    let aggregator = Aggregator::restore(
        settings(Tz::UTC),
        RestoreInput {
            late_events: vec![(yesterday, 7), (today, 3)],
            revised_minutes: revised.iter().map(|at| minute_of(*at)).collect(),
            ..RestoreInput::default()
        },
    );
    let trust = aggregator.trust(now);
    assert_eq!(trust.late_events_today, 3);
    assert_eq!(
        trust.revised_minutes,
        revised.iter().map(|at| minute_of(*at)).collect::<Vec<_>>()
    );
}
