//! The node daemons under test: real `skiff node` processes running the API workload's pods as
//! real containers. They live in the host's network namespace (their pods need its bridge and
//! routes) and reach the masters through [`Net::proxy`] ports; the nemesis kills and restarts
//! them, and pauses them past the node grace period so the leader marks them unreachable and
//! evicts their pods.

use crate::net::Net;
use crate::pki::ChaosPki;
use crate::process::Process;
use skiff_proto::pki::Issued;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    root: PathBuf,
    bridge: String,
    node_ip: String,
    pod_cidr: String,
    /// Its client configuration: the masters (through the proxies), its certificate, the CA.
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
    pub async fn start(
        skiff: &Path,
        net: &Net,
        pki: &ChaosPki,
        dir: &Path,
        opts: &NodeOptions,
    ) -> anyhow::Result<Nodes> {
        let tag = net.tag;
        let mut endpoints = Vec::new();
        for i in 0..net.members.len() {
            endpoints.push(net.proxy(i).await?.to_string());
        }
        let cidrs = skiff_node::sandbox::free_pod_cidrs(opts.count)?;
        let mut nodes = Nodes {
            skiff: skiff.to_path_buf(),
            lease_interval_seconds: opts.lease_interval_seconds,
            daemons: Vec::new(),
            image: String::new(),
        };
        for (k, pod_cidr) in cidrs.into_iter().enumerate() {
            let name = format!("chaos-node-{}", k + 1);
            let root = dir.join(&name);
            let store = skiff_node::image::ImageStore::open(root.join("images"))?;
            let image = store
                .import_layout(&opts.image, "")
                .map_err(|e| anyhow::anyhow!("importing {} into {name}: {e}", opts.image.display()))?;
            nodes.image = image.reference;
            // 127.213.0.0/16: the masters' bridge subnet's second octet, on the host's loopback.
            let node_ip = format!("127.213.{}.{}", tag % 250, k + 2);
            // Each node authenticates with a certificate of its own (the Node authorizer's
            // `system:node:<name>`) and serves its logs and metrics over TLS to the masters only.
            let home = dir.join(format!("{name}-pki"));
            skiff_proto::pki::create_private_dir(&home)?;
            let (identity, serving) = pki.node_identity(&home, &name, &node_ip)?;
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
                node_ip,
                config,
                serving,
                ca: pki.ca.clone(),
                log: dir.join(format!("{name}.log")),
                root: std::fs::canonicalize(&root)?,
                name,
                pod_cidr,
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

    /// Starts node `k` (again); its containers, left running by a kill, are adopted.
    pub fn restart(&mut self, k: usize) -> anyhow::Result<()> {
        let lease = self.lease_interval_seconds.to_string();
        let n = &mut self.daemons[k];
        let mut cmd = Command::new(&self.skiff);
        cmd.args(["node", "--name", &n.name, "--bridge", &n.bridge, "--node-ip", &n.node_ip])
            .args(["--pod-cidr", &n.pod_cidr, "--lease-interval-seconds", &lease])
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

    /// Resumes paused daemons and restarts killed ones.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for k in 0..self.len() {
            self.resume(k);
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
            let reset = Command::new(&self.skiff)
                .args(["node", "--reset", "--name", &n.name, "--bridge", &n.bridge, "--pod-cidr", &n.pod_cidr])
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

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop_all();
    }
}
