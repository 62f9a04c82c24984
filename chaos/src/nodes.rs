//! The node daemons under test: real `skiff node` processes running the API workload's pods as
//! real containers, each on a machine of its own — a network namespace on the masters' bridge
//! ([`Machine`]), reaching the masters at their bridge addresses, its pods' range allocated by
//! the masters and the pod network across machines its VXLAN overlay. The nemesis kills and
//! restarts daemons, pauses them past the node grace period so the leader marks them
//! unreachable and evicts their pods, and loses whole machines.

use crate::net::{Machine, Net};
use crate::pki::ChaosPki;
use crate::process::Process;
use skiff_proto::pki::Issued;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How the node daemons are set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub count: usize,
    /// An OCI image layout imported into every node; the workload's pods run it.
    pub image: PathBuf,
    /// How often a node renews its Lease (the masters' grace period is a few of these).
    pub lease_interval_seconds: u64,
}

pub struct NodeDaemon {
    pub name: String,
    /// The machine it runs on (dropped last: it kills what is left on it and removes it).
    machine: Machine,
    root: PathBuf,
    bridge: String,
    /// Its client configuration: the masters, its certificate, the CA.
    config: PathBuf,
    /// Its server's certificate, and the CA whose client certificates (the masters') it takes.
    serving: Issued,
    ca: PathBuf,
    log: PathBuf,
    process: Process,
}

/// Every node daemon of a run (none when the run has no nodes).
#[derive(Default)]
pub struct Nodes {
    skiff: PathBuf,
    lease_interval_seconds: u64,
    pub daemons: Vec<NodeDaemon>,
    /// The reference the imported image goes by, for the pods' `image`.
    pub image: String,
}

impl Nodes {
    /// Imports the image into `opts.count` node state directories under `dir` and starts a
    /// daemon on each. The net's tag keeps bridge names and node addresses apart from other runs'.
    pub fn start(skiff: &Path, net: &Net, pki: &ChaosPki, dir: &Path, opts: &NodeOptions) -> anyhow::Result<Nodes> {
        let tag = net.tag;
        let endpoints: Vec<String> = (0..net.members.len()).map(|i| net.client_addr(i).to_string()).collect();
        let mut nodes = Nodes {
            skiff: skiff.to_path_buf(),
            lease_interval_seconds: opts.lease_interval_seconds,
            daemons: Vec::new(),
            image: String::new(),
        };
        for k in 0..opts.count {
            let name = format!("chaos-node-{}", k + 1);
            let machine = net.add_machine(k)?;
            let root = dir.join(&name);
            let store = skiff_node::image::ImageStore::open(root.join("images"))?;
            let image = store
                .import_layout(&opts.image, "")
                .map_err(|e| anyhow::anyhow!("importing {} into {name}: {e}", opts.image.display()))?;
            nodes.image = image.reference;
            // Each node authenticates with a certificate of its own (the Node authorizer's
            // `system:node:<name>`) and serves its logs and metrics over TLS to the masters only.
            let home = dir.join(format!("{name}-pki"));
            skiff_proto::pki::create_private_dir(&home)?;
            let (identity, serving) = pki.node_identity(&home, &name, &machine.ip.to_string())?;
            let client = serde_json::json!({
                "clusters": [{"name": "chaos", "endpoints": endpoints}],
                "users": [{"name": name, "clientCertificate": identity.cert, "clientKey": identity.key}],
                "ca": pki.ca,
                "contexts": [{"name": "chaos", "cluster": "chaos", "user": name, "namespace": "default"}],
                "currentContext": "chaos",
            });
            let config = home.join("client.json");
            skiff_proto::pki::write_private(&config, serde_json::to_string_pretty(&client)?.as_bytes())?;
            nodes.daemons.push(NodeDaemon {
                bridge: format!("skcn{tag}n{}", k + 1),
                machine,
                config,
                serving,
                ca: pki.ca.clone(),
                log: dir.join(format!("{name}.log")),
                root: std::fs::canonicalize(&root)?,
                name,
                process: Process::default(),
            });
        }
        for k in 0..nodes.daemons.len() {
            nodes.restart(k)?;
        }
        Ok(nodes)
    }

