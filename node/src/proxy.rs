//! The service proxy: Services and their ready Endpoints programmed into the kernel's nat table
//! with iptables, as kube-proxy's iptables mode does.
//!
//! Every chain this node owns carries its tag (a hash of its bridge's name), so several nodes
//! on one machine never touch each other's rules: a top chain `SKIFF-SVC-<bridge>` jumped to
//! from PREROUTING (traffic from this node's pods and from other machines) and OUTPUT (this
//! machine's own traffic to the node's address and to 127.0.0.1), a chain per service port (`SKS-<tag>-<hash>`) that
//! spreads connections at random over a chain per endpoint (`SKE-<tag>-<hash>`, the DNAT).
//! `sessionAffinity: ClientIP` pins a client with the `recent` match. Service traffic is
//! marked and masqueraded on the way to a pod, so replies come back through the node (hairpin
//! included) whichever bridge or machine the endpoint is on.
//!
//! Outside the rules: the cluster range gets an `unreachable` route (each node's bridge route,
//! and the pod network's routes to other machines' ranges ([`crate::podnet`]), are more
//! specific), the service range a route to a bridge with no ports, and a FORWARD chain per node
//! drops what its pods send outside the cluster range (replies excepted) — no packet for an
//! unknown pod range or a cluster IP leaves the machine.
//!
//! `rules` is pure: Services and EndpointSlices in, the ruleset out; `apply` hands it to
//! `iptables-restore --noflush` in one transaction.

use crate::error::NodeError;
use crate::hostport::{ensure, iptables};
use serde_json::Value;
use skiff_proto::api::EndpointSlice;
use skiff_proto::discovery::fnv64 as fnv;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;

/// A bridge without ports that the service range is routed to (see `install`).
pub const SERVICE_BRIDGE: &str = "skiffsvc0";

/// The mark on service traffic that POSTROUTING masquerades.
pub const MASQ_MARK: &str = "0x4000/0x4000";
/// How long a ClientIP affinity lasts unless the Service says (Kubernetes' default).
const AFFINITY_SECONDS: i64 = 10800;

/// What the proxy needs to know about its node.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub bridge: String,
    pub node_ip: String,
    /// All nodes' pod ranges together (10.244.0.0/16).
    pub cluster_cidr: String,
    pub service_cidr: String,
    /// This node's own pod range (accepted even when outside `cluster_cidr`).
    pub pod_cidr: String,
}

