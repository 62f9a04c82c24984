//! The cluster controllers' passes: node lifecycle, garbage collection, service accounts,
//! volume binding and load-balancer status.

use super::*;

impl Runner {
    /// One node lifecycle pass over every node.
    pub(super) async fn node_lifecycle(
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
    pub(super) async fn service_accounts(&self) -> Result<(), Status> {
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
    pub(super) async fn collect_garbage(
        &self,
        missing_nodes: &mut HashMap<String, std::time::Instant>,
    ) -> Result<(), Status> {
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
    pub(super) async fn load_balancers(&self) -> Result<(), Status> {
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
    pub(super) async fn write_status(&self, resource: &str, obj: &Value, status: Option<Value>) {
        let Some(status) = status else { return };
        let mut updated = obj.clone();
        updated["status"] = status;
        if let Err(e) = self.ignore_races(self.client.update_status(resource, &updated).await.map(|_| ())) {
            tracing::warn!("{resource} {}: status: {e}", obj["metadata"]["name"]);
        }
    }

    /// One PersistentVolume binder pass over every claim and volume.
    pub(super) async fn bind_volumes(&self) -> Result<(), Status> {
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
}
