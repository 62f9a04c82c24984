//! The scheduler's I/O shell: while this master is the raft leader, each round lists nodes and
//! pods through the API, places every unscheduled pod with [`crate::schedule`], and binds it
//! through the binding subresource; a pod that fits nowhere gets `PodScheduled=False` with
//! Kubernetes' message and a `FailedScheduling` event. Level-triggered: a round recomputes
//! everything from the API, so a lost round or a new leader changes nothing in the outcome,
//! and a pod is retried whenever nodes, labels, taints or other pods change.
//!
//! Rounds poll (every `interval`); informers with watches come with the controllers.

use crate::placement::needs_scheduling;
use crate::{schedule, Snapshot};
use serde_json::{json, Value};
use skiff_client::Client;
use skiff_proto::api::{Node, Pod};
use std::collections::HashMap;
use std::time::Duration;
use tonic::{Code, Status};

pub struct Runner {
    pub client: Client,
    /// Whether this master leads right now (checked every round).
    pub is_leader: Box<dyn Fn() -> bool + Send + Sync>,
    pub interval: Duration,
}

fn now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    // Civil date from days (UTC), as the API writes timestamps.
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl Runner {
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        // Last FailedScheduling message per pod uid, so events are not repeated every round.
        let mut reported: HashMap<String, String> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.changed() => return,
            }
            if !(self.is_leader)() {
                reported.clear();
                continue;
            }
            if let Err(e) = self.round(&mut reported).await {
                tracing::debug!("scheduling round: {e}");
            }
        }
    }

    async fn items<T: serde::de::DeserializeOwned>(&self, resource: &str) -> Result<Vec<(Value, T)>, Status> {
        let list = self.client.list(resource, "", "", "").await?;
        Ok(list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok().map(|t| (v, t)))
            .collect())
    }

    async fn round(&self, reported: &mut HashMap<String, String>) -> Result<(), Status> {
        let nodes: Vec<Node> = self.items::<Node>("nodes").await?.into_iter().map(|(_, n)| n).collect();
        let pods = self.items::<Pod>("pods").await?;
        let typed: Vec<Pod> = pods.iter().map(|(_, p)| p.clone()).collect();
        let mut snapshot = Snapshot::new(&nodes, &typed);
        for (raw, pod) in &pods {
            let meta = pod.metadata.clone().unwrap_or_default();
            let scheduler = pod.spec.as_ref().map_or("", |s| s.scheduler_name.as_str());
            if !needs_scheduling(pod)
                || !meta.deletion_timestamp.is_empty()
                || !matches!(scheduler, "" | "default-scheduler")
            {
                continue;
            }
            match schedule(pod, &snapshot) {
                Ok(node) => match self.client.bind(&meta.namespace, &meta.name, &node).await {
                    Ok(()) => {
                        snapshot.assume(pod, &node);
                        reported.remove(&meta.uid);
                        let msg = format!("Successfully assigned {}/{} to {node}", meta.namespace, meta.name);
                        self.event(raw, "Normal", "Scheduled", &msg).await;
                    }
                    // Bound meanwhile (or deleted): the next round sees it.
                    Err(e) if matches!(e.code(), Code::Aborted | Code::NotFound) => {}
                    Err(e) => return Err(e),
                },
                Err(fit) => {
                    let msg = fit.to_string();
                    if reported.get(&meta.uid) == Some(&msg) {
                        continue;
                    }
                    let mut updated = raw.clone();
                    let mut conditions: Vec<Value> = updated["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|c| c["type"] != "PodScheduled")
                        .collect();
                    conditions.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": msg, "lastTransitionTime": now()}));
                    updated["status"]["conditions"] = Value::Array(conditions);
                    match self.client.update_pod_status(&updated).await {
                        Ok(()) => {
                            self.event(raw, "Warning", "FailedScheduling", &msg).await;
                            reported.insert(meta.uid.clone(), msg);
                        }
                        Err(e) if matches!(e.code(), Code::Aborted | Code::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Records an Event about a pod; failures are logged, not fatal.
    async fn event(&self, pod: &Value, kind: &str, reason: &str, message: &str) {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let event = json!({
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": name, "uid": pod["metadata"]["uid"]},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": "default-scheduler"}, "reportingComponent": "default-scheduler",
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
        });
        if let Err(e) = self.client.create("events", ns, &event).await {
            tracing::debug!("event for pod {ns}/{name}: {e}");
        }
    }
}
