//! The API server's list cache: per kind, every object as last applied on this master, fed by
//! the store's event hub, so that a list is answered from memory — Kubernetes' watch cache
//! serving consistent reads. A linearizable list takes a read barrier, waits until the cache has
//! applied the revision that was current after it, then filters in memory; nothing is read
//! from the database or decoded per list.
//!
//! A kind's cache starts with its first list on this master and lives as long as the master.
//! It fills itself from one consistent range read, then applies each published revision. A
//! revision it did not hear about (the broadcast ring overflowed) is read from the revision
//! log; a history compacted away, or a snapshot installed under it, makes it fill again.
//!
//! Each object is kept as its JSON [`Value`] (what selectors, the JSON service and the
//! registry's own walks read) and as its protobuf encoding, made once as it is applied, which
//! a typed list sends as it is: listing an unchanged object converts and copies nothing but
//! its bytes into the response.

use crate::at_rest::AtRest;
use crate::error::{ApiError, ApiResult};
use crate::selector::{labels_of, FieldSelector, LabelSelector};
use prost::bytes::Bytes;
use prost::Message;
use serde::de::DeserializeOwned;
use serde_json::Value;
use skiff_proto::mvccpb::{event::EventType, Event, KeyValue};
use skiff_raft_store::state_machine::SmShared;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How long a list waits for its kind's cache to reach the revision it must show before it
/// reads the store instead.
const WAIT: Duration = Duration::from_secs(3);

/// Revisions read from the revision log per step when catching up.
const CATCH_UP_BATCH: usize = 1000;

/// Encodes a kind's JSON as its protobuf message; the typed services register one per kind
/// ([`ListCaches::convert_with`]) so that objects are encoded once, as they are applied, not
/// by the first list that wants them.
pub type Convert = fn(&Value) -> ApiResult<Bytes>;

/// The [`Convert`] of kind `T`.
pub fn encode<T: DeserializeOwned + Message>(object: &Value) -> ApiResult<Bytes> {
    Ok(to_typed::<T>(object)?.encode_to_vec().into())
}

fn to_typed<T: DeserializeOwned>(object: &Value) -> ApiResult<T> {
    T::deserialize(object).map_err(|e| ApiError::Internal(format!("stored object does not fit its schema: {e}")))
}

/// One stored object as the API serves it (resourceVersion set).
pub struct Stored {
    pub object: Value,
    labels: BTreeMap<String, String>,
    /// The object as its kind's protobuf message (a `Stored` is always of one kind).
    encoded: OnceLock<Bytes>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.object.fmt(f)
    }
}

impl Stored {
    pub fn new(object: Value) -> Stored {
        Stored { labels: labels_of(&object), object, encoded: OnceLock::new() }
    }

    /// A stored key-value, opened if it is encrypted at rest.
    pub fn decode(at_rest: Option<&AtRest>, kv: &KeyValue) -> ApiResult<Stored> {
        crate::registry::decode_object(at_rest, kv).map(Stored::new)
    }

    pub fn matches(&self, labels: &LabelSelector, fields: &FieldSelector) -> bool {
        labels.matches(&self.labels) && fields.matches(&self.object)
    }

    /// The object as the protobuf message `T` (its kind's), encoded from its JSON the first
    /// time and shared after.
    pub fn encoded<T: DeserializeOwned + Message>(&self) -> ApiResult<Bytes> {
        if let Some(bytes) = self.encoded.get() {
            return Ok(bytes.clone());
        }
        let bytes = encode::<T>(&self.object)?;
        // Another list may have encoded it meanwhile: either copy is the same object.
        let _ = self.encoded.set(bytes.clone());
        Ok(bytes)
    }

    /// The object as `T` (its kind's message), decoded from its encoding.
    pub fn typed<T: DeserializeOwned + Message + Default>(&self) -> ApiResult<T> {
        T::decode(self.encoded::<T>()?)
            .map_err(|e| ApiError::Internal(format!("cached object does not decode as its kind: {e}")))
    }
}

/// How one kind's stored values become [`Stored`] objects.
#[derive(Clone)]
struct Decoder {
    at_rest: Option<Arc<AtRest>>,
    convert: Option<Convert>,
}