/// How often the proxy rewrites all its rules rather than what changed.
const FULL_SYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// How often the proxy re-reads its caches without being woken by a change (a safety net; the
/// kernel's own state is re-read every [`FULL_SYNC`]).
pub const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Follows Services and Endpoints until `stop`: on every change to either (and every
/// `SYNC_INTERVAL` regardless) it reads them from the node's caches and reprograms what
/// changed — the nat rules and the DNS records follow a change as soon as the watch brings it.
pub async fn run(
    caches: crate::informers::Caches,
    cfg: ProxyConfig,
    records: crate::dns::Shared,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let label = format!("service proxy on {}", cfg.bridge);
    let programmed_cfg = cfg.clone();
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let watches = [
        crate::informers::wake_on_changes(&caches.services, &changed),
        crate::informers::wake_on_changes(&caches.endpoints, &changed),
        crate::informers::wake_on_changes(&caches.endpoint_slices, &changed),
    ];
    // Nothing is programmed from caches not yet listed (that would remove every rule).
    tokio::select! {
        () = async {
            caches.services.synced().await;
            caches.endpoints.synced().await;
            caches.endpoint_slices.synced().await;
        } => {}
        _ = stop.changed() => return,
    }
    let wanted = move || {
        let services = crate::informers::values(&caches.services);
        let endpoints = crate::informers::values(&caches.endpoints);
        let wanted = rules(&cfg, &services, &caches.endpoint_slices.list());
        *records.write().expect("records lock") = crate::dns::Records { services, endpoints };
        wanted
    };
    let program = move |new: &Ruleset, old: Option<&Ruleset>| apply(&programmed_cfg, new, old);
    keep_programmed(&label, wanted, program, &changed, stop).await;
    watches.iter().for_each(|w| w.abort());
}

/// Keeps a ruleset programmed until `stop`: computes it with `wanted` now, on every
/// `changed` and every [`SYNC_INTERVAL`], and has `apply` turn what it programmed last into
/// it when they differ (and everything from the kernel's state every [`FULL_SYNC`], as
/// kube-proxy's sync period: rules someone else removed come back). Shared by the service
/// proxy and the network policies.
pub(crate) async fn keep_programmed(
    label: &str,
    wanted: impl Fn() -> Ruleset,
    apply: impl Fn(&Ruleset, Option<&Ruleset>) -> Result<(), NodeError> + Clone + Send + 'static,
    changed: &tokio::sync::Notify,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut programmed: Option<Ruleset> = None;
    let mut last_full = std::time::Instant::now();
    loop {
        if last_full.elapsed() >= FULL_SYNC {
            programmed = None;
            last_full = std::time::Instant::now();
        }
        let wanted = wanted();
        if programmed.as_ref() != Some(&wanted) {
            // iptables-restore may wait for the xtables lock: off the runtime's threads.
            let (apply, old) = (apply.clone(), programmed.take());
            let (old, applied) = tokio::task::spawn_blocking(move || {
                let r = apply(&wanted, old.as_ref());
                (old, r.map(|()| wanted))
            })
            .await
            .unwrap_or_else(|e| (None, Err(NodeError::Sandbox(format!("applying rules: {e}")))));
            match applied {
                Ok(wanted) => programmed = Some(wanted),
                Err(e) => {
                    programmed = old;
                    tracing::warn!("{label}: {e}");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SYNC_INTERVAL) => {}
            _ = changed.notified() => {}
            _ = stop.changed() => break,
        }
    }
}

/// This node's tag in chain names.
pub fn tag(bridge: &str) -> String {
    format!("{:06x}", fnv(bridge) & 0xffffff)
}

pub fn top_chain(bridge: &str) -> String {
    format!("SKIFF-SVC-{bridge}")
}

/// The node's masquerade of service traffic, tagged (`comment`) with its bridge.
fn masquerade_rule(comment: &str) -> [&str; 10] {
    ["-m", "mark", "--mark", MASQ_MARK, "-m", "comment", "--comment", comment, "-j", "MASQUERADE"]
}

fn forward_chain(bridge: &str) -> String {
    format!("SKIFF-FWD-{bridge}")
}

/// One service port with the ready endpoints it reaches.
#[derive(Clone, Debug, PartialEq)]
struct Target {
    chain: String,
    protocol: String,
    /// (address, port) of ready endpoints, ordered.
    endpoints: Vec<(String, i64)>,
    /// Seconds a client stays with its endpoint (`sessionAffinity: ClientIP`).
    affinity: Option<i64>,
    /// Destinations (ip, port) that reach this service port.
    frontends: Vec<(String, i64)>,
}

fn targets(cfg: &ProxyConfig, services: &[Value], slices: &[Arc<EndpointSlice>]) -> Vec<Target> {
    let tag = tag(&cfg.bridge);
    let mut out = Vec::new();
    for svc in services {
        let ty = svc["spec"]["type"].as_str().unwrap_or("ClusterIP");
        let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default();
        if ty == "ExternalName" || cluster_ip.is_empty() || cluster_ip == "None" {
            continue;
        }
        let (ns, name) = (
            svc["metadata"]["namespace"].as_str().unwrap_or("default"),
            svc["metadata"]["name"].as_str().unwrap_or_default(),
        );
        let own: Vec<&EndpointSlice> =
            slices.iter().filter(|s| s.service() == Some((ns, name))).map(|s| &**s).collect();
        for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let port_name = port["name"].as_str().unwrap_or_default();
            let protocol = port["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
            let mut eps = ready_in_slices(&own, port_name);
            eps.sort();
            eps.dedup();
            let Some(svc_port) = port["port"].as_i64() else { continue };
            let mut frontends = vec![(cluster_ip.to_string(), svc_port)];
            if let Some(np) = port["nodePort"].as_i64().filter(|_| ty != "ClusterIP") {
                frontends.push((cfg.node_ip.clone(), np));
                if cfg.node_ip != "127.0.0.1" {
                    frontends.push(("127.0.0.1".into(), np));
                }
            }
            if ty == "LoadBalancer" {
                frontends.push((cfg.node_ip.clone(), svc_port));
            }
            let id = format!("{ns}/{name}/{port_name}/{protocol}");
            out.push(Target {
                chain: format!("SKS-{tag}-{:016x}", fnv(&id)),
                protocol,
                endpoints: eps,
                affinity: (svc["spec"]["sessionAffinity"] == "ClientIP").then(|| {
                    svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
                        .as_i64()
                        .unwrap_or(AFFINITY_SECONDS)
                }),
                frontends,
            });
        }
    }
    out
}

/// The ready endpoints of a Service's IPv4 slices with the port named `port_name` ("" for an
/// unnamed port): (address, port) pairs. An endpoint whose readiness is unset is ready, as
/// Kubernetes reads it; an endpoint in two slices (while it moves) is there twice.
pub fn ready_in_slices(slices: &[&EndpointSlice], port_name: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let Some(port) = slice.ports.iter().find(|p| p.name == port_name).and_then(|p| p.port) else { continue };
        for e in &slice.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if let Some(address) = e.addresses.first().filter(|_| ready) {
                out.push((address.clone(), i64::from(port)));
            }
        }
    }
    out
}

