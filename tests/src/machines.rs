//! "Machines" for tests of clusters that span several: each is a network namespace the test
//! creates, with its own address on a bridge the test creates and nothing on loopback. The
//! test's own namespace has an address on that bridge too: it is the operator's workstation,
//! the client outside the cluster.
//!
//! Processes enter a machine with `nsenter --net` only (not `ip netns exec`, which also gives
//! them a mount namespace with a /sys of their own, hiding the cgroup mounts a node daemon
//! needs): a machine shares the test's file system, as the node daemons of `skiff up` do.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use skiff_chaos::net::Machine;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Tells the LANs of tests running at once apart (with the process id).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bridge, the test's address on it, and the machines plugged into it.
pub struct Lan {
    bridge: String,
    /// The test's own address on the bridge (`.1`).
    pub host_ip: Ipv4Addr,
    pub machines: Vec<Machine>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2) is installed");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Lan {
    /// `n` machines on a fresh /24 of 10.214.0.0/16: the test is `.1`, machine `i` is `.(i+2)`.
    pub fn create(n: usize) -> Lan {
        crate::require_root();
        let k = (std::process::id() + NEXT.fetch_add(1, Ordering::SeqCst)) % 250;
        let tag = format!("{}{}", std::process::id() % 10_000, NEXT.load(Ordering::SeqCst));
        let mut lan =
            Lan { bridge: format!("skl{tag}"), host_ip: Ipv4Addr::new(10, 214, k as u8, 1), machines: vec![] };
        // From here on Drop removes whatever was made if a step fails.
        ip(&["link", "add", &lan.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", lan.host_ip), "dev", &lan.bridge]);
        ip(&["link", "set", &lan.bridge, "up"]);
        for i in 0..n {
            let ip = Ipv4Addr::new(10, 214, k as u8, (i + 2) as u8);
            let machine = Machine::plug_in(&lan.bridge, format!("skm{tag}-{i}"), format!("skm{tag}c{i}"), ip)
                .expect("a machine plugged into the LAN");
            lan.machines.push(machine);
        }
        lan
    }

    /// A command that runs `program` on machine `i`.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.machines[i].command(program)
    }

    /// Runs `program args…` on machine `i`; its output.
    pub fn run(&self, i: usize, program: &str, args: &[&str]) -> std::process::Output {
        self.command(i, program).args(args).output().expect("nsenter (util-linux) is installed")
    }

    /// Machine `i` dies: its cable is pulled and every process in it is killed.
    pub fn kill_machine(&self, i: usize) {
        self.machines[i].unplug().expect("pulling a machine's cable");
        for pid in self.machines[i].pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Each machine kills what runs in it and removes itself; then the bridge goes.
        self.machines.clear();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

/// A node daemon joined on one machine; stopped, and its containers and bridge removed, when
/// dropped.
pub struct NodeMachine {
    ns: String,
    /// Its machine's index on the LAN.
    pub index: usize,
    pub name: String,
    pub root: std::path::PathBuf,
    pub log: std::path::PathBuf,
    child: std::process::Child,
}

impl Drop for NodeMachine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(crate::skiff_bin())
            .args(["node", "--reset", "--name", &self.name])
            .arg("--root-dir")
            .arg(&self.root)
            .output();
    }
}

/// A master that joined on one machine (`skiff join --control-plane`); stopped when dropped.
pub struct MasterMachine {
    /// Its machine's index on the LAN.
    pub index: usize,
    pub name: String,
    /// Its directory (config.json, pki/, data/, client.json).
    pub dir: std::path::PathBuf,
    pub log: std::path::PathBuf,
    child: std::process::Child,
}

