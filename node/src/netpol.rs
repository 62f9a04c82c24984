//! NetworkPolicy, enforced by each node for its own pods in the filter table, as
//! iptables-based network plugins (kube-router, Calico's iptables mode) do.
//!
//! A host-wide chain [`SHARED_CHAIN`] is the first rule of FORWARD, so every node on the
//! machine judges a packet before anything accepts it (pod to pod on one bridge too:
//! `br_netfilter` hands bridged frames to FORWARD). It jumps to one chain per node,
//! `SKIFF-NP-<bridge>`, which lets replies through and sends each packet from an
//! egress-isolated pod of this node to that pod's egress chain (`SKNE-<tag>-<hash>`) and each
//! packet to an ingress-isolated pod to its ingress chain (`SKNI-<tag>-<hash>`). A pod's chain
//! clears the [`ALLOW_MARK`] bit, sets it for every peer and port any selecting policy allows,
//! returns when it is set and drops otherwise — so a packet passes when the sender's egress
//! and the receiver's ingress both allow it. An `ipBlock` with `except` gets a chain of its
//! own (`SKNB-…`) that returns for the excepted ranges before it marks.
//!
//! Pods no policy selects for a direction are not isolated in it. Named ports are resolved
//! against the pod's containers: the isolated pod's own for ingress, each peer pod's for
//! egress (so an egress rule with a named port and an `ipBlock` or no peer matches nothing).
//! Traffic between a pod and its own node (probes, cluster DNS on the bridge's gateway)
//! does not pass FORWARD and is always allowed, as most plugins allow it.
//!
//! `rules` is pure: policies, pods and namespaces in, the ruleset out.

use crate::error::NodeError;
use crate::hostport::iptables;
use crate::proxy::{tag, Ruleset};
use skiff_proto::api::{LabelSelector, Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, Pod};
use skiff_proto::discovery::fnv64 as fnv;
use skiff_proto::serde_util::IntOrString;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The host-wide chain first in FORWARD that jumps to every node's chain.
pub const SHARED_CHAIN: &str = "SKIFF-NETPOL";

/// The packet-mark bit a pod's chain sets for allowed traffic.
const ALLOW_MARK: &str = "0x20000/0x20000";
const CLEAR_MARK: &str = "0x0/0x20000";

/// What the policies need to know about their node.
#[derive(Clone, Debug)]
pub struct Config {
    pub bridge: String,
    pub node: String,
}

pub fn top_chain(bridge: &str) -> String {
    format!("SKIFF-NP-{bridge}")
}

/// The prefixes of this node's per-pod chains.
fn chain_prefixes(bridge: &str) -> Vec<String> {
    let tag = tag(bridge);
    ["SKNI", "SKNE", "SKNB"].iter().map(|p| format!("{p}-{tag}-")).collect()
}

/// Follows NetworkPolicies, pods and namespaces until `stop`, keeping this node's rules in
/// step with them.
pub async fn run(caches: crate::informers::Caches, cfg: Config, mut stop: tokio::sync::watch::Receiver<bool>) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let watches = [
        crate::informers::wake_on_changes(&caches.network_policies, &changed),
        crate::informers::wake_on_changes(&caches.pods, &changed),
        crate::informers::wake_on_changes(&caches.namespaces, &changed),
    ];
    // Nothing is programmed from caches not yet listed (that would open every pod).
    tokio::select! {
        () = async {
            caches.network_policies.synced().await;
            caches.pods.synced().await;
            caches.namespaces.synced().await;
        } => {}
        _ = stop.changed() => return,
    }
    let label = format!("network policies on {}", cfg.bridge);
    let programmed_cfg = cfg.clone();
    let wanted = move || rules(&cfg, &caches.network_policies.list(), &caches.pods.list(), &caches.namespaces.list());
    let program = move |new: &Ruleset, old: Option<&Ruleset>| apply(&programmed_cfg, new, old);
    crate::proxy::keep_programmed(&label, wanted, program, &changed, stop).await;
    watches.iter().for_each(|w| w.abort());
}

/// A pod with addresses on the pod network.
struct Addressed<'a> {
    pod: &'a Pod,
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    ips: Vec<&'a str>,
}

