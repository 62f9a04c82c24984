//! Deployments on real nodes: a rollout creates a ReplicaSet per template revision and moves
//! pods over as new ones become Ready, scaling resizes only the current ReplicaSet, and putting
//! the old template back (a rollback) revives its ReplicaSet as the newest revision.

use serde_json::Value;
use skiff_tests::{wait_for, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn deployment(version: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: app
        image: "busybox:test"
        command: [sh, -c, "echo {version}; touch /tmp/ready; exec sleep 3600"]
        env: [{{name: VERSION, value: "{version}"}}]
        readinessProbe: {{exec: {{command: [cat, /tmp/ready]}}, periodSeconds: 1}}
"#
    )
}

fn items(c: &Cluster, resource: &str) -> Vec<Value> {
    let out = c.ctl_ok(&["get", resource, "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn ready_pods(c: &Cluster, version: &str) -> usize {
    items(c, "pods")
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["spec"]["containers"][0]["env"][0]["value"] == version)
        .filter(|p| skiff_tests::ready(p))
        .count()
}

fn rollout_done(c: &Cluster, replicas: i64) -> Option<Value> {
    let d = c.get_json("deployments", "web")?;
    let s = &d["status"];
    (s["updatedReplicas"].as_i64() == Some(replicas)
        && s["readyReplicas"].as_i64() == Some(replicas)
        && s["replicas"].as_i64() == Some(replicas))
    .then_some(d)
}

#[test]
fn a_deployment_rolls_out_scales_and_rolls_back_on_real_nodes() {
    let c = Cluster::with_nodes(3, 2, &[]);
    // phase: create; one ReplicaSet, three ready pods, revision 1
    c.apply_yaml(&deployment("v1", 3));
    let d = wait_for(T, "3 ready replicas of v1", || rollout_done(&c, 3));
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    let sets = items(&c, "replicasets");
    assert_eq!(sets.len(), 1, "{sets:?}");
    let first_rs = sets[0]["metadata"]["name"].as_str().unwrap().to_string();
    let hash = sets[0]["metadata"]["labels"]["pod-template-hash"].as_str().unwrap();
    assert_eq!(first_rs, format!("web-{hash}"));

    // phase: a new template rolls over; with maxUnavailable 0, v1 never drops below 3 ready
    // until v2 pods are ready to take their place
    c.apply_yaml(&deployment("v2", 3));
    let mut min_ready = usize::MAX;
    wait_for(T, "3 ready replicas of v2 and no v1 pods", || {
        let v1 = ready_pods(&c, "v1");
        let v2 = ready_pods(&c, "v2");
        min_ready = min_ready.min(v1 + v2);
        (v2 == 3 && v1 == 0 && rollout_done(&c, 3).is_some()).then_some(())
    });
    assert!(min_ready >= 3, "availability dipped to {min_ready} ready pods during the rollout");
    let d = c.get_json("deployments", "web").unwrap();
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    let sets = items(&c, "replicasets");
    assert_eq!(sets.len(), 2);
    let old = sets.iter().find(|s| s["metadata"]["name"] == first_rs.as_str()).unwrap();
    assert_eq!(old["spec"]["replicas"].as_i64().unwrap_or(0), 0, "the old ReplicaSet is scaled to zero and kept");

    // phase: scaling changes only the current ReplicaSet
    c.apply_yaml(&deployment("v2", 4));
    wait_for(T, "4 ready replicas", || rollout_done(&c, 4));
    assert_eq!(items(&c, "replicasets").len(), 2, "scaling made no new revision");

    // phase: the v1 template again: its ReplicaSet comes back as revision 3
    c.apply_yaml(&deployment("v1", 4));
    wait_for(T, "4 ready replicas of v1 again", || {
        (ready_pods(&c, "v1") == 4 && ready_pods(&c, "v2") == 0 && rollout_done(&c, 4).is_some()).then_some(())
    });
    let sets = items(&c, "replicasets");
    assert_eq!(sets.len(), 2, "the old ReplicaSet was reused: {sets:?}");
    let back = sets.iter().find(|s| s["metadata"]["name"] == first_rs.as_str()).unwrap();
    assert_eq!(back["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    assert_eq!(back["spec"]["replicas"], 4);

    // phase: kubectl-style rollout commands: history lists revisions 2 and 3, undo goes back
    // to v2 (revision 4), status waits for it and says so
    let history = c.ctl_ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    assert!(c.ctl_ok(&["rollout", "undo", "deployment/web"]).contains("rolled back"));
    let status = c.ctl_ok(&["rollout", "status", "deployment/web", "--timeout", "90s"]);
    assert!(status.trim_end().ends_with("deployment \"web\" successfully rolled out"), "{status}");
    wait_for(T, "4 ready replicas of v2 after undo", || {
        (ready_pods(&c, "v2") == 4 && ready_pods(&c, "v1") == 0).then_some(())
    });
    let d = c.get_json("deployments", "web").unwrap();
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "4");
    let missing = c.ctl(&["rollout", "undo", "deployment/web", "--to-revision", "99"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("unable to find specified revision 99"));
}

/// Non-terminating pods of the Deployment, and how many of them are Ready.
fn pod_counts(c: &Cluster) -> (usize, usize) {
    let pods: Vec<Value> = items(c, "pods")
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "web" && p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let ready = pods.iter().filter(|p| skiff_tests::ready(p)).count();
    (pods.len(), ready)
}

#[test]
fn a_rolling_update_survives_two_leader_kills_with_its_invariants_held() {
    let mut c = Cluster::with_nodes(3, 2, &[]);
    let ids: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    c.apply_yaml(&deployment("v1", 5));
    wait_for(T, "5 ready replicas of v1", || rollout_done(&c, 5));

    // phase: roll to v2 (maxSurge 1, maxUnavailable 0) and SIGKILL the leader twice on the way
    c.apply_yaml(&deployment("v2", 5));
    let (mut max_pods, mut min_ready) = (0, usize::MAX);
    let mut kills = Vec::new();
    wait_for(Duration::from_secs(180), "the rollout to finish through two leader kills", || {
        let (pods, ready) = pod_counts(&c);
        max_pods = max_pods.max(pods);
        min_ready = min_ready.min(ready);
        let v2 = ready_pods(&c, "v2");
        // First kill once the rollout has started, the second half-way through.
        if (kills.is_empty() && v2 >= 1) || (kills.len() == 1 && v2 >= 3) {
            let leader = c.wait_leader(&ids, Duration::from_secs(20));
            c.kill(leader);
            kills.push(leader);
            // A new leader among the survivors, then the killed master back as a follower (two
            // masters down at once would leave no quorum).
            let alive: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
            c.wait_leader(&alive, Duration::from_secs(20));
            c.restart_stopped();
        }
        (kills.len() == 2 && v2 == 5 && ready_pods(&c, "v1") == 0 && rollout_done(&c, 5).is_some()).then_some(())
    });
    assert!(max_pods <= 6, "the rollout ran {max_pods} pods at once (maxSurge 1 of 5)");
    assert!(min_ready >= 5, "availability dipped to {min_ready} ready pods (maxUnavailable 0)");

    // phase: nothing duplicated — one ReplicaSet per template, exactly 5 pods, all v2
    let sets = items(&c, "replicasets");
    assert_eq!(sets.len(), 2, "{sets:?}");
    let (pods, ready) = pod_counts(&c);
    assert_eq!((pods, ready), (5, 5));
    c.wait_leader(&ids, Duration::from_secs(30));
}
