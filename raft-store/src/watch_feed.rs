//! An ordered, gap-free, duplicate-free feed of one key range's events, for any watcher on this
//! master (the etcd Watch service, the API server's watches).
//!
//! The feed replays history from the database up to the revision current when it subscribed,
//! then follows the live broadcast, skipping what it already delivered. Whenever it falls behind
//! the broadcast ring, or sees a revision jump (a snapshot was installed under it), it reads the
//! missing revisions from the database. A start revision that compaction removed ends the feed
//! with [`Feed::Compacted`].

use crate::mvcc::KeyRange;
use crate::state_machine::SmShared;
use crate::watch_hub::RevisionEvents;
use skiff_proto::mvccpb::{event::EventType, Event};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{broadcast, mpsc};

/// Events per message when replaying history.
const REPLAY_BATCH: usize = 1000;

/// What a feed delivers.
#[derive(Debug)]
pub enum Feed {
    /// The matching events of one or more consecutive revisions, ending at `revision`.
    Events { revision: i64, events: Vec<Event> },
    /// The next revision wanted was compacted away; the feed has ended.
    Compacted { compacted: i64 },
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    pub range: KeyRange,
    /// First revision wanted; 0 = only what happens after the feed starts.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// A running feed. Dropping it stops the feed.
pub struct FeedHandle {
    pub rx: mpsc::Receiver<Feed>,
    /// The store revision current when the feed started.
    pub start_current: i64,
    /// Every revision up to this one has been delivered or had nothing matching: a watcher
    /// may report it as progress.
    pub progress: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl FeedHandle {
    /// The revision this feed's reader may report as progress (a bookmark, a progress
    /// notification): everything up to it has been received from `rx`. None while events are
    /// still queued — `progress` counts what the feed pushed into the channel, and a report
    /// made before the reader sent those on would claim revisions its client has not seen.
    pub fn settled_progress(&self) -> Option<i64> {
        // Load first: the feed pushes a revision's events before it advances `progress`, so an
        // empty channel after the load means every event up to it was received.
        let progress = self.progress.load(Ordering::SeqCst);
        self.rx.is_empty().then_some(progress)
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Stop {
    Gone,
    Compacted(i64),
}

struct Follower {
    sm: Arc<SmShared>,
    spec: FeedSpec,
    tx: mpsc::Sender<Feed>,
    sent: i64,
    progress: Arc<AtomicI64>,
}

impl Follower {
    fn matches(&self, ev: &Event) -> bool {
        let put = ev.r#type == EventType::Put as i32;
        if (put && self.spec.no_put) || (!put && self.spec.no_delete) {
            return false;
        }
        ev.kv.as_ref().is_some_and(|kv| self.spec.range.contains(&kv.key))
    }

    fn advance(&mut self, rev: i64) {
        self.sent = rev;
        self.progress.store(rev, Ordering::SeqCst);
    }

    async fn send(&self, revision: i64, mut events: Vec<Event>) -> Result<(), Stop> {
        testing_drop(&mut events);
        if events.is_empty() {
            return Ok(());
        }
        self.tx.send(Feed::Events { revision, events }).await.map_err(|_| Stop::Gone)
    }

    /// Delivers every revision in `(sent, upto]` from the database.
    async fn replay(&mut self, upto: i64) -> Result<(), Stop> {
        let sm = self.sm.clone();
        let mvcc = &sm.mvcc;
        while self.sent < upto {
            let compacted = mvcc.compact_revision();
            if self.sent + 1 < compacted {
                return Err(Stop::Compacted(compacted));
            }
            let batch = mvcc.events(self.sent + 1, upto, REPLAY_BATCH);
            let Some(&(last, _)) = batch.last() else {
                self.advance(upto);
                break;
            };
            let mut events = Vec::new();
            for (rev, mut ev) in batch {
                if self.matches(&ev) {
                    if self.spec.prev_kv {
                        let key = ev.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
                        ev.prev_kv = mvcc.prev_kv(&key, rev);
                    }
                    events.push(ev);
                }
            }
            if !events.is_empty() {
                self.send(last, events).await?;
            }
            self.advance(last);
        }
        Ok(())
    }

    async fn live(&mut self, rev: &RevisionEvents) -> Result<(), Stop> {
        if rev.revision <= self.sent {
            return Ok(());
        }
        if rev.revision > self.sent + 1 {
            self.replay(rev.revision - 1).await?;
        }
        let events: Vec<Event> = rev
            .events
            .iter()
            .filter(|e| self.matches(e))
            .map(|e| {
                let mut e = e.clone();
                if !self.spec.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect();
        if !events.is_empty() {
            self.send(rev.revision, events).await?;
        }
        self.advance(rev.revision);
        Ok(())
    }
}

/// Testing only: `SKIFF_TESTING_DROP_WATCH_EVENTS=N` in a master's environment makes its
/// feeds drop every Nth event they would deliver — a deliberately broken watch path, which the
/// chaos harness's read-path oracle must catch.
fn testing_drop(events: &mut Vec<Event>) {
    static EVERY: OnceLock<Option<(u64, AtomicU64)>> = OnceLock::new();
    let every = EVERY.get_or_init(|| {
        let n: u64 = std::env::var("SKIFF_TESTING_DROP_WATCH_EVENTS").ok()?.parse().ok().filter(|n| *n > 0)?;
        tracing::warn!(n, "testing: watch feeds drop every Nth event");
        Some((n, AtomicU64::new(0)))
    });
    let Some((n, count)) = every else { return };
    events.retain(|_| (count.fetch_add(1, Ordering::Relaxed) + 1) % n != 0);
}

/// Starts a feed of `spec`'s events on this master.
pub fn start(sm: Arc<SmShared>, spec: FeedSpec) -> FeedHandle {
    // Subscribe before reading the current revision: anything newer arrives on `rx`.
    let live = sm.hub.subscribe();
    let current = sm.mvcc.current_revision();
    let start = if spec.start_revision > 0 { spec.start_revision } else { current + 1 };
    let (tx, rx) = mpsc::channel(64);
    let progress = Arc::new(AtomicI64::new(start - 1));
    let f = Follower { sm: sm.clone(), spec, tx, sent: start - 1, progress: progress.clone() };
    let closed = sm.hub.closed();
    let task = tokio::spawn(async move {
        tokio::select! {
            () = f.follow(current, live) => {}
            () = closed => {}
        }
    });
    FeedHandle { rx, start_current: current, progress, task }
}

impl Follower {
    /// Replays from the database, then follows the hub until the receiver leaves or the
    /// requested history is compacted away.
    async fn follow(mut self, current: i64, mut live: broadcast::Receiver<Arc<RevisionEvents>>) {
        let f = &mut self;
        let mut result = f.replay(current).await;
        while result.is_ok() {
            result = match live.recv().await {
                Ok(rev) => f.live(&rev).await,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    live = f.sm.hub.subscribe();
                    let upto = f.sm.mvcc.current_revision();
                    f.replay(upto).await
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
        }
        if let Err(Stop::Compacted(compacted)) = result {
            let _ = f.tx.send(Feed::Compacted { compacted }).await;
        }
    }
}
