//! The scheduler, run from informers in kube-scheduler's shape (reduced):
//!
//! - **A queue of unscheduled pods** fed by the pod informer's events: a pod that wants the
//!   default scheduler and names no node is queued once, in arrival order.
//! - **A node cache** updated by node and pod events: every node with the usage of the pods
//!   bound to it, changed by the difference each event makes, never rebuilt from a list while
//!   the events keep up.
//! - **Assume, then bind**: the moment a pod is placed its usage counts on the node, so the
//!   next decision sees it; the bind (and its `Scheduled` event) goes out asynchronously, a
//!   bounded number at a time. The assumption ends when the watch reports the binding, or is
//!   withdrawn when the bind fails (the pod comes back after a back-off).
//! - **Unschedulable pods wait**: a pod that fits nowhere gets `PodScheduled=False` with
//!   Kubernetes' message and a `FailedScheduling` event (once per message), then waits until
//!   a cluster event could make it fit — a node added or its schedulable fields changed such
//!   that the pod passes that node's filters, room freed on a node it passes, its own spec
//!   changed — or [`UNSCHEDULABLE_FLUSH`] passes; then at most once per back-off. Nothing is
//!   re-examined while nothing changes.
//!
//! The cache and the queue ([`SchedulingState`]) are pure and tested without a cluster; [`run`]
//! is the I/O shell. It keeps them current on every master and places pods only while this
//! master leads, each write fenced to the leader's term.

use crate::placement::{needs_scheduling, schedule_from, FitError};
use crate::snapshot::{placed_on, NodeInfo, Snapshot, Usage};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::Client;
use skiff_proto::api::{Condition, Node, Pod, PodStatus};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tonic::{Code, Status};

/// Binds and status writes in flight at once.
pub const BIND_CONCURRENCY: usize = 128;

/// Pods placed before the loop looks at events again.
const BATCH: usize = 256;

/// The first back-off after a failed bind; it doubles per failure up to [`MAX_BACKOFF`]
/// (kube-scheduler's pod back-off is 1 s to 10 s).
pub const BASE_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long an unschedulable pod waits without a cluster event before it is tried again
/// (kube-scheduler's `podMaxInUnschedulablePodsDuration`).
pub const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(300);

/// How often leadership and back-offs are looked at.
const TICK: Duration = Duration::from_millis(50);

/// Whether the default scheduler should place this pod now.
pub fn wants_scheduler(pod: &Pod) -> bool {
    let scheduler = pod.spec.as_ref().map_or("", |s| s.scheduler_name.as_str());
    // A pod with scheduling gates waits until they are all removed.
    let gated = pod.spec.as_ref().is_some_and(|s| !s.scheduling_gates.is_empty());
    needs_scheduling(pod)
        && !gated
        && pod.metadata.as_ref().is_none_or(|m| m.deletion_timestamp.is_empty())
        && matches!(scheduler, "" | "default-scheduler")
}

/// Every node with what is placed on it, kept current by events.
#[derive(Default)]
struct NodeCache {
    /// In no particular order; [`schedule_from`] breaks ties by name.
    snapshot: Snapshot,
    index: HashMap<String, usize>,
    /// Every pod counted on a node (bound or assumed), with what it uses; kept for pods whose
    /// node is not (yet) cached, so the node's usage is right when it comes.
    placed: HashMap<ObjectKey, (String, Usage)>,
    by_node: HashMap<String, HashSet<ObjectKey>>,
    /// Where the next pod's search starts (decisions rotate through the nodes).
    start: usize,
}

impl NodeCache {
    fn info(&mut self, node: &str) -> Option<&mut NodeInfo> {
        self.index.get(node).map(|&i| &mut self.snapshot.nodes[i])
    }

    fn set_node(&mut self, node: &Node) {
        let Some(name) = node.meta().map(|m| m.name.clone()) else { return };
        if let Some(info) = self.info(&name) {
            let fresh = NodeInfo::of(node.clone());
            info.node = fresh.node;
            info.allocatable = fresh.allocatable;
            return;
        }
        let mut info = NodeInfo::of(node.clone());
        for key in self.by_node.get(&name).into_iter().flatten() {
            if let Some((_, usage)) = self.placed.get(key) {
                info.add(usage);
            }
        }
        self.index.insert(name, self.snapshot.nodes.len());
        self.snapshot.nodes.push(info);
    }

    fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else { return };
        self.snapshot.nodes.swap_remove(i);
        if let Some(moved) = self.snapshot.nodes.get(i) {
            self.index.insert(moved.name().to_string(), i);
        }
    }

    /// Counts `key` as `placement` (nothing: not placed); the node where room was freed, if
    /// it was placed before and no longer is there.
    fn account(&mut self, key: &ObjectKey, placement: Option<(String, Usage)>) -> Option<String> {
        if self.placed.get(key) == placement.as_ref() {
            return None;
        }
        let freed = if let Some((node, usage)) = self.placed.remove(key) {
            if let Some(info) = self.info(&node) {
                info.remove(&usage);
            }
            if let Some(keys) = self.by_node.get_mut(&node) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_node.remove(&node);
                }
            }
            Some(node)
        } else {
            None
        };
        if let Some((node, usage)) = placement {
            if let Some(info) = self.info(&node) {
                info.add(&usage);
            }
            self.by_node.entry(node.clone()).or_default().insert(key.clone());
            self.placed.insert(key.clone(), (node, usage));
        }
        freed
    }
}

/// Which node fields can turn a pod that fits nowhere into one that fits (kube-scheduler's
/// NodeUpdate events are filtered the same way): not heartbeats.
fn schedulable_fields(node: &Node) -> impl PartialEq + '_ {
    let meta = node.metadata.as_ref();
    let spec = node.spec.as_ref();
    let status = node.status.as_ref();
    (
        meta.map(|m| &m.labels),
        spec.map(|s| (s.unschedulable, &s.taints)),
        status.map(|s| &s.allocatable),
        status.and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready")).map(|c| c.status.as_str()),
    )
}

/// The scheduler's cache and queue: pure, fed events and asked for decisions.
#[derive(Default)]
pub struct SchedulingState {
    cache: NodeCache,
    /// Placed but not yet seen bound.
    assumed: HashSet<ObjectKey>,
    /// Waiting to be tried, in order; a key not in `queued` is a stale entry, skipped.
    active: VecDeque<ObjectKey>,
    queued: HashSet<ObjectKey>,
    /// Tried and fitting nowhere, as tried: waiting for a cluster event that could help.
    unschedulable: HashMap<ObjectKey, Arc<Pod>>,
    /// Waiting out a back-off, until when.
    backoff: BTreeSet<(Instant, ObjectKey)>,
    backing_off: HashMap<ObjectKey, Instant>,
    /// Failed attempts (fitting nowhere, or a failed write) and when the last one was.
    failures: HashMap<ObjectKey, (u32, Instant)>,
    /// When each pod wanting scheduling was first queued (since this state's last resync).
    waiting_since: HashMap<ObjectKey, Instant>,
}

