//! `skiff up` / `skiff down`: a local cluster as background processes on free loopback ports.

use crate::cluster_file::{process_alive, ClusterFile, MasterEntry, NodeEntry};
use crate::master_cmd::MasterFile;
use anyhow::{bail, Context};
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::StatusRequest;
use skiff_raft_store::master::ClientTls;
use skiff_raft_store::{MasterConfig, Member};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Directory holding the cluster's data, configs, logs and cluster.json.
    #[arg(long)]
    dir: PathBuf,
    /// Number of masters (3 or 5 for a cluster that survives failures).
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// Number of node daemons to run beside the masters (as root: they run containers).
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// For new nodes: an extra `skiff node` flag (repeatable), e.g. `--node-arg=--backoff-base-ms=1000`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// For a new cluster: seconds a node may go silent before it is unreachable (default 40).
    #[arg(long)]
    node_grace_seconds: Option<u64>,
    /// For a new cluster: seconds pods stay on an unreachable node (default 300).
    #[arg(long)]
    pod_eviction_seconds: Option<u64>,
    /// Testing only, for a new cluster: the CronJob controller's clock runs this many times as
    /// fast as real time (from each master's start), so minute schedules fire in seconds.
    #[arg(long, hide = true)]
    cron_clock_speed: Option<u32>,
    /// For new nodes: an OCI image layout to import into every node before it starts.
    #[arg(long)]
    import_image: Option<PathBuf>,
    /// How long to wait for a leader before giving up, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// For a new cluster: applied entries between snapshots.
    #[arg(long)]
    snapshot_logs: Option<u64>,
    /// For a new cluster: each master backs up its store every this many seconds into
    /// DIR/master-N/data/backups (k3s' scheduled etcd snapshots; `skiff up --restore` takes
    /// one).
    #[arg(long)]
    snapshot_interval: Option<u64>,
    /// For a new cluster: how many scheduled backups each master keeps (default 5).
    #[arg(long)]
    snapshot_retain: Option<usize>,
    /// For a new cluster: per-request deadline in milliseconds.
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// For a new cluster: the range Services' cluster IPs come from (default 10.96.0.0/16).
    #[arg(long)]
    service_cidr: Option<String>,
    /// For a new cluster: the range the masters' node IPAM controller gives each node its pod
    /// range from, a /24 each (as `skiff master --cluster-cidr`). Without it `skiff up` picks
    /// each node a /24 of 10.244.0.0/16 that no interface on this machine uses yet, so that
    /// clusters side by side on one machine never share a range.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// For a new cluster: serve the client port (Skiff API and etcd API) in plaintext, for
    /// experiments only. By default it is TLS, with a CA and certificates generated into
    /// DIR/pki that the written client configuration trusts.
    #[arg(long)]
    insecure: bool,
    /// For a new cluster whose machines are several: the address of this machine that its
    /// master listens on and the other machines reach it at (kubeadm init's
    /// --apiserver-advertise-address), with etcd's ports, 2379 for clients and 2380 for peers.
    /// The cluster starts with this one master; nodes (and masters) on other machines join it
    /// with `skiff join` and a token (`skiff token create --print-join-command`).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// Restore the store from a snapshot file (`etcdctl snapshot save`, `skiff snapshot
    /// status` checks one) before the masters start: every master's data directory is built
    /// afresh from it (an existing one is kept beside it as `data.before-restore-<time>`), so
    /// the cluster comes back with the snapshot's keys, objects and revision (k3s'
    /// --cluster-reset-restore-path). The masters must be stopped (`skiff down`). Into a new
    /// directory, give the old cluster's --encryption-provider-config too.
    #[arg(long)]
    restore: Option<PathBuf>,
    /// For a new cluster: the EncryptionConfiguration Secrets are encrypted at rest with
    /// (Kubernetes' format), instead of a new key — the old cluster's `encryption.yaml` when
    /// restoring its snapshot into a new directory, or its Secrets stay sealed.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
}

/// What a master presents, issued by the cluster CA into `pki`: its client listener's server
/// certificate (`server.*`, for 127.0.0.1, localhost and `address`), the store's `root` user
/// (`root.*`, for `etcdctl --cert/--key` and membership changes), the API's administrator
/// (`admin.*`, group system:masters, as kubeadm's admin.conf) and the masters' client identity
/// towards node servers (`kubelet-client.*`). `skiff up` and `skiff join --control-plane` both
/// make a master's identities here.
pub(crate) struct MasterIdentities {
    pub server: skiff_proto::pki::Issued,
    pub admin: skiff_proto::pki::Issued,
    pub kubelet_client: skiff_proto::pki::Issued,
}

