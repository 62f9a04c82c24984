//! Informers: a typed cache of one kind, kept current by a list and then a watch from the list's
//! resourceVersion (with bookmarks), re-listing when the watch's start was compacted away —
//! the reflector/informer pattern of client-go and kube-runtime.
//!
//! - [`Resource`]: the generated proto type of a kind, and how to list and watch it.
//! - [`Store`]: the cache — an `Arc` per object, indexed by namespace (key order), by owner
//!   uid, and by any index the user adds (`spec.nodeName`, …); a re-list replaces it in one
//!   step, so a reader never sees half of one list and half of another. Every change is also
//!   published to subscribers, re-lists as the differences they made.
//! - [`ListWatch`]: where lists and watch streams come from — the API through a [`Client`]
//!   ([`ApiSource`]), or a fake in unit tests.
//! - [`run`]: the loop that feeds a store until told to stop.

use crate::Client;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use skiff_proto::api::{DeleteRequest, ListRequest, ObjectMeta, WatchRequest};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tonic::{Code, Status};

/// A kind as its generated proto type.
pub trait Resource: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The resource name (`pods`).
    const RESOURCE: &'static str;
    fn meta(&self) -> Option<&ObjectMeta>;
    /// One page of a list: the items, the list's resourceVersion and the continue token.
    fn list_page(client: &Client, req: ListRequest) -> BoxFuture<'_, Result<Page<Self>, Status>>;
    /// Changes after `req.resource_version`.
    fn watch(client: &Client, req: WatchRequest) -> BoxFuture<'_, Result<Events<Self>, Status>>;
    /// Stores a new object; returns it as stored.
    fn create(client: &Client, obj: Self) -> BoxFuture<'_, Result<Self, Status>>;
    /// Replaces an object, guarded by its resourceVersion; returns it as stored.
    fn update(client: &Client, obj: Self) -> BoxFuture<'_, Result<Self, Status>>;
    /// Deletes an object; returns it as it was (or as it is while it terminates).
    fn delete(client: &Client, req: DeleteRequest) -> BoxFuture<'_, Result<Self, Status>>;
    /// Replaces an object's status (the status subresource), guarded by its resourceVersion;
    /// Unimplemented for kinds without one.
    fn update_status(client: &Client, obj: Self) -> BoxFuture<'_, Result<Self, Status>>;
}

/// One page of a list.
pub struct Page<K> {
    pub items: Vec<K>,
    pub resource_version: String,
    pub continue_token: String,
}

/// A watch stream.
pub type Events<K> = BoxStream<'static, Result<WatchEvent<K>, Status>>;

/// One event of a watch.
#[derive(Debug, Clone)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    /// Nothing changed up to this resourceVersion.
    Bookmark(String),
}

impl<K> WatchEvent<K> {
    /// A typed event from the wire's type string; `None` for an event without an object.
    fn from_wire(kind: &str, object: Option<K>, rv: impl FnOnce(&K) -> String) -> Result<WatchEvent<K>, Status> {
        let object = object.ok_or_else(|| Status::internal(format!("a {kind} watch event without an object")))?;
        match kind {
            "ADDED" => Ok(WatchEvent::Added(object)),
            "MODIFIED" => Ok(WatchEvent::Modified(object)),
            "DELETED" => Ok(WatchEvent::Deleted(object)),
            "BOOKMARK" => Ok(WatchEvent::Bookmark(rv(&object))),
            other => Err(Status::internal(format!("unknown watch event type {other:?}"))),
        }
    }
}

/// `update_status` of a kind with a status subresource (`yes`) or without one (`no`).
macro_rules! status_writer {
    (yes, $module:ident, $client:ident, $resource:literal) => {
        fn update_status(client: &Client, obj: Self) -> BoxFuture<'_, Result<Self, Status>> {
            Box::pin(client.with_failover(move |channel, auth| {
                let obj = obj.clone();
                async move {
                    Ok(skiff_proto::api::$module::$client::with_interceptor(channel, auth)
                        .update_status(obj)
                        .await?
                        .into_inner())
                }
            }))
        }
    };
    (no, $module:ident, $client:ident, $resource:literal) => {
        fn update_status(_: &Client, _: Self) -> BoxFuture<'_, Result<Self, Status>> {
            Box::pin(async { Err(Status::unimplemented(concat!($resource, " have no status subresource"))) })
        }
    };
}

