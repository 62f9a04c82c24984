//! The pod loop: on every change to the pods bound to this node (a field-selected informer),
//! and every `sync_interval` as a resync, it goes over them as cached and, for each,
//! moves the machine one step toward the spec (sandbox, volumes, init containers in order,
//! app containers, restarts after back-off), then reports the status it observes. Pods that
//! are being deleted get SIGTERM, SIGKILL after their grace period, then cleanup and the final
//! delete. Level-triggered: every decision is recomputed from the cache and the instance
//! directories, so a missed round or a daemon restart changes nothing in the outcome.

mod images;
mod volumes;

use crate::bundle::{self, Mount, PodContext};
use crate::error::NodeError;
use crate::image::ImageStore;
use crate::instance::{self, Instance, InstanceState};
use crate::sandbox::{self, PodNetwork, Sandbox};
use crate::shim::{self, ShimSpec};
use crate::status::{self, Observed, Step};
use crate::NodeConfig;
use serde_json::{json, Value};
use sha2::Digest;
use skiff_client::informer::{self, ApiSource, Store};
use skiff_client::Client;
use skiff_proto::api::{Container, Pod};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The RuntimeClass handlers this node runs pods with (libcontainer, under the name
/// containerd and CRI-O give their default runtime).
pub const RUNTIME_HANDLERS: &[&str] = &["runc"];

/// How often a pod whose RuntimeClass this node cannot run has its class looked up again.
const RUNTIME_RECHECK: Duration = Duration::from_secs(10);

pub struct Agent {
    pub client: Client,
    pub config: NodeConfig,
    pub images: ImageStore,
    pub network: PodNetwork,
    /// Why a container could not be created, until it can: (pod uid, container) → (reason, message).
    waiting: HashMap<(String, String), (String, String)>,
    /// When this daemon first saw a pod's deletion (grace is counted from here).
    deleting: HashMap<String, Instant>,
    /// Per pod uid: the resourceVersion at which the API last held exactly the status we
    /// computed, and that status; a round that computes it again for that version writes
    /// nothing and compares nothing.
    reported: HashMap<String, (String, Value)>,
    /// resourceVersion of each pod's saved `pod.json`.
    saved: HashMap<String, String>,
    /// Runs whose shim was spawned this life of the daemon and has not reported yet.
    starting: Vec<(PathBuf, Instant)>,
    /// Probe results per container run directory, written by the prober tasks.
    probes: crate::probe::Shared,
    /// Runs whose prober task has been started.
    probing: HashSet<PathBuf>,
    puller: std::sync::Arc<crate::registry::Puller>,
    /// Image pulls by image reference, written by the pull tasks.
    pulls: std::sync::Arc<std::sync::Mutex<HashMap<String, Pull>>>,
    /// When each (pod uid, container, run) first asked for its image (pullPolicy Always
    /// waits for a pull that finished after this).
    asked: HashMap<(String, String, u32), Instant>,
    /// When each pod's ConfigMap/Secret volumes were last re-projected.
    projected: HashMap<String, Instant>,
    /// Pods (uid) seen not running, since when: their start is timed until they run.
    seen: HashMap<String, Instant>,
    /// Sidecar runs being stopped because their pod's app containers finished, since when.
    stopping: HashMap<PathBuf, Instant>,
    /// Pods (uid) whose RuntimeClass this node cannot run: when it was last looked up, and why.
    no_runtime: HashMap<String, (Instant, String)>,
    /// Pods (uid) whose containers all run.
    running: HashSet<String>,
    metrics: AgentMetrics,
}

/// The kubelet's metrics this daemon keeps: `kubelet_running_pods` and
/// `kubelet_pod_start_duration_seconds` (from this daemon first seeing a pod that was not
/// running to all its containers running).
#[derive(Clone)]
struct AgentMetrics {
    running_pods: prometheus_client::metrics::gauge::Gauge,
    pod_start_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl AgentMetrics {
    fn register(metrics: &skiff_proto::metrics::Metrics) -> AgentMetrics {
        let m = AgentMetrics {
            running_pods: Default::default(),
            pod_start_seconds: skiff_proto::metrics::request_seconds(),
        };
        metrics.register("kubelet_running_pods", "Pods whose containers all run on this node", m.running_pods.clone());
        metrics.register(
            "kubelet_pod_start_duration_seconds",
            "From this node first seeing a pod to all its containers running",
            m.pod_start_seconds.clone(),
        );
        m
    }
}

/// One image's pull, as the pull task leaves it.
#[derive(Clone, Debug)]
pub enum Pull {
    InFlight,
    Done(Instant),
    /// Failed `attempts` times in a row, last at `at`.
    Failed {
        message: String,
        at: Instant,
        attempts: u32,
    },
}

fn meta<'a>(pod: &'a Value, field: &str) -> &'a str {
    pod["metadata"][field].as_str().unwrap_or_default()
}

fn secs_since(ts: &str) -> Duration {
    let now = skiff_proto::time::now_secs();
    Duration::from_secs(skiff_proto::time::parse_rfc3339(ts).map_or(u64::MAX / 2, |t| (now - t).max(0) as u64))
}

