//! Workloads as a kubectl user drives them, on real nodes: a multi-container pod and its logs
//! (`-f -c`, `--all-containers`), an init-container pod showing `Init:0/2` while it waits, a
//! DaemonSet, a nodeSelector pod that stays Pending until `label nodes`, and a taint that keeps
//! pods away until it is removed with `-`.

use skiff_tests::{skiff_bin, wait_for, Cluster};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// `get pods` columns of one pod: [NAME, READY, STATUS, RESTARTS, AGE].
fn pod_row(c: &Cluster, name: &str) -> Vec<String> {
    let out = c.ctl(&["get", "pods", name]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

fn node_of(c: &Cluster, pod: &str) -> Option<String> {
    let p = c.get_json("pods", pod)?;
    p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(String::from)
}

#[test]
fn pods_daemonsets_selectors_and_taints_through_the_cli() {
    let c = Cluster::with_nodes(3, 2, &[]);
    let gate = tempfile::tempdir().unwrap();
    let gate_dir = gate.path().to_str().unwrap().to_string();
    c.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: duo}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {{name: left, image: "busybox:test", command: [sh, -c, "i=0; while true; do echo left $i; i=$((i+1)); sleep 0.2; done"]}}
  - {{name: right, image: "busybox:test", command: [sh, -c, "i=0; while true; do echo right $i; i=$((i+1)); sleep 0.2; done"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: gated}}
spec:
  terminationGracePeriodSeconds: 0
  volumes: [{{name: gate, hostPath: {{path: "{gate_dir}"}}}}]
  initContainers:
  - {{name: wait-gate, image: "busybox:test", command: [sh, -c, "until [ -f /gate/open ]; do sleep 0.2; done"], volumeMounts: [{{name: gate, mountPath: /gate}}]}}
  - {{name: second, image: "busybox:test", command: ["true"]}}
  containers:
  - {{name: main, image: "busybox:test", command: [sleep, "3600"]}}
"#
    ));

    // phase: the init-container pod shows Init:0/2 while its first init container waits
    wait_for(T, "gated to show Init:0/2", || {
        (pod_row(&c, "gated").get(2).map(String::as_str) == Some("Init:0/2")).then_some(())
    });
    // Both nodes see the same host directory (they run on this machine).
    std::fs::write(gate.path().join("open"), "").unwrap();
    wait_for(T, "gated to run its main container", || {
        let row = pod_row(&c, "gated");
        (row.get(1).map(String::as_str) == Some("1/1") && row.get(2).map(String::as_str) == Some("Running"))
            .then_some(())
    });

    // phase: logs -f -c follows one container of a multi-container pod
    wait_for(T, "duo running", || (pod_row(&c, "duo").get(1).map(String::as_str) == Some("2/2")).then_some(()));
    let mut follow = Command::new(skiff_bin())
        .env("SKIFF_CONFIG", c.dir.path().join("client.json"))
        .args(["logs", "duo", "-c", "right", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match lines.next() {
            Some(Ok(l)) => seen.push(l),
            _ => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen.len(), 5, "logs -f stopped early: {seen:?}");
    assert!(seen.iter().all(|l| l.starts_with("right ")), "{seen:?}");
    let all = c.ctl_ok(&["logs", "duo", "--all-containers", "--prefix"]);
    assert!(all.lines().any(|l| l.starts_with("[pod/duo/left] left ")), "{all}");
    assert!(all.lines().any(|l| l.starts_with("[pod/duo/right] right ")), "{all}");
    let ambiguous = c.ctl(&["logs", "duo"]);
    assert_eq!(ambiguous.status.code(), Some(1));

    // phase: a DaemonSet puts one pod on each node
    c.apply_yaml(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: a, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    wait_for(T, "the DaemonSet ready on both nodes", || {
        let out = c.ctl_ok(&["get", "ds", "agent"]);
        let row: Vec<&str> = out.lines().nth(1)?.split_whitespace().collect();
        // NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE ...
        (row.get(1..6) == Some(&["2", "2", "2", "2", "2"][..])).then_some(())
    });

    // phase: a nodeSelector pod stays Pending until a node gets the label
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: fussy}
spec:
  terminationGracePeriodSeconds: 0
  nodeSelector: {disktype: ssd}
  containers: [{name: main, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    wait_for(T, "fussy to be reported unschedulable", || {
        let p = c.get_json("pods", "fussy")?;
        let unschedulable =
            p["status"]["conditions"].as_array()?.iter().any(|x| x["type"] == "PodScheduled" && x["status"] == "False");
        unschedulable.then_some(())
    });
    assert_eq!(pod_row(&c, "fussy").get(2).map(String::as_str), Some("Pending"));
    c.ctl_ok(&["label", "nodes", "node-2", "disktype=ssd"]);
    wait_for(T, "fussy running on node-2", || {
        (node_of(&c, "fussy").as_deref() == Some("node-2")
            && pod_row(&c, "fussy").get(2).map(String::as_str) == Some("Running"))
        .then_some(())
    });

    // phase: a NoSchedule taint keeps new pods off node-1 until it is removed with `-`
    c.ctl_ok(&["taint", "nodes", "node-1", "reserved=yes:NoSchedule"]);
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  nodeSelector: {{kubernetes.io/hostname: node-1}}\n  containers: [{{name: main, image: \"busybox:test\", command: [sleep, \"3600\"]}}]\n"
        )
    };
    c.apply_yaml(&pod("kept-away"));
    wait_for(T, "kept-away to be reported unschedulable because of the taint", || {
        let p = c.get_json("pods", "kept-away")?;
        let msg = p["status"]["conditions"].as_array()?.iter().find(|x| x["type"] == "PodScheduled")?["message"]
            .as_str()?
            .to_string();
        msg.contains("untolerated taint").then_some(())
    });
    assert!(node_of(&c, "kept-away").is_none());
    c.ctl_ok(&["taint", "nodes", "node-1", "reserved:NoSchedule-"]);
    wait_for(T, "kept-away running on node-1 once the taint is gone", || {
        (node_of(&c, "kept-away").as_deref() == Some("node-1")
            && pod_row(&c, "kept-away").get(2).map(String::as_str) == Some("Running"))
        .then_some(())
    });
    // phase: a NoExecute taint put on by hand evicts what does not tolerate it — the pod pinned
    // there and the DaemonSet's pod (which the DaemonSet does not put back) — until removed
    c.ctl_ok(&["taint", "nodes", "node-2", "maintenance=yes:NoExecute"]);
    wait_for(T, "fussy evicted from node-2", || c.get_json("pods", "fussy").is_none().then_some(()));
    let ds_desired = |want: &str| {
        let out = c.ctl_ok(&["get", "ds", "agent"]);
        let row: Vec<String> = out.lines().nth(1).unwrap_or_default().split_whitespace().map(String::from).collect();
        (row.get(1).map(String::as_str) == Some(want) && row.get(3).map(String::as_str) == Some(want)).then_some(())
    };
    wait_for(T, "the DaemonSet down to node-1 only", || ds_desired("1"));
    c.ctl_ok(&["taint", "nodes", "node-2", "maintenance:NoExecute-"]);
    wait_for(T, "the DaemonSet back on both nodes", || ds_desired("2"));
}
