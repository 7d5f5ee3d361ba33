//! One HTTP worker's copy of the hub, for the event streams that worker serves.
//!
//! Were every stream to wait on the hub itself, each snapshot would send ten thousand wake-ups
//! from the publishing thread to the workers' threads, each one a lock on a run queue and, when
//! the worker has gone idle between two of them, a system call to wake it; and the streams of
//! both workers would count references on the same frames. A feed is made per worker (by the
//! `App` factory, which runs on that worker's thread) and follows the hub with one task: the
//! hub wakes that task, which takes the worker's own copy of the frame and wakes the worker's
//! streams on their own thread.
//!
//! The feed keeps the hub's order: announcements the hub delivered before a snapshot are
//! relayed before it, so a stream that writes announcements first never sends a snapshot id
//! ahead of an announcement. Its ring is as long as the hub's; a stream that falls further
//! behind is told so (`Lagged`) and disconnects, as with the hub, unless every announcement
//! that left the ring is one it already has (a stream that has just connected, say).
//!
//! Not `Send`: it is used on its worker's thread only.

use super::hub::{AnnouncementFrame, Hub, PublishedSnapshot, ANNOUNCEMENT_RING};
use crate::aggregate::Millis;
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// The newest snapshot, as a stream of this worker writes it.
#[derive(Debug, Clone)]
pub(crate) struct LocalSnapshot {
    /// `PublishedSnapshot::index`: counts snapshots published on this instance.
    pub index: u64,
    pub oldest_arrival: Option<Millis>,
    /// This worker's copy of the encoded event.
    pub sse: Bytes,
}

/// Where a stream is listed to be woken: the feed's version then, and its place in the list.
/// The default is "never listed" (versions start at 1).
#[derive(Debug, Default)]
pub(crate) struct Listing {
    version: u64,
    index: usize,
}

/// A stream asked for an announcement the ring no longer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Lagged;

/// Cloning is shallow; every clone is the same feed.
#[derive(Clone)]
pub(crate) struct WorkerFeed {
    inner: Rc<Inner>,
}

struct Inner {
    hub: Hub,
    state: RefCell<State>,
}

struct State {
    /// Whether the follower task runs (it is started by the first stream, on this thread).
    following: bool,
    snapshot: Option<LocalSnapshot>,
    /// `(id, encoded event)`, oldest first.
    announcements: VecDeque<(i64, Bytes)>,
    /// Position of `announcements[0]` among every announcement this feed has relayed.
    first: u64,
    /// Every announcement that left the ring (or never reached it) has an id at most this.
    lost_through: i64,
    closing: bool,
    /// Bumped on every change, from 1; a waiting stream is listed in `waiters` once per
    /// version.
    version: u64,
    /// Emptied at each change. A stream that ends takes its waker out (`None`): a waker keeps
    /// its connection's task allocated, and a quiet hub may not change for hours.
    waiters: Vec<Option<Waker>>,
}