/// The back-off after `failures` failed attempts: [`BASE_BACKOFF`] doubling to [`MAX_BACKOFF`].
fn backoff_after(failures: u32) -> Duration {
    BASE_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

impl SchedulingState {
    /// Starts over from whole caches: usage from the bound pods, every pod that wants
    /// scheduling queued. Assumptions are dropped (binds in flight are of an earlier epoch).
    pub fn resync(&mut self, nodes: &[Arc<Node>], pods: &[Arc<Pod>]) {
        *self = SchedulingState::default();
        for node in nodes {
            self.cache.set_node(node);
        }
        for pod in pods {
            if let Some(meta) = pod.meta() {
                self.on_pod(None, Some(pod), &ObjectKey::of(meta));
            }
        }
    }

    /// A pod was added or modified (`new`) or deleted (`new` is `None`).
    pub fn on_pod(&mut self, old: Option<&Pod>, new: Option<&Pod>, key: &ObjectKey) {
        let placed = new.and_then(|pod| placed_on(pod).map(|node| (node.to_string(), Usage::of(pod))));
        let Some(pod) = new.filter(|_| placed.is_none()) else {
            // Deleted, or seen bound: no longer anyone's to schedule.
            self.assumed.remove(key);
            self.forget(key);
            self.count(key, placed);
            return;
        };
        if self.assumed.contains(key) {
            // Its bind is in flight: it stays counted where it was placed.
            return;
        }
        // (Bound before and now ended: its room is free.)
        self.count(key, None);
        if !wants_scheduler(pod) {
            self.forget(key);
        } else if self.unschedulable.contains_key(key) {
            let spec_changed =
                old.is_none_or(|o| o.spec != pod.spec || o.meta().map(|m| &m.labels) != pod.meta().map(|m| &m.labels));
            if spec_changed {
                self.unschedulable.remove(key);
                self.enqueue(key.clone());
            }
        } else {
            self.enqueue(key.clone());
        }
    }

    /// Counts `key` as `placement` in the node cache; room it frees on a node wakes the
    /// unschedulable pods that node could now take.
    fn count(&mut self, key: &ObjectKey, placement: Option<(String, Usage)>) {
        let newly_placed = placement.is_some() && self.cache.placed.get(key) != placement.as_ref();
        if let Some(freed) = self.cache.account(key, placement) {
            self.wake_for(&freed, Instant::now());
        }
        if newly_placed {
            self.wake_pod_affinity(Instant::now());
        }
    }

    /// A pod placed somewhere may be the one an unschedulable pod's required pod affinity or
    /// topology spread waits for: those go back to the queue.
    fn wake_pod_affinity(&mut self, now: Instant) {
        let waiting: Vec<ObjectKey> = self
            .unschedulable
            .iter()
            .filter(|(_, pod)| {
                let spec = pod.spec.as_ref();
                let affinity = spec.and_then(|s| s.affinity.as_ref()).and_then(|a| a.pod_affinity.as_ref());
                // A pod placed elsewhere can also lift the minimum a spread constraint counts from.
                let spread = spec.is_some_and(|s| !s.topology_spread_constraints.is_empty());
                spread || affinity.is_some_and(|a| !a.required_during_scheduling_ignored_during_execution.is_empty())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            self.unschedulable.remove(&key);
            self.requeue(key, now);
        }
    }

    /// A node was added or modified (`new`) or deleted (`new` is `None`).
    pub fn on_node(&mut self, old: Option<&Node>, new: Option<&Node>, name: &str) {
        match new {
            Some(node) => {
                self.cache.set_node(node);
                if old.is_none_or(|o| schedulable_fields(o) != schedulable_fields(node)) {
                    self.wake_for(name, Instant::now());
                }
            }
            None => self.cache.remove_node(name),
        }
    }

    fn enqueue(&mut self, key: ObjectKey) {
        if self.queued.contains(&key) || self.backing_off.contains_key(&key) || self.unschedulable.contains_key(&key) {
            return;
        }
        self.waiting_since.entry(key.clone()).or_insert_with(Instant::now);
        self.queued.insert(key.clone());
        self.active.push_back(key);
    }

    /// Drops `key` from every queue (it no longer wants scheduling).
    fn forget(&mut self, key: &ObjectKey) {
        self.waiting_since.remove(key);
        self.queued.remove(key);
        self.unschedulable.remove(key);
        if let Some(at) = self.backing_off.remove(key) {
            self.backoff.remove(&(at, key.clone()));
        }
        self.failures.remove(key);
    }

    /// Every unschedulable pod goes back to the queue (the periodic flush).
    pub fn wake_unschedulable(&mut self, now: Instant) {
        let waiting: Vec<ObjectKey> = self.unschedulable.drain().map(|(k, _)| k).collect();
        for key in waiting {
            self.requeue(key, now);
        }
    }

    /// The unschedulable pods that `node`, as it is now, could take go back to the queue:
    /// a node event wakes only the pods it could matter to (kube-scheduler's queueing hints),
    /// so a thousand nodes registering do not re-examine every waiting pod a thousand times.
    fn wake_for(&mut self, node: &str, now: Instant) {
        let Some(info) = self.node(node) else { return };
        let fitting: Vec<ObjectKey> = self
            .unschedulable
            .iter()
            .filter(|(_, pod)| crate::placement::fits(pod, info))
            .map(|(k, _)| k.clone())
            .collect();
        for key in fitting {
            self.unschedulable.remove(&key);
            self.requeue(key, now);
        }
    }

    /// Queues a pod again once its back-off since its last attempt has passed.
    fn requeue(&mut self, key: ObjectKey, now: Instant) {
        match self.failures.get(&key) {
            Some(&(n, at)) if at + backoff_after(n) > now => self.wait_until(key, at + backoff_after(n)),
            _ => self.enqueue(key),
        }
    }

    fn wait_until(&mut self, key: ObjectKey, at: Instant) {
        self.queued.remove(&key);
        self.backing_off.insert(key.clone(), at);
        self.backoff.insert((at, key));
    }

    fn failed(&mut self, key: &ObjectKey, now: Instant) -> u32 {
        let entry = self.failures.entry(key.clone()).or_insert((0, now));
        *entry = (entry.0 + 1, now);
        entry.0
    }

    /// The next pod to try, after moving pods whose back-off ended at `now` to the queue.
    pub fn pop(&mut self, now: Instant) -> Option<ObjectKey> {
        while let Some((at, key)) = self.backoff.first().cloned() {
            if at > now {
                break;
            }
            self.backoff.pop_first();
            self.backing_off.remove(&key);
            self.enqueue(key);
        }
        while let Some(key) = self.active.pop_front() {
            if self.queued.remove(&key) {
                return Some(key);
            }
        }
        None
    }

    /// Whether a pod is waiting to be tried now.
    pub fn has_work(&self, now: Instant) -> bool {
        !self.queued.is_empty() || self.backoff.first().is_some_and(|(at, _)| *at <= now)
    }

    /// Places `pod` (popped as `key`): the chosen node, with the pod assumed on it; or why it
    /// fits nowhere, with the pod set aside as unschedulable.
    pub fn decide(&mut self, key: &ObjectKey, pod: &Arc<Pod>, now: Instant) -> Result<String, FitError> {
        match schedule_from(pod, &self.cache.snapshot, self.cache.start) {
            Ok((node, next)) => {
                self.cache.start = next;
                self.cache.account(key, Some((node.clone(), Usage::of(pod))));
                self.assumed.insert(key.clone());
                Ok(node)
            }
            Err(fit) => {
                self.failed(key, now);
                self.unschedulable.insert(key.clone(), pod.clone());
                Err(fit)
            }
        }
    }

    /// Where lower-priority pods could be removed for `pod` (which fits nowhere). None while
    /// the pod waits for victims it already chose: its nominated node still has lower-priority
    /// pods being deleted.
    pub fn preempt(&self, pod: &Pod) -> Option<crate::preemption::Preemption> {
        let usages = |node: &str| -> Vec<Usage> {
            let keys = self.cache.by_node.get(node).into_iter().flatten();
            keys.filter_map(|k| self.cache.placed.get(k).map(|(_, u)| u.clone())).collect()
        };
        let nominated = pod.status.as_ref().map_or("", |s| s.nominated_node_name.as_str());
        let mine = crate::preemption::priority(pod);
        if !nominated.is_empty() && usages(nominated).iter().any(|u| u.pod.deleting && u.pod.priority < mine) {
            return None;
        }
        crate::preemption::choose(pod, self.cache.snapshot.nodes.iter().map(|n| (n, usages(n.name()))))
    }

    /// `key`'s bind went through: the watch will report it.
    pub fn bound(&mut self, key: &ObjectKey) {
        self.failures.remove(key);
    }

    /// When `key` was first queued (since the last resync).
    pub fn queued_since(&self, key: &ObjectKey) -> Option<Instant> {
        self.waiting_since.get(key).copied()
    }

    /// `key`'s bind failed: the assumption is withdrawn and the pod tried again after a
    /// back-off that doubles per failure.
    pub fn bind_failed(&mut self, key: &ObjectKey, now: Instant) {
        if !self.assumed.remove(key) {
            return;
        }
        self.cache.account(key, None);
        self.back_off(key, now);
    }

    /// `key`'s unschedulable status could not be written (it changed meanwhile, or the write
    /// failed): it is tried again after a back-off rather than at the next cluster event.
    pub fn report_failed(&mut self, key: &ObjectKey, now: Instant) {
        if self.unschedulable.remove(key).is_some() {
            self.back_off(key, now);
        }
    }

    fn back_off(&mut self, key: &ObjectKey, now: Instant) {
        let failures = self.failed(key, now);
        self.wait_until(key.clone(), now + backoff_after(failures));
    }

    /// How many pods wait for a cluster event.
    pub fn unschedulable_len(&self) -> usize {
        self.unschedulable.len()
    }

    /// What `node` has placed on it, as the cache counts it.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.cache.index.get(name).map(|&i| &self.cache.snapshot.nodes[i])
    }
}

/// How a write the loop sent out ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Bound,
    BindFailed,
    Reported,
    ReportFailed,
}

