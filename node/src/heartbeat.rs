//! Registers the Node, renews its Lease in `kube-node-lease`, and reports its conditions
//! (Ready, MemoryPressure, DiskPressure) when they change or every minute.

use crate::NodeConfig;
use serde_json::{json, Value};
use skiff_client::Client;
use skiff_proto::api::Node;
use std::time::{Duration, Instant};
use tonic::Code;

/// Capacity of this machine: cpus, memory (from /proc/meminfo) and the pod limit.
pub(crate) fn capacity(config: &NodeConfig) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib = meminfo("MemTotal:").unwrap_or(0);
    json!({
        "cpu": config.cpu.clone().unwrap_or_else(|| cpus.to_string()),
        "memory": config.memory.clone().unwrap_or_else(|| format!("{mem_kib}Ki")),
        "pods": config.max_pods.to_string(),
    })
}

fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
}

fn pressure(config: &NodeConfig) -> (bool, bool) {
    let memory = meminfo("MemAvailable:").is_some_and(|kib| kib < 100 * 1024);
    let disk = nix::sys::statvfs::statvfs(&config.root)
        .is_ok_and(|s| s.blocks() > 0 && (s.blocks_available() as f64) / (s.blocks() as f64) < 0.05);
    (memory, disk)
}

/// Why a node without its pod range is not ready (the kubelet's "network not ready").
pub const NO_POD_RANGE: &str = "network not ready: no pod range yet (the masters' node IPAM controller allocates it)";

fn conditions(ready: bool, memory: bool, disk: bool, now: &str) -> Value {
    let c = |kind: &str, status: bool, reason: &str, message: &str| {
        json!({"type": kind, "status": if status { "True" } else { "False" }, "reason": reason,
               "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!([
        if ready {
            c("Ready", true, "NodeReady", "skiff node daemon is posting ready status")
        } else {
            c("Ready", false, "KubeletNotReady", NO_POD_RANGE)
        },
        c("MemoryPressure", memory, if memory { "NodeHasInsufficientMemory" } else { "NodeHasSufficientMemory" }, ""),
        c("DiskPressure", disk, if disk { "NodeHasDiskPressure" } else { "NodeHasNoDiskPressure" }, ""),
    ])
}

/// The Node object this daemon registers.
pub fn node_object(config: &NodeConfig) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": config.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH },
    });
    for (k, v) in &config.labels {
        labels[k] = json!(v);
    }
    let cap = capacity(config);
    let (memory, disk) = pressure(config);
    let now = skiff_proto::time::now_rfc3339();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": config.name, "labels": labels},
        // Without --pod-cidr the node IPAM controller hands the Node its range.
        "spec": if config.pod_cidr.is_empty() {
            json!({"taints": config.taints})
        } else {
            json!({"podCIDR": config.pod_cidr, "podCIDRs": [config.pod_cidr], "taints": config.taints})
        },
        "status": {
            "capacity": cap, "allocatable": cap,
            "conditions": conditions(!config.pod_cidr.is_empty(), memory, disk, &now),
            "addresses": [{"type": "InternalIP", "address": config.node_ip}, {"type": "Hostname", "address": config.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": config.log_port}},
            "nodeInfo": {"operatingSystem": "linux", "architecture": std::env::consts::ARCH,
                         "kubeletVersion": concat!("skiff-", env!("CARGO_PKG_VERSION")),
                         "containerRuntimeVersion": "libcontainer://0.7.0"},
        },
    })
}

/// Creates the Node, or on restart keeps the registered one and refreshes its status.
pub async fn register(client: &Client, config: &NodeConfig) -> Result<(), tonic::Status> {
    let desired = node_object(config);
    match client.create("nodes", "", &desired).await {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {}
        Err(s) => return Err(s),
    }
    // Status is its own subresource: create ignores it.
    report_status(client, config).await
}

/// How often a daemon still waiting for its pod range says so.
const RANGE_WAIT_NOTICE: Duration = Duration::from_secs(30);

/// The pod range of the registered Node: `--pod-cidr` when given (a Node registered earlier
/// with another range is an error), else the one the node IPAM controller writes into it,
/// waited for on a watch of this Node.
pub async fn pod_range(client: &Client, config: &NodeConfig) -> anyhow::Result<String> {
    use skiff_client::informer::{self, ApiSource, ObjectKey, Store};
    let store: Store<Node> = Store::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut changes = store.subscribe();
    let source = ApiSource::new(client.clone()).fields(&format!("metadata.name={}", config.name));
    let feeding = tokio::spawn(informer::run(store.clone(), source, stop_rx));
    let key = ObjectKey::new("", &config.name);
    let waited = Instant::now();
    let mut noticed = Instant::now();
    let range = loop {
        let held = store.get(&key).and_then(|n| n.spec.as_ref().map(|s| s.pod_cidr.clone())).unwrap_or_default();
        if !held.is_empty() {
            break Ok(held);
        }
        if !config.pod_cidr.is_empty() && store.is_synced() && store.get(&key).is_some() {
            break Ok(config.pod_cidr.clone());
        }
        if noticed.elapsed() >= RANGE_WAIT_NOTICE {
            noticed = Instant::now();
            tracing::warn!(
                "node {}: still waiting for a pod range after {} s (do the masters allocate them? \
                 --allocate-node-cidrs, --cluster-cidr; or give this node --pod-cidr)",
                config.name,
                waited.elapsed().as_secs()
            );
        }
        let next = tokio::time::timeout(RANGE_WAIT_NOTICE, changes.recv()).await;
        if let Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) = next {
            break Err(anyhow::anyhow!("node {}: the Node cache closed", config.name));
        }
    };
    let _ = stop_tx.send(true);
    let _ = feeding.await;
    let range = range?;
    if !config.pod_cidr.is_empty() && range != config.pod_cidr {
        anyhow::bail!(
            "node {} is registered with the pod range {range}, not --pod-cidr {} (a Node's range never changes; \
             delete the Node or drop the flag)",
            config.name,
            config.pod_cidr
        );
    }
    Ok(range)
}