/// The ready addresses of an Endpoints object with the port named `port_name` ("" for an
/// unnamed port): (ip, port) pairs, in the object's order.
pub fn ready_endpoints(ep: &Value, port_name: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for subset in ep["subsets"].as_array().into_iter().flatten() {
        let Some(port) = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .and_then(|p| p["port"].as_i64())
        else {
            continue;
        };
        for a in subset["addresses"].as_array().into_iter().flatten() {
            if let Some(ip) = a["ip"].as_str() {
                out.push((ip.to_string(), port));
            }
        }
    }
    out
}

fn endpoint_chain(t: &Target, ip: &str, port: i64) -> String {
    let tag = &t.chain[4..10];
    format!("SKE-{tag}-{:016x}", fnv(&format!("{}/{ip}:{port}", t.chain)))
}

/// An iptables ruleset: (chains it declares, rules).
pub type Ruleset = (Vec<String>, Vec<String>);

/// The nat-table ruleset: (chains it declares, rules). A service port without ready
/// endpoints gets no rules: what is sent to it goes nowhere.
pub fn rules(cfg: &ProxyConfig, services: &[Value], slices: &[Arc<EndpointSlice>]) -> Ruleset {
    let top = top_chain(&cfg.bridge);
    let mut chains = vec![top.clone()];
    let mut rules = Vec::new();
    for t in targets(cfg, services, slices) {
        if t.endpoints.is_empty() {
            continue;
        }
        chains.push(t.chain.clone());
        for (ip, port) in &t.frontends {
            rules.push(format!("-A {top} -d {ip}/32 -p {p} -m {p} --dport {port} -j {c}", p = t.protocol, c = t.chain));
        }
        rules.push(format!("-A {} -j MARK --set-xmark {MASQ_MARK}", t.chain));
        let eps: Vec<(String, &String, &i64)> =
            t.endpoints.iter().map(|(ip, port)| (endpoint_chain(&t, ip, *port), ip, port)).collect();
        if let Some(seconds) = t.affinity {
            for (c, _, _) in &eps {
                rules.push(format!(
                    "-A {} -m recent --name {c} --rcheck --seconds {seconds} --reap --rsource -j {c}",
                    t.chain
                ));
            }
        }
        let n = eps.len();
        for (i, (c, ip, port)) in eps.iter().enumerate() {
            chains.push(c.clone());
            if i + 1 < n {
                let probability = 1.0 / (n - i) as f64;
                rules.push(format!("-A {} -m statistic --mode random --probability {probability:.11} -j {c}", t.chain));
            } else {
                rules.push(format!("-A {} -j {c}", t.chain));
            }
            if t.affinity.is_some() {
                rules.push(format!("-A {c} -m recent --name {c} --set --rsource"));
            }
            rules.push(format!("-A {c} -p {p} -m {p} -j DNAT --to-destination {ip}:{port}", p = t.protocol));
        }
    }
    (chains, rules)
}

fn remove(table: &str, chain: &str, rule: &[&str]) {
    let mut del = vec!["-t", table, "-D", chain];
    del.extend_from_slice(rule);
    while iptables(&del).is_ok() {}
}