/// A write the loop sent out, reported back.
struct Finished {
    key: ObjectKey,
    epoch: u64,
    outcome: Outcome,
}

/// The scheduler's inputs: the master's pod and node informers and a client for writes.
pub struct Scheduler {
    pub client: Client,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    /// The raft term while this master leads.
    pub leader_term: Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    pub metrics: SchedulerMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct AttemptLabels {
    result: &'static str,
    profile: &'static str,
}

/// kube-scheduler's metrics: `scheduler_schedule_attempts_total{result, profile}` (`scheduled`,
/// `unschedulable`, `error`) and `scheduler_pod_scheduling_duration_seconds` (from a pod's
/// first queueing to its bind, attempts included).
#[derive(Clone)]
pub struct SchedulerMetrics {
    attempts: prometheus_client::metrics::family::Family<AttemptLabels, prometheus_client::metrics::counter::Counter>,
    scheduling_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl SchedulerMetrics {
    pub fn register(metrics: &skiff_proto::metrics::Metrics) -> SchedulerMetrics {
        let m = SchedulerMetrics {
            attempts: Default::default(),
            scheduling_seconds: skiff_proto::metrics::request_seconds(),
        };
        metrics.register("scheduler_schedule_attempts", "Attempts to schedule pods, by result", m.attempts.clone());
        metrics.register(
            "scheduler_pod_scheduling_duration_seconds",
            "Latency from a pod's first queueing to its bind, attempts included",
            m.scheduling_seconds.clone(),
        );
        m
    }

    fn attempt(&self, result: &'static str) {
        self.attempts.get_or_create(&AttemptLabels { result, profile: "default-scheduler" }).inc();
    }
}

impl Scheduler {
    /// Runs until `stop`.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let (mut pod_changes, mut node_changes) = (self.pods.subscribe(), self.nodes.subscribe());
        tokio::select! {
            () = async { self.pods.synced().await; self.nodes.synced().await } => {}
            _ = stop.changed() => return,
        }
        let mut state = SchedulingState::default();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let permits = Arc::new(Semaphore::new(BIND_CONCURRENCY));
        let mut leading: Option<(u64, Client)> = None;
        let mut epoch = 0u64;
        let mut tick = tokio::time::interval(TICK);
        let mut flushed = Instant::now();
        loop {
            let ready = leading.is_some() && permits.available_permits() > 0 && state.has_work(Instant::now());
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                c = pod_changes.recv() => match c {
                    Ok(Change::Applied { old, new }) => {
                        if let Some(meta) = new.meta() {
                            state.on_pod(old.as_deref(), Some(&new), &ObjectKey::of(meta));
                        }
                    }
                    Ok(Change::Deleted(old)) => {
                        if let Some(meta) = old.meta() {
                            state.on_pod(Some(&old), None, &ObjectKey::of(meta));
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        epoch += 1;
                        state.resync(&self.nodes.list(), &self.pods.list());
                    }
                    Err(RecvError::Closed) => return,
                },
                c = node_changes.recv() => match c {
                    Ok(Change::Applied { old, new }) => {
                        if let Some(meta) = new.meta() {
                            state.on_node(old.as_deref(), Some(&new), &meta.name);
                        }
                    }
                    Ok(Change::Deleted(old)) => {
                        if let Some(meta) = old.meta() {
                            state.on_node(Some(&old), None, &meta.name);
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        epoch += 1;
                        state.resync(&self.nodes.list(), &self.pods.list());
                    }
                    Err(RecvError::Closed) => return,
                },
                Some(done) = done_rx.recv() => {
                    if done.epoch == epoch {
                        match done.outcome {
                            Outcome::Bound => state.bound(&done.key),
                            Outcome::BindFailed => state.bind_failed(&done.key, Instant::now()),
                            Outcome::Reported => {}
                            Outcome::ReportFailed => state.report_failed(&done.key, Instant::now()),
                        }
                    }
                }
                _ = tick.tick() => {
                    let term = (self.leader_term)();
                    if term != leading.as_ref().map(|(t, _)| *t) {
                        // A new leadership starts from the caches as they are: whatever an
                        // earlier one left in flight is seen through the watch.
                        epoch += 1;
                        leading = term.map(|t| (t, self.client.fenced(t)));
                        if leading.is_some() {
                            state.resync(&self.nodes.list(), &self.pods.list());
                        }
                    }
                    if flushed.elapsed() >= UNSCHEDULABLE_FLUSH {
                        flushed = Instant::now();
                        state.wake_unschedulable(Instant::now());
                    }
                }
                () = std::future::ready(()), if ready => {}
            }
            if let Some((_, client)) = &leading {
                self.place(&mut state, client, epoch, &permits, &done_tx);
            }
        }
    }