pub(crate) fn issue_master_identities(
    ca: &skiff_proto::pki::Ca,
    pki: &Path,
    address: Option<&str>,
) -> anyhow::Result<MasterIdentities> {
    use skiff_proto::pki::{Subject, Usage};
    let mut sans = vec!["127.0.0.1", "localhost"];
    sans.extend(address);
    let server = Subject { common_name: "skiff-master", sans: &sans, ..Default::default() };
    let server = ca.issue(&pki.join("server"), &server, &[Usage::ServerAuth])?;
    let root = Subject { common_name: skiff_raft_store::auth::ROOT, ..Default::default() };
    ca.issue(&pki.join("root"), &root, &[Usage::ClientAuth])?;
    let admin = Subject { common_name: "admin", organization: Some("system:masters"), ..Default::default() };
    let admin = ca.issue(&pki.join("admin"), &admin, &[Usage::ClientAuth])?;
    let kubelet = Subject { common_name: skiff_node::logs::MASTER_CLIENT_CN, ..Default::default() };
    let kubelet_client = ca.issue(&pki.join("kubelet-client"), &kubelet, &[Usage::ClientAuth])?;
    Ok(MasterIdentities { server, admin, kubelet_client })
}

/// A new cluster CA in `dir` and the masters' identities from it
/// ([`issue_master_identities`]); the CA's path, the client listener's TLS and the masters'
/// client identity towards node servers.
fn generate_pki(
    dir: &Path,
    advertise: Option<std::net::IpAddr>,
) -> anyhow::Result<(PathBuf, ClientTls, crate::master_cmd::KubeletClient)> {
    std::fs::create_dir_all(dir)?;
    let ca = skiff_proto::pki::Ca::create(&dir.join("ca"), CLUSTER_CA)?;
    let advertise = advertise.map(|a| a.to_string());
    let ids = issue_master_identities(&ca, dir, advertise.as_deref())?;
    let ca_path = std::fs::canonicalize(dir.join("ca.crt"))?;
    let tls = ClientTls {
        cert: ids.server.cert,
        key: ids.server.key,
        // Certificates are one way to authenticate, tokens the other (etcd's and Kubernetes').
        client_ca: Some(ca_path.clone()),
        ca: Some(ca_path.clone()),
        client_cert_optional: true,
    };
    let kubelet = crate::master_cmd::KubeletClient {
        cert: ids.kubelet_client.cert,
        key: ids.kubelet_client.key,
        ca: ca_path.clone(),
    };
    Ok((ca_path, tls, kubelet))
}

/// The common name of the cluster CA `skiff up` makes.
const CLUSTER_CA: &str = "skiff-ca";

pub(crate) use skiff_proto::pki::{create_private_dir, write_private};

/// The cluster CA of the cluster in `dir` (from `pki/ca.key`), if it serves TLS.
fn cluster_ca(dir: &Path) -> anyhow::Result<Option<skiff_proto::pki::Ca>> {
    let path = dir.join("pki").join("ca.key");
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(skiff_proto::pki::Ca::load(&path, CLUSTER_CA)?))
}

/// Member `id`'s peer certificate and key in `home` (`peer.crt`, `peer.key`), signed by the
/// peer CA (whose certificate is `ca_path`): CN `member-<id>`, DNS `member-<id>.peer.skiff`,
/// for server and client use.
pub(crate) fn peer_identity(
    home: &Path,
    id: u64,
    ca: &skiff_proto::pki::Ca,
    ca_path: &Path,
) -> anyhow::Result<skiff_raft_store::peer_tls::PeerTls> {
    use skiff_proto::pki::{Subject, Usage};
    use skiff_raft_store::peer_tls::{member_common_name, member_name};
    let (cn, dns) = (member_common_name(id), member_name(id));
    let subject = Subject { common_name: &cn, sans: &[&dns], ..Default::default() };
    let issued = ca.issue(&home.join("peer"), &subject, &[Usage::ServerAuth, Usage::ClientAuth])?;
    Ok(skiff_raft_store::peer_tls::PeerTls { cert: issued.cert, key: issued.key, ca: std::fs::canonicalize(ca_path)? })
}

#[derive(Args, Debug)]
pub struct DownArgs {
    #[arg(long)]
    dir: PathBuf,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 10)]
    grace: u64,
    /// Also stop every pod's containers and remove the nodes' sandboxes and bridges (node
    /// daemons alone leave their containers running, as a kubelet does).
    #[arg(long)]
    purge: bool,
}

/// Starts `skiff ARGS` in its own process group, its output appended to `log`; returns its pid.
fn spawn_skiff(args: &[&std::ffi::OsStr], log: &Path, name: &str) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("locating the skiff binary")?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let pid = child.id();
    CHILDREN.lock().expect("children lock").insert(pid, child);
    Ok(pid)
}

/// The processes this `skiff up` started, so one that dies during start-up can say how.
static CHILDREN: std::sync::Mutex<BTreeMap<u32, std::process::Child>> = std::sync::Mutex::new(BTreeMap::new());