macro_rules! resource {
    ($kind:ident, $list:ident, $event:ident, $module:ident, $client:ident, $resource:literal, status: $status:ident) => {
        impl Resource for skiff_proto::api::$kind {
            const RESOURCE: &'static str = $resource;

            fn meta(&self) -> Option<&ObjectMeta> {
                self.metadata.as_ref()
            }

            fn list_page(client: &Client, req: ListRequest) -> BoxFuture<'_, Result<Page<Self>, Status>> {
                Box::pin(client.with_failover(move |channel, auth| {
                    let req = req.clone();
                    async move {
                        let list = skiff_proto::api::$module::$client::with_interceptor(channel, auth)
                            .max_decoding_message_size(256 << 20)
                            .list(req)
                            .await?
                            .into_inner();
                        let meta = list.metadata.unwrap_or_default();
                        Ok(Page {
                            items: list.items,
                            resource_version: meta.resource_version,
                            continue_token: meta.r#continue,
                        })
                    }
                }))
            }

            fn watch(client: &Client, req: WatchRequest) -> BoxFuture<'_, Result<Events<Self>, Status>> {
                Box::pin(async move {
                    let stream = client
                        .with_failover(move |channel, auth| {
                            let req = req.clone();
                            async move {
                                Ok(skiff_proto::api::$module::$client::with_interceptor(channel, auth)
                                    .max_decoding_message_size(64 << 20)
                                    .watch(req)
                                    .await?
                                    .into_inner())
                            }
                        })
                        .await?;
                    let events = stream.map(|item| {
                        let ev = item?;
                        WatchEvent::from_wire(&ev.r#type, ev.object, |o| {
                            o.meta().map(|m| m.resource_version.clone()).unwrap_or_default()
                        })
                    });
                    Ok(events.boxed())
                })
            }

            fn create(client: &Client, obj: Self) -> BoxFuture<'_, Result<Self, Status>> {
                Box::pin(async move {
                    client
                        .for_one_create()
                        .with_failover(move |channel, auth| {
                            let obj = obj.clone();
                            async move {
                                Ok(skiff_proto::api::$module::$client::with_interceptor(channel, auth)
                                    .create(obj)
                                    .await?
                                    .into_inner())
                            }
                        })
                        .await
                })
            }

            fn update(client: &Client, obj: Self) -> BoxFuture<'_, Result<Self, Status>> {
                Box::pin(client.with_failover(move |channel, auth| {
                    let obj = obj.clone();
                    async move {
                        Ok(skiff_proto::api::$module::$client::with_interceptor(channel, auth)
                            .update(obj)
                            .await?
                            .into_inner())
                    }
                }))
            }

            fn delete(client: &Client, req: DeleteRequest) -> BoxFuture<'_, Result<Self, Status>> {
                Box::pin(client.with_failover(move |channel, auth| {
                    let req = req.clone();
                    async move {
                        Ok(skiff_proto::api::$module::$client::with_interceptor(channel, auth)
                            .delete(req)
                            .await?
                            .into_inner())
                    }
                }))
            }

            status_writer!($status, $module, $client, $resource);
        }
    };
}
skiff_proto::for_each_kind_client!(resource);

/// Where an object lives: its namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey { namespace: namespace.to_string(), name: name.to_string() }
    }

    pub fn of(meta: &ObjectMeta) -> ObjectKey {
        ObjectKey::new(&meta.namespace, &meta.name)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The key of the object that controls `meta` (its owner reference with `controller: true`)
/// if that owner is of `kind`, in the same namespace: what a controller queues when an object
/// it owns changes.
pub fn controller_of(meta: &ObjectMeta, kind: &str) -> Option<ObjectKey> {
    meta.owner_references
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == kind)
        .map(|r| ObjectKey::new(&meta.namespace, &r.name))
}

/// What changed in a store.
#[derive(Debug, Clone)]
pub enum Change<K> {
    /// Added (`old` is `None`) or modified.
    Applied {
        old: Option<Arc<K>>,
        new: Arc<K>,
    },
    Deleted(Arc<K>),
}

/// Values an object is filed under in a named index.
pub type IndexFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

struct Index<K> {
    of: IndexFn<K>,
    entries: HashMap<String, BTreeSet<ObjectKey>>,
}