fn ip(args: &[&str]) -> Result<(), NodeError> {
    let out = Command::new("ip").args(args).output().map_err(|e| NodeError::Sandbox(format!("ip: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NodeError::Sandbox(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// The jumps into this node's chains, the masquerade, forwarding and the ranges' routes.
pub fn install(cfg: &ProxyConfig) -> Result<(), NodeError> {
    let top = top_chain(&cfg.bridge);
    let fwd = forward_chain(&cfg.bridge);
    if iptables(&["-t", "nat", "-S", &top]).is_err() {
        iptables(&["-t", "nat", "-N", &top])?;
    }
    // From every interface: this node's pods, other machines (a NodePort), other nodes' pods.
    ensure("nat", "PREROUTING", &["-j", &top], false)?;
    ensure("nat", "OUTPUT", &["-j", &top], false)?;
    // Whichever way it leaves (to a pod here, or over the pod network to another machine's),
    // so replies come back through this node. One rule per node, told apart by its comment,
    // so a node's uninstall leaves the others'.
    ensure("nat", "POSTROUTING", &masquerade_rule(&format!("skiff-{}", cfg.bridge)), false)?;
    // Pods may talk to the cluster's pods, nothing further.
    if iptables(&["-t", "filter", "-S", &fwd]).is_err() {
        iptables(&["-t", "filter", "-N", &fwd])?;
    }
    iptables(&["-t", "filter", "-F", &fwd])?;
    // Replies (a NodePort's client may be anywhere).
    iptables(&["-t", "filter", "-A", &fwd, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"])?;
    for range in [&cfg.cluster_cidr, &cfg.pod_cidr] {
        iptables(&["-t", "filter", "-A", &fwd, "-d", range, "-j", "ACCEPT"])?;
    }
    iptables(&["-t", "filter", "-A", &fwd, "-j", "DROP"])?;
    ensure("filter", "FORWARD", &["-i", &cfg.bridge, "-j", &fwd], true)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| NodeError::Sandbox(format!("enabling IPv4 forwarding: {e}")))?;
    // Node ports on 127.x addresses (the node's own, and 127.0.0.1 as kube-proxy allows):
    // after DNAT to a pod the loopback source must be routable off `lo` until the masquerade.
    std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1")
        .map_err(|e| NodeError::Sandbox(format!("enabling route_localnet: {e}")))?;
    // Shared by every node on the machine, the same each time, never removed: pod addresses
    // not on one of this machine's bridges are unreachable; the service range goes to a bridge
    // with no ports (`skiffsvc0`), so the machine's own connections to a cluster IP get a route
    // and then the nat OUTPUT hook's DNAT, and anything not DNATed goes nowhere.
    ip(&["route", "replace", "unreachable", &cfg.cluster_cidr])?;
    if ip(&["link", "show", "dev", SERVICE_BRIDGE]).is_err() {
        // Another node may create it at the same moment.
        let _ = ip(&["link", "add", SERVICE_BRIDGE, "type", "bridge"]);
    }
    ip(&["link", "set", SERVICE_BRIDGE, "up"])?;
    ip(&["route", "replace", &cfg.service_cidr, "dev", SERVICE_BRIDGE])?;
    Ok(())
}

/// The prefixes of this node's service and endpoint chains.
fn chain_prefixes(bridge: &str) -> Vec<String> {
    let tag = tag(bridge);
    vec![format!("SKS-{tag}-"), format!("SKE-{tag}-")]
}

/// The chains of `table` whose names start with one of `prefixes`.
fn owned_chains(table: &str, prefixes: &[String]) -> Result<BTreeSet<String>, NodeError> {
    let listing = iptables(&["-t", table, "-S"])?;
    Ok(listing
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| prefixes.iter().any(|p| c.starts_with(p.as_str())))
        .map(String::from)
        .collect())
}

/// A ruleset's rules by chain (every declared chain, empty ones too).
fn by_chain(ruleset: &Ruleset) -> BTreeMap<&str, Vec<&str>> {
    let (chains, rules) = ruleset;
    let mut out: BTreeMap<&str, Vec<&str>> = chains.iter().map(|c| (c.as_str(), Vec::new())).collect();
    for r in rules {
        if let Some(chain) = r.strip_prefix("-A ").and_then(|r| r.split(' ').next()) {
            out.entry(chain).or_default().push(r);
        }
    }
    out
}

/// The `iptables-restore` input that turns `old` (None: whatever this node has now,
/// `present`) into `new`: only chains whose rules changed are rewritten (declaring a chain
/// flushes it) and chains no longer wanted are deleted — so an endpoint change at a thousand
/// services rewrites a few chains, not thousands.
fn restore_input(table: &str, new: &Ruleset, old: Option<&Ruleset>, present: &BTreeSet<String>) -> String {
    let wanted = by_chain(new);
    let had = old.map(by_chain);
    let changed: Vec<(&str, &Vec<&str>)> = wanted
        .iter()
        .filter(|(c, rules)| had.as_ref().is_none_or(|h| h.get(*c) != Some(*rules)))
        .map(|(c, r)| (*c, r))
        .collect();
    let stale: Vec<&str> = match &had {
        Some(h) => h.keys().filter(|c| !wanted.contains_key(*c)).copied().collect(),
        None => present.iter().map(String::as_str).filter(|c| !wanted.contains_key(c)).collect(),
    };
    let mut input = format!("*{table}\n");
    for c in changed.iter().map(|(c, _)| *c).chain(stale.iter().copied()) {
        let _ = writeln!(input, ":{c} - [0:0]");
    }
    for (_, rules) in &changed {
        for r in *rules {
            let _ = writeln!(input, "{r}");
        }
    }
    for c in &stale {
        let _ = writeln!(input, "-X {c}");
    }
    input.push_str("COMMIT\n");
    input
}

/// Programs the service proxy's `ruleset` for this node, rewriting only what differs from
/// `old` (the ruleset it programmed last; None: start from the kernel's).
pub fn apply(cfg: &ProxyConfig, ruleset: &Ruleset, old: Option<&Ruleset>) -> Result<(), NodeError> {
    sync("nat", &chain_prefixes(&cfg.bridge), ruleset, old)
}

/// Programs `ruleset` in `table` in one `iptables-restore` transaction, rewriting only what
/// differs from `old` (the ruleset programmed last; None: start from the kernel's, where this
/// node's chains are those named with one of `prefixes`).
pub(crate) fn sync(
    table: &str,
    prefixes: &[String],
    ruleset: &Ruleset,
    old: Option<&Ruleset>,
) -> Result<(), NodeError> {
    let present = if old.is_none() { owned_chains(table, prefixes)? } else { BTreeSet::new() };
    restore(&restore_input(table, ruleset, old, &present))
}

fn restore(input: &str) -> Result<(), NodeError> {
    crate::sandbox::batch(Command::new("iptables-restore").args(["--noflush", "-w", "5"]), input)
}

/// Removes everything `install` and `apply` made for this node (at a clean shutdown).
pub fn uninstall(cfg: &ProxyConfig) {
    let top = top_chain(&cfg.bridge);
    let fwd = forward_chain(&cfg.bridge);
    remove("nat", "PREROUTING", &["-j", &top]);
    remove("nat", "OUTPUT", &["-j", &top]);
    remove("nat", "POSTROUTING", &masquerade_rule(&format!("skiff-{}", cfg.bridge)));
    // The forms of earlier versions.
    remove("nat", "PREROUTING", &["-i", &cfg.bridge, "-j", &top]);
    remove("nat", "POSTROUTING", &["-o", &cfg.bridge, "-m", "mark", "--mark", MASQ_MARK, "-j", "MASQUERADE"]);
    remove("filter", "FORWARD", &["-i", &cfg.bridge, "-j", &fwd]);
    let _ = apply(cfg, &(vec![top.clone()], vec![]), None);
    let _ = iptables(&["-t", "nat", "-X", &top]);
    let _ = iptables(&["-t", "filter", "-F", &fwd]);
    let _ = iptables(&["-t", "filter", "-X", &fwd]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> ProxyConfig {
        ProxyConfig {
            bridge: "skbr1".into(),
            node_ip: "127.0.0.5".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            service_cidr: "10.96.0.0/16".into(),
            pod_cidr: "10.244.1.0/24".into(),
        }
    }

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    /// An IPv4 slice of the Service `name` with ready and not-ready endpoints on 8080.
    fn slice(name: &str, ready: &[&str], not_ready: &[&str]) -> Arc<EndpointSlice> {
        let e = |ips: &[&str], ready: bool| {
            ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect::<Vec<_>>()
        };
        let mut endpoints = e(ready, true);
        endpoints.extend(e(not_ready, false));
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-abc"), "namespace": "default", "labels": {skiff_proto::discovery::SERVICE_NAME: name}},
                "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]
            }))
            .unwrap(),
        )
    }

    fn eps(ready: &[&str], not_ready: &[&str]) -> Arc<EndpointSlice> {
        slice("web", ready, not_ready)
    }

    #[test]
    fn a_cluster_ip_spreads_over_ready_endpoints_only() {
        let s = svc(json!({"type": "ClusterIP", "clusterIP": "10.96.0.9", "ports": [{"port": 80, "protocol": "TCP"}]}));
        let (chains, rules) = rules(&cfg(), &[s], &[eps(&["10.244.1.2", "10.244.2.3", "10.244.1.4"], &["10.244.1.9"])]);
        assert_eq!(chains.len(), 1 + 1 + 3, "{chains:?}");
        let text = rules.join("\n");
        assert!(text.contains("-A SKIFF-SVC-skbr1 -d 10.96.0.9/32 -p tcp -m tcp --dport 80 -j SKS-"), "{text}");
        assert!(text.contains("--probability 0.33333333333"), "{text}");
        assert!(text.contains("--probability 0.50000000000"), "{text}");
        assert!(!text.contains("10.244.1.9"), "a not-ready endpoint gets no traffic: {text}");
        assert_eq!(rules.iter().filter(|r| r.contains("DNAT --to-destination")).count(), 3);
        assert!(!text.contains("127.0.0.5"), "a ClusterIP service is not on the node's address: {text}");
    }

    #[test]
    fn node_ports_and_load_balancers_listen_on_the_node_and_affinity_uses_recent() {
        let s = svc(json!({"type": "LoadBalancer", "clusterIP": "10.96.0.9", "sessionAffinity": "ClientIP",
                           "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}));
        let (_, rules) = rules(&cfg(), &[s], &[eps(&["10.244.1.2"], &[])]);
        let text = rules.join("\n");
        for front in [
            "-d 127.0.0.5/32 -p tcp -m tcp --dport 30080",
            "-d 127.0.0.1/32 -p tcp -m tcp --dport 30080",
            "-d 127.0.0.5/32 -p tcp -m tcp --dport 80",
        ] {
            assert!(text.contains(front), "{front}: {text}");
        }
        assert!(text.contains("--rcheck --seconds 10800 --reap --rsource"), "{text}");
        assert!(text.contains("--set --rsource"), "{text}");
    }

    #[test]
    fn headless_external_and_endpointless_services_get_no_rules() {
        let services = [
            svc(json!({"clusterIP": "None", "ports": [{"port": 80}]})),
            svc(json!({"type": "ExternalName", "externalName": "example.org"})),
            svc(json!({"clusterIP": "10.96.0.9", "ports": [{"port": 80}]})),
        ];
        let (chains, rules) = rules(&cfg(), &services, &[eps(&[], &["10.244.1.2"])]);
        assert_eq!(chains, vec!["SKIFF-SVC-skbr1".to_string()]);
        assert!(rules.is_empty(), "{rules:?}");
    }

    #[test]
    fn chain_names_fit_iptables_and_differ_between_nodes() {
        let s = svc(json!({"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}));
        let e = eps(&["10.244.1.2"], &[]);
        let (a, _) = rules(&cfg(), std::slice::from_ref(&s), std::slice::from_ref(&e));
        let (b, _) = rules(&ProxyConfig { bridge: "skbr2".into(), ..cfg() }, &[s], &[e]);
        assert!(a.iter().all(|c| c.len() <= 28), "{a:?}");
        assert!(a.iter().all(|c| !b.contains(c)), "{a:?} {b:?}");
    }

    #[test]
    fn an_endpoint_change_rewrites_only_the_chains_it_touches() {
        let svc = |name: &str, ip: &str| json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
        let ep = |name: &str, ips: &[&str]| slice(name, ips, &[]);
        let services = [svc("a", "10.96.0.1"), svc("b", "10.96.0.2")];
        let before = rules(&cfg(), &services, &[ep("a", &["10.244.1.2"]), ep("b", &["10.244.1.3"])]);
        let after = rules(&cfg(), &services, &[ep("a", &["10.244.1.2"]), ep("b", &["10.244.1.4"])]);
        let input = restore_input("nat", &after, Some(&before), &BTreeSet::new());
        assert!(!input.contains("10.244.1.2"), "service a is untouched:\n{input}");
        assert!(!input.contains(":SKIFF-SVC-skbr1"), "the top chain is untouched:\n{input}");
        assert!(input.contains("DNAT --to-destination 10.244.1.4:8080"), "{input}");
        assert_eq!(input.matches("\n-X ").count(), 1, "the old endpoint's chain goes:\n{input}");
        // From the kernel's state: everything, and its leftovers deleted.
        let present: BTreeSet<String> = ["SKS-84f3b0-0000000000000000".to_string()].into();
        let input = restore_input("nat", &after, None, &present);
        assert!(input.contains(":SKIFF-SVC-skbr1") && input.contains("-X SKS-84f3b0-0000000000000000"), "{input}");
    }
}
