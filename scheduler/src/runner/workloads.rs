//! The workload controllers' passes not yet keyed: StatefulSets and DaemonSets, each a pure plan (in its own module of this crate) carried out through the
//! fenced client.

use super::*;

impl Runner {
    /// One StatefulSet controller pass over every StatefulSet.
    pub(super) async fn statefulsets(&self) -> Result<(), Status> {
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

    /// One DaemonSet controller pass over every DaemonSet.
    pub(super) async fn daemonsets(&self) -> Result<(), Status> {
        let sets = self.lister.list("daemonsets", "")?;
        if sets.is_empty() {
            return Ok(());
        }
        let nodes: Vec<Node> = self.typed("nodes")?;
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
}
