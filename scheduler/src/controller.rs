//! A small controller runtime: keyed, level-triggered reconcilers over the master's informer
//! caches, as client-go's controllers and kube-runtime's `Controller` are.
//!
//! - **Triggers** map a cache's changes to keys: an object's own events, and an owned object's
//!   events to its controller's key ([`on_changes`]).
//! - **A keyed queue** ([`WorkQueue`]) coalesces repeated events, hands a key to one worker
//!   at a time, and backs a failed key off.
//! - **`reconcile(key)`** ([`Reconciler::reconcile`]) is pure: from the caches it returns the
//!   [`Command`]s that move the key's objects toward their spec.
//! - **One executor** ([`execute`]) carries them out through the client fenced to this
//!   leadership's term (DESIGN.md rule 4), creates in batches that double from one.
//!
//! Informers run on every master, so a new leader starts with warm caches; reconciles run only
//! while this master leads. Before reconciling a key the runtime waits until the caches are
//! current to the store's revision at that moment (Kubernetes' consistent read from cache): a
//! cache that lags our own creates, or the last leader's, must not make us create twice. A
//! family of objects (a Deployment and its ReplicaSets) is reconciled by one controller at a
//! time ([`Families`]). Every key is queued on taking leadership and every [`RESYNC`], a
//! safety net rather than how changes are noticed.

use futures::future::BoxFuture;
use skiff_client::api::Api;
use skiff_client::informer::{controller_of, Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_client::Client;
use skiff_proto::api::{
    CertificateSigningRequest, CronJob, DaemonSet, Deployment, EndpointSlice, Endpoints, HorizontalPodAutoscaler,
    Ingress, Job, Node, ObjectMeta, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod, PodDisruptionBudget,
    ReplicaSet, ReplicationController, Service, ServiceAccount, StatefulSet,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Code, Status};

/// How often every key is queued even without a change.
pub const RESYNC: Duration = Duration::from_secs(60);

/// Reconciles run at once (of different keys).
pub const WORKERS: usize = 8;

/// Creates in flight at once for one reconcile.
pub const CREATE_CONCURRENCY: usize = 64;

/// How long a reconcile waits for the caches to reach a revision before it is retried.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

macro_rules! objects {
    ($($kind:ident),* $(,)?) => {
        /// An object a command writes. (Kinds differ in size; each is moved once, to be
        /// sent.)
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum Object {
            $($kind($kind),)*
        }

        impl Object {
            fn meta(&self) -> Option<&ObjectMeta> {
                match self {
                    $(Object::$kind(o) => o.meta(),)*
                }
            }

            /// The object as the JSON the status subresource takes, and its resource.
            fn json(&self) -> Result<(&'static str, serde_json::Value), Status> {
                let json = match self {
                    $(Object::$kind(o) => serde_json::to_value(o).map(|v| ($kind::RESOURCE, v)),)*
                };
                json.map_err(|e| Status::internal(e.to_string()))
            }
        }

        async fn create(client: &Client, object: Object) -> Result<Object, Status> {
            let client = client.clone();
            Ok(match object {
                $(Object::$kind(o) => Object::$kind(Api::new(client).create(&o).await?),)*
            })
        }

        async fn update(client: &Client, object: Object) -> Result<Object, Status> {
            let client = client.clone();
            Ok(match object {
                $(Object::$kind(o) => Object::$kind(Api::new(client).update(&o).await?),)*
            })
        }
    };
}

objects!(
    Pod,
    ReplicaSet,
    Deployment,
    Job,
    CronJob,
    StatefulSet,
    DaemonSet,
    PersistentVolumeClaim,
    PersistentVolume,
    ServiceAccount,
    Service,
    Ingress,
    Node,
    Endpoints,
    CertificateSigningRequest,
    PodDisruptionBudget,
    ReplicationController,
    HorizontalPodAutoscaler,
    EndpointSlice,
);

impl Object {
    /// The name it was stored under (for a create with `generateName`, the generated one).
    fn name(&self) -> &str {
        self.meta().map_or("", |m| m.name.as_str())
    }
}

/// An Event to record about the object a controller acts for, once its command succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub regarding: ObjectReference,
    /// Normal or Warning.
    pub r#type: &'static str,
    pub reason: &'static str,
    /// `{name}` is replaced by the name of the object the command wrote.
    pub message: String,
}