impl<K> Index<K> {
    fn file(&mut self, key: &ObjectKey, obj: &K) {
        for v in (self.of)(obj) {
            self.entries.entry(v).or_default().insert(key.clone());
        }
    }

    fn unfile(&mut self, key: &ObjectKey, obj: &K) {
        for v in (self.of)(obj) {
            if let Some(set) = self.entries.get_mut(&v) {
                set.remove(key);
                if set.is_empty() {
                    self.entries.remove(&v);
                }
            }
        }
    }
}

/// The name of the built-in owner-uid index.
pub const OWNER_INDEX: &str = "owner";

struct State<K> {
    objects: BTreeMap<ObjectKey, Arc<K>>,
    indexes: HashMap<&'static str, Index<K>>,
    resource_version: String,
    synced: bool,
    /// Counts changes to the objects (not bookmarks), for readers that keep derived views.
    generation: u64,
}

impl<K: Resource> State<K> {
    fn insert(&mut self, key: ObjectKey, obj: Arc<K>) -> Option<Arc<K>> {
        self.generation += 1;
        let old = self.objects.insert(key.clone(), obj.clone());
        for index in self.indexes.values_mut() {
            if let Some(old) = &old {
                index.unfile(&key, old);
            }
            index.file(&key, &obj);
        }
        old
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let old = self.objects.remove(key)?;
        self.generation += 1;
        for index in self.indexes.values_mut() {
            index.unfile(key, &old);
        }
        Some(old)
    }
}

/// The cache of one kind. Clones share it.
pub struct Store<K> {
    state: Arc<RwLock<State<K>>>,
    changes: broadcast::Sender<Change<K>>,
    /// The resourceVersion as a number, for [`Store::caught_up`].
    revision: Arc<tokio::sync::watch::Sender<i64>>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store { state: self.state.clone(), changes: self.changes.clone(), revision: self.revision.clone() }
    }
}

impl<K: Resource> Default for Store<K> {
    fn default() -> Self {
        Store::new()
    }
}

impl<K: Resource> Store<K> {
    /// An empty store with the owner-uid index.
    pub fn new() -> Store<K> {
        let owners: IndexFn<K> = Arc::new(|obj: &K| {
            obj.meta().map(|m| m.owner_references.iter().map(|r| r.uid.clone()).collect()).unwrap_or_default()
        });
        let mut indexes = HashMap::new();
        indexes.insert(OWNER_INDEX, Index { of: owners, entries: HashMap::new() });
        let state =
            State { objects: BTreeMap::new(), indexes, resource_version: String::new(), synced: false, generation: 0 };
        // Subscribers that fall this far behind are told (Lagged) and resync from the store.
        let (changes, _) = broadcast::channel(4096);
        let revision = Arc::new(tokio::sync::watch::channel(0).0);
        Store { state: Arc::new(RwLock::new(state)), changes, revision }
    }

    /// This store with another index, `name`, filing each object under `of(object)`.
    pub fn with_index(self, name: &'static str, of: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) -> Store<K> {
        {
            let mut state = self.state.write().expect("not poisoned");
            let mut index = Index { of: Arc::new(of), entries: HashMap::new() };
            for (key, obj) in &state.objects {
                index.file(key, obj);
            }
            state.indexes.insert(name, index);
        }
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<K>> {
        self.state.read().expect("not poisoned")
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().objects.get(key).cloned()
    }

    /// Every object's key, in order.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.read().objects.keys().cloned().collect()
    }

