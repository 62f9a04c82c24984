//! A scheduling snapshot: every node with what its bound pods already use.

use skiff_proto::api::{Node, Pod};
use skiff_proto::quantity::parse_quantity;
use std::collections::{BTreeMap, BTreeSet};

/// CPU and memory in thousandths (see `skiff_proto::quantity`), and a pod count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i128,
    pub memory: i128,
    pub pods: i128,
}

/// What a pod asks for: the larger of its app containers' sum and its largest init container.
pub fn pod_requests(pod: &Pod) -> Resources {
    let spec = pod.spec.clone().unwrap_or_default();
    let get = |c: &skiff_proto::api::Container, r: &str| {
        c.resources.as_ref().and_then(|res| res.requests.get(r)).and_then(|q| parse_quantity(q)).unwrap_or(0)
    };
    let sum = |r: &str| spec.containers.iter().map(|c| get(c, r)).sum::<i128>();
    let init = |r: &str| spec.init_containers.iter().map(|c| get(c, r)).max().unwrap_or(0);
    Resources { cpu: sum("cpu").max(init("cpu")), memory: sum("memory").max(init("memory")), pods: 1000 }
}

/// (protocol, port) pairs a pod wants on its node.
pub fn host_ports(pod: &Pod) -> BTreeSet<(String, i32)> {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.containers
        .iter()
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

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Node,
    pub allocatable: Resources,
    pub requested: Resources,
    pub host_ports: BTreeSet<(String, i32)>,
    /// Pods per owner uid already on the node.
    pub owners: BTreeMap<String, usize>,
}

impl NodeInfo {
    pub fn name(&self) -> &str {
        self.node.metadata.as_ref().map_or("", |m| m.name.as_str())
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.node.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeInfo>,
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().map(|s| s.phase.as_str()), Some("Succeeded" | "Failed"))
}

impl Snapshot {
    /// Nodes with the usage of the pods bound to them (terminal pods use nothing).
    pub fn new(nodes: &[Node], pods: &[Pod]) -> Snapshot {
        let mut infos: Vec<NodeInfo> = nodes
            .iter()
            .map(|n| {
                let alloc = n.status.as_ref().map(|s| s.allocatable.clone()).unwrap_or_default();
                let q = |k: &str| alloc.get(k).and_then(|v| parse_quantity(v)).unwrap_or(0);
                NodeInfo {
                    node: n.clone(),
                    allocatable: Resources { cpu: q("cpu"), memory: q("memory"), pods: q("pods") },
                    requested: Resources::default(),
                    host_ports: BTreeSet::new(),
                    owners: BTreeMap::new(),
                }
            })
            .collect();
        for pod in pods.iter().filter(|p| !is_terminal(p)) {
            let bound = pod.spec.as_ref().map_or("", |s| s.node_name.as_str());
            if let Some(info) = infos.iter_mut().find(|i| i.name() == bound && !bound.is_empty()) {
                let r = pod_requests(pod);
                info.requested.cpu += r.cpu;
                info.requested.memory += r.memory;
                info.requested.pods += r.pods;
                info.host_ports.extend(host_ports(pod));
                if let Some(uid) = owner_uid(pod) {
                    *info.owners.entry(uid).or_default() += 1;
                }
            }
        }
        infos.sort_by(|a, b| a.name().cmp(b.name()));
        Snapshot { nodes: infos }
    }
}

impl Snapshot {
    /// Counts `pod` on `node` right away, so the next decision of the same round sees it
    /// (the scheduler's "assume" step, before the watch reports the binding).
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        if let Some(info) = self.nodes.iter_mut().find(|i| i.name() == node) {
            let r = pod_requests(pod);
            info.requested.cpu += r.cpu;
            info.requested.memory += r.memory;
            info.requested.pods += r.pods;
            info.host_ports.extend(host_ports(pod));
            if let Some(uid) = owner_uid(pod) {
                *info.owners.entry(uid).or_default() += 1;
            }
        }
    }
}