fn addressed(pod: &Pod) -> Option<Addressed<'_>> {
    let meta = pod.metadata.as_ref()?;
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network || matches!(status.phase.as_str(), "Succeeded" | "Failed") {
        return None;
    }
    let mut ips: Vec<&str> = status.pod_ips.iter().map(|p| p.ip.as_str()).collect();
    if ips.is_empty() && !status.pod_ip.is_empty() {
        ips.push(&status.pod_ip);
    }
    ips.retain(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
    (!ips.is_empty()).then_some(Addressed { pod, namespace: &meta.namespace, labels: &meta.labels, ips })
}

/// Where the other end of a packet may be.
enum Peer<'a> {
    Any,
    Pod(&'a Addressed<'a>),
    Block { cidr: &'a str, except: &'a [String] },
}

/// Traffic of one direction: ingress (peers are sources) or egress (peers are destinations).
#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn policy_type(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
    /// How a rule names the isolated pod and its peer: (pod, peer).
    fn flags(self) -> (&'static str, &'static str) {
        match self {
            Direction::Ingress => ("-d", "-s"),
            Direction::Egress => ("-s", "-d"),
        }
    }
    /// Each rule of `policy` in this direction: (ports, peers).
    fn rules(self, policy: &NetworkPolicy) -> Vec<(&[NetworkPolicyPort], &[NetworkPolicyPeer])> {
        let Some(spec) = &policy.spec else { return vec![] };
        match self {
            Direction::Ingress => spec.ingress.iter().map(|r| (&r.ports[..], &r.r#from[..])).collect(),
            Direction::Egress => spec.egress.iter().map(|r| (&r.ports[..], &r.to[..])).collect(),
        }
    }
}

fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    // An absent podSelector is the empty one: every pod.
    selector.is_none_or(|s| s.matches(labels))
}

/// The filter-table ruleset for the pods of `cfg.node`.
pub fn rules(
    cfg: &Config,
    policies: &[Arc<NetworkPolicy>],
    pods: &[Arc<Pod>],
    namespaces: &[Arc<Namespace>],
) -> Ruleset {
    let top = top_chain(&cfg.bridge);
    let tag = tag(&cfg.bridge);
    let mut chains = vec![top.clone()];
    let mut rules = vec![format!("-A {top} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")];
    let no_labels = BTreeMap::new();
    let namespace_labels: BTreeMap<&str, &BTreeMap<String, String>> =
        namespaces.iter().filter_map(|n| n.metadata.as_ref()).map(|m| (m.name.as_str(), &m.labels)).collect();
    let mut all: Vec<Addressed> = pods.iter().filter_map(|p| addressed(p)).collect();
    all.sort_by_key(|a| (a.namespace, a.pod.metadata.as_ref().map(|m| m.name.as_str())));
    let local = all.iter().filter(|a| a.pod.spec.as_ref().is_some_and(|s| s.node_name == cfg.node));
    for pod in local {
        let name = pod.pod.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
        for direction in [Direction::Egress, Direction::Ingress] {
            let selecting: Vec<&NetworkPolicy> = policies
                .iter()
                .filter(|p| p.metadata.as_ref().is_some_and(|m| m.namespace == pod.namespace))
                .filter(|p| {
                    p.spec.as_ref().is_some_and(|s| {
                        s.policy_types.iter().any(|t| t == direction.policy_type())
                            && selects(s.pod_selector.as_ref(), pod.labels)
                    })
                })
                .map(|p| &**p)
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let (own_flag, peer_flag) = direction.flags();
            let key = format!("{}/{name}", pod.namespace);
            let letter = if direction == Direction::Ingress { 'I' } else { 'E' };
            let chain = format!("SKN{letter}-{tag}-{:012x}", fnv(&key) & 0xffff_ffff_ffff);
            chains.push(chain.clone());
            for ip in &pod.ips {
                rules.push(format!("-A {top} {own_flag} {ip}/32 -j {chain}"));
            }
            rules.push(format!("-A {chain} -j MARK --set-xmark {CLEAR_MARK}"));
            let mut allowed = Vec::new();
            for policy in &selecting {
                let policy_ns = policy.metadata.as_ref().map(|m| m.namespace.as_str()).unwrap_or_default();
                for (ports, peers) in direction.rules(policy) {
                    let peers: Vec<Peer> = if peers.is_empty() {
                        vec![Peer::Any]
                    } else {
                        peers.iter().flat_map(|p| expand(p, policy_ns, &all, &namespace_labels, &no_labels)).collect()
                    };
                    for peer in &peers {
                        // The pod whose container ports name the destination port.
                        let target = match (direction, peer) {
                            (Direction::Ingress, _) => Some(pod.pod),
                            (Direction::Egress, Peer::Pod(p)) => Some(p.pod),
                            (Direction::Egress, _) => None,
                        };
                        let port_matches: Vec<String> = if ports.is_empty() {
                            vec![String::new()]
                        } else {
                            ports.iter().flat_map(|p| port_match(p, target)).collect()
                        };
                        for peer in peer_matches(peer, peer_flag) {
                            allowed.extend(port_matches.iter().map(|ports| (peer.clone(), ports.clone())));
                        }
                    }
                }
            }
            allowed.sort();
            allowed.dedup();
            for ((peer, except), ports) in allowed {
                if except.is_empty() {
                    rules.push(format!("-A {chain}{peer}{ports} -j MARK --set-xmark {ALLOW_MARK}"));
                    continue;
                }
                let block = format!("SKNB-{tag}-{:012x}", fnv(&format!("{chain}{peer}{ports}")) & 0xffff_ffff_ffff);
                rules.push(format!("-A {chain}{peer}{ports} -j {block}"));
                for e in &except {
                    rules.push(format!("-A {block} {peer_flag} {e} -j RETURN"));
                }
                rules.push(format!("-A {block} -j MARK --set-xmark {ALLOW_MARK}"));
                chains.push(block);
            }
            rules.push(format!("-A {chain} -m mark --mark {ALLOW_MARK} -j RETURN"));
            rules.push(format!("-A {chain} -j DROP"));
        }
    }
    chains.sort();
    chains.dedup();
    (chains, rules)
}