    /// Every object, in key order.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    /// The objects of one namespace, in name order.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let from = ObjectKey::new(namespace, "");
        self.read()
            .objects
            .range(from..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The objects filed under `value` in index `name` (none for an unknown index).
    pub fn by_index(&self, name: &str, value: &str) -> Vec<Arc<K>> {
        let state = self.read();
        let Some(keys) = state.indexes.get(name).and_then(|i| i.entries.get(value)) else { return Vec::new() };
        keys.iter().filter_map(|k| state.objects.get(k).cloned()).collect()
    }

    /// The objects an owner with `uid` owns.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        self.by_index(OWNER_INDEX, uid)
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The resourceVersion the store is current to (empty before the first list).
    pub fn resource_version(&self) -> String {
        self.read().resource_version.clone()
    }

    /// The store revision the cache is current to: every change up to it is applied (0
    /// before the first list).
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the cache is current to at least `revision`. A cache learns that it is
    /// current from events and bookmarks; without either (no change to this kind, bookmarks
    /// not asked for often) this waits for the next one.
    pub async fn caught_up(&self, revision: i64) {
        let mut rx = self.revision.subscribe();
        // The sender lives as long as the store.
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    /// Records `rv` as the version the cache is current to.
    fn set_version(&self, state: &mut State<K>, rv: String) {
        if let Ok(n) = rv.parse::<i64>() {
            self.revision.send_if_modified(|r| {
                let newer = n > *r;
                *r = (*r).max(n);
                newer
            });
        }
        state.resource_version = rv;
    }

    /// A number that grows with every change to the objects (bookmarks leave it alone): two
    /// reads with the same generation saw the same objects.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Every object, with the generation they are as of.
    pub fn list_with_generation(&self) -> (Vec<Arc<K>>, u64) {
        let state = self.read();
        (state.objects.values().cloned().collect(), state.generation)
    }

    /// Whether a whole list has been loaded.
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.changes.subscribe()
    }

    /// Calls `changed` at every change from now on (and when changes were missed), for readers
    /// that only need to know that something changed; the task ends with the store.
    pub fn on_changes(&self, changed: impl Fn() + Send + 'static) -> tokio::task::JoinHandle<()> {
        let mut changes = self.subscribe();
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => changed(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }

    /// Waits until a whole list has been loaded.
    pub async fn synced(&self) {
        let mut changes = self.subscribe();
        while !self.is_synced() {
            // A re-list publishes its differences; an empty first list publishes nothing,
            // so wake now and then to look.
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.recv()).await;
        }
    }

    /// Replaces the whole content with a list's `items` at `resource_version`, in one step;
    /// publishes the differences.
    pub fn replace(&self, items: Vec<K>, resource_version: String) {
        let mut changes = Vec::new();
        {
            let mut state = self.state.write().expect("not poisoned");
            let mut fresh: BTreeMap<ObjectKey, Arc<K>> = BTreeMap::new();
            for item in items {
                if let Some(meta) = item.meta() {
                    fresh.insert(ObjectKey::of(meta), Arc::new(item));
                }
            }
            let gone: Vec<ObjectKey> = state.objects.keys().filter(|k| !fresh.contains_key(k)).cloned().collect();
            for key in gone {
                if let Some(old) = state.remove(&key) {
                    changes.push(Change::Deleted(old));
                }
            }
            for (key, new) in fresh {
                let same = state.objects.get(&key).is_some_and(|old| rv_of(&**old) == rv_of(&*new));
                if !same {
                    let old = state.insert(key, new.clone());
                    changes.push(Change::Applied { old, new });
                }
            }
            self.set_version(&mut state, resource_version);
            state.synced = true;
        }
        for c in changes {
            let _ = self.changes.send(c);
        }
    }

    /// Applies one watch event.
    pub fn apply(&self, event: WatchEvent<K>) {
        let change = {
            let mut state = self.state.write().expect("not poisoned");
            match event {
                WatchEvent::Bookmark(rv) => {
                    self.set_version(&mut state, rv);
                    None
                }
                WatchEvent::Added(obj) | WatchEvent::Modified(obj) => {
                    let Some(meta) = obj.meta() else { return };
                    let (key, rv) = (ObjectKey::of(meta), meta.resource_version.clone());
                    let new = Arc::new(obj);
                    let old = state.insert(key, new.clone());
                    self.set_version(&mut state, rv);
                    Some(Change::Applied { old, new })
                }
                WatchEvent::Deleted(obj) => {
                    let Some(meta) = obj.meta() else { return };
                    let (key, rv) = (ObjectKey::of(meta), meta.resource_version.clone());
                    state.remove(&key);
                    self.set_version(&mut state, rv);
                    Some(Change::Deleted(Arc::new(obj)))
                }
            }
        };
        if let Some(c) = change {
            let _ = self.changes.send(c);
        }
    }
}

fn rv_of<K: Resource>(obj: &K) -> &str {
    obj.meta().map_or("", |m| m.resource_version.as_str())
}

/// Where an informer's lists and watches come from.
pub trait ListWatch<K>: Send + Sync {
    /// A whole list: the items and the list's resourceVersion.
    fn list(&self) -> BoxFuture<'_, Result<(Vec<K>, String), Status>>;
    /// Changes after `resource_version`.
    fn watch(&self, resource_version: &str) -> BoxFuture<'_, Result<Events<K>, Status>>;
}

/// Lists and watches through the API, optionally narrowed by namespace and selectors (a node
/// daemon's `spec.nodeName=<node>`).
pub struct ApiSource {
    pub client: Client,
    pub namespace: String,
    pub label_selector: String,
    pub field_selector: String,
    /// Ask for a bookmark this often whenever the store moved on without an event for this
    /// watch (Skiff's own), so [`Store::caught_up`] answers promptly; `None`: the server's.
    pub bookmark_interval: Option<Duration>,
}

impl ApiSource {
    pub fn new(client: Client) -> ApiSource {
        ApiSource {
            client,
            namespace: String::new(),
            label_selector: String::new(),
            field_selector: String::new(),
            bookmark_interval: None,
        }
    }