impl Drop for MasterMachine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster on a LAN: machine 0 runs the first master (`skiff up --advertise-address`, as an
/// operator starts the first machine), the next machines join as masters with `skiff join
/// --control-plane`, then the node machines join with `skiff join` and a token from `skiff
/// token create --print-join-command`; spare machines stay empty. Fields drop in order: the
/// nodes, the masters, then the LAN.
pub struct LanCluster {
    pub nodes: Vec<NodeMachine>,
    pub masters: Vec<MasterMachine>,
    pub cluster: crate::Cluster,
    pub lan: Lan,
}

impl LanCluster {
    /// `masters` master machines, `nodes` node machines (`machine-1`…) with `image` imported
    /// as `reference`, and `spare` empty machines; `up` and `join` are extra flags for `skiff
    /// up` and each node's `skiff join`. The test's client config names every master.
    pub fn start(
        masters: usize,
        nodes: usize,
        spare: usize,
        up: &[&str],
        join: &[&str],
        image: &std::path::Path,
        reference: &str,
    ) -> LanCluster {
        let lan = Lan::create(masters + nodes + spare);
        let dir = tempfile::Builder::new().prefix("skiff-machines-").tempdir().expect("temp dir");
        let master_ip = lan.machines[0].ip.to_string();
        let out = lan
            .command(0, crate::skiff_bin())
            .arg("up")
            .arg("--dir")
            .arg(dir.path())
            .args(["--masters", "1", "--advertise-address", &master_ip, "--timeout", "60"])
            .args(up)
            .output()
            .expect("run skiff up");
        let cluster = crate::Cluster::adopt_or_clean_up(dir);
        assert!(out.status.success(), "skiff up: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(cluster.masters[0].api, format!("{master_ip}:2379"), "the master listens on its machine's address");
        let mut lc = LanCluster { nodes: Vec::new(), masters: Vec::new(), cluster, lan };
        for i in 1..masters {
            let config = lc.cluster.dir.path().join("master-1/config.json");
            lc.join_master(0, &config, i);
        }
        let line = lc.cluster.ctl_ok(&["token", "create", "--print-join-command"]);
        let (server, token, hash) = crate::join_flags(&line);
        assert_eq!(server, format!("https://{master_ip}:2379"), "{line}");
        for k in 1..=nodes {
            let i = masters + k - 1;
            let name = format!("machine-{k}");
            let root = lc.cluster.dir.path().join(&name);
            let (image, root_s) = (image.to_str().expect("utf-8 path"), root.to_str().expect("utf-8 path"));
            lc.cluster.ctl_ok(&["image", "import", image, "--tag", reference, "--root-dir", root_s]);
            let log = lc.cluster.dir.path().join(format!("{name}.log"));
            let file = std::fs::File::create(&log).expect("node log");
            let child = lc
                .lan
                .command(i, crate::skiff_bin())
                .args(["join", "--server", &server, "--token", &token, "--ca-cert-hash", &hash])
                .args(["--name", &name, "--node-ip", &lc.lan.machines[i].ip.to_string(), "--root-dir", root_s])
                .args(join)
                .stdout(file.try_clone().expect("node log"))
                .stderr(file)
                .spawn()
                .expect("run skiff join");
            lc.nodes.push(NodeMachine { ns: lc.lan.machines[i].name.clone(), index: i, name, root, log, child });
        }
        lc
    }

    /// Machine `i` joins as a master with a control-plane token made on machine `from` from
    /// the master configuration `config` there; waits until it is a voting member, and adds
    /// it to the test's client config.
    pub fn join_master(&mut self, from: usize, config: &std::path::Path, i: usize) {
        let client = self.cluster.dir.path().join("client.json");
        let out = self
            .lan
            .command(from, crate::skiff_bin())
            .env("SKIFF_CONFIG", &client)
            .args(["token", "create", "--print-join-command", "--control-plane", "--master-config"])
            .arg(config)
            .output()
            .expect("run skiff token create");
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "skiff token create --control-plane: {}", String::from_utf8_lossy(&out.stderr));
        let (server, token, hash) = crate::join_flags(&line);
        let words: Vec<&str> = line.split_whitespace().collect();
        let key =
            words.iter().position(|w| *w == "--certificate-key").map(|p| words[p + 1]).expect("a certificate key");
        assert!(words.contains(&"--control-plane"), "{line}");
        let name = format!("master-machine-{i}");
        let dir = self.cluster.dir.path().join(&name);
        let log = self.cluster.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("master log");
        let child = self
            .lan
            .command(i, crate::skiff_bin())
            .args(["join", "--control-plane", "--server", &server, "--token", &token, "--ca-cert-hash", &hash])
            .args(["--certificate-key", key, "--name", &name, "--dir"])
            .arg(&dir)
            .stdout(file.try_clone().expect("master log"))
            .stderr(file)
            .spawn()
            .expect("run skiff join --control-plane");
        let addr = format!("{}:2379", self.lan.machines[i].ip);
        crate::register_ca(&addr, &self.cluster.dir.path().join("pki/ca.crt"));
        self.masters.push(MasterMachine { index: i, name: name.clone(), dir, log: log.clone(), child });
        crate::wait_for_showing(
            std::time::Duration::from_secs(90),
            &format!("{name} a voting member"),
            || std::fs::read_to_string(&log).unwrap_or_default(),
            || self.voters().contains(&name).then_some(()),
        );
        // The workstation's config learns the new master from the cluster, as the README says.
        let out = Command::new(crate::skiff_bin())
            .args(["config", "sync-endpoints", "--config"])
            .arg(&client)
            .output()
            .expect("run skiff config sync-endpoints");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "skiff config sync-endpoints: {}", String::from_utf8_lossy(&out.stderr));
        assert!(said.contains(&addr) && self.endpoints().split(',').any(|e| e == addr), "{name} at {addr}: {said}");
    }

    /// The addresses of every master that runs, for etcdctl.
    pub fn endpoints(&self) -> String {
        let client = std::fs::read_to_string(self.cluster.dir.path().join("client.json")).expect("client.json");
        let v: serde_json::Value = serde_json::from_str(&client).expect("client.json is JSON");
        let all = v["clusters"][0]["endpoints"].as_array().expect("endpoints");
        all.iter().filter_map(|e| e.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The names of the store's voting members, as `etcdctl member list` reports them from
    /// whichever master answers.
    pub fn voters(&self) -> Vec<String> {
        let out = self.cluster.etcdctl(&self.endpoints(), &["member", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["isLearner"] != true)
            .filter_map(|m| m["name"].as_str().map(String::from))
            .collect()
    }

    /// Every node's log, for failure messages.
    pub fn node_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.name, std::fs::read_to_string(&n.log).unwrap_or_default()))
            .collect()
    }

    /// Waits until every node is Ready with a pod range (and, unless `host_gw`, its VXLAN
    /// device's MAC published); node name → pod range.
    pub fn wait_ready(&self, timeout: std::time::Duration, vtep: bool) -> std::collections::BTreeMap<String, String> {
        crate::wait_for_showing(
            timeout,
            "every machine Ready with a pod range",
            || self.node_logs(),
            || {
                let mut ranges = std::collections::BTreeMap::new();
                for n in &self.nodes {
                    let node = self.cluster.get_json("nodes", &n.name)?;
                    let ready = node["status"]["conditions"]
                        .as_array()?
                        .iter()
                        .any(|k| k["type"] == "Ready" && k["status"] == "True");
                    let range = node["spec"]["podCIDR"].as_str().unwrap_or_default().to_string();
                    let mac = node["metadata"]["annotations"]["skiff.io/vtep-mac"].as_str().unwrap_or_default();
                    (ready && !range.is_empty() && (!vtep || !mac.is_empty())).then_some(())?;
                    ranges.insert(n.name.clone(), range);
                }
                Some(ranges)
            },
        )
    }
}
