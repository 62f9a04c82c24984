//! Fan-out of applied events to watchers on this master.
//!
//! The state machine publishes each revision's events after its batch is written, so any
//! revision a watcher hears about is already readable from the `rev` column family. A watcher
//! that falls behind (the broadcast ring overflows) or sees a gap (a snapshot was installed)
//! reads the missing revisions from the database instead: the ring is a fast path, the
//! database is the truth.

use skiff_proto::mvccpb::Event;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Counters of changes under key prefixes, for caches that must see every applied change
    /// before the next read ([`WatchHub::changes_under`]).
    counted: Mutex<Vec<(Vec<u8>, Arc<AtomicU64>)>>,
    /// Counts snapshots installed: the keyspace was replaced without events, so a cache fed by
    /// the events must be rebuilt ([`WatchHub::installs`]).
    installs: tokio::sync::watch::Sender<u64>,
}

impl WatchHub {
    pub fn new(capacity: usize) -> Self {
        WatchHub {
            tx: broadcast::channel(capacity).0,
            closing: tokio::sync::watch::channel(false).0,
            counted: Mutex::default(),
            installs: tokio::sync::watch::channel(0).0,
        }
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

    /// A counter that goes up with every applied change to a key under `prefix` (and with every
    /// snapshot installed): bumped in the apply path, before the write counts as applied, so a
    /// reader past a read barrier that sees the same count as when it built a cache knows no
    /// change under `prefix` has been applied since.
    pub fn changes_under(&self, prefix: &[u8]) -> Arc<AtomicU64> {
        let mut counted = self.counted.lock().expect("not poisoned");
        if let Some((_, c)) = counted.iter().find(|(p, _)| p == prefix) {
            return c.clone();
        }
        let counter = Arc::new(AtomicU64::new(0));
        counted.push((prefix.to_vec(), counter.clone()));
        counter
    }

    /// Every counter goes up: the whole keyspace was replaced (a snapshot was installed).
    pub fn everything_changed(&self) {
        for (_, c) in self.counted.lock().expect("not poisoned").iter() {
            c.fetch_add(1, Ordering::AcqRel);
        }
        self.installs.send_modify(|n| *n += 1);
    }

    /// Changes whenever the whole keyspace was replaced (a snapshot was installed): what a
    /// cache built from the published events knows is then void.
    pub fn installs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installs.subscribe()
    }

    pub fn publish(&self, revision: i64, events: Vec<Event>) {
        for (prefix, c) in self.counted.lock().expect("not poisoned").iter() {
            let touched = |e: &Event| e.kv.as_ref().is_some_and(|kv| kv.key.starts_with(prefix));
            if events.iter().any(touched) {
                c.fetch_add(1, Ordering::AcqRel);
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(RevisionEvents { revision, events }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RevisionEvents>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::mvccpb::KeyValue;
    use std::sync::atomic::Ordering;

    fn put(key: &str) -> Event {
        Event { kv: Some(KeyValue { key: key.as_bytes().to_vec(), ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn change_counters_count_only_their_prefix_and_every_snapshot() {
        let hub = WatchHub::new(8);
        let roles = hub.changes_under(b"/registry/roles/");
        let bindings = hub.changes_under(b"/registry/rolebindings/");
        assert!(Arc::ptr_eq(&roles, &hub.changes_under(b"/registry/roles/")), "one counter per prefix");
        hub.publish(2, vec![put("/registry/roles/default/admin"), put("/registry/pods/default/a")]);
        hub.publish(3, vec![put("/registry/pods/default/b")]);
        assert_eq!((roles.load(Ordering::SeqCst), bindings.load(Ordering::SeqCst)), (1, 0));
        hub.everything_changed();
        assert_eq!((roles.load(Ordering::SeqCst), bindings.load(Ordering::SeqCst)), (2, 1));
    }
}