    pub fn len(&self) -> usize {
        self.daemons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.daemons.is_empty()
    }

    /// Starts node `k` (again) on its machine; its containers, left running by a kill, are
    /// adopted. Its pods' range is the one the masters allocated to it.
    pub fn restart(&mut self, k: usize) -> anyhow::Result<()> {
        let lease = self.lease_interval_seconds.to_string();
        let n = &mut self.daemons[k];
        let node_ip = n.machine.ip.to_string();
        let mut cmd = n.machine.command(&self.skiff);
        cmd.args(["node", "--name", &n.name, "--bridge", &n.bridge, "--node-ip", &node_ip])
            .args(["--lease-interval-seconds", &lease])
            .args(["--ingress-http-port", "0", "--ingress-https-port", "0", "--backoff-base-ms", "1000"])
            .arg("--config")
            .arg(&n.config)
            .arg("--tls-cert-file")
            .arg(&n.serving.cert)
            .arg("--tls-private-key-file")
            .arg(&n.serving.key)
            .arg("--client-ca-file")
            .arg(&n.ca)
            .arg("--root-dir")
            .arg(&n.root);
        n.process.start(&mut cmd, &n.log, &format!("node {}", n.name))
    }

    /// SIGKILL of the daemon alone: its containers keep running under their shims.
    pub fn kill(&mut self, k: usize) {
        self.daemons[k].process.kill();
    }

    /// SIGSTOP: the node stops heartbeating (and stops acting on its pods) until resumed.
    pub fn pause(&mut self, k: usize) {
        self.daemons[k].process.pause();
    }

    pub fn resume(&mut self, k: usize) {
        self.daemons[k].process.resume();
    }

    /// Node `k`'s machine is lost, as a power cut leaves it: its cable is pulled, then every
    /// process on it is killed — the daemon, the container shims, and the containers (found by
    /// the node's cgroups, since they live in their pods' namespaces). Its disk (the node's
    /// state directory) stays for when it boots again. Returns how many processes were killed.
    pub fn lose_machine(&mut self, k: usize) -> anyhow::Result<usize> {
        let n = &mut self.daemons[k];
        n.machine.unplug()?;
        n.process.resume();
        let mut killed = std::collections::BTreeSet::new();
        // Until nothing is left: a shim may start a container between two passes.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<i32> = n
                .machine
                .pids()
                .into_iter()
                .chain(cgroup_pids(&n.name))
                .filter(|&p| p != std::process::id() as i32)
                .collect();
            if left.is_empty() {
                break;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("machine {} still runs processes {left:?} after 10 s of SIGKILL", n.machine.name);
            }
            for pid in left {
                if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok() {
                    killed.insert(pid);
                }
            }
            // The daemon is our child: reap it so it leaves the namespace's list.
            n.process.kill();
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(killed.len())
    }

    /// Resumes paused daemons, plugs lost machines back in, and restarts killed daemons.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for k in 0..self.len() {
            self.resume(k);
            self.daemons[k].machine.plug()?;
            self.restart(k)?;
        }
        Ok(())
    }

    /// Ends every daemon, then stops its containers and removes its sandboxes and bridge.
    pub fn stop_all(&mut self) {
        for k in 0..self.len() {
            self.resume(k);
            self.kill(k);
        }
        for n in std::mem::take(&mut self.daemons) {
            let reset = n
                .machine
                .command(&self.skiff)
                .args(["node", "--reset", "--name", &n.name, "--bridge", &n.bridge])
                .arg("--root-dir")
                .arg(&n.root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !reset.is_ok_and(|s| s.success()) {
                tracing::warn!("resetting node {} failed; its containers may still run", n.name);
            }
        }
    }
}

/// The processes in node `name`'s cgroups (its pods' and containers'), in every hierarchy.
fn cgroup_pids(name: &str) -> Vec<i32> {
    fn walk(dir: &Path, out: &mut Vec<i32>) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        walk(&controller.path().join("skiff").join(name), &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop_all();
    }
}
