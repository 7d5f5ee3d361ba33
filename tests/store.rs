//! The store's contract, one suite run against both backends: embedded SQLite and PostgreSQL.

use futures_util::FutureExt;
use pulseboard::aggregate::{id_hash, Judgement, StoredPresence};
use pulseboard::aggregate::{minute_of, Event, EventKind, MINUTE_MS};
use pulseboard::config::DatabaseUrl;
use pulseboard::for_benchmarks::POSTGRES_SESSION;
use pulseboard::store::{order_digest, Lease, Store, StoreError};
use std::future::Future;
use std::panic::AssertUnwindSafe;

// Only the small disk of the test kit: the rest is the black-box tests' and the benchmarks'.
#[path = "kit/disk.rs"]
mod disk;

const NOW: i64 = 1_795_428_930_000; // 2026-11-23T10:15:30Z
const TTL: i64 = 5_000;

/// Runs `test` on a new, empty database of each backend, given by its URL.
async fn with_each_database<F, Fut>(test: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let folder = tempfile::tempdir().expect("temporary folder");
    test(sqlite_url(&folder)).await;

    let name = format!(
        "pb_store_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    admin(&format!("CREATE DATABASE {name}")).await;
    // A failing test still drops its database; its panic is raised again afterwards.
    let outcome = AssertUnwindSafe(test(format!("postgres://postgres@127.0.0.1:5432/{name}")))
        .catch_unwind()
        .await;
    admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A new SQLite database file in `folder`.
fn sqlite_url(folder: &tempfile::TempDir) -> String {
    format!("sqlite://{}/store.db?mode=rwc", folder.path().display())
}

/// Runs `test` on a migrated store of each backend.
async fn with_each_backend<F, Fut>(test: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    with_each_database(|url| {
        let test = &test;
        async move {
            let store = open(&url).await;
            test(store.clone()).await;
            store.close().await;
        }
    })
    .await;
}

async fn open(url: &str) -> Store {
    let url: DatabaseUrl = url.parse().expect("database url");
    let store = Store::connect(&url)
        .await
        .expect("database must be reachable (run scripts/test.sh)");
    store.migrate().await.expect("migrations");
    store
}

/// Runs statements on the database at `url`, beside the store, on a connection marked as the
/// store marks its own (PostgreSQL refuses order rows from an unmarked one).
async fn execute(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    let marked = if url.starts_with("postgres") {
        format!("{POSTGRES_SESSION}; {sql}")
    } else {
        sql.to_owned()
    };
    sqlx::Executor::execute(&pool, marked.as_str())
        .await
        .expect("statement");
    pool.close().await;
}

async fn admin(sql: &str) {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("PostgreSQL must be reachable at 127.0.0.1:5432 (run scripts/test.sh)");
    sqlx::Executor::execute(&mut connection, sql)
        .await
        .expect("admin statement");
}

/// The ingest lease of node `n1` on a fresh store.
async fn first_lease(store: &Store) -> Lease {
    store
        .try_acquire_lease("n1", NOW, TTL)
        .await
        .expect("db")
        .expect("free")
}

/// Applies `events` as one batch and returns which of them were new.
async fn fresh(store: &Store, lease: &Lease, events: &[Event]) -> Vec<bool> {
    fresh_at(store, lease, events, NOW).await
}

/// [`fresh`], applied at `now`.
async fn fresh_at(store: &Store, lease: &Lease, events: &[Event], now: i64) -> Vec<bool> {
    store
        .apply_batch(lease, events, &Judgement::default(), chrono_tz::UTC, now)
        .await
        .expect("apply")
        .fresh
}

/// Revenue summed over the day totals a new leader would restore.
async fn revenue_by_days(store: &Store) -> i64 {
    let restore = store
        .load_restore(NOW, 3_600_000, chrono_tz::UTC)
        .await
        .expect("restore");
    restore.days.iter().map(|(_, r)| r).sum()
}

fn order(id: &str, amount_minor: i64, occurred_at: i64) -> Event {
    Event {
        id: id.into(),
        kind: EventKind::OrderPlaced { amount_minor },
        occurred_at,
        user_id: "u1".into(),
    }
}

#[tokio::test]
async fn a_batch_is_applied_once_and_duplicates_change_nothing() {
    with_each_backend(|store| async move {
        let lease = first_lease(&store).await;
        let first = [order("a", 100, NOW - 1_000), order("b", 250, NOW - 2_000)];
        assert_eq!(fresh(&store, &lease, &first).await, vec![true, true]);

        let again = [order("b", 999, NOW - 500), order("c", 50, NOW - 61_000)];
        assert_eq!(fresh(&store, &lease, &again).await, vec![false, true]);
        assert_eq!(store.applied_count().await.expect("count"), 3);

        let restore = store
            .load_restore(NOW, 3_600_000, chrono_tz::UTC)
            .await
            .expect("restore");
        assert_eq!(restore.recent_orders.len(), 3);
        assert_eq!(restore.days.iter().map(|(_, r)| r).sum::<i64>(), 400);
        let minute = minute_of(NOW);
        let tally = restore
            .minutes
            .iter()
            .find(|(m, _)| *m == minute)
            .expect("this minute")
            .1;
        assert_eq!((tally.orders, tally.revenue_minor), (2, 350));
    })
    .await;
}

/// One batch whose orders fall in three minutes on both sides of midnight: each minute and each
/// day gets its own sum, and a later batch adds to the rows the first one wrote.
#[tokio::test]
async fn a_batch_across_midnight_adds_to_each_minute_and_day_of_its_own() {
    with_each_backend(|store| async move {
        let lease = first_lease(&store).await;
        let midnight = NOW - NOW.rem_euclid(24 * 60 * MINUTE_MS);
        let now = midnight + 5 * MINUTE_MS;
        let refund = Event {
            kind: EventKind::OrderRefunded { amount_minor: 30 },
            ..order("r", 0, midnight + 90_000)
        };
        let first = [
            order("before", 100, midnight - 30_000),
            order("after", 250, midnight + 10_000),
            refund,
            order("after-2", 7, midnight + 70_000),
        ];
        assert_eq!(fresh_at(&store, &lease, &first, now).await, vec![true; 4]);
        let second = [
            order("before-2", 1, midnight - 20_000),
            order("after-3", 2, midnight + 20_000),
        ];
        assert_eq!(fresh_at(&store, &lease, &second, now).await, vec![true; 2]);

        let minutes: Vec<(i64, i64, i64)> = store
            .history(midnight - MINUTE_MS, now)
            .await
            .expect("history")
            .iter()
            .map(|p| (p.minute - midnight, p.orders, p.revenue_minor))
            .collect();
        assert_eq!(
            minutes,
            vec![(-MINUTE_MS, 2, 101), (0, 2, 252), (MINUTE_MS, 1, -23)]
        );
        let restore = store
            .load_restore(now, 3_600_000, chrono_tz::UTC)
            .await
            .expect("restore");
        let day = |at: i64| {
            chrono::DateTime::from_timestamp_millis(at)
                .expect("an instant")
                .date_naive()
        };
        let mut days = restore.days.clone();
        days.sort();
        assert_eq!(
            days,
            vec![(day(midnight - 1), 101), (day(midnight), 252 - 23)]
        );
    })
    .await;
}

/// Batches larger than one statement's worth of rows, with earlier ids scattered through them.
#[tokio::test]
async fn large_batches_recognise_every_earlier_id() {
    with_each_backend(|store| async move {
        let lease = first_lease(&store).await;
        let event = |n: usize| order(&format!("e-{n}"), 1, NOW - 1_000);
        let first: Vec<Event> = (0..3_000).filter(|n| n % 2 == 0).map(event).collect();
        let applied = store
            .apply_batch(&lease, &first, &Judgement::default(), chrono_tz::UTC, NOW)
            .await
            .expect("apply");
        assert!(applied.fresh.iter().all(|fresh| *fresh));

        let second: Vec<Event> = (0..3_000).map(event).collect();
        let applied = store
            .apply_batch(&lease, &second, &Judgement::default(), chrono_tz::UTC, NOW)
            .await
            .expect("apply");
        let expected: Vec<bool> = (0..3_000).map(|n| n % 2 == 1).collect();
        assert_eq!(applied.fresh, expected);
        assert_eq!(store.applied_count().await.expect("count"), 3_000);
        assert_eq!(revenue_by_days(&store).await, 3_000);
    })
    .await;
}

#[tokio::test]
async fn an_id_repeated_within_one_batch_is_applied_once() {
    with_each_backend(|store| async move {
        let lease = first_lease(&store).await;
        let batch = [
            order("a", 100, NOW - 1_000),
            order("a", 100, NOW - 1_000),
            order("b", 1, NOW - 1_000),
        ];
        assert_eq!(fresh(&store, &lease, &batch).await, vec![true, false, true]);
        assert_eq!(store.applied_count().await.expect("count"), 2);
        assert_eq!(revenue_by_days(&store).await, 101);
    })
    .await;
}

/// Within one batch: the first copy of a new id counts (its amount, not a later copy's), a
/// copy of an id applied before never does, and ids that differ only in case, a trailing space
/// or Unicode normalisation are different ids on both backends.
#[tokio::test]
async fn only_the_first_copy_of_a_new_id_counts_and_near_twins_are_distinct() {
    with_each_backend(|store| async move {
        let lease = first_lease(&store).await;
        let earlier = [order("a", 7, NOW - 2_000)];
        assert_eq!(fresh(&store, &lease, &earlier).await, vec![true]);
        let batch = [
            order("a", 100, NOW - 1_000),
            order("a", 999, NOW - 1_000),
            order("n", 100, NOW - 1_000),
            order("n", 999, NOW - 1_000),
            order("a ", 1, NOW - 1_000),
            order("A", 1, NOW - 1_000),
            order("\u{e9}", 1, NOW - 1_000),
            order("e\u{301}", 1, NOW - 1_000),
        ];
        assert_eq!(
            fresh(&store, &lease, &batch).await,
            vec![false, false, true, false, true, true, true, true]
        );
        assert_eq!(store.applied_count().await.expect("count"), 6);
        assert_eq!(revenue_by_days(&store).await, 7 + 100 + 4);
        let again = store
            .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, NOW)
            .await
            .expect("apply");
        assert!(again.fresh.iter().all(|f| !f), "{:?}", again.fresh);
        assert_eq!(store.applied_count().await.expect("count"), 6);
    })
    .await;
}

/// PostgreSQL receives a batch as array literals: ids and users that look like their syntax
/// must come back exactly as given, and be recognised when they come again.
#[tokio::test]
async fn ids_that_look_like_array_syntax_are_stored_as_given() {
    with_each_backend(|store| async move {
        let lease = first_lease(&store).await;
        let ids = [
            "NULL".to_owned(),
            "{a,b}".to_owned(),
            r#"say "hi""#.to_owned(),
            r"C:\path\".to_owned(),
            " padded ".to_owned(),
            "tab\there\u{1f}".to_owned(),
            "ünï-çødé-✓ 😀".to_owned(),
            "x".repeat(128),
        ];
        // Every column differs from one event to the next, so a column written in another's
        // place shows.
        let kinds = [
            EventKind::OrderPlaced { amount_minor: 250 },
            EventKind::OrderRefunded { amount_minor: 40 },
            EventKind::UserActive,
            EventKind::UserSignedOut,
        ];
        let batch: Vec<Event> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| Event {
                id: id.clone(),
                kind: kinds[n % kinds.len()].clone(),
                occurred_at: NOW - 1_000 - n as i64 * 7_919,
                user_id: format!("user {id}"),
            })
            .collect();
        let applied = store
            .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, NOW)
            .await
            .expect("apply");
        assert!(applied.fresh.iter().all(|fresh| *fresh));
        let applied = store
            .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, NOW)
            .await
            .expect("apply again");
        // Orders and refunds are known; user events are applied again, harmlessly.
        let orders: Vec<bool> = batch.iter().map(|e| e.kind.amount_minor() > 0).collect();
        let again: Vec<bool> = applied.fresh.iter().map(|fresh| !fresh).collect();
        assert_eq!(again, orders, "orders known");

        let restore = store
            .load_restore(NOW, 3_600_000, chrono_tz::UTC)
            .await
            .expect("restore");
        let mut users = restore.users;
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let mut expected: Vec<StoredPresence> = batch
            .iter()
            .map(|e| StoredPresence {
                user_id: e.user_id.clone(),
                last_active: (e.kind != EventKind::UserSignedOut).then_some(e.occurred_at),
                last_signed_out: (e.kind == EventKind::UserSignedOut).then_some(e.occurred_at),
                active_id: if e.kind == EventKind::UserSignedOut {
                    0
                } else {
                    id_hash(&e.id) as i64
                },
                signed_out_id: if e.kind == EventKind::UserSignedOut {
                    id_hash(&e.id) as i64
                } else {
                    0
                },
            })
            .collect();
        expected.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        assert_eq!(users, expected);
        let mut orders = restore.recent_orders;
        orders.sort_by_key(|(at, _)| *at);
        let mut expected: Vec<(i64, EventKind)> = batch
            .iter()
            .filter(|e| e.kind.amount_minor() > 0)
            .map(|e| (e.occurred_at, e.kind.clone()))
            .collect();
        expected.sort_by_key(|(at, _)| *at);
        assert_eq!(orders, expected);
    })
    .await;
}