impl Agent {
    /// The pod loop of this node, its metrics registered in `metrics`.
    pub fn new(
        client: Client,
        config: NodeConfig,
        metrics: &skiff_proto::metrics::Metrics,
    ) -> Result<Agent, NodeError> {
        let images = ImageStore::open(config.root.join("images"))?;
        let puller = std::sync::Arc::new(crate::registry::Puller::new(config.insecure_registries.clone())?);
        let mut network = PodNetwork::parse(&config.bridge, &config.pod_cidr).map_err(NodeError::Sandbox)?;
        network.mtu = config.pod_mtu;
        for d in ["pods", "state"] {
            std::fs::create_dir_all(config.root.join(d))?;
        }
        sandbox::prepare_ns_root(&config.root.join("ns"))?;
        sandbox::ensure_bridge(&network)?;
        crate::hostport::block_localnet()?;
        Ok(Agent {
            client,
            config,
            images,
            network,
            waiting: HashMap::new(),
            deleting: HashMap::new(),
            reported: HashMap::new(),
            saved: HashMap::new(),
            starting: Vec::new(),
            probes: Default::default(),
            probing: HashSet::new(),
            puller,
            pulls: Default::default(),
            asked: HashMap::new(),
            projected: HashMap::new(),
            seen: HashMap::new(),
            no_runtime: HashMap::new(),
            stopping: HashMap::new(),
            running: HashSet::new(),
            metrics: AgentMetrics::register(metrics),
        })
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.root.join("pods").join(uid)
    }

    fn sandbox(&self, uid: &str) -> Sandbox {
        Sandbox::new(&self.config.root.join("ns"), uid)
    }