impl Note {
    /// A Normal event about `meta`'s object, a `kind` of `api_version`.
    pub fn normal(kind: &str, api_version: &str, meta: &ObjectMeta, reason: &'static str, message: String) -> Note {
        Note::new(kind, api_version, meta, "Normal", reason, message)
    }

    /// A Warning event about `meta`'s object, a `kind` of `api_version`.
    pub fn warning(kind: &str, api_version: &str, meta: &ObjectMeta, reason: &'static str, message: String) -> Note {
        Note::new(kind, api_version, meta, "Warning", reason, message)
    }

    fn new(
        kind: &str,
        api_version: &str,
        meta: &ObjectMeta,
        r#type: &'static str,
        reason: &'static str,
        message: String,
    ) -> Note {
        let regarding = ObjectReference {
            kind: kind.into(),
            api_version: api_version.into(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            ..Default::default()
        };
        Note { regarding, r#type, reason, message }
    }
}

/// A write a reconcile asks for. The executor carries them out in order (consecutive creates
/// together); the first failure that is not a lost race stops it.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Create {
        object: Object,
        note: Option<Note>,
    },
    /// Replace the object (metadata and spec), guarded by its resourceVersion.
    Update {
        object: Object,
        note: Option<Note>,
    },
    /// Replace the object's status, guarded by its resourceVersion.
    UpdateStatus {
        object: Object,
        note: Option<Note>,
    },
    Delete {
        resource: &'static str,
        key: ObjectKey,
        note: Option<Note>,
    },
    /// Delete a pod with no grace period: no node is left to stop it.
    DeletePodNow(ObjectKey),
    /// Record an event about an object without writing it (a failure seen again).
    Record(Note),
}

/// What a controller is: the caches it reads, the keys they hold, and a pure reconcile.
pub trait Reconciler: Send + Sync + 'static {
    /// For logs: "replicaset controller".
    const NAME: &'static str;
    /// Every key the controller owns.
    fn every_key(&self) -> Vec<ObjectKey>;
    /// Starts the tasks that queue keys on the caches' changes ([`on_changes`]).
    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>>;
    /// The family `key` belongs to: reconciles of one family, by any controller, run one at a
    /// time ([`Families`]).
    fn family(&self, key: &ObjectKey) -> ObjectKey {
        key.clone()
    }
    /// Every cache it reads.
    fn caches(&self) -> Vec<&dyn Cache>;
    /// Waits until every cache it reads has been listed.
    fn synced(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for cache in self.caches() {
                cache.synced().await;
            }
        })
    }
    /// Waits until every cache it reads is current to `revision`.
    fn caught_up(&self, revision: i64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for cache in self.caches() {
                cache.caught_up(revision).await;
            }
        })
    }
    /// What to write for `key`, from the caches alone.
    fn reconcile(&self, key: &ObjectKey) -> Vec<Command>;
    /// When `key` must be looked at again though nothing changed (a deadline, a schedule):
    /// asked after each reconcile of it that succeeded.
    fn requeue_after(&self, _key: &ObjectKey) -> Option<Duration> {
        None
    }
}

/// A cache a reconciler reads, whatever its kind.
pub trait Cache: Send + Sync {
    fn synced(&self) -> BoxFuture<'_, ()>;
    fn caught_up(&self, revision: i64) -> BoxFuture<'_, ()>;
}

impl<K: Resource> Cache for Store<K> {
    fn synced(&self) -> BoxFuture<'_, ()> {
        Box::pin(Store::synced(self))
    }

    fn caught_up(&self, revision: i64) -> BoxFuture<'_, ()> {
        Box::pin(Store::caught_up(self, revision))
    }
}