impl Decoder {
    fn decode(&self, kv: &KeyValue) -> ApiResult<Stored> {
        let stored = Stored::decode(self.at_rest.as_deref(), kv)?;
        if let Some(convert) = self.convert {
            match convert(&stored.object) {
                Ok(bytes) => {
                    let _ = stored.encoded.set(bytes);
                }
                // Served as JSON still; a typed list of it fails with this error then.
                Err(e) => tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "stored object"),
            }
        }
        Ok(stored)
    }
}

/// A kind's objects at one revision, by store key.
#[derive(Default)]
struct Contents {
    objects: BTreeMap<Vec<u8>, Arc<Stored>>,
    revision: i64,
}

/// One kind's cache.
struct KindCache {
    contents: RwLock<Contents>,
    /// The revision `contents` is at, for lists waiting on it.
    applied: tokio::sync::watch::Sender<i64>,
}

/// What a list out of the cache found.
pub struct CachedPage {
    pub items: Vec<Arc<Stored>>,
    pub revision: i64,
    /// The first key under the prefix after the last item, when `limit` cut the list short.
    pub next: Option<Vec<u8>>,
}

impl KindCache {
    fn page(&self, prefix: &[u8], labels: &LabelSelector, fields: &FieldSelector, limit: usize) -> CachedPage {
        let contents = self.contents.read().expect("not poisoned");
        let mut items = Vec::new();
        let mut next = None;
        let under = contents.objects.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix));
        for (key, stored) in under {
            if items.len() == limit {
                next = Some(key.clone());
                break;
            }
            if stored.matches(labels, fields) {
                items.push(stored.clone());
            }
        }
        CachedPage { items, revision: contents.revision, next }
    }

    fn replace(&self, contents: Contents) {
        let revision = contents.revision;
        *self.contents.write().expect("not poisoned") = contents;
        self.applied.send_replace(revision);
    }

    /// Applies the events of revisions up to `revision` (those under `prefix`; the rest are
    /// other kinds').
    fn apply<'a>(&self, decoder: &Decoder, prefix: &[u8], revision: i64, events: impl Iterator<Item = &'a Event>) {
        let mut contents = self.contents.write().expect("not poisoned");
        for ev in events {
            let Some(kv) = ev.kv.as_ref().filter(|kv| kv.key.starts_with(prefix)) else { continue };
            if ev.r#type == EventType::Delete as i32 {
                contents.objects.remove(&kv.key);
                continue;
            }
            match decoder.decode(kv) {
                Ok(stored) => {
                    contents.objects.insert(kv.key.clone(), Arc::new(stored));
                }
                Err(e) => {
                    // Unreadable: listing it would fail; leaving the old version would lie.
                    tracing::error!(key = %String::from_utf8_lossy(&kv.key), error = %e, "list cache drops an object");
                    contents.objects.remove(&kv.key);
                }
            }
        }
        contents.revision = revision;
        drop(contents);
        self.applied.send_replace(revision);
    }
}

/// Every kind's cache on this master.
#[derive(Default)]
pub struct ListCaches {
    kinds: Mutex<HashMap<Vec<u8>, Arc<KindCache>>>,
    converters: Mutex<HashMap<Vec<u8>, Convert>>,
}

impl ListCaches {
    /// Objects of the kind under `kind_prefix` are converted by `convert` as they are cached
    /// (by caches started after this call).
    pub fn convert_with(&self, kind_prefix: &str, convert: Convert) {
        self.converters.lock().expect("not poisoned").insert(kind_prefix.as_bytes().to_vec(), convert);
    }

    /// Lists what is under `prefix` (a kind's prefix, or a namespace's within it) once the
    /// cache of the kind whose objects live under `kind_prefix` holds revision `at_least`;
    /// `None` when it has not within [`WAIT`] (the caller reads the store).
    #[allow(clippy::too_many_arguments)]
    pub async fn list(
        &self,
        sm: &Arc<SmShared>,
        at_rest: Option<&Arc<AtRest>>,
        kind_prefix: &str,
        prefix: &str,
        at_least: i64,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: usize,
    ) -> Option<CachedPage> {
        let cache = self.cache(sm, at_rest, kind_prefix);
        let mut applied = cache.applied.subscribe();
        if tokio::time::timeout(WAIT, applied.wait_for(|r| *r >= at_least)).await.is_err() {
            tracing::warn!(kind = kind_prefix, at_least, "list cache is behind; listing from the store");
            return None;
        }
        Some(cache.page(prefix.as_bytes(), labels, fields, limit))
    }

