//! The pod network between machines: every other node's pod range is routed to that node, as
//! flannel's backends do.
//!
//! - `vxlan` (the default): one VXLAN device per machine (`skiff.vxlan`, VNI 1, UDP 8472, the
//!   address `<range>.0/32` of each node on the machine). A node publishes the device's MAC in
//!   its Node's annotations; every other node then programs, for each remote range, a route
//!   `range via <range>.0 dev skiff.vxlan onlink`, a permanent neighbour entry `<range>.0 →
//!   MAC` and a forwarding entry `MAC → node address`. The device's MTU (and the pods') is the
//!   underlying link's less the 50 bytes of encapsulation.
//! - `host-gw`: a plain route `range via <node address>`, for nodes on one L2 segment; no
//!   encapsulation, so no MTU cost.
//!
//! Nodes whose address is on this machine (several node daemons on one host, as `skiff up`
//! runs them) need nothing: their bridges' routes are already here. A node on a loopback
//! address can reach no other machine, so it sets nothing up at all.
//!
//! VXLAN carries no authentication: a filter chain ([`VXLAN_CHAIN`]) admits encapsulated
//! packets only from the other nodes' addresses.
//!
//! What is programmed follows the Node objects through the daemon's informer; the routes carry
//! their own protocol number ([`ROUTE_PROTO`]) so the ones no longer wanted are found and
//! removed, after a restart too. `desired` is pure: Nodes in, entries out.

use crate::error::NodeError;
use serde::Deserialize;
use skiff_client::informer::Store;
use skiff_client::Client;
use skiff_proto::api::Node;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// The machine's VXLAN device (flannel's is `flannel.1`).
pub const VXLAN_DEVICE: &str = "skiff.vxlan";
/// The VXLAN network identifier and UDP port: flannel's, and Linux's IANA port is 4789.
const VNI: &str = "1";
pub const VXLAN_PORT: u16 = 8472;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
const VXLAN_OVERHEAD: u32 = 50;
/// The protocol number on the routes this module owns (`ip route … proto 77`).
pub const ROUTE_PROTO: &str = "77";
/// The annotation a node publishes its backend in, and the MAC of its VXLAN device.
pub const BACKEND_ANNOTATION: &str = "skiff.io/pod-network";
pub const VTEP_MAC_ANNOTATION: &str = "skiff.io/vtep-mac";
/// How often everything is re-read from the kernel and re-programmed (entries someone else
/// removed come back), as the service proxy's full sync.
const FULL_SYNC: Duration = Duration::from_secs(60);

/// How pod ranges of other machines are reached (`skiff node --pod-network`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Vxlan,
    HostGw,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "vxlan" => Ok(Backend::Vxlan),
            "host-gw" => Ok(Backend::HostGw),
            other => Err(format!("pod network {other:?}: expected vxlan or host-gw")),
        }
    }
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }
}

/// Another machine's node whose pod range this one routes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub node_ip: Ipv4Addr,
    /// The MAC of its VXLAN device (vxlan only).
    pub vtep_mac: String,
}

/// The remote ranges, each with the node that has it.
pub type Desired = BTreeMap<String, Peer>;

/// The node's InternalIP.
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    let status = node.status.as_ref()?;
    status.addresses.iter().find(|a| a.r#type == "InternalIP").and_then(|a| a.address.parse().ok())
}

/// The network address of a range, `10.244.3.0` of `10.244.3.0/24`.
fn network_of(range: &str) -> Option<Ipv4Addr> {
    let (addr, prefix) = range.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Some(Ipv4Addr::from(u32::from(addr) & mask))
}

