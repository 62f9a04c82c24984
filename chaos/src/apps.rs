//! The API workload: Deployments scaled and rolled and their pods deleted through the Skiff API
//! while the nemesis runs, then a convergence check once the faults stop — the controllers on
//! whichever master leads must bring every Deployment to its spec with no orphaned or
//! duplicated pods and no more ReplicaSets than its history limit.
//!
//! Without node daemons (`--nodes 0`) pods stay unscheduled: the rollouts use
//! `maxUnavailable: 100%`, which converges without ready pods, and convergence counts pods. With
//! node daemons every pod the current ReplicaSet wants must also be Running and Ready on a node,
//! and no deleted pod may linger (a node must finish what was evicted from it).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use skiff_proto::api::objects_client::ObjectsClient;
use skiff_proto::api::{RawListRequest, RawRequest};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub const NAMESPACE: &str = "default";
const HISTORY_LIMIT: u64 = 2;
/// The first Deployment is steady: rolled and its pods deleted, never scaled, so its rollouts
/// have a fixed bound of live pods ([`crate::rollouts`]) — `STEADY_REPLICAS + MAX_SURGE`.
pub const STEADY_REPLICAS: u64 = 3;
pub const MAX_SURGE: u64 = 1;

/// A Deployment of `replicas` pods that sleep in `image`; rollouts change its `REVISION`.
fn deployment(name: &str, replicas: u64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": HISTORY_LIMIT,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%", "maxSurge": MAX_SURGE}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    // busybox's sleep as PID 1 ignores SIGTERM: a second's grace, then SIGKILL.
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": image, "command": ["sleep", "100000"],
                                    "env": [{"name": "REVISION", "value": "v0"}]}]
                }
            }
        }
    })
}

pub fn name(i: usize) -> String {
    format!("chaos-{i}")
}

/// What the workload did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct AppsLog {
    pub scales: u64,
    pub rollouts: u64,
    pub pod_deletes: u64,
    /// Calls that failed (unavailable, timed out, conflicts that ran out of retries).
    pub failed: u64,
}

async fn get(c: &mut ObjectsClient<Channel>, resource: &str, name: &str) -> Result<Value, tonic::Status> {
    let r = c
        .get(RawRequest {
            resource: resource.into(),
            namespace: NAMESPACE.into(),
            name: name.into(),
            ..Default::default()
        })
        .await?;
    serde_json::from_str(&r.into_inner().json).map_err(|e| tonic::Status::internal(e.to_string()))
}