/// The peers one `from`/`to` entry names: pods chosen by pod and namespace selectors (the
/// policy's own namespace when no namespace selector is given), or an address block.
fn expand<'a>(
    peer: &'a NetworkPolicyPeer,
    policy_ns: &str,
    pods: &'a [Addressed<'a>],
    namespace_labels: &BTreeMap<&str, &BTreeMap<String, String>>,
    no_labels: &BTreeMap<String, String>,
) -> Vec<Peer<'a>> {
    if let Some(block) = &peer.ip_block {
        return vec![Peer::Block { cidr: &block.cidr, except: &block.except }];
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return vec![];
    }
    pods.iter()
        .filter(|p| match &peer.namespace_selector {
            None => p.namespace == policy_ns,
            Some(sel) => sel.matches(namespace_labels.get(p.namespace).copied().unwrap_or(no_labels)),
        })
        .filter(|p| selects(peer.pod_selector.as_ref(), p.labels))
        .map(Peer::Pod)
        .collect()
}

/// The matches on the peer's addresses (` -s 10.244.1.5/32`, one per address), each with
/// the ranges excepted from it.
fn peer_matches(peer: &Peer, flag: &str) -> Vec<(String, Vec<String>)> {
    match peer {
        Peer::Any => vec![(String::new(), vec![])],
        Peer::Pod(p) => p.ips.iter().map(|ip| (format!(" {flag} {ip}/32"), vec![])).collect(),
        Peer::Block { cidr, except } => vec![(format!(" {flag} {cidr}"), except.to_vec())],
    }
}

