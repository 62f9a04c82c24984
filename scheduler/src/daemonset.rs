//! The DaemonSet controller: one pod on every node its template fits (nodeSelector, required
//! node affinity, taints), created already bound to the node, on nodes as they join, removed
//! from nodes that stop matching; a changed template is rolled out one node at a time
//! (RollingUpdate with maxUnavailable 1: a pod of the old template is deleted only while every
//! other daemon pod is ready).
//!
//! [`plan`] is pure: the DaemonSet, the nodes and its pods in, pods to create and delete and
//! the status out. [`DaemonSets`] is the keyed controller: a DaemonSet's key is queued by its
//! own changes, its pods', and a node's that could change where it runs.

use crate::controller::{self, own_key, Cache, Command, Note, Object, Reconciler};
use crate::deployment::template_hash;
use crate::objects::{controller_ref, deleting, node_name, ready, terminating};
use crate::placement::daemon_fits;
use crate::snapshot::NodeInfo;
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{DaemonSet, DaemonSetStatus, Node, ObjectMeta, OwnerReference, Pod};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const HASH_LABEL: &str = "controller-revision-hash";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Pod>,
    /// Pod names to delete.
    pub delete: Vec<String>,
    pub status: DaemonSetStatus,
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default()
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata.as_ref()?.labels.get(HASH_LABEL).map(String::as_str)
}

/// The hash of a DaemonSet's pod template (the pods' [`HASH_LABEL`]).
pub fn revision(ds: &DaemonSet) -> String {
    let template = ds.spec.as_ref().and_then(|s| s.template.as_ref());
    template_hash(&template.map_or(serde_json::json!({}), |t| serde_json::to_value(t).unwrap_or_default()))
}

/// The daemon pod for `node`, from the template.
fn pod_for(ds: &DaemonSet, meta: &ObjectMeta, hash: &str, node: &str) -> Pod {
    let template = ds.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let mut pod_meta = template.metadata.unwrap_or_default();
    pod_meta.name.clear();
    pod_meta.generate_name = format!("{}-", meta.name);
    pod_meta.namespace = meta.namespace.clone();
    pod_meta.labels.insert(HASH_LABEL.into(), hash.into());
    pod_meta.owner_references = vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }];
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = node.into();
    Pod { api_version: "v1".into(), kind: "Pod".into(), metadata: Some(pod_meta), spec: Some(spec), status: None }
}

/// What to do for `ds` given the nodes and the pods it controls (others are left out).
pub fn plan<'a>(ds: &DaemonSet, nodes: &[Arc<Node>], pods: impl IntoIterator<Item = &'a Pod>) -> Plan {
    let meta = ds.metadata.clone().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let hash = revision(ds);
    let as_pod = Pod { spec: spec.template.as_ref().and_then(|t| t.spec.clone()), ..Default::default() };
    let mut p = Plan::default();
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    let mut stopping = 0;
    let mine =
        pods.into_iter().filter(|p| p.metadata.as_ref().and_then(controller_ref).is_some_and(|r| r.uid == meta.uid));
    for pod in mine {
        if terminating(pod) {
            stopping += 1;
            continue;
        }
        by_node.entry(node_name(pod).to_string()).or_default().push(pod);
    }
    let eligible: Vec<String> = nodes
        .iter()
        .filter(|n| daemon_fits(&as_pod, &NodeInfo::of((***n).clone())))
        .map(|n| n.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default())
        .collect();
    // Pods on nodes that are gone or no longer eligible, and duplicates.
    let mut misscheduled = 0;
    for (node, list) in &by_node {
        if !eligible.contains(node) {
            misscheduled += list.len() as i32;
            p.delete.extend(list.iter().map(|p| name_of(p)));
        } else if list.len() > 1 {
            let mut extra = list.clone();
            extra.sort_by_key(|p| (hash_of(p) == Some(hash.as_str()), ready(p)));
            p.delete.extend(extra[..extra.len() - 1].iter().map(|p| name_of(p)));
        }
    }
    for node in &eligible {
        if by_node.get(node).is_none_or(|l| l.is_empty()) {
            p.create.push(pod_for(ds, &meta, &hash, node));
        }
    }
    // Rolling update, one node at a time: only while nothing else is down or on its way out.
    let current: Vec<&Pod> = eligible.iter().filter_map(|n| by_node.get(n).and_then(|l| l.first().copied())).collect();
    let all_ready = current.len() == eligible.len() && current.iter().all(|p| ready(p));
    let on_delete = spec.update_strategy.as_ref().is_some_and(|s| s.r#type == "OnDelete");
    if !on_delete && all_ready && stopping == 0 && p.delete.is_empty() {
        if let Some(pod) = current.iter().find(|p| hash_of(p) != Some(hash.as_str())) {
            p.delete.push(name_of(pod));
        }
    }
    let updated = current.iter().filter(|p| hash_of(p) == Some(hash.as_str())).count() as i32;
    let ready_n = current.iter().filter(|p| ready(p)).count() as i32;
    let desired = eligible.len() as i32;
    p.status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current.len() as i32,
        number_misscheduled: misscheduled,
        number_ready: ready_n,
        number_available: ready_n,
        number_unavailable: (desired - ready_n).max(0),
        updated_number_scheduled: updated,
        observed_generation: meta.generation.max(1),
        conditions: ds.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
    };
    p
}

/// The DaemonSet controller over the master's caches.
pub struct DaemonSets {
    pub sets: Store<DaemonSet>,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
}