/// How many times a write of this node's Node re-reads it when another writer (the node IPAM
/// or lifecycle controller) changed it in between; the kubelet's `nodeStatusUpdateRetry`.
const NODE_UPDATE_TRIES: usize = 5;

/// Reads this node's Node, lets `change` edit it, and writes it back (its status when
/// `status`), again from a fresh read when another writer got in between.
async fn write_node(
    client: &Client,
    name: &str,
    status: bool,
    mut change: impl FnMut(&mut Node) -> bool,
) -> Result<(), tonic::Status> {
    let mut tries = 1;
    loop {
        let stored = client.get("nodes", "", name).await?;
        let mut node: Node =
            serde_json::from_value(stored).map_err(|e| tonic::Status::internal(format!("node {name}: {e}")))?;
        if !change(&mut node) {
            return Ok(());
        }
        let node = serde_json::to_value(&node).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let written =
            if status { client.update_status("nodes", &node).await } else { client.update("nodes", &node).await };
        match written {
            Err(s) if s.code() == Code::Aborted && tries < NODE_UPDATE_TRIES => tries += 1,
            done => return done.map(|_| ()),
        }
    }
}

/// Edits this node's Node object (its metadata or spec) with `change`, which says whether it
/// changed anything; retried from a fresh read on a conflict.
pub async fn update_node(
    client: &Client,
    name: &str,
    change: impl FnMut(&mut Node) -> bool,
) -> Result<(), tonic::Status> {
    write_node(client, name, false, change).await
}

async fn report_status(client: &Client, config: &NodeConfig) -> Result<(), tonic::Status> {
    let status: skiff_proto::api::NodeStatus = serde_json::from_value(node_object(config)["status"].clone())
        .map_err(|e| tonic::Status::internal(format!("node {}: status: {e}", config.name)))?;
    write_node(client, &config.name, true, |node| {
        node.status = Some(status.clone());
        true
    })
    .await
}

/// Whether the stored Node says it is not ready (the node lifecycle controller marked it
/// `Unknown` while this daemon was silent): then its status is posted again at once.
async fn marked_not_ready(client: &Client, config: &NodeConfig) -> Result<bool, tonic::Status> {
    let node = client.get("nodes", "", &config.name).await?;
    let ready = node["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
    Ok(ready.is_none_or(|c| c["status"] != "True"))
}

async fn renew_lease(client: &Client, config: &NodeConfig) -> Result<(), tonic::Status> {
    let now = skiff_proto::time::now_rfc3339();
    let duration = (config.lease_interval.as_secs() * 4).max(10);
    match client.get("leases", "kube-node-lease", &config.name).await {
        Ok(mut lease) => {
            lease["spec"]["renewTime"] = json!(now);
            lease["spec"]["holderIdentity"] = json!(config.name);
            client.update("leases", &lease).await.map(|_| ())
        }
        Err(s) if s.code() == Code::NotFound => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": config.name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": config.name, "leaseDurationSeconds": duration, "renewTime": now, "acquireTime": now},
            });
            client.create("leases", "kube-node-lease", &lease).await.map(|_| ())
        }
        Err(s) => Err(s),
    }
}

/// `call` within `deadline`. A master that hangs (paused, cut off from the leader) must not
/// hold the heartbeat past the node grace period: past the deadline the next call starts with
/// another master.
async fn bounded<T>(
    client: &Client,
    deadline: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(deadline, call).await {
        Ok(r) => r,
        Err(_) => {
            client.skip_current();
            Err(tonic::Status::deadline_exceeded(format!("no answer within {deadline:?}; trying another master")))
        }
    }
}

/// How often the daemon checks that the stored Node still says Ready (Kubernetes' kubelet
/// looks every `nodeStatusUpdateFrequency`, 10 s).
const READY_CHECK: Duration = Duration::from_secs(10);

/// Heartbeats until `stop`: the Lease every `lease_interval`; the status on change, when the
/// stored Node no longer says Ready, or each minute.
pub async fn run(client: Client, config: NodeConfig, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last_report = Instant::now();
    let mut last_check = Instant::now();
    let mut last_pressure = pressure(&config);
    let mut first = true;
    // Kubernetes' kubelet gives its heartbeat calls the renew interval; at least 2 s here.
    let deadline = config.lease_interval.clamp(Duration::from_secs(2), Duration::from_secs(10));
    loop {
        // The first renewal right away: a node is watched from its first Lease on.
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = tokio::time::sleep(config.lease_interval) => {}
                _ = stop.changed() => return,
            }
        }
        if let Err(e) = bounded(&client, deadline, renew_lease(&client, &config)).await {
            tracing::warn!("node {}: renewing the lease: {e}", config.name);
        }
        let now_pressure = pressure(&config);
        let mut due = now_pressure != last_pressure || last_report.elapsed() >= Duration::from_secs(60);
        if !due && last_check.elapsed() >= READY_CHECK {
            last_check = Instant::now();
            due = bounded(&client, deadline, marked_not_ready(&client, &config)).await.unwrap_or(false);
        }
        if due {
            match bounded(&client, deadline, report_status(&client, &config)).await {
                Ok(()) => {
                    last_report = Instant::now();
                    last_pressure = now_pressure;
                }
                Err(e) => tracing::warn!("node {}: reporting status: {e}", config.name),
            }
        }
    }
}