/// What this node routes: every other node's range, unless that node is on this machine
/// (`local` holds the machine's addresses) or has not told yet what it needs — its range,
/// its address, and for vxlan its device's MAC. Pure.
pub fn desired(backend: Backend, me: &str, local: &BTreeSet<Ipv4Addr>, nodes: &[Arc<Node>]) -> Desired {
    let mut out = Desired::new();
    for node in nodes {
        let Some(meta) = node.metadata.as_ref() else { continue };
        if meta.name == me || !meta.deletion_timestamp.is_empty() {
            continue;
        }
        let range = node.spec.as_ref().map(|s| s.pod_cidr.as_str()).unwrap_or_default();
        let (Some(network), Some(node_ip)) = (network_of(range), internal_ip(node)) else { continue };
        if local.contains(&node_ip) || node_ip.is_loopback() {
            continue;
        }
        let range = format!("{network}/{}", range.split_once('/').map(|(_, p)| p).unwrap_or("24"));
        let vtep_mac = meta.annotations.get(VTEP_MAC_ANNOTATION).cloned().unwrap_or_default();
        if backend == Backend::Vxlan && vtep_mac.is_empty() {
            continue;
        }
        out.insert(range, Peer { node: meta.name.clone(), node_ip, vtep_mac });
    }
    out
}

/// The `ip -batch` and `bridge -batch` commands that program `desired` over what the kernel
/// has now (`routes`: the ranges routed with [`ROUTE_PROTO`]; `neighbours` and `fdb`: the
/// permanent entries on the VXLAN device). Pure.
pub fn commands(backend: Backend, desired: &Desired, present: &Present) -> (String, String) {
    let (mut ip, mut bridge) = (String::new(), String::new());
    let dev = VXLAN_DEVICE;
    let wanted_neighbours: BTreeMap<String, &str> = desired
        .iter()
        .filter(|_| backend == Backend::Vxlan)
        .filter_map(|(range, p)| Some((network_of(range)?.to_string(), p.vtep_mac.as_str())))
        .collect();
    // Per MAC one destination: nodes sharing a machine share its device (any of their
    // addresses reaches it).
    let wanted_fdb: BTreeMap<&str, Ipv4Addr> =
        desired.values().filter(|_| backend == Backend::Vxlan).map(|p| (p.vtep_mac.as_str(), p.node_ip)).collect();
    for (mac, dst) in &wanted_fdb {
        if present.fdb.get(*mac) != Some(dst) {
            bridge += &format!("fdb replace {mac} dev {dev} dst {dst} self permanent\n");
        }
    }
    for (addr, mac) in &wanted_neighbours {
        if present.neighbours.get(addr).map(String::as_str) != Some(*mac) {
            ip += &format!("neigh replace {addr} lladdr {mac} dev {dev} nud permanent\n");
        }
    }
    for (range, p) in desired {
        let route = match backend {
            Backend::Vxlan => match network_of(range) {
                Some(gw) => format!("{range} via {gw} dev {dev} onlink"),
                None => continue,
            },
            Backend::HostGw => format!("{range} via {}", p.node_ip),
        };
        if present.routes.get(range) != Some(&route) {
            ip += &format!("route replace {route} proto {ROUTE_PROTO}\n");
        }
    }
    for range in present.routes.keys().filter(|r| !desired.contains_key(*r)) {
        ip += &format!("route del {range} proto {ROUTE_PROTO}\n");
    }
    for addr in present.neighbours.keys().filter(|a| !wanted_neighbours.contains_key(*a)) {
        ip += &format!("neigh del {addr} dev {dev}\n");
    }
    for (mac, dst) in present.fdb.iter().filter(|(m, _)| !wanted_fdb.contains_key(m.as_str())) {
        bridge += &format!("fdb del {mac} dev {dev} dst {dst} self\n");
    }
    (ip, bridge)
}

/// What the kernel has of this module's entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Present {
    /// Range → the route as `commands` writes it (`R via G dev D onlink` / `R via G`).
    pub routes: BTreeMap<String, String>,
    /// Permanent neighbour entries on the device: address → MAC.
    pub neighbours: BTreeMap<String, String>,
    /// Forwarding entries with a destination on the device: MAC → remote address.
    pub fdb: BTreeMap<String, Ipv4Addr>,
}

#[derive(Deserialize)]
struct RouteJson {
    dst: String,
    gateway: Option<String>,
    dev: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
}

