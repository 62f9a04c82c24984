//! Node IPAM, as kube-controller-manager's range allocator: every Node without a pod range gets
//! the lowest free subnet of the cluster CIDR (`--cluster-cidr`, split into
//! `--node-cidr-mask-size` subnets) in `spec.podCIDR` / `spec.podCIDRs`. A range is free when
//! no Node holds it, so deleting a Node frees its range. A Node that registers with a range of
//! its own (`skiff node --pod-cidr`) keeps it, and that range is taken.
//!
//! Every Node is one family ([`FAMILY`]): allocations run one at a time, each from caches that
//! hold the one before, so two new Nodes never get the same range.

use crate::controller::{self, Cache, Command, Object, Reconciler};
use ipnet::{IpNet, Ipv4Net};
use skiff_client::informer::{ObjectKey, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::Node;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The one family every Node's allocation belongs to.
const FAMILY: &str = "node-ipam";

/// The cluster CIDR and the size of each node's share of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranges {
    pub cluster: Ipv4Net,
    /// The prefix length of each node's range (24: 256 addresses, 254 pods).
    pub node_prefix: u8,
}

impl Ranges {
    /// Checks `--cluster-cidr` and `--node-cidr-mask-size` together, as the flags' owner
    /// reports them.
    pub fn new(cluster: &str, node_prefix: u8) -> Result<Ranges, String> {
        let cluster: Ipv4Net = cluster
            .parse()
            .map_err(|_| format!("--cluster-cidr {cluster:?}: not an IPv4 CIDR (such as 10.244.0.0/16)"))?;
        if cluster.network() != cluster.addr() {
            return Err(format!("--cluster-cidr {cluster}: has host bits set (the network is {})", cluster.trunc()));
        }
        if node_prefix < cluster.prefix_len() || node_prefix > 30 {
            return Err(format!(
                "--node-cidr-mask-size {node_prefix}: must be between the cluster CIDR's /{} and /30",
                cluster.prefix_len()
            ));
        }
        Ok(Ranges { cluster, node_prefix })
    }

    /// The lowest node range not in `taken`, if any is left.
    pub fn next_free(&self, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
        self.cluster.subnets(self.node_prefix).ok()?.find(|s| !taken.iter().any(|t| overlaps(s, t)))
    }
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The IPv4 ranges a Node holds (`spec.podCIDRs`, or `spec.podCIDR` alone).
pub fn held(node: &Node) -> Vec<Ipv4Net> {
    let Some(spec) = node.spec.as_ref() else { return Vec::new() };
    let mut cidrs: Vec<&String> = spec.pod_cidrs.iter().collect();
    if cidrs.is_empty() && !spec.pod_cidr.is_empty() {
        cidrs.push(&spec.pod_cidr);
    }
    cidrs
        .into_iter()
        .filter_map(|c| match c.parse::<IpNet>() {
            Ok(IpNet::V4(net)) => Some(net.trunc()),
            _ => None,
        })
        .collect()
}

/// What to write for `node`, given every Node: `None` when it has a range (or is going), an
/// error when the cluster CIDR is used up.
pub fn allocate<'a>(
    ranges: &Ranges,
    node: &Node,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Option<Result<Node, String>> {
    let spec = node.spec.clone().unwrap_or_default();
    let going = node.metadata.as_ref().is_some_and(crate::objects::deleting);
    if !spec.pod_cidr.is_empty() || !spec.pod_cidrs.is_empty() || going {
        return None;
    }
    let taken: BTreeSet<Ipv4Net> = nodes.into_iter().flat_map(held).collect();
    Some(match ranges.next_free(&taken) {
        Some(range) => {
            let mut node = node.clone();
            let spec = node.spec.get_or_insert_with(Default::default);
            spec.pod_cidr = range.to_string();
            spec.pod_cidrs = vec![range.to_string()];
            Ok(node)
        }
        None => Err(format!(
            "no /{} left in the cluster CIDR {} ({} ranges held)",
            ranges.node_prefix,
            ranges.cluster,
            taken.len()
        )),
    })
}

/// The controller over the master's Node cache.
pub struct NodeIpam {
    pub nodes: Store<Node>,
    pub ranges: Ranges,
}

impl Reconciler for NodeIpam {
    const NAME: &'static str = "node ipam controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.nodes.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![controller::on_changes(&self.nodes, queue, self, |_, c| controller::own_key(c))]
    }

