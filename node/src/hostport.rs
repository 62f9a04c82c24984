//! `hostPort`: a container port published on the node's address, with iptables DNAT rules in
//! a chain of the node's own (`SKIFF-HP-<bridge>`, in the nat table, jumped to from PREROUTING
//! and OUTPUT for local destinations). Each rule is commented with its pod's uid so the pod's
//! rules go with it; the node's reset removes the chain. Traffic from the node itself to its
//! loopback address needs `route_localnet` and a masquerade onto the bridge, as kube-proxy does.

use crate::error::NodeError;
use std::process::Command;

/// One published port: protocol, host address, host port, pod address and container port.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    pub protocol: String,
    pub host_ip: String,
    pub host_port: u16,
    pub pod_ip: String,
    pub container_port: u16,
}

/// Runs `iptables -w 5 ARGS` (shared with the service proxy).
pub(crate) fn iptables(args: &[&str]) -> Result<String, NodeError> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| NodeError::Sandbox(format!("iptables (install the iptables package): {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NodeError::Sandbox(format!("iptables {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// `rule` in `chain` of `table` unless an identical rule is there: appended, or with `insert`
/// put first (shared with the service proxy).
pub(crate) fn ensure(table: &str, chain: &str, rule: &[&str], insert: bool) -> Result<(), NodeError> {
    // Check-then-add is one step across every node daemon on the host (several share one
    // host in tests and `skiff up`): without the lock two daemons both found the rule missing
    // and both added it, and host-wide rules piled up in copies.
    let _lock = host_lock();
    let mut check = vec!["-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if iptables(&check).is_ok() {
        return Ok(());
    }
    let mut add = vec!["-t", table, if insert { "-I" } else { "-A" }, chain];
    add.extend_from_slice(rule);
    iptables(&add).map(|_| ())
}

/// An exclusive lock shared by the node daemons of this host, held until dropped; `None` if
/// the lock file cannot be opened (then the add may race, as before).
fn host_lock() -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(HOST_LOCK).ok()?;
    file.lock().ok()?;
    Some(file)
}

/// The lock file of [`host_lock`] (iptables' own `-w` lock covers one call, not a check and an
/// add).
const HOST_LOCK: &str = "/run/skiff-iptables.lock";

/// `rule` appended to `chain` of the nat table unless an identical rule is there.
fn ensure_rule(chain: &str, rule: &[&str]) -> Result<(), NodeError> {
    ensure("nat", chain, rule, false)
}

/// The filter chain that keeps other hosts' and pods' packets off this host's loopback.
pub const FIREWALL_CHAIN: &str = "SKIFF-FIREWALL";

/// kube-proxy's localnet rule (CVE-2020-8558): with `route_localnet` on — which hostPort and
/// NodePort on loopback addresses need — a packet to 127.0.0.0/8 from anywhere else (a pod,
/// a neighbour on the bridge) would be delivered to whatever listens on the host's loopback,
/// such as a master's ports. Dropped here unless it was DNATed (a published port) or belongs
/// to a connection already made. One chain for every node daemon on the host; left in place
/// at reset, as kube-proxy leaves KUBE-FIREWALL.
pub fn block_localnet() -> Result<(), NodeError> {
    if iptables(&["-t", "filter", "-S", FIREWALL_CHAIN]).is_err() {
        // Another node daemon may create it at the same moment.
        if let Err(e) = iptables(&["-t", "filter", "-N", FIREWALL_CHAIN]) {
            iptables(&["-t", "filter", "-S", FIREWALL_CHAIN]).map_err(|_| e)?;
        }
    }
    ensure("filter", "INPUT", &["-j", FIREWALL_CHAIN], true)?;
    let rule = [
        "!",
        "-s",
        "127.0.0.0/8",
        "-d",
        "127.0.0.0/8",
        "-m",
        "comment",
        "--comment",
        "block incoming localnet connections",
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "RELATED,ESTABLISHED,DNAT",
        "-j",
        "DROP",
    ];
    ensure("filter", FIREWALL_CHAIN, &rule, false)
}

pub fn chain(bridge: &str) -> String {
    format!("SKIFF-HP-{bridge}")
}

/// The node's chain, its jumps, and the loopback masquerade onto the bridge.
fn ensure_chain(bridge: &str) -> Result<String, NodeError> {
    let chain = chain(bridge);
    if iptables(&["-t", "nat", "-S", &chain]).is_err() {
        iptables(&["-t", "nat", "-N", &chain])?;
    }
    for hook in ["PREROUTING", "OUTPUT"] {
        ensure_rule(hook, &["-m", "addrtype", "--dst-type", "LOCAL", "-j", &chain])?;
    }
    ensure_rule("POSTROUTING", &["-s", "127.0.0.0/8", "-o", bridge, "-j", "MASQUERADE"])?;
    // DNAT of 127.x destinations to a pod needs loopback sources routable off `lo`.
    let _ = std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1");
    Ok(chain)
}

/// Publishes a pod's host ports.
pub fn publish(bridge: &str, uid: &str, mappings: &[Mapping]) -> Result<(), NodeError> {
    if mappings.is_empty() {
        return Ok(());
    }
    let chain = ensure_chain(bridge)?;
    let comment = format!("skiff pod {uid}");
    for m in mappings {
        let proto = m.protocol.to_lowercase();
        let dport = m.host_port.to_string();
        let to = format!("{}:{}", m.pod_ip, m.container_port);
        let dst = format!("{}/32", m.host_ip);
        let rule = [
            "-p",
            &proto,
            "-d",
            &dst,
            "--dport",
            &dport,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ];
        ensure_rule(&chain, &rule)?;
    }
    Ok(())
}

/// Removes a pod's rules (by the uid in their comments).
pub fn unpublish(bridge: &str, uid: &str) {
    let chain = chain(bridge);
    let Ok(listing) = iptables(&["-t", "nat", "-L", &chain, "-n", "--line-numbers"]) else { return };
    let mut numbers: Vec<u32> =
        listing.lines().filter(|l| l.contains(uid)).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    for n in numbers {
        let _ = iptables(&["-t", "nat", "-D", &chain, &n.to_string()]);
    }
}

/// Removes the node's chain and its jumps (at reset).
pub fn remove_chain(bridge: &str) {
    let chain = chain(bridge);
    for hook in ["PREROUTING", "OUTPUT"] {
        let _ = iptables(&["-t", "nat", "-D", hook, "-m", "addrtype", "--dst-type", "LOCAL", "-j", &chain]);
    }
    let _ = iptables(&["-t", "nat", "-D", "POSTROUTING", "-s", "127.0.0.0/8", "-o", bridge, "-j", "MASQUERADE"]);
    let _ = iptables(&["-t", "nat", "-F", &chain]);
    let _ = iptables(&["-t", "nat", "-X", &chain]);
}

/// The host-port mappings a pod's containers ask for.
pub fn mappings(pod: &serde_json::Value, node_ip: &str, pod_ip: &str) -> Vec<Mapping> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| {
            let host_port = u16::try_from(p["hostPort"].as_u64()?).ok().filter(|h| *h > 0)?;
            Some(Mapping {
                protocol: p["protocol"].as_str().filter(|s| !s.is_empty()).unwrap_or("TCP").to_string(),
                host_ip: p["hostIP"]
                    .as_str()
                    .filter(|s| !s.is_empty() && *s != "0.0.0.0")
                    .unwrap_or(node_ip)
                    .to_string(),
                host_port,
                pod_ip: pod_ip.to_string(),
                container_port: u16::try_from(p["containerPort"].as_u64()?).ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_ports_map_to_the_pod_ip() {
        let pod = json!({"spec": {"containers": [{"ports": [
            {"containerPort": 8080, "hostPort": 31080},
            {"containerPort": 53, "hostPort": 3053, "protocol": "UDP", "hostIP": "127.0.0.9"},
            {"containerPort": 9090}
        ]}]}});
        let m = mappings(&pod, "127.0.0.2", "10.244.1.5");
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0],
            Mapping {
                protocol: "TCP".into(),
                host_ip: "127.0.0.2".into(),
                host_port: 31080,
                pod_ip: "10.244.1.5".into(),
                container_port: 8080
            }
        );
        assert_eq!((m[1].protocol.as_str(), m[1].host_ip.as_str()), ("UDP", "127.0.0.9"));
        assert!(chain("sk12345n1").len() <= 28);
    }
}