    /// Bookmarks every `interval` while the store moves on (at least 10 ms apart).
    pub fn bookmarks_every(mut self, interval: Duration) -> ApiSource {
        self.bookmark_interval = Some(interval);
        self
    }

    pub fn fields(mut self, selector: &str) -> ApiSource {
        self.field_selector = selector.to_string();
        self
    }
}

/// Objects per list page an informer reads.
const PAGE: i64 = 500;

impl<K: Resource> ListWatch<K> for ApiSource {
    fn list(&self) -> BoxFuture<'_, Result<(Vec<K>, String), Status>> {
        Box::pin(async move {
            let mut items = Vec::new();
            let mut continue_token = String::new();
            loop {
                let req = ListRequest {
                    namespace: self.namespace.clone(),
                    label_selector: self.label_selector.clone(),
                    field_selector: self.field_selector.clone(),
                    limit: PAGE,
                    r#continue: continue_token,
                };
                let page = K::list_page(&self.client, req).await?;
                items.extend(page.items);
                if page.continue_token.is_empty() {
                    return Ok((items, page.resource_version));
                }
                continue_token = page.continue_token;
            }
        })
    }

    fn watch(&self, resource_version: &str) -> BoxFuture<'_, Result<Events<K>, Status>> {
        let req = WatchRequest {
            namespace: self.namespace.clone(),
            label_selector: self.label_selector.clone(),
            field_selector: self.field_selector.clone(),
            resource_version: resource_version.to_string(),
            allow_watch_bookmarks: true,
            bookmark_interval_ms: self
                .bookmark_interval
                .map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32),
        };
        // The stream outlives the call: no per-request deadline on it.
        K::watch(&self.client, req)
    }
}

/// Whether a watch failed because its start is older than the store keeps (re-list).
fn too_old(s: &Status) -> bool {
    s.code() == Code::OutOfRange
}

/// Retry delays after failures: 100 ms doubling to 5 s.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5))
}