    /// Places up to [`BATCH`] queued pods, sending out their binds (or their unschedulable
    /// status) while permits last.
    fn place(
        &self,
        state: &mut SchedulingState,
        client: &Client,
        epoch: u64,
        permits: &Arc<Semaphore>,
        done: &mpsc::UnboundedSender<Finished>,
    ) {
        for _ in 0..BATCH {
            let Ok(permit) = permits.clone().try_acquire_owned() else { return };
            let Some(key) = state.pop(Instant::now()) else { return };
            let Some(pod) = self.pods.get(&key) else { continue };
            if !wants_scheduler(&pod) {
                continue;
            }
            let (client, done, metrics) = (client.clone(), done.clone(), self.metrics.clone());
            let queued_since = state.queued_since(&key);
            match state.decide(&key, &pod, Instant::now()) {
                Ok(node) => {
                    tokio::spawn(async move {
                        let bound = bind(&client, &pod, &key, &node).await;
                        metrics.attempt(if bound { "scheduled" } else { "error" });
                        if let Some(since) = queued_since.filter(|_| bound) {
                            metrics.scheduling_seconds.observe(since.elapsed().as_secs_f64());
                        }
                        let outcome = if bound { Outcome::Bound } else { Outcome::BindFailed };
                        drop(permit);
                        let _ = done.send(Finished { key, epoch, outcome });
                    });
                }
                Err(fit) => {
                    metrics.attempt("unschedulable");
                    let message = fit.to_string();
                    let preemption = state.preempt(&pod);
                    if preemption.is_none() && reported(&pod, &message) {
                        continue;
                    }
                    tokio::spawn(async move {
                        let nominated = match &preemption {
                            Some(p) => preempt(&client, &pod, p).await,
                            None => None,
                        };
                        let outcome = if report_unschedulable(&client, &pod, &key, &message, nominated).await {
                            Outcome::Reported
                        } else {
                            Outcome::ReportFailed
                        };
                        drop(permit);
                        let _ = done.send(Finished { key, epoch, outcome });
                    });
                }
            }
        }
    }
}

/// Binds `pod` to `node` and records the `Scheduled` event; whether the bind went through.
async fn bind(client: &Client, pod: &Pod, key: &ObjectKey, node: &str) -> bool {
    match client.bind(&key.namespace, &key.name, node).await {
        Ok(()) => {
            let message = format!("Successfully assigned {key} to {node}");
            client.event(&involved(pod), "Pod", "default-scheduler", "Normal", "Scheduled", &message).await;
            true
        }
        Err(e) => {
            if !matches!(e.code(), Code::NotFound) {
                tracing::debug!("bind {key} to {node}: {}", e.message());
            }
            false
        }
    }
}

/// What an event needs of the pod it is about.
fn involved(pod: &Pod) -> serde_json::Value {
    let meta = pod.metadata.clone().unwrap_or_default();
    serde_json::json!({"apiVersion": "v1", "metadata": {"namespace": meta.namespace, "name": meta.name, "uid": meta.uid}})
}

/// Whether `pod` already says it is unschedulable for `message`.
fn reported(pod: &Pod, message: &str) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.r#type == "PodScheduled" && c.status == "False" && c.reason == "Unschedulable" && c.message == message
        })
    })
}