impl WorkerFeed {
    pub(crate) fn new(hub: Hub) -> WorkerFeed {
        WorkerFeed {
            inner: Rc::new(Inner {
                hub,
                state: RefCell::new(State {
                    following: false,
                    snapshot: None,
                    announcements: VecDeque::new(),
                    first: 0,
                    lost_through: i64::MIN,
                    closing: false,
                    version: 1,
                    waiters: Vec::new(),
                }),
            }),
        }
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Starts following the hub, once; call it on the worker's thread (inside its `LocalSet`),
    /// before the stream reads what it needs from the hub. Returns the position from which the
    /// stream takes announcements.
    pub(crate) fn follow(&self) -> u64 {
        let mut state = self.inner.state.borrow_mut();
        if !state.following {
            state.following = true;
            // Subscribed now, not when the task first runs: nothing delivered from here on is
            // missed by a stream that joins now.
            let subscription = self.inner.hub.subscribe();
            let closing = self.inner.hub.closing();
            if let Some(published) = subscription.snapshots.borrow().as_ref() {
                state.snapshot = Some(local_snapshot(published));
            }
            tokio::task::spawn_local(follow(self.inner.clone(), subscription, closing));
        }
        state.first + state.announcements.len() as u64
    }

    /// The announcement at `position`, if it has been relayed.
    pub(crate) fn announcement(&self, position: u64) -> Result<Option<(i64, Bytes)>, Lagged> {
        let state = self.inner.state.borrow();
        let Some(offset) = position.checked_sub(state.first) else {
            return Err(Lagged);
        };
        Ok(state.announcements.get(offset as usize).cloned())
    }

    /// After `Lagged`: where a stream that has (or did not need) every announcement up to
    /// `last_announcement` goes on from, if nothing it lacks left the ring; `None` when it must
    /// resume from the store.
    pub(crate) fn after_lag(&self, last_announcement: i64) -> Option<u64> {
        let state = self.inner.state.borrow();
        (last_announcement >= state.lost_through).then_some(state.first)
    }

    /// The newest snapshot when it is newer than `index`.
    pub(crate) fn snapshot_after(&self, index: u64) -> Option<LocalSnapshot> {
        let state = self.inner.state.borrow();
        state.snapshot.as_ref().filter(|s| s.index > index).cloned()
    }

    /// The hub is closing (shutdown): streams end.
    pub(crate) fn closing(&self) -> bool {
        self.inner.state.borrow().closing
    }

    /// Wakes `waker` at the next change. `listing` is the caller's memory of where it was
    /// last listed, so that a stream polled again before a change is not listed twice.
    pub(crate) fn wake_on_change(&self, waker: &Waker, listing: &mut Listing) {
        let mut state = self.inner.state.borrow_mut();
        if listing.version != state.version {
            listing.version = state.version;
            listing.index = state.waiters.len();
            state.waiters.push(Some(waker.clone()));
        } else if let Some(Some(listed)) = state.waiters.get_mut(listing.index) {
            // Polled again before a change: keep the waker of the latest poll, as a stream must.
            if !listed.will_wake(waker) {
                *listed = waker.clone();
            }
        }
    }

    /// Takes a stream that ends off the list of waiters.
    pub(crate) fn forget(&self, listing: &Listing) {
        let mut state = self.inner.state.borrow_mut();
        if listing.version == state.version {
            if let Some(waiter) = state.waiters.get_mut(listing.index) {
                *waiter = None;
            }
        }
    }

    fn change(&self, apply: impl FnOnce(&mut State)) {
        let waiters = {
            let mut state = self.inner.state.borrow_mut();
            apply(&mut state);
            state.version += 1;
            std::mem::take(&mut state.waiters)
        };
        // Same thread: each wake-up queues a stream on this worker, nothing more.
        for waker in waiters.into_iter().flatten() {
            waker.wake();
        }
    }
}

fn local_snapshot(published: &Arc<PublishedSnapshot>) -> LocalSnapshot {
    LocalSnapshot {
        index: published.index,
        oldest_arrival: published.frame.oldest_arrival,
        sse: Bytes::copy_from_slice(&published.sse),
    }
}

impl State {
    fn push_announcement(&mut self, frame: &AnnouncementFrame) {
        if self.announcements.len() == ANNOUNCEMENT_RING {
            if let Some((id, _)) = self.announcements.pop_front() {
                self.lost_through = self.lost_through.max(id);
            }
            self.first += 1;
        }
        let sse = Bytes::copy_from_slice(&frame.sse);
        self.announcements.push_back((frame.announcement.id, sse));
    }

