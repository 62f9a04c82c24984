//! `skiff node` (the node daemon), `skiff shim` (its per-container helper, hidden) and
//! `skiff image import` (into a node's local image store).

use anyhow::{bail, Context};
use clap::Args;
use skiff_node::{NodeConfig, NodeError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_NODE_IP: &str = "127.0.0.1";

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Node name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Client config naming the masters and this node's credentials (as `skiff up` writes).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// State directory: images, pods, logs (default /var/lib/skiff/node/<name>).
    #[arg(long)]
    pub root_dir: Option<PathBuf>,
    /// The node's address (its InternalIP and the pods' hostIP). `skiff join` takes the
    /// address it reaches the server from when this is left at its default.
    #[arg(long, default_value = DEFAULT_NODE_IP)]
    pub node_ip: String,
    /// Extra labels, `key=value,…`.
    #[arg(long, default_value = "")]
    pub node_labels: String,
    /// Taints to register with, `key=value:Effect,…`.
    #[arg(long, default_value = "")]
    pub register_with_taints: String,
    /// The CIDR this node's pod addresses come from. Default: the range the masters' node
    /// IPAM controller allocates to the Node (the daemon waits for it).
    #[arg(long, default_value = "")]
    pub pod_cidr: String,
    /// Every node's pod ranges together: pods reach nothing outside it (and this node's own).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// How this node's pods reach pods on other machines: `vxlan` (an overlay, any network
    /// between the machines) or `host-gw` (routes via the other nodes' addresses, for machines
    /// on one L2 segment). Nodes on loopback addresses set up neither.
    #[arg(long, default_value = "vxlan")]
    pub pod_network: skiff_node::podnet::Backend,
    /// The Services' cluster IP range, as the masters' --service-cluster-ip-range.
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Port of the ingress controller's plain HTTP on the node's address (0: off).
    #[arg(long, default_value_t = 80)]
    pub ingress_http_port: u16,
    /// Port of the ingress controller's HTTPS on the node's address (0: off).
    #[arg(long, default_value_t = 443)]
    pub ingress_https_port: u16,
    /// The node's pod bridge (at most 15 characters; one per node on a machine).
    #[arg(long, default_value = "skiff0")]
    pub bridge: String,
    #[arg(long, default_value_t = 10)]
    pub lease_interval_seconds: u64,
    /// How often the pod loop runs, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub sync_interval_ms: u64,
    /// First restart back-off of a crashing container (Kubernetes: 10 s), doubling per restart.
    #[arg(long, default_value_t = 10_000)]
    pub backoff_base_ms: u64,
    #[arg(long, default_value_t = 300_000)]
    pub backoff_max_ms: u64,
    /// Capacity to advertise instead of the machine's (e.g. `4`, `8Gi`).
    #[arg(long)]
    pub cpu: Option<String>,
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// pids cgroup limit of each container.
    #[arg(long, default_value_t = 4096)]
    pub pids_limit: i64,
    /// Container log size at which it is rotated.
    #[arg(long, default_value_t = 10 << 20)]
    pub log_max_bytes: u64,
    /// Address of the node's log server (masters proxy `skiff logs` to it); default: the
    /// node IP, any free port.
    #[arg(long)]
    pub listen: Option<String>,
    /// A registry (`host:port`) to pull from over plain HTTP (repeatable), e.g. one on loopback.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// A directory of static pod manifests: run without the scheduler, mirrored into the API.
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// The node server's certificate (kubelet's flag): with --tls-private-key-file and
    /// --client-ca-file it serves logs and metrics over TLS to the masters' client
    /// certificate only. Without them it is plaintext and checks forwarded tokens.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// The CA whose client certificates the node server accepts (the cluster CA).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Stop every container this node runs, remove its sandboxes and bridge, and exit.
    #[arg(long)]
    pub reset: bool,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "node".into())
}

