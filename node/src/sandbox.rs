//! A pod's sandbox: the network, IPC and UTS namespaces its containers share, pinned by bind
//! mounts on files (as CRI-O's pinns does, so no pause process is needed), with the pod's
//! hostname, loopback up and one veth leg on the node's bridge carrying the pod IP (its bridge
//! port in hairpin mode, so the pod can reach itself through a Service).
//!
//! Uses the host's `unshare`, `nsenter` and `ip` (util-linux, iproute2). Every step is
//! idempotent so a restarted daemon can re-run set-up on an existing sandbox, and teardown
//! removes everything set-up made: the veth pair, the namespace mounts and their files.

use crate::error::NodeError;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The node's pod network: a bridge and the CIDR its pods' addresses come from.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    pub bridge: String,
    pub network: Ipv4Addr,
    pub prefix: u8,
    /// The pods' interface MTU when the pod network needs one (VXLAN's is the link's less 50).
    pub mtu: Option<u32>,
}

impl PodNetwork {
    /// Parses `10.244.1.0/24`.
    pub fn parse(bridge: &str, cidr: &str) -> Result<PodNetwork, String> {
        let (addr, prefix) = cidr.split_once('/').ok_or_else(|| format!("pod CIDR {cidr:?}: expected a.b.c.d/n"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("pod CIDR {cidr:?}: {e}"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("pod CIDR {cidr:?}: prefix must be between 8 and 30"))?;
        let mask = u32::MAX << (32 - prefix);
        if bridge.is_empty() || bridge.len() > 15 {
            return Err(format!("bridge name {bridge:?}: must be 1 to 15 characters"));
        }
        Ok(PodNetwork { bridge: bridge.into(), network: Ipv4Addr::from(u32::from(addr) & mask), prefix, mtu: None })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Host addresses a pod may take: everything but the network, gateway and broadcast.
    pub fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix);
        (2..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }
}

fn run(cmd: &mut Command) -> Result<String, NodeError> {
    let out = cmd.output().map_err(|e| NodeError::Sandbox(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NodeError::Sandbox(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Runs `cmd` with `input` on its stdin (shared with the service proxy's iptables-restore).
pub(crate) fn batch(cmd: &mut Command, input: &str) -> Result<(), NodeError> {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| NodeError::Sandbox(format!("{cmd:?}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| NodeError::Sandbox(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NodeError::Sandbox(format!("{cmd:?} with {input:?}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn ip(args: &[&str]) -> Result<String, NodeError> {
    run(Command::new("ip").args(args))
}

#[derive(serde::Deserialize)]
struct LinkJson {
    address: Option<String>,
}

/// The MAC address of link `dev` in this network namespace, `None` if there is no such link.
pub fn link_mac(dev: &str) -> Result<Option<String>, NodeError> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", "dev", dev])
        .output()
        .map_err(|e| NodeError::Sandbox(format!("ip link show {dev}: {e}")))?;
    if !out.status.success() {
        return Ok(None);
    }
    let links: Vec<LinkJson> =
        serde_json::from_slice(&out.stdout).map_err(|e| NodeError::Sandbox(format!("ip link show {dev}: {e}")))?;
    Ok(links.into_iter().next().and_then(|l| l.address))
}

/// Makes `dir` a private mount point, so bind mounts of namespace files under it neither
/// propagate to other mount namespaces nor keep namespaces alive there.
pub fn prepare_ns_root(dir: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(dir)?;
    let canonical = std::fs::canonicalize(dir)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let is_mount = mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(canonical.to_str().unwrap_or("")));
    if !is_mount {
        run(Command::new("mount").arg("--bind").arg(&canonical).arg(&canonical))?;
    }
    run(Command::new("mount").arg("--make-private").arg(&canonical))?;
    Ok(())
}

/// Ensures the node's bridge exists, is up and carries the gateway address.
pub fn ensure_bridge(net: &PodNetwork) -> Result<(), NodeError> {
    if ip(&["link", "show", "dev", &net.bridge]).is_err() {
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
    }
    let gw = format!("{}/{}", net.gateway(), net.prefix);
    if !ip(&["-4", "addr", "show", "dev", &net.bridge])?.contains(&format!("inet {gw}")) {
        ip(&["addr", "add", &gw, "dev", &net.bridge])?;
    }
    // A bridge whose address was never set takes the lowest of its ports' addresses, so a new
    // pod's veth can change the gateway's MAC under every pod's neighbour cache: their packets
    // to the gateway (DNS, services) are then lost until the entry is revalidated, seconds
    // later. Setting the address it has now (which marks it set by userspace) keeps it for good.
    // Read over netlink, not /sys: sysfs shows the network namespace it was mounted in.
    let mac = link_mac(&net.bridge)?.ok_or_else(|| NodeError::Sandbox(format!("bridge {} vanished", net.bridge)))?;
    ip(&["link", "set", "dev", &net.bridge, "address", &mac])?;
    ip(&["link", "set", &net.bridge, "up"])?;
    Ok(())
}

/// `n` /24s of 10.244.0.0/16 (the default cluster CIDR) that no interface on this machine uses
/// yet, from a random start so clusters set up side by side rarely race for the same one.
pub fn free_pod_cidrs(n: usize) -> Result<Vec<String>, NodeError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let used = ip(&["-4", "-o", "addr"])?;
    let start = rand::random::<u8>() as usize;
    let picked: Vec<String> = (0..256)
        .map(|k| (start + k) % 256)
        .filter(|x| !used.contains(&format!("10.244.{x}.")))
        .take(n)
        .map(|x| format!("10.244.{x}.0/24"))
        .collect();
    if picked.len() < n {
        return Err(NodeError::Sandbox(format!("no free /24 left in 10.244.0.0/16 for {n} node(s)")));
    }
    Ok(picked)
}

/// Removes the node's bridge (at reset).
pub fn delete_bridge(name: &str) {
    let _ = ip(&["link", "del", name]);
}

/// One pod's sandbox, rooted at `dir` (under the private namespace root).
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub dir: PathBuf,
    /// Host-side veth name (at most 15 characters, derived from the pod uid).
    pub host_veth: String,
}

impl Sandbox {
    pub fn new(ns_root: &Path, pod_uid: &str) -> Sandbox {
        let hex: String = pod_uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(11).collect();
        Sandbox { dir: ns_root.join(pod_uid), host_veth: format!("skv{hex}") }
    }

    pub fn net(&self) -> PathBuf {
        self.dir.join("net")
    }
    pub fn ipc(&self) -> PathBuf {
        self.dir.join("ipc")
    }
    pub fn uts(&self) -> PathBuf {
        self.dir.join("uts")
    }

    fn pinned(path: &Path) -> bool {
        let Ok(canonical) = std::fs::canonicalize(path) else { return false };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        mountinfo.lines().any(|l| l.split(' ').nth(4) == canonical.to_str())
    }

    /// Creates the namespaces (hostname set, loopback up) unless they already exist.
    pub fn create(&self, hostname: &str) -> Result<(), NodeError> {
        if Self::pinned(&self.net()) && Self::pinned(&self.ipc()) && Self::pinned(&self.uts()) {
            return Ok(());
        }
        self.destroy_namespaces();
        std::fs::create_dir_all(&self.dir)?;
        for f in [self.net(), self.ipc(), self.uts()] {
            std::fs::write(&f, b"")?;
        }
        run(Command::new("unshare")
            .arg(format!("--net={}", self.net().display()))
            .arg(format!("--ipc={}", self.ipc().display()))
            .arg(format!("--uts={}", self.uts().display()))
            .args(["sh", "-c", "hostname \"$0\" && ip link set lo up", hostname]))?;
        Ok(())
    }

    /// Connects the pod to the bridge with `addr`; returns without change if eth0 has it.
    pub fn connect(&self, net: &PodNetwork, addr: Ipv4Addr) -> Result<(), NodeError> {
        let cidr = format!("{addr}/{}", net.prefix);
        let net_ns = format!("--net={}", self.net().display());
        let shown = run(Command::new("nsenter").arg(&net_ns).args(["ip", "-4", "addr", "show", "dev", "eth0"]));
        if shown.is_ok_and(|o| o.contains(&format!("inet {cidr}"))) {
            return Ok(());
        }
        let _ = run(Command::new("nsenter").arg(&net_ns).args(["ip", "link", "del", "eth0"]));
        let _ = ip(&["link", "del", &self.host_veth]);
        // Two processes (`ip -batch`), not one per step: this is on every pod's start path.
        let mtu = net.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
        let in_pod = format!(
            "link add eth0{mtu} type veth peer name {veth}{mtu} netns {me}\naddr add {cidr} dev eth0\nlink set eth0 up\nroute add default via {gw}\n",
            veth = self.host_veth,
            me = std::process::id(),
            gw = net.gateway(),
        );
        batch(Command::new("nsenter").arg(&net_ns).args(["ip", "-batch", "-"]), &in_pod)?;
        // Hairpin: a pod reaching itself through a Service comes back out the port it came in
        // on (bridged, when br_netfilter hands the bridge the DNATed frame), as kubelet's
        // hairpin-veth mode sets. A neighbour entry left by an earlier pod with this address
        // would send its traffic to a MAC that is gone: flushed.
        let on_host = format!(
            "link set {veth} master {br}\nlink set {veth} type bridge_slave hairpin on\nlink set {veth} up\nneigh flush to {addr} dev {br}\n",
            veth = self.host_veth,
            br = net.bridge
        );
        batch(Command::new("ip").args(["-batch", "-"]), &on_host)?;
        Ok(())
    }

    fn destroy_namespaces(&self) {
        for f in [self.net(), self.ipc(), self.uts()] {
            let _ = nix::mount::umount2(&f, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&f);
        }
    }

    /// Removes the veth pair, the namespaces and the sandbox directory.
    pub fn destroy(&self) {
        let _ = ip(&["link", "del", &self.host_veth]);
        self.destroy_namespaces();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_parse_and_hand_out_host_addresses() {
        let n = PodNetwork::parse("skiff1", "10.244.1.7/24").unwrap();
        assert_eq!(n.network, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        let all: Vec<_> = n.pod_addresses().collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 244, 1, 254)));
        assert!(PodNetwork::parse("skiff1", "10.244.1.0").unwrap_err().contains("a.b.c.d/n"));
        assert!(PodNetwork::parse("a-very-long-bridge-name", "10.0.0.0/24").unwrap_err().contains("15"));
    }

    #[test]
    fn veth_names_fit_the_kernel_limit() {
        let s = Sandbox::new(Path::new("/run/x"), "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        assert!(s.host_veth.len() <= 15, "{}", s.host_veth);
    }
}
