//! A scheduling snapshot: every node with what its bound pods already use.

use skiff_proto::api::{Node, Pod, PodAffinityTerm};
use skiff_proto::quantity::parse_quantity;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// CPU and memory in thousandths (see `skiff_proto::quantity`), and a pod count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i128,
    pub memory: i128,
    pub pods: i128,
}

/// What a pod asks for: the larger of its app containers' sum and its largest init container,
/// plus its runtime's overhead (`spec.overhead`, set from its RuntimeClass).
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else { return Resources { pods: 1000, ..Resources::default() } };
    let get = |c: &skiff_proto::api::Container, r: &str| {
        c.resources.as_ref().and_then(|res| res.requests.get(r)).and_then(|q| parse_quantity(q)).unwrap_or(0)
    };
    let sum = |r: &str| spec.containers.iter().map(|c| get(c, r)).sum::<i128>();
    let init = |r: &str| spec.init_containers.iter().map(|c| get(c, r)).max().unwrap_or(0);
    let overhead = |r: &str| spec.overhead.get(r).and_then(|q| parse_quantity(q)).unwrap_or(0);
    let total = |r: &str| sum(r).max(init(r)) + overhead(r);
    Resources { cpu: total("cpu"), memory: total("memory"), pods: 1000 }
}

/// (protocol, port) pairs a pod wants on its node.
pub fn host_ports(pod: &Pod) -> BTreeSet<(String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter())
        .filter_map(|p| {
            p.host_port
                .filter(|hp| *hp > 0)
                .map(|hp| (if p.protocol.is_empty() { "TCP".into() } else { p.protocol.clone() }, hp))
        })
        .collect()
}

/// The first owner's uid, used to spread an owner's pods.
pub fn owner_uid(pod: &Pod) -> Option<String> {
    pod.metadata.as_ref()?.owner_references.first().map(|o| o.uid.clone())
}

/// A placed pod as inter-pod (anti-)affinity sees it: where it is, its labels, and the
/// required anti-affinity it holds against pods that come after it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlacedPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `spec.priority` (0 when unset), for preemption.
    pub priority: i32,
    /// Being deleted (still counted until it is gone).
    pub deleting: bool,
    pub labels: BTreeMap<String, String>,
    pub anti_affinity: Vec<PodAffinityTerm>,
}

impl PlacedPod {
    pub fn of(pod: &Pod) -> PlacedPod {
        let meta = pod.metadata.clone().unwrap_or_default();
        let anti_affinity = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .map(|a| a.required_during_scheduling_ignored_during_execution.clone())
            .unwrap_or_default();
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        let deleting = !meta.deletion_timestamp.is_empty();
        PlacedPod {
            uid: meta.uid,
            namespace: meta.namespace,
            name: meta.name,
            priority,
            deleting,
            labels: meta.labels,
            anti_affinity,
        }
    }
}

/// What a pod placed on a node takes from it: counted when the pod is bound (or assumed),
/// given back when it goes or ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub requests: Resources,
    pub host_ports: BTreeSet<(String, i32)>,
    pub owner: Option<String>,
    pub pod: Arc<PlacedPod>,
}

