//! `skiff master`: configuration from flags or a JSON file, listeners, signals.

use anyhow::{bail, Context};
use clap::Args;
use skiff_raft_store::master::ClientTls;
use skiff_raft_store::{MasterConfig, Member};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MasterArgs {
    /// JSON file with the master's configuration (as `skiff up` writes); flags are ignored.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This master's raft id (a positive integer, unique in the cluster, never reused).
    #[arg(long)]
    id: Option<u64>,
    /// Human-readable name (defaults to `master-<id>`).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// host:port of the peer (raft) listener.
    #[arg(long)]
    peer_addr: Option<String>,
    /// host:port of the client (etcd v3 API) listener; loopback only.
    #[arg(long)]
    client_addr: Option<String>,
    /// Founding members, `ID=PEER_ADDR/CLIENT_ADDR` comma-separated. Omit to join a cluster
    /// that added this member with `etcdctl member add`.
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Largest accepted request in bytes (default 1.5 MiB, as etcd).
    #[arg(long)]
    max_request_bytes: Option<usize>,
    /// Deadline for a request, including waiting for a leader, in milliseconds.
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Applied entries between snapshots.
    #[arg(long)]
    snapshot_logs: Option<u64>,
    /// Take a backup of this master's store every this many seconds (k3s'
    /// --etcd-snapshot-schedule-cron), as `etcdctl snapshot save` writes one; 0 = never.
    #[arg(long)]
    snapshot_interval: Option<u64>,
    /// How many scheduled backups to keep (default 5).
    #[arg(long)]
    snapshot_retain: Option<usize>,
    /// Where scheduled backups go (default DATA_DIR/backups).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// Store size past which this master raises etcd's NOSPACE alarm (default 8 GiB).
    #[arg(long)]
    quota_backend_bytes: Option<u64>,
    /// Free space the data directory's filesystem must keep before this master raises the
    /// NOSPACE alarm (default 128 MiB).
    #[arg(long)]
    disk_reserve_bytes: Option<u64>,
    /// PEM certificate of the client listener (with --client-key; add --client-ca for mutual TLS).
    #[arg(long)]
    client_cert: Option<PathBuf>,
    #[arg(long)]
    client_key: Option<PathBuf>,
    /// PEM CA whose certificates clients must present.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Bearer tokens for the Skiff API (`token,user,uid,"group1,group2"` per line). Without it
    /// the API is open, which is only allowed on loopback.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The CIDR Services' cluster IPs come from (Kubernetes' default 10.96.0.0/16).
    #[arg(long)]
    service_cluster_ip_range: Option<String>,
    /// For a new cluster: a file holding the password of the store's `root` user. The etcd
    /// API then has auth on from the cluster's first entry (`etcdctl --user root:…`);
    /// without it auth starts off, as in etcd, until `etcdctl auth enable`.
    #[arg(long)]
    root_password_file: Option<PathBuf>,
    /// Kubernetes' EncryptionConfiguration (aesgcm keys, optionally identity): Secrets are
    /// encrypted at rest with its first key; every listed key still decrypts (rotation).
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// This master's peer certificate (CN member-<id>, DNS member-<id>.peer.skiff), with
    /// --peer-key and --peer-ca: mutual TLS with the other masters. Without them peer traffic
    /// is plaintext, for experiments only.
    #[arg(long)]
    peer_cert: Option<PathBuf>,
    #[arg(long)]
    peer_key: Option<PathBuf>,
    /// The CA that signs every member's peer certificate.
    #[arg(long)]
    peer_ca: Option<PathBuf>,
    /// This master's client certificate for node servers (logs, metrics), with
    /// --kubelet-client-key and --kubelet-certificate-authority (the CA of the nodes' serving
    /// certificates). Without them masters reach nodes in plaintext, forwarding tokens.
    #[arg(long)]
    kubelet_client_certificate: Option<PathBuf>,
    #[arg(long)]
    kubelet_client_key: Option<PathBuf>,
    #[arg(long)]
    kubelet_certificate_authority: Option<PathBuf>,
    /// Whether the node IPAM controller gives each Node without one a pod range of
    /// --cluster-cidr (default true; Nodes registered with --pod-cidr keep theirs).
    #[arg(long)]
    allocate_node_cidrs: Option<bool>,
    /// The range every node's pod range comes from (default 10.244.0.0/16).
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// The prefix length of each node's pod range (default 24).
    #[arg(long)]
    node_cidr_mask_size: Option<u8>,
    /// The cluster CA's certificate and key, with which the certificate controller signs
    /// joining machines' certificate requests (without them nothing is signed).
    #[arg(long)]
    cluster_signing_cert_file: Option<PathBuf>,
    #[arg(long)]
    cluster_signing_key_file: Option<PathBuf>,
}

