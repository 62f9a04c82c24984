//! The leader's I/O shell for the controllers not yet keyed: while this master is the raft
//! leader, each round reads the master's informer caches ([`crate::informers`]), runs every
//! controller's plan and executes it. Level-triggered: a round recomputes everything from
//! caches current to the store's revision at its start, so a lost round or a new leader
//! changes nothing in the outcome. Pods are placed by [`crate::scheduling`], not here.
//!
//! A round runs when a cached kind changes, and at least every `interval` for the controllers
//! that act on time. It issues no list: the caches are fed by one watch per kind. Keyed
//! reconcilers per object (as [`crate::endpoints_controller`] is) are the next step (issue 15).

use crate::informers::Listed;
use crate::nodelifecycle::marked_unreachable;
use serde_json::{json, Value};
use skiff_client::Client;
use skiff_proto::api::Node;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tonic::{Code, Status};

/// An object's resourceVersion as a number (0 if it has none).
fn revision_of(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()).unwrap_or(0)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[derive(Clone)]
pub struct Runner {
    pub client: Client,
    /// The raft term of this master's leadership while it leads (checked every round); each
    /// round's writes are fenced to it (DESIGN.md rule 4), so a round that outlives the
    /// leadership it read under changes nothing.
    pub leader_term: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    pub interval: Duration,
    /// How long a node's Lease may go unrenewed before the node counts as unreachable.
    pub node_grace: Duration,
    /// How long pods without a toleration stay on an unreachable node.
    pub pod_eviction_timeout: Duration,
    /// The CronJob controller's clock.
    pub cron_clock: CronClock,
    /// What the rounds read: the master's informers.
    pub lister: std::sync::Arc<crate::informers::Lister>,
}

/// The time the CronJob controller schedules by: real time, or (testing only) real time sped up
/// `speed` times from when the clock was made, so tests see minute schedules fire in seconds.
#[derive(Debug, Clone, Copy)]
pub struct CronClock {
    start: i64,
    speed: i64,
}

impl CronClock {
    pub fn new(speed: u32) -> CronClock {
        CronClock { start: now_secs(), speed: i64::from(speed.max(1)) }
    }

    pub fn now(&self) -> i64 {
        self.start + (now_secs() - self.start) * self.speed
    }
}

/// What the leader's rounds remember from one to the next.
#[derive(Default)]
struct RoundState {
    /// When a node was last marked unreachable (the node eviction rate).
    last_taint: Option<std::time::Instant>,
    /// Since when each node that pods are bound to has been missing (the pod GC quarantine).
    missing_nodes: HashMap<String, std::time::Instant>,
    /// When the service-account controller last looked.
    accounts_checked: Option<std::time::Instant>,
    /// The pods' positions in their list by node, and the list they index.
    pods_by_node: Option<(Listed, HashMap<String, Vec<usize>>)>,
    /// When every controller last ran (none yet under this leadership).
    last_full: Option<std::time::Instant>,
    /// Until when the next full round waits (as long as the last one took).
    rest_until: Option<tokio::time::Instant>,
    /// Whether a controller failed in the last round (the next one runs them all).
    failed: bool,
}

/// How often every controller runs even when nothing changed: a safety net, not how changes
/// are noticed (a full round over 40,000 pods costs about half a second of a core).
pub const RESYNC: Duration = Duration::from_secs(60);

/// A list's items by namespace, borrowed.
fn by_namespace(list: &Listed) -> HashMap<&str, Vec<&Value>> {
    let mut out: HashMap<&str, Vec<&Value>> = HashMap::new();
    for o in list.iter() {
        out.entry(o["metadata"]["namespace"].as_str().unwrap_or("default")).or_default().push(o);
    }
    out
}

/// The least time between marking two nodes unreachable: Kubernetes' default
/// `--node-eviction-rate` of 0.1 nodes per second, so a network blip that silences many nodes at
/// once does not empty them all in the same moment.
pub const NODE_TAINT_INTERVAL: Duration = Duration::from_secs(10);

/// How often the service-account controller looks: namespaces get their `default` account in
/// the write that creates them, so it only mends older namespaces and deleted accounts.
pub const SERVICE_ACCOUNT_INTERVAL: Duration = Duration::from_secs(10);