#[tokio::test]
async fn a_username_holding_nul_is_unknown_not_an_error() {
    with_each_backend(|store| async move {
        let found = store.user_credentials("ad\0min").await.expect("no error");
        assert!(found.is_none());
    })
    .await;
}

/// Orders are looked up by the high half of their digest; an id whose digest shares only that
/// half with a recorded one is still new, and a recorded digest is found in any live bucket.
#[tokio::test]
async fn ids_whose_digests_share_a_half_are_told_apart() {
    with_each_database(|url| async move {
        let store = open(&url).await;
        let lease = first_lease(&store).await;
        // No two known ids share a half, so forge rows: one with the high half of "b", and
        // "c" itself, in a bucket of their own.
        let (b_hi, b_lo) = order_digest("b");
        let (c_hi, c_lo) = order_digest("c");
        execute(
            &url,
            &format!(
                "INSERT INTO order_id_buckets (bucket, ends_at) VALUES (0, {});
                 INSERT INTO order_ids (bucket, hi, lo, occurred_at, signed_minor) VALUES
                 (0, {b_hi}, {}, {NOW}, 1), (0, {c_hi}, {c_lo}, {NOW}, 1)",
                NOW + 3_600_000,
                b_lo ^ 1
            ),
        )
        .await;
        let batch = [order("b", 5, NOW - 1_000), order("c", 5, NOW - 1_000)];
        assert_eq!(fresh(&store, &lease, &batch).await, vec![true, false]);
        assert_eq!(store.applied_count().await.expect("count"), 3);
        store.close().await;
    })
    .await;
}