/// The matches for one policy port (` -p tcp -m tcp --dport 80:90`); a named port is looked
/// up in `target`'s containers (none there, or no `target`: no match at all).
fn port_match(port: &NetworkPolicyPort, target: Option<&Pod>) -> Vec<String> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    let p = protocol.to_ascii_lowercase();
    let numbers: Vec<i64> = match IntOrString::from_value(&port.port) {
        None => return vec![format!(" -p {p}")],
        Some(IntOrString::Int(n)) => vec![n],
        Some(IntOrString::Str(name)) => target
            .and_then(|t| t.spec.as_ref())
            .into_iter()
            .flat_map(|s| s.init_containers.iter().chain(&s.containers))
            .flat_map(|c| &c.ports)
            .filter(|cp| {
                cp.name == name && (if cp.protocol.is_empty() { "TCP" } else { cp.protocol.as_str() }) == protocol
            })
            .map(|cp| i64::from(cp.container_port))
            .collect(),
    };
    numbers
        .into_iter()
        .map(|n| match port.end_port {
            Some(end) if i64::from(end) > n => format!(" -p {p} -m {p} --dport {n}:{end}"),
            _ => format!(" -p {p} -m {p} --dport {n}"),
        })
        .collect()
}

/// Programs this node's policy `ruleset` in the filter table, rewriting only what differs
/// from `old` (the ruleset programmed last; None: start from the kernel's).
pub fn apply(cfg: &Config, ruleset: &Ruleset, old: Option<&Ruleset>) -> Result<(), NodeError> {
    crate::proxy::sync("filter", &chain_prefixes(&cfg.bridge), ruleset, old)
}

/// The host-wide chain first in FORWARD, and this node's chain jumped to from it.
pub fn install(cfg: &Config) -> Result<(), NodeError> {
    let top = top_chain(&cfg.bridge);
    for chain in [SHARED_CHAIN, &top] {
        if iptables(&["-t", "filter", "-S", chain]).is_err() {
            // Another node on this machine may create the shared chain at the same moment.
            if let Err(e) = iptables(&["-t", "filter", "-N", chain]) {
                iptables(&["-t", "filter", "-S", chain]).map_err(|_| e)?;
            }
        }
    }
    crate::hostport::ensure("filter", SHARED_CHAIN, &["-j", &top], false)?;
    first_in_forward()
}

/// [`SHARED_CHAIN`]'s jump as the first rule of FORWARD, once: nodes started later insert
/// their own forwarding rules first, and an accept there would skip every policy.
fn first_in_forward() -> Result<(), NodeError> {
    let jump = format!("-A FORWARD -j {SHARED_CHAIN}");
    let listing = iptables(&["-t", "filter", "-S", "FORWARD"])?;
    let rules: Vec<&str> = listing.lines().filter(|l| l.starts_with("-A FORWARD")).collect();
    if rules.first() == Some(&jump.as_str()) && rules.iter().filter(|r| **r == jump).count() == 1 {
        return Ok(());
    }
    iptables(&["-t", "filter", "-I", "FORWARD", "1", "-j", SHARED_CHAIN])?;
    // The older copies, from the last so the numbers hold.
    let listing = iptables(&["-t", "filter", "-S", "FORWARD"])?;
    let numbers: Vec<usize> = listing
        .lines()
        .filter(|l| l.starts_with("-A FORWARD"))
        .enumerate()
        .filter(|(i, l)| *i > 0 && *l == jump)
        .map(|(i, _)| i + 1)
        .collect();
    for n in numbers.iter().rev() {
        let _ = iptables(&["-t", "filter", "-D", "FORWARD", &n.to_string()]);
    }
    Ok(())
}