    fn family(&self, _key: &ObjectKey) -> ObjectKey {
        ObjectKey::new("", FAMILY)
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.nodes]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(node) = self.nodes.get(key) else { return Vec::new() };
        let all = self.nodes.list();
        match allocate(&self.ranges, &node, all.iter().map(|n| &**n)) {
            None => Vec::new(),
            Some(Ok(node)) => vec![Command::Update { object: Object::Node(node), note: None }],
            Some(Err(why)) => {
                // Retried on the next change of any Node (one deleted frees a range) and at
                // every resync; said once per reconcile, not per Node event.
                tracing::warn!("{}: node {}: {why}", Self::NAME, key.name);
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{NodeSpec, ObjectMeta};

    fn node(name: &str, cidr: &str) -> Node {
        Node {
            metadata: Some(ObjectMeta { name: name.into(), ..Default::default() }),
            spec: Some(NodeSpec { pod_cidr: cidr.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn cidr_of(n: &Node) -> (String, Vec<String>) {
        let s = n.spec.clone().unwrap();
        (s.pod_cidr, s.pod_cidrs)
    }

    #[test]
    fn a_new_node_gets_the_lowest_range_no_node_holds() {
        let r = Ranges::new("10.244.0.0/16", 24).unwrap();
        let nodes = [node("a", "10.244.0.0/24"), node("b", "10.244.2.0/24"), node("c", "")];
        let got = allocate(&r, &nodes[2], &nodes).unwrap().unwrap();
        assert_eq!(cidr_of(&got), ("10.244.1.0/24".to_string(), vec!["10.244.1.0/24".to_string()]));
        // Once a's Node is gone its range is the lowest free again.
        let got = allocate(&r, &nodes[2], &nodes[1..]).unwrap().unwrap();
        assert_eq!(cidr_of(&got).0, "10.244.0.0/24");
    }

    #[test]
    fn a_node_with_a_range_keeps_it_and_a_full_cluster_cidr_is_an_error() {
        let r = Ranges::new("10.10.0.0/23", 24).unwrap();
        let nodes = [node("a", "10.10.0.0/24"), node("b", "10.10.1.0/24"), node("c", "")];
        assert!(allocate(&r, &nodes[0], &nodes).is_none(), "a has its range");
        let err = allocate(&r, &nodes[2], &nodes).unwrap().unwrap_err();
        assert!(err.contains("no /24 left in the cluster CIDR 10.10.0.0/23"), "{err}");
    }

    #[test]
    fn ranges_taken_overlap_whatever_their_size() {
        let r = Ranges::new("10.244.0.0/16", 24).unwrap();
        // A node registered by hand with a /23 holds two /24s.
        let nodes = [node("a", "10.244.0.0/23"), node("b", "")];
        assert_eq!(cidr_of(&allocate(&r, &nodes[1], &nodes).unwrap().unwrap()).0, "10.244.2.0/24");
    }

    #[test]
    fn bad_flags_are_named() {
        assert!(Ranges::new("10.244.0.0", 24).unwrap_err().contains("--cluster-cidr"));
        assert!(Ranges::new("10.244.1.0/16", 24).unwrap_err().contains("host bits"));
        assert!(Ranges::new("10.244.0.0/16", 8).unwrap_err().contains("--node-cidr-mask-size 8"));
        assert!(Ranges::new("10.244.0.0/16", 31).unwrap_err().contains("/30"));
    }
}
