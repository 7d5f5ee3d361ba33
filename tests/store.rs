//! The store's contract, one suite run against both backends: embedded SQLite and PostgreSQL.

use pulseboard::aggregate::{minute_of, Event, EventKind, MINUTE_MS};
use pulseboard::config::DatabaseUrl;
use pulseboard::store::{Lease, Store, StoreError};
use std::future::Future;

const NOW: i64 = 1_795_428_930_000; // 2026-11-23T10:15:30Z
const TTL: i64 = 5_000;

async fn with_each_backend<F, Fut>(test: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let folder = tempfile::tempdir().expect("temporary folder");
    let sqlite = format!("sqlite://{}/store.db?mode=rwc", folder.path().display());
    test(open(&sqlite).await).await;

    let name = format!(
        "pb_store_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    admin(&format!("CREATE DATABASE {name}")).await;
    let store = open(&format!("postgres://postgres@127.0.0.1:5432/{name}")).await;
    test(store.clone()).await;
    store.close().await;
    admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

async fn open(url: &str) -> Store {
    let url: DatabaseUrl = url.parse().expect("database url");
    let store = Store::connect(&url)
        .await
        .expect("database must be reachable (run scripts/test.sh)");
    store.migrate().await.expect("migrations");
    store
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
        let applied = store
            .apply_batch(&lease, &first, chrono_tz::UTC, NOW)
            .await
            .expect("apply");
        assert_eq!(applied.fresh, vec![true, true]);

        let again = [order("b", 999, NOW - 500), order("c", 50, NOW - 61_000)];
        let applied = store
            .apply_batch(&lease, &again, chrono_tz::UTC, NOW)
            .await
            .expect("apply");
        assert_eq!(applied.fresh, vec![false, true]);
        assert_eq!(store.applied_count().await.expect("count"), 3);

        let restore = store
            .load_restore(NOW, 3_600_000, chrono_tz::UTC)
            .await
            .expect("restore");
        assert_eq!(restore.recent_events.len(), 3);
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

/// Batches larger than one statement's worth of rows, with earlier ids scattered through them.
#[tokio::test]
async fn large_batches_recognise_every_earlier_id() {
    with_each_backend(|store| async move {
        let lease = first_lease(&store).await;
        let event = |n: usize| order(&format!("e-{n}"), 1, NOW - 1_000);
        let first: Vec<Event> = (0..3_000).filter(|n| n % 2 == 0).map(event).collect();
        let applied = store
            .apply_batch(&lease, &first, chrono_tz::UTC, NOW)
            .await
            .expect("apply");
        assert!(applied.fresh.iter().all(|fresh| *fresh));

        let second: Vec<Event> = (0..3_000).map(event).collect();
        let applied = store
            .apply_batch(&lease, &second, chrono_tz::UTC, NOW)
            .await
            .expect("apply");
        let expected: Vec<bool> = (0..3_000).map(|n| n % 2 == 1).collect();
        assert_eq!(applied.fresh, expected);
        assert_eq!(store.applied_count().await.expect("count"), 3_000);
        let restore = store
            .load_restore(NOW, 3_600_000, chrono_tz::UTC)
            .await
            .expect("restore");
        assert_eq!(restore.days.iter().map(|(_, r)| r).sum::<i64>(), 3_000);
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
            .apply_batch(&old, &[order("x", 1, NOW)], chrono_tz::UTC, NOW + TTL + 2)
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

        // 26 hours later the applied id is past the dedupe window; the 9-day-old minute is gone.
        let later = NOW + 26 * 60 * MINUTE_MS;
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
        .apply_batch(&lease, &[order("created-1", 100, NOW)], chrono_tz::UTC, NOW)
        .await
        .expect("apply");
    assert_eq!(store.applied_count().await.expect("count"), 1);
    store.close().await;
    assert!(path.is_file(), "{} was not created", path.display());
}
