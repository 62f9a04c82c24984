//! The garbage collector: an object whose every owner (by `ownerReferences`) is gone is
//! deleted, as Kubernetes' collector does in the background. The API already cascades when an
//! owner is deleted through it; this catches what a cascade left behind (a master that died
//! mid-cascade) and objects created with owners that never existed.
//!
//! It also deletes pods bound to a node that no longer exists (Kubernetes' pod GC), after a
//! quarantine: nobody is left to run or stop them.
//!
//! [`dangling`] is pure. [`Collector`] is keyed by a dependent of one kind: its own changes
//! queue it, and so does the deletion of any of its owners. [`PodGc`] is keyed by pod: the
//! deletion of its node queues it, and so does a change of a pod bound to a node that is not
//! there.

use crate::controller::{self, before_and_after, Cache, Command, Reconciler};
use crate::nodelifecycle::BY_NODE;
use crate::objects::{deleting, node_name};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{
    CronJob, DaemonSet, Deployment, Job, Node, ObjectMeta, OwnerReference, Pod, ReplicaSet, ReplicationController,
    StatefulSet,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a node must have been missing before the pods bound to it are collected (Kubernetes'
/// pod GC quarantine).
pub const POD_GC_QUARANTINE: Duration = Duration::from_secs(40);

/// The owner kinds whose objects the collector knows.
#[derive(Clone, Default)]
pub struct Owners {
    pub deployments: Store<Deployment>,
    pub replica_sets: Store<ReplicaSet>,
    pub replication_controllers: Store<ReplicationController>,
    pub daemon_sets: Store<DaemonSet>,
    pub stateful_sets: Store<StatefulSet>,
    pub jobs: Store<Job>,
    pub cron_jobs: Store<CronJob>,
}

macro_rules! each_owner {
    ($owners:expr, |$store:ident| $body:expr) => {{
        let o = $owners;
        [
            {
                let $store = &o.deployments;
                $body
            },
            {
                let $store = &o.replica_sets;
                $body
            },
            {
                let $store = &o.replication_controllers;
                $body
            },
            {
                let $store = &o.daemon_sets;
                $body
            },
            {
                let $store = &o.stateful_sets;
                $body
            },
            {
                let $store = &o.jobs;
                $body
            },
            {
                let $store = &o.cron_jobs;
                $body
            },
        ]
    }};
}

impl Owners {
    /// Whether the owner `r` names in `namespace` exists (`None`: a kind the collector does not
    /// know, whose objects it cannot see).
    pub fn exists(&self, namespace: &str, r: &OwnerReference) -> Option<bool> {
        let key = ObjectKey::new(namespace, &r.name);
        let uid = |meta: Option<&ObjectMeta>| meta.is_some_and(|m| m.uid == r.uid);
        Some(match r.kind.as_str() {
            "Deployment" => self.deployments.get(&key).is_some_and(|o| uid(o.meta())),
            "ReplicaSet" => self.replica_sets.get(&key).is_some_and(|o| uid(o.meta())),
            "ReplicationController" => self.replication_controllers.get(&key).is_some_and(|o| uid(o.meta())),
            "DaemonSet" => self.daemon_sets.get(&key).is_some_and(|o| uid(o.meta())),
            "StatefulSet" => self.stateful_sets.get(&key).is_some_and(|o| uid(o.meta())),
            "Job" => self.jobs.get(&key).is_some_and(|o| uid(o.meta())),
            "CronJob" => self.cron_jobs.get(&key).is_some_and(|o| uid(o.meta())),
            _ => return None,
        })
    }

    /// The revision every owner cache is current to.
    fn revision(&self) -> i64 {
        each_owner!(self, |s| s.revision()).into_iter().min().unwrap_or(0)
    }
}

/// Whether the object with `meta` is dangling: not being deleted, with owners, all of kinds
/// the collector knows and none of them there.
pub fn dangling(meta: &ObjectMeta, owners: &Owners) -> bool {
    !deleting(meta)
        && !meta.owner_references.is_empty()
        && meta.owner_references.iter().all(|r| owners.exists(&meta.namespace, r) == Some(false))
}

fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.resource_version.parse().unwrap_or(0)
}

/// The collector of one dependent kind (pods, ReplicaSets, Jobs, claims).
pub struct Collector<K: Resource> {
    pub dependents: Store<K>,
    pub owners: Owners,
}

impl<K: Resource> Collector<K> {
    /// Whether the owners' caches can answer for a dependent at `meta`'s revision: owners are
    /// created before their dependents, so a dependent at or below the owners' caches'
    /// revision has its owners in them, never taken for gone.
    fn answerable(&self, meta: &ObjectMeta) -> bool {
        revision_of(meta) <= self.owners.revision()
    }

    fn dependents_of(&self, owner: Option<&ObjectMeta>) -> Vec<ObjectKey> {
        let Some(owner) = owner else { return Vec::new() };
        self.dependents.owned_by(&owner.uid).iter().filter_map(|d| d.meta().map(ObjectKey::of)).collect()
    }
}

/// Queues the dependents of every deleted owner in `store`.
fn on_owner_deleted<O: Resource, K: Resource>(
    store: &Store<O>,
    queue: &WorkQueue<ObjectKey>,
    me: &Arc<Collector<K>>,
) -> tokio::task::JoinHandle<()> {
    controller::on_changes(store, queue, me, |me: &Collector<K>, c: &Change<O>| match c {
        Change::Deleted(owner) => me.dependents_of(owner.meta()),
        Change::Applied { .. } => Vec::new(),
    })
}

impl<K: Resource> Reconciler for Collector<K> {
    const NAME: &'static str = "garbage collector";

    fn every_key(&self) -> Vec<ObjectKey> {
        let all = self.dependents.list();
        all.iter().filter_map(|d| d.meta()).filter(|m| !m.owner_references.is_empty()).map(ObjectKey::of).collect()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        let own = controller::on_changes(&self.dependents, queue, self, |_, c: &Change<K>| match c {
            Change::Applied { new, .. } => {
                new.meta().filter(|m| !m.owner_references.is_empty()).map(ObjectKey::of).into_iter().collect()
            }
            Change::Deleted(_) => Vec::new(),
        });
        let mut triggers = vec![own];
        triggers.extend(each_owner!(&self.owners, |s| on_owner_deleted(s, queue, self)));
        triggers
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        let mut caches: Vec<&dyn Cache> = vec![&self.dependents];
        caches.extend(each_owner!(&self.owners, |s| s as &dyn Cache));
        caches
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(obj) = self.dependents.get(key) else { return Vec::new() };
        let Some(meta) = obj.meta() else { return Vec::new() };
        if !self.answerable(meta) || !dangling(meta, &self.owners) {
            return Vec::new();
        }
        tracing::info!("garbage collector: deleting {} {key}: its owners are gone", K::RESOURCE);
        vec![Command::Delete { resource: K::RESOURCE, key: key.clone(), note: None }]
    }

    /// A dependent newer than the owners' caches is looked at again once they catch up.
    fn requeue_after(&self, key: &ObjectKey) -> Option<Duration> {
        let obj = self.dependents.get(key)?;
        (!self.answerable(obj.meta()?)).then_some(Duration::from_secs(1))
    }
}

/// Pods bound to a node that is gone: force-deleted after [`POD_GC_QUARANTINE`] (a pod may be
/// bound to a node that is about to register).
pub struct PodGc {
    /// With the [`BY_NODE`] index.
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    /// Since when each node that pods are bound to has been seen missing.
    pub missing: Mutex<HashMap<String, Instant>>,
}

impl PodGc {
    /// The node `pod` is bound to, if that node is not there and the nodes' cache can say so
    /// (a pod at or below its revision was bound to a node registered before it, if at all).
    fn missing_node<'p>(&self, pod: &'p Pod) -> Option<&'p str> {
        let node = node_name(pod);
        let meta = pod.metadata.as_ref()?;
        let absent = !node.is_empty() && self.nodes.get(&ObjectKey::new("", node)).is_none();
        (absent && revision_of(meta) <= self.nodes.revision()).then_some(node)
    }

    /// How long `node` has been seen missing (from now, the first time).
    fn missing_for(&self, node: &str) -> Duration {
        let mut missing = self.missing.lock().expect("not poisoned");
        if missing.len() >= 10_000 {
            missing.retain(|n, _| self.nodes.get(&ObjectKey::new("", n)).is_none());
        }
        missing.entry(node.to_string()).or_insert_with(Instant::now).elapsed()
    }
}