/// Queues the keys `keys` maps each change of `store` to, until the store is dropped; when
/// changes were missed (a slow reader), every key the reconciler owns.
pub fn on_changes<K: Resource, R: Reconciler>(
    store: &Store<K>,
    queue: &WorkQueue<ObjectKey>,
    reconciler: &Arc<R>,
    keys: impl Fn(&R, &Change<K>) -> Vec<ObjectKey> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut changes = store.subscribe();
    let (queue, reconciler) = (queue.clone(), reconciler.clone());
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(change) => keys(&reconciler, &change).into_iter().for_each(|k| queue.add(k)),
                Err(RecvError::Lagged(_)) => reconciler.every_key().into_iter().for_each(|k| queue.add(k)),
                Err(RecvError::Closed) => return,
            }
        }
    })
}

/// The key of a change's object (its own events).
pub fn own_key<K: Resource>(change: &Change<K>) -> Vec<ObjectKey> {
    let obj = match change {
        Change::Applied { new, .. } => new,
        Change::Deleted(old) => old,
    };
    obj.meta().map(ObjectKey::of).into_iter().collect()
}

/// The keys of the `kind` objects that control a change's object, before and after it.
pub fn controllers_of<K: Resource>(change: &Change<K>, kind: &str) -> Vec<ObjectKey> {
    let mut keys: Vec<ObjectKey> =
        before_and_after(change).into_iter().filter_map(|o| controller_of(o.meta()?, kind)).collect();
    keys.dedup();
    keys
}

/// The objects before and after a change (one or both).
pub fn before_and_after<K>(change: &Change<K>) -> Vec<&K> {
    match change {
        Change::Applied { old, new } => old.iter().map(|o| &**o).chain([&**new]).collect(),
        Change::Deleted(old) => vec![&**old],
    }
}

/// How a reconciler reaches the cluster.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    /// The raft term while this master leads, `None` while it does not; changes wake the
    /// controllers.
    pub leadership: tokio::sync::watch::Receiver<Option<u64>>,
    /// The store's revision now (on the leader, every acknowledged write is at or below it).
    pub store_revision: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// Shared by every controller of the process.
    pub events: Arc<EventFilter>,
    /// Shared by every controller of the process.
    pub families: Arc<Families>,
    /// The work queues' metrics, each controller's queue under its name.
    pub queues: Arc<skiff_client::queue::QueueMetrics>,
}

/// A lock per family of objects that controllers act on together (a Deployment and its
/// ReplicaSets): two controllers reconciling one family concurrently could each act on a
/// view without the other's writes — a ReplicaSet replacing a pod from a size its
/// Deployment has just cut while the Deployment grows the new ReplicaSet into that room —
/// and break a rollout's surge bound, which the rounds kept by running one controller after
/// the other.
#[derive(Default)]
pub struct Families(Mutex<HashMap<ObjectKey, Arc<tokio::sync::Mutex<()>>>>);

impl Families {
    fn of(&self, family: ObjectKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().expect("not poisoned");
        if locks.len() >= 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(family).or_default().clone()
    }
}

/// Kubernetes' event spam filter (client-go's `EventSourceObjectSpamFilter`): each object
/// may have a burst of [`EVENT_BURST`] events recorded about it, then one per
/// [`EVENT_REFILL`]. A 10,000-pod scale-up records 25 `SuccessfulCreate` events, not 10,000
/// writes as large as the pods.
#[derive(Default)]
pub struct EventFilter {
    buckets: Mutex<HashMap<String, (f64, tokio::time::Instant)>>,
}

pub const EVENT_BURST: f64 = 25.0;
pub const EVENT_REFILL: Duration = Duration::from_secs(300);