/// Whether a master or node daemon has exited, and how: for a process this `skiff up` started,
/// what waiting on it says (its exit code or signal); for one started earlier, that its pid no
/// longer runs `skiff … needle`. (Reading a child's /proc entries under load is not a reliable
/// sign of life: CI once saw a running master's taken for dead.)
fn exited(pid: u32, needle: &str) -> Option<String> {
    let mut children = CHILDREN.lock().expect("children lock");
    match children.get_mut(&pid).map(|c| c.try_wait()) {
        Some(Ok(Some(status))) => Some(format!(" ({status})")),
        Some(Ok(None)) => None,
        _ => (!process_alive(pid, needle)).then(String::new),
    }
}

fn spawn_master(entry: &MasterEntry) -> anyhow::Result<u32> {
    spawn_skiff(&["master".as_ref(), "--config".as_ref(), entry.config.as_os_str()], &entry.log, &entry.name)
}

fn new_cluster(dir: &Path, args: &UpArgs) -> anyhow::Result<ClusterFile> {
    let masters = args.masters;
    if masters == 0 {
        bail!("--masters must be at least 1");
    }
    let service_cidr = args.service_cidr.clone().unwrap_or_else(crate::cluster_file::default_service_cidr);
    skiff_api::allocator::ServiceRange::parse(&service_cidr).map_err(|e| anyhow::anyhow!("--service-cidr: {e}"))?;
    let (host, ports) = match args.advertise_address {
        Some(_) if masters != 1 => bail!(
            "--advertise-address starts a cluster on several machines with one master (not --masters {masters}); \
             masters on the other machines join it"
        ),
        Some(addr) => (addr, vec![2380, 2379]),
        None => (std::net::IpAddr::from([127, 0, 0, 1]), skiff_chaos::net::free_loopback_ports(masters * 2)?),
    };
    let mut members = BTreeMap::new();
    for i in 0..masters {
        let id = i as u64 + 1;
        members.insert(
            id,
            Member {
                name: format!("master-{id}"),
                peer_addr: std::net::SocketAddr::new(host, ports[2 * i]).to_string(),
                client_addr: std::net::SocketAddr::new(host, ports[2 * i + 1]).to_string(),
            },
        );
    }
    // Credentials: an admin token (system:masters) the cluster's token file and client config carry.
    let admin_token = random_token();
    let tokens = dir.join("tokens.csv");
    let mut token_lines = format!("# token,user,uid,\"groups\"\n{admin_token},admin,admin,\"system:masters\"\n");
    let node_tokens: Vec<(String, String)> = (1..=args.nodes).map(|i| (format!("node-{i}"), random_token())).collect();
    for (name, token) in &node_tokens {
        token_lines += &format!("{token},system:node:{name},node-{name},\"system:nodes\"\n");
    }
    write_private(&tokens, token_lines.as_bytes())?;
    write_private(&dir.join("admin.token"), format!("{admin_token}\n").as_bytes())?;
    // The store's own root user (etcd auth), on from the cluster's first entry.
    let root_password = random_token();
    write_private(&dir.join("root.password"), format!("{root_password}\n").as_bytes())?;
    let root_password_hash = skiff_raft_store::auth::hash_password(&root_password);
    // Secrets are encrypted at rest with a key of this cluster's own.
    let encryption = dir.join("encryption.yaml");
    let encryption_config = match &args.encryption_provider_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            skiff_api::at_rest::AtRest::load(path).map_err(|e| anyhow::anyhow!("--encryption-provider-config {e}"))?;
            text
        }
        None if args.restore.is_some() => bail!(
            "--restore into a new directory needs the old cluster's --encryption-provider-config \
             (its encryption.yaml): the snapshot's Secrets and service-account key are sealed with its key"
        ),
        None => skiff_api::at_rest::AtRest::generate(),
    };
    write_private(&encryption, encryption_config.as_bytes())?;
    let encryption = std::fs::canonicalize(encryption)?;
    if args.insecure && args.advertise_address.is_some() {
        bail!("--insecure and --advertise-address: a cluster other machines reach is never served in plaintext");
    }
    let pki = if args.insecure { None } else { Some(generate_pki(&dir.join("pki"), args.advertise_address)?) };
    // Masters dial node servers (logs, metrics) with a client certificate of their own.
    let kubelet_client = pki.as_ref().map(|(_, _, kubelet)| kubelet.clone());
    // Masters speak to each other over mutual TLS with identities from a CA of their own.
    create_private_dir(&dir.join("pki"))?;
    let peer_ca_path = dir.join("pki").join("peer-ca.crt");
    let peer_ca = skiff_proto::pki::Ca::create(&peer_ca_path, "skiff-peer-ca")?;
    let mut entries = Vec::new();
    for (&id, m) in &members {
        let home = dir.join(&m.name);
        create_private_dir(&home)?;
        let data_dir = std::fs::canonicalize(&home)?.join("data");
        let mut config =
            MasterConfig::new(id, m.name.clone(), data_dir.clone(), m.peer_addr.clone(), m.client_addr.clone());
        config.initial_members = members.clone();
        if let Some(v) = args.snapshot_logs {
            config.snapshot_logs = v;
        }
        if let Some(v) = args.snapshot_interval {
            config.snapshot_interval_secs = v;
        }
        if let Some(v) = args.snapshot_retain {
            config.snapshot_retain = v;
        }
        if let Some(v) = args.request_timeout_ms {
            config.request_timeout_ms = v;
        }
        config.client_tls = pki.as_ref().map(|(_, tls, _)| tls.clone());
        config.root_password_hash = Some(root_password_hash.clone());
        config.peer_tls = Some(peer_identity(&home, id, &peer_ca, &peer_ca_path)?);
        let config_path = std::fs::canonicalize(&home)?.join("config.json");
        let mut controllers = crate::master_cmd::ControllerSettings::default();
        if let Some(v) = args.node_grace_seconds {
            controllers.node_grace_seconds = v;
        }
        if let Some(v) = args.cron_clock_speed {
            controllers.cron_clock_speed = v.max(1);
        }
        if let Some(v) = args.pod_eviction_seconds {
            controllers.pod_eviction_seconds = v;
        }
        if let Some(v) = &args.cluster_cidr {
            controllers.cluster_cidr = v.clone();
            controllers.pod_ranges()?;
        }
        // Machines that join sign their certificate requests with the cluster CA.
        if pki.is_some() {
            let pki_dir = std::fs::canonicalize(dir.join("pki"))?;
            controllers.cluster_signing = Some(crate::master_cmd::ClusterSigning {
                cert: pki_dir.join("ca.crt"),
                key: pki_dir.join("ca.key"),
                duration_seconds: 365 * 24 * 3600,
            });
        }
        let file = MasterFile {
            master: config,
            token_file: Some(std::fs::canonicalize(&tokens)?),
            service_cluster_ip_range: Some(service_cidr.clone()),
            controllers,
            encryption_provider_config: Some(encryption.clone()),
            kubelet_client: kubelet_client.clone(),
        };
        write_private(&config_path, file.to_json()?.as_bytes())?;
        entries.push(MasterEntry {
            id,
            name: m.name.clone(),
            pid: 0,
            api: m.client_addr.clone(),
            etcd: m.client_addr.clone(),
            peer: m.peer_addr.clone(),
            data_dir,
            log: config_path.with_file_name("master.log"),
            config: config_path,
        });
    }
    // A kubeconfig-like client config naming every master.
    let client_config = dir.join("client.json");
    let endpoints: Vec<&str> = entries.iter().map(|e| e.api.as_str()).collect();
    let client = serde_json::json!({
        "clusters": [{"name": "local", "endpoints": endpoints}],
        "users": [{"name": "admin", "token": admin_token}],
        "ca": pki.as_ref().map(|(ca, _, _)| ca.clone()),
        "contexts": [{"name": "local", "cluster": "local", "user": "admin", "namespace": "default"}],
        "currentContext": "local",
    });
    write_private(&client_config, (serde_json::to_string_pretty(&client)? + "\n").as_bytes())?;
    let ca_pem = match &pki {
        Some((ca, _, _)) => Some(std::fs::read(ca)?),
        None => None,
    };
    let contexts: Vec<(String, String)> =
        entries.iter().map(|m| (format!("skiff-{}", m.name), m.api.clone())).collect();
    let admin = ("admin", serde_json::json!({"token": admin_token}));
    write_private(&dir.join("kubeconfig"), kubeconfig(&contexts, ca_pem.as_deref(), admin)?.as_bytes())?;
    let nodes = new_nodes(dir, args, &node_tokens, &client, 0, &service_cidr, args.cluster_cidr.as_deref())?;
    Ok(ClusterFile {
        masters: entries,
        nodes,
        client_config: Some(std::fs::canonicalize(client_config)?),
        credentials: Some(std::fs::canonicalize(dir.join("admin.token"))?),
        etcd_root_password: Some(std::fs::canonicalize(dir.join("root.password"))?),
        ca: pki.map(|(ca, _, _)| ca),
        service_cidr,
        cluster_cidr: args.cluster_cidr.clone(),
    })
}

