//! One informer per kind for everything in a master process: the Endpoints controller and the
//! leader's rounds read the same caches, fed by one list and then one watch per kind, on every
//! master (a new leader starts with warm caches).
//!
//! [`Lister`] is how the rounds read them: a round first waits until every cache is current
//! to the store's revision at its start — Kubernetes' consistent read from cache — so it sees
//! at least everything written before it, its own earlier writes included, and never creates
//! a pod twice because a cache lagged. The caches ask for a bookmark every
//! [`BOOKMARK_INTERVAL`] while the store moves on without them, so that wait is short.
//! Each kind's list is built once per change of that kind ([`Store::generation`]), not once
//! per reader.

use serde_json::Value;
use skiff_client::informer::{self, ApiSource, ObjectKey, Resource, Store};
use skiff_client::Client;
use skiff_proto::api::{
    CronJob, DaemonSet, Deployment, Endpoints, Ingress, IngressClass, Job, Lease, Namespace, Node, PersistentVolume,
    PersistentVolumeClaim, Pod, ReplicaSet, Service, ServiceAccount, StatefulSet,
};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Status;

/// How often a cache hears that the store moved on when nothing of its kind changed.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_millis(20);

/// The namespace of the node heartbeat Leases, the only Leases the controllers read.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

macro_rules! informers {
    ($($field:ident: $kind:ty, $namespace:expr, triggers: $triggers:literal;)*) => {
        /// The caches, one per kind. Clones share them.
        #[derive(Clone, Default)]
        pub struct Informers {
            $(pub $field: Store<$kind>,)*
        }

        impl Informers {
            /// Starts an informer per kind through `client`, until `stop`.
            pub fn start(client: &Client, stop: &tokio::sync::watch::Receiver<bool>) -> Informers {
                let informers = Informers::default();
                // The ReplicaSet controller's: the pods it may adopt.
                crate::replicaset::index_orphans(informers.pods.clone());
                $(
                    let mut source = ApiSource::new(client.clone()).bookmarks_every(BOOKMARK_INTERVAL);
                    source.namespace = $namespace.to_string();
                    tokio::spawn(informer::run(informers.$field.clone(), source, stop.clone()));
                )*
                informers
            }

            /// A view by resource name for the rounds.
            fn views(&self) -> HashMap<&'static str, View> {
                let mut views = HashMap::new();
                $(
                    let cache: Arc<dyn Cached> = Arc::new(self.$field.clone());
                    views.insert(<$kind as Resource>::RESOURCE, View { cache, triggers: $triggers, built: Mutex::default() });
                )*
                views
            }
        }
    };
}

informers! {
    pods: Pod, "", triggers: true;
    nodes: Node, "", triggers: true;
    // Renewed by every node every few seconds: the lifecycle controller reads them on its
    // own schedule, they do not call for a round.
    leases: Lease, NODE_LEASE_NAMESPACE, triggers: false;
    namespaces: Namespace, "", triggers: true;
    service_accounts: ServiceAccount, "", triggers: true;
    deployments: Deployment, "", triggers: true;
    replica_sets: ReplicaSet, "", triggers: true;
    stateful_sets: StatefulSet, "", triggers: true;
    daemon_sets: DaemonSet, "", triggers: true;
    jobs: Job, "", triggers: true;
    cron_jobs: CronJob, "", triggers: true;
    claims: PersistentVolumeClaim, "", triggers: true;
    volumes: PersistentVolume, "", triggers: true;
    services: Service, "", triggers: true;
    // The Endpoints controller's own output: nothing in the rounds reads it.
    endpoints: Endpoints, "", triggers: false;
    ingresses: Ingress, "", triggers: true;
    ingress_classes: IngressClass, "", triggers: true;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// JSON of each object by key, with the resourceVersion it was made from.
type Memo = HashMap<ObjectKey, (String, Arc<Value>)>;

/// A cache seen without its type: its objects as JSON.
trait Cached: Send + Sync {
    fn generation(&self) -> u64;
    /// Every object as JSON, with the generation they are as of; an object whose
    /// resourceVersion is the one in `previous` reuses that JSON.
    fn items(&self, previous: &Memo) -> (Memo, Vec<Arc<Value>>, u64);
    fn revision(&self) -> i64;
    fn is_synced(&self) -> bool;
    fn caught_up(&self, revision: i64) -> BoxFuture<'_, ()>;
    /// Marks `changes` at every change from now on (and when changes were missed).
    fn forward_changes(&self, changes: Arc<Dirty>) -> tokio::task::JoinHandle<()>;
}

impl<K: Resource + serde::Serialize> Cached for Store<K> {
    fn generation(&self) -> u64 {
        Store::generation(self)
    }

    fn items(&self, previous: &Memo) -> (Memo, Vec<Arc<Value>>, u64) {
        let (objects, generation) = self.list_with_generation();
        let mut memo = Memo::with_capacity(objects.len());
        let mut items = Vec::with_capacity(objects.len());
        for o in &objects {
            let Some(meta) = o.meta() else { continue };
            let key = ObjectKey::of(meta);
            // The proto types write the same JSON the API stores (writes are normalized
            // through them), so nothing is lost on the way.
            let json = match previous.get(&key) {
                Some((rv, json)) if *rv == meta.resource_version => json.clone(),
                _ => match serde_json::to_value(&**o) {
                    Ok(v) => Arc::new(v),
                    Err(_) => continue,
                },
            };
            items.push(json.clone());
            memo.insert(key, (meta.resource_version.clone(), json));
        }
        (memo, items, generation)
    }

    fn revision(&self) -> i64 {
        Store::revision(self)
    }

    fn is_synced(&self) -> bool {
        Store::is_synced(self)
    }

    fn caught_up(&self, revision: i64) -> BoxFuture<'_, ()> {
        Box::pin(Store::caught_up(self, revision))
    }

    fn forward_changes(&self, dirty: Arc<Dirty>) -> tokio::task::JoinHandle<()> {
        self.on_changes(move || dirty.mark())
    }
}