/// The component that reports an event about a `object_kind` object for `reason`.
fn component(object_kind: &str, reason: &str) -> &'static str {
    match (object_kind, reason) {
        ("Pod", "TaintManagerEviction") | ("Node", _) => "node-controller",
        ("Pod", _) => "default-scheduler",
        ("Deployment", _) => "deployment-controller",
        ("DaemonSet", _) => "daemonset-controller",
        ("StatefulSet", _) => "statefulset-controller",
        ("Job", _) => "job-controller",
        ("CronJob", _) => "cronjob-controller",
        _ => "replicaset-controller",
    }
}

/// How long a node must have been missing before the pods bound to it are collected (Kubernetes'
/// pod GC quarantine).
const POD_GC_QUARANTINE: Duration = Duration::from_secs(40);

/// Pod creates a controller has in flight at once.
const CREATE_CONCURRENCY: usize = 64;

impl Runner {
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) {
        self.rounds(stop).await
    }

    /// A round whenever a cached kind changed, and at least every `interval` for the
    /// controllers that act on time (leases, cron schedules, deadlines, the pod GC quarantine).
    async fn rounds(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut state = RoundState::default();
        let changes = self.lister.changes();
        loop {
            let changed = tokio::select! {
                () = changes.next() => true,
                _ = tokio::time::sleep(self.interval) => false,
                _ = stop.changed() => return,
            };
            let Some(term) = (self.leader_term)() else {
                state.last_full = None;
                continue;
            };
            // Everything written before the round, this leader's own writes included.
            if let Err(e) = self.lister.current().await {
                tracing::debug!("controller round: {}", e.message());
                state.failed = true;
                continue;
            }
            let full = changed || state.failed || state.last_full.is_none_or(|t| t.elapsed() >= RESYNC);
            if full {
                // Rounds over many objects are not cheap: back to back, they would take a whole
                // core from the API and the scheduler while objects keep changing. A full round
                // waits after the last one for as long as that one took (at most half a core).
                if let Some(rest) = state.rest_until.filter(|t| *t > tokio::time::Instant::now()) {
                    tokio::time::sleep_until(rest).await;
                }
                state.last_full = Some(std::time::Instant::now());
            }
            let started = tokio::time::Instant::now();
            self.fenced(term).round(&mut state, full).await;
            if full {
                state.rest_until = Some(tokio::time::Instant::now() + started.elapsed());
            }
        }
    }

    /// This runner for one leadership: every write it makes is fenced to `term`.
    fn fenced(&self, term: u64) -> Runner {
        Runner { client: self.client.fenced(term), ..self.clone() }
    }

    fn items<T: serde::de::DeserializeOwned>(&self, resource: &str) -> Result<Vec<(Value, T)>, Status> {
        let list = self.lister.list(resource, "")?;
        Ok(list.iter().filter_map(|v| serde_json::from_value(v.clone()).ok().map(|t| (v.clone(), t))).collect())
    }

    /// One Deployment controller pass over every Deployment.
    async fn deployments(&self) -> Result<(), Status> {
        let deployments = self.lister.list("deployments", "")?;
        let sets = self.lister.list("replicasets", "")?;
        let pods = self.lister.list("pods", "")?;
        let in_ns = |list: &Listed, ns: &str| -> Vec<Value> {
            list.iter().filter(|o| o["metadata"]["namespace"] == ns).cloned().collect()
        };
        for d in deployments.iter() {
            if d.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
                continue;
            }
            let ns = d["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            let plan = crate::deployment::plan(d, &in_ns(&sets, ns), &in_ns(&pods, ns));
            if let Some(rs) = &plan.create {
                match self.client.create("replicasets", ns, rs).await {
                    Ok(created) => {
                        let msg = format!(
                            "Scaled up replica set {} to {}",
                            created["metadata"]["name"].as_str().unwrap_or_default(),
                            rs["spec"]["replicas"]
                        );
                        self.event(d, "Deployment", "Normal", "ScalingReplicaSet", &msg).await;
                    }
                    Err(e) => self.ignore_races(Err(e))?,
                }
            }
            for rs in &plan.update {
                let before = crate::deployment::replicas_of(rs);
                if self.ignore_races(self.client.update("replicasets", rs).await.map(|_| ())).is_ok() {
                    let msg = format!(
                        "Scaled replica set {} to {before}",
                        rs["metadata"]["name"].as_str().unwrap_or_default()
                    );
                    self.event(d, "Deployment", "Normal", "ScalingReplicaSet", &msg).await;
                }
            }
            for rs in &plan.delete {
                self.ignore_races(self.client.delete("replicasets", ns, rs).await.map(|_| ()))?;
            }
            // The Deployment's own revision annotation, then its status.
            let mut current = d.clone();
            if !plan.revision.is_empty()
                && current["metadata"]["annotations"][crate::deployment::REVISION].as_str() != Some(&plan.revision)
            {
                current["metadata"]["annotations"][crate::deployment::REVISION] = json!(plan.revision);
                match self.client.update("deployments", &current).await {
                    Ok(updated) => current = updated,
                    Err(e) => {
                        self.ignore_races(Err(e))?;
                        continue;
                    }
                }
            }
            let status = current.get("status").cloned().unwrap_or(Value::Null);
            let keys = [
                "replicas",
                "updatedReplicas",
                "readyReplicas",
                "availableReplicas",
                "unavailableReplicas",
                "observedGeneration",
            ];
            let changed =
                keys.iter().any(|k| status[*k].as_i64().unwrap_or(0) != plan.status[*k].as_i64().unwrap_or(0))
                    || status["conditions"]
                        .as_array()
                        .map(|c| c.iter().map(|c| (c["type"].clone(), c["reason"].clone())).collect::<Vec<_>>())
                        != plan.status["conditions"]
                            .as_array()
                            .map(|c| c.iter().map(|c| (c["type"].clone(), c["reason"].clone())).collect::<Vec<_>>());
            if changed {
                current["status"] = plan.status.clone();
                if let Err(e) = self.ignore_races(self.client.update_status("deployments", &current).await.map(|_| ()))
                {
                    tracing::debug!("deployment {ns}/{name} status: {e}");
                }
            }
        }
        Ok(())
    }

    /// One node lifecycle pass over every node.
    async fn node_lifecycle(
        &self,
        last_taint: &mut Option<std::time::Instant>,
        by_node: &mut Option<(Listed, HashMap<String, Vec<usize>>)>,
    ) -> Result<(), Status> {
        let nodes = self.lister.list("nodes", "")?;
        let leases = self.lister.list("leases", crate::informers::NODE_LEASE_NAMESPACE)?;
        let leases: HashMap<&str, &Value> =
            leases.iter().filter_map(|l| l["metadata"]["name"].as_str().map(|n| (n, l))).collect();
        let pods = self.lister.list("pods", "")?;
        // Pods by node, rebuilt only when pods changed (this runs every tick).
        if !by_node.as_ref().is_some_and(|(listed, _)| listed.same(&pods)) {
            let mut index: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, pod) in pods.iter().enumerate() {
                if let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                    index.entry(node.to_string()).or_default().push(i);
                }
            }
            *by_node = Some((pods.clone(), index));
        }
        let on_node = by_node.as_ref().map(|(_, index)| index);
        let now = now_secs();
        for node in nodes.iter() {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            let lease = leases.get(name).copied();
            let mine = on_node.and_then(|i| i.get(name)).map(Vec::as_slice).unwrap_or_default();
            let plan = crate::nodelifecycle::plan(
                node,
                lease,
                mine.iter().filter_map(|&i| pods.get(i)),
                now,
                self.node_grace,
                self.pod_eviction_timeout,
            );
            let was_unreachable = marked_unreachable(node);
            let becomes_unreachable = plan.node.as_ref().is_some_and(|n| marked_unreachable(n) && !was_unreachable);
            if becomes_unreachable {
                if last_taint.is_some_and(|t| t.elapsed() < NODE_TAINT_INTERVAL) {
                    tracing::info!(node = name, "node unreachable; marking it waits for the node eviction rate");
                    continue;
                }
                *last_taint = Some(std::time::Instant::now());
            }
            if let Some(changed) = &plan.node {
                // Conditions first, then taints (Kubernetes' order): whoever sees the
                // unreachable taint already sees the node not ready.
                let mut base = node.clone();
                if node["status"]["conditions"] != changed["status"]["conditions"] {
                    match self.client.update_status("nodes", changed).await {
                        Ok(stored) => base = stored,
                        Err(e) => {
                            self.ignore_races(Err(e))?;
                            continue;
                        }
                    }
                }
                let write = if base["spec"] != changed["spec"] {
                    base["spec"] = changed["spec"].clone();
                    self.client.update("nodes", &base).await.map(|_| ())
                } else {
                    Ok(())
                };
                match write {
                    Ok(()) => {
                        // An event when reachability changed (not for a taint's time stamp).
                        let unreachable = marked_unreachable(changed);
                        if unreachable != was_unreachable {
                            let (reason, msg) = if unreachable {
                                ("NodeNotReady", format!("Node {name} status is now: NodeNotReady"))
                            } else {
                                ("NodeReady", format!("Node {name} status is now: NodeReady"))
                            };
                            self.event(node, "Node", "Normal", reason, &msg).await;
                        }
                    }
                    Err(e) => self.ignore_races(Err(e))?,
                }
            }
            for (ns, pod) in &plan.evict {
                self.ignore_races(self.client.delete("pods", ns, pod).await.map(|_| ()))?;
                if let Some(p) = pods
                    .iter()
                    .find(|p| p["metadata"]["name"] == pod.as_str() && p["metadata"]["namespace"] == ns.as_str())
                {
                    self.event(
                        p,
                        "Pod",
                        "Normal",
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {ns}/{pod}"),
                    )
                    .await;
                }
            }
        }
        Ok(())
    }

    /// Every namespace that is not terminating has a `default` ServiceAccount.
    async fn service_accounts(&self) -> Result<(), Status> {
        let namespaces = self.lister.list("namespaces", "")?;
        let accounts = self.lister.list("serviceaccounts", "")?;
        let has_default: HashSet<&str> = accounts
            .iter()
            .filter(|a| a["metadata"]["name"] == "default")
            .filter_map(|a| a["metadata"]["namespace"].as_str())
            .collect();
        for ns in namespaces.iter() {
            let name = ns["metadata"]["name"].as_str().unwrap_or_default();
            let terminating = ns["metadata"]["deletionTimestamp"].is_string() || ns["status"]["phase"] == "Terminating";
            if name.is_empty() || terminating || has_default.contains(name) {
                continue;
            }
            let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": name}});
            match self.client.create("serviceaccounts", name, &account).await {
                Ok(_) => {}
                Err(e) if matches!(e.code(), Code::AlreadyExists | Code::FailedPrecondition | Code::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One garbage-collector pass: objects of the owned kinds whose owners are all gone.
    async fn collect_garbage(&self, missing_nodes: &mut HashMap<String, std::time::Instant>) -> Result<(), Status> {
        const OWNERS: [&str; 6] = ["deployments", "replicasets", "daemonsets", "statefulsets", "jobs", "cronjobs"];
        const OWNED: [&str; 4] = ["pods", "replicasets", "jobs", "persistentvolumeclaims"];
        let mut existing = std::collections::HashSet::new();
        let mut lists: HashMap<&str, Listed> = HashMap::new();
        // Dependents first, then owners, each cache read after the revision it is current to:
        // an owner always exists before its dependents, so a dependent at or below the
        // owners' caches' revision has its owners in them, never taken for gone. Newer
        // dependents wait for a later round.
        for r in OWNED {
            lists.insert(r, self.lister.list(r, "")?);
        }
        let owners_at = OWNERS.iter().map(|r| self.lister.revision(r)).min().unwrap_or(0);
        for r in OWNERS {
            for o in self.lister.list(r, "")?.iter() {
                if let Some(uid) = o["metadata"]["uid"].as_str() {
                    existing.insert(uid.to_string());
                }
            }
        }
        let objects: Vec<(&str, &Value)> = OWNED
            .iter()
            .flat_map(|r| lists[r].iter().map(move |o| (*r, o)))
            .filter(|(_, o)| revision_of(o) <= owners_at)
            .collect();
        let kinds = ["Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job", "CronJob"];
        for (resource, ns, name) in crate::gc::dangling(&objects, &existing, &kinds) {
            tracing::info!("garbage collector: deleting {resource} {ns}/{name}: its owners are gone");
            self.ignore_races(self.client.delete(&resource, &ns, &name).await.map(|_| ()))?;
        }
        // Pods bound to a node that was deleted: force-deleted, no kubelet will ever stop them.
        // Only pods at or below the nodes' cache's revision count, so a node registered before
        // its pods were bound is always seen.
        let nodes_at = self.lister.revision("nodes");
        let nodes = self.lister.list("nodes", "")?;
        let names: std::collections::HashSet<String> =
            nodes.iter().filter_map(|n| n["metadata"]["name"].as_str().map(String::from)).collect();
        let pods = lists["pods"].iter().filter(|p| revision_of(p) <= nodes_at);
        // As Kubernetes' pod GC, a node must have been missing for a quarantine period first
        // (a pod may be bound to a node that is about to register).
        let now = std::time::Instant::now();
        missing_nodes.retain(|n, _| !names.contains(n));
        for (ns, name, node) in crate::gc::orphaned_pods(pods, &names) {
            let since = *missing_nodes.entry(node.clone()).or_insert(now);
            if now.duration_since(since) < POD_GC_QUARANTINE {
                continue;
            }
            tracing::info!("pod garbage collector: deleting {ns}/{name}: node {node} is gone");
            self.ignore_races(self.client.delete_pod(&ns, &name, Some(0)).await)?;
        }
        Ok(())
    }

    /// The status of LoadBalancer Services and Ingresses: the addresses of the nodes that
    /// serve them. (Endpoints are [`crate::endpoints_controller`]'s, run from informers.)
    async fn load_balancers(&self) -> Result<(), Status> {
        let items = |l: Listed| l.to_vec();
        let services = items(self.lister.list("services", "")?);
        let ingresses = items(self.lister.list("ingresses", "")?);
        let balanced: Vec<&Value> = services.iter().filter(|s| s["spec"]["type"] == "LoadBalancer").collect();
        if ingresses.is_empty() && balanced.is_empty() {
            return Ok(());
        }
        let nodes = items(self.lister.list("nodes", "")?);
        let classes = if ingresses.is_empty() { vec![] } else { items(self.lister.list("ingressclasses", "")?) };
        for ing in &ingresses {
            self.write_status("ingresses", ing, crate::endpoints::ingress_status(ing, &classes, &nodes)).await;
        }
        for svc in balanced {
            self.write_status("services", svc, crate::endpoints::load_balancer_status(svc, &nodes)).await;
        }
        Ok(())
    }

    /// Writes `status` (if any) as `obj`'s; a failure is logged, never holding up the pass.
    async fn write_status(&self, resource: &str, obj: &Value, status: Option<Value>) {
        let Some(status) = status else { return };
        let mut updated = obj.clone();
        updated["status"] = status;
        if let Err(e) = self.ignore_races(self.client.update_status(resource, &updated).await.map(|_| ())) {
            tracing::warn!("{resource} {}: status: {e}", obj["metadata"]["name"]);
        }
    }

    /// One PersistentVolume binder pass over every claim and volume.
    async fn bind_volumes(&self) -> Result<(), Status> {
        let claims = self.lister.list("persistentvolumeclaims", "")?;
        let volumes = self.lister.list("persistentvolumes", "")?;
        let plan = crate::volumebinder::plan(&claims.to_vec(), &volumes.to_vec());
        // Volume first: a claim is bound only to a volume that records it.
        for pv in &plan.volumes {
            self.ignore_races(self.client.update("persistentvolumes", pv).await.map(|_| ()))?;
        }
        for pvc in &plan.claims {
            self.ignore_races(self.client.update("persistentvolumeclaims", pvc).await.map(|_| ()))?;
        }
        for (name, phase) in &plan.volume_phases {
            let mut pv = match self.client.get("persistentvolumes", "", name).await {
                Ok(pv) => pv,
                Err(e) => {
                    self.ignore_races(Err(e))?;
                    continue;
                }
            };
            pv["status"]["phase"] = json!(phase);
            self.ignore_races(self.client.update_status("persistentvolumes", &pv).await.map(|_| ()))?;
        }
        for (ns, name, volume) in &plan.bound_claims {
            let mut pvc = match self.client.get("persistentvolumeclaims", ns, name).await {
                Ok(pvc) => pvc,
                Err(e) => {
                    self.ignore_races(Err(e))?;
                    continue;
                }
            };
            if let Ok(pv) = self.client.get("persistentvolumes", "", volume).await {
                pvc["status"]["capacity"] = pv["spec"]["capacity"].clone();
                pvc["status"]["accessModes"] = pv["spec"]["accessModes"].clone();
            }
            pvc["status"]["phase"] = json!("Bound");
            self.ignore_races(self.client.update_status("persistentvolumeclaims", &pvc).await.map(|_| ()))?;
        }
        Ok(())
    }

    /// One StatefulSet controller pass over every StatefulSet.
    async fn statefulsets(&self) -> Result<(), Status> {
        let sets = self.lister.list("statefulsets", "")?;
        let pods = self.lister.list("pods", "")?;
        let claims = self.lister.list("persistentvolumeclaims", "")?;
        let in_ns = |list: &Listed, ns: &str| -> Vec<Value> {
            list.iter().filter(|o| o["metadata"]["namespace"] == ns).cloned().collect()
        };
        for sts in sets.iter() {
            if sts.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
                continue;
            }
            let ns = sts["metadata"]["namespace"].as_str().unwrap_or("default");
            let plan = crate::statefulset::plan(sts, &in_ns(&pods, ns), &in_ns(&claims, ns));
            for claim in &plan.create_claims {
                self.ignore_races(self.client.create("persistentvolumeclaims", ns, claim).await.map(|_| ()))?;
            }
            for pod in &plan.create {
                let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                if self.ignore_races(self.client.create("pods", ns, pod).await.map(|_| ())).is_ok() {
                    let msg = format!(
                        "create Pod {name} in StatefulSet {} successful",
                        sts["metadata"]["name"].as_str().unwrap_or_default()
                    );
                    self.event(sts, "StatefulSet", "Normal", "SuccessfulCreate", &msg).await;
                }
            }
            for pod in &plan.delete {
                self.ignore_races(self.client.delete("pods", ns, pod).await.map(|_| ()))?;
                let msg = format!(
                    "delete Pod {pod} in StatefulSet {} successful",
                    sts["metadata"]["name"].as_str().unwrap_or_default()
                );
                self.event(sts, "StatefulSet", "Normal", "SuccessfulDelete", &msg).await;
            }
            let old = sts.get("status").cloned().unwrap_or(Value::Null);
            let changed = [
                "replicas",
                "readyReplicas",
                "currentReplicas",
                "updatedReplicas",
                "availableReplicas",
                "observedGeneration",
            ]
            .iter()
            .any(|k| old[*k].as_i64().unwrap_or(0) != plan.status[*k].as_i64().unwrap_or(0))
                || old["updateRevision"] != plan.status["updateRevision"];
            if changed {
                let mut updated = sts.clone();
                updated["status"] = plan.status.clone();
                if let Err(e) = self.ignore_races(self.client.update_status("statefulsets", &updated).await.map(|_| ()))
                {
                    tracing::debug!("statefulset {ns} status: {e}");
                }
            }
        }
        Ok(())
    }

    /// One Job controller pass over every Job.
    async fn jobs(&self) -> Result<(), Status> {
        let jobs = self.lister.list("jobs", "")?;
        let pods = self.lister.list("pods", "")?;
        let now = now_secs();
        for job in jobs.iter() {
            if job.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
                continue;
            }
            let ns = job["metadata"]["namespace"].as_str().unwrap_or("default");
            let mine: Vec<Value> = pods.iter().filter(|p| p["metadata"]["namespace"] == ns).cloned().collect();
            let plan = crate::job::plan(job, &mine, now);
            self.create_pods(job, "Job", ns, &plan.create).await?;
            for pod in &plan.delete {
                self.ignore_races(self.client.delete("pods", ns, pod).await.map(|_| ()))?;
            }
            let old = job.get("status").cloned().unwrap_or(Value::Null);
            let newly_done = crate::job::finished(job).is_none()
                && plan.status["conditions"].as_array().is_some_and(|c| !c.is_empty());
            let counts = ["active", "succeeded", "failed"];
            if newly_done
                || counts.iter().any(|k| old[*k].as_i64().unwrap_or(0) != plan.status[*k].as_i64().unwrap_or(0))
                || old["startTime"].is_null()
            {
                let mut updated = job.clone();
                updated["status"] = plan.status.clone();
                if let Err(e) = self.ignore_races(self.client.update_status("jobs", &updated).await.map(|_| ())) {
                    tracing::debug!("job {ns} status: {e}");
                }
                if newly_done {
                    let (kind, reason) = match crate::job::finished(&updated) {
                        Some("Complete") => ("Normal", "Completed"),
                        _ => ("Warning", "BackoffLimitExceeded"),
                    };
                    self.event(job, "Job", kind, reason, &format!("Job {reason}")).await;
                }
            }
        }
        Ok(())
    }

    /// One CronJob controller pass over every CronJob.
    async fn cronjobs(&self) -> Result<(), Status> {
        let cronjobs = self.lister.list("cronjobs", "")?;
        let jobs = self.lister.list("jobs", "")?;
        let now = self.cron_clock.now();
        for cj in cronjobs.iter() {
            let ns = cj["metadata"]["namespace"].as_str().unwrap_or("default");
            let mine: Vec<Value> = jobs.iter().filter(|j| j["metadata"]["namespace"] == ns).cloned().collect();
            let plan = match crate::cronjob::plan(cj, &mine, now) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!("cronjob {ns}: {e}");
                    continue;
                }
            };
            for job in &plan.delete {
                self.ignore_races(self.client.delete("jobs", ns, job).await.map(|_| ()))?;
            }
            if let Some(job) = &plan.create {
                match self.client.create("jobs", ns, job).await {
                    Ok(created) => {
                        let msg = format!("Created job {}", created["metadata"]["name"].as_str().unwrap_or_default());
                        self.event(cj, "CronJob", "Normal", "SuccessfulCreate", &msg).await;
                    }
                    Err(e) => self.ignore_races(Err(e))?,
                }
            }
            let old = cj.get("status").cloned().unwrap_or(Value::Null);
            if old["lastScheduleTime"] != plan.status["lastScheduleTime"]
                || old["active"].as_array().map_or(0, |a| a.len())
                    != plan.status["active"].as_array().map_or(0, |a| a.len())
            {
                let mut updated = cj.clone();
                updated["status"] = plan.status.clone();
                if let Err(e) = self.ignore_races(self.client.update_status("cronjobs", &updated).await.map(|_| ())) {
                    tracing::debug!("cronjob {ns} status: {e}");
                }
            }
        }
        Ok(())
    }

    /// One DaemonSet controller pass over every DaemonSet.
    async fn daemonsets(&self) -> Result<(), Status> {
        let sets = self.lister.list("daemonsets", "")?;
        if sets.is_empty() {
            return Ok(());
        }
        let nodes: Vec<Node> = self.items::<Node>("nodes")?.into_iter().map(|(_, n)| n).collect();
        let nodes = nodes.as_slice();
        let pods = self.lister.list("pods", "")?;
        for ds in sets.iter() {
            if ds.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
                continue;
            }
            let ns = ds["metadata"]["namespace"].as_str().unwrap_or("default");
            let mine: Vec<Value> = pods.iter().filter(|p| p["metadata"]["namespace"] == ns).cloned().collect();
            let plan = crate::daemonset::plan(ds, nodes, &mine);
            self.create_pods(ds, "DaemonSet", ns, &plan.create).await?;
            for pod in &plan.delete {
                self.ignore_races(self.client.delete("pods", ns, pod).await.map(|_| ()))?;
                self.event(ds, "DaemonSet", "Normal", "SuccessfulDelete", &format!("Deleted pod: {pod}")).await;
            }
            let status = ds.get("status").cloned().unwrap_or(Value::Null);
            let changed = plan
                .status
                .as_object()
                .into_iter()
                .flatten()
                .any(|(k, v)| status[k].as_i64().unwrap_or(0) != v.as_i64().unwrap_or(0));
            if changed {
                let mut updated = ds.clone();
                updated["status"] = plan.status.clone();
                if let Err(e) = self.ignore_races(self.client.update_status("daemonsets", &updated).await.map(|_| ())) {
                    tracing::debug!("daemonset {ns} status: {e}");
                }
            }
        }
        Ok(())
    }

    /// One ReplicaSet controller pass over every ReplicaSet. Every ReplicaSet's deletions go
    /// before any creations, so a rollout's new pods never start while the old pods they
    /// replace wait for a later ReplicaSet's turn; one ReplicaSet's failure does not hold up
    /// the others (the first error is returned at the end).
    async fn replicasets(&self) -> Result<(), Status> {
        let sets = self.lister.list("replicasets", "")?;
        if sets.is_empty() {
            return Ok(());
        }
        let pods = self.lister.list("pods", "")?;
        let in_namespace = by_namespace(&pods);
        let plans: Vec<(&Value, crate::replicaset::Plan)> = sets
            .iter()
            .map(|rs| {
                let ns = rs["metadata"]["namespace"].as_str().unwrap_or("default");
                (rs, crate::replicaset::plan(rs, in_namespace.get(ns).into_iter().flatten().copied()))
            })
            .collect();
        let mut first_error = None;
        for (rs, plan) in &plans {
            let ns = rs["metadata"]["namespace"].as_str().unwrap_or("default");
            for pod in plan.adopt.iter().chain(&plan.release) {
                if let Err(e) = self.ignore_races(self.client.update("pods", pod).await.map(|_| ())) {
                    first_error.get_or_insert(e);
                }
            }
            for pod in &plan.delete {
                match self.ignore_races(self.client.delete("pods", ns, pod).await.map(|_| ())) {
                    Ok(()) => {
                        let msg = format!("Deleted pod: {pod}");
                        self.event(rs, "ReplicaSet", "Normal", "SuccessfulDelete", &msg).await;
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        for (rs, plan) in &plans {
            let ns = rs["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = rs["metadata"]["name"].as_str().unwrap_or_default();
            if let Err(e) = self.create_pods(rs, "ReplicaSet", ns, &plan.create).await {
                first_error.get_or_insert(e);
                continue;
            }
            let status = rs.get("status").cloned().unwrap_or(Value::Null);
            let changed =
                ["replicas", "readyReplicas", "availableReplicas", "fullyLabeledReplicas", "observedGeneration"]
                    .iter()
                    .any(|k| {
                        status.get(*k).and_then(Value::as_i64).unwrap_or(0) != plan.status[*k].as_i64().unwrap_or(0)
                    });
            if changed {
                let mut updated = (*rs).clone();
                updated["status"] = plan.status.clone();
                if let Err(e) = self.ignore_races(self.client.update_status("replicasets", &updated).await.map(|_| ()))
                {
                    tracing::debug!("replicaset {ns}/{name} status: {e}");
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A conflict or a vanished object only means the next round will look again.
    fn ignore_races(&self, r: Result<(), Status>) -> Result<(), Status> {
        match r {
            Err(e) if matches!(e.code(), Code::Aborted | Code::NotFound | Code::AlreadyExists) => Ok(()),
            other => other,
        }
    }

    /// One round: the controllers that act on time every round; the rest only when `full`
    /// (something changed, an earlier round failed, or [`RESYNC`] passed).
    async fn round(&self, state: &mut RoundState, full: bool) {
        let mut failed = false;
        let mut note = |what: &str, r: Result<(), Status>| {
            if let Err(e) = r {
                tracing::debug!("{what}: {e}");
                failed = true;
            }
        };
        note("node lifecycle controller", self.node_lifecycle(&mut state.last_taint, &mut state.pods_by_node).await);
        // Pods on a deleted node are collected after a quarantine: a timer while one is missing.
        if full || !state.missing_nodes.is_empty() {
            note("garbage collector", self.collect_garbage(&mut state.missing_nodes).await);
        }
        if state.accounts_checked.is_none_or(|t| t.elapsed() >= SERVICE_ACCOUNT_INTERVAL) {
            state.accounts_checked = Some(std::time::Instant::now());
            note("service account controller", self.service_accounts().await);
        }
        note("cronjob controller", self.cronjobs().await);
        note("job controller", self.jobs().await);
        if full {
            note("load balancer status", self.load_balancers().await);
            note("volume binder", self.bind_volumes().await);
            note("statefulset controller", self.statefulsets().await);
            note("deployment controller", self.deployments().await);
            note("replicaset controller", self.replicasets().await);
            note("daemonset controller", self.daemonsets().await);
        }
        state.failed = failed;
    }

    /// Creates a controller's pods as Kubernetes does: in batches that double from 1 (capped at
    /// [`CREATE_CONCURRENCY`] in flight), so a refused template fails once, not a thousand times,
    /// and a big scale-up is not one request at a time. Stops at the first error.
    async fn create_pods(&self, owner: &Value, owner_kind: &str, ns: &str, pods: &[Value]) -> Result<(), Status> {
        let mut batch = 1;
        let mut rest = pods;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(batch.min(rest.len()));
            rest = later;
            let mut creates = tokio::task::JoinSet::new();
            for pod in now {
                let (client, pod, ns, owner) = (self.client.clone(), pod.clone(), ns.to_string(), owner.clone());
                let (kind, component) = (owner_kind.to_string(), component(owner_kind, "SuccessfulCreate"));
                creates.spawn(async move {
                    let created = client.create("pods", &ns, &pod).await?;
                    let msg = format!("Created pod: {}", created["metadata"]["name"].as_str().unwrap_or_default());
                    client.event(&owner, &kind, component, "Normal", "SuccessfulCreate", &msg).await;
                    Ok::<(), Status>(())
                });
            }
            let mut failed = None;
            while let Some(r) = creates.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failed = failed.or(Some(e)),
                    Err(e) => failed = failed.or(Some(Status::internal(e.to_string()))),
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            batch = (batch * 2).min(CREATE_CONCURRENCY);
        }
        Ok(())
    }

    /// Records an Event about an object; failures are logged, not fatal.
    async fn event(&self, obj: &Value, object_kind: &str, kind: &str, reason: &str, message: &str) {
        self.client.event(obj, object_kind, component(object_kind, reason), kind, reason, message).await;
    }
}
