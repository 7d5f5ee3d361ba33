use super::*;
use chrono::{DateTime, NaiveDate};

mod late;

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

/// SPEC §3.2: repeats of user events are recognised at least within the active window, not
/// only the one that set its user's registers; past the window only that one is.
#[test]
fn every_user_event_of_the_active_window_is_recognised_when_repeated() {
    let now = at("2026-11-23T10:15:30Z");
    let window = settings(Tz::UTC).active_window_ms;
    let first = event("a1", EventKind::UserActive, now - 60_000, "u1");
    let second = event("a2", EventKind::UserActive, now - 30_000, "u1");
    let signed_out = event("s1", EventKind::UserSignedOut, now - 50_000, "u1");
    let other = event("x1", EventKind::Other, now - 40_000, "u1");
    let mut aggregator = aggregate(
        &[
            first.clone(),
            signed_out.clone(),
            other.clone(),
            second.clone(),
        ],
        Tz::UTC,
    );
    // `first` and `other` no longer set u1's latest activity; they are repeats all the same.
    for repeat in [&first, &second, &signed_out, &other] {
        assert!(aggregator.recognises(repeat), "{repeat:?}");
    }
    // A new event at the same instant, or another user's with the same id, is not a repeat.
    let mut twin = first.clone();
    twin.id = "a1-twin".into();
    let mut elsewhere = first.clone();
    elsewhere.user_id = "u2".into();
    assert!(!aggregator.recognises(&twin) && !aggregator.recognises(&elsewhere));

    // Once they were applied longer ago than the window, only what set u1's latest activity
    // and sign-out is known.
    aggregator.prune(now);
    let later = now + window + 1;
    let third = event("a3", EventKind::UserActive, later - 1_000, "u1");
    aggregator.apply(&third);
    aggregator.prune(later);
    for forgotten in [&first, &second, &other] {
        assert!(!aggregator.recognises(forgotten), "{forgotten:?}");
    }
    assert!(aggregator.recognises(&third) && aggregator.recognises(&signed_out));
    assert_eq!(
        aggregator.recent_user_events.len(),
        1,
        "only `third` is kept"
    );
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