/// Whether a node change can change which DaemonSets belong on it: a node added or removed,
/// or its labels or spec (taints) changed — not its status.
fn placement_changed(change: &Change<Node>) -> bool {
    match change {
        Change::Applied { old: Some(old), new } => {
            old.spec != new.spec || old.metadata.as_ref().map(|m| &m.labels) != new.metadata.as_ref().map(|m| &m.labels)
        }
        _ => true,
    }
}

impl Reconciler for DaemonSets {
    const NAME: &'static str = "daemonset controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.sets.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.sets, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.pods, queue, self, |_, c: &Change<Pod>| {
                controller::controllers_of(c, "DaemonSet")
            }),
            controller::on_changes(&self.nodes, queue, self, |me: &Self, c: &Change<Node>| {
                if placement_changed(c) {
                    me.every_key()
                } else {
                    Vec::new()
                }
            }),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.sets, &self.nodes, &self.pods]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(ds) = self.sets.get(key) else { return Vec::new() };
        let Some(meta) = ds.metadata.as_ref().filter(|m| !deleting(m)) else { return Vec::new() };
        let pods = self.pods.owned_by(&meta.uid);
        let plan = plan(&ds, &self.nodes.list(), pods.iter().map(|p| &**p));
        let note = |reason, message: &str| Some(Note::normal("DaemonSet", "apps/v1", meta, reason, message.into()));
        let mut commands: Vec<Command> = plan
            .create
            .into_iter()
            .map(|pod| Command::Create {
                object: Object::Pod(pod),
                note: note("SuccessfulCreate", "Created pod: {name}"),
            })
            .collect();
        commands.extend(plan.delete.into_iter().map(|name| Command::Delete {
            resource: Pod::RESOURCE,
            key: ObjectKey::new(&meta.namespace, &name),
            note: note("SuccessfulDelete", "Deleted pod: {name}"),
        }));
        if ds.status.as_ref() != Some(&plan.status) {
            let mut updated = (*ds).clone();
            updated.status = Some(plan.status);
            commands.push(Command::UpdateStatus { object: Object::DaemonSet(updated), note: None });
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn node(name: &str, labels: Value, taints: Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
                .unwrap(),
        )
    }

    fn ds(selector: Value, image: &str) -> DaemonSet {
        serde_json::from_value(json!({"metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-uid"},
               "spec": {"selector": {"matchLabels": {"app": "agent"}},
                        "template": {"metadata": {"labels": {"app": "agent"}},
                                     "spec": {"nodeSelector": selector, "containers": [{"name": "c", "image": image}]}}}}))
        .unwrap()
    }

    fn pod_on(d: &DaemonSet, node: &str, n: usize, is_ready: bool) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": format!("agent-{n}"), "labels": {"app": "agent", HASH_LABEL: revision(d)},
                            "ownerReferences": [{"uid": "ds-uid", "controller": true}]},
               "spec": {"nodeName": node},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}]}}))
        .unwrap()
    }

    #[test]
    fn one_pod_per_matching_node_bound_to_it() {
        let nodes = [
            node("a", json!({"disk": "ssd"}), json!([])),
            node("b", json!({"disk": "hdd"}), json!([])),
            node("c", json!({"disk": "ssd"}), json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}])),
        ];
        let p = plan(&ds(json!({"disk": "ssd"}), "x"), &nodes, &[]);
        let targets: Vec<&str> = p.create.iter().map(node_name).collect();
        assert_eq!(targets, ["a"], "b does not match, c's taint is not tolerated");
        assert_eq!(p.status.desired_number_scheduled, 1);
        assert_eq!(p.create[0].metadata.as_ref().unwrap().generate_name, "agent-");
    }

    #[test]
    fn pods_leave_nodes_that_stop_matching_and_new_nodes_get_one() {
        let d = ds(json!({}), "x");
        let nodes = [node("a", json!({}), json!([])), node("new", json!({}), json!([]))];
        let pods = [pod_on(&d, "a", 0, true), pod_on(&d, "gone", 1, true)];
        let p = plan(&d, &nodes, &pods);
        assert_eq!(p.delete, ["agent-1"]);
        assert_eq!(p.create.len(), 1);
        assert_eq!(node_name(&p.create[0]), "new");
    }

    #[test]
    fn a_new_template_rolls_one_node_at_a_time() {
        let old = ds(json!({}), "v1");
        let new = ds(json!({}), "v2");
        let nodes = [node("a", json!({}), json!([])), node("b", json!({}), json!([]))];
        let p = plan(&new, &nodes, &[pod_on(&old, "a", 0, true), pod_on(&old, "b", 1, true)]);
        assert_eq!(p.delete.len(), 1, "one node at a time: {:?}", p.delete);
        // While a replacement is not ready, nothing else goes.
        let p = plan(&new, &nodes, &[pod_on(&new, "a", 2, false), pod_on(&old, "b", 1, true)]);
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert_eq!(p.status.updated_number_scheduled, 1);
    }

    #[test]
    fn only_a_node_change_that_can_move_daemons_queues_them() {
        let n = node("a", json!({"disk": "ssd"}), json!([]));
        let mut heartbeat = (*n).clone();
        heartbeat.status = Some(Default::default());
        let applied = |new: Node| Change::Applied { old: Some(n.clone()), new: Arc::new(new) };
        assert!(!placement_changed(&applied(heartbeat)), "a status change moves nothing");
        let mut relabelled = (*n).clone();
        relabelled.metadata.as_mut().unwrap().labels.insert("disk".into(), "hdd".into());
        assert!(placement_changed(&applied(relabelled)));
        assert!(placement_changed(&Change::Deleted(n.clone())));
    }
}
