//! Node failure: a node daemon SIGKILLed stops renewing its Lease; the leader marks the node
//! unreachable, evicts its pods once their toleration runs out, and the ReplicaSet's
//! replacement lands on the healthy node; a restarted daemon clears the taint.

use serde_json::Value;
use skiff_tests::{pid_alive, wait_for, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn pods(c: &Cluster) -> Vec<Value> {
    let v: Value = serde_json::from_str(&c.ctl_ok(&["get", "pods", "-o", "json"])).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn running_on(p: &Value, node: &str) -> bool {
    p["spec"]["nodeName"] == node && p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
}

#[test]
fn a_dead_node_is_tainted_its_pods_evicted_and_replaced_elsewhere() {
    let mut c = Cluster::with_nodes(
        3,
        2,
        &["--node-arg=--lease-interval-seconds=1", "--node-grace-seconds", "4", "--pod-eviction-seconds", "3"],
    );
    c.apply_yaml(
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: tolerant}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 0
  tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}]
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    wait_for(T, "a web pod running on each node, and the tolerant pod", || {
        let all = pods(&c);
        let web = |n: &str| all.iter().any(|p| p["metadata"]["labels"]["app"] == "web" && running_on(p, n));
        (web("node-1")
            && web("node-2")
            && all.iter().any(|p| p["metadata"]["name"] == "tolerant" && running_on(p, "node-2")))
        .then_some(())
    });

    // phase: node-2's daemon dies
    let daemon = c.nodes().iter().find(|n| n.0 == "node-2").unwrap().1;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_for(Duration::from_secs(10), "node-2's daemon to exit", || (!pid_alive(daemon)).then_some(()));
    let node = wait_for(T, "node-2 tainted unreachable and not ready", || {
        let n = c.get_json("nodes", "node-2")?;
        let tainted = n["spec"]["taints"].as_array()?.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable");
        tainted.then_some(n)
    });
    let ready = node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["status"], "Unknown", "{ready}");
    assert!(c.ctl_ok(&["get", "nodes"]).contains("NotReady"));

    // phase: the web pod there is evicted and replaced on node-1; the tolerant pod stays
    wait_for(T, "two web pods running on node-1", || {
        let all = pods(&c);
        (all.iter().filter(|p| p["metadata"]["labels"]["app"] == "web" && running_on(p, "node-1")).count() == 2)
            .then_some(())
    });
    let tolerant = c.get_json("pods", "tolerant").unwrap();
    assert!(tolerant["metadata"]["deletionTimestamp"].is_null(), "a pod tolerating unreachable stays: {tolerant}");
    let events = c.ctl_ok(&["get", "events", "-o", "json"]);
    assert!(events.contains("TaintManagerEviction"), "{events}");

    // phase: the daemon comes back: the taint goes
    c.restart_stopped();
    wait_for(T, "node-2's unreachable taint removed", || {
        let n = c.get_json("nodes", "node-2")?;
        let tainted = n["spec"]["taints"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable"));
        (!tainted).then_some(())
    });

    // phase: a daemon that stalls (SIGSTOP) is marked not ready; when it resumes it says Ready
    // again on its own — the taint goes and the condition comes back True
    let daemon = c.nodes().iter().find(|n| n.0 == "node-2").unwrap().1;
    let pid = nix::unistd::Pid::from_raw(daemon as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    wait_for(T, "the stalled node-2 marked Ready=Unknown and tainted unreachable", || {
        let n = c.get_json("nodes", "node-2")?;
        (ready_status(&n) == "Unknown" && n["spec"]["taints"].to_string().contains("node.kubernetes.io/unreachable"))
            .then_some(())
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_for(T, "the resumed node-2 Ready=True without the unreachable taint", || {
        let n = c.get_json("nodes", "node-2")?;
        (ready_status(&n) == "True" && !n["spec"]["taints"].to_string().contains("unreachable")).then_some(())
    });
}

fn ready_status(node: &Value) -> String {
    let conditions = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let ready = conditions.iter().find(|c| c["type"] == "Ready");
    ready.and_then(|c| c["status"].as_str()).unwrap_or_default().to_string()
}