impl EventFilter {
    /// Whether an event about `regarding` may be recorded now (taking a token if so).
    pub fn allow(&self, regarding: &ObjectReference) -> bool {
        let now = tokio::time::Instant::now();
        let refill = |tokens: f64, since: tokio::time::Instant| {
            (tokens + now.duration_since(since).as_secs_f64() / EVENT_REFILL.as_secs_f64()).min(EVENT_BURST)
        };
        let mut buckets = self.buckets.lock().expect("not poisoned");
        if buckets.len() >= 10_000 {
            // Objects whose bucket has filled again are as good as new: forget them.
            buckets.retain(|_, (tokens, since)| refill(*tokens, *since) < EVENT_BURST);
        }
        let key = format!("{}/{}/{}/{}", regarding.kind, regarding.namespace, regarding.name, regarding.uid);
        let (tokens, since) = buckets.entry(key).or_insert((EVENT_BURST, now));
        let available = refill(*tokens, *since);
        *since = now;
        if available >= 1.0 {
            *tokens = available - 1.0;
            true
        } else {
            *tokens = available;
            false
        }
    }
}

/// Runs `reconciler` until `stop`: triggers always (so the queue is current), reconciles only
/// while this master leads.
pub async fn run<R: Reconciler>(reconciler: Arc<R>, ctx: Context, mut stop: tokio::sync::watch::Receiver<bool>) {
    // Named as Kubernetes names its controllers' queues ("replicaset", "garbage_collector").
    let name = R::NAME.trim_end_matches(" controller").replace(' ', "_");
    let queue: WorkQueue<ObjectKey> = WorkQueue::with_metrics(&name, &ctx.queues);
    let triggers = reconciler.triggers(&queue);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (queue, reconciler, ctx) = (queue.clone(), reconciler.clone(), ctx.clone());
            tokio::spawn(async move {
                while let Some(key) = queue.next().await {
                    let term = *ctx.leadership.borrow();
                    if let Some(term) = term {
                        // One reconcile of a family at a time, each from caches current to the
                        // store when it starts: what one writes, the next one sees.
                        let family = ctx.families.of(reconciler.family(&key));
                        let _turn = family.lock().await;
                        let now = (ctx.store_revision)();
                        match reconcile_one(&*reconciler, &ctx, term, &key, now).await {
                            Ok(()) => {
                                queue.forget(&key);
                                if let Some(after) = reconciler.requeue_after(&key) {
                                    queue.add_after(key.clone(), after);
                                }
                            }
                            Err(e) => {
                                tracing::debug!("{} {key}: {}", R::NAME, e.message());
                                queue.retry(key.clone());
                            }
                        }
                    }
                    queue.done(&key);
                }
            })
        })
        .collect();
    tokio::select! {
        () = reconciler.synced() => {}
        _ = stop.changed() => {}
    }
    // Every key is queued when the leadership is taken, and every RESYNC as a safety net.
    let mut leadership = ctx.leadership.clone();
    let mut led = false;
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.reset();
    while !*stop.borrow() {
        let leads = leadership.borrow_and_update().is_some();
        if leads && !led {
            resync.reset();
            reconciler.every_key().into_iter().for_each(|k| queue.add(k));
        }
        led = leads;
        tokio::select! {
            changed = leadership.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = resync.tick() => reconciler.every_key().into_iter().for_each(|k| queue.add(k)),
            _ = stop.changed() => {}
        }
    }
    queue.close();
    triggers.iter().for_each(|t| t.abort());
    for w in workers {
        let _ = w.await;
    }
}

/// Reconciles `key` once the caches reach `revision`.
async fn reconcile_one<R: Reconciler>(
    reconciler: &R,
    ctx: &Context,
    term: u64,
    key: &ObjectKey,
    revision: i64,
) -> Result<(), Status> {
    tokio::time::timeout(CATCH_UP_TIMEOUT, reconciler.caught_up(revision))
        .await
        .map_err(|_| Status::unavailable(format!("caches not current to revision {revision}")))?;
    execute(&ctx.client.fenced(term), &ctx.events, reconciler.reconcile(key)).await
}

/// A write that lost a race with another (a stale cache, a concurrent delete) is not an error:
/// the write that won arrives as an event and queues the key again.
fn lost_race(e: &Status) -> bool {
    matches!(e.code(), Code::Aborted | Code::NotFound | Code::AlreadyExists)
}