/// A kubeconfig for `user` (its name and kubeconfig credentials: `token`, or
/// `client-certificate`/`client-key`): every master of `masters` (context name, address) a named
/// cluster with a context of its own, the first current. A kubeconfig names one server per
/// context; any master answers, so when one is down `kubectl --context skiff-m2` (or
/// `kubectl config use-context`) goes on.
pub(crate) fn kubeconfig(
    masters: &[(String, String)],
    ca_pem: Option<&[u8]>,
    (user, credentials): (&str, serde_json::Value),
) -> anyhow::Result<String> {
    use base64::Engine;
    let scheme = if ca_pem.is_some() { "https" } else { "http" };
    let clusters: Vec<serde_json::Value> = masters
        .iter()
        .map(|(name, address)| {
            let mut cluster = serde_json::json!({"server": format!("{scheme}://{address}")});
            if let Some(pem) = ca_pem {
                cluster["certificate-authority-data"] =
                    serde_json::json!(base64::engine::general_purpose::STANDARD.encode(pem));
            }
            serde_json::json!({"name": name, "cluster": cluster})
        })
        .collect();
    let contexts: Vec<serde_json::Value> = masters
        .iter()
        .map(|(name, _)| {
            serde_json::json!({"name": name, "context": {"cluster": name, "user": user, "namespace": "default"}})
        })
        .collect();
    let current = masters.first().map(|(name, _)| name.clone()).unwrap_or_default();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "users": [{"name": user, "user": credentials}],
        "contexts": contexts,
        "current-context": current,
        "preferences": {},
    });
    Ok(serde_yaml::to_string(&config)?)
}

