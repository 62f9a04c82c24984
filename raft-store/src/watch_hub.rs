//! Fan-out of applied events to watchers on this master.
//!
//! The state machine publishes each revision's events after its batch is written, so any
//! revision a watcher hears about is already readable from the `rev` column family. A watcher
//! that falls behind (the broadcast ring overflows) or sees a gap (a snapshot was installed)
//! reads the missing revisions from the database instead: the ring is a fast path, the
//! database is the truth.

use skiff_proto::mvccpb::Event;
use std::sync::Arc;
use tokio::sync::broadcast;

/// The events of one revision, `prev_kv` filled.
#[derive(Debug)]
pub struct RevisionEvents {
    pub revision: i64,
    pub events: Vec<Event>,
}

pub struct WatchHub {
    tx: broadcast::Sender<Arc<RevisionEvents>>,
    /// Set once the master is shutting down: every feed then ends, so the streams that carry
    /// them finish and a graceful shutdown is not held open by watchers that never leave.
    closing: tokio::sync::watch::Sender<bool>,
}

impl WatchHub {
    pub fn new(capacity: usize) -> Self {
        WatchHub { tx: broadcast::channel(capacity).0, closing: tokio::sync::watch::channel(false).0 }
    }

    /// Ends every feed, now and from now on.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`close`](Self::close) has been called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            // The sender lives as long as the hub; if it is gone, so is everything to watch.
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }

    pub fn publish(&self, revision: i64, events: Vec<Event>) {
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(RevisionEvents { revision, events }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RevisionEvents>> {
        self.tx.subscribe()
    }
}