    /// Runs rounds until `stop`.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        // The pods bound here, from one list and then one watch (field-selected to this node):
        // a change wakes the loop at once, and rounds read the cache, never the API.
        let pods: Store<Pod> = Store::new();
        let source = ApiSource::new(self.client.clone()).fields(&format!("spec.nodeName={}", self.config.name));
        let informer = tokio::spawn(informer::run(pods.clone(), source, stop.clone()));
        let mut changes = pods.subscribe();
        tokio::select! {
            () = pods.synced() => {}
            _ = stop.changed() => {
                informer.abort();
                return;
            }
        }
        loop {
            if let Err(e) = self.round(&pods).await {
                tracing::warn!("node {}: sync: {e}", self.config.name);
            }
            // While a container is being created or an image pulled, look again soon: the
            // shim reports through files, not through the API. The interval is the resync.
            let busy = self.busy();
            let pause = if busy { Duration::from_millis(10) } else { self.config.sync_interval };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = changes.recv() => {}
                _ = stop.changed() => break,
            }
        }
        informer.abort();
    }

    /// Whether some container run is starting or some image pull is under way.
    fn busy(&mut self) -> bool {
        let pulling = self.pulls.lock().is_ok_and(|m| m.values().any(|p| matches!(p, Pull::InFlight)));
        self.starting.retain(|(dir, since)| {
            let run = Instance { attempt: 0, dir: dir.clone() };
            run.state() == InstanceState::Creating && since.elapsed() < Duration::from_secs(10)
        });
        pulling || !self.starting.is_empty()
    }

    /// One pass over every pod bound here (as the informer's cache has them) and every pod
    /// directory left on disk.
    pub async fn round(&mut self, cache: &Store<Pod>) -> Result<(), NodeError> {
        let pods: Vec<Value> = cache.list().iter().filter_map(|p| serde_json::to_value(&**p).ok()).collect();
        let mut live = HashSet::new();
        for pod in &pods {
            let uid = meta(pod, "uid").to_string();
            live.insert(uid.clone());
            let result = if pod["metadata"]["deletionTimestamp"].is_string() {
                self.terminate(pod, true).await
            } else {
                self.sync(pod).await
            };
            if let Err(e) = result {
                tracing::warn!("pod {}/{}: {e}", meta(pod, "namespace"), meta(pod, "name"));
            }
        }
        if let Some(dir) = self.config.pod_manifest_path.clone() {
            if let Err(e) = self.mirror_static_pods(&dir, &pods).await {
                tracing::warn!("node {}: static pods in {}: {e}", self.config.name, dir.display());
            }
        }
        // Pods deleted without waiting for us (grace 0, --force) or gone while we were down.
        for entry in std::fs::read_dir(self.config.root.join("pods"))?.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if live.contains(&uid) {
                continue;
            }
            let saved: Value =
                shim::read(&entry.path().join("pod.json")).unwrap_or_else(|| json!({"metadata": {"uid": uid}}));
            self.terminate(&saved, false).await?;
        }
        self.running.retain(|uid| live.contains(uid));
        self.seen.retain(|uid, _| live.contains(uid));
        self.metrics.running_pods.set(self.running.len() as i64);
        Ok(())
    }

    /// Static pods: each manifest in `dir` becomes a mirror pod `<name>-<node>` bound to this
    /// node (annotated `kubernetes.io/config.mirror` with the manifest's hash), which the pod
    /// loop then runs like any other; a changed manifest replaces it, a removed one deletes it.
    async fn mirror_static_pods(&mut self, dir: &Path, pods: &[Value]) -> Result<(), NodeError> {
        let mut wanted: HashMap<String, (Value, String)> = HashMap::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if !matches!(ext, "yaml" | "yml" | "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let mut pod: Value = match serde_yaml::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!("static pod {}: {e}", path.display());
                    continue;
                }
            };
            if pod["kind"] != "Pod" {
                tracing::warn!("static pod {}: kind must be Pod", path.display());
                continue;
            }
            let hash = hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8]);
            let name = format!("{}-{}", pod["metadata"]["name"].as_str().unwrap_or("static"), self.config.name);
            pod["metadata"]["name"] = json!(name);
            if !pod["metadata"]["namespace"].is_string() {
                pod["metadata"]["namespace"] = json!("default");
            }
            pod["metadata"]["annotations"]["kubernetes.io/config.mirror"] = json!(hash);
            pod["metadata"]["annotations"]["kubernetes.io/config.source"] = json!("file");
            pod["spec"]["nodeName"] = json!(self.config.name);
            wanted.insert(name, (pod, hash));
        }
        let mirror = |p: &Value| p["metadata"]["annotations"]["kubernetes.io/config.mirror"].as_str().map(String::from);
        for p in pods.iter().filter(|p| mirror(p).is_some()) {
            let name = meta(p, "name");
            let stale = wanted.get(name).is_none_or(|(_, hash)| mirror(p).as_deref() != Some(hash));
            if stale && !p["metadata"]["deletionTimestamp"].is_string() {
                self.client.delete_pod(meta(p, "namespace"), name, None).await?;
            }
        }
        for (name, (pod, _)) in wanted {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            if pods.iter().any(|p| meta(p, "name") == name && meta(p, "namespace") == ns) {
                continue;
            }
            match self.client.create("pods", &ns, &pod).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => tracing::warn!("static pod {name}: {}", s.message()),
            }
        }
        Ok(())
    }

    async fn sync(&mut self, pod_json: &Value) -> Result<(), NodeError> {
        let pod: Pod = serde_json::from_value(pod_json.clone()).map_err(|e| NodeError::Runtime(e.to_string()))?;
        let uid = meta(pod_json, "uid").to_string();
        // A pod that has not run yet: its start is timed from now.
        if !self.running.contains(&uid) && !self.seen.contains_key(&uid) && pod_json["status"]["phase"] == "Pending" {
            self.seen.insert(uid.clone(), Instant::now());
        }
        // The kubelet admits only pods for its own operating system.
        let os = pod.spec.as_ref().and_then(|s| s.os.as_ref()).map_or("", |o| o.name.as_str());
        if !os.is_empty() && os != "linux" {
            if pod_json["status"]["phase"] == "Failed" {
                return Ok(());
            }
            let message = "Failed to admit pod as the OS field doesn't match node OS";
            return self.reject(pod_json, "PodOSNotSupported", message).await;
        }
        let dir = self.pod_dir(&uid);
        std::fs::create_dir_all(&dir)?;
        let rv = meta(pod_json, "resourceVersion").to_string();
        if self.saved.get(&uid) != Some(&rv) {
            shim::write_atomic(&dir.join("pod.json"), pod_json)?;
            self.saved.insert(uid.clone(), rv);
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let phase = pod_json["status"]["phase"].as_str().unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return Ok(());
        }
        // A sandbox is made only by a runtime this node has (the class is looked up once,
        // and again every RUNTIME_RECHECK while it names another).
        let class = spec.runtime_class_name.as_deref().unwrap_or_default();
        if !class.is_empty() && !dir.join("sandbox-ready").exists() {
            if let Some(why) = self.runtime_problem(pod_json, &uid, class).await {
                tracing::debug!(pod = meta(pod_json, "name"), "{why}");
                return Ok(());
            }
        }
        let policy = if spec.restart_policy.is_empty() { "Always" } else { spec.restart_policy.as_str() };
        let ip =
            if spec.host_network { None } else { Some(crate::blocking(|| self.ensure_sandbox(&pod, &uid, &dir))?) };

        let (base, max) = (self.config.backoff_base, self.config.backoff_max);
        // Sidecars (init containers with restartPolicy Always) stop once the app containers
        // of a pod that does not restart them have all finished.
        let sidecars = spec.init_containers.iter().any(|c| c.restart_policy == "Always");
        let apps_finished = sidecars
            && policy != "Always"
            && spec.containers.iter().all(|c| {
                let o = self.observe(&uid, &dir, c);
                let since = o.exited.as_ref().map_or(Duration::ZERO, |e| secs_since(&e.finished_at));
                status::step(&o, policy, false, since, base, max) == Step::Done
            });
        let mut init_obs = Vec::new();
        let mut initialized = true;
        for c in &spec.init_containers {
            let sidecar = c.restart_policy == "Always";
            let o = self.observe(&uid, &dir, c);
            let since = o.exited.as_ref().map_or(Duration::ZERO, |e| secs_since(&e.finished_at));
            let mut st = match (sidecar, apps_finished) {
                (true, true) => {
                    self.stop_sidecar(pod_json, &o);
                    if o.running.is_some() {
                        Step::Wait
                    } else {
                        Step::Done
                    }
                }
                // A sidecar restarts whenever it exits, whatever the pod's policy.
                (true, false) => status::step(&o, "Always", false, since, base, max),
                (false, _) => status::step(&o, policy, true, since, base, max),
            };
            // Each starts in its turn; a sidecar that ran once is restarted at any time.
            if st == Step::Start {
                if initialized || (sidecar && o.runs > 0) {
                    self.start(pod_json, &pod, c, &dir, ip, o.runs).await;
                }
                st = Step::Wait;
            }
            let o = self.observe(&uid, &dir, c);
            if sidecar {
                self.ensure_prober(pod_json, &pod, c, &o, ip);
            }
            if !(if sidecar { o.started || apps_finished } else { st == Step::Done }) {
                initialized = false;
            }
            init_obs.push((o, st));
        }
        let mut app_obs = Vec::new();
        for c in &spec.containers {
            let o = self.observe(&uid, &dir, c);
            let since = o.exited.as_ref().map_or(Duration::ZERO, |e| secs_since(&e.finished_at));
            let mut st = status::step(&o, policy, false, since, base, max);
            if st == Step::Start {
                // Once initialized, the pod stays so whatever a sidecar does.
                if initialized || o.runs > 0 {
                    self.start(pod_json, &pod, c, &dir, ip, o.runs).await;
                }
                st = Step::Wait;
            }
            let o = self.observe(&uid, &dir, c);
            self.ensure_prober(pod_json, &pod, c, &o, ip);
            app_obs.push((o, st));
        }
        self.probing.retain(|d| !d.join("exit.json").exists() && d.exists());
        self.stopping.retain(|d, _| !d.join("exit.json").exists() && d.exists());
        if app_obs.iter().any(|(o, _)| o.running.is_some()) {
            self.refresh_projections(pod_json, &spec, &dir).await;
        }
        self.report(pod_json, ip, &init_obs, &app_obs).await
    }

    /// Starts the prober task of a running container run that has probes, once.
    fn ensure_prober(&mut self, pod_json: &Value, pod: &Pod, c: &Container, o: &Observed, ip: Option<Ipv4Addr>) {
        let (Some(pid), Some(run_dir)) = (o.pid, o.run_dir.clone()) else { return };
        if self.probing.contains(&run_dir) {
            return;
        }
        let spec = &pod_json["spec"];
        let all = spec["initContainers"].as_array().into_iter().chain(spec["containers"].as_array()).flatten();
        let cj = all.clone().find(|x| x["name"] == c.name.as_str()).cloned().unwrap_or_default();
        let mut parsed = HashMap::new();
        for key in ["startupProbe", "livenessProbe", "readinessProbe"] {
            if cj[key].is_object() {
                match crate::probe::parse(&cj[key], &cj) {
                    Ok(p) => {
                        parsed.insert(key, p);
                    }
                    Err(e) => tracing::warn!("pod {}: container {} {key}: {e}", meta(pod_json, "name"), c.name),
                }
            }
        }
        let post_start = match &cj["lifecycle"]["postStart"] {
            h if h.is_object() => match crate::probe::parse_hook(h, &cj) {
                Ok(hook) => Some(hook),
                Err(e) => {
                    tracing::warn!("pod {}: container {} postStart: {e}", meta(pod_json, "name"), c.name);
                    None
                }
            },
            _ => None,
        };
        self.probing.insert(run_dir.clone());
        if parsed.is_empty() && post_start.is_none() {
            return;
        }
        let started = shim::read::<shim::Started>(&run_dir.join("started.json"))
            .map(|s| secs_since(&s.started_at))
            .unwrap_or_default();
        let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0) as u64;
        let client = self.client.clone();
        let pod_ref = pod_json.clone();
        let name = c.name.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, String)>();
        tokio::spawn(async move {
            while let Some((reason, message)) = rx.recv().await {
                let kind = if reason == "Killing" { "Normal" } else { "Warning" };
                client.event(&pod_ref, "Pod", "kubelet", kind, reason, &format!("{message} (container {name})")).await;
            }
        });
        let prober = crate::probe::Prober {
            run_dir,
            pid,
            ip: ip.map_or_else(|| self.config.node_ip.clone(), |a| a.to_string()),
            started_at: std::time::Instant::now().checked_sub(started).unwrap_or_else(std::time::Instant::now),
            startup: parsed.remove("startupProbe"),
            liveness: parsed.remove("livenessProbe"),
            readiness: parsed.remove("readinessProbe"),
            post_start,
            grace: Duration::from_secs(grace),
            results: self.probes.clone(),
            event: Box::new(move |reason, message| {
                let _ = tx.send((reason, message));
            }),
        };
        tokio::spawn(prober.run());
    }

    /// Why this node cannot make a sandbox for a pod of RuntimeClass `class` (None: it can —
    /// the class's handler is one of [`RUNTIME_HANDLERS`]); each new reason is reported as the
    /// kubelet's FailedCreatePodSandBox event.
    async fn runtime_problem(&mut self, pod_json: &Value, uid: &str, class: &str) -> Option<String> {
        if let Some((_, why)) = self.no_runtime.get(uid).filter(|(at, _)| at.elapsed() < RUNTIME_RECHECK) {
            return Some(why.clone());
        }
        let why = match self.client.get("runtimeclasses", "", class).await {
            Ok(rc) => {
                let handler = rc["handler"].as_str().unwrap_or_default();
                if RUNTIME_HANDLERS.contains(&handler) {
                    self.no_runtime.remove(uid);
                    return None;
                }
                format!(
                    "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox runtime: \
                     no runtime for {handler:?} is configured"
                )
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                format!("Failed to create pod sandbox: RuntimeClass {class:?} not found")
            }
            Err(s) => format!("Failed to create pod sandbox: looking up RuntimeClass {class:?}: {}", s.message()),
        };
        let new = self.no_runtime.get(uid).is_none_or(|(_, had)| *had != why);
        if new {
            self.client.event(pod_json, "Pod", "kubelet", "Warning", "FailedCreatePodSandBox", &why).await;
        }
        self.no_runtime.insert(uid.to_string(), (Instant::now(), why.clone()));
        Some(why)
    }

    fn ensure_sandbox(&self, pod: &Pod, uid: &str, dir: &Path) -> Result<Ipv4Addr, NodeError> {
        let saved = std::fs::read_to_string(dir.join("ip")).ok().and_then(|s| s.trim().parse().ok());
        // Set up once; the marker is written last, so a half-made sandbox is made again.
        if let (Some(ip), true) = (saved, dir.join("sandbox-ready").exists()) {
            return Ok(ip);
        }
        let name = pod.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let spec = pod.spec.as_ref();
        let hostname = spec.map(|s| s.hostname.clone()).filter(|h| !h.is_empty()).unwrap_or(name);
        let sandbox = self.sandbox(uid);
        sandbox.create(&hostname)?;
        let ip = match saved {
            Some(ip) => ip,
            None => {
                let ip = self.allocate_ip(uid)?;
                std::fs::write(dir.join("ip"), ip.to_string())?;
                ip
            }
        };
        sandbox.connect(&self.network, ip)?;
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        std::fs::write(etc.join("hostname"), format!("{hostname}\n"))?;
        let mut hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n");
        for alias in spec.map(|s| s.host_aliases.as_slice()).unwrap_or_default() {
            hosts.push_str(&format!("{}\t{}\n", alias.ip, alias.hostnames.join("\t")));
        }
        std::fs::write(etc.join("hosts"), hosts)?;
        let pod_json = serde_json::to_value(pod).map_err(|e| NodeError::Sandbox(e.to_string()))?;
        let ports = crate::hostport::mappings(&pod_json, &self.config.node_ip, &ip.to_string());
        crate::hostport::publish(&self.config.bridge, uid, &ports)?;
        std::fs::write(dir.join("sandbox-ready"), b"")?;
        Ok(ip)
    }

    fn allocate_ip(&self, uid: &str) -> Result<Ipv4Addr, NodeError> {
        let used: HashSet<String> = std::fs::read_dir(self.config.root.join("pods"))?
            .flatten()
            .filter(|e| e.file_name().to_str() != Some(uid))
            .filter_map(|e| std::fs::read_to_string(e.path().join("ip")).ok())
            .map(|s| s.trim().to_string())
            .collect();
        self.network
            .pod_addresses()
            .find(|a| !used.contains(&a.to_string()))
            .ok_or_else(|| NodeError::Sandbox(format!("pod CIDR {} has no free address", self.config.pod_cidr)))
    }

    /// What the instance directories say about container `c`; releases finished overlays.
    fn observe(&self, uid: &str, dir: &Path, c: &Container) -> Observed {
        let all = instance::instances(dir, &c.name);
        let mut o = Observed {
            name: c.name.clone(),
            image: c.image.clone(),
            runs: all.len() as u32,
            waiting: self.waiting.get(&(uid.to_string(), c.name.clone())).cloned(),
            sidecar: c.restart_policy == "Always",
            ..Default::default()
        };
        if let Some(latest) = all.last() {
            o.container_id = format!("skiff://{}", container_id(uid, &c.name, latest.attempt));
            o.image_id = std::fs::read_to_string(latest.dir.join("image-id")).unwrap_or_default();
            match latest.state() {
                InstanceState::Running(s) => {
                    o.running = Some(s.started_at);
                    o.pid = Some(s.pid);
                    o.run_dir = Some(latest.dir.clone());
                    let results = self.probes.lock().ok().and_then(|m| m.get(&latest.dir).cloned());
                    let post_start = c.lifecycle.as_ref().is_some_and(|l| l.post_start.is_some());
                    (o.ready, o.started) = match results {
                        Some(r) => (r.ready && r.started, r.started),
                        // Not probed yet: ready only if nothing has to pass first.
                        None => {
                            let started = c.startup_probe.is_none() && !post_start;
                            (started && c.readiness_probe.is_none(), started)
                        }
                    };
                }
                InstanceState::Exited(e) => {
                    latest.release();
                    o.exited = Some(e);
                }
                InstanceState::Creating => {}
            }
        }
        if all.len() >= 2 {
            if let InstanceState::Exited(e) = all[all.len() - 2].state() {
                o.previous = Some(e);
            }
        }
        o
    }

    /// Refuses a pod this node cannot run, as the kubelet's admission does: the pod Failed
    /// with the reason and message, and a warning event.
    async fn reject(&mut self, pod_json: &Value, reason: &str, message: &str) -> Result<(), NodeError> {
        let mut updated = pod_json.clone();
        updated["status"] = json!({
            "phase": "Failed",
            "reason": reason,
            "message": message,
            "startTime": skiff_proto::time::now_rfc3339(),
        });
        match self.client.update_status("pods", &updated).await {
            Ok(_) => {
                self.client.event(pod_json, "Pod", "kubelet", "Warning", reason, message).await;
                Ok(())
            }
            // Someone else changed the pod: the next round reads it again.
            Err(s) if s.code() == tonic::Code::Aborted => Ok(()),
            Err(s) => Err(s.into()),
        }
    }

    async fn report(
        &mut self,
        pod_json: &Value,
        ip: Option<Ipv4Addr>,
        init: &[(Observed, Step)],
        app: &[(Observed, Step)],
    ) -> Result<(), NodeError> {
        let name = meta(pod_json, "name");
        let uid = meta(pod_json, "uid").to_string();
        let (phase, mut conditions) = status::phase_and_conditions(init, app);
        let spec = serde_json::from_value::<skiff_proto::api::PodSpec>(pod_json["spec"].clone()).unwrap_or_default();
        status::with_others(&mut conditions, &pod_json["status"]["conditions"], &spec.readiness_gates);
        let all_running = phase == "Running" && app.iter().all(|(o, _)| o.running.is_some());
        if all_running {
            if self.running.insert(uid.clone()) {
                if let Some(since) = self.seen.remove(&uid) {
                    self.metrics.pod_start_seconds.observe(since.elapsed().as_secs_f64());
                }
            }
        } else {
            self.running.remove(&uid);
        }
        let init_done = init.iter().all(|(o, s)| if o.sidecar { o.started } else { *s == Step::Done });
        let app_waiting = if init_done { "ContainerCreating" } else { "PodInitializing" };
        let pod_ip = ip.map(|a| a.to_string()).unwrap_or_else(|| self.config.node_ip.clone());
        let old = &pod_json["status"];
        let start_time = old["startTime"].as_str().map(String::from).unwrap_or_else(skiff_proto::time::now_rfc3339);
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.config.node_ip,
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": start_time,
            "initContainerStatuses": init.iter().map(|(o, s)| status::container_status(o, s, name, "PodInitializing")).collect::<Vec<_>>(),
            "containerStatuses": app.iter().map(|(o, s)| status::container_status(o, s, name, app_waiting)).collect::<Vec<_>>(),
        });
        if let Some(q) = old.get("qosClass") {
            status["qosClass"] = q.clone();
        }
        // Keep the transition times of conditions whose status did not change.
        for c in status["conditions"].as_array_mut().into_iter().flatten() {
            let prev = old["conditions"].as_array().into_iter().flatten().find(|p| p["type"] == c["type"]);
            let time = match prev {
                Some(p) if p["status"] == c["status"] && p["lastTransitionTime"].is_string() => {
                    p["lastTransitionTime"].clone()
                }
                _ => json!(skiff_proto::time::now_rfc3339()),
            };
            c["lastTransitionTime"] = time;
        }
        let rv = meta(pod_json, "resourceVersion").to_string();
        if self.reported.get(&uid).is_some_and(|(v, st)| *v == rv && strip_times(st) == strip_times(&status)) {
            return Ok(());
        }
        // Compare as the API stores it (proto3 JSON leaves defaults out), times aside.
        let canonical = |v: &Value| {
            serde_json::from_value::<skiff_proto::api::PodStatus>(v.clone())
                .ok()
                .and_then(|s| serde_json::to_value(s).ok())
                .map(|v| strip_times(&v))
        };
        if canonical(old) == canonical(&status) {
            self.reported.insert(uid, (rv, status));
            return Ok(());
        }
        let mut updated = pod_json.clone();
        updated["status"] = status.clone();
        tracing::debug!(pod = name, phase = %updated["status"]["phase"], "reporting status");
        match self.client.update_status("pods", &updated).await {
            Ok(stored) => {
                self.reported.insert(uid, (meta(&stored, "resourceVersion").to_string(), status));
                Ok(())
            }
            // Someone else changed the pod: next round re-reads it.
            Err(s) if s.code() == tonic::Code::Aborted => Ok(()),
            Err(s) => Err(s.into()),
        }
    }

    /// Starts run `attempt` of container `c`: overlay rootfs, bundle, shim. Failures that the
    /// user must fix (image missing, bad reference) are kept as the container's waiting reason.
    async fn start(
        &mut self,
        pod_json: &Value,
        pod: &Pod,
        c: &Container,
        dir: &Path,
        ip: Option<Ipv4Addr>,
        attempt: u32,
    ) {
        let uid = meta(pod_json, "uid").to_string();
        let key = (uid.clone(), c.name.clone());
        tracing::debug!(pod = meta(pod_json, "name"), container = c.name, attempt, "starting");
        match self.prepare(pod_json, pod, c, dir, ip, attempt).await {
            Ok(()) => {
                self.waiting.remove(&key);
                let verb = if attempt == 0 { "Started" } else { "Restarted" };
                // Off the start path: the event is best-effort and its write takes a raft round.
                let (client, pod, msg) =
                    (self.client.clone(), pod_json.clone(), format!("{verb} container {}", c.name));
                tokio::spawn(async move { client.event(&pod, "Pod", "kubelet", "Normal", "Started", &msg).await });
            }
            Err((reason, message)) => {
                // A volume that cannot be mounted keeps the pod in ContainerCreating, with a
                // FailedMount event, as the kubelet reports it.
                let (reason, event) = match reason.as_str() {
                    _ if message.starts_with(volumes::MOUNT_FAILED) => {
                        ("ContainerCreating".to_string(), Some(("Warning", "FailedMount")))
                    }
                    "ContainerCreating" => (reason, None),
                    "ImagePullBackOff" => (reason, Some(("Normal", "BackOff"))),
                    _ => (reason, Some(("Warning", "Failed"))),
                };
                // Once per reason (per message for mounts, whose reason stays the same).
                let seen = self.waiting.get(&key);
                let new = match event {
                    Some((_, "FailedMount")) => seen.is_none_or(|(r, m)| *r != reason || *m != message),
                    _ => seen.is_none_or(|(r, _)| *r != reason),
                };
                if let Some((kind, event)) = event.filter(|_| new) {
                    self.client.event(pod_json, "Pod", "kubelet", kind, event, &message).await;
                }
                self.waiting.insert(key, (reason, message));
            }
        }
    }

    async fn prepare(
        &mut self,
        pod_json: &Value,
        pod: &Pod,
        c: &Container,
        dir: &Path,
        ip: Option<Ipv4Addr>,
        attempt: u32,
    ) -> Result<(), (String, String)> {
        let uid = meta(pod_json, "uid");
        let name = meta(pod_json, "name");
        let spec = pod.spec.clone().unwrap_or_default();
        let (image, lower) = self.image_for(pod_json, c, attempt).await?;
        let config_err = |m: String| ("CreateContainerConfigError".to_string(), m);
        let c = &bundle::with_pod_security(&spec, c);
        let named = format!("{name}_{}({uid})", meta(pod_json, "namespace"));
        bundle::check_non_root(c, &image, &named).map_err(config_err)?;
        let env = self.resolve_env(pod_json, &spec, c, ip).await.map_err(config_err)?;
        let mounts = self.mounts(pod_json, &spec, c, dir).await.map_err(config_err)?;
        let run_err = |e: std::io::Error| ("CreateContainerError".to_string(), format!("container {}: {e}", c.name));
        let inst = Instance { attempt, dir: dir.join("containers").join(&c.name).join(attempt.to_string()) };
        for d in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(inst.dir.join(d)).map_err(run_err)?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            inst.dir.join("upper").display(),
            inst.dir.join("work").display()
        );
        nix::mount::mount(
            Some("overlay"),
            &inst.rootfs(),
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| ("CreateContainerError".to_string(), format!("container {}: overlay mount: {e}", c.name)))?;
        let sandbox = self.sandbox(uid);
        let id = container_id(uid, &c.name, attempt);
        let ctx = PodContext {
            net_ns: (!spec.host_network).then(|| sandbox.net()),
            ipc_ns: (!spec.host_ipc).then(|| sandbox.ipc()),
            uts_ns: (!spec.host_network).then(|| sandbox.uts()),
            cgroups_path: format!("/skiff/{}/pod{uid}/{}", self.config.name, c.name),
            pids_limit: self.config.pids_limit,
        };
        let hostname = if spec.hostname.is_empty() { name.to_string() } else { spec.hostname.clone() };
        let oci = bundle::spec(c, &image, &inst.rootfs(), &env, &hostname, &mounts, &ctx)
            .map_err(|m| ("CreateContainerError".to_string(), m))?;
        std::fs::write(inst.dir.join("config.json"), oci.to_string()).map_err(run_err)?;
        std::fs::write(inst.dir.join("image-id"), &image.digest).map_err(run_err)?;
        let memory_cgroup = Path::new("/sys/fs/cgroup/memory").join(ctx.cgroups_path.trim_start_matches('/'));
        let shim_spec = ShimSpec {
            id,
            state_root: self.config.root.join("state"),
            memory_cgroup: Some(memory_cgroup),
            log_max_bytes: self.config.log_max_bytes,
        };
        shim::write_atomic(&inst.dir.join("shim.json"), &shim_spec).map_err(run_err)?;
        let shim_log = std::fs::File::create(inst.dir.join("shim.log")).map_err(run_err)?;
        let mut cmd = tokio::process::Command::new(&self.config.shim_exe);
        cmd.arg("shim")
            .arg(&inst.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(shim_log)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(run_err)?;
        self.starting.push((inst.dir.clone(), Instant::now()));
        tracing::debug!(pod = name, container = c.name, "shim spawned");
        // Reap the shim when it exits; it outlives us if we are restarted.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// Stops a pod's containers (SIGTERM, then SIGKILL after the grace period) and, once all
    /// have exited, removes everything it had on this node; `in_api`: finish the API delete too.
    async fn terminate(&mut self, pod: &Value, in_api: bool) -> Result<(), NodeError> {
        let uid = meta(pod, "uid").to_string();
        let dir = self.pod_dir(&uid);
        let grace = pod["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0) as u64;
        let first = !self.deleting.contains_key(&uid);
        let since = *self.deleting.entry(uid.clone()).or_insert_with(Instant::now);
        let running: Vec<Instance> = instance::all_instances(&dir)
            .into_iter()
            .filter(|i| matches!(i.state(), InstanceState::Running(_)))
            .collect();
        if !running.is_empty() {
            if first && in_api {
                self.client.event(pod, "Pod", "kubelet", "Normal", "Killing", "Stopping containers").await;
            }
            let signal = if since.elapsed() >= Duration::from_secs(grace) {
                nix::sys::signal::Signal::SIGKILL
            } else {
                nix::sys::signal::Signal::SIGTERM
            };
            if first && signal == nix::sys::signal::Signal::SIGTERM {
                for i in running {
                    self.stop_container(pod, i, Duration::from_secs(grace));
                }
            } else if signal == nix::sys::signal::Signal::SIGKILL {
                for i in &running {
                    i.signal(signal);
                }
            }
            return Ok(());
        }
        // Shims still starting a container: wait for them to report.
        let starting = |i: &Instance| {
            let age = std::fs::metadata(i.dir.join("shim.json"))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            i.state() == InstanceState::Creating && age.is_some_and(|a| a < Duration::from_secs(60))
        };
        if instance::all_instances(&dir).iter().any(starting) {
            return Ok(());
        }
        for i in instance::all_instances(&dir) {
            i.release();
        }
        crate::blocking(|| {
            crate::hostport::unpublish(&self.config.bridge, &uid);
            self.sandbox(&uid).destroy();
            crate::remove_pod_cgroups(&self.config.name, &uid);
            let _ = std::fs::remove_dir_all(&dir);
        });
        self.deleting.remove(&uid);
        self.reported.remove(&uid);
        self.saved.remove(&uid);
        self.waiting.retain(|(u, _), _| *u != uid);
        self.asked.retain(|(u, _, _), _| *u != uid);
        self.projected.remove(&uid);
        self.seen.remove(&uid);
        self.no_runtime.remove(&uid);
        self.running.remove(&uid);
        if in_api {
            match self.client.delete_pod(meta(pod, "namespace"), meta(pod, "name"), Some(0)).await {
                Ok(()) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
        }
        Ok(())
    }
}

impl Agent {
    /// Stops one running container of a pod being deleted: its `preStop` hook first, if it has
    /// one (within the grace period, which it uses up), then SIGTERM — as the kubelet does. A
    /// hook that fails is reported (FailedPreStopHook) and the container is stopped anyway.
    /// Stops a running sidecar whose pod's app containers have finished: SIGTERM once (after
    /// its preStop hook), SIGKILL when the pod's grace period has passed.
    fn stop_sidecar(&mut self, pod: &Value, o: &Observed) {
        let (Some(_), Some(run_dir)) = (&o.running, &o.run_dir) else { return };
        let Some(attempt) = run_dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()) else { return };
        let i = Instance { attempt, dir: run_dir.clone() };
        let grace = Duration::from_secs(pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
        match self.stopping.get(run_dir) {
            None => {
                self.stopping.insert(run_dir.clone(), Instant::now());
                self.stop_container(pod, i, grace);
            }
            Some(since) if since.elapsed() >= grace => i.signal(nix::sys::signal::Signal::SIGKILL),
            Some(_) => {}
        }
    }

    fn stop_container(&self, pod: &Value, i: Instance, grace: Duration) {
        let name = i.dir.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or_default();
        let spec = &pod["spec"];
        let all = spec["initContainers"].as_array().into_iter().chain(spec["containers"].as_array()).flatten();
        let container = all.clone().find(|c| c["name"] == name);
        let handler = container.map(|c| &c["lifecycle"]["preStop"]).filter(|h| h.is_object());
        let (Some(handler), Some(container), InstanceState::Running(started)) = (handler, container, i.state()) else {
            i.signal(nix::sys::signal::Signal::SIGTERM);
            return;
        };
        let hook = crate::probe::parse_hook(handler, container);
        let ip = pod["status"]["podIP"].as_str().unwrap_or_default().to_string();
        let (client, pod, name) = (self.client.clone(), pod.clone(), name.to_string());
        tokio::spawn(async move {
            let ran = match hook {
                Ok(hook) => crate::probe::run_hook(&hook, started.pid, &ip, grace).await,
                Err(e) => Err(e),
            };
            if let Err(why) = ran {
                let message = format!("PreStopHook failed for container {name:?}: {why}");
                client.event(&pod, "Pod", "kubelet", "Warning", "FailedPreStopHook", &message).await;
            }
            i.signal(nix::sys::signal::Signal::SIGTERM);
        });
    }
}

/// A libcontainer id unique on the machine: pod uid, container name and run number.
pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    format!("{uid}-{name}-{attempt}")
}

fn strip_times(status: &Value) -> Value {
    let mut s = status.clone();
    for c in s["conditions"].as_array_mut().into_iter().flatten() {
        if let Some(o) = c.as_object_mut() {
            o.remove("lastTransitionTime");
            o.remove("lastProbeTime");
        }
    }
    s
}

/// Standard base64 (what Secret data holds).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()
}