/// The last list built of a kind: at which generation, and each object's JSON.
struct Built {
    generation: u64,
    list: Listed,
    memo: Memo,
}

struct View {
    cache: Arc<dyn Cached>,
    /// Whether a change of this kind calls for a round.
    triggers: bool,
    built: Mutex<Option<Built>>,
}

/// A list read from a cache, each object as JSON; shared until the kind changes, and an
/// object's JSON until it changes.
#[derive(Clone)]
pub struct Listed(Arc<Vec<Arc<Value>>>);

impl Listed {
    pub fn iter(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|o| &**o)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, i: usize) -> Option<&Value> {
        self.0.get(i).map(|o| &**o)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether both are the same list (the kind has not changed between them).
    pub fn same(&self, other: &Listed) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Copies of the objects, for plans that take owned JSON.
    pub fn to_vec(&self) -> Vec<Value> {
        self.iter().cloned().collect()
    }
}

/// The rounds' reads, from the shared caches.
pub struct Lister {
    views: HashMap<&'static str, View>,
    /// The store's revision now (this master's applied revision; on the leader, every
    /// acknowledged write is at or below it).
    store_revision: Arc<dyn Fn() -> i64 + Send + Sync>,
}

/// How long a round waits for the caches to catch up before giving up on this round.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

impl Lister {
    pub fn new(informers: &Informers, store_revision: Arc<dyn Fn() -> i64 + Send + Sync>) -> Lister {
        Lister { views: informers.views(), store_revision }
    }

    /// Waits until every cache has been listed and is current to the store's revision now.
    pub async fn current(&self) -> Result<(), Status> {
        let revision = (self.store_revision)();
        let all = async {
            for view in self.views.values() {
                view.cache.caught_up(revision).await;
            }
        };
        tokio::time::timeout(CATCH_UP_TIMEOUT, all).await.map_err(|_| {
            let behind: Vec<String> = self
                .views
                .iter()
                .filter(|(_, v)| !v.cache.is_synced() || v.cache.revision() < revision)
                .map(|(r, v)| format!("{r} at {}", v.cache.revision()))
                .collect();
            Status::unavailable(format!(
                "caches not current to revision {revision} after {CATCH_UP_TIMEOUT:?}: {}",
                behind.join(", ")
            ))
        })
    }

    /// Every cached object of `resource` in `namespace` (all namespaces when empty), as the
    /// API's list would answer it. Call [`Lister::current`] first.
    pub fn list(&self, resource: &str, namespace: &str) -> Result<Listed, Status> {
        let view = self
            .views
            .get(resource)
            .ok_or_else(|| Status::internal(format!("no cache of {resource} in the controllers' informers")))?;
        let all = {
            let mut built = view.built.lock().expect("not poisoned");
            match &*built {
                Some(b) if b.generation == view.cache.generation() => b.list.clone(),
                _ => {
                    let previous = built.take().map(|b| b.memo).unwrap_or_default();
                    let (memo, items, generation) = view.cache.items(&previous);
                    let list = Listed(Arc::new(items));
                    *built = Some(Built { generation, list: list.clone(), memo });
                    list
                }
            }
        };
        if namespace.is_empty() {
            return Ok(all);
        }
        let items = all.0.iter().filter(|o| o["metadata"]["namespace"] == namespace).cloned().collect();
        Ok(Listed(Arc::new(items)))
    }

    /// The revision `resource`'s cache is current to (0 for a kind not cached).
    pub fn revision(&self, resource: &str) -> i64 {
        self.views.get(resource).map_or(0, |v| v.cache.revision())
    }