/// A master's configuration file: the store's settings plus the API's `token_file`, in one
/// JSON object. (Composed by hand: serde's `flatten` cannot read the numeric member-id keys.)
#[derive(Debug, Clone)]
pub struct MasterFile {
    pub master: MasterConfig,
    pub token_file: Option<PathBuf>,
    /// The service CIDR (`"service_cluster_ip_range"`; default 10.96.0.0/16).
    pub service_cluster_ip_range: Option<String>,
    /// Controller settings (`"controllers": {"node_grace_seconds", "pod_eviction_seconds"}`).
    pub controllers: ControllerSettings,
    /// Encryption at rest of Secrets (`"encryption_provider_config"`: an EncryptionConfiguration file).
    pub encryption_provider_config: Option<PathBuf>,
    /// TLS for dialing node servers (`"kubelet_client"`).
    pub kubelet_client: Option<KubeletClient>,
}

/// This master's client certificate for node servers and the CA their serving certificates
/// come from (Kubernetes' --kubelet-client-certificate/-key, --kubelet-certificate-authority).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KubeletClient {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl KubeletClient {
    fn tls(&self) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("kubelet client TLS: {}", p.display()));
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.ca)?))
            .identity(tonic::transport::Identity::from_pem(read(&self.cert)?, read(&self.key)?)))
    }
}

/// Settings of the controllers the leader runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ControllerSettings {
    /// How long a node's Lease may go unrenewed before the node is unreachable (Kubernetes: 40).
    pub node_grace_seconds: u64,
    /// How long pods without a toleration stay on an unreachable node (Kubernetes: 300).
    pub pod_eviction_seconds: u64,
    /// Testing only: the CronJob controller's clock runs this many times as fast as real time.
    #[serde(default = "one")]
    pub cron_clock_speed: u32,
    /// Node IPAM (kube-controller-manager's --allocate-node-cidrs).
    #[serde(default = "yes")]
    pub allocate_node_cidrs: bool,
    #[serde(default = "default_cluster_cidr")]
    pub cluster_cidr: String,
    #[serde(default = "default_node_cidr_mask_size")]
    pub node_cidr_mask_size: u8,
    /// The CA the certificate controller signs with (`None`: it does not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_signing: Option<ClusterSigning>,
}

/// kube-controller-manager's --cluster-signing-cert-file, --cluster-signing-key-file and
/// --cluster-signing-duration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClusterSigning {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How long issued certificates are valid (Kubernetes: a year).
    #[serde(default = "a_year")]
    pub duration_seconds: u64,
}

fn a_year() -> u64 {
    365 * 24 * 3600
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

fn default_cluster_cidr() -> String {
    "10.244.0.0/16".into()
}

fn default_node_cidr_mask_size() -> u8 {
    24
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            node_grace_seconds: 40,
            pod_eviction_seconds: 300,
            cron_clock_speed: 1,
            allocate_node_cidrs: true,
            cluster_cidr: default_cluster_cidr(),
            node_cidr_mask_size: default_node_cidr_mask_size(),
            cluster_signing: None,
        }
    }
}

impl ControllerSettings {
    /// The node IPAM controller's ranges, checked (`None`: allocation is off).
    pub fn pod_ranges(&self) -> anyhow::Result<Option<skiff_scheduler::nodeipam::Ranges>> {
        if !self.allocate_node_cidrs {
            return Ok(None);
        }
        skiff_scheduler::nodeipam::Ranges::new(&self.cluster_cidr, self.node_cidr_mask_size)
            .map(Some)
            .map_err(anyhow::Error::msg)
    }

