//! The node lifecycle controller: a node whose Lease has not been renewed for the grace
//! period is marked `Ready=Unknown` and tainted `node.kubernetes.io/unreachable` (NoSchedule and
//! NoExecute), as Kubernetes does; its pods are evicted once they have tolerated the NoExecute
//! taint for their `tolerationSeconds` (the eviction timeout for pods without a toleration,
//! Kubernetes' default 300 s). A node whose Lease is renewed again loses the taints.
//!
//! [`plan`] is pure: a node, its Lease, its pods and the time in; the node to write, the pods
//! to evict and when to look again out. [`NodeLifecycle`] is the keyed controller: a node's
//! key is queued by its own changes, by its Lease's while it is marked unreachable, by its
//! pods' while it has a NoExecute taint, and when its Lease or a toleration runs out.

use crate::controller::{self, before_and_after, own_key, Cache, Command, Note, Object, Reconciler};
use crate::objects::{deleting, node_name};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{Lease, Node, Pod, Taint};
use skiff_proto::time::now_secs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The namespace of the node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The least time between marking two nodes unreachable: Kubernetes' default
/// `--node-eviction-rate` of 0.1 nodes per second, so a network blip that silences many nodes at
/// once does not empty them all in the same moment.
pub const NODE_TAINT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The node with its new conditions (status), if they change.
    pub conditions: Option<Node>,
    /// The node with its new taints (spec), if they change.
    pub taints: Option<Node>,
    /// (namespace, name) of pods to evict.
    pub evict: Vec<(String, String)>,
    /// When something may next be due (a Lease running out, a toleration ending), seconds
    /// since the epoch.
    pub look_again_at: Option<i64>,
}

fn taints(node: &Node) -> &[Taint] {
    node.spec.as_ref().map_or(&[], |s| s.taints.as_slice())
}

/// Whether `node` carries the unreachable taint (either effect).
pub fn marked_unreachable(node: &Node) -> bool {
    taints(node).iter().any(|t| t.key == UNREACHABLE)
}

/// How long `pod` tolerates `taint` (None: forever). Without a matching toleration: `default`.
fn tolerated_for(pod: &Pod, taint: &Taint, default: Duration) -> Option<Duration> {
    let tolerations = pod.spec.as_ref().map_or(&[][..], |s| s.tolerations.as_slice());
    let matching = tolerations.iter().find(|t| {
        let exists = t.operator == "Exists";
        let key_ok = (t.key.is_empty() && exists) || t.key == taint.key;
        let value_ok = exists || t.value == taint.value;
        let effect_ok = t.effect.is_empty() || t.effect == "NoExecute";
        key_ok && value_ok && effect_ok
    });
    match matching {
        Some(t) => t.toleration_seconds.map(|s| Duration::from_secs(s.max(0) as u64)),
        None => Some(default),
    }
}

/// When the node was last heard from: its Lease's renewal, else its Ready condition's last
/// heartbeat. A node with neither (registered by hand, not by a node daemon) is never stale.
fn renewed(node: &Node, lease: Option<&Lease>) -> Option<i64> {
    let heartbeat = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
        .map(|c| c.last_heartbeat_time.as_str());
    let renew = lease.and_then(|l| l.spec.as_ref()).map(|s| s.renew_time.as_str());
    [renew, heartbeat].into_iter().flatten().find(|t| !t.is_empty()).and_then(skiff_proto::time::parse_rfc3339)
}