    /// The changes, from now on, to the kinds that call for a round.
    pub fn changes(&self) -> Changes {
        let dirty = Arc::new(Dirty::default());
        let tasks =
            self.views.values().filter(|v| v.triggers).map(|v| v.cache.forward_changes(dirty.clone())).collect();
        Changes { dirty, tasks }
    }
}

/// Whether anything changed since it was last looked at.
#[derive(Default)]
struct Dirty {
    changed: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Dirty {
    fn mark(&self) {
        self.changed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// Changes to the kinds that call for a round; any number of them between two calls of
/// [`Changes::next`] count once.
pub struct Changes {
    dirty: Arc<Dirty>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Changes {
    /// Resolves once something changed since the last call returned.
    pub async fn next(&self) {
        // A wake-up left over from changes already taken finds nothing and waits again.
        while !self.dirty.changed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.dirty.notify.notified().await;
        }
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::ObjectMeta;

    fn pod(ns: &str, name: &str, rv: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                namespace: ns.into(),
                name: name.into(),
                resource_version: rv.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn lister(informers: &Informers, revision: i64) -> Lister {
        Lister::new(informers, Arc::new(move || revision))
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_waits_until_every_cache_is_current_to_the_store() {
        let informers = Informers::default();
        let lister = Arc::new(lister(&informers, 7));
        let waiting = tokio::spawn({
            let lister = lister.clone();
            async move { lister.current().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "no cache has been listed yet");
        for view in lister.views.values() {
            assert_eq!(view.cache.revision(), 0);
        }
        // Every kind listed at 7 except pods, listed at 5 and then told of 7 by a bookmark.
        macro_rules! list_all {
            ($($field:ident),*) => { $(informers.$field.replace(Vec::new(), "7".into());)* };
        }
        list_all!(nodes, leases, namespaces, service_accounts, deployments, replica_sets, stateful_sets, daemon_sets);
        list_all!(jobs, cron_jobs, claims, volumes, services, endpoints, ingresses, ingress_classes);
        informers.pods.replace(vec![pod("a", "web-1", "5")], "5".into());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "pods are only current to 5");
        informers.pods.apply(informer::WatchEvent::Bookmark("7".into()));
        waiting.await.unwrap().unwrap();
        assert_eq!(lister.list("pods", "").unwrap().iter().next().unwrap()["metadata"]["name"], "web-1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cache_that_never_catches_up_fails_the_round_and_says_which() {
        let informers = Informers::default();
        let lister = lister(&informers, 3);
        let err = lister.current().await.unwrap_err();
        assert!(err.message().contains("pods at 0"), "{}", err.message());
    }

    #[test]
    fn a_list_is_rebuilt_only_when_its_kind_changed() {
        let informers = Informers::default();
        informers.pods.replace(vec![pod("a", "p1", "1"), pod("b", "p2", "2")], "2".into());
        let lister = lister(&informers, 2);
        let first = lister.list("pods", "").unwrap();
        informers.pods.apply(informer::WatchEvent::Bookmark("9".into()));
        assert!(Arc::ptr_eq(&first.0, &lister.list("pods", "").unwrap().0), "a bookmark changes no object");
        informers.pods.apply(informer::WatchEvent::Added(pod("a", "p3", "10")));
        let after = lister.list("pods", "").unwrap();
        assert_eq!(after.len(), 3);
        let unchanged = |name: &str| {
            let find = |l: &Listed| l.0.iter().find(|o| o["metadata"]["name"] == name).unwrap().clone();
            Arc::ptr_eq(&find(&first), &find(&after))
        };
        assert!(unchanged("p1") && unchanged("p2"), "unchanged objects keep their JSON");
        let in_a = lister.list("pods", "a").unwrap();
        let names: Vec<&str> = in_a.iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["p1", "p3"]);
        assert!(lister.list("secrets", "").is_err(), "no cache of secrets");
    }

    #[tokio::test(start_paused = true)]
    async fn changes_between_two_rounds_call_for_one_more_round() {
        let informers = Informers::default();
        let changes = lister(&informers, 0).changes();
        tokio::task::yield_now().await;
        let next = || tokio::time::timeout(Duration::from_millis(100), changes.next());
        assert!(next().await.is_err(), "nothing changed yet");
        informers.pods.apply(informer::WatchEvent::Added(pod("a", "p1", "1")));
        informers.deployments.replace(Vec::new(), "2".into());
        informers.pods.apply(informer::WatchEvent::Added(pod("a", "p2", "3")));
        assert!(next().await.is_ok(), "a pod was added");
        informers.leases.apply(informer::WatchEvent::Added(Lease {
            metadata: Some(ObjectMeta {
                namespace: NODE_LEASE_NAMESPACE.into(),
                name: "n1".into(),
                resource_version: "4".into(),
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert!(next().await.is_err(), "a lease renewal calls for no round");
    }
}