/// Carries out `commands` in order through `client`; consecutive creates of one kind go in
/// batches that double from one (capped at [`CREATE_CONCURRENCY`] in flight), as Kubernetes'
/// controllers do, so a template the API refuses fails once, not a thousand times. Stops at
/// the first failure that is not a lost race.
pub async fn execute(client: &Client, events: &Arc<EventFilter>, commands: Vec<Command>) -> Result<(), Status> {
    let mut commands = commands.into_iter().peekable();
    while let Some(command) = commands.next() {
        match command {
            Command::Create { object, note } => {
                // Creates of one kind together: a StatefulSet's claims exist before its pods.
                let kind = std::mem::discriminant(&object);
                let mut creates = vec![(object, note)];
                while let Some(Command::Create { object, .. }) = commands.peek() {
                    if std::mem::discriminant(object) != kind {
                        break;
                    }
                    if let Some(Command::Create { object, note }) = commands.next() {
                        creates.push((object, note));
                    }
                }
                create_all(client, events, creates).await?;
            }
            Command::Update { object, note } => {
                if let Some(written) = ignore_races(update(client, object).await)? {
                    record(client, events, note, written.name()).await;
                }
            }
            Command::UpdateStatus { object, note } => {
                let name = object.name().to_string();
                if ignore_races(update_status(client, object).await)?.is_some() {
                    record(client, events, note, &name).await;
                }
            }
            Command::DeletePodNow(key) => {
                ignore_races(client.delete_pod(&key.namespace, &key.name, Some(0)).await)?;
            }
            Command::Record(note) => {
                let name = note.regarding.name.clone();
                record(client, events, Some(note), &name).await;
            }
            Command::Delete { resource, key, note } => {
                if ignore_races(client.delete(resource, &key.namespace, &key.name).await)?.is_some() {
                    record(client, events, note, &key.name).await;
                }
            }
        }
    }
    Ok(())
}