pub fn plan<'a>(
    node: &Node,
    lease: Option<&Lease>,
    pods: impl IntoIterator<Item = &'a Pod>,
    now: i64,
    grace: Duration,
    eviction: Duration,
) -> Plan {
    let mut p = Plan::default();
    let renewed = renewed(node, lease);
    let stale = renewed.is_some_and(|r| now - r > grace.as_secs() as i64);
    if !stale {
        p.look_again_at = renewed.map(|r| r + grace.as_secs() as i64 + 1);
    }
    // The common case: heard from in time, not marked unreachable, no NoExecute taint to
    // stamp or to evict by. Nothing to do, and nothing to look at.
    let no_execute = taints(node).iter().any(|t| t.effect == "NoExecute");
    if !stale && !no_execute && !marked_unreachable(node) {
        return p;
    }
    let t = skiff_proto::time::rfc3339(now);
    let mut current = taints(node).to_vec();
    // A NoExecute taint counts from when it was added; one added by hand gets the time now, as
    // the Kubernetes API stamps `timeAdded`.
    for taint in current.iter_mut().filter(|t| t.effect == "NoExecute" && t.time_added.is_empty()) {
        taint.time_added = t.clone();
    }
    let tainted = current.iter().any(|t| t.key == UNREACHABLE && t.effect == "NoExecute");
    if stale && !tainted {
        for effect in ["NoSchedule", "NoExecute"] {
            current.push(Taint {
                key: UNREACHABLE.into(),
                effect: effect.into(),
                time_added: t.clone(),
                ..Default::default()
            });
        }
    } else if !stale {
        current.retain(|t| t.key != UNREACHABLE);
    }
    if stale {
        // Conditions become Unknown once: a condition already Unknown keeps its transition time.
        let mut n = node.clone();
        let mut changed = false;
        for c in n.status.iter_mut().flat_map(|s| s.conditions.iter_mut()) {
            if matches!(c.r#type.as_str(), "Ready" | "MemoryPressure" | "DiskPressure") && c.status != "Unknown" {
                c.status = "Unknown".into();
                c.reason = "NodeStatusUnknown".into();
                c.message = "Kubelet stopped posting node status.".into();
                c.last_transition_time = t.clone();
                changed = true;
            }
        }
        p.conditions = changed.then_some(n);
    }
    if current.as_slice() != taints(node) {
        let mut n = node.clone();
        n.spec.get_or_insert_with(Default::default).taints = current.clone();
        p.taints = Some(n);
    }
    // Every NoExecute taint the node will carry evicts the pods that do not tolerate it: at
    // once for a taint put there by hand, after the eviction timeout for the unreachable one
    // (Kubernetes admits pods with a 300 s toleration of it), after `tolerationSeconds` for a
    // pod that tolerates a taint for a while.
    let name = node.metadata.as_ref().map_or("", |m| m.name.as_str());
    let on_node = pods.into_iter().filter(|p| node_name(p) == name && !p.metadata.as_ref().is_some_and(deleting));
    for pod in on_node {
        let due_at = current.iter().filter(|t| t.effect == "NoExecute").filter_map(|taint| {
            let since = skiff_proto::time::parse_rfc3339(&taint.time_added).unwrap_or(now);
            let default = if taint.key == UNREACHABLE { eviction } else { Duration::ZERO };
            tolerated_for(pod, taint, default).map(|d| since + d.as_secs() as i64)
        });
        match due_at.min() {
            Some(at) if at <= now => {
                let meta = pod.metadata.clone().unwrap_or_default();
                p.evict.push((meta.namespace, meta.name));
            }
            Some(at) => p.look_again_at = Some(p.look_again_at.map_or(at, |l| l.min(at))),
            None => {}
        }
    }
    p
}

/// The node lifecycle controller over the master's caches (the pods' with [`BY_NODE`]).
pub struct NodeLifecycle {
    pub nodes: Store<Node>,
    pub leases: Store<Lease>,
    pub pods: Store<Pod>,
    /// How long a node's Lease may go unrenewed before the node counts as unreachable.
    pub grace: Duration,
    /// How long pods without a toleration stay on an unreachable node.
    pub eviction: Duration,
    /// When a node was last marked unreachable (the node eviction rate, shared by every key).
    pub last_taint: Mutex<Option<Instant>>,
}

/// The name of the pods' index by node.
pub const BY_NODE: &str = "node";

/// `pods` with the [`BY_NODE`] index.
pub fn index_by_node(pods: Store<Pod>) -> Store<Pod> {
    pods.with_index(BY_NODE, |pod: &Pod| {
        Some(node_name(pod)).filter(|n| !n.is_empty()).map(String::from).into_iter().collect()
    })
}

