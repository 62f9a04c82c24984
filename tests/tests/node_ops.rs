//! Operating nodes and workloads as with kubectl: taint, cordon, drain, set image.

use serde_json::Value;
use skiff_tests::{wait_for, wait_for_showing, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn running(c: &Cluster, label: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&c.ctl_ok(&["get", "pods", "-l", label, "-o", "json"])).unwrap();
    let mut out: Vec<(String, String)> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running")
        .map(|p| {
            (
                p["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
                p["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn taint_cordon_drain_and_set_image_work_like_kubectl() {
    let c = Cluster::with_nodes(3, 2, &[]);
    let d = c.dir.path().to_str().unwrap().to_string();
    let image = skiff_tests::test_image();
    c.ctl_ok(&["image", "import", image.to_str().unwrap(), "--tag", "busybox:v2", "--dir", &d]);

    // phase: a NoSchedule taint on node-2 keeps new pods on node-1
    assert!(c.ctl_ok(&["taint", "node", "node-2", "dedicated=infra:NoSchedule"]).contains("modified"));
    let dup = c.ctl(&["taint", "node", "node-2", "dedicated=other:NoSchedule"]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("--overwrite is false"));
    c.apply_yaml(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    let on1 = |img: &str| vec![("node-1".to_string(), img.to_string()); 2];
    wait_for(T, "both replicas on node-1", || (running(&c, "app=web") == on1("busybox:test")).then_some(()));
    let described = c.ctl_ok(&["describe", "node", "node-2"]);
    assert!(described.contains("dedicated=infra:NoSchedule"), "{described}");
    wait_for(T, "describe to show the deployment's replicas", || {
        c.ctl_ok(&["describe", "deployment/web"])
            .contains("2 desired | 2 updated | 2 total | 2 available")
            .then_some(())
    });
    c.ctl_ok(&["taint", "node", "node-2", "dedicated-"]);

    // phase: set image rolls the Deployment to the new image, recorded as revision 2
    assert!(c.ctl_ok(&["set", "image", "deployment/web", "app=busybox:v2"]).contains("image updated"));
    let status = c.ctl_ok(&["rollout", "status", "deployment/web", "--timeout", "60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    wait_for(T, "two pods of busybox:v2", || {
        let now = running(&c, "app=web");
        (now.len() == 2 && now.iter().all(|(_, i)| i == "busybox:v2")).then_some(())
    });
    let missing = c.ctl(&["set", "image", "deployment/web", "nope=busybox:v2"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("unable to find container named \"nope\""));

    // phase: cordon node-1: it shows SchedulingDisabled and a new pod goes to node-2
    c.ctl_ok(&["cordon", "node-1"]);
    assert!(c.ctl_ok(&["get", "nodes"]).contains("Ready,SchedulingDisabled"));
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: loner, labels: {app: loner}}
spec:
  terminationGracePeriodSeconds: 0
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    wait_for(T, "loner on node-2", || {
        (running(&c, "app=loner") == [("node-2".to_string(), "busybox:test".to_string())]).then_some(())
    });
    let wants =
        ["Node:         node-2/", "Status:       Running", "Restart Count:  0", "Scheduled", "Started", "Events:"];
    wait_for(T, "describe pod with its events", || {
        let described = c.ctl_ok(&["describe", "pod", "loner"]);
        wants.iter().all(|w| described.contains(w)).then_some(())
    });
    c.ctl_ok(&["uncordon", "node-1"]);

    // phase: drain node-2: the unmanaged pod needs --force; then everything moves to node-1
    let refused = c.ctl(&["drain", "node-2"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("declare no controller"));
    // Drained means gone: the command waits for each evicted pod to leave the API.
    let drained = c.ctl_ok(&["drain", "node-2", "--force", "--timeout", "60s"]);
    assert!(drained.contains("pod/loner evicted") && drained.trim_end().ends_with("node/node-2 drained"), "{drained}");
    assert!(c.get_json("pods", "loner").is_none(), "loner is still in the API after the drain");
    wait_for(T, "the web pods all on node-1", || {
        let web = running(&c, "app=web");
        (web.len() == 2 && web.iter().all(|(n, _)| n == "node-1")).then_some(())
    });
    // phase: uncordon puts node-2 back in service
    assert!(c.ctl_ok(&["get", "node", "node-2"]).contains("SchedulingDisabled"));
    c.ctl_ok(&["uncordon", "node-2"]);
    assert!(!c.ctl_ok(&["get", "node", "node-2"]).contains("SchedulingDisabled"));

    // phase: a PodDisruptionBudget makes drain wait until evicting keeps enough pods healthy
    c.apply_yaml(
        r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
"#,
    );
    let budget = |c: &Cluster| {
        let b = c.get_json("poddisruptionbudgets", "web").expect("the budget");
        // Zeros are left out, as every field at its default.
        let n = |f: &str| b["status"][f].as_i64().unwrap_or(0);
        (n("currentHealthy"), n("desiredHealthy"), n("disruptionsAllowed"))
    };
    wait_for_showing(
        T,
        "the budget's status: 2 healthy, 2 needed, none allowed",
        || format!("{:?}", c.get_json("poddisruptionbudgets", "web")),
        || (budget(&c) == (2, 2, 0)).then_some(()),
    );
    let table = c.ctl_ok(&["get", "pdb", "web"]);
    assert!(table.contains("MIN AVAILABLE") && table.contains("N/A"), "{table}");
    let log = |name: &str| c.dir.path().join(name);
    let mut drain = std::process::Command::new(skiff_tests::skiff_bin())
        .env("SKIFF_CONFIG", c.dir.path().join("client.json"))
        .args(["drain", "node-1", "--timeout", "120s"])
        .stdout(std::fs::File::create(log("drain.out")).unwrap())
        .stderr(std::fs::File::create(log("drain.err")).unwrap())
        .spawn()
        .expect("start drain");
    let read = |name: &str| std::fs::read_to_string(log(name)).unwrap_or_default();
    let refused = "Cannot evict pod as it would violate the pod's disruption budget.";
    wait_for(T, "drain to be refused by the budget", || read("drain.err").contains(refused).then_some(()));
    assert!(drain.try_wait().unwrap().is_none(), "drain gave up: {}", read("drain.err"));
    assert_eq!(running(&c, "app=web").len(), 2, "a pod was evicted against the budget");
    // A third replica (on node-2: node-1 is cordoned) lets one go at a time.
    c.ctl_ok(&["scale", "deployment/web", "--replicas", "3"]);
    let status = wait_for(Duration::from_secs(120), "drain to finish", || drain.try_wait().unwrap());
    assert!(status.success(), "drain failed: {}\n{}", read("drain.out"), read("drain.err"));
    assert!(read("drain.out").trim_end().ends_with("node/node-1 drained"), "{}", read("drain.out"));
    wait_for(T, "three web pods on node-2", || {
        let web = running(&c, "app=web");
        (web.len() == 3 && web.iter().all(|(n, _)| n == "node-2")).then_some(())
    });
}

#[test]
fn the_garbage_collector_removes_pods_whose_owner_is_gone() {
    let c = Cluster::with_nodes(3, 1, &[]);
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: stray
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: long-gone, uid: 0b6c1f7e-0000-4000-8000-000000000000}]
spec:
  terminationGracePeriodSeconds: 0
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: free}
spec:
  terminationGracePeriodSeconds: 0
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    wait_for(T, "the pod with a missing owner collected", || c.get_json("pods", "stray").is_none().then_some(()));
    let free = c.get_json("pods", "free").expect("a pod without owners stays");
    assert!(free["metadata"]["deletionTimestamp"].is_null());

    // phase: a ReplicationController keeps its replicas, and its pods go with it
    c.apply_yaml(
        r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: nginx}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: nginx}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    let names = |c: &Cluster| -> Vec<String> {
        let v: Value = serde_json::from_str(&c.ctl_ok(&["get", "pods", "-l", "app=nginx", "-o", "json"])).unwrap();
        let mut names: Vec<String> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && skiff_tests::ready(p))
            .filter(|p| p["metadata"]["ownerReferences"][0]["kind"] == "ReplicationController")
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        names.sort();
        names
    };
    let first = wait_for(T, "two ready pods of the ReplicationController", || {
        let n = names(&c);
        (n.len() == 2).then_some(n)
    });
    let rc = c.get_json("replicationcontrollers", "nginx").expect("the rc");
    assert_eq!(rc["spec"]["selector"], serde_json::json!({"app": "nginx"}), "the selector defaults to the labels");
    c.ctl_ok(&["delete", "pod", &first[0]]);
    wait_for(T, "a replacement for the deleted pod", || {
        let n = names(&c);
        (n.len() == 2 && !n.contains(&first[0])).then_some(())
    });
    wait_for(T, "the rc's table: 2 desired, 2 current, 2 ready", || {
        let table = c.ctl_ok(&["get", "rc", "nginx"]);
        table.lines().nth(1).is_some_and(|l| l.split_whitespace().take(4).eq(["nginx", "2", "2", "2"])).then_some(())
    });
    c.ctl_ok(&["scale", "rc/nginx", "--replicas", "1"]);
    wait_for(T, "one pod after scaling to 1", || (names(&c).len() == 1).then_some(()));
    c.ctl_ok(&["delete", "rc", "nginx"]);
    wait_for(T, "the rc's pods collected", || {
        let v: Value = serde_json::from_str(&c.ctl_ok(&["get", "pods", "-l", "app=nginx", "-o", "json"])).unwrap();
        v["items"].as_array().is_some_and(|a| a.is_empty()).then_some(())
    });
}

#[test]
fn delete_by_selector_all_grace_period_and_cascade_orphan() {
    let c = Cluster::with_nodes(3, 1, &[]);
    let pod = |name: &str, tier: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{tier: {tier}}}}}\nspec:\n  terminationGracePeriodSeconds: 30\n  containers: [{{name: app, image: \"busybox:test\", command: [sleep, \"3600\"]}}]\n"
        )
    };
    for (n, t) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
        c.apply_yaml(&pod(n, t));
    }
    for n in ["a1", "a2", "b1"] {
        wait_for(T, &format!("{n} running"), || (c.get_json("pods", n)?["status"]["phase"] == "Running").then_some(()));
    }
    // phase: -l with --grace-period=0 --force removes the selected pods from the API at once
    let out = c.ctl_ok(&["delete", "pods", "-l", "tier=a", "--grace-period=0", "--force"]);
    assert!(out.contains("\"a1\" deleted") && out.contains("\"a2\" deleted"), "{out}");
    assert!(c.get_json("pods", "a1").is_none() && c.get_json("pods", "a2").is_none());
    assert!(c.get_json("pods", "b1").is_some(), "b1 was not selected");

    // phase: --cascade=orphan deletes a ReplicaSet and leaves its pods, ownerless
    c.apply_yaml(
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: keep}
spec:
  replicas: 2
  selector: {matchLabels: {app: keep}}
  template:
    metadata: {labels: {app: keep}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    let list = |label: &str| -> Vec<Value> {
        let v: Value = serde_json::from_str(&c.ctl_ok(&["get", "pods", "-l", label, "-o", "json"])).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    };
    wait_for(T, "two pods of the ReplicaSet", || (list("app=keep").len() == 2).then_some(()));
    c.ctl_ok(&["delete", "rs", "keep", "--cascade=orphan"]);
    assert!(c.get_json("replicasets", "keep").is_none());
    let left = list("app=keep");
    assert_eq!(left.len(), 2, "orphaned pods stay");
    assert!(left.iter().all(|p| p["metadata"]["ownerReferences"].is_null()), "{left:?}");

    // phase: --all removes the rest of the kind in the namespace
    c.ctl_ok(&["delete", "pods", "--all", "--grace-period=0", "--force"]);
    assert!(list("app=keep").is_empty() && c.get_json("pods", "b1").is_none());
    let bad = c.ctl(&["delete", "pods", "--all", "--cascade=sideways"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid --cascade"));
}

#[test]
fn the_masters_hand_each_node_a_pod_range_and_free_it_with_the_node() {
    // 10.245/16: no other test's nodes on this machine use it (theirs are in 10.244/16).
    let c = Cluster::with_nodes(1, 1, &["--cluster-cidr", "10.245.0.0/16"]);
    let cidr = |name: &str| -> Option<(String, Value)> {
        let node = c.get_json("nodes", name)?;
        let one = node["spec"]["podCIDR"].as_str().unwrap_or_default().to_string();
        (!one.is_empty()).then(|| (one, node["spec"]["podCIDRs"].clone()))
    };

    // phase: the node daemon started without --pod-cidr runs pods in the range it was given
    let (range, ranges) = wait_for(T, "node-1's pod range", || cidr("node-1"));
    assert_eq!((range.as_str(), ranges), ("10.245.0.0/24", serde_json::json!(["10.245.0.0/24"])));
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ranged}
spec:
  terminationGracePeriodSeconds: 0
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    let ip = wait_for(T, "pod ranged Running with an address", || {
        let pod = c.get_json("pods", "ranged")?;
        (pod["status"]["phase"] == "Running").then(|| pod["status"]["podIP"].as_str().unwrap_or_default().to_string())
    });
    assert!(ip.starts_with("10.245.0."), "pod address {ip} is outside node-1's range {range}");

    // phase: Nodes registered later get the lowest free range; one that brings its own keeps it
    let node = |name: &str, cidr: &str| {
        let spec = if cidr.is_empty() { String::new() } else { format!("spec: {{podCIDR: {cidr}}}\n") };
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n{spec}")
    };
    c.apply_yaml(&node("spare-a", "10.245.2.0/24"));
    c.apply_yaml(&node("spare-b", ""));
    assert_eq!(wait_for(T, "spare-b's range", || cidr("spare-b")).0, "10.245.1.0/24");
    c.apply_yaml(&node("spare-c", ""));
    assert_eq!(wait_for(T, "spare-c's range", || cidr("spare-c")).0, "10.245.3.0/24");
    assert_eq!(cidr("spare-a").unwrap().0, "10.245.2.0/24", "a Node's own range stays");

    // phase: a deleted Node's range goes to the next Node
    c.ctl_ok(&["delete", "node", "spare-b"]);
    c.apply_yaml(&node("spare-d", ""));
    assert_eq!(wait_for(T, "spare-d's range", || cidr("spare-d")).0, "10.245.1.0/24");

    // phase: a range never changes, and a bad one is refused by name
    let file = c.dir.path().join("moved-node.yaml");
    let both = "apiVersion: v1\nkind: Node\nmetadata: {name: spare-a}\nspec: {podCIDR: 10.245.9.0/24, podCIDRs: [10.245.9.0/24]}\n";
    std::fs::write(&file, both).unwrap();
    let moved = c.ctl(&["apply", "-f", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&moved.stderr);
    assert!(!moved.status.success() && err.contains("node updates may not change podCIDR"), "{err}");
    assert_eq!(cidr("spare-a").unwrap().0, "10.245.2.0/24");
    let file = c.dir.path().join("bad-node.yaml");
    std::fs::write(&file, node("spare-e", "10.245.300.0/24")).unwrap();
    let bad = c.ctl(&["apply", "-f", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("spec.podCIDRs[0]") && err.contains("10.245.300.0/24"), "{err}");
    assert!(c.get_json("nodes", "spare-e").is_none(), "a refused Node is not stored");
    for n in ["spare-a", "spare-c", "spare-d"] {
        c.ctl_ok(&["delete", "node", n]);
    }
}

/// The replicas an autoscaler's target has, from `get deployment -o json`.
fn replicas(c: &Cluster, deployment: &str) -> i64 {
    let d: Value = serde_json::from_str(&c.ctl_ok(&["get", "deployment", deployment, "-o", "json"])).unwrap();
    d["spec"]["replicas"].as_i64().unwrap_or(-1)
}

#[test]
fn an_autoscaler_scales_a_cpu_burning_deployment_up_and_back_down_after_its_window() {
    let c = Cluster::with_nodes(3, 1, &[]);
    // The pods burn cpu (capped at 100m by their limit, 5× their 20m request) until a file
    // appears in a host directory they share.
    let control = c.dir.path().join("load");
    std::fs::create_dir_all(&control).unwrap();
    c.apply_yaml(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burn}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burn}}}}
  template:
    metadata: {{labels: {{app: burn}}}}
    spec:
      terminationGracePeriodSeconds: 0
      volumes: [{{name: control, hostPath: {{path: "{}"}}}}]
      containers:
      - name: burn
        image: busybox:test
        command: [sh, -c, 'while [ ! -e /control/stop ]; do :; done; exec sleep 3600']
        resources: {{requests: {{cpu: 20m}}, limits: {{cpu: 100m}}}}
        volumeMounts: [{{name: control, mountPath: /control}}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: burn}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: burn}}
  minReplicas: 1
  maxReplicas: 3
  metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}}}]
  behavior:
    scaleDown: {{stabilizationWindowSeconds: 20}}