    /// The follower itself fell behind the hub: the announcements it missed are gone, so
    /// streams that still needed them see `Lagged` and resume from the store. `newest` is the
    /// hub's last announcement now, at least the id of every one missed.
    fn skip_announcements(&mut self, missed: u64, newest: i64) {
        self.first += self.announcements.len() as u64 + missed;
        self.announcements.clear();
        self.lost_through = self.lost_through.max(newest);
    }
}

async fn follow(
    inner: Rc<Inner>,
    mut subscription: super::hub::Subscription,
    closing: tokio_util::sync::CancellationToken,
) {
    let feed = WorkerFeed { inner };
    loop {
        tokio::select! {
            biased;
            _ = closing.cancelled() => break,
            received = subscription.announcements.recv() => match received {
                Ok(frame) => feed.change(|state| state.push_announcement(&frame)),
                Err(RecvError::Lagged(missed)) => {
                    let newest = feed.hub().last_announcement();
                    feed.change(|state| state.skip_announcements(missed, newest));
                }
                Err(RecvError::Closed) => break,
            },
            changed = subscription.snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let published = subscription.snapshots.borrow_and_update().clone();
                let newest = feed.hub().last_announcement();
                feed.change(|state| {
                    // What the hub delivered before this snapshot goes first (see the header).
                    loop {
                        match subscription.announcements.try_recv() {
                            Ok(frame) => state.push_announcement(&frame),
                            Err(TryRecvError::Lagged(missed)) => {
                                state.skip_announcements(missed, newest)
                            }
                            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                        }
                    }
                    if let Some(published) = published.as_ref() {
                        state.snapshot = Some(local_snapshot(published));
                    }
                });
            }
        }
    }
    // Whatever ended the follower, the streams waiting on it end too.
    feed.change(|state| state.closing = true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{Announcement, Level};
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn announcement(id: i64) -> Announcement {
        Announcement {
            id,
            message: format!("note {id}"),
            level: Level::Info,
            created_at: "2026-12-02T00:00:00.000Z".into(),
            author: "ops".into(),
        }
    }

    /// Runs `test` as an HTTP worker runs its streams: on one thread, inside a `LocalSet`.
    async fn on_a_worker<F: Future<Output = ()>>(test: impl FnOnce(Hub, WorkerFeed) -> F) {
        let local = tokio::task::LocalSet::new();
        let hub = Hub::new(0);
        let feed = WorkerFeed::new(hub.clone());
        local.run_until(test(hub, feed)).await;
    }

    /// Lets the follower task catch up.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[tokio::test]
    async fn relays_announcements_in_order_then_the_snapshot_and_wakes_its_waiters_once() {
        on_a_worker(|hub, feed| async move {
            let start = feed.follow();
            assert_eq!(start, 0);
            assert!(feed.snapshot_after(0).is_none());
            let (woken, waker) = counting_waker();
            let mut listing = Listing::default();
            feed.wake_on_change(&waker, &mut listing);
            feed.wake_on_change(&waker, &mut listing);

            hub.deliver_for_test(announcement(1));
            assert!(hub.publish(crate::live::tests::frame(5)));
            settle().await;
            assert_eq!(woken.0.load(Ordering::SeqCst), 1, "listed once");
            let (id, sse) = feed.announcement(start).expect("held").expect("relayed");
            assert_eq!(id, 1);
            assert!(sse.starts_with(b"id: 1-"));
            let snapshot = feed.snapshot_after(0).expect("relayed");
            assert!(snapshot.sse.starts_with(b"id: 1-5\n"));
            assert!(feed.snapshot_after(snapshot.index).is_none());

            hub.close();
            settle().await;
            assert!(feed.closing());
        })
        .await;
    }

    #[tokio::test]
    async fn a_stream_that_ends_is_taken_off_the_list_and_its_waker_released() {
        on_a_worker(|hub, feed| async move {
            feed.follow();
            let (gone, gone_waker) = counting_waker();
            let (staying, staying_waker) = counting_waker();
            let mut gone_listing = Listing::default();
            feed.wake_on_change(&gone_waker, &mut gone_listing);
            feed.wake_on_change(&staying_waker, &mut Listing::default());
            drop(gone_waker);
            assert_eq!(Arc::strong_count(&gone), 2, "the feed holds a copy");
            feed.forget(&gone_listing);
            assert_eq!(Arc::strong_count(&gone), 1, "released at once");

            assert!(hub.publish(crate::live::tests::frame(1)));
            settle().await;
            assert_eq!(gone.0.load(Ordering::SeqCst), 0);
            assert_eq!(staying.0.load(Ordering::SeqCst), 1);
            // A listing from before the change forgets nothing of the new list.
            let mut listing = Listing::default();
            feed.wake_on_change(&staying_waker, &mut listing);
            feed.forget(&gone_listing);
            assert!(hub.publish(crate::live::tests::frame(2)));
            settle().await;
            assert_eq!(staying.0.load(Ordering::SeqCst), 2);
        })
        .await;
    }

    #[tokio::test]
    async fn a_position_older_than_the_ring_is_lagged() {
        on_a_worker(|hub, feed| async move {
            let start = feed.follow();
            for id in 1..=(ANNOUNCEMENT_RING as i64 + 3) {
                hub.deliver_for_test(announcement(id));
                settle().await;
            }
            assert_eq!(feed.announcement(start), Err(Lagged));
            // Announcements 1 to 3 left the ring: a stream that has them goes on at the oldest
            // one held, a stream that lacks one of them must resume from the store.
            let oldest = start + 3;
            assert_eq!(feed.after_lag(3), Some(oldest));
            assert_eq!(feed.after_lag(2), None);
            let (id, _) = feed.announcement(oldest).expect("held").expect("relayed");
            assert_eq!(id, 4);
            let newest = start + ANNOUNCEMENT_RING as u64 + 2;
            let (id, _) = feed.announcement(newest).expect("held").expect("relayed");
            assert_eq!(id, ANNOUNCEMENT_RING as i64 + 3);
            assert_eq!(feed.announcement(newest + 1), Ok(None));
        })
        .await;
    }
}
