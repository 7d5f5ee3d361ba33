//! The late-event part of the aggregator (`aggregate::late`): lateness against the minutes
//! closed, the judgement and its revision, the active-user masks of closed minutes, and `trust`.

use super::*;

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

/// A redelivered user event of a closed minute is a duplicate, not a late event: it changes no
/// figure, `trust` included, also once it no longer set its user's latest activity.
#[test]
fn a_repeated_user_event_of_a_closed_minute_is_not_late_again() {
    let now = at("2026-11-23T10:15:30Z");
    let mut aggregator = Aggregator::new(settings(Tz::UTC));
    aggregator.close_minutes_before(minute_of(now));
    let first = active("a1", now - 150_000, "u1");
    let revision = land(&mut aggregator, std::slice::from_ref(&first), now);
    assert_eq!(revision.late_events, 1);
    land(&mut aggregator, &[active("a2", now - 100_000, "u1")], now);
    let before = aggregator.trust(now);
    assert_eq!(before.late_events_today, 2);

    let revision = land(&mut aggregator, std::slice::from_ref(&first), now);
    assert_eq!(
        (revision.late.clone(), revision.late_events),
        (vec![false], 0)
    );
    assert_eq!(aggregator.trust(now), before);
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
    // latest, but it was applied within the window: recognised all the same.
    let revision = land(&mut aggregator, &[active("u1-now", now, "u1")], now);
    assert_eq!(revision.late_events, 0);
    let revision = land(&mut aggregator, &[other], now);
    assert_eq!(revision.late_events, 0);
    assert!(revision.minutes.is_empty(), "{revision:?}");

    let trust = aggregator.trust(now);
    assert_eq!(trust.late_events_today, 3);
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
    assert!(aggregator.counted.len() as i64 <= crate::aggregate::late::COUNTED_MINUTES);
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