/// Removes this node's chains and its jump (at a clean shutdown); the shared chain stays.
pub fn uninstall(cfg: &Config) {
    let top = top_chain(&cfg.bridge);
    while iptables(&["-t", "filter", "-D", SHARED_CHAIN, "-j", &top]).is_ok() {}
    let _ = apply(cfg, &(vec![top.clone()], vec![]), None);
    let _ = iptables(&["-t", "filter", "-X", &top]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Config {
        Config { bridge: "skiff0".into(), node: "n1".into() }
    }

    fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:test", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip},
            }))
            .unwrap(),
        )
    }

    fn policy(ns: &str, spec: serde_json::Value) -> Arc<NetworkPolicy> {
        let mut obj = json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec});
        if obj["spec"].get("policyTypes").is_none() {
            obj["spec"]["policyTypes"] = json!(["Ingress"]);
        }
        Arc::new(serde_json::from_value(obj).unwrap())
    }

    fn namespace(name: &str, labels: serde_json::Value) -> Arc<Namespace> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap())
    }

    fn pods() -> Vec<Arc<Pod>> {
        vec![
            pod("default", "db", "n1", "10.244.1.2", json!({"role": "db"})),
            pod("default", "web", "n2", "10.244.2.2", json!({"role": "web"})),
            pod("prod", "api", "n2", "10.244.2.3", json!({"role": "api"})),
        ]
    }

    /// The rules of one chain, without the `-A chain` prefix.
    fn chain_rules<'a>(ruleset: &'a Ruleset, prefix: &str) -> Vec<&'a str> {
        let chain = ruleset.0.iter().find(|c| c.starts_with(prefix)).expect("chain");
        ruleset.1.iter().filter_map(|r| r.strip_prefix(&format!("-A {chain}"))).collect()
    }

    #[test]
    fn unselected_pods_are_not_isolated() {
        let (chains, rules) = rules(&cfg(), &[], &pods(), &[]);
        assert_eq!(chains, ["SKIFF-NP-skiff0"]);
        assert_eq!(rules, ["-A SKIFF-NP-skiff0 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]);
        // A policy elsewhere, or for pods on another node, isolates nothing here.
        let other = policy("prod", json!({"podSelector": {}}));
        assert_eq!(super::rules(&cfg(), &[other], &pods(), &[]).0.len(), 1);
    }

    #[test]
    fn ingress_allows_the_selected_peers_and_ports_and_drops_the_rest() {
        let p = policy(
            "default",
            json!({"podSelector": {"matchLabels": {"role": "db"}}, "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"role": "web"}}}, {"namespaceSelector": {"matchLabels": {"env": "prod"}}}],
                "ports": [{"protocol": "TCP", "port": "http"}, {"protocol": "UDP", "port": 53, "endPort": 60}]
            }]}),
        );
        let ns = [namespace("prod", json!({"env": "prod"})), namespace("default", json!({}))];
        let set = rules(&cfg(), &[p], &pods(), &ns);
        let chain = set.0.iter().find(|c| c.starts_with("SKNI-")).unwrap().clone();
        assert!(set.1.contains(&format!("-A SKIFF-NP-skiff0 -d 10.244.1.2/32 -j {chain}")), "{set:?}");
        assert_eq!(
            chain_rules(&set, "SKNI-"),
            [
                " -j MARK --set-xmark 0x0/0x20000",
                " -s 10.244.2.2/32 -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x20000/0x20000",
                " -s 10.244.2.2/32 -p udp -m udp --dport 53:60 -j MARK --set-xmark 0x20000/0x20000",
                " -s 10.244.2.3/32 -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x20000/0x20000",
                " -s 10.244.2.3/32 -p udp -m udp --dport 53:60 -j MARK --set-xmark 0x20000/0x20000",
                " -m mark --mark 0x20000/0x20000 -j RETURN",
                " -j DROP",
            ]
        );
    }

    #[test]
    fn deny_all_has_no_allowance_and_egress_blocks_get_their_exceptions() {
        let deny = policy("default", json!({"podSelector": {}}));
        let set = rules(&cfg(), &[deny], &pods(), &[]);
        assert_eq!(
            chain_rules(&set, "SKNI-"),
            [" -j MARK --set-xmark 0x0/0x20000", " -m mark --mark 0x20000/0x20000 -j RETURN", " -j DROP"]
        );
        let egress = policy(
            "default",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}]}]}),
        );
        let set = rules(&cfg(), &[egress], &pods(), &[]);
        let block = set.0.iter().find(|c| c.starts_with("SKNB-")).unwrap().clone();
        assert_eq!(chain_rules(&set, "SKNE-")[1], format!(" -d 10.0.0.0/8 -j {block}"));
        assert_eq!(chain_rules(&set, "SKNB-"), [" -d 10.244.0.0/16 -j RETURN", " -j MARK --set-xmark 0x20000/0x20000"]);
        assert!(!set.0.iter().any(|c| c.starts_with("SKNI-")), "egress only: {set:?}");
    }

    #[test]
    fn chain_names_fit_iptables() {
        let p = policy("default", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}));
        let set = rules(&cfg(), &[p], &pods(), &[]);
        assert_eq!(set.0.len(), 3);
        assert!(set.0.iter().all(|c| c.len() <= 28), "{:?}", set.0);
    }
}