impl Reconciler for PodGc {
    const NAME: &'static str = "pod garbage collector";

    fn every_key(&self) -> Vec<ObjectKey> {
        let pods = self.pods.list();
        pods.iter().filter(|p| self.missing_node(p).is_some()).filter_map(|p| p.meta().map(ObjectKey::of)).collect()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.nodes, queue, self, |me: &Self, c: &Change<Node>| match c {
                Change::Deleted(node) => {
                    let name = node.meta().map_or("", |m| m.name.as_str());
                    me.pods.by_index(BY_NODE, name).iter().filter_map(|p| p.meta().map(ObjectKey::of)).collect()
                }
                Change::Applied { new, .. } => {
                    // Back (or registered late): it is no longer missing.
                    if let Some(m) = new.meta() {
                        me.missing.lock().expect("not poisoned").remove(&m.name);
                    }
                    Vec::new()
                }
            }),
            controller::on_changes(&self.pods, queue, self, |me: &Self, c: &Change<Pod>| {
                before_and_after(c)
                    .into_iter()
                    .filter(|p| !node_name(p).is_empty() && me.nodes.get(&ObjectKey::new("", node_name(p))).is_none())
                    .filter_map(|p| p.meta().map(ObjectKey::of))
                    .collect()
            }),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.pods, &self.nodes]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(pod) = self.pods.get(key) else { return Vec::new() };
        let Some(node) = self.missing_node(&pod) else { return Vec::new() };
        if self.missing_for(node) < POD_GC_QUARANTINE {
            return Vec::new();
        }
        tracing::info!("pod garbage collector: deleting {key}: node {node} is gone");
        vec![Command::DeletePodNow(key.clone())]
    }

    /// A pod on a missing node is looked at again when the quarantine ends; one newer than the
    /// nodes' cache, once it catches up.
    fn requeue_after(&self, key: &ObjectKey) -> Option<Duration> {
        let pod = self.pods.get(key)?;
        let node = node_name(&pod);
        if node.is_empty() || self.nodes.get(&ObjectKey::new("", node)).is_some() {
            return None;
        }
        match self.missing_node(&pod) {
            Some(node) => Some(POD_GC_QUARANTINE.saturating_sub(self.missing_for(node)) + Duration::from_millis(100)),
            None => Some(Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_client::informer::WatchEvent;

    fn rs(name: &str, uid: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                uid: uid.into(),
                resource_version: "1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn owned(owners: &[(&str, &str, &str)]) -> ObjectMeta {
        let owner_references = owners
            .iter()
            .map(|(kind, name, uid)| OwnerReference {
                kind: kind.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
                ..Default::default()
            })
            .collect();
        ObjectMeta { name: "p".into(), namespace: "default".into(), owner_references, ..Default::default() }
    }

    #[test]
    fn only_objects_whose_owners_are_all_gone_are_collected() {
        let owners = Owners::default();
        owners.replica_sets.apply(WatchEvent::Added(rs("web", "rs-1")));
        assert!(!dangling(&owned(&[("ReplicaSet", "web", "rs-1")]), &owners), "its owner is there");
        assert!(dangling(&owned(&[("ReplicaSet", "gone", "rs-9")]), &owners));
        assert!(dangling(&owned(&[("ReplicaSet", "web", "rs-old")]), &owners), "a new owner of the same name");
        assert!(
            !dangling(&owned(&[("ReplicaSet", "gone", "x"), ("ReplicaSet", "web", "rs-1")]), &owners),
            "one is left"
        );
        assert!(!dangling(&owned(&[("ConfigMap", "cm", "cm-1")]), &owners), "an owner kind it cannot see");
        assert!(!dangling(&owned(&[]), &owners), "no owners");
        let mut going = owned(&[("ReplicaSet", "gone", "rs-9")]);
        going.deletion_timestamp = "2026-12-05T00:00:00Z".into();
        assert!(!dangling(&going, &owners), "already being deleted");
    }
}