/// The value, `None` for a lost race ([`lost_race`]), or the error.
pub(crate) fn ignore_races<T>(r: Result<T, Status>) -> Result<Option<T>, Status> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if lost_race(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn create_all(
    client: &Client,
    events: &Arc<EventFilter>,
    creates: Vec<(Object, Option<Note>)>,
) -> Result<(), Status> {
    let mut batch = 1;
    let mut rest = creates.into_iter();
    loop {
        let now: Vec<_> = rest.by_ref().take(batch).collect();
        if now.is_empty() {
            return Ok(());
        }
        let mut running = tokio::task::JoinSet::new();
        for (object, note) in now {
            let (client, events) = (client.clone(), events.clone());
            running.spawn(async move {
                if let Some(written) = ignore_races(create(&client, object).await)? {
                    record(&client, &events, note, written.name()).await;
                }
                Ok::<(), Status>(())
            });
        }
        let mut failed = None;
        while let Some(r) = running.join_next().await {
            let r = r.unwrap_or_else(|e| Err(Status::internal(e.to_string())));
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        batch = (batch * 2).min(CREATE_CONCURRENCY);
    }
}

/// The status subresource (the client's, which takes the kind's JSON).
async fn update_status(client: &Client, object: Object) -> Result<(), Status> {
    let (resource, value) = object.json()?;
    client.update_status(resource, &value).await.map(|_| ())
}

/// Records `note` about the object named `name` the command wrote, if the filter allows.
async fn record(client: &Client, events: &EventFilter, note: Option<Note>, name: &str) {
    if let Some(note) = note.filter(|n| events.allow(&n.regarding)) {
        let message = note.message.replace("{name}", name);
        let component = component(&note.regarding.kind);
        client.record_event(note.regarding, component, note.r#type, note.reason, &message).await;
    }
}

/// The component that reports events about a `kind` object.
fn component(kind: &str) -> &'static str {
    match kind {
        "Deployment" => "deployment-controller",
        "Job" => "job-controller",
        "CronJob" => "cronjob-controller",
        "StatefulSet" => "statefulset-controller",
        "DaemonSet" => "daemonset-controller",
        "Node" | "Pod" => "node-controller",
        _ => "replicaset-controller",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// Reconciles by recording: which keys, and which revisions it was asked to reach first.
    #[derive(Default)]
    struct Recorder {
        keys: Vec<ObjectKey>,
        reconciled: Mutex<Vec<ObjectKey>>,
        waited_for: Mutex<Vec<i64>>,
        requeue: Option<Duration>,
    }

    impl Reconciler for Recorder {
        const NAME: &'static str = "recorder";

        fn every_key(&self) -> Vec<ObjectKey> {
            self.keys.clone()
        }

        fn triggers(self: &Arc<Self>, _: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
            Vec::new()
        }

        fn caches(&self) -> Vec<&dyn Cache> {
            Vec::new()
        }

        fn caught_up(&self, revision: i64) -> BoxFuture<'_, ()> {
            self.waited_for.lock().unwrap().push(revision);
            Box::pin(async {})
        }

        fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
            self.reconciled.lock().unwrap().push(key.clone());
            Vec::new()
        }

        fn requeue_after(&self, _: &ObjectKey) -> Option<Duration> {
            self.requeue
        }
    }

    /// A context for reconciles that write nothing, leading as `leadership` says.
    fn context(leadership: tokio::sync::watch::Receiver<Option<u64>>, revision: Arc<AtomicI64>) -> Context {
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy();
        Context {
            client: Client::over_channel("unused", channel, "t", Duration::from_secs(1)).unwrap(),
            leadership,
            store_revision: Arc::new(move || revision.load(Ordering::SeqCst)),
            events: Arc::default(),
            families: Arc::default(),
            queues: skiff_client::queue::QueueMetrics::register(&skiff_proto::metrics::Metrics::default()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reconciles_only_while_leading_every_key_once_on_taking_over_after_the_caches_hold_the_last_leaders_writes()
    {
        let keys = vec![ObjectKey::new("a", "one"), ObjectKey::new("b", "two")];
        let recorder = Arc::new(Recorder { keys: keys.clone(), ..Default::default() });
        let (term, leadership) = tokio::sync::watch::channel(None);
        let revision = Arc::new(AtomicI64::new(7));
        let ctx = context(leadership, revision.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(run(recorder.clone(), ctx, stopped));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(recorder.reconciled.lock().unwrap().is_empty(), "a follower reconciles nothing");

        revision.store(42, Ordering::SeqCst);
        term.send_replace(Some(3));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut reconciled = recorder.reconciled.lock().unwrap().clone();
        reconciled.sort();
        assert_eq!(reconciled, keys, "every key once on taking leadership");
        assert_eq!(*recorder.waited_for.lock().unwrap(), [42, 42], "the store's revision when it took over");
        stop.send_replace(true);
        running.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_that_asks_to_be_looked_at_again_is_reconciled_when_its_time_comes_and_not_before() {
        let key = ObjectKey::new("a", "cron");
        let after = Duration::from_secs(20);
        let recorder = Arc::new(Recorder { keys: vec![key.clone()], requeue: Some(after), ..Default::default() });
        let (_term, leadership) = tokio::sync::watch::channel(Some(1));
        let ctx = context(leadership, Arc::new(AtomicI64::new(1)));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(run(recorder.clone(), ctx, stopped));
        let count = || recorder.reconciled.lock().unwrap().len();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(count(), 1, "once on taking leadership");
        tokio::time::sleep(after - Duration::from_secs(2)).await;
        assert_eq!(count(), 1, "nothing changed and its time has not come");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(count(), 2, "again when its time came (before the {RESYNC:?} resync)");
        stop.send_replace(true);
        running.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn events_about_one_object_come_in_a_burst_then_one_per_refill() {
        let filter = EventFilter::default();
        let rs = |name: &str| ObjectReference { kind: "ReplicaSet".into(), name: name.into(), ..Default::default() };
        let allowed = (0..100).filter(|_| filter.allow(&rs("big"))).count();
        assert_eq!(allowed, EVENT_BURST as usize, "a burst, then nothing");
        assert!(filter.allow(&rs("other")), "another object has its own bucket");
        tokio::time::advance(EVENT_REFILL).await;
        assert!(filter.allow(&rs("big")) && !filter.allow(&rs("big")), "one more per refill period");
    }
}