    fn cache(&self, sm: &Arc<SmShared>, at_rest: Option<&Arc<AtRest>>, kind_prefix: &str) -> Arc<KindCache> {
        let mut kinds = self.kinds.lock().expect("not poisoned");
        if let Some(cache) = kinds.get(kind_prefix.as_bytes()) {
            return cache.clone();
        }
        let cache = Arc::new(KindCache { contents: RwLock::default(), applied: tokio::sync::watch::channel(0).0 });
        kinds.insert(kind_prefix.as_bytes().to_vec(), cache.clone());
        let convert = self.converters.lock().expect("not poisoned").get(kind_prefix.as_bytes()).copied();
        let follower = Follower {
            sm: sm.clone(),
            decoder: Decoder { at_rest: at_rest.cloned(), convert },
            prefix: kind_prefix.as_bytes().to_vec(),
            cache: cache.clone(),
        };
        tokio::spawn(follower.run());
        cache
    }
}

/// Keeps one kind's cache current until the master shuts down.
struct Follower {
    sm: Arc<SmShared>,
    decoder: Decoder,
    prefix: Vec<u8>,
    cache: Arc<KindCache>,
}

/// Why following stopped.
enum Stop {
    /// Start over from a fresh read of the store.
    Refill,
    /// The master is shutting down.
    Done,
}