    /// The certificate controller's signer, its CA read now (`None`: no signing CA given).
    pub fn signer(&self) -> anyhow::Result<Option<std::sync::Arc<skiff_scheduler::certificates::Signer>>> {
        let Some(s) = &self.cluster_signing else { return Ok(None) };
        let ca = skiff_proto::pki::Ca::from_files(&s.cert, &s.key)
            .with_context(|| format!("the cluster signing CA {} / {}", s.cert.display(), s.key.display()))?;
        let duration = std::time::Duration::from_secs(s.duration_seconds.max(600));
        Ok(Some(std::sync::Arc::new(skiff_scheduler::certificates::Signer { ca, duration })))
    }
}

impl MasterFile {
    pub fn parse(text: &str) -> anyhow::Result<MasterFile> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let token_file = v.get("token_file").and_then(|t| t.as_str()).map(PathBuf::from);
        let controllers = match v.get("controllers") {
            Some(c) => serde_json::from_value(c.clone())?,
            None => ControllerSettings::default(),
        };
        let service_cluster_ip_range = v.get("service_cluster_ip_range").and_then(|t| t.as_str()).map(String::from);
        let encryption_provider_config =
            v.get("encryption_provider_config").and_then(|t| t.as_str()).map(PathBuf::from);
        let kubelet_client = v.get("kubelet_client").map(|k| serde_json::from_value(k.clone())).transpose()?;
        Ok(MasterFile {
            kubelet_client,
            master: serde_json::from_value(v)?,
            token_file,
            service_cluster_ip_range,
            controllers,
            encryption_provider_config,
        })
    }

    pub fn to_json(&self) -> anyhow::Result<String> {
        let mut v = serde_json::to_value(&self.master)?;
        if let Some(t) = &self.token_file {
            v["token_file"] = serde_json::json!(t);
        }
        if let Some(r) = &self.service_cluster_ip_range {
            v["service_cluster_ip_range"] = serde_json::json!(r);
        }
        v["controllers"] = serde_json::to_value(&self.controllers)?;
        if let Some(p) = &self.encryption_provider_config {
            v["encryption_provider_config"] = serde_json::json!(p);
        }
        if let Some(k) = &self.kubelet_client {
            v["kubelet_client"] = serde_json::to_value(k)?;
        }
        Ok(serde_json::to_string_pretty(&v)? + "\n")
    }
}

/// The hash of the store's `root` password held in the file at `path` (--root-password-file).
pub fn root_password_hash(path: &std::path::Path) -> anyhow::Result<String> {
    let password = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let password = password.trim();
    if password.is_empty() {
        bail!("--root-password-file {}: the file is empty", path.display());
    }
    Ok(skiff_raft_store::auth::hash_password(password))
}

pub fn parse_initial_cluster(s: &str) -> anyhow::Result<BTreeMap<u64, Member>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (id, addrs) =
            part.split_once('=').with_context(|| format!("--initial-cluster: {part:?} is not ID=PEER/CLIENT"))?;
        let id: u64 = id.parse().with_context(|| format!("--initial-cluster: member id {id:?} is not a number"))?;
        let (peer, client) =
            addrs.split_once('/').with_context(|| format!("--initial-cluster: {part:?} is not ID=PEER/CLIENT"))?;
        out.insert(id, Member { name: format!("master-{id}"), peer_addr: peer.into(), client_addr: client.into() });
    }
    Ok(out)
}