impl NodeLifecycle {
    fn plan(&self, node: &Node, now: i64) -> Plan {
        let name = node.metadata.as_ref().map_or("", |m| m.name.as_str());
        let lease = self.leases.get(&ObjectKey::new(LEASE_NAMESPACE, name));
        let pods = self.pods.by_index(BY_NODE, name);
        plan(node, lease.as_deref(), pods.iter().map(|p| &**p), now, self.grace, self.eviction)
    }

    /// Whether a node may be tainted unreachable now (one per [`NODE_TAINT_INTERVAL`]); takes
    /// the turn if so.
    fn may_mark(&self) -> bool {
        let mut last = self.last_taint.lock().expect("not poisoned");
        if last.is_some_and(|t| t.elapsed() < NODE_TAINT_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// How long until the next node may be tainted unreachable.
    fn until_turn(&self) -> Duration {
        let last = self.last_taint.lock().expect("not poisoned");
        last.map_or(Duration::ZERO, |t| NODE_TAINT_INTERVAL.saturating_sub(t.elapsed()))
    }
}

impl Reconciler for NodeLifecycle {
    const NAME: &'static str = "node lifecycle controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.nodes.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.nodes, queue, self, |_, c| own_key(c)),
            // Renewals are not looked at one by one (the Lease's expiry is a timer), except to
            // clear a node marked unreachable at once.
            controller::on_changes(&self.leases, queue, self, |me: &Self, c: &Change<Lease>| {
                before_and_after(c)
                    .into_iter()
                    .filter_map(|l| l.meta())
                    .map(|m| ObjectKey::new("", &m.name))
                    .filter(|k| me.nodes.get(k).is_some_and(|n| marked_unreachable(&n)))
                    .collect()
            }),
            controller::on_changes(&self.pods, queue, self, |me: &Self, c: &Change<Pod>| {
                before_and_after(c)
                    .into_iter()
                    .map(|p| ObjectKey::new("", node_name(p)))
                    .filter(|k| me.nodes.get(k).is_some_and(|n| taints(&n).iter().any(|t| t.effect == "NoExecute")))
                    .collect()
            }),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.nodes, &self.leases, &self.pods]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(node) = self.nodes.get(key) else { return Vec::new() };
        let Some(meta) = node.metadata.as_ref() else { return Vec::new() };
        let plan = self.plan(&node, now_secs());
        let was = marked_unreachable(&node);
        let becomes = plan.taints.as_ref().is_some_and(marked_unreachable);
        if becomes && !was && !self.may_mark() {
            // As Kubernetes' node lifecycle controller: the node's conditions say what is known at
            // once (Ready=Unknown); only the taint that evicts its pods waits for its turn.
            tracing::info!(node = meta.name, "node unreachable; tainting it waits for the node eviction rate");
            let status = plan.conditions.map(|n| Command::UpdateStatus { object: Object::Node(n), note: None });
            return status.into_iter().collect();
        }
        let mut commands = Vec::new();
        // Conditions first, then taints (Kubernetes' order): whoever sees the unreachable taint
        // already sees the node not ready. The taint write, made from the node as cached, loses
        // to the status write's new resourceVersion and comes in the reconcile that write
        // queues.
        if let Some(n) = plan.conditions {
            commands.push(Command::UpdateStatus { object: Object::Node(n), note: None });
        }
        if let Some(n) = plan.taints {
            let note = (becomes != was).then(|| {
                let (reason, state) =
                    if becomes { ("NodeNotReady", "NodeNotReady") } else { ("NodeReady", "NodeReady") };
                Note::normal("Node", "v1", meta, reason, format!("Node {} status is now: {state}", meta.name))
            });
            commands.push(Command::Update { object: Object::Node(n), note });
        }
        for (ns, name) in plan.evict {
            let pod = self.pods.get(&ObjectKey::new(&ns, &name));
            let note = pod.as_ref().and_then(|p| p.metadata.as_ref()).map(|m| {
                Note::normal("Pod", "v1", m, "TaintManagerEviction", format!("Marking for deletion Pod {ns}/{name}"))
            });
            commands.push(Command::Delete { resource: Pod::RESOURCE, key: ObjectKey::new(&ns, &name), note });
        }
        commands
    }