fn random_token() -> String {
    (0..32).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect()
}

/// Directories, credentials, bridges and pod CIDRs of a new cluster's node daemons.
/// `offset`: how many nodes the cluster has already (their loopback addresses are taken).
/// With `cluster_cidr` the masters allocate the nodes' pod ranges; without, they are picked
/// here.
fn new_nodes(
    dir: &Path,
    args: &UpArgs,
    tokens: &[(String, String)],
    admin_client: &serde_json::Value,
    offset: usize,
    service_cidr: &str,
    cluster_cidr: Option<&str>,
) -> anyhow::Result<Vec<NodeEntry>> {
    let cidrs = match cluster_cidr {
        Some(_) => vec![String::new(); tokens.len()],
        None => skiff_node::sandbox::free_pod_cidrs(tokens.len())?,
    };
    let ca = cluster_ca(dir)?;
    // Bridge names unique per cluster, so several clusters' nodes can share a machine.
    let tag: String = (0..5).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect();
    let mut nodes = Vec::new();
    for (i, ((name, token), cidr)) in tokens.iter().zip(cidrs).enumerate() {
        let home = dir.join("nodes").join(name);
        std::fs::create_dir_all(home.join("root"))?;
        let home = std::fs::canonicalize(home)?;
        let mut client = admin_client.clone();
        client["users"] = serde_json::json!([{"name": name, "token": token}]);
        client["contexts"][0]["user"] = serde_json::json!(name);
        let config = home.join("client.json");
        write_private(&config, (serde_json::to_string_pretty(&client)? + "\n").as_bytes())?;
        let root = home.join("root");
        if let Some(layout) = &args.import_image {
            let store = skiff_node::image::ImageStore::open(root.join("images"))?;
            store.import_layout(layout, "").map_err(|e| anyhow::anyhow!("importing {}: {e}", layout.display()))?;
        }
        // Each node its own loopback address, so host ports of two nodes never collide.
        let node_ip = format!("127.0.0.{}", offset + i + 2);
        let mut node_args = args.node_args.clone();
        if let Some(c) = cluster_cidr {
            node_args.extend(["--cluster-cidr".to_string(), c.to_string()]);
        }
        if let Some(ca) = &ca {
            // Its server (logs, metrics) speaks TLS with a certificate for its address and
            // answers only the masters' client certificate.
            let cn = format!("system:node:{name}");
            let subject = skiff_proto::pki::Subject { common_name: &cn, sans: &[&node_ip], ..Default::default() };
            let issued = ca.issue(&home.join("serving"), &subject, &[skiff_proto::pki::Usage::ServerAuth])?;
            let ca_path = std::fs::canonicalize(dir.join("pki/ca.crt"))?;
            for (flag, path) in [
                ("--tls-cert-file", issued.cert),
                ("--tls-private-key-file", issued.key),
                ("--client-ca-file", ca_path),
            ] {
                node_args.extend([flag.to_string(), path.to_string_lossy().into_owned()]);
            }
        }
        nodes.push(NodeEntry {
            name: name.clone(),
            pid: 0,
            root,
            bridge: format!("sk{tag}n{}", i + 1),
            node_ip,
            pod_cidr: cidr,
            service_cidr: service_cidr.to_string(),
            config,
            log: home.join("node.log"),
            args: node_args,
        });
    }
    Ok(nodes)
}

