//! Resource usage for `skiff top`: a sampler reads every pod's cgroup (cpuacct usage, memory
//! working set = usage minus inactive file cache) and the node's /proc/stat and /proc/meminfo
//! every few seconds; cpu is the rate between the last two samples. Served as NodeMetrics.

use serde_json::Value;
use skiff_proto::api::node_metrics_server::NodeMetrics;
use skiff_proto::api::{ContainerUsage, NodeUsage, NodeUsageRequest, PodUsage};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Sample {
    at: Option<Instant>,
    /// Node: busy jiffies; pods (by uid) and containers (by `uid/name`): cpuacct nanoseconds.
    node_busy: u64,
    pods: HashMap<String, u64>,
}

/// The cgroup directory of a pod (`pod<uid>`) or of one of its containers under `hierarchy`.
fn cgroup_dir(hierarchy: &str, node: &str, uid: &str, container: Option<&str>) -> PathBuf {
    let pod = Path::new("/sys/fs/cgroup").join(hierarchy).join("skiff").join(node).join(format!("pod{uid}"));
    match container {
        Some(c) => pod.join(c),
        None => pod,
    }
}

/// The containers that have a cgroup under the pod's.
fn container_names(node: &str, uid: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cgroup_dir("cpuacct", node, uid, None))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

#[derive(Clone)]
pub struct Sampler {
    root: PathBuf,
    node: String,
    latest: Arc<Mutex<NodeUsage>>,
    /// Who may read the figures (`get` on this Node).
    callers: crate::logs::Callers,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Working set of a memory cgroup: usage minus inactive file pages (what kubelet reports).
fn working_set(dir: &Path) -> u64 {
    let usage = read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0);
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let inactive =
        stat.lines().find_map(|l| l.strip_prefix("total_inactive_file ")?.trim().parse::<u64>().ok()).unwrap_or(0);
    usage.saturating_sub(inactive)
}

fn node_busy_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else { return 0 };
    let f: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    f.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum()
}

fn meminfo(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0) * 1024
}

impl Sampler {
    pub fn new(root: PathBuf, node: String, callers: crate::logs::Callers) -> Sampler {
        Sampler { root, node, latest: Arc::default(), callers }
    }

    fn pods(&self) -> Vec<(String, String, String)> {
        std::fs::read_dir(self.root.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pod: Value = serde_json::from_slice(&std::fs::read(e.path().join("pod.json")).ok()?).ok()?;
                let m = &pod["metadata"];
                Some((
                    m["uid"].as_str()?.into(),
                    m["namespace"].as_str().unwrap_or("default").into(),
                    m["name"].as_str()?.into(),
                ))
            })
            .collect()
    }

    fn take(&self) -> Sample {
        let mut s = Sample { at: Some(Instant::now()), node_busy: node_busy_jiffies(), pods: HashMap::new() };
        for (uid, _, _) in self.pods() {
            for c in container_names(&self.node, &uid) {
                if let Some(ns) = read_u64(&cgroup_dir("cpuacct", &self.node, &uid, Some(&c)).join("cpuacct.usage")) {
                    s.pods.insert(format!("{uid}/{c}"), ns);
                }
            }
            if let Some(ns) = read_u64(&cgroup_dir("cpuacct", &self.node, &uid, None).join("cpuacct.usage")) {
                s.pods.insert(uid, ns);
            }
        }
        s
    }

    /// Samples every `interval` until the task is dropped.
    pub async fn run(self, interval: Duration) {
        let ticks = procfs_ticks();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
        let mut prev = self.take();
        loop {
            tokio::time::sleep(interval).await;
            let now = self.take();
            let secs = now.at.zip(prev.at).map_or(1.0, |(a, b)| a.duration_since(b).as_secs_f64().max(0.001));
            let mut usage = NodeUsage {
                node: self.node.clone(),
                cpu_millicores: ((now.node_busy.saturating_sub(prev.node_busy)) as f64 / ticks / secs * 1000.0) as i64,
                memory_bytes: meminfo("MemTotal:").saturating_sub(meminfo("MemAvailable:")) as i64,
                cpu_capacity_millicores: cpus * 1000,
                memory_capacity_bytes: meminfo("MemTotal:") as i64,
                pods: Vec::new(),
                timestamp: skiff_proto::time::now_rfc3339(),
                window_seconds: secs.round() as i64,
            };
            let cpu = |key: &str| match (now.pods.get(key), prev.pods.get(key)) {
                (Some(a), Some(b)) => ((a.saturating_sub(*b)) as f64 / 1e9 / secs * 1000.0) as i64,
                _ => 0,
            };
            for (uid, ns, name) in self.pods() {
                let containers = container_names(&self.node, &uid)
                    .into_iter()
                    .map(|c| ContainerUsage {
                        cpu_millicores: cpu(&format!("{uid}/{c}")),
                        memory_bytes: working_set(&cgroup_dir("memory", &self.node, &uid, Some(&c))) as i64,
                        name: c,
                    })
                    .collect();
                usage.pods.push(PodUsage {
                    namespace: ns,
                    name,
                    cpu_millicores: cpu(&uid),
                    memory_bytes: working_set(&cgroup_dir("memory", &self.node, &uid, None)) as i64,
                    containers,
                });
            }
            if let Ok(mut l) = self.latest.lock() {
                *l = usage;
            }
            prev = now;
        }
    }
}

/// Clock ticks per second for /proc/stat (USER_HZ; 100 on Linux).
fn procfs_ticks() -> f64 {
    100.0
}

#[tonic::async_trait]
impl NodeMetrics for Sampler {
    async fn usage(&self, req: Request<NodeUsageRequest>) -> Result<Response<NodeUsage>, Status> {
        self.callers.authorize(&req, "nodes", "", &self.node).await?;
        let latest = self.latest.lock().map(|l| l.clone()).unwrap_or_default();
        if latest.timestamp.is_empty() {
            return Err(Status::unavailable(format!("node {}: metrics not available yet", self.node)));
        }
        Ok(Response::new(latest))
    }
}

/// `GET /metrics` on the node's server: this daemon's metrics (Prometheus' text format) to a
/// caller allowed to read this node's metrics, as the stats (the masters' client certificate,
/// or in plaintext a token that may get the Node).
pub async fn serve_metrics(
    callers: crate::logs::Callers,
    node: String,
    metrics: std::sync::Arc<skiff_proto::metrics::Metrics>,
    req: http::Request<axum::body::Body>,
) -> http::Response<String> {
    let req = skiff_proto::metrics::as_grpc_request(req);
    let allowed = callers.authorize(&req, "nodes", "", &node).await;
    skiff_proto::metrics::http_answer(allowed.map(|()| metrics.text()))
}