    /// When its Lease runs out or a pod's toleration ends; while the eviction rate holds a
    /// node back, when its turn comes.
    fn requeue_after(&self, key: &ObjectKey) -> Option<Duration> {
        let node = self.nodes.get(key)?;
        let now = now_secs();
        let plan = self.plan(&node, now);
        if plan.taints.as_ref().is_some_and(marked_unreachable) && !marked_unreachable(&node) {
            return Some(self.until_turn().max(Duration::from_millis(100)));
        }
        plan.look_again_at.map(|at| Duration::from_secs((at - now).max(1) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const G: Duration = Duration::from_secs(40);
    const E: Duration = Duration::from_secs(300);

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn node() -> Node {
        typed(
            json!({"metadata": {"name": "n1"}, "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
    }

    fn tainted(taints: Value) -> Node {
        let mut n = node();
        n.spec = Some(typed(json!({ "taints": taints })));
        n
    }

    fn lease(renewed: i64) -> Lease {
        typed(json!({"spec": {"renewTime": skiff_proto::time::rfc3339(renewed)}}))
    }

    fn pod(name: &str, tolerations: Value) -> Pod {
        typed(
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": "n1", "tolerations": tolerations}}),
        )
    }

    fn evicted(p: &Plan) -> Vec<&str> {
        p.evict.iter().map(|(_, n)| n.as_str()).collect()
    }

    #[test]
    fn a_silent_node_is_marked_unknown_and_tainted_and_then_left_as_it_is() {
        let p = plan(&node(), Some(&lease(1000)), &[], 1041, G, E);
        let conditions = p.conditions.as_ref().unwrap().status.as_ref().unwrap();
        assert_eq!(conditions.conditions[0].status, "Unknown");
        let n = p.taints.clone().unwrap();
        assert_eq!(taints(&n).len(), 2);
        // Once both are written, a later look changes nothing (no new transition time).
        let mut written = n.clone();
        written.status = p.conditions.unwrap().status;
        let later = plan(&written, Some(&lease(1000)), &[], 1060, G, E);
        assert!(later.conditions.is_none() && later.taints.is_none(), "{later:?}");
        let p = plan(&node(), Some(&lease(1000)), &[], 1039, G, E);
        assert!(p.conditions.is_none() && p.taints.is_none(), "within the grace period");
        assert_eq!(p.look_again_at, Some(1041), "looked at again when the Lease runs out");
        assert_eq!(plan(&node(), None, &[], 9999, G, E), Plan::default(), "no lease, no heartbeat: not managed");
        let mut beating = node();
        beating.status.as_mut().unwrap().conditions[0].last_heartbeat_time = skiff_proto::time::rfc3339(1000);
        assert!(plan(&beating, None, &[], 1041, G, E).taints.is_some(), "the Ready heartbeat counts without a lease");
    }

    #[test]
    fn a_node_held_back_by_the_eviction_rate_is_marked_unknown_at_once_and_tainted_at_its_turn() {
        let (nodes, leases) = (Store::<Node>::new(), Store::<Lease>::new());
        let stale = skiff_proto::time::rfc3339(now_secs() - 60);
        let mut silent = Vec::new();
        for name in ["n1", "n2"] {
            let mut n = node();
            n.metadata.as_mut().unwrap().name = name.into();
            silent.push(n);
            let mut l: Lease = typed(json!({"spec": {"renewTime": stale}}));
            l.metadata = Some(typed(json!({"name": name, "namespace": LEASE_NAMESPACE})));
            leases.apply(skiff_client::informer::WatchEvent::Added(l));
        }
        nodes.replace(silent, String::new());
        let c = NodeLifecycle {
            nodes,
            leases,
            pods: index_by_node(Store::new()),
            grace: Duration::from_secs(5),
            eviction: E,
            last_taint: Mutex::new(None),
        };
        let kinds = |cmds: &[Command]| {
            cmds.iter()
                .map(|c| match c {
                    Command::UpdateStatus { .. } => "status",
                    Command::Update { .. } => "taint",
                    _ => "other",
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&c.reconcile(&ObjectKey::new("", "n1"))), ["status", "taint"]);
        // The second silent node within the interval: Ready=Unknown now, the taint later.
        let held = c.reconcile(&ObjectKey::new("", "n2"));
        assert_eq!(kinds(&held), ["status"]);
        let Command::UpdateStatus { object: Object::Node(n), .. } = &held[0] else { unreachable!() };
        assert_eq!(n.status.as_ref().unwrap().conditions[0].status, "Unknown");
        // Looked at again when its turn comes, not a whole interval from now.
        *c.last_taint.lock().unwrap() = Some(Instant::now() - Duration::from_secs(7));
        let again = c.requeue_after(&ObjectKey::new("", "n2")).unwrap();
        assert!(again <= Duration::from_secs(3) && again >= Duration::from_secs(2), "{again:?}");
    }

    #[test]
    fn pods_are_evicted_after_their_toleration() {
        let n = tainted(
            json!([{"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": skiff_proto::time::rfc3339(2000)}]),
        );
        let pods = [
            pod("default-timeout", json!([])),
            pod(
                "short",
                json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
            ),
            pod("forever", json!([{"operator": "Exists"}])),
        ];
        let p = plan(&n, Some(&lease(1000)), &pods, 2010, G, E);
        assert_eq!(evicted(&p), ["short"]);
        assert_eq!(p.look_again_at, Some(2300), "when the next toleration ends");
        let p = plan(&n, Some(&lease(1000)), &pods, 2300, G, E);
        assert_eq!(evicted(&p), ["default-timeout", "short"]);
    }

    #[test]
    fn a_noexecute_taint_added_by_hand_evicts_pods_that_do_not_tolerate_it() {
        let n = tainted(
            json!([{"key": "maintenance", "value": "yes", "effect": "NoExecute", "timeAdded": skiff_proto::time::rfc3339(2000)}]),
        );
        let pods = [
            pod("plain", json!([])),
            pod(
                "tolerant",
                json!([{"key": "maintenance", "operator": "Equal", "value": "yes", "effect": "NoExecute"}]),
            ),
            pod(
                "wrong-value",
                json!([{"key": "maintenance", "operator": "Equal", "value": "no", "effect": "NoExecute"}]),
            ),
            pod("for-a-while", json!([{"key": "maintenance", "operator": "Exists", "tolerationSeconds": 60}])),
        ];
        // The node is healthy (lease fresh); only the hand-added taint acts.
        let names = |now: i64| -> Vec<String> {
            plan(&n, Some(&lease(now - 1)), &pods, now, G, E).evict.into_iter().map(|(_, p)| p).collect()
        };
        assert_eq!(names(2010), ["plain", "wrong-value"]);
        assert_eq!(names(2060), ["plain", "wrong-value", "for-a-while"]);
        let unstamped = tainted(json!([{"key": "maintenance", "effect": "NoExecute"}]));
        let p = plan(&unstamped, Some(&lease(2999)), &[], 3000, G, E);
        assert_eq!(taints(p.taints.as_ref().unwrap())[0].time_added, skiff_proto::time::rfc3339(3000), "stamped");
    }

    #[test]
    fn a_node_that_comes_back_loses_the_taints() {
        let n = tainted(json!([{"key": UNREACHABLE, "effect": "NoExecute"}, {"key": "gpu", "effect": "NoSchedule"}]));
        let p = plan(&n, Some(&lease(5000)), &[], 5001, G, E);
        let left: Vec<&str> = taints(p.taints.as_ref().unwrap()).iter().map(|t| t.key.as_str()).collect();
        assert_eq!(left, ["gpu"]);
    }
}