/// A pod's `/etc/resolv.conf` by its `dnsPolicy`: ClusterFirst (the default) asks the node's
/// cluster DNS with Kubernetes' search path and `ndots:5`; Default and host-network pods get
/// the machine's own; None only what `dnsConfig` gives, which the others merge in.
pub fn resolv_conf(spec: &skiff_proto::api::PodSpec, ns: &str, nameserver: &str, domain: &str) -> String {
    let policy = if spec.dns_policy.is_empty() { "ClusterFirst" } else { spec.dns_policy.as_str() };
    let (mut servers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    let cluster = policy == "ClusterFirst" && !spec.host_network || policy == "ClusterFirstWithHostNet";
    if cluster {
        servers.push(nameserver.to_string());
        searches = vec![format!("{ns}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()];
        options.push("ndots:5".to_string());
    } else if policy != "None" {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for line in host.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => servers.extend(words.map(String::from)),
                Some("search") => searches.extend(words.map(String::from)),
                Some("options") => options.extend(words.map(String::from)),
                _ => {}
            }
        }
    }
    // dnsConfig is merged in as the kubelet does: servers and searches appended without
    // duplicates, an option replacing one of the same name.
    if let Some(extra) = &spec.dns_config {
        for s in &extra.nameservers {
            if !servers.contains(s) {
                servers.push(s.clone());
            }
        }
        for s in &extra.searches {
            if !searches.contains(s) {
                searches.push(s.clone());
            }
        }
        for o in &extra.options {
            let option = match &o.value {
                Some(v) => format!("{}:{v}", o.name),
                None => o.name.clone(),
            };
            match options.iter().position(|have: &String| have.split(':').next() == Some(o.name.as_str())) {
                Some(i) => options[i] = option,
                None => options.push(option),
            }
        }
    }
    let mut out = String::new();
    for s in servers.iter().take(3) {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> skiff_proto::api::PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn resolv_conf_follows_the_policy_and_merges_dns_config() {
        let plain = resolv_conf(&spec(json!({})), "shop", "10.244.3.1", "cluster.local");
        assert_eq!(
            plain,
            "nameserver 10.244.3.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        let merged = resolv_conf(
            &spec(json!({"dnsConfig": {"nameservers": ["10.244.3.1", "192.0.2.53"], "searches": ["corp.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
            "shop",
            "10.244.3.1",
            "cluster.local",
        );
        assert_eq!(
            merged,
            "nameserver 10.244.3.1\nnameserver 192.0.2.53\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:2 edns0\n"
        );
        let none = resolv_conf(
            &spec(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.53"]}})),
            "shop",
            "10.244.3.1",
            "cluster.local",
        );
        assert_eq!(none, "nameserver 192.0.2.53\n");
    }
}