"#,
        control.display()
    ));
    // Defaults filled in as Kubernetes fills them.
    let hpa: Value = serde_json::from_str(&c.ctl_ok(&["get", "hpa", "burn", "-o", "json"])).unwrap();
    assert_eq!(hpa["spec"]["behavior"]["scaleUp"]["policies"][0]["type"], "Pods", "{hpa}");
    assert_eq!(hpa["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Max", "{hpa}");

    // phase: the load is far above 50% of the request: up to the maximum of 3
    wait_for_showing(
        Duration::from_secs(120),
        "the autoscaler to scale the deployment to 3",
        || c.ctl_ok(&["get", "hpa", "burn", "-o", "yaml"]),
        || (replicas(&c, "burn") == 3).then_some(()),
    );
    let table = c.ctl_ok(&["get", "hpa"]);
    assert!(table.contains("REFERENCE") && table.contains("Deployment/burn"), "{table}");
    assert!(table.contains("/50%") && table.contains("cpu: "), "{table}");
    let events = c.ctl_ok(&["get", "events"]);
    assert!(
        events.contains("New size: 3; reason: cpu resource utilization (percentage of request) above target"),
        "{events}"
    );
    let hpa: Value = serde_json::from_str(&c.ctl_ok(&["get", "hpa", "burn", "-o", "json"])).unwrap();
    let measured = &hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"];
    assert!(measured.as_i64().is_some_and(|u| u > 50), "{hpa}");
    let limited = hpa["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ScalingLimited");
    assert_eq!(limited.map(|c| c["reason"].clone()), Some("TooManyReplicas".into()), "{hpa}");

    // phase: the load stops; once the 20 s window has passed without a higher
    // recommendation, back down to the minimum
    std::fs::write(control.join("stop"), "").unwrap();
    wait_for_showing(
        Duration::from_secs(150),
        "the autoscaler to scale the deployment back to 1",
        || c.ctl_ok(&["get", "hpa", "burn", "-o", "yaml"]),
        || (replicas(&c, "burn") == 1).then_some(()),
    );
    let events = c.ctl_ok(&["get", "events"]);
    assert!(events.contains("New size: 1; reason: All metrics below target"), "{events}");
}