fn spawn_node(entry: &NodeEntry) -> anyhow::Result<u32> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["node".as_ref(), "--config".as_ref(), entry.config.as_os_str()];
    let flags = [
        ("--name", entry.name.as_str()),
        ("--bridge", &entry.bridge),
        ("--node-ip", &entry.node_ip),
        ("--service-cidr", &entry.service_cidr),
    ];
    for (flag, value) in flags {
        args.extend([std::ffi::OsStr::new(flag), std::ffi::OsStr::new(value)]);
    }
    // Without one the node waits for the range the masters allocate it.
    if !entry.pod_cidr.is_empty() {
        args.extend([std::ffi::OsStr::new("--pod-cidr"), std::ffi::OsStr::new(&entry.pod_cidr)]);
    }
    args.extend([std::ffi::OsStr::new("--root-dir"), entry.root.as_os_str()]);
    args.extend(entry.args.iter().map(std::ffi::OsStr::new));
    spawn_skiff(&args, &entry.log, &entry.name)
}

/// The node daemon's process is `skiff node … --root-dir ROOT`.
pub fn node_alive(n: &NodeEntry) -> bool {
    n.pid != 0 && process_alive(n.pid, &n.root.to_string_lossy())
}

/// A short-deadline channel to one master's client port (TLS when the cluster has a CA).
async fn master_channel(m: &MasterEntry, ca: Option<&Path>) -> Result<tonic::transport::Channel, String> {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", m.api)).map_err(|e| e.to_string())?;
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| e.to_string())?;
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    endpoint
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_millis(800))
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// Per master: its view of the leader, or why it did not answer.
async fn leader_views(masters: &[MasterEntry], ca: Option<&Path>) -> Vec<Result<u64, String>> {
    let mut out = Vec::new();
    for m in masters {
        let view = async {
            let channel = master_channel(m, ca).await?;
            let status =
                MaintenanceClient::new(channel).status(StatusRequest {}).await.map_err(|e| e.message().to_string())?;
            Ok(status.into_inner().leader)
        };
        out.push(view.await);
    }
    out
}

/// The end of a process's log: from its last `Error:` line when it has one (a backtrace after
/// it would push the reason out of the last lines), else the last `lines`.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = match all.iter().rposition(|l| l.starts_with("Error:")) {
        Some(error) => error,
        None => all.len().saturating_sub(lines),
    };
    all[start..(start + lines).min(all.len())].join("\n")
}