#[derive(Deserialize)]
struct NeighJson {
    dst: String,
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

#[derive(Deserialize)]
struct FdbJson {
    mac: String,
    dst: Option<String>,
}

#[derive(Deserialize)]
struct LinkJson {
    ifname: String,
    mtu: u32,
    #[serde(default)]
    addr_info: Vec<AddrJson>,
}

#[derive(Deserialize)]
struct AddrJson {
    family: String,
    local: String,
}

fn command(cmd: &str, args: &[&str]) -> Result<String, NodeError> {
    let out = Command::new(cmd).args(args).output().map_err(|e| NodeError::Sandbox(format!("{cmd}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NodeError::Sandbox(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn json<T: serde::de::DeserializeOwned>(cmd: &str, args: &[&str]) -> Result<Vec<T>, NodeError> {
    let text = command(cmd, args)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).map_err(|e| NodeError::Sandbox(format!("{cmd} {}: {e}", args.join(" "))))
}

/// The machine's IPv4 links with their addresses.
fn links() -> Result<Vec<LinkJson>, NodeError> {
    json("ip", &["-j", "-4", "addr", "show"])
}

/// Every IPv4 address of this machine.
pub fn local_addresses() -> Result<BTreeSet<Ipv4Addr>, NodeError> {
    Ok(links()?
        .iter()
        .flat_map(|l| &l.addr_info)
        .filter(|a| a.family == "inet")
        .filter_map(|a| a.local.parse().ok())
        .collect())
}

/// This module's entries in the kernel now.
pub fn present(backend: Backend) -> Result<Present, NodeError> {
    let mut p = Present::default();
    for r in json::<RouteJson>("ip", &["-j", "-4", "route", "show", "proto", ROUTE_PROTO])? {
        let Some(gw) = r.gateway else { continue };
        let route = match r.dev.as_deref() {
            Some(VXLAN_DEVICE) if r.flags.iter().any(|f| f == "onlink") => {
                format!("{} via {gw} dev {VXLAN_DEVICE} onlink", r.dst)
            }
            _ => format!("{} via {gw}", r.dst),
        };
        p.routes.insert(r.dst, route);
    }
    if backend == Backend::Vxlan && device_exists() {
        for n in json::<NeighJson>("ip", &["-j", "-4", "neigh", "show", "dev", VXLAN_DEVICE, "nud", "permanent"])? {
            if let Some(mac) = n.lladdr.filter(|_| n.state.iter().any(|s| s == "PERMANENT")) {
                p.neighbours.insert(n.dst, mac);
            }
        }
        for f in json::<FdbJson>("bridge", &["-j", "fdb", "show", "dev", VXLAN_DEVICE])? {
            if let Some(dst) = f.dst.and_then(|d| d.parse().ok()) {
                p.fdb.insert(f.mac, dst);
            }
        }
    }
    Ok(p)
}

fn device_exists() -> bool {
    crate::sandbox::link_mac(VXLAN_DEVICE).is_ok_and(|m| m.is_some())
}

/// What set-up found or made: the MTU pods get, and for vxlan the device's MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    pub mtu: u32,
    pub vtep_mac: Option<String>,
}

/// Makes the machine ready for `backend` for a node at `node_ip` with `pod_cidr`: for vxlan
/// the device (shared by the nodes of this machine), up, with the range's network address.
/// `None` when the node is on a loopback address: no other machine can reach it.
pub fn set_up(backend: Backend, node_ip: &str, pod_cidr: &str) -> Result<Option<Setup>, NodeError> {
    let ip: Ipv4Addr = node_ip.parse().map_err(|e| NodeError::Sandbox(format!("node address {node_ip:?}: {e}")))?;
    if ip.is_loopback() {
        return Ok(None);
    }
    let links = links()?;
    let link = links
        .iter()
        .find(|l| l.addr_info.iter().any(|a| a.local == node_ip))
        .ok_or_else(|| NodeError::Sandbox(format!("no interface of this machine has the node address {node_ip}")))?;
    if backend == Backend::HostGw {
        return Ok(Some(Setup { mtu: link.mtu, vtep_mac: None }));
    }
    let mtu = link.mtu.saturating_sub(VXLAN_OVERHEAD);
    if !device_exists() {
        let created = command(
            "ip",
            &[
                "link",
                "add",
                VXLAN_DEVICE,
                "type",
                "vxlan",
                "id",
                VNI,
                "dstport",
                &VXLAN_PORT.to_string(),
                "dev",
                &link.ifname,
                "nolearning",
            ],
        );
        // Another node of this machine may create it at the same moment.
        if let Err(e) = created {
            if !device_exists() {
                return Err(NodeError::Sandbox(format!("creating {VXLAN_DEVICE}: {e}")));
            }
        }
    }
    let network = network_of(pod_cidr).ok_or_else(|| NodeError::Sandbox(format!("pod range {pod_cidr:?}")))?;
    command("ip", &["link", "set", VXLAN_DEVICE, "mtu", &mtu.to_string(), "up"])?;
    command("ip", &["addr", "replace", &format!("{network}/32"), "dev", VXLAN_DEVICE])?;
    let mac = crate::sandbox::link_mac(VXLAN_DEVICE)?
        .ok_or_else(|| NodeError::Sandbox(format!("{VXLAN_DEVICE} vanished while being set up")))?;
    Ok(Some(Setup { mtu, vtep_mac: Some(mac) }))
}

/// The filter chain that admits VXLAN packets from the cluster's other machines only.
pub const VXLAN_CHAIN: &str = "SKIFF-VXLAN";

/// The `iptables-restore` input for [`VXLAN_CHAIN`]: encapsulated packets from the other
/// nodes' addresses pass, any others are dropped before the device decapsulates them into the
/// pod network. (VXLAN has no authentication of its own; a spoofed source still passes, so
/// machines on an untrusted network need an encrypted link.) Pure.
pub fn vxlan_filter(desired: &Desired) -> String {
    let peers: BTreeSet<Ipv4Addr> = desired.values().map(|p| p.node_ip).collect();
    let mut input = format!("*filter\n:{VXLAN_CHAIN} - [0:0]\n");
    for ip in peers {
        input += &format!("-A {VXLAN_CHAIN} -s {ip}/32 -j RETURN\n");
    }
    input += &format!("-A {VXLAN_CHAIN} -j DROP\nCOMMIT\n");
    input
}

/// Programs `desired` over what the kernel has.
pub fn program(backend: Backend, desired: &Desired) -> Result<(), NodeError> {
    if backend == Backend::Vxlan {
        crate::sandbox::batch(Command::new("iptables-restore").args(["--noflush", "-w", "5"]), &vxlan_filter(desired))?;
        let port = VXLAN_PORT.to_string();
        crate::hostport::ensure("filter", "INPUT", &["-p", "udp", "--dport", &port, "-j", VXLAN_CHAIN], true)?;
    }
    let (ip, bridge) = commands(backend, desired, &present(backend)?);
    // Forwarding entries first: a route is only used once its neighbour and MAC resolve.
    if !bridge.is_empty() {
        crate::sandbox::batch(Command::new("bridge").args(["-batch", "-"]), &bridge)?;
    }
    if !ip.is_empty() {
        crate::sandbox::batch(Command::new("ip").args(["-batch", "-"]), &ip)?;
    }
    Ok(())
}

/// Puts the backend and (vxlan) the device's MAC in this node's annotations, where the other
/// nodes' informers find them.
pub async fn publish(client: &Client, node: &str, backend: Backend, setup: &Setup) -> Result<(), tonic::Status> {
    crate::heartbeat::update_node(client, node, |n| {
        let meta = n.metadata.get_or_insert_with(Default::default);
        let mut want = BTreeMap::from([(BACKEND_ANNOTATION.to_string(), backend.name().to_string())]);
        if let Some(mac) = &setup.vtep_mac {
            want.insert(VTEP_MAC_ANNOTATION.to_string(), mac.clone());
        }
        let changed = want.iter().any(|(k, v)| meta.annotations.get(k) != Some(v));
        meta.annotations.extend(want);
        changed
    })
    .await
}

/// Follows the Nodes until `stop`, keeping the routes to the other machines' ranges as they say.
pub async fn run(nodes: Store<Node>, backend: Backend, me: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let watch = crate::informers::wake_on_changes(&nodes, &changed);
    tokio::select! {
        () = nodes.synced() => {}
        _ = stop.changed() => { watch.abort(); return }
    }
    let mut programmed: Option<Desired> = None;
    let mut local = BTreeSet::new();
    let mut last_full: Option<std::time::Instant> = None;
    loop {
        if last_full.is_none_or(|t| t.elapsed() >= FULL_SYNC) {
            match crate::blocking(local_addresses) {
                Ok(a) => local = a,
                Err(e) => tracing::warn!("pod network: reading this machine's addresses: {e}"),
            }
            programmed = None;
            last_full = Some(std::time::Instant::now());
        }
        let wanted = desired(backend, &me, &local, &nodes.list());
        if programmed.as_ref() != Some(&wanted) {
            match crate::blocking(|| program(backend, &wanted)) {
                Ok(()) => {
                    tracing::info!("pod network ({}): {} remote ranges", backend.name(), wanted.len());
                    programmed = Some(wanted);
                }
                Err(e) => tracing::warn!("pod network ({}): {e}", backend.name()),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(if programmed.is_some() { crate::proxy::SYNC_INTERVAL } else { Duration::from_secs(1) }) => {}
            _ = changed.notified() => {}
            _ = stop.changed() => break,
        }
    }
    watch.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{NodeAddress, NodeSpec, NodeStatus, ObjectMeta};

    fn node(name: &str, range: &str, ip: &str, mac: Option<&str>) -> Arc<Node> {
        let mut meta = ObjectMeta { name: name.into(), ..Default::default() };
        if let Some(mac) = mac {
            meta.annotations.insert(VTEP_MAC_ANNOTATION.into(), mac.into());
        }
        Arc::new(Node {
            metadata: Some(meta),
            spec: Some(NodeSpec { pod_cidr: range.into(), ..Default::default() }),
            status: Some(NodeStatus {
                addresses: vec![NodeAddress { r#type: "InternalIP".into(), address: ip.into() }],
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn local() -> BTreeSet<Ipv4Addr> {
        BTreeSet::from([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9)])
    }

    #[test]
    fn only_other_machines_with_a_range_an_address_and_a_vtep_are_routed() {
        let nodes = vec![
            node("me", "10.244.0.0/24", "10.0.0.1", Some("aa:aa:aa:aa:aa:01")),
            node("same-machine", "10.244.1.0/24", "10.0.0.9", Some("aa:aa:aa:aa:aa:01")),
            node("b", "10.244.2.0/24", "10.0.0.2", Some("aa:aa:aa:aa:aa:02")),
            node("no-range", "", "10.0.0.3", Some("aa:aa:aa:aa:aa:03")),
            node("no-vtep-yet", "10.244.4.0/24", "10.0.0.4", None),
            node("on-loopback", "10.244.5.0/24", "127.0.0.5", Some("aa:aa:aa:aa:aa:05")),
        ];
        let vx = desired(Backend::Vxlan, "me", &local(), &nodes);
        assert_eq!(vx.keys().collect::<Vec<_>>(), ["10.244.2.0/24"]);
        assert_eq!(vx["10.244.2.0/24"].node_ip, Ipv4Addr::new(10, 0, 0, 2));
        let gw = desired(Backend::HostGw, "me", &local(), &nodes);
        assert_eq!(gw.keys().collect::<Vec<_>>(), ["10.244.2.0/24", "10.244.4.0/24"], "host-gw needs no VTEP");
    }

    #[test]
    fn commands_add_what_is_missing_and_remove_what_is_no_longer_wanted() {
        let nodes = vec![
            node("b", "10.244.2.0/24", "10.0.0.2", Some("aa:aa:aa:aa:aa:02")),
            node("c", "10.244.3.0/24", "10.0.0.3", Some("aa:aa:aa:aa:aa:03")),
        ];
        let want = desired(Backend::Vxlan, "me", &local(), &nodes);
        let (ip, bridge) = commands(Backend::Vxlan, &want, &Present::default());
        assert_eq!(
            bridge,
            "fdb replace aa:aa:aa:aa:aa:02 dev skiff.vxlan dst 10.0.0.2 self permanent\n\
             fdb replace aa:aa:aa:aa:aa:03 dev skiff.vxlan dst 10.0.0.3 self permanent\n"
        );
        assert!(
            ip.contains("neigh replace 10.244.2.0 lladdr aa:aa:aa:aa:aa:02 dev skiff.vxlan nud permanent\n"),
            "{ip}"
        );
        assert!(ip.contains("route replace 10.244.3.0/24 via 10.244.3.0 dev skiff.vxlan onlink proto 77\n"), "{ip}");

        // c is gone, a stale route and neighbour of a node long deleted are still there; b's
        // entries are already right and are not rewritten.
        let present = Present {
            routes: BTreeMap::from([
                ("10.244.2.0/24".into(), "10.244.2.0/24 via 10.244.2.0 dev skiff.vxlan onlink".into()),
                ("10.244.9.0/24".into(), "10.244.9.0/24 via 10.244.9.0 dev skiff.vxlan onlink".into()),
            ]),
            neighbours: BTreeMap::from([
                ("10.244.2.0".into(), "aa:aa:aa:aa:aa:02".into()),
                ("10.244.9.0".into(), "aa:aa:aa:aa:aa:09".into()),
            ]),
            fdb: BTreeMap::from([
                ("aa:aa:aa:aa:aa:02".into(), Ipv4Addr::new(10, 0, 0, 2)),
                ("aa:aa:aa:aa:aa:09".into(), Ipv4Addr::new(10, 0, 0, 9)),
            ]),
        };
        let only_b = desired(Backend::Vxlan, "me", &local(), &nodes[..1]);
        let (ip, bridge) = commands(Backend::Vxlan, &only_b, &present);
        assert_eq!(ip, "route del 10.244.9.0/24 proto 77\nneigh del 10.244.9.0 dev skiff.vxlan\n");
        assert_eq!(bridge, "fdb del aa:aa:aa:aa:aa:09 dev skiff.vxlan dst 10.0.0.9 self\n");
    }

    #[test]
    fn host_gw_routes_via_the_node_address_and_touches_no_device() {
        let nodes = vec![node("b", "10.244.2.0/24", "10.0.0.2", None)];
        let want = desired(Backend::HostGw, "me", &local(), &nodes);
        let (ip, bridge) = commands(Backend::HostGw, &want, &Present::default());
        assert_eq!(ip, "route replace 10.244.2.0/24 via 10.0.0.2 proto 77\n");
        assert!(bridge.is_empty());
    }

    #[test]
    fn only_the_other_machines_may_send_vxlan_packets() {
        let nodes = vec![
            node("b", "10.244.2.0/24", "10.0.0.2", Some("aa:aa:aa:aa:aa:02")),
            node("b2", "10.244.3.0/24", "10.0.0.2", Some("aa:aa:aa:aa:aa:02")),
            node("c", "10.244.4.0/24", "10.0.0.3", Some("aa:aa:aa:aa:aa:03")),
        ];
        let want = desired(Backend::Vxlan, "me", &local(), &nodes);
        assert_eq!(
            vxlan_filter(&want),
            "*filter\n:SKIFF-VXLAN - [0:0]\n-A SKIFF-VXLAN -s 10.0.0.2/32 -j RETURN\n\
             -A SKIFF-VXLAN -s 10.0.0.3/32 -j RETURN\n-A SKIFF-VXLAN -j DROP\nCOMMIT\n"
        );
        assert!(vxlan_filter(&Desired::new()).contains("-A SKIFF-VXLAN -j DROP"), "no peers: nothing passes");
    }

    #[test]
    fn backends_parse_by_name() {
        assert_eq!("vxlan".parse::<Backend>(), Ok(Backend::Vxlan));
        assert_eq!("host-gw".parse::<Backend>(), Ok(Backend::HostGw));
        assert!("udp".parse::<Backend>().unwrap_err().contains("vxlan or host-gw"));
    }
}
