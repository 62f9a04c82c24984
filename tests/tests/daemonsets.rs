//! DaemonSets on real nodes: a pod on each node that matches, following node labels as they
//! change, and a new template rolled out node by node.

use serde_json::Value;
use skiff_tests::{wait_for, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn daemonset(version: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      terminationGracePeriodSeconds: 0
      nodeSelector: {{role: worker}}
      containers:
      - name: agent
        image: "busybox:test"
        command: [sh, -c, "touch /tmp/ready; exec sleep 3600"]
        env: [{{name: VERSION, value: "{version}"}}]
        readinessProbe: {{exec: {{command: [cat, /tmp/ready]}}, periodSeconds: 1}}
"#
    )
}

/// (node, version, ready) of each live agent pod, sorted.
fn agents(c: &Cluster) -> Vec<(String, String, bool)> {
    let out = c.ctl_ok(&["get", "pods", "-l", "app=agent", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut list: Vec<(String, String, bool)> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = skiff_tests::ready(p);
            (
                p["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
                p["spec"]["containers"][0]["env"][0]["value"].as_str().unwrap_or_default().to_string(),
                ready,
            )
        })
        .collect();
    list.sort();
    list
}

fn expect(c: &Cluster, what: &str, want: &[(&str, &str)]) {
    let want: Vec<(String, String, bool)> = want.iter().map(|(n, v)| (n.to_string(), v.to_string(), true)).collect();
    let mut seen = Vec::new();
    wait_for(T, what, || {
        seen = agents(c);
        (seen == want).then_some(())
    });
}

#[test]
fn a_daemonset_follows_node_labels_and_rolls_node_by_node() {
    let c = Cluster::with_nodes(3, 2, &[]);
    // phase: no node is a worker yet: no pods
    c.apply_yaml(&daemonset("v1"));
    c.ctl_ok(&["label", "node", "node-1", "role=worker"]);
    expect(&c, "one agent, on node-1", &[("node-1", "v1")]);
    // phase: node-2 joins the workers
    c.ctl_ok(&["label", "node", "node-2", "role=worker"]);
    expect(&c, "agents on both nodes", &[("node-1", "v1"), ("node-2", "v1")]);
    wait_for(T, "status counting 2 ready", || {
        let d = c.get_json("daemonsets", "agent")?;
        (d["status"]["numberReady"] == 2 && d["status"]["desiredNumberScheduled"] == 2).then_some(())
    });
    // phase: a new template replaces the pods, never both nodes at once
    c.apply_yaml(&daemonset("v2"));
    let mut worst = 2;
    wait_for(T, "v2 agents on both nodes", || {
        let now = agents(&c);
        worst = worst.min(now.iter().filter(|a| a.2).count());
        (now == [("node-1".into(), "v2".into(), true), ("node-2".into(), "v2".into(), true)]).then_some(())
    });
    assert!(worst >= 1, "both agents were down at once");
    // phase: node-1 stops being a worker: its agent goes
    c.ctl_ok(&["label", "node", "node-1", "role-"]);
    expect(&c, "only node-2's agent", &[("node-2", "v2")]);
}

#[test]
fn a_daemonset_follows_nodes_as_they_join_and_leave() {
    let c = Cluster::with_nodes(3, 1, &[]);
    c.apply_yaml(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: everywhere}
spec:
  selector: {matchLabels: {app: everywhere}}
  template:
    metadata: {labels: {app: everywhere}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: a, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    let on = |c: &Cluster| -> Vec<String> {
        let out = c.ctl_ok(&["get", "pods", "-l", "app=everywhere", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut nodes: Vec<String> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running")
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect();
        nodes.sort();
        nodes
    };
    wait_for(T, "the DaemonSet's pod on node-1", || (on(&c) == ["node-1"]).then_some(()));

    // phase: a node joins (skiff up with one more node) and gets its pod
    let dir = c.dir.path().to_str().unwrap().to_string();
    let image = skiff_tests::test_image();
    skiff_tests::skiff(&[
        "up",
        "--dir",
        &dir,
        "--masters",
        "3",
        "--nodes",
        "2",
        "--import-image",
        image.to_str().unwrap(),
        "--node-arg=--backoff-base-ms=1000",
    ]);
    wait_for(T, "the DaemonSet's pods on node-1 and the new node-2", || (on(&c) == ["node-1", "node-2"]).then_some(()));

    // phase: node-2 leaves (its daemon stops, its Node is deleted): its pod goes with it
    let (_, pid, _) = c.nodes().into_iter().find(|(n, _, _)| n == "node-2").expect("node-2 in cluster.json");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    c.ctl_ok(&["delete", "node", "node-2"]);
    wait_for(T, "the node-2 pod collected and the DaemonSet back to node-1", || {
        let out = c.ctl_ok(&["get", "pods", "-l", "app=everywhere", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let gone = v["items"].as_array()?.iter().all(|p| p["spec"]["nodeName"] != "node-2");
        (gone && on(&c) == ["node-1"]).then_some(())
    });
    let ds = c.get_json("daemonsets", "everywhere").unwrap();
    assert_eq!(ds["status"]["desiredNumberScheduled"], 1, "{ds}");
}
