//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector. The
//! same controller keeps ReplicationControllers (core/v1's older form, with a label-map
//! selector), each seen as a ReplicaSet ([`Replicated`]).
//!
//! [`plan`] is pure (DESIGN.md rule 6): from the ReplicaSet and the pods it may own (its own
//! and its namespace's orphans) it returns what to create, delete, adopt and release, and the
//! status to report. [`ReplicaSets`] is the keyed controller: a ReplicaSet's key is queued by
//! its own changes and by any change to a pod it controls or could adopt, and
//! [`Reconciler::reconcile`] turns the plan into commands — level-triggered, so a missed
//! event, a restarted leader or a lost watch changes nothing in the outcome.

use crate::controller::{self, before_and_after, own_key, Cache, Command, Note, Object, Reconciler};
use crate::objects::{controller_ref, deleting, node_name, phase, ready, selector_matches, terminating};
use skiff_client::informer::{controller_of, Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{
    LabelSelector, ObjectMeta, OwnerReference, Pod, ReplicaSet, ReplicaSetSpec, ReplicaSetStatus, ReplicationController,
};
use std::sync::Arc;

/// A kind that keeps replicas of a pod template.
pub trait Replicated: Resource + Clone {
    const KIND: &'static str;
    const API_VERSION: &'static str;
    /// The controller's name (logs, work queue metrics).
    const CONTROLLER: &'static str;
    /// The object as a ReplicaSet: what [`plan`] reads.
    fn as_replica_set(&self) -> ReplicaSet;
    /// The object with `status`, to write.
    fn with_status(&self, status: ReplicaSetStatus) -> Object;
}

impl Replicated for ReplicaSet {
    const KIND: &'static str = "ReplicaSet";
    const API_VERSION: &'static str = "apps/v1";
    const CONTROLLER: &'static str = "replicaset controller";

    fn as_replica_set(&self) -> ReplicaSet {
        self.clone()
    }

    fn with_status(&self, status: ReplicaSetStatus) -> Object {
        Object::ReplicaSet(ReplicaSet { status: Some(status), ..self.clone() })
    }
}

impl Replicated for ReplicationController {
    const KIND: &'static str = "ReplicationController";
    const API_VERSION: &'static str = "v1";
    const CONTROLLER: &'static str = "replicationcontroller controller";

    fn as_replica_set(&self) -> ReplicaSet {
        let spec = self.spec.clone().unwrap_or_default();
        ReplicaSet {
            api_version: Self::API_VERSION.into(),
            kind: Self::KIND.into(),
            metadata: self.metadata.clone(),
            spec: Some(ReplicaSetSpec {
                replicas: spec.replicas,
                min_ready_seconds: spec.min_ready_seconds,
                // An empty map selects nothing here (validation refuses it; never adopt all).
                selector: (!spec.selector.is_empty())
                    .then(|| LabelSelector { match_labels: spec.selector, ..Default::default() }),
                template: spec.template,
            }),
            status: self.status.clone(),
        }
    }

    fn with_status(&self, status: ReplicaSetStatus) -> Object {
        Object::ReplicationController(ReplicationController { status: Some(status), ..self.clone() })
    }
}

/// The smallest change that moves the pods toward the ReplicaSet's spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Pods to create (the API fills the generated name suffix).
    pub create: Vec<Pod>,
    /// Names of pods to delete, least valuable first.
    pub delete: Vec<String>,
    /// Orphans matching the selector, with the ReplicaSet added as their controller.
    pub adopt: Vec<Pod>,
    /// Owned pods whose labels no longer match, without the ReplicaSet's owner reference.
    pub release: Vec<Pod>,
    pub status: ReplicaSetStatus,
}