/// Deletes the victims of `preemption` (each with its grace period, and a `Preempted` event
/// in Kubernetes' words); the node the preemptor is nominated to, once they are on their way.
async fn preempt(client: &Client, pod: &Pod, preemption: &crate::preemption::Preemption) -> Option<String> {
    let uid = pod.metadata.as_ref().map_or("", |m| m.uid.as_str());
    for victim in &preemption.victims {
        match client.delete_pod(&victim.namespace, &victim.name, None).await {
            Ok(()) => {
                let involved = serde_json::json!({"apiVersion": "v1",
                    "metadata": {"namespace": victim.namespace, "name": victim.name, "uid": victim.uid}});
                let message = format!("Preempted by pod {uid} on node {}", preemption.node);
                client.event(&involved, "Pod", "default-scheduler", "Normal", "Preempted", &message).await;
            }
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => {
                tracing::debug!("preempting {}/{}: {}", victim.namespace, victim.name, e.message());
                return None;
            }
        }
    }
    Some(preemption.node.clone())
}

/// Sets `PodScheduled=False` with Kubernetes' message (and the node a preemption nominated)
/// and records `FailedScheduling`; whether the status was written (or the pod is gone).
async fn report_unschedulable(
    client: &Client,
    pod: &Pod,
    key: &ObjectKey,
    message: &str,
    nominated: Option<String>,
) -> bool {
    let mut updated = pod.clone();
    let status = updated.status.get_or_insert_with(PodStatus::default);
    if let Some(node) = nominated {
        status.nominated_node_name = node;
    }
    status.conditions.retain(|c| c.r#type != "PodScheduled");
    status.conditions.push(Condition {
        r#type: "PodScheduled".into(),
        status: "False".into(),
        reason: "Unschedulable".into(),
        message: message.into(),
        last_transition_time: skiff_proto::time::now_rfc3339(),
        ..Default::default()
    });
    let written = match serde_json::to_value(&updated) {
        Ok(v) => client.update_status("pods", &v).await.map(|_| ()),
        Err(e) => Err(Status::internal(e.to_string())),
    };
    match written {
        Ok(()) => {
            client.event(&involved(pod), "Pod", "default-scheduler", "Warning", "FailedScheduling", message).await;
            true
        }
        Err(e) if e.code() == Code::NotFound => true,
        Err(e) => {
            tracing::debug!("unschedulable status of {key}: {}", e.message());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, pods: u32) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": pods.to_string()},
                       "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "t0"}]}
        }))
        .unwrap()
    }

    fn pod(name: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}
        }))
        .unwrap()
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    /// Pods the cache counts on `node`.
    fn counted(state: &SchedulingState, node: &str) -> i128 {
        state.node(node).map_or(-1, |n| n.requested.pods / 1000)
    }

    /// Pops and decides every queued pod: (pod, node or the fit error).
    fn drain(state: &mut SchedulingState, pods: &[Pod]) -> Vec<(String, Result<String, String>)> {
        let mut out = Vec::new();
        while let Some(k) = state.pop(Instant::now()) {
            let pod = Arc::new(pods.iter().find(|p| p.meta().is_some_and(|m| m.name == k.name)).unwrap().clone());
            out.push((k.name.clone(), state.decide(&k, &pod, Instant::now()).map_err(|e| e.to_string())));
        }
        out
    }

    #[test]
    fn a_decision_is_assumed_so_the_next_one_sees_it() {
        let mut state = SchedulingState::default();
        state.on_node(None, Some(&node("n1", 1)), "n1");
        let pods = [pod("a", ""), pod("b", "")];
        state.on_pod(None, Some(&pods[0]), &key("a"));
        state.on_pod(None, Some(&pods[1]), &key("b"));
        state.on_pod(Some(&pods[0]), Some(&pods[0]), &key("a"));
        let decided = drain(&mut state, &pods);
        assert_eq!(decided.len(), 2, "each pod queued once: {decided:?}");
        assert_eq!(decided[0], ("a".into(), Ok("n1".into())));
        assert_eq!(decided[1].1, Err("0/1 nodes are available: 1 Too many pods.".into()));
        assert_eq!(counted(&state, "n1"), 1);
        // The watch reports the binding: the assumption ends, the pod is counted once.
        state.on_pod(Some(&pods[0]), Some(&pod("a", "n1")), &key("a"));
        assert_eq!(counted(&state, "n1"), 1);
        assert_eq!(state.unschedulable_len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unschedulable_pod_waits_for_an_event_that_could_make_room() {
        let mut state = SchedulingState::default();
        let n1 = node("n1", 1);
        state.on_node(None, Some(&n1), "n1");
        let bound = pod("bound", "n1");
        state.on_pod(None, Some(&bound), &key("bound"));
        let pending = [pod("p", "")];
        state.on_pod(None, Some(&pending[0]), &key("p"));
        assert!(drain(&mut state, &pending)[0].1.is_err());
        // A heartbeat, or its own status written, changes nothing it could fit by.
        let mut beat = n1.clone();
        beat.status.as_mut().unwrap().conditions[0].last_heartbeat_time = "t1".into();
        state.on_node(Some(&n1), Some(&beat), "n1");
        let mut with_status = pending[0].clone();
        with_status.status = Some(PodStatus { message: "unschedulable".into(), ..Default::default() });
        state.on_pod(Some(&pending[0]), Some(&with_status), &key("p"));
        assert!(!state.has_work(Instant::now()), "nothing could have made room");
        // The bound pod ends: its room is free, the pending pod is tried again and fits.
        let mut ended = bound.clone();
        ended.status = Some(PodStatus { phase: "Succeeded".into(), ..Default::default() });
        state.on_pod(Some(&bound), Some(&ended), &key("bound"));
        assert!(state.pop(Instant::now()).is_none(), "tried again only after its back-off");
        tokio::time::advance(BASE_BACKOFF).await;
        assert_eq!(drain(&mut state, &pending), [("p".to_string(), Ok("n1".to_string()))]);
        // Another pending pod fits nowhere until a node is added.
        let more = [pod("q", "")];
        state.on_pod(None, Some(&more[0]), &key("q"));
        assert!(drain(&mut state, &more)[0].1.is_err());
        tokio::time::advance(BASE_BACKOFF).await;
        state.on_node(None, Some(&node("n2", 1)), "n2");
        assert_eq!(drain(&mut state, &more), [("q".to_string(), Ok("n2".to_string()))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_event_wakes_only_the_pods_that_node_could_take() {
        let mut state = SchedulingState::default();
        let mut selective = pod("ssd", "");
        selective.spec.as_mut().unwrap().node_selector.insert("disk".into(), "ssd".into());
        let pending = [selective, pod("any", "")];
        state.on_node(None, Some(&node("full", 1)), "full");
        state.on_pod(None, Some(&pod("resident", "full")), &key("resident"));
        for p in &pending {
            state.on_pod(None, Some(p), &key(&p.metadata.as_ref().unwrap().name));
        }
        assert!(drain(&mut state, &pending).iter().all(|(_, r)| r.is_err()));
        tokio::time::advance(MAX_BACKOFF).await;
        // A hundred nodes without the label: each could take "any" but never "ssd".
        for i in 0..100 {
            state.on_node(None, Some(&node(&format!("n{i}"), 10)), &format!("n{i}"));
        }
        assert_eq!(drain(&mut state, &pending).len(), 1, "only pod any was tried again");
        // A heartbeat changes nothing; the label does.
        let plain = node("n7", 10);
        let mut labelled = plain.clone();
        labelled.metadata.as_mut().unwrap().labels.insert("disk".into(), "ssd".into());
        tokio::time::advance(MAX_BACKOFF).await;
        state.on_node(Some(&plain), Some(&labelled), "n7");
        assert_eq!(drain(&mut state, &pending), [("ssd".to_string(), Ok("n7".to_string()))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_bind_withdraws_the_assumption_and_backs_off() {
        let mut state = SchedulingState::default();
        state.on_node(None, Some(&node("n1", 10)), "n1");
        let pods = [pod("a", "")];
        state.on_pod(None, Some(&pods[0]), &key("a"));
        assert_eq!(drain(&mut state, &pods).len(), 1);
        assert_eq!(counted(&state, "n1"), 1);
        state.bind_failed(&key("a"), Instant::now());
        assert_eq!(counted(&state, "n1"), 0, "the assumption is withdrawn");
        assert!(state.pop(Instant::now()).is_none(), "backing off");
        tokio::time::advance(BASE_BACKOFF).await;
        assert_eq!(drain(&mut state, &pods).len(), 1);
        state.bind_failed(&key("a"), Instant::now());
        tokio::time::advance(BASE_BACKOFF).await;
        assert!(state.pop(Instant::now()).is_none(), "the second back-off is twice the first");
        tokio::time::advance(BASE_BACKOFF).await;
        assert_eq!(state.pop(Instant::now()), Some(key("a")));
    }

    #[test]
    fn a_pod_bound_before_its_node_is_cached_counts_when_the_node_comes() {
        let mut state = SchedulingState::default();
        state.on_pod(None, Some(&pod("early", "n1")), &key("early"));
        state.on_node(None, Some(&node("n1", 2)), "n1");
        assert_eq!(counted(&state, "n1"), 1);
        state.on_node(None, Some(&node("n2", 2)), "n2");
        state.on_node(Some(&node("n1", 2)), None, "n1");
        assert_eq!(counted(&state, "n2"), 0, "the node moved into the removed one's slot keeps its own usage");
        state.on_node(None, Some(&node("n1", 2)), "n1");
        assert_eq!(counted(&state, "n1"), 1);
        state.on_pod(Some(&pod("early", "n1")), None, &key("early"));
        assert_eq!(counted(&state, "n1"), 0);
    }

    #[test]
    fn pods_for_other_schedulers_bound_or_deleting_are_not_queued() {
        let mut state = SchedulingState::default();
        let mut other = pod("other", "");
        other.spec.as_mut().unwrap().scheduler_name = "my-scheduler".into();
        let mut deleting = pod("deleting", "");
        deleting.metadata.as_mut().unwrap().deletion_timestamp = "2026-12-05T00:00:00Z".into();
        for (name, p) in [("other", &other), ("deleting", &deleting), ("bound", &pod("bound", "n9"))] {
            state.on_pod(None, Some(p), &key(name));
        }
        assert!(state.pop(Instant::now()).is_none());
    }
}