pub fn config_of(args: &NodeArgs) -> anyhow::Result<NodeConfig> {
    let name = args.name.clone().unwrap_or_else(hostname);
    let mut labels = BTreeMap::new();
    for kv in args.node_labels.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').with_context(|| format!("--node-labels: {kv:?} is not key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let taints = skiff_node::parse_taints(&args.register_with_taints)
        .map_err(|e| anyhow::anyhow!("--register-with-taints: {e}"))?;
    let root = args.root_dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/skiff/node").join(&name));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(NodeConfig {
        name,
        root: std::fs::canonicalize(&root)?,
        node_ip: args.node_ip.clone(),
        labels,
        taints,
        pod_cidr: args.pod_cidr.clone(),
        bridge: args.bridge.clone(),
        cluster_cidr: args.cluster_cidr.clone(),
        pod_network: args.pod_network,
        pod_mtu: None,
        service_cidr: args.service_cidr.clone(),
        cluster_domain: args.cluster_domain.clone(),
        ingress_http_port: args.ingress_http_port,
        ingress_https_port: args.ingress_https_port,
        lease_interval: Duration::from_secs(args.lease_interval_seconds.max(1)),
        sync_interval: Duration::from_millis(args.sync_interval_ms.max(10)),
        backoff_base: Duration::from_millis(args.backoff_base_ms),
        backoff_max: Duration::from_millis(args.backoff_max_ms),
        cpu: args.cpu.clone(),
        memory: args.memory.clone(),
        max_pods: args.max_pods,
        pids_limit: args.pids_limit,
        log_max_bytes: args.log_max_bytes,
        shim_exe: std::env::current_exe().context("locating the skiff binary")?,
        listen: args.listen.clone().unwrap_or_else(|| format!("{}:0", args.node_ip)),
        log_port: 0,
        insecure_registries: args.insecure_registries.clone(),
        pod_manifest_path: args.pod_manifest_path.clone(),
        server_tls: match (&args.tls_cert_file, &args.tls_private_key_file, &args.client_ca_file) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => {
                Some(skiff_node::ServerTls { cert: cert.clone(), key: key.clone(), client_ca: ca.clone() })
            }
            _ => anyhow::bail!("--tls-cert-file, --tls-private-key-file and --client-ca-file go together"),
        },
    })
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = config_of(&args)?;
    if args.reset {
        skiff_node::reset(&config);
        println!("node {}: containers stopped, sandboxes and bridge {} removed", config.name, config.bridge);
        return Ok(());
    }
    let client_config = skiff_client::ClientConfig::discover(args.config.as_deref())?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let client = skiff_client::Client::new(client_config).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping; containers keep running");
        };
        skiff_node::run(client, config, shutdown).await
    })
}

/// `skiff shim DIR` — not for people: the node daemon runs one per container.
pub fn shim(dir: &Path) -> anyhow::Result<()> {
    std::process::exit(skiff_node::shim::main(dir))
}

#[derive(Args, Debug)]
pub struct ImageImportArgs {
    /// An OCI image layout directory (as scripts/build-test-image writes).
    pub path: PathBuf,
    /// The reference pods name the image by (e.g. `busybox:test`); default: the layout's ref.name.
    #[arg(long, default_value = "")]
    pub tag: String,
    /// Only into this node (default: every node of the cluster in --dir).
    #[arg(long)]
    pub node: Option<String>,
    /// The directory `skiff up` ran in.
    #[arg(long, default_value = ".skiff")]
    pub dir: PathBuf,
    /// A node's state directory to import into directly (instead of the cluster's nodes).
    #[arg(long)]
    pub root_dir: Option<PathBuf>,
}

pub fn image_import(args: ImageImportArgs) -> anyhow::Result<()> {
    let roots: Vec<(String, PathBuf)> = match &args.root_dir {
        Some(r) => vec![(r.display().to_string(), r.clone())],
        None => {
            let cluster = crate::cluster_file::ClusterFile::load(&args.dir)?
                .with_context(|| format!("{} holds no cluster.json (give --root-dir)", args.dir.display()))?;
            let nodes: Vec<_> = cluster
                .nodes
                .iter()
                .filter(|n| args.node.as_deref().is_none_or(|want| want == n.name))
                .map(|n| (n.name.clone(), n.root.clone()))
                .collect();
            if nodes.is_empty() {
                match &args.node {
                    Some(n) => bail!("node {n:?} is not in {}", args.dir.display()),
                    None => bail!("the cluster in {} has no nodes (skiff up --nodes N)", args.dir.display()),
                }
            }
            nodes
        }
    };
    for (name, root) in roots {
        let store = skiff_node::image::ImageStore::open(root.join("images"))?;
        let image =
            store.import_layout(&args.path, &args.tag).map_err(|e: NodeError| anyhow::anyhow!("node {name}: {e}"))?;
        println!("{name}: imported {} ({})", image.reference, image.digest);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ImagePushArgs {
    /// An OCI image layout directory.
    pub path: PathBuf,
    /// Where to push it: `registry/repository:tag`.
    pub target: String,
    /// Speak plain HTTP to the registry (e.g. one on loopback).
    #[arg(long)]
    pub insecure: bool,
}

pub fn image_push(args: ImagePushArgs) -> anyhow::Result<()> {
    let registry = skiff_node::registry::Reference::parse(&args.target).registry;
    let insecure = if args.insecure { vec![registry] } else { Vec::new() };
    let puller = skiff_node::registry::Puller::new(insecure)?;
    let rt = tokio::runtime::Runtime::new()?;
    let digest = rt.block_on(puller.push(&args.path, &args.target))?;
    println!("pushed {} ({digest})", args.target);
    Ok(())
}