fn build_config(args: MasterArgs) -> anyhow::Result<MasterFile> {
    if let Some(path) = args.config {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return MasterFile::parse(&text).with_context(|| format!("parsing {}", path.display()));
    }
    let token_file = args.token_file.clone();
    let id = args.id.context("--id is required (or --config)")?;
    if id == 0 {
        bail!("--id must be positive");
    }
    let mut config = MasterConfig::new(
        id,
        args.name.unwrap_or_else(|| format!("master-{id}")),
        args.data_dir.context("--data-dir is required")?,
        args.peer_addr.context("--peer-addr is required")?,
        args.client_addr.context("--client-addr is required")?,
    );
    if let Some(s) = args.initial_cluster {
        config.initial_members = parse_initial_cluster(&s)?;
    }
    if let Some(m) = config.initial_members.get_mut(&id) {
        m.name = config.name.clone();
    }
    if let Some(v) = args.max_request_bytes {
        config.max_request_bytes = v;
    }
    if let Some(v) = args.request_timeout_ms {
        config.request_timeout_ms = v;
    }
    if let Some(v) = args.snapshot_logs {
        config.snapshot_logs = v;
    }
    if let Some(v) = args.snapshot_interval {
        config.snapshot_interval_secs = v;
    }
    if let Some(v) = args.snapshot_retain {
        config.snapshot_retain = v;
    }
    config.snapshot_dir = args.snapshot_dir;
    if let Some(v) = args.quota_backend_bytes {
        config.quota_backend_bytes = v;
    }
    if let Some(v) = args.disk_reserve_bytes {
        config.disk_reserve_bytes = v;
    }
    if let Some(path) = &args.root_password_file {
        config.root_password_hash = Some(root_password_hash(path)?);
    }
    config.peer_tls = match (args.peer_cert, args.peer_key, args.peer_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => Some(skiff_raft_store::peer_tls::PeerTls { cert, key, ca }),
        _ => bail!("--peer-cert, --peer-key and --peer-ca go together"),
    };
    config.client_tls = match (args.client_cert, args.client_key, args.client_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), client_ca) => {
            Some(ClientTls { cert, key, client_ca, ca: None, client_cert_optional: false })
        }
        _ => bail!("--client-cert and --client-key go together (--client-ca needs both)"),
    };
    Ok(MasterFile {
        master: config,
        token_file,
        service_cluster_ip_range: args.service_cluster_ip_range,
        controllers: {
            let mut c = ControllerSettings::default();
            if let Some(v) = args.allocate_node_cidrs {
                c.allocate_node_cidrs = v;
            }
            if let Some(v) = args.cluster_cidr {
                c.cluster_cidr = v;
            }
            if let Some(v) = args.node_cidr_mask_size {
                c.node_cidr_mask_size = v;
            }
            c.cluster_signing = match (args.cluster_signing_cert_file, args.cluster_signing_key_file) {
                (None, None) => None,
                (Some(cert), Some(key)) => Some(ClusterSigning { cert, key, duration_seconds: a_year() }),
                _ => bail!("--cluster-signing-cert-file and --cluster-signing-key-file go together"),
            };
            c.pod_ranges()?;
            c
        },
        encryption_provider_config: args.encryption_provider_config,
        kubelet_client: match (
            args.kubelet_client_certificate,
            args.kubelet_client_key,
            args.kubelet_certificate_authority,
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(KubeletClient { cert, key, ca }),
            _ => bail!(
                "--kubelet-client-certificate, --kubelet-client-key and --kubelet-certificate-authority go together"
            ),
        },
    })
}

/// Runs the master configured by the file at `path` (`skiff master --config PATH`).
pub fn run_config(path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serve(MasterFile::parse(&text).with_context(|| format!("parsing {}", path.display()))?)
}

pub fn run(args: MasterArgs) -> anyhow::Result<()> {
    serve(build_config(args)?)
}