impl Follower {
    async fn run(self) {
        let closed = self.sm.hub.closed();
        tokio::pin!(closed);
        let mut installs = self.sm.hub.installs();
        loop {
            // Subscribe before reading: whatever is applied after the read arrives here.
            let mut live = self.sm.hub.subscribe();
            installs.borrow_and_update();
            if let Err(e) = self.fill().await {
                tracing::warn!(kind = %String::from_utf8_lossy(&self.prefix), error = %e, "list cache could not fill; retrying");
                tokio::select! {
                    _ = &mut closed => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            let stop = loop {
                let step = tokio::select! {
                    _ = &mut closed => Err(Stop::Done),
                    changed = installs.changed() => Err(if changed.is_ok() { Stop::Refill } else { Stop::Done }),
                    msg = live.recv() => match msg {
                        Ok(rev) => self.follow(rev.revision, &rev.events),
                        Err(RecvError::Lagged(_)) => self.catch_up(self.sm.mvcc.current_revision()),
                        Err(RecvError::Closed) => Err(Stop::Done),
                    },
                };
                if let Err(stop) = step {
                    break stop;
                }
            };
            match stop {
                Stop::Done => return,
                Stop::Refill => tracing::info!(kind = %String::from_utf8_lossy(&self.prefix), "list cache refills"),
            }
        }
    }

    /// Reads every object under the prefix at the current revision.
    async fn fill(&self) -> ApiResult<()> {
        let (sm, decoder, prefix) = (self.sm.clone(), self.decoder.clone(), self.prefix.clone());
        let contents = tokio::task::spawn_blocking(move || read_all(&sm, &decoder, &prefix))
            .await
            .map_err(|e| ApiError::Internal(format!("list cache fill: {e}")))??;
        self.cache.replace(contents);
        Ok(())
    }

    /// Applies a published revision, first reading any it missed.
    fn follow(&self, revision: i64, events: &[Event]) -> Result<(), Stop> {
        let at = self.cache.applied.borrow().to_owned();
        if revision <= at {
            return Ok(());
        }
        self.catch_up(revision - 1)?;
        self.cache.apply(&self.decoder, &self.prefix, revision, events.iter());
        Ok(())
    }

    /// Applies every revision up to `upto` from the revision log.
    fn catch_up(&self, upto: i64) -> Result<(), Stop> {
        let mvcc = &self.sm.mvcc;
        loop {
            let at = self.cache.applied.borrow().to_owned();
            if at >= upto {
                return Ok(());
            }
            if at + 1 < mvcc.compact_revision() {
                return Err(Stop::Refill);
            }
            let batch = mvcc.events(at + 1, upto, CATCH_UP_BATCH);
            let last = batch.last().map(|(rev, _)| *rev).unwrap_or(upto);
            self.cache.apply(&self.decoder, &self.prefix, last, batch.iter().map(|(_, ev)| ev));
        }
    }
}

/// Every object under `prefix` at one revision.
fn read_all(sm: &SmShared, decoder: &Decoder, prefix: &[u8]) -> ApiResult<Contents> {
    let revision = sm.mvcc.current_revision();
    let mut objects = BTreeMap::new();
    crate::registry::scan(&sm.mvcc, prefix.to_vec(), crate::registry::prefix_end(prefix), revision, |kv| {
        objects.insert(kv.key.clone(), Arc::new(decoder.decode(kv)?));
        Ok(true)
    })?;
    Ok(Contents { objects, revision })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use skiff_proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
    use skiff_raft_store::state_machine::StateMachine;

    const PODS: &str = "/registry/pods/";

    struct Store {
        sm: Arc<SmShared>,
        _dir: tempfile::TempDir,
    }

    impl Store {
        fn open() -> Store {
            let dir = tempfile::tempdir().unwrap();
            let db = skiff_raft_store::db::open(&dir.path().join("db")).unwrap();
            let sm = StateMachine::open(db, &dir.path().join("snapshots")).unwrap().shared();
            Store { sm, _dir: dir }
        }

        /// Applies one revision as the state machine does, up to publishing its events, which
        /// are returned; [`Store::apply`] publishes them too.
        fn write(&self, put: &[(&str, &str)], delete: &[&str]) -> (i64, Vec<Event>) {
            let mvcc = &self.sm.mvcc;
            let mut w = mvcc.writer();
            for (name, label) in put {
                let obj = json!({"metadata": {"name": name, "namespace": "ns", "labels": {"app": label}}});
                let key = format!("{PODS}ns/{name}").into_bytes();
                w.put(&PutRequest { key, value: serde_json::to_vec(&obj).unwrap(), ..Default::default() }).unwrap();
            }
            for name in delete {
                let key = format!("{PODS}ns/{name}").into_bytes();
                w.delete_range(&DeleteRangeRequest { key, ..Default::default() }).unwrap();
            }
            let (batch, revision, compacted, events) = w.finish();
            mvcc.db().write(batch).unwrap();
            mvcc.publish_counters(revision, compacted);
            (revision, events)
        }

        /// [`Store::write`], then publishes unless `publish` is false — as if a slow follower
        /// had lost the revision from the ring.
        fn apply(&self, put: &[(&str, &str)], delete: &[&str], publish: bool) -> i64 {
            let (revision, events) = self.write(put, delete);
            if publish {
                self.sm.hub.publish(revision, events);
            }
            revision
        }

        async fn list(&self, caches: &ListCaches, labels: &str, limit: usize) -> CachedPage {
            let at_least = self.sm.mvcc.current_revision();
            let labels = LabelSelector::parse(labels).unwrap();
            let fields = FieldSelector::parse("").unwrap();
            caches.list(&self.sm, None, PODS, PODS, at_least, &labels, &fields, limit).await.expect("cache current")
        }
    }

    fn names(page: &CachedPage) -> Vec<String> {
        page.items.iter().map(|s| crate::object::name(&s.object).to_string()).collect()
    }

    #[tokio::test]
    async fn fills_then_applies_puts_and_deletes_and_lists_at_the_store_revision() {
        let store = Store::open();
        let first = store.apply(&[("a", "web"), ("b", "db")], &[], true);
        let caches = ListCaches::default();
        let page = store.list(&caches, "", usize::MAX).await;
        assert_eq!((names(&page), page.revision), (vec!["a".to_string(), "b".into()], first));
        assert_eq!(
            page.items[0].object["metadata"]["resourceVersion"],
            first.to_string(),
            "resourceVersion from the store"
        );

        let rev = store.apply(&[("c", "web")], &["a"], true);
        let page = store.list(&caches, "", usize::MAX).await;
        assert_eq!((names(&page), page.revision), (vec!["b".to_string(), "c".into()], rev));
        assert_eq!(names(&store.list(&caches, "app=web", usize::MAX).await), ["c"]);
    }

    #[tokio::test]
    async fn a_limit_names_the_next_key() {
        let store = Store::open();
        store.apply(&[("a", "x"), ("b", "x"), ("c", "x")], &[], true);
        let caches = ListCaches::default();
        let page = store.list(&caches, "", 2).await;
        assert_eq!(names(&page), ["a", "b"]);
        assert_eq!(page.next.as_deref(), Some(format!("{PODS}ns/c").as_bytes()));
        assert_eq!(store.list(&caches, "", 3).await.next, None);
    }

    #[tokio::test]
    async fn revisions_missing_from_the_broadcast_are_read_from_the_log() {
        let store = Store::open();
        store.apply(&[("a", "x")], &[], true);
        let caches = ListCaches::default();
        store.list(&caches, "", usize::MAX).await;
        store.apply(&[("b", "x")], &[], false);
        store.apply(&[("c", "x")], &["a"], false);
        let last = store.apply(&[("d", "x")], &[], true);
        let page = store.list(&caches, "", usize::MAX).await;
        assert_eq!((names(&page), page.revision), (vec!["b".to_string(), "c".into(), "d".into()], last));
    }

    #[tokio::test]
    async fn a_list_waits_for_the_revision_it_must_show() {
        let store = Store::open();
        store.apply(&[("a", "x")], &[], true);
        let caches = ListCaches::default();
        store.list(&caches, "", usize::MAX).await;
        // Applied to the store but not yet published: the list must not answer without it.
        let (revision, events) = store.write(&[("b", "x")], &[]);
        let listing = store.list(&caches, "", usize::MAX);
        tokio::pin!(listing);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut listing).await.is_err(),
            "listed before the revision was applied to the cache"
        );
        store.sm.hub.publish(revision, events);
        let page = listing.await;
        assert_eq!((names(&page), page.revision), (vec!["a".to_string(), "b".into()], revision));
    }

