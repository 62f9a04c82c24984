//! `DIR/cluster.json`: what `skiff up` started, for people, tests and `skiff down`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    pub masters: Vec<MasterEntry>,
    /// Node daemons started beside the masters (`skiff up --nodes N`).
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    /// Client configuration (endpoints of every master, the admin user, a default context).
    pub client_config: Option<PathBuf>,
    /// The admin bearer token file (user `admin` in `system:masters`).
    pub credentials: Option<PathBuf>,
    /// The password file of the store's `root` user (etcd auth: `etcdctl --user root:…`).
    #[serde(default)]
    pub etcd_root_password: Option<PathBuf>,
    /// The CA certificate clients verify the masters with, when the cluster serves TLS.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The Services' cluster IP range the masters allocate from and the nodes proxy.
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
    /// The range the masters allocate nodes' pod ranges from (`skiff up --cluster-cidr`);
    /// `None`: `skiff up` picked each node's range.
    #[serde(default)]
    pub cluster_cidr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasterEntry {
    pub id: u64,
    pub name: String,
    pub pid: u32,
    /// host:port of the client listener.
    pub api: String,
    /// host:port of the etcd-compatible listener (the client listener today).
    pub etcd: String,
    /// host:port of the peer (raft) listener.
    pub peer: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub pid: u32,
    /// The node's state directory (images, pods, logs).
    pub root: PathBuf,
    pub bridge: String,
    /// Its pod range as `skiff up` picked it; empty when the masters allocate it.
    pub pod_cidr: String,
    /// The node's address (a loopback address of its own on one machine).
    #[serde(default = "default_node_ip")]
    pub node_ip: String,
    /// Its client config (the masters and the node's own token).
    pub config: PathBuf,
    pub log: PathBuf,
    /// The Services' cluster IP range (as the cluster's).
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
    /// Extra `skiff node` flags it runs with (`skiff up --node-arg`).
    #[serde(default)]
    pub args: Vec<String>,
}

pub fn default_service_cidr() -> String {
    "10.96.0.0/16".into()
}

fn default_node_ip() -> String {
    "127.0.0.1".into()
}

impl ClusterFile {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    pub fn load(dir: &Path) -> anyhow::Result<Option<ClusterFile>> {
        let path = Self::path(dir);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)?;
        Ok(Some(serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?))
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join("cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::rename(tmp, Self::path(dir))?;
        Ok(())
    }
}

/// Whether `pid` is a live (not zombie) process whose command line mentions `needle`.
pub fn process_alive(pid: u32, needle: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).contains(needle)).unwrap_or(false)
}