/// The error of `sql` run as an older instance runs it: on a connection of its own, without
/// the settings this version's connections make. Panics if it is not refused.
async fn refused_as_an_older_instance(url: &str, sql: &str) -> String {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    let written = sqlx::query(sql).execute(&pool).await.expect_err("refused");
    pool.close().await;
    written.to_string()
}

/// An older version still running beside a migrated database (it migrated before this version
/// did) is refused at its next batch with one line naming the cause, instead of counting its
/// orders in a table no one reads.
#[tokio::test]
async fn an_older_instance_writing_applied_events_is_refused_with_one_line() {
    with_each_database(|url| async move {
        open(&url).await.close().await;
        let message = refused_as_an_older_instance(
            &url,
            "INSERT INTO applied_events \
             (id, kind, user_id, occurred_at, amount_minor, applied_at) \
             VALUES ('old', 'order.placed', 'u1', 1, 1, 1)",
        )
        .await;
        assert!(
            message.contains("migrated by a newer pulseboard (migration 20261228000010"),
            "{message}"
        );
    })
    .await;
}

/// An instance of a version before migration 20261228000013 still running beside a migrated
/// PostgreSQL database (one from before the digest key of migration 20261228000012 would
/// lose ids) is refused at its next order insert with one line naming the cause; the store's
/// own connections write as before.
#[tokio::test]
async fn an_older_instance_writing_order_ids_after_the_digest_key_is_refused_with_one_line() {
    with_each_database(|url| async move {
        if !url.starts_with("postgres") {
            return; // SQLite keeps its bucket-first key: no such migration.
        }
        let store = open(&url).await;
        // The older version's order insert, as it was written.
        let message = refused_as_an_older_instance(
            &url,
            "INSERT INTO order_ids (bucket, hi, lo, occurred_at, signed_minor) \
             SELECT 0, * FROM unnest('{1}'::bigint[], '{2}'::bigint[], '{3}'::bigint[], \
             '{4}'::bigint[]) ON CONFLICT DO NOTHING",
        )
        .await;
        assert!(
            message.contains(
                "migrated by a newer pulseboard (migration 20261228000013: order ids keyed by \
                 their digest): stop this older instance"
            ),
            "{message}"
        );
        let lease = first_lease(&store).await;
        assert_eq!(
            fresh(&store, &lease, &[order("new", 5, NOW - 1_000)]).await,
            vec![true]
        );
        assert_eq!(store.applied_count().await.expect("count"), 1);
        store.close().await;
    })
    .await;
}