/// Waits until the store's root user can authenticate (the leader proposes the first auth
/// state right after its election), so the etcdctl line printed below works at once.
fn wait_for_store_auth(rt: &tokio::runtime::Runtime, cluster: &ClusterFile, deadline: Instant) -> anyhow::Result<()> {
    use skiff_proto::etcdserverpb::{auth_client::AuthClient, AuthenticateRequest};
    let Some(path) = &cluster.etcd_root_password else { return Ok(()) };
    let password = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let request = AuthenticateRequest { name: "root".into(), password: password.trim().to_string() };
    loop {
        let attempt = rt.block_on(async {
            let channel = master_channel(&cluster.masters[0], cluster.ca.as_deref()).await?;
            AuthClient::new(channel).authenticate(request.clone()).await.map_err(|e| e.message().to_string())
        });
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("the store's root user cannot authenticate: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits until the API has made the system namespaces (the leader's first act), so a cluster
/// reported up takes `default`-namespace objects and node leases at once.
fn wait_for_api(rt: &tokio::runtime::Runtime, cluster: &ClusterFile, deadline: Instant) -> anyhow::Result<()> {
    let config = skiff_client::ClientConfig::load(cluster.client_config.as_deref().context("no client config")?)?;
    let _runtime = rt.enter();
    let client = skiff_client::Client::new(config).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    loop {
        let last = skiff_api::registry::SYSTEM_NAMESPACES.last().copied().unwrap_or("default");
        match rt.block_on(client.get("namespaces", "", last)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("the API did not create its system namespaces in time: {}", e.message())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits until every node has registered and is Ready, showing progress.
fn wait_for_nodes(rt: &tokio::runtime::Runtime, cluster: &ClusterFile, deadline: Instant) -> anyhow::Result<()> {
    let config = skiff_client::ClientConfig::load(cluster.client_config.as_deref().context("no client config")?)?;
    let _runtime = rt.enter();
    let client = skiff_client::Client::new(config).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let mut last_report = Instant::now();
    loop {
        let ready = rt.block_on(async {
            let list = client.list("nodes", "", "", "").await.ok()?;
            let items = list["items"].as_array()?.clone();
            Some(
                cluster
                    .nodes
                    .iter()
                    .filter(|n| {
                        items.iter().any(|i| {
                            i["metadata"]["name"] == n.name.as_str()
                                && i["status"]["conditions"]
                                    .as_array()
                                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                        })
                    })
                    .count(),
            )
        });
        let ready = ready.unwrap_or(0);
        if ready == cluster.nodes.len() {
            return Ok(());
        }
        for n in &cluster.nodes {
            if let Some(how) = exited(n.pid, &n.root.to_string_lossy()) {
                bail!("{} (pid {}) exited during start-up{how}; its log ends:\n{}", n.name, n.pid, tail(&n.log, 20));
            }
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {} nodes Ready in time", cluster.nodes.len());
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("waiting for nodes ({ready} of {} Ready)…", cluster.nodes.len());
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    create_private_dir(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let mut cluster = match ClusterFile::load(&dir)? {
        Some(mut existing) => {
            if existing.masters.len() != args.masters {
                eprintln!(
                    "note: {} already holds a {}-master cluster; restarting it as it is",
                    dir.display(),
                    existing.masters.len()
                );
            }
            if args.nodes > existing.nodes.len() {
                // More nodes than the cluster has: new ones join, with credentials of their own.
                let have = existing.nodes.len();
                let tokens: Vec<(String, String)> =
                    (have + 1..=args.nodes).map(|i| (format!("node-{i}"), random_token())).collect();
                let mut lines = String::new();
                for (name, token) in &tokens {
                    lines += &format!("{token},system:node:{name},node-{name},\"system:nodes\"\n");
                }
                let token_file = dir.join("tokens.csv");
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&token_file)
                    .with_context(|| format!("adding nodes to {}", token_file.display()))?;
                std::io::Write::write_all(&mut f, lines.as_bytes())?;
                let client_path = existing.client_config.clone().context("cluster.json names no client config")?;
                let client: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&client_path)?)?;
                let cluster_cidr = existing.cluster_cidr.as_deref();
                let mut added = new_nodes(&dir, &args, &tokens, &client, have, &existing.service_cidr, cluster_cidr)?;
                existing.nodes.append(&mut added);
            }
            existing
        }
        None => new_cluster(&dir, &args)?,
    };
    if let Some(backup) = &args.restore {
        restore_masters(&cluster, backup)?;
    }
    for m in &mut cluster.masters {
        let needle = m.config.to_string_lossy().to_string();
        if m.pid != 0 && process_alive(m.pid, &needle) {
            continue;
        }
        m.pid = spawn_master(m)?;
    }
    cluster.save(&dir)?;

    let rt = tokio::runtime::Runtime::new()?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut last_report = Instant::now();
    let leader = loop {
        let views = rt.block_on(leader_views(&cluster.masters, cluster.ca.as_deref()));
        let answering = views.iter().filter(|v| v.is_ok()).count();
        let leaders: Vec<u64> = views.iter().filter_map(|v| v.as_ref().ok().copied()).collect();
        if answering == cluster.masters.len() && leaders.iter().all(|&l| l != 0 && l == leaders[0]) {
            break leaders[0];
        }
        for m in &cluster.masters {
            if let Some(how) = exited(m.pid, &m.config.to_string_lossy()) {
                bail!("{} (pid {}) exited during start-up{how}; its log ends:\n{}", m.name, m.pid, tail(&m.log, 20));
            }
        }
        if Instant::now() > deadline {
            let mut msg = format!("no leader after {}s:", args.timeout);
            for (m, v) in cluster.masters.iter().zip(&views) {
                msg += &format!("\n  {}: {:?}\n{}", m.name, v, tail(&m.log, 10));
            }
            bail!(msg);
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("waiting for a leader ({answering} of {} masters answering)…", cluster.masters.len());
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    wait_for_store_auth(&rt, &cluster, deadline)?;
    wait_for_api(&rt, &cluster, deadline)?;
    if !cluster.nodes.is_empty() {
        for n in &mut cluster.nodes {
            if !node_alive(n) {
                n.pid = spawn_node(n)?;
            }
        }
        cluster.save(&dir)?;
        wait_for_nodes(&rt, &cluster, deadline)?;
    }
    let leader_name = cluster.masters.iter().find(|m| m.id == leader).map_or("?".into(), |m| m.name.clone());
    println!("Skiff cluster up in {} ({} masters, leader {leader_name})", dir.display(), cluster.masters.len());
    for m in &cluster.masters {
        println!("  {:<10} pid {:<7} api {}  etcd {}  peer {}", m.name, m.pid, m.api, m.etcd, m.peer);
    }
    for n in &cluster.nodes {
        println!(
            "  {:<10} pid {:<7} pods {}  bridge {}  root {}",
            n.name,
            n.pid,
            if n.pod_cidr.is_empty() { "from the masters" } else { &n.pod_cidr },
            n.bridge,
            n.root.display()
        );
    }
    let endpoints: Vec<&str> = cluster.masters.iter().map(|m| m.etcd.as_str()).collect();
    let scheme = if cluster.ca.is_some() { "https://" } else { "" };
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{scheme}{e}")).collect();
    let cacert = cluster.ca.as_ref().map(|ca| format!(" --cacert {}", ca.display())).unwrap_or_default();
    let user = cluster.etcd_root_password.as_ref().map(|pw| format!(" --user root:$(cat {})", pw.display()));
    println!(
        "etcdctl:  etcdctl --endpoints={}{cacert}{} endpoint status -w table",
        endpoints.join(","),
        user.unwrap_or_default()
    );
    match &cluster.ca {
        Some(ca) => println!(
            "grpcurl:  grpcurl -cacert {} -H \"authorization: Bearer $(cat {})\" {} list",
            ca.display(),
            dir.join("admin.token").display(),
            cluster.masters[0].api
        ),
        None => println!(
            "grpcurl:  grpcurl -plaintext -H \"authorization: Bearer $(cat {})\" {} list",
            dir.join("admin.token").display(),
            cluster.masters[0].api
        ),
    }
    if dir.join("kubeconfig").exists() {
        println!("kubectl:  KUBECONFIG={} kubectl get nodes", dir.join("kubeconfig").display());
    }
    println!("cluster:  {}", ClusterFile::path(&dir).display());
    println!("stop:     skiff down --dir {}", dir.display());
    if cluster.masters.iter().any(|m| !m.api.starts_with("127.")) {
        let config = cluster.client_config.as_ref().map(|c| format!(" --config {}", c.display())).unwrap_or_default();
        let master = cluster.masters[0].config.display();
        println!("join:     skiff token create --print-join-command{config}   (then run what it prints on each node machine)");
        println!("masters:  skiff token create --print-join-command --control-plane --master-config {master}{config}");
    }
    Ok(())
}

/// Builds every (stopped) master's data directory afresh from the snapshot file `backup`,
/// keeping an existing one beside it; the store's root user takes the cluster's root password.
fn restore_masters(cluster: &ClusterFile, backup: &Path) -> anyhow::Result<()> {
    if let Some(m) = cluster.masters.iter().find(|m| m.pid != 0 && process_alive(m.pid, &m.config.to_string_lossy())) {
        bail!("--restore: {} (pid {}) is running; stop the cluster first (skiff down --dir …)", m.name, m.pid);
    }
    // Checked whole, once, before any data directory is touched.
    let verified = skiff_raft_store::restore::verify(backup).map_err(|e| anyhow::anyhow!("--restore {e}"))?;
    let members: BTreeMap<u64, Member> = cluster
        .masters
        .iter()
        .map(|m| (m.id, Member { name: m.name.clone(), peer_addr: m.peer.clone(), client_addr: m.etcd.clone() }))
        .collect();
    let root = cluster.etcd_root_password.as_deref().map(crate::master_cmd::root_password_hash).transpose()?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    for m in &cluster.masters {
        if m.data_dir.exists() {
            let aside = m.data_dir.with_file_name(format!("data.before-restore-{stamp}"));
            std::fs::rename(&m.data_dir, &aside)
                .with_context(|| format!("moving {} aside to {}", m.data_dir.display(), aside.display()))?;
            eprintln!("{}: the data directory before the restore is kept in {}", m.name, aside.display());
        }
        skiff_raft_store::restore::restore_verified(backup, &verified, &m.data_dir, &members, root.as_deref())
            .with_context(|| format!("restoring {} into {}", backup.display(), m.data_dir.display()))?;
    }
    eprintln!(
        "restored {} keys at revision {} from {} into {} masters",
        verified.summary.keys,
        verified.summary.revision,
        backup.display(),
        cluster.masters.len()
    );
    Ok(())
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&args.dir).with_context(|| format!("{}", args.dir.display()))?;
    let Some(cluster) = ClusterFile::load(&dir)? else {
        bail!("{} holds no cluster.json", dir.display());
    };
    for n in cluster.nodes.iter().filter(|n| node_alive(n)) {
        let _ = kill(Pid::from_raw(n.pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(args.grace);
    while cluster.nodes.iter().any(node_alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in cluster.nodes.iter().filter(|n| node_alive(n)) {
        let _ = kill(Pid::from_raw(n.pid as i32), Signal::SIGKILL);
    }
    if args.purge {
        for n in &cluster.nodes {
            let status = Command::new(std::env::current_exe()?)
                .args(["node", "--reset", "--name", &n.name, "--bridge", &n.bridge])
                .arg("--root-dir")
                .arg(&n.root)
                .status()?;
            if !status.success() {
                eprintln!("resetting {} failed", n.name);
            }
        }
    }
    let alive = |m: &MasterEntry| m.pid != 0 && process_alive(m.pid, &m.config.to_string_lossy());
    for m in cluster.masters.iter().filter(|m| alive(m)) {
        let _ = kill(Pid::from_raw(m.pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(args.grace);
    while cluster.masters.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for m in cluster.masters.iter().filter(|m| alive(m)) {
        eprintln!("{} did not stop within {}s; killing it", m.name, args.grace);
        let _ = kill(Pid::from_raw(m.pid as i32), Signal::SIGKILL);
    }
    println!("Skiff cluster in {} stopped; data kept (skiff up --dir {} restarts it)", dir.display(), dir.display());
    Ok(())
}