    #[tokio::test]
    async fn an_installed_snapshot_makes_the_cache_fill_again() {
        let store = Store::open();
        store.apply(&[("a", "x")], &[], true);
        let caches = ListCaches::default();
        store.list(&caches, "", usize::MAX).await;
        // A snapshot replaces the keyspace without events; nothing is published after it.
        let installed = store.apply(&[("b", "x")], &["a"], false);
        store.sm.hub.everything_changed();
        let page = store.list(&caches, "", usize::MAX).await;
        assert_eq!((names(&page), page.revision), (vec!["b".to_string()], installed));
    }

    use skiff_proto::api::ConfigMap;

    #[tokio::test]
    async fn a_registered_kind_is_converted_as_it_is_applied() {
        let store = Store::open();
        store.apply(&[("a", "x")], &[], true);
        let caches = ListCaches::default();
        caches.convert_with(PODS, encode::<ConfigMap>);
        store.list(&caches, "", usize::MAX).await;
        store.apply(&[("b", "x")], &[], true);
        let page = store.list(&caches, "", usize::MAX).await;
        assert_eq!(names(&page), ["a", "b"]);
        for stored in &page.items {
            let bytes = stored.encoded.get().expect("encoded when filled or applied");
            let typed = ConfigMap::decode(bytes.clone()).unwrap();
            assert_eq!(typed.metadata.unwrap().name, stored.object["metadata"]["name"]);
        }
    }

    #[test]
    fn the_encoding_is_made_once() {
        let stored = Stored::new(json!({"metadata": {"name": "a"}, "data": {"k": "v"}}));
        let first = stored.encoded::<ConfigMap>().unwrap();
        assert_eq!(first.as_ptr(), stored.encoded::<ConfigMap>().unwrap().as_ptr(), "shared, not re-encoded");
        let typed = stored.typed::<ConfigMap>().unwrap();
        assert_eq!((typed.metadata.unwrap().name.as_str(), typed.data["k"].as_str()), ("a", "v"));
        let misfit = Stored::new(json!({"metadata": 3}));
        assert!(misfit.encoded::<ConfigMap>().is_err(), "a misfit is an error, not a default");
    }
}