async fn list(c: &mut ObjectsClient<Channel>, resource: &str) -> Result<Vec<Value>, tonic::Status> {
    let r =
        c.list(RawListRequest { resource: resource.into(), namespace: NAMESPACE.into(), ..Default::default() }).await?;
    let v: Value = serde_json::from_str(&r.into_inner().json).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

/// Creates the Deployments (retrying until `deadline`); the steady one starts at
/// [`STEADY_REPLICAS`], the others at 2 replicas of `image`.
pub async fn setup(channel: Channel, deployments: usize, image: &str, deadline: Instant) -> anyhow::Result<()> {
    let mut c = ObjectsClient::new(channel);
    for i in 0..deployments {
        loop {
            let r = c
                .create(RawRequest {
                    resource: "deployments".into(),
                    namespace: NAMESPACE.into(),
                    json: deployment(&name(i), if i == 0 { STEADY_REPLICAS } else { 2 }, image).to_string(),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::AlreadyExists => break,
                Err(s) if Instant::now() > deadline => {
                    anyhow::bail!("creating deployment {}: {}", name(i), s.message())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

/// Scales, rolls and deletes pods of the Deployments until `stop`, one change every `pace`
/// (drawn from the range, in milliseconds).
pub async fn run(
    channel: Channel,
    deployments: usize,
    seed: u64,
    pace: std::ops::Range<u64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> AppsLog {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xa995);
    let mut c = ObjectsClient::new(channel);
    let mut log = AppsLog::default();
    let mut image = 0u64;
    while !*stop.borrow() {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(pace.clone()))).await;
        let which = rng.gen_range(0..deployments);
        let d = name(which);
        // The steady Deployment is rolled where another would be scaled.
        let action = match rng.gen_range(0..3) {
            0 if which == 0 => 1,
            a => a,
        };
        let result = match action {
            0 | 1 => {
                // Read-modify-write; a conflict means a controller wrote status in between.
                let mut outcome = Err(tonic::Status::aborted("no attempt"));
                for _ in 0..5 {
                    let mut obj = match get(&mut c, "deployments", &d).await {
                        Ok(o) => o,
                        Err(e) => {
                            outcome = Err(e);
                            break;
                        }
                    };
                    if action == 0 {
                        obj["spec"]["replicas"] = json!(rng.gen_range(0..=4));
                    } else {
                        image += 1;
                        obj["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] =
                            json!(format!("v{image}"));
                    }
                    outcome = c
                        .update(RawRequest {
                            resource: "deployments".into(),
                            namespace: NAMESPACE.into(),
                            json: obj.to_string(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ());
                    match &outcome {
                        Err(s) if s.code() == tonic::Code::Aborted => continue,
                        _ => break,
                    }
                }
                outcome
            }
            _ => match list(&mut c, "pods").await {
                Ok(pods) => {
                    let mine: Vec<&Value> =
                        pods.iter().filter(|p| p["metadata"]["labels"]["app"] == json!(d)).collect();
                    if mine.is_empty() {
                        Ok(())
                    } else {
                        let p = mine[rng.gen_range(0..mine.len())];
                        let pod = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
                        c.delete(RawRequest {
                            resource: "pods".into(),
                            namespace: NAMESPACE.into(),
                            name: pod,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                        .or_else(|s| {
                            if s.code() == tonic::Code::NotFound {
                                Ok(())
                            } else {
                                Err(s)
                            }
                        })
                    }
                }
                Err(e) => Err(e),
            },
        };
        match (result, action) {
            (Ok(()), 0) => log.scales += 1,
            (Ok(()), 1) => log.rollouts += 1,
            (Ok(()), _) => log.pod_deletes += 1,
            (Err(_), _) => log.failed += 1,
        }
    }
    log
}

fn owner_uid(o: &Value) -> Option<&str> {
    o["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"] == true)?["uid"].as_str()
}

/// What tells a rollout's templates apart.
fn revision(o: &Value) -> &Value {
    &o["spec"]["template"]["spec"]["containers"][0]["env"]
}

fn running_and_ready(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// What is wrong with the Deployments right now (empty when converged). `running`: node
/// daemons run the pods, so the current ones must be Running and Ready and deleted ones gone.
pub fn divergence(deployments: &[Value], replicasets: &[Value], pods: &[Value], running: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if running {
        for p in pods.iter().filter(|p| !p["metadata"]["deletionTimestamp"].is_null()) {
            problems.push(format!("pod {} is still terminating", p["metadata"]["name"]));
        }
    }
    let live_pods: Vec<&Value> = pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
    let mut pods_by_owner: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &live_pods {
        match owner_uid(p) {
            Some(uid) => *pods_by_owner.entry(uid).or_default() += 1,
            None => problems.push(format!("pod {} has no controller", p["metadata"]["name"])),
        }
    }
    for p in &live_pods {
        if let Some(uid) = owner_uid(p) {
            if !replicasets.iter().any(|rs| rs["metadata"]["uid"] == uid) {
                problems.push(format!("pod {} is orphaned (its ReplicaSet is gone)", p["metadata"]["name"]));
            }
        }
    }
    for d in deployments {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let uid = d["metadata"]["uid"].as_str().unwrap_or_default();
        let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
        if d["status"]["observedGeneration"] != d["metadata"]["generation"] {
            problems.push(format!(
                "deployment {name}: observedGeneration {} of generation {}",
                d["status"]["observedGeneration"], d["metadata"]["generation"]
            ));
        }
        let owned: Vec<&Value> = replicasets.iter().filter(|rs| owner_uid(rs) == Some(uid)).collect();
        let (current, old): (Vec<&Value>, Vec<&Value>) = owned.iter().partition(|rs| revision(rs) == revision(d));
        if current.len() != 1 {
            problems.push(format!("deployment {name}: {} ReplicaSets with its template, not 1", current.len()));
        }
        for rs in &current {
            let rs_name = &rs["metadata"]["name"];
            let pods = pods_by_owner.get(rs["metadata"]["uid"].as_str().unwrap_or_default()).copied().unwrap_or(0);
            if rs["spec"]["replicas"].as_u64() != Some(want) || pods as u64 != want {
                problems.push(format!(
                    "deployment {name}: ReplicaSet {rs_name} wants {} and has {pods} pods, the deployment wants {want}",
                    rs["spec"]["replicas"]
                ));
            }
            if running {
                let uid = &rs["metadata"]["uid"];
                let mine = live_pods.iter().filter(|p| owner_uid(p).is_some_and(|o| *uid == o));
                for p in mine.filter(|p| !running_and_ready(p)) {
                    problems.push(format!(
                        "deployment {name}: pod {} is {} and not ready (node {})",
                        p["metadata"]["name"], p["status"]["phase"], p["spec"]["nodeName"]
                    ));
                }
            }
        }
        for rs in &old {
            let pods = pods_by_owner.get(rs["metadata"]["uid"].as_str().unwrap_or_default()).copied().unwrap_or(0);
            if rs["spec"]["replicas"].as_u64() != Some(0) || pods != 0 {
                problems.push(format!(
                    "deployment {name}: old ReplicaSet {} still wants {} and has {pods} pods",
                    rs["metadata"]["name"], rs["spec"]["replicas"]
                ));
            }
        }
        if old.len() as u64 > HISTORY_LIMIT {
            problems.push(format!("deployment {name}: {} old ReplicaSets kept, limit {HISTORY_LIMIT}", old.len()));
        }
    }
    problems
}

/// Polls until the Deployments converge or `within` passes; returns the time it took, or the
/// problems still seen at the deadline.
pub async fn converge(channel: Channel, within: Duration, running: bool) -> Result<Duration, Vec<String>> {
    let started = Instant::now();
    let mut c = ObjectsClient::new(channel);
    let mut last = vec!["nothing read yet".to_string()];
    while started.elapsed() < within {
        let read = async {
            let d = list(&mut c, "deployments").await?;
            let rs = list(&mut c, "replicasets").await?;
            let p = list(&mut c, "pods").await?;
            Ok::<_, tonic::Status>((d, rs, p))
        }
        .await;
        match read {
            Ok((d, rs, p)) => {
                last = divergence(&d, &rs, &p, running);
                if last.is_empty() {
                    return Ok(started.elapsed());
                }
            }
            Err(e) => last = vec![format!("listing: {}", e.message())],
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, uid: &str, owner: &str, revision: &str, replicas: u64) -> Value {
        json!({"metadata": {"name": name, "uid": uid, "ownerReferences": [{"uid": owner, "controller": true}]},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                   {"image": "busybox:test", "env": [{"name": "REVISION", "value": revision}]}]}}}})
    }
    fn pod(name: &str, owner: &str) -> Value {
        json!({"metadata": {"name": name, "ownerReferences": [{"uid": owner, "controller": true}]},
               "spec": {"nodeName": "n1"},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    #[test]
    fn a_converged_deployment_passes_and_each_kind_of_drift_is_named() {
        let mut d = deployment("web", 2, "busybox:test");
        d["metadata"]["uid"] = json!("d1");
        d["metadata"]["generation"] = json!(3);
        d["status"]["observedGeneration"] = json!(3);
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!("v2");
        let sets = vec![rs("web-new", "r2", "d1", "v2", 2), rs("web-old", "r1", "d1", "v1", 0)];
        let pods = vec![pod("a", "r2"), pod("b", "r2")];
        for running in [false, true] {
            let seen = divergence(std::slice::from_ref(&d), &sets, &pods, running);
            assert!(seen.is_empty(), "{seen:?}");
        }

        let mut dup = pods.clone();
        dup.push(pod("c", "r2"));
        assert!(divergence(&[d.clone()], &sets, &dup, false)[0].contains("has 3 pods"));
        let mut orphan = pods.clone();
        orphan.push(pod("o", "gone"));
        assert!(divergence(&[d.clone()], &sets, &orphan, false)[0].contains("orphaned"));
        let mut old_live = sets.clone();
        old_live[1]["spec"]["replicas"] = json!(1);
        assert!(divergence(&[d.clone()], &old_live, &pods, false)[0].contains("old ReplicaSet"));
        let mut many = sets.clone();
        many.push(rs("web-v0", "r0", "d1", "v0", 0));
        many.push(rs("web-vx", "rx", "d1", "vx", 0));
        assert!(divergence(&[d.clone()], &many, &pods, false)[0].contains("limit 2"));
        let mut stale = d.clone();
        stale["status"]["observedGeneration"] = json!(2);
        assert!(divergence(&[stale], &sets, &pods, false)[0].contains("observedGeneration"));
    }

    #[test]
    fn with_nodes_pods_must_run_and_deleted_ones_must_be_gone() {
        let mut d = deployment("web", 2, "busybox:test");
        d["metadata"]["uid"] = json!("d1");
        let sets = vec![rs("web-1", "r1", "d1", "v0", 2)];
        let mut pending = vec![pod("a", "r1"), pod("b", "r1")];
        pending[1]["status"] = json!({"phase": "Pending"});
        assert!(divergence(&[d.clone()], &sets, &pending, false).is_empty(), "without nodes, pods are counted");
        let seen = divergence(&[d.clone()], &sets, &pending, true);
        assert!(seen.len() == 1 && seen[0].contains("\"b\" is \"Pending\" and not ready"), "{seen:?}");

        let mut unready = vec![pod("a", "r1"), pod("b", "r1")];
        unready[0]["status"]["conditions"][0]["status"] = json!("False");
        assert!(divergence(&[d.clone()], &sets, &unready, true)[0].contains("not ready"));

        let mut lingering = vec![pod("a", "r1"), pod("b", "r1"), pod("gone", "r1")];
        lingering[2]["metadata"]["deletionTimestamp"] = json!("2026-11-23T00:00:00Z");
        assert!(divergence(&[d.clone()], &sets, &lingering, false).is_empty(), "a terminating pod is not counted");
        assert!(divergence(&[d.clone()], &sets, &lingering, true)[0].contains("still terminating"));
    }
}