fn serve(file: MasterFile) -> anyhow::Result<()> {
    let MasterFile {
        master: config,
        token_file,
        service_cluster_ip_range,
        controllers,
        encryption_provider_config,
        kubelet_client,
    } = file;
    let pod_ranges = controllers.pod_ranges()?;
    let signer = controllers.signer()?;
    let _failpoints = skiff_raft_store::arm_failpoints().map_err(anyhow::Error::msg)?;
    let node_client = kubelet_client.as_ref().map(KubeletClient::tls).transpose()?;
    let tokens = match &token_file {
        Some(path) => Some(skiff_api::auth::TokenFile::open(path).map_err(anyhow::Error::msg)?),
        // A listener that takes client certificates is never open to callers without one.
        None if config.client_tls.as_ref().is_some_and(|t| t.client_ca.is_some()) => {
            Some(skiff_api::auth::TokenFile::none())
        }
        None => None,
    };
    let at_rest = encryption_provider_config
        .as_deref()
        .map(skiff_api::at_rest::AtRest::load)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--encryption-provider-config {e}"))?;
    let service_range = match service_cluster_ip_range {
        Some(r) => skiff_api::allocator::ServiceRange::parse(&r)
            .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?,
        None => Default::default(),
    };
    let client: SocketAddr =
        config.client_addr.parse().with_context(|| format!("client address {:?}", config.client_addr))?;
    if !client.ip().is_loopback() && config.client_tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
        bail!(
            "client listener {} is not on loopback: off loopback clients must present TLS certificates; \
             give --client-cert, --client-key and --client-ca",
            config.client_addr
        );
    }
    if !client.ip().is_loopback() && tokens.is_none() {
        bail!("client listener {} is not on loopback: the Skiff API then needs --token-file", config.client_addr);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let peer_listener = tokio::net::TcpListener::bind(&config.peer_addr)
            .await
            .with_context(|| format!("binding peer listener {}", config.peer_addr))?;
        let client_listener = tokio::net::TcpListener::bind(&config.client_addr)
            .await
            .with_context(|| format!("binding client listener {}", config.client_addr))?;
        let master = skiff_raft_store::Master::open(config.clone()).await?;
        tracing::info!(id = config.id, peer = %config.peer_addr, client = %config.client_addr, "master serving");
        // Controllers stop first, so their watches leave before the servers wait for streams.
        let (stop_scheduler, stop_rx) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            stop_scheduler.send_replace(true);
        };
        // The scheduler runs in every master and acts only while this one leads; it reaches the
        // API like any client, with an identity only this process knows.
        let scheduler_token: String = (0..32).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect();
        let scheduler_user =
            skiff_api::auth::User { name: "system:kube-scheduler".into(), groups: vec!["system:masters".into()] };
        let routes = skiff_api::start(
            master.clone(),
            tokens,
            vec![(scheduler_token.clone(), scheduler_user)],
            service_range,
            at_rest,
            node_client,
        );
        // It reaches the API over in-process connections: no certificate or CA to hold, and
        // nothing a listener that requires client certificates would refuse.
        let (local_listener, local) = skiff_raft_store::local::pair();
        let timeout = std::time::Duration::from_secs(10);
        match skiff_client::Client::over_channel("in-process", local.channel(), &scheduler_token, timeout) {
            Ok(client) => {
                let leader = master.clone();
                // Informers run on every master, so a new leader starts with warm caches; one
                // per kind, shared by every controller here.
                let informers = skiff_scheduler::informers::Informers::start(&client, &stop_rx);
                let store = master.clone();
                let store_revision: std::sync::Arc<dyn Fn() -> i64 + Send + Sync> =
                    std::sync::Arc::new(move || store.sm.mvcc.current_revision());
                let leadership = leader.leadership();
                let held = leadership.clone();
                let leader_term: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync> =
                    std::sync::Arc::new(move || *held.borrow());
                let context = skiff_scheduler::controller::Context {
                    client: client.clone(),
                    leadership,
                    store_revision,
                    events: std::sync::Arc::default(),
                    families: std::sync::Arc::default(),
                    queues: skiff_client::queue::QueueMetrics::register(&master.metrics),
                };
                let settings = skiff_scheduler::controllers::Settings {
                    node_grace: std::time::Duration::from_secs(controllers.node_grace_seconds),
                    pod_eviction: std::time::Duration::from_secs(controllers.pod_eviction_seconds),
                    cron_clock_speed: controllers.cron_clock_speed,
                    pod_ranges,
                    signer,
                };
                skiff_scheduler::controllers::start(&informers, &context, settings, &stop_rx);
                let scheduler = skiff_scheduler::scheduling::Scheduler {
                    client,
                    pods: informers.pods.clone(),
                    nodes: informers.nodes.clone(),
                    leader_term,
                    metrics: skiff_scheduler::scheduling::SchedulerMetrics::register(&master.metrics),
                };
                tokio::spawn(scheduler.run(stop_rx));
            }
            Err(e) => tracing::warn!("scheduler not started: {}", e.message()),
        }
        let local = Some(local_listener);
        if !skiff_raft_store::serve(master.clone(), peer_listener, client_listener, local, Some(routes), shutdown)
            .await?
        {
            bail!("master {} stopped because its raft core failed (see the log above)", config.id);
        }
        anyhow::Ok(())
    })
}