/// A database another version migrated further is refused at start, and one that misses a
/// migration of this version is refused by a new leader, each with one line naming the cause.
#[tokio::test]
async fn a_schema_of_another_version_is_refused_naming_the_cause() {
    with_each_database(|url| async move {
        let store = open(&url).await;
        store.check_schema().await.expect("this version's schema");
        execute(
            &url,
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             SELECT 20991231000099, 'from the future', success, checksum, execution_time \
             FROM _sqlx_migrations WHERE version = 20261228000010",
        )
        .await;
        let newer = store.migrate().await.expect_err("a newer schema");
        assert!(matches!(newer, StoreError::NewerSchema { version: 20991231000099 }), "{newer}");
        assert!(newer.to_string().contains("migrated by a newer pulseboard"), "{newer}");
        execute(
            &url,
            "DELETE FROM _sqlx_migrations WHERE version >= 20261228000010",
        )
        .await;
        let older = store.check_schema().await.expect_err("an older schema");
        assert!(matches!(older, StoreError::OlderSchema { version: 20261228000010 }), "{older}");
        assert!(older.to_string().contains("pulseboard migrate"), "{older}");
        store.close().await;
    })
    .await;
}

/// Events applied before the upgrade to SQLite's `id_key` (migration 20261124000005) are still
/// duplicates after it: `Store::migrate` keys the copied rows, more than one statement's worth
/// (500) here. PostgreSQL, which has no such migration, upgrades from the same point.
#[tokio::test]
async fn events_applied_before_the_id_key_upgrade_are_still_recognised() {
    const OLD: usize = 1_234;
    with_each_database(|url| async move {
        let mut migrator = if url.starts_with("sqlite:") {
            sqlx::migrate!("migrations/sqlite")
        } else {
            sqlx::migrate!("migrations/postgres")
        };
        migrator.migrations = migrator
            .migrations
            .iter()
            .filter(|migration| migration.version < 20261124000005)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
        migrator.run(&pool).await.expect("migrations before id_key");
        pool.close().await;
        let rows: Vec<String> = (0..OLD)
            .map(|n| {
                format!(
                    "('old-{n}', 'order.placed', 'u1', {}, 1, {NOW})",
                    NOW - 1_000
                )
            })
            .collect();
        execute(
            &url,
            &format!(
                "INSERT INTO applied_events \
                 (id, kind, user_id, occurred_at, amount_minor, applied_at) VALUES {}",
                rows.join(", ")
            ),
        )
        .await;

        let store = open(&url).await;
        let lease = first_lease(&store).await;
        let batch: Vec<Event> = (0..OLD + 10)
            .step_by(3)
            .map(|n| order(&format!("old-{n}"), 1, NOW - 1_000))
            .collect();
        let applied = store
            .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, NOW)
            .await
            .expect("apply");
        let expected: Vec<bool> = (0..OLD + 10).step_by(3).map(|n| n >= OLD).collect();
        assert_eq!(applied.fresh, expected);
        assert_eq!(
            store.applied_count().await.expect("count"),
            (OLD + expected.iter().filter(|fresh| **fresh).count()) as i64
        );
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_stale_leader_cannot_commit_after_a_takeover() {
    with_each_backend(|store| async move {
        let old = first_lease(&store).await;
        assert_eq!(
            store
                .try_acquire_lease("n2", NOW + 1_000, TTL)
                .await
                .expect("db"),
            None
        );
        assert_eq!(
            store
                .lease_holder(NOW + 1_000)
                .await
                .expect("db")
                .as_deref(),
            Some("n1")
        );

        let new = store
            .try_acquire_lease("n2", NOW + TTL + 1, TTL)
            .await
            .expect("db")
            .expect("expired lease is free");
        assert!(new.epoch > old.epoch);
        let late = store
            .apply_batch(
                &old,
                &[order("x", 1, NOW)],
                &Judgement::default(),
                chrono_tz::UTC,
                NOW + TTL + 2,
            )
            .await;
        assert!(matches!(late, Err(StoreError::LostLease)), "{late:?}");
        assert_eq!(store.applied_count().await.expect("count"), 0);
        assert!(matches!(
            store.renew_lease(&old, NOW + TTL + 3).await,
            Err(StoreError::LostLease)
        ));

        store.release_lease(&new).await.expect("release");
        assert!(store
            .try_acquire_lease("n1", NOW + TTL + 4, TTL)
            .await
            .expect("db")
            .is_some());
    })
    .await;
}

#[tokio::test]
async fn snapshot_sequence_blocks_never_overlap() {
    with_each_backend(|store| async move {
        let first = store.reserve_seq(1_000).await.expect("seq");
        let second = store.reserve_seq(1_000).await.expect("seq");
        assert_eq!(first, 1);
        assert_eq!(second, 1_001);
    })
    .await;
}

#[tokio::test]
async fn history_keeps_closed_minutes_and_pruning_drops_what_expired() {
    with_each_backend(|store| async move {
        let lease = first_lease(&store).await;
        let nine_days = 9 * 24 * 60 * MINUTE_MS;
        let old_minute = minute_of(NOW - nine_days);
        store
            .apply_batch(
                &lease,
                &[order("recent", 10, NOW - 90_000)],
                &Judgement::default(),
                chrono_tz::UTC,
                NOW,
            )
            .await
            .expect("apply");
        store
            .close_minute(minute_of(NOW - 90_000), 7)
            .await
            .expect("close");
        store.close_minute(old_minute, 3).await.expect("close");

        let history = store
            .history(NOW - nine_days - MINUTE_MS, NOW)
            .await
            .expect("history");
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].orders, 1);
        assert_eq!(history[1].active_users, 7);

        // 30 hours later the applied id is past the dedupe window (25 h 05 min) and the bucket
        // it was kept in (a sixth of that); the 9-day-old minute is gone.
        let later = NOW + 30 * 60 * MINUTE_MS;
        assert!(store.prune(later).await.expect("prune") >= 2);
        assert_eq!(store.applied_count().await.expect("count"), 0);
        let history = store
            .history(NOW - nine_days - MINUTE_MS, NOW)
            .await
            .expect("history");
        assert_eq!(history.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_generated_setting_is_shared_by_whoever_comes_second() {
    with_each_backend(|store| async move {
        let first = store
            .setting_or_insert("secret", || "one".into())
            .await
            .expect("db");
        let second = store
            .setting_or_insert("secret", || "two".into())
            .await
            .expect("db");
        assert_eq!(first, "one");
        assert_eq!(second, "one");
    })
    .await;
}

#[tokio::test]
async fn sqlite_file_and_folder_are_created_without_mode_in_the_url() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("new").join("pulseboard.db");
    let store = open(&format!("sqlite://{}", path.display())).await;
    let lease = first_lease(&store).await;
    store
        .apply_batch(
            &lease,
            &[order("created-1", 100, NOW)],
            &Judgement::default(),
            chrono_tz::UTC,
            NOW,
        )
        .await
        .expect("apply");
    assert_eq!(store.applied_count().await.expect("count"), 1);
    store.close().await;
    assert!(path.is_file(), "{} was not created", path.display());
}

/// A commit that fails because the disk is full must not leave the writer connection inside a
/// transaction: once the disk has room again, every kind of write works at once (a new leader's
/// `BEGIN IMMEDIATE` too, which sqlx refuses on a connection it believes is in a transaction),
/// and the batch that failed is applied then, once.
#[tokio::test]
async fn sqlite_writes_again_once_a_full_disk_has_room() {
    let disk = disk::SmallDisk::mount(8 << 20).expect("a small disk");
    let store = open(&disk.sqlite_url("store.db")).await;
    let lease = first_lease(&store).await;
    assert_eq!(
        fresh(&store, &lease, &[order("before", 100, NOW)]).await,
        [true]
    );

    disk.fill().expect("fill the disk");
    let batch: Vec<Event> = (0..200)
        .map(|n| order(&format!("while-full-{n}"), 1, NOW))
        .collect();
    let refused = store
        .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, NOW)
        .await;
    assert!(refused.is_err(), "a commit on a full disk: {refused:?}");
    let renewal = store.renew_lease(&lease, NOW + 1).await;
    assert!(
        renewal.is_err(),
        "a lease renewal on a full disk: {renewal:?}"
    );

    disk.free().expect("free the disk");
    store
        .digest_staged_orders()
        .await
        .expect("BEGIN IMMEDIATE once the disk has room");
    store.renew_lease(&lease, NOW + 2).await.expect("renewal");
    let mut again = batch.clone();
    again.push(order("before", 100, NOW));
    let applied = fresh(&store, &lease, &again).await;
    assert_eq!(applied.iter().filter(|f| **f).count(), batch.len());
    assert!(
        !applied[batch.len()],
        "an event applied before is a duplicate"
    );
    assert_eq!(revenue_by_days(&store).await, 100 + batch.len() as i64);
    store.close().await;
}

/// A write outside a transaction that returns a row (`UPDATE … RETURNING`) is stored when it
/// says so, also on a full disk: a lease or a block of snapshot numbers handed out there but
/// never stored would be handed out again (two leaders; snapshot numbers going back).
#[tokio::test]
async fn sqlite_hands_out_no_lease_or_sequence_block_it_did_not_store() {
    let disk = disk::SmallDisk::mount(8 << 20).expect("a small disk");
    let store = open(&disk.sqlite_url("store.db")).await;
    let lease = first_lease(&store).await;
    let before = store.reserve_seq(1_000).await.expect("seq");

    disk.fill().expect("fill the disk");
    // A large commit fails first: it leaves room behind that small writes may still use.
    let batch: Vec<Event> = (0..200)
        .map(|n| order(&format!("while-full-{n}"), 1, NOW))
        .collect();
    assert!(store
        .apply_batch(&lease, &batch, &Judgement::default(), chrono_tz::UTC, NOW)
        .await
        .is_err());
    let mut handed_out = Vec::new();
    let mut leases = Vec::new();
    for n in 0..20 {
        if let Ok(first) = store.reserve_seq(1_000).await {
            handed_out.push(first);
        }
        if let Ok(Some(taken)) = store.try_acquire_lease("n1", NOW + n, TTL).await {
            leases.push(taken);
        }
    }

    disk.free().expect("free the disk");
    let after = store.reserve_seq(1_000).await.expect("seq");
    for first in &handed_out {
        assert!(
            after > *first + 999 && *first > before + 999,
            "block {first} handed out on the full disk, then {after}"
        );
    }
    if let Some(last) = leases.last() {
        store
            .renew_lease(last, NOW + 100)
            .await
            .expect("the last lease handed out on the full disk holds");
    }
    store.close().await;
}

/// An event of `user` of a kind without an amount.
fn user_event(id: &str, kind: EventKind, occurred_at: i64, user: &str) -> Event {
    Event {
        id: id.into(),
        kind,
        occurred_at,
        user_id: user.into(),
    }
}

/// A repeated `user.active` is applied again and leaves every stored figure as it was, and a
/// `user.signed_out` redelivered after a later `user.active` of the same user does not remove
/// them: the user's row keeps the later of each.
#[tokio::test]
async fn repeated_user_events_leave_every_figure_as_it_was() {
    with_each_backend(|store| async move {
        let lease = first_lease(&store).await;
        let signed_out = user_event("s", EventKind::UserSignedOut, NOW - 20_000, "u1");
        let active = user_event("a", EventKind::UserActive, NOW - 10_000, "u1");
        let first = [
            signed_out.clone(),
            active.clone(),
            order("o", 100, NOW - 5_000),
        ];
        assert_eq!(fresh(&store, &lease, &first).await, vec![true; 3]);
        let before = store
            .load_restore(NOW, 3_600_000, chrono_tz::UTC)
            .await
            .expect("restore");
        let history = store
            .history(NOW - 3_600_000, NOW + 60_000)
            .await
            .expect("history");

        for again in [
            vec![active.clone()],
            vec![signed_out.clone()],
            vec![active, signed_out],
        ] {
            fresh(&store, &lease, &again).await;
        }
        let after = store
            .load_restore(NOW, 3_600_000, chrono_tz::UTC)
            .await
            .expect("restore");
        assert_eq!(after.users, before.users);
        let user = &after.users[0];
        assert_eq!(
            (user.last_active, user.last_signed_out),
            (Some(NOW - 5_000), Some(NOW - 20_000)),
            "still active (the order is theirs too): the sign-out is older"
        );
        assert_eq!(after.recent_orders, before.recent_orders);
        assert_eq!(after.days, before.days);
        assert_eq!(after.minutes, before.minutes);
        assert_eq!(
            store
                .history(NOW - 3_600_000, NOW + 60_000)
                .await
                .expect("history"),
            history
        );
        assert_eq!(
            store.presence_count().await.expect("count"),
            1,
            "one row per user"
        );
        assert_eq!(
            store.applied_count().await.expect("count"),
            1,
            "one id: the order's"
        );
    })
    .await;
}

/// Late events are stored with their batch: counted on the commit's local day, their minutes
/// marked revised and the closed minutes' active users changed as the leader judged; a
/// redelivered batch counts only what the commit applies anew; a new leader reads today's
/// count and the last hour's revised minutes back.
#[tokio::test]
async fn late_events_are_stored_with_their_batch_once_and_read_back_by_a_new_leader() {
    with_each_backend(|store| async move {
        let lease = first_lease(&store).await;
        let closed = minute_of(NOW) - 3 * MINUTE_MS;
        let long_ago = minute_of(NOW) - 2 * 60 * MINUTE_MS;
        for minute in [long_ago, closed, closed + MINUTE_MS] {
            store.close_minute(minute, 3).await.expect("close");
        }
        let batch = [
            order("late-order", 100, closed + 10_000),
            user_event("late-active", EventKind::UserActive, closed + 20_000, "u9"),
            order("on-time", 50, NOW),
            order("late-long-ago", 7, long_ago + 1_000),
        ];
        let judged = Judgement::new(
            vec![true, true, false, true],
            [(closed, 1), (closed + MINUTE_MS, 1)].into(),
        );
        let applied = store
            .apply_batch(&lease, &batch, &judged, chrono_tz::UTC, NOW)
            .await
            .expect("apply");
        assert_eq!(applied.revision.late, vec![true, true, false, true]);
        assert_eq!(applied.revision.late_events, 3);
        assert_eq!(applied.revision.day.to_string(), "2026-11-23");
        assert_eq!(
            applied.revision.minutes,
            [(long_ago, 0), (closed, 1), (closed + MINUTE_MS, 1)].into()
        );

        // Redelivered after a lost acknowledgement: the orders are duplicates, and the leader
        // recognises the user event as the one it applied, so nothing counts again.
        let again = Judgement::new(vec![true, false, false, true], Default::default());
        let applied = store
            .apply_batch(&lease, &batch, &again, chrono_tz::UTC, NOW + 1_000)
            .await
            .expect("apply again");
        assert_eq!(applied.fresh, vec![false, true, false, false]);
        assert_eq!(applied.revision.late_events, 0);
        assert!(
            applied.revision.minutes.is_empty(),
            "{:?}",
            applied.revision
        );

        let history = store
            .history(closed, closed + 2 * MINUTE_MS)
            .await
            .expect("history");
        let points: Vec<(i64, i64, u64)> = history
            .iter()
            .map(|p| (p.orders, p.revenue_minor, p.active_users))
            .collect();
        assert_eq!(points, vec![(1, 100, 4), (0, 0, 4)]);
        let restore = store
            .load_restore(NOW, 3_600_000, chrono_tz::UTC)
            .await
            .expect("restore");
        let today = applied.revision.day;
        assert_eq!(restore.late_events, vec![(today, 3)]);
        // Of the last hour only: the minute of two hours ago is revised, but not listed.
        assert_eq!(restore.revised_minutes, vec![closed, closed + MINUTE_MS]);
        // The day row holds the count beside the revenue, which the count leaves alone.
        assert_eq!(restore.days, vec![(today, 157)]);
    })
    .await;
}

/// With the window shortened by configuration, an order repeated within it is a duplicate; its
/// id is pruned once the window and its bucket have passed (a repeat by then is older than the
/// window, which the decoder refuses as `too_old`: see the black-box test).
#[tokio::test]
async fn a_shortened_window_keeps_order_ids_for_the_window_and_prunes_them_after() {
    with_each_database(|url| async move {
        let store = open(&url)
            .await
            .with_dedupe_window(std::time::Duration::from_secs(60));
        let lease = first_lease(&store).await;
        assert_eq!(
            fresh(&store, &lease, &[order("o", 100, NOW - 1_000)]).await,
            [true]
        );
        // Within the window (applied 50 s later): a duplicate.
        let later = NOW + 50_000;
        let again = fresh_at(&store, &lease, &[order("o", 100, NOW - 1_000)], later).await;
        assert_eq!(again, [false]);
        // 60 s + 2.5 s + 5 min kept, in buckets of a sixth of that: gone 8 minutes later.
        store.prune(NOW + 8 * 60_000).await.expect("prune");
        assert_eq!(store.applied_count().await.expect("count"), 0);
        assert_eq!(revenue_by_days(&store).await, 100);
        store.close().await;
    })
    .await;
}

/// A user event that moves none of its user's times (a redelivery, or one older than their
/// last) rewrites nothing: on PostgreSQL every rewrite is a new row version, which is most of
/// what the store grew by. The row's `xmin` (the transaction that wrote its version) tells.
#[tokio::test]
async fn a_user_event_that_moves_no_time_rewrites_no_row() {
    with_each_database(|url| async move {
        let store = open(&url).await;
        let lease = first_lease(&store).await;
        let active = user_event("a", EventKind::UserActive, NOW - 10_000, "u1");
        fresh(&store, &lease, std::slice::from_ref(&active)).await;
        if url.starts_with("sqlite:") {
            // SQLite rewrites in place and shows no versions: the figures are the other tests'.
            store.close().await;
            return;
        }
        let version = || async {
            let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
            let row = sqlx::query("SELECT CAST(xmin AS TEXT) FROM user_presence")
                .fetch_one(&pool)
                .await
                .expect("the user's row");
            pool.close().await;
            sqlx::Row::get::<String, _>(&row, 0)
        };
        let written = version().await;
        let older = user_event("b", EventKind::UserActive, NOW - 20_000, "u1");
        fresh(&store, &lease, &[active.clone(), older]).await;
        assert_eq!(version().await, written, "nothing moved: no new version");
        let later = user_event("c", EventKind::UserActive, NOW - 5_000, "u1");
        fresh(&store, &lease, &[later]).await;
        assert_ne!(version().await, written, "a later activity is written");
        store.close().await;
    })
    .await;
}

/// The space of pruned order ids is used again by later ones, so that the store's size stays
/// flat under sustained load: SQLite reuses freed pages by itself, PostgreSQL once the prune
/// has vacuumed (autovacuum may be off, as on the test server, or far behind).
#[tokio::test]
async fn pruned_order_ids_leave_room_that_later_ones_reuse() {
    with_each_database(|url| async move {
        let store = open(&url)
            .await
            .with_dedupe_window(std::time::Duration::from_secs(60));
        let lease = first_lease(&store).await;
        let orders = |round: usize, at: i64| -> Vec<Event> {
            (0..2_000)
                .map(|n| order(&format!("o-{round}-{n}"), 100, at))
                .collect()
        };
        let size_query = if url.starts_with("sqlite:") {
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
        } else {
            "SELECT pg_relation_size('order_ids')"
        };
        let size = || async {
            let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
            let bytes: i64 = sqlx::query_scalar(size_query)
                .fetch_one(&pool)
                .await
                .expect("size");
            pool.close().await;
            bytes
        };
        let mut at = NOW;
        store
            .apply_batch(
                &lease,
                &orders(0, at),
                &Judgement::default(),
                chrono_tz::UTC,
                at,
            )
            .await
            .expect("apply");
        let filled = size().await;
        for round in 1..4 {
            // Past the window and its bucket: the earlier ids are pruned, new ones come.
            at += 8 * 60_000;
            store.prune(at).await.expect("prune");
            assert_eq!(store.applied_count().await.expect("count"), 0);
            store
                .apply_batch(
                    &lease,
                    &orders(round, at),
                    &Judgement::default(),
                    chrono_tz::UTC,
                    at,
                )
                .await
                .expect("apply");
        }
        let after = size().await;
        assert!(
            after <= filled + filled / 4,
            "{after} bytes after three rounds of prune and refill, {filled} after the first"
        );
        store.close().await;
    })
    .await;
}

/// Today's schema (main's migrations: all but this issue's, numbered 20261228000009 and up, which
/// sort before main's 07 and 08 but are applied after them on an existing deployment) with applied events of every kind and their
/// figures, then this version's migrations: every figure and the history stay, the orders are
/// still duplicates, and the users' latest activity and sign-out come over.
#[tokio::test]
async fn the_migration_from_applied_events_keeps_every_figure_and_the_history() {
    with_each_database(|url| async move {
        let mut migrator = if url.starts_with("sqlite:") {
            sqlx::migrate!("migrations/sqlite")
        } else {
            sqlx::migrate!("migrations/postgres")
        };
        migrator.migrations = migrator
            .migrations
            .iter()
            .filter(|migration| !(20261228000009..20261229000000).contains(&migration.version))
            .cloned()
            .collect::<Vec<_>>()
            .into();
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
        migrator.run(&pool).await.expect("today's migrations");
        pool.close().await;
        let minute = minute_of(NOW);
        // u1: active, then signed out; u2: signed out, then active (and an order); u3: active
        // only, an hour and a half ago; plus an order and a refund of u4.
        let rows = [
            ("a1", "user.active", "u1", NOW - 40_000, 0),
            ("s1", "user.signed_out", "u1", NOW - 30_000, 0),
            ("s2", "user.signed_out", "u2", NOW - 30_000, 0),
            ("a2", "user.active", "u2", NOW - 20_000, 0),
            ("o2", "order.placed", "u2", NOW - 10_000, 250),
            ("a3", "user.active", "u3", NOW - 5_400_000, 0),
            ("o4", "order.placed", "u4", NOW - 2_000, 1_000),
            ("r4", "order.refunded", "u4", NOW - 1_000, 0),
            ("r5", "order.refunded", "u4", NOW - 1_000, 40),
        ];
        let values: Vec<String> = rows
            .iter()
            .map(|(id, kind, user, at, amount)| {
                format!("('{id}', '{kind}', '{user}', {at}, {amount}, {NOW})")
            })
            .collect();
        execute(
            &url,
            &format!(
                "INSERT INTO applied_events \
                 (id, kind, user_id, occurred_at, amount_minor, applied_at) VALUES {};
                 INSERT INTO minute_stats (minute, orders, revenue_minor, active_users) VALUES
                 ({minute}, 2, 1210, 0), ({}, 5, 777, 3);
                 INSERT INTO daily_revenue (day, revenue_minor) VALUES ('2026-11-23', 1987)",
                values.join(", "),
                minute - 3 * 86_400_000
            ),
        )
        .await;
        let old_history = {
            let store = Store::connect(&url.parse().expect("url"))
                .await
                .expect("connect");
            let history = store
                .history(minute - 4 * 86_400_000, minute + 60_000)
                .await
                .expect("history");
            store.close().await;
            history
        };

        let store = open(&url).await;
        assert_eq!(
            store
                .history(minute - 4 * 86_400_000, minute + 60_000)
                .await
                .expect("history"),
            old_history
        );
        let restore = store
            .load_restore(NOW, 3_600_000, chrono_tz::UTC)
            .await
            .expect("restore");
        let mut users: Vec<(String, Option<i64>, Option<i64>)> = restore
            .users
            .iter()
            .map(|u| (u.user_id.clone(), u.last_active, u.last_signed_out))
            .collect();
        users.sort();
        assert_eq!(
            users,
            vec![
                ("u1".into(), Some(NOW - 40_000), Some(NOW - 30_000)),
                ("u2".into(), Some(NOW - 10_000), Some(NOW - 30_000)),
                ("u4".into(), Some(NOW - 1_000), None),
            ],
            "u3 is older than the horizon"
        );
        let mut orders = restore.recent_orders.clone();
        orders.sort_by_key(|(at, kind)| (*at, kind.amount_minor()));
        assert_eq!(
            orders,
            vec![
                (NOW - 10_000, EventKind::OrderPlaced { amount_minor: 250 }),
                (
                    NOW - 2_000,
                    EventKind::OrderPlaced {
                        amount_minor: 1_000
                    }
                ),
                (NOW - 1_000, EventKind::OrderRefunded { amount_minor: 0 }),
                (NOW - 1_000, EventKind::OrderRefunded { amount_minor: 40 }),
            ]
        );
        assert_eq!(restore.days.iter().map(|(_, r)| r).sum::<i64>(), 1987);
        let tally = restore
            .minutes
            .iter()
            .find(|(m, _)| *m == minute)
            .expect("this minute")
            .1;
        assert_eq!((tally.orders, tally.revenue_minor), (2, 1210));
        assert_eq!(store.presence_count().await.expect("count"), 4);

        // The orders are still duplicates; the users' rows take new events as before.
        let lease = first_lease(&store).await;
        let again = [
            order("o2", 250, NOW - 10_000),
            order("o4", 1_000, NOW - 2_000),
            order("r5", 40, NOW - 1_000),
            order("new", 5, NOW - 1_000),
        ];
        assert_eq!(
            fresh(&store, &lease, &again).await,
            vec![false, false, false, true]
        );
        assert_eq!(store.applied_count().await.expect("count"), 5);
        assert_eq!(revenue_by_days(&store).await, 1987 + 5);
        store.close().await;
    })
    .await;
}

/// An id whose bucket has expired but is not pruned yet is new again, and recorded once: its
/// repeat within the window from then on is a duplicate, and a prune of the old bucket keeps
/// it. PostgreSQL, keyed by the digest alone, moves the row to the current bucket; SQLite
/// keeps the old row until the prune drops it.
#[tokio::test]
async fn an_id_of_an_expired_bucket_not_yet_pruned_is_new_again_and_recorded_once() {
    with_each_database(|url| async move {
        let store = open(&url)
            .await
            .with_dedupe_window(std::time::Duration::from_secs(60));
        let lease = first_lease(&store).await;
        let once = [order("o", 100, NOW - 1_000)];
        let apply_at = |at: i64| fresh_at(&store, &lease, &once, at);
        assert_eq!(apply_at(NOW).await, [true]);
        // 60 s + 2.5 s + 5 min kept: 8 minutes later the first bucket has expired.
        let later = NOW + 8 * 60_000;
        assert_eq!(apply_at(later).await, [true], "older than the window: new");
        assert_eq!(
            apply_at(later + 10_000).await,
            [false],
            "within it: a duplicate"
        );
        store.prune(later + 10_000).await.expect("prune");
        assert_eq!(store.applied_count().await.expect("count"), 1);
        assert_eq!(apply_at(later + 20_000).await, [false], "still recorded");
        assert_eq!(revenue_by_days(&store).await, 200);
        store.close().await;
    })
    .await;
}

/// PostgreSQL's order ids are keyed by the digest alone since migration 20261228000012: a
/// digest recorded twice before it (once in an expired bucket, once again later) keeps the row
/// of the newer bucket, and every live id is still a duplicate after it.
#[tokio::test]
async fn the_migration_to_digest_keys_keeps_one_row_per_id_and_every_live_id() {
    with_each_database(|url| async move {
        if url.starts_with("sqlite:") {
            return; // SQLite keeps its bucket-first key: no such migration.
        }
        let mut migrator = sqlx::migrate!("migrations/postgres");
        migrator.migrations = migrator
            .migrations
            .iter()
            .filter(|migration| migration.version < 20261228000012)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
        migrator.run(&pool).await.expect("the migrations before it");
        pool.close().await;
        let (twice_hi, twice_lo) = order_digest("twice");
        let (once_hi, once_lo) = order_digest("once");
        let (old_hi, old_lo) = order_digest("old");
        let (expired, live) = (NOW - 2 * 86_400_000, NOW - 60_000);
        execute(
            &url,
            &format!(
                "INSERT INTO order_id_buckets (bucket, ends_at) VALUES
                 ({expired}, {expired} + 3600000), ({live}, {live} + 3600000);
                 INSERT INTO order_ids (bucket, hi, lo, occurred_at, signed_minor) VALUES
                 ({expired}, {twice_hi}, {twice_lo}, {expired}, 7),
                 ({live}, {twice_hi}, {twice_lo}, {live}, 9),
                 ({live}, {once_hi}, {once_lo}, {live}, 5),
                 ({expired}, {old_hi}, {old_lo}, {expired}, 3)"
            ),
        )
        .await;

        let store = open(&url).await;
        assert_eq!(store.applied_count().await.expect("count"), 3);
        let restore = store
            .load_restore(NOW, 3_600_000, chrono_tz::UTC)
            .await
            .expect("restore");
        let mut recent = restore.recent_orders.clone();
        recent.sort_by_key(|(_, kind)| kind.amount_minor());
        assert_eq!(
            recent,
            vec![
                (live, EventKind::OrderPlaced { amount_minor: 5 }),
                (live, EventKind::OrderPlaced { amount_minor: 9 }),
            ]
        );
        let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
        let kept: Vec<(i64, i64)> = sqlx::query_as(&format!(
            "SELECT bucket, signed_minor FROM order_ids WHERE hi = {twice_hi} AND lo = {twice_lo}"
        ))
        .fetch_all(&pool)
        .await
        .expect("the id recorded twice");
        pool.close().await;
        assert_eq!(kept, vec![(live, 9)], "the newer bucket's row");
        let lease = first_lease(&store).await;
        let batch = [
            order("twice", 9, live),
            order("once", 5, live),
            order("old", 3, NOW - 1_000),
        ];
        assert_eq!(
            fresh(&store, &lease, &batch).await,
            vec![false, false, true]
        );
        assert_eq!(store.applied_count().await.expect("count"), 3);
        store.close().await;
    })
    .await;
}