/// The owner reference a ReplicaSet (or a ReplicationController, by `rs.kind`) puts on its pods.
pub fn owner_ref(rs: &ReplicaSet, meta: &ObjectMeta) -> OwnerReference {
    let rc = rs.kind == ReplicationController::KIND;
    OwnerReference {
        api_version: if rc { ReplicationController::API_VERSION } else { ReplicaSet::API_VERSION }.into(),
        kind: if rc { ReplicationController::KIND } else { ReplicaSet::KIND }.into(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// What to do for `rs` given the pods it may own (others are left alone).
pub fn plan<'a>(rs: &ReplicaSet, pods: impl IntoIterator<Item = &'a Pod>) -> Plan {
    let meta = rs.metadata.clone().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    // No selector selects nothing (adopting a whole namespace is never meant).
    let selector = spec.selector;
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    // A ReplicaSet being deleted keeps its replicas as they are (Kubernetes manages replicas
    // only while there is no deletionTimestamp): an orphaning delete releases them.
    let being_deleted = deleting(&meta);
    let mut p = Plan::default();
    let mut owned: Vec<&Pod> = Vec::new();
    for pod in pods {
        let Some(pod_meta) = pod.metadata.as_ref() else { continue };
        let matches = selector.as_ref().is_some_and(|s| selector_matches(s, &pod_meta.labels));
        match controller_ref(pod_meta) {
            Some(r) if r.uid == meta.uid => {
                if matches {
                    owned.push(pod);
                } else {
                    let mut released = pod.clone();
                    if let Some(m) = released.metadata.as_mut() {
                        m.owner_references.retain(|r| r.uid != meta.uid);
                    }
                    p.release.push(released);
                }
            }
            None if matches && !terminating(pod) && !being_deleted => {
                let mut adopted = pod.clone();
                if let Some(m) = adopted.metadata.as_mut() {
                    m.owner_references.push(owner_ref(rs, &meta));
                }
                p.adopt.push(adopted);
            }
            _ => {}
        }
    }
    let mut active: Vec<&Pod> = owned.iter().copied().filter(|p| !terminating(p)).collect();
    let have = active.len() + p.adopt.len();
    if !being_deleted && have < want {
        let template = spec.template.unwrap_or_default();
        let mut pod_meta = template.metadata.unwrap_or_default();
        pod_meta.name.clear();
        pod_meta.generate_name = format!("{}-", meta.name);
        pod_meta.namespace = meta.namespace.clone();
        pod_meta.owner_references = vec![owner_ref(rs, &meta)];
        let pod = Pod {
            api_version: "v1".into(),
            kind: "Pod".into(),
            metadata: Some(pod_meta),
            spec: template.spec,
            status: None,
        };
        p.create = vec![pod; want - have];
    } else if !being_deleted && active.len() > want {
        // Kubernetes' order: unscheduled, then pending, then not ready, then newest first.
        active.sort_by_key(|pod| {
            let created = pod.metadata.as_ref().map_or("", |m| m.creation_timestamp.as_str());
            (!node_name(pod).is_empty(), phase(pod) == "Running", ready(pod), std::cmp::Reverse(created))
        });
        p.delete = active[..active.len() - want]
            .iter()
            .filter_map(|pod| pod.metadata.as_ref().map(|m| m.name.clone()))
            .collect();
    }
    let counted = owned.iter().filter(|p| !terminating(p));
    let replicas = counted.clone().count() as i32;
    let ready_n = counted.filter(|p| ready(p)).count() as i32;
    p.status = ReplicaSetStatus {
        replicas,
        fully_labeled_replicas: replicas,
        ready_replicas: ready_n,
        available_replicas: ready_n,
        observed_generation: meta.generation,
        conditions: rs.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
    };
    p
}

/// The name of the pods' index of orphans (pods without a controller) by namespace: the pods a
/// ReplicaSet may adopt.
pub const ORPHANS: &str = "orphans";

/// `pods` with the [`ORPHANS`] index.
pub fn index_orphans(pods: Store<Pod>) -> Store<Pod> {
    pods.with_index(ORPHANS, |pod: &Pod| {
        pod.metadata.iter().filter(|m| controller_ref(m).is_none()).map(|m| m.namespace.clone()).collect()
    })
}

/// The ReplicaSet controller over the master's caches (the pods' with [`ORPHANS`]); as
/// `ReplicaSets<ReplicationController>`, the ReplicationController manager.
pub struct ReplicaSets<K = ReplicaSet> {
    pub sets: Store<K>,
    pub pods: Store<Pod>,
}

impl<K: Replicated> ReplicaSets<K> {
    /// The ReplicaSets a change of `pod` concerns: its controller if that is a ReplicaSet; for
    /// an orphan, every ReplicaSet of its namespace whose selector matches it (it may adopt).
    fn sets_of(&self, pod: &Pod) -> Vec<ObjectKey> {
        let Some(meta) = pod.metadata.as_ref() else { return Vec::new() };
        match controller_ref(meta) {
            Some(r) if r.kind == K::KIND => vec![ObjectKey::new(&meta.namespace, &r.name)],
            Some(_) => Vec::new(),
            None if terminating(pod) => Vec::new(),
            None => self
                .sets
                .list_namespace(&meta.namespace)
                .iter()
                .filter(|rs| {
                    let rs = rs.as_replica_set();
                    let selector = rs.spec.as_ref().and_then(|s| s.selector.as_ref());
                    selector.is_some_and(|s| selector_matches(s, &meta.labels))
                })
                .filter_map(|rs| rs.meta().map(ObjectKey::of))
                .collect(),
        }
    }

    /// The pods `rs` may own: those that name it as an owner, and its namespace's orphans.
    fn candidates(&self, meta: &ObjectMeta) -> Vec<Arc<Pod>> {
        let mut pods = self.pods.owned_by(&meta.uid);
        pods.extend(self.pods.by_index(ORPHANS, &meta.namespace));
        pods
    }
}

impl<K: Replicated> Reconciler for ReplicaSets<K> {
    const NAME: &'static str = K::CONTROLLER;

    fn every_key(&self) -> Vec<ObjectKey> {
        self.sets.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.sets, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.pods, queue, self, |me: &Self, c: &Change<Pod>| {
                before_and_after(c).into_iter().flat_map(|p| me.sets_of(p)).collect()
            }),
        ]
    }

    /// A ReplicaSet of a Deployment is of its Deployment's family.
    fn family(&self, key: &ObjectKey) -> ObjectKey {
        let owner = self.sets.get(key).and_then(|rs| rs.meta().and_then(|m| controller_of(m, "Deployment")));
        owner.unwrap_or_else(|| key.clone())
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.sets, &self.pods]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(set) = self.sets.get(key) else { return Vec::new() };
        let rs = set.as_replica_set();
        let Some(meta) = rs.metadata.as_ref() else { return Vec::new() };
        let candidates = self.candidates(meta);
        let plan = plan(&rs, candidates.iter().map(|p| &**p));
        let note = |reason, message: &str| Some(Note::normal(K::KIND, K::API_VERSION, meta, reason, message.into()));
        let mut commands: Vec<Command> = plan
            .adopt
            .into_iter()
            .chain(plan.release)
            .map(|pod| Command::Update { object: Object::Pod(pod), note: None })
            .collect();
        commands.extend(plan.delete.into_iter().map(|name| Command::Delete {
            resource: Pod::RESOURCE,
            key: ObjectKey::new(&meta.namespace, &name),
            note: note("SuccessfulDelete", "Deleted pod: {name}"),
        }));
        commands.extend(plan.create.into_iter().map(|pod| Command::Create {
            object: Object::Pod(pod),
            note: note("SuccessfulCreate", "Created pod: {name}"),
        }));
        if rs.status.as_ref() != Some(&plan.status) {
            commands.push(Command::UpdateStatus { object: set.with_status(plan.status), note: None });
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{Condition, LabelSelector, PodSpec, PodStatus, PodTemplateSpec, ReplicaSetSpec};
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                uid: "rs-uid".into(),
                generation: 2,
                resource_version: "1".into(),
                ..Default::default()
            }),
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: Some(LabelSelector { match_labels: labels(&[("app", "web")]), ..Default::default() }),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: labels(&[("app", "web")]), ..Default::default() }),
                    spec: Some(PodSpec::default()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(name: &str, owner: Option<&str>, app: &str, node: &str) -> Pod {
        let owner_references = owner
            .map(|uid| OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: uid.into(),
                controller: Some(true),
                ..Default::default()
            })
            .into_iter()
            .collect();
        Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                resource_version: "1".into(),
                labels: labels(&[("app", app)]),
                owner_references,
                creation_timestamp: format!("2026-01-01T00:00:0{}Z", name.len() % 10),
                ..Default::default()
            }),
            spec: Some(PodSpec { node_name: node.into(), ..Default::default() }),
            status: Some(PodStatus {
                phase: if node.is_empty() { "Pending" } else { "Running" }.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn meta_mut(pod: &mut Pod) -> &mut ObjectMeta {
        pod.metadata.get_or_insert_with(Default::default)
    }

    #[test]
    fn a_replication_controller_is_kept_as_a_replica_set_with_its_own_owner_reference() {
        let set = rs(2);
        let spec = set.spec.clone().unwrap();
        let mut rc = ReplicationController {
            api_version: "v1".into(),
            kind: "ReplicationController".into(),
            metadata: set.metadata.clone(),
            spec: Some(skiff_proto::api::ReplicationControllerSpec {
                replicas: spec.replicas,
                selector: labels(&[("app", "web")]),
                template: spec.template,
                ..Default::default()
            }),
            status: None,
        };
        let p = plan(&rc.as_replica_set(), &[pod("stray", None, "web", "n1")]);
        assert_eq!(p.create.len(), 1);
        let owner = &p.create[0].metadata.as_ref().unwrap().owner_references[0];
        assert_eq!((owner.kind.as_str(), owner.api_version.as_str()), ("ReplicationController", "v1"));
        assert_eq!(p.adopt[0].metadata.as_ref().unwrap().owner_references[0].kind, "ReplicationController");
        // An empty selector selects nothing: no orphan of the namespace is taken.
        rc.spec.as_mut().unwrap().selector.clear();
        let p = plan(&rc.as_replica_set(), &[pod("stray", None, "web", "n1")]);
        assert!(p.adopt.is_empty(), "{p:?}");
        let Object::ReplicationController(written) = rc.with_status(p.status.clone()) else { panic!("wrong kind") };
        assert_eq!(written.status, Some(p.status));
    }

    #[test]
    fn creates_the_missing_replicas_from_the_template() {
        let p = plan(&rs(3), &[pod("web-a", Some("rs-uid"), "web", "n1")]);
        assert_eq!(p.create.len(), 2);
        let created = p.create[0].metadata.as_ref().unwrap();
        assert_eq!((created.generate_name.as_str(), created.name.as_str()), ("web-", ""));
        assert_eq!(created.owner_references[0].uid, "rs-uid");
        assert_eq!(created.labels["app"], "web");
        assert_eq!(p.status.replicas, 1);
    }

    #[test]
    fn a_replicaset_being_deleted_neither_adopts_nor_replaces_nor_removes_pods() {
        let mut deleting = rs(3);
        deleting.metadata.as_mut().unwrap().deletion_timestamp = "2026-01-01T00:00:00Z".into();
        let pods = [pod("web-a", None, "web", "n1"), pod("web-b", Some("rs-uid"), "web", "n1")];
        let p = plan(&deleting, &pods);
        assert!(p.adopt.is_empty() && p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        deleting.spec.as_mut().unwrap().replicas = Some(1);
        let p = plan(&deleting, &[pods[1].clone(), pod("web-c", Some("rs-uid"), "web", "n1")]);
        assert!(p.delete.is_empty(), "{p:?}");
        assert_eq!(p.status.replicas, 2, "its status still counts what it owns");
    }

    #[test]
    fn deletes_extras_unscheduled_first_and_ignores_terminating_pods() {
        let mut gone = pod("web-old", Some("rs-uid"), "web", "n1");
        meta_mut(&mut gone).deletion_timestamp = "2026-01-01T00:00:00Z".into();
        let pods = [
            pod("web-a", Some("rs-uid"), "web", "n1"),
            pod("web-b", Some("rs-uid"), "web", ""),
            pod("web-c", Some("rs-uid"), "web", "n2"),
            gone,
        ];
        let p = plan(&rs(1), &pods);
        assert_eq!(p.delete.len(), 2);
        assert_eq!(p.delete[0], "web-b", "the unscheduled pod goes first");
        assert!(p.create.is_empty(), "a terminating pod is neither counted nor replaced twice");
    }

    #[test]
    fn adopts_orphans_and_releases_pods_that_stop_matching() {
        let pods = [
            pod("stray", None, "web", "n1"),
            pod("relabelled", Some("rs-uid"), "other", "n1"),
            pod("foreign", Some("x"), "web", "n1"),
        ];
        let p = plan(&rs(1), &pods);
        assert_eq!(p.adopt.len(), 1);
        let adopted = p.adopt[0].metadata.as_ref().unwrap();
        assert_eq!((adopted.name.as_str(), adopted.owner_references[0].uid.as_str()), ("stray", "rs-uid"));
        assert_eq!(p.release.len(), 1);
        assert!(p.release[0].metadata.as_ref().unwrap().owner_references.is_empty());
        assert!(p.create.is_empty(), "the adopted pod counts toward replicas");
    }

    #[test]
    fn steady_state_changes_nothing() {
        let p = plan(&rs(2), &[pod("web-a", Some("rs-uid"), "web", "n1"), pod("web-b", Some("rs-uid"), "web", "n2")]);
        assert!(p.create.is_empty() && p.delete.is_empty() && p.adopt.is_empty() && p.release.is_empty());
        assert_eq!(p.status.observed_generation, 2);
    }

    fn controller() -> ReplicaSets {
        ReplicaSets { sets: Store::new(), pods: index_orphans(Store::new()) }
    }

    #[test]
    fn reconcile_writes_only_the_difference_and_records_events() {
        let c = controller();
        let mut ready = pod("web-a", Some("rs-uid"), "web", "n1");
        ready.status.as_mut().unwrap().conditions =
            vec![Condition { r#type: "Ready".into(), status: "True".into(), ..Default::default() }];
        // A pod of another namespace is neither counted nor adopted.
        let mut elsewhere = pod("other-ns", None, "web", "n1");
        meta_mut(&mut elsewhere).namespace = "prod".into();
        c.pods.replace(vec![ready.clone(), pod("stray", None, "web", "n1"), elsewhere], "2".into());
        c.sets.replace(vec![rs(3)], "2".into());
        let commands = c.reconcile(&ObjectKey::new("default", "web"));
        let kinds: Vec<&str> = commands
            .iter()
            .map(|c| match c {
                Command::Create { .. } => "create",
                Command::Update { .. } => "update",
                Command::UpdateStatus { .. } => "status",
                Command::Delete { .. } | Command::DeletePodNow(_) => "delete",
                Command::Record(_) => "event",
            })
            .collect();
        assert_eq!(kinds, ["update", "create", "status"], "{commands:?}");
        let Command::Create { note: Some(note), .. } = &commands[1] else { panic!("{commands:?}") };
        assert_eq!((note.reason, note.message.as_str()), ("SuccessfulCreate", "Created pod: {name}"));
        let Command::UpdateStatus { object: Object::ReplicaSet(updated), .. } = &commands[2] else {
            panic!("{commands:?}")
        };
        let status = updated.status.as_ref().unwrap();
        assert_eq!((status.replicas, status.ready_replicas, status.observed_generation), (1, 1, 2));

        // Once the status says so and the pods are there, nothing is written.
        let mut settled = rs(2);
        settled.status = Some(ReplicaSetStatus {
            replicas: 2,
            fully_labeled_replicas: 2,
            ready_replicas: 1,
            available_replicas: 1,
            observed_generation: 2,
            conditions: vec![],
        });
        // (Objects as they would come back: a new resourceVersion for each write.)
        settled.metadata.as_mut().unwrap().resource_version = "3".into();
        let mut adopted = pod("stray", Some("rs-uid"), "web", "n1");
        meta_mut(&mut adopted).resource_version = "3".into();
        c.pods.replace(vec![ready, adopted], "3".into());
        c.sets.replace(vec![settled], "3".into());
        assert_eq!(c.reconcile(&ObjectKey::new("default", "web")), []);
        assert_eq!(c.reconcile(&ObjectKey::new("default", "gone")), [], "a deleted ReplicaSet asks for nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_change_queues_its_replicaset_and_an_orphan_the_ones_that_could_adopt_it() {
        let c = Arc::new(controller());
        let mut other = rs(1);
        let m = other.metadata.as_mut().unwrap();
        (m.name, m.uid) = ("db".into(), "db-uid".into());
        other.spec.as_mut().unwrap().selector =
            Some(LabelSelector { match_labels: labels(&[("app", "db")]), ..Default::default() });
        c.sets.replace(vec![rs(1), other], "1".into());
        let queue = WorkQueue::new();
        let triggers = c.triggers(&queue);
        let next = |queue: &WorkQueue<ObjectKey>| {
            let queue = queue.clone();
            async move {
                let key = tokio::time::timeout(std::time::Duration::from_secs(1), queue.next()).await.ok().flatten();
                if let Some(key) = &key {
                    queue.done(key);
                }
                key
            }
        };
        // An owned pod: its controller's key, whatever its labels.
        let mut owned = pod("web-a", Some("rs-uid"), "other", "n1");
        meta_mut(&mut owned).resource_version = "2".into();
        c.pods.apply(skiff_client::informer::WatchEvent::Added(owned));
        assert_eq!(next(&queue).await, Some(ObjectKey::new("default", "web")));
        // An orphan: the ReplicaSets whose selector matches it, not the others.
        let mut orphan = pod("db-x", None, "db", "n1");
        meta_mut(&mut orphan).resource_version = "3".into();
        c.pods.apply(skiff_client::informer::WatchEvent::Added(orphan.clone()));
        assert_eq!(next(&queue).await, Some(ObjectKey::new("default", "db")));
        assert_eq!(next(&queue).await, None, "no other ReplicaSet selects it");
        // A deleted pod still names its controller.
        let mut deleted = pod("web-a", Some("rs-uid"), "web", "n1");
        meta_mut(&mut deleted).resource_version = "5".into();
        c.pods.apply(skiff_client::informer::WatchEvent::Deleted(deleted));
        assert_eq!(next(&queue).await, Some(ObjectKey::new("default", "web")));
        triggers.iter().for_each(|t| t.abort());
    }
}