/// Feeds `store` from `source` until `stop` turns true: list, then watch from the list's
/// resourceVersion; a watch that ends is resumed from the last version seen, one whose start
/// was compacted re-lists. Errors are retried with back-off, logged at debug.
pub async fn run<K: Resource>(
    store: Store<K>,
    source: impl ListWatch<K>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    'list: loop {
        if *stop.borrow() {
            return;
        }
        let listed = tokio::select! {
            r = source.list() => r,
            _ = stop.changed() => return,
        };
        match listed {
            Ok((items, rv)) => {
                store.replace(items, rv);
                failures = 0;
            }
            Err(e) => {
                tracing::debug!("listing {}: {}", K::RESOURCE, e.message());
                failures += 1;
                tokio::select! {
                    _ = tokio::time::sleep(retry_delay(failures)) => continue 'list,
                    _ = stop.changed() => return,
                }
            }
        }
        loop {
            let rv = store.resource_version();
            let started = tokio::select! {
                r = source.watch(&rv) => r,
                _ = stop.changed() => return,
            };
            let mut events = match started {
                Ok(events) => events,
                Err(e) if too_old(&e) => continue 'list,
                Err(e) => {
                    tracing::debug!("watching {} from {rv}: {}", K::RESOURCE, e.message());
                    failures += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(retry_delay(failures)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    n = events.next() => n,
                    _ = stop.changed() => return,
                };
                match next {
                    Some(Ok(event)) => {
                        failures = 0;
                        store.apply(event);
                    }
                    Some(Err(e)) if too_old(&e) => continue 'list,
                    Some(Err(e)) => {
                        // Resumed after a back-off: an error that repeats (an object the
                        // server cannot encode) must not become a busy loop.
                        tracing::debug!("watch of {} ended: {}", K::RESOURCE, e.message());
                        failures += 1;
                        break;
                    }
                    None => break,
                }
            }
            if failures > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(retry_delay(failures)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{OwnerReference, Pod, PodSpec};
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    fn pod(ns: &str, name: &str, rv: u64, node: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                namespace: ns.into(),
                name: name.into(),
                resource_version: rv.to_string(),
                owner_references: vec![OwnerReference {
                    kind: "ReplicaSet".into(),
                    name: format!("rs-of-{name}"),
                    uid: format!("uid-{ns}"),
                    controller: Some(true),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            spec: Some(PodSpec { node_name: node.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<String> {
        pods.iter().map(|p| ObjectKey::of(p.meta().unwrap()).to_string()).collect()
    }

    fn by_node(store: Store<Pod>) -> Store<Pod> {
        store.with_index("node", |p: &Pod| p.spec.iter().map(|s| s.node_name.clone()).collect())
    }

    #[test]
    fn a_relist_replaces_everything_in_one_step_and_publishes_the_differences() {
        let store = by_node(Store::new());
        store.replace(vec![pod("a", "x", 1, "n1"), pod("a", "y", 2, "n1"), pod("b", "z", 3, "n2")], "3".into());
        let mut changes = store.subscribe();
        // y unchanged, x gone, z moved to another node at a new version, w new.
        store.replace(vec![pod("a", "y", 2, "n1"), pod("b", "z", 5, "n1"), pod("b", "w", 6, "n2")], "6".into());
        assert_eq!(names(&store.list()), ["a/y", "b/w", "b/z"]);
        assert_eq!(names(&store.list_namespace("b")), ["b/w", "b/z"]);
        assert_eq!(names(&store.by_index("node", "n1")), ["a/y", "b/z"]);
        assert_eq!(names(&store.by_index("node", "n2")), ["b/w"]);
        assert_eq!(names(&store.owned_by("uid-a")), ["a/y"]);
        assert_eq!(store.resource_version(), "6");
        let mut seen = Vec::new();
        while let Ok(c) = changes.try_recv() {
            seen.push(match c {
                Change::Applied { old, new } => {
                    format!(
                        "applied {} (was {})",
                        rv_of(&*new),
                        old.map_or("none".to_string(), |o| rv_of(&*o).to_string())
                    )
                }
                Change::Deleted(old) => format!("deleted {}", ObjectKey::of(old.meta().unwrap())),
            });
        }
        assert_eq!(seen, ["deleted a/x", "applied 6 (was none)", "applied 5 (was 3)"]);
    }

    #[test]
    fn readers_see_one_list_or_the_other_never_a_mix() {
        let store = Store::new();
        let old: Vec<Pod> = (0..200).map(|i| pod("old", &format!("p{i}"), 1, "n")).collect();
        let new: Vec<Pod> = (0..200).map(|i| pod("new", &format!("p{i}"), 2, "n")).collect();
        store.replace(old.clone(), "1".into());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (store, stop) = (store.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut looks = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let seen = store.list();
                        let spaces: BTreeSet<&str> =
                            seen.iter().map(|p| p.meta().unwrap().namespace.as_str()).collect();
                        assert_eq!(seen.len(), 200, "a reader saw {} objects", seen.len());
                        assert_eq!(spaces.len(), 1, "a reader saw a mix of two lists: {spaces:?}");
                        looks += 1;
                    }
                    looks
                })
            })
            .collect();
        for round in 0..200 {
            store.replace(if round % 2 == 0 { new.clone() } else { old.clone() }, round.to_string());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let looks: usize = readers.into_iter().map(|r| r.join().expect("no reader saw a mix")).sum();
        assert!(looks > 0, "no reader looked");
    }

    #[test]
    fn watch_events_move_objects_between_index_entries_and_bookmarks_advance_the_version() {
        let store = by_node(Store::new());
        store.replace(vec![pod("a", "x", 1, "")], "1".into());
        store.apply(WatchEvent::Modified(pod("a", "x", 2, "n1")));
        assert_eq!(names(&store.by_index("node", "n1")), ["a/x"]);
        assert!(store.by_index("node", "").is_empty(), "the old entry is gone");
        store.apply(WatchEvent::Bookmark("9".into()));
        assert_eq!(store.resource_version(), "9");
        store.apply(WatchEvent::Deleted(pod("a", "x", 10, "n1")));
        assert!(store.is_empty() && store.by_index("node", "n1").is_empty() && store.owned_by("uid-a").is_empty());
        assert_eq!(store.resource_version(), "10");
    }

    #[test]
    fn the_controller_of_an_object_is_its_controlling_owner_of_that_kind() {
        let p = pod("ns", "web-1", 1, "");
        assert_eq!(controller_of(p.meta().unwrap(), "ReplicaSet"), Some(ObjectKey::new("ns", "rs-of-web-1")));
        assert_eq!(controller_of(p.meta().unwrap(), "Job"), None);
    }

    /// A source whose lists come from a queue the test fills and whose watches are channels the
    /// test feeds; it records what it was asked.
    type Listed = Result<(Vec<Pod>, String), Status>;
    type Feed = mpsc::Receiver<Result<WatchEvent<Pod>, Status>>;

    struct Fake {
        lists: Mutex<Vec<Listed>>,
        watches: Mutex<Vec<Feed>>,
        asked: Mutex<Vec<String>>,
    }

    impl ListWatch<Pod> for Arc<Fake> {
        fn list(&self) -> BoxFuture<'_, Result<(Vec<Pod>, String), Status>> {
            Box::pin(async move {
                self.asked.lock().unwrap().push("list".into());
                let next = self.lists.lock().unwrap().pop();
                next.unwrap_or_else(|| Err(Status::unavailable("no list prepared")))
            })
        }

        fn watch(&self, rv: &str) -> BoxFuture<'_, Result<Events<Pod>, Status>> {
            self.asked.lock().unwrap().push(format!("watch {rv}"));
            let next = self.watches.lock().unwrap().pop();
            Box::pin(async move {
                let rx = next.ok_or_else(|| Status::unavailable("no watch prepared"))?;
                Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
            })
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_that_keeps_failing_is_retried_after_a_back_off_not_at_once() {
        let (w1, r1) = mpsc::channel(8);
        let (_w2, r2) = mpsc::channel(8);
        let fake = Arc::new(Fake {
            lists: Mutex::new(vec![Ok((vec![], "1".into()))]),
            watches: Mutex::new(vec![r2, r1]),
            asked: Mutex::new(Vec::new()),
        });
        let store: Store<Pod> = Store::new();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(store.clone(), fake.clone(), stop));
        until("the first watch", || fake.asked.lock().unwrap().len() == 2).await;
        w1.send(Err(Status::internal("stored object does not fit its schema"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(fake.asked.lock().unwrap().len(), 2, "re-watched within 150 ms of a failure");
        until("the re-watch after the back-off", || fake.asked.lock().unwrap().len() == 3).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_informer_lists_watches_resumes_and_relists_when_its_start_is_compacted() {
        let (w1, r1) = mpsc::channel(8);
        let (w2, r2) = mpsc::channel(8);
        let fake = Arc::new(Fake {
            // Popped from the end: the first list, then the one after the compaction.
            lists: Mutex::new(vec![
                Ok((vec![pod("a", "c", 20, "")], "20".into())),
                Ok((vec![pod("a", "x", 5, "")], "5".into())),
            ]),
            watches: Mutex::new(vec![r2, r1]),
            asked: Mutex::new(Vec::new()),
        });
        let store = Store::new();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(store.clone(), fake.clone(), stop));
        until("the first list", || store.is_synced()).await;
        w1.send(Ok(WatchEvent::Added(pod("a", "y", 6, "")))).await.unwrap();
        until("the watched add", || store.len() == 2).await;
        // The stream ends: the informer resumes from the last version it saw, without a list.
        drop(w1);
        until("a second watch", || fake.asked.lock().unwrap().len() == 3).await;
        // That watch's start was compacted: re-list, and the list replaces what was there.
        w2.send(Err(Status::out_of_range("too old resource version: 6 (compacted at 10)"))).await.unwrap();
        until("the re-list", || store.resource_version() == "20").await;
        assert_eq!(names(&store.list()), ["a/c"]);
        assert_eq!(fake.asked.lock().unwrap()[..4], ["list", "watch 5", "watch 6", "list"]);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