impl Usage {
    pub fn of(pod: &Pod) -> Usage {
        Usage {
            requests: pod_requests(pod),
            host_ports: host_ports(pod),
            owner: owner_uid(pod),
            pod: Arc::new(PlacedPod::of(pod)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Node,
    pub allocatable: Resources,
    pub requested: Resources,
    /// Host ports in use, with how many pods hold each (a pod placed by `spec.nodeName` can
    /// share one).
    pub host_ports: BTreeMap<(String, i32), usize>,
    /// Pods per owner uid already on the node.
    pub owners: BTreeMap<String, usize>,
    /// The pods placed here, for inter-pod affinity.
    pub pods: Vec<Arc<PlacedPod>>,
    /// How many of them hold required anti-affinity terms.
    pub anti_affinity_pods: usize,
}

impl NodeInfo {
    /// A node with nothing placed on it yet.
    pub fn of(node: Node) -> NodeInfo {
        let allocatable = {
            let alloc = node.status.as_ref().map(|s| &s.allocatable);
            let q = |k: &str| alloc.and_then(|a| a.get(k)).and_then(|v| parse_quantity(v)).unwrap_or(0);
            Resources { cpu: q("cpu"), memory: q("memory"), pods: q("pods") }
        };
        NodeInfo {
            node,
            allocatable,
            requested: Resources::default(),
            host_ports: BTreeMap::new(),
            owners: BTreeMap::new(),
            pods: Vec::new(),
            anti_affinity_pods: 0,
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.as_ref().map_or("", |m| m.name.as_str())
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.as_ref().map_or(&NONE, |m| &m.labels)
    }

    /// Counts a pod's usage on this node.
    pub fn add(&mut self, usage: &Usage) {
        self.requested.cpu += usage.requests.cpu;
        self.requested.memory += usage.requests.memory;
        self.requested.pods += usage.requests.pods;
        for port in &usage.host_ports {
            *self.host_ports.entry(port.clone()).or_default() += 1;
        }
        if let Some(uid) = &usage.owner {
            *self.owners.entry(uid.clone()).or_default() += 1;
        }
        self.anti_affinity_pods += usize::from(!usage.pod.anti_affinity.is_empty());
        self.pods.push(usage.pod.clone());
    }

    /// Gives back what [`NodeInfo::add`] counted.
    pub fn remove(&mut self, usage: &Usage) {
        self.requested.cpu -= usage.requests.cpu;
        self.requested.memory -= usage.requests.memory;
        self.requested.pods -= usage.requests.pods;
        fn release<K: Ord + Clone>(counts: &mut BTreeMap<K, usize>, key: &K) {
            if let Some(n) = counts.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(key);
                }
            }
        }
        for port in &usage.host_ports {
            release(&mut self.host_ports, port);
        }
        if let Some(uid) = &usage.owner {
            release(&mut self.owners, uid);
        }
        if let Some(i) = self.pods.iter().position(|p| p.uid == usage.pod.uid) {
            let gone = self.pods.swap_remove(i);
            self.anti_affinity_pods -= usize::from(!gone.anti_affinity.is_empty());
        }
    }
}

/// Every node with what is placed on it: sorted by name when built by [`Snapshot::new`]; the
/// scheduler's node cache keeps its own order and index.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeInfo>,
}

/// Whether a pod has ended (it uses nothing any more).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().map(|s| s.phase.as_str()), Some("Succeeded" | "Failed"))
}

/// The node a pod's usage counts on: its `spec.nodeName`, unless it has ended.
pub fn placed_on(pod: &Pod) -> Option<&str> {
    let node = pod.spec.as_ref().map_or("", |s| s.node_name.as_str());
    (!node.is_empty() && !is_terminal(pod)).then_some(node)
}

impl Snapshot {
    /// Nodes with the usage of the pods bound to them (terminal pods use nothing).
    pub fn new(nodes: &[Node], pods: &[Pod]) -> Snapshot {
        let mut infos: Vec<NodeInfo> = nodes.iter().map(|n| NodeInfo::of(n.clone())).collect();
        infos.sort_by(|a, b| a.name().cmp(b.name()));
        for pod in pods {
            if let Some(node) = placed_on(pod) {
                if let Ok(i) = infos.binary_search_by(|i| i.name().cmp(node)) {
                    infos[i].add(&Usage::of(pod));
                }
            }
        }
        Snapshot { nodes: infos }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_larger_of_apps_and_init_plus_the_overhead() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "initContainers": [{"name": "i", "image": "x", "resources": {"requests": {"cpu": "1", "memory": "64Mi"}}}],
            "containers": [
                {"name": "a", "image": "x", "resources": {"requests": {"cpu": "250m", "memory": "100Mi"}}},
                {"name": "b", "image": "x", "resources": {"requests": {"cpu": "250m"}}}
            ],
            "overhead": {"cpu": "100m", "memory": "20Mi"}
        }}))
        .unwrap();
        let mib = 1024 * 1024 * 1000;
        assert_eq!(pod_requests(&pod), Resources { cpu: 1100, memory: 120 * mib, pods: 1000 });
    }
}