const RUNTIME_CLASSES: &str = r#"
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: standard}
handler: runc
overhead: {podFixed: {cpu: 100m, memory: 16Mi}}
scheduling:
  nodeSelector: {sandbox: runc}
  tolerations: [{key: sandboxed, operator: Exists, effect: NoSchedule}]
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: kata}
handler: kata
scheduling:
  tolerations: [{key: sandboxed, operator: Exists, effect: NoSchedule}]
"#;

fn runtime_pod(name: &str, class: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  runtimeClassName: {class}\n  \
         terminationGracePeriodSeconds: 0\n  containers: [{{name: c, image: busybox:test, command: [sleep, '3600']}}]\n"
    )
}

#[test]
fn runtime_classes_add_overhead_and_placement_and_other_runtimes_are_reported() {
    let c = Cluster::with_nodes(1, 1, &[]);
    let node = c.nodes()[0].0.clone();
    c.ctl_ok(&["label", "node", &node, "sandbox=runc"]);
    c.ctl_ok(&["taint", "node", &node, "sandboxed=yes:NoSchedule"]);
    c.apply_yaml(RUNTIME_CLASSES);
    // A class that does not exist refuses the pod, as Kubernetes' admission does.
    let file = c.dir.path().join("missing.yaml");
    std::fs::write(&file, runtime_pod("nowhere", "gvisor")).unwrap();
    let out = c.ctl(&["apply", "-f", file.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("pod rejected: RuntimeClass \"gvisor\" not found"), "{said}");
    assert!(c.get_json("pods", "nowhere").is_none());

    // The class's overhead and placement are the pod's: it runs on the tainted, labelled node.
    c.apply_yaml(&runtime_pod("runs", "standard"));
    let pod = wait_for(T, "the pod of class `standard` running", || {
        c.get_json("pods", "runs").filter(|p| p["status"]["phase"] == "Running")
    });
    assert_eq!(pod["spec"]["overhead"], serde_json::json!({"cpu": "100m", "memory": "16Mi"}), "{pod}");
    assert_eq!(pod["spec"]["nodeSelector"]["sandbox"], "runc", "{pod}");
    let tolerations = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    assert!(tolerations.iter().any(|t| t["key"] == "sandboxed"), "{pod}");

    // A handler this node does not have: no sandbox, and the kubelet's event says why.
    c.apply_yaml(&runtime_pod("elsewhere", "kata"));
    wait_for(T, "a FailedCreatePodSandBox event for the kata pod", || {
        let events = c.ctl_ok(&["get", "events", "--field-selector", "involvedObject.name=elsewhere"]);
        events.contains("FailedCreatePodSandBox").then_some(())
    });
    let events = c.ctl_ok(&["get", "events", "--field-selector", "involvedObject.name=elsewhere"]);
    assert!(events.contains("no runtime for \"kata\" is configured"), "{events}");
    let pod = c.get_json("pods", "elsewhere").unwrap();
    assert_eq!(pod["status"]["phase"], "Pending", "{pod}");
    assert!(pod["status"]["podIP"].is_null(), "no sandbox, no address: {pod}");
}
