//! The scheduler on the raft leader, against registered (fake) nodes: placement, the
//! Unschedulable condition and event in Kubernetes' words, retry when a node gains the missing
//! label, and scheduling carrying on after the leader is SIGKILLed — its successor's first bind
//! within a second of its election.

use serde_json::{json, Value};
use skiff_proto::api::objects_client::ObjectsClient;
use skiff_proto::api::{RawListRequest, RawRequest};
use skiff_tests::{bearer, channel, runtime, wait_for, wait_for_showing, Cluster};
use std::time::{Duration, Instant};

#[test]
fn the_leader_schedules_reports_unschedulable_pods_and_retries_on_change() {
    let c = Cluster::up(3, &[]);
    let t = c.admin_token();
    let addrs: Vec<String> = c.masters.iter().map(|m| m.etcd.clone()).collect();
    let rt = runtime();
    let call = |addr: &str, verb: &str, resource: &str, body: Value, name: &str| -> Result<Value, tonic::Status> {
        rt.block_on(async {
            let mut o = ObjectsClient::with_interceptor(channel(addr).await.unwrap(), bearer(&t));
            let req = RawRequest {
                resource: resource.into(),
                name: name.into(),
                json: body.to_string(),
                ..Default::default()
            };
            let out = match verb {
                "create" => o.create(req).await?,
                "get" => o.get(req).await?,
                _ => o.update(req).await?,
            };
            Ok(serde_json::from_str(&out.into_inner().json).unwrap())
        })
    };
    let node = |name: &str, extra: Value| {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}});
        if let (Some(m), Some(e)) = (n.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        n
    };
    // phase: three nodes, one tainted
    wait_for(Duration::from_secs(30), "the API to accept nodes", || {
        call(&addrs[0], "create", "nodes", node("n1", json!({})), "").ok()
    });
    call(&addrs[1], "create", "nodes", node("n2", json!({})), "").unwrap();
    call(
        &addrs[2],
        "create",
        "nodes",
        node("n3", json!({"spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}})),
        "",
    )
    .unwrap();
    let pod = |name: &str, spec_extra: Value| {
        let mut spec =
            json!({"containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": {"cpu": "100m"}}}]});
        for (k, v) in spec_extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        json!({"metadata": {"name": name}, "spec": spec})
    };
    let node_of = |name: &str| -> Option<String> {
        let p = call(&addrs[1], "get", "pods", json!({}), name).ok()?;
        p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(String::from)
    };

    // phase: a plain pod lands on an untainted node
    call(&addrs[0], "create", "pods", pod("free", json!({})), "").unwrap();
    let placed = wait_for(Duration::from_secs(20), "pod free to be bound", || node_of("free"));
    assert!(placed == "n1" || placed == "n2", "{placed}");

    // phase: a pod that fits nowhere stays Pending with Kubernetes' message and an event
    call(&addrs[0], "create", "pods", pod("ssd", json!({"nodeSelector": {"disktype": "ssd"}})), "").unwrap();
    // One reason per node (the tainted one fails on its taint first), sorted as Kubernetes does.
    let want_sorted = "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: yes}, 2 node(s) didn't match Pod's node affinity/selector.";
    wait_for(Duration::from_secs(20), "PodScheduled=False on pod ssd", || {
        let p = call(&addrs[2], "get", "pods", json!({}), "ssd").ok()?;
        let cond = p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "PodScheduled")?.clone();
        (cond["status"] == "False" && cond["reason"] == "Unschedulable" && cond["message"] == want_sorted).then_some(())
    });
    let list_events = || {
        rt.block_on(async {
            let mut o = ObjectsClient::with_interceptor(channel(&addrs[0]).await.unwrap(), bearer(&t));
            let l = o
                .list(RawListRequest { resource: "events".into(), namespace: "default".into(), ..Default::default() })
                .await
                .unwrap();
            serde_json::from_str::<Value>(&l.into_inner().json).unwrap()
        })
    };
    let failed_of = |events: &Value| -> Vec<Value> {
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "FailedScheduling" && e["involvedObject"]["name"] == "ssd")
            .cloned()
            .collect()
    };
    // The event follows the condition: wait for it, then make sure there is only the one.
    wait_for(Duration::from_secs(20), "a FailedScheduling event for pod ssd", || {
        (!failed_of(&list_events()).is_empty()).then_some(())
    });
    let events = list_events();
    let failed = failed_of(&events);
    assert_eq!(failed.len(), 1, "one FailedScheduling event, not one per round: {events}");
    assert_eq!(failed[0]["message"], want_sorted);
    assert!(events["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "Scheduled" && e["involvedObject"]["name"] == "free"));

    // phase: labelling a node disktype=ssd schedules it there
    let mut n2 = call(&addrs[0], "get", "nodes", json!({}), "n2").unwrap();
    n2["metadata"]["labels"]["disktype"] = json!("ssd");
    call(&addrs[0], "update", "nodes", n2, "").unwrap();
    assert_eq!(wait_for(Duration::from_secs(20), "pod ssd to be bound after the label", || node_of("ssd")), "n2");

    // phase: a pod with scheduling gates waits and says why; gates may be removed, not added;
    // once they are all gone it is scheduled
    let gates = json!([{"name": "example.com/quota"}, {"name": "example.com/review"}]);
    call(&addrs[0], "create", "pods", pod("gated", json!({"schedulingGates": gates})), "").unwrap();
    let gated = call(&addrs[0], "get", "pods", json!({}), "gated").unwrap();
    let cond = gated["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "PodScheduled").cloned();
    assert_eq!(
        cond.as_ref().map(|c| (c["status"].clone(), c["reason"].clone(), c["message"].clone())),
        Some((
            json!("False"),
            json!("SchedulingGated"),
            json!("Scheduling is blocked due to non-empty scheduling gates")
        )),
        "{gated}"
    );
    let refused =
        call(&addrs[0], "create", "pods", pod("gated-bound", json!({"schedulingGates": gates, "nodeName": "n1"})), "")
            .unwrap_err();
    assert!(
        refused
            .message()
            .contains("spec.nodeName: Forbidden: cannot be set until all schedulingGates have been cleared"),
        "{refused:?}"
    );
    let mut more = gated.clone();
    more["spec"]["schedulingGates"].as_array_mut().unwrap().push(json!({"name": "example.com/more"}));
    let refused = call(&addrs[0], "update", "pods", more, "").unwrap_err();
    assert!(
        refused.message().contains("only deletion is allowed, but found new scheduling gate 'example.com/more'"),
        "{refused:?}"
    );
    // A pod created after it is bound while it still waits.
    call(&addrs[0], "create", "pods", pod("ungated", json!({})), "").unwrap();
    wait_for(Duration::from_secs(20), "pod ungated to be bound", || node_of("ungated"));
    assert_eq!(node_of("gated"), None, "a gated pod is not scheduled");
    let mut one_left = call(&addrs[0], "get", "pods", json!({}), "gated").unwrap();
    one_left["spec"]["schedulingGates"] = json!([{"name": "example.com/review"}]);
    call(&addrs[0], "update", "pods", one_left, "").unwrap();
    let mut none_left = call(&addrs[0], "get", "pods", json!({}), "gated").unwrap();
    none_left["spec"]["schedulingGates"] = json!([]);
    call(&addrs[0], "update", "pods", none_left, "").unwrap();
    wait_for(Duration::from_secs(20), "pod gated to be bound once its gates are gone", || node_of("gated"));

    // phase: a pod waits for a label no node has; the leader has seen it
    call(&addrs[0], "create", "pods", pod("zoned", json!({"nodeSelector": {"zone": "b"}})), "").unwrap();
    wait_for(Duration::from_secs(20), "PodScheduled=False on pod zoned", || {
        let p = call(&addrs[0], "get", "pods", json!({}), "zoned").ok()?;
        let cond = p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "PodScheduled")?.clone();
        (cond["status"] == "False").then_some(())
    });

    // phase: the leader dies; the label goes on through a survivor as soon as a new leader is
    // elected, and the new leader's scheduler binds the waiting pod within a second of its
    // election (its informers are warm: nothing is listed first)
    let all: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    let leader = c.wait_leader(&all, Duration::from_secs(10));
    c.kill(leader);
    let survivors: Vec<u64> = all.iter().copied().filter(|&id| id != leader).collect();
    let survivor = c.master(survivors[0]).etcd.clone();
    // The election is polled every 10 ms and the bind every 100 ms: the figure errs long.
    let deadline = Instant::now() + Duration::from_secs(15);
    let elected = loop {
        let leaders: Vec<u64> = survivors
            .iter()
            .map(|id| rt.block_on(skiff_tests::status(&c.master(*id).etcd)).map_or(0, |s| s.leader))
            .collect();
        if leaders[0] != 0 && leaders[0] != leader && leaders.iter().all(|l| *l == leaders[0]) {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "no new leader among {survivors:?} within 15 s (they say {leaders:?})");
        std::thread::sleep(Duration::from_millis(10));
    };
    wait_for(Duration::from_secs(10), "label zone=b on node n1 through a survivor", || {
        let mut n1 = call(&survivor, "get", "nodes", json!({}), "n1").ok()?;
        n1["metadata"]["labels"]["zone"] = json!("b");
        call(&survivor, "update", "nodes", n1, "").ok()
    });
    let labelled = elected.elapsed();
    let bound = wait_for(Duration::from_secs(10), "pod zoned bound by the new leader", || {
        let p = call(&survivor, "get", "pods", json!({}), "zoned").ok()?;
        p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(|n| (n.to_string(), elected.elapsed()))
    });
    eprintln!("after the election: label written in {labelled:?}, pod bound to {} in {:?}", bound.0, bound.1);
    assert_eq!(bound.0, "n1");
    assert!(bound.1 <= Duration::from_secs(1), "the new leader's first bind came {:?} after its election", bound.1);
    wait_for(Duration::from_secs(30), "a create through a survivor", || {
        call(&survivor, "create", "pods", pod("after", json!({})), "")
            .ok()
            .or_else(|| node_of("after").map(|_| json!({})))
    });
    let placed = wait_for(Duration::from_secs(30), "pod after to be bound by the new leader", || {
        let p = call(&survivor, "get", "pods", json!({}), "after").ok()?;
        p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(String::from)
    });
    assert!(placed == "n1" || placed == "n2", "{placed}");
}

#[test]
fn a_replicaset_keeps_its_replicas_and_the_scheduler_binds_them() {
    let c = Cluster::up(3, &[]);
    let t = c.admin_token();
    let addr = c.masters[0].etcd.clone();
    let rt = runtime();
    let objects = || async { ObjectsClient::with_interceptor(channel(&addr).await.unwrap(), bearer(&t)) };
    let create = |resource: &str, body: Value| {
        rt.block_on(async {
            objects()
                .await
                .create(RawRequest { resource: resource.into(), json: body.to_string(), ..Default::default() })
                .await
        })
    };
    let list = |resource: &str| -> Vec<Value> {
        rt.block_on(async {
            let l = objects()
                .await
                .list(RawListRequest { resource: resource.into(), namespace: "default".into(), ..Default::default() })
                .await
                .unwrap();
            serde_json::from_str::<Value>(&l.into_inner().json).unwrap()["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
    };
    for n in ["n1", "n2"] {
        let node = json!({"metadata": {"name": n}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}});
        wait_for(Duration::from_secs(30), "the API to accept nodes", || create("nodes", node.clone()).ok());
    }
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
    let created: Value = serde_json::from_str(&create("replicasets", rs).unwrap().into_inner().json).unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let active = || -> Vec<Value> {
        list("pods")
            .into_iter()
            .filter(|p| {
                p["metadata"]["deletionTimestamp"].is_null()
                    && p["metadata"]["ownerReferences"][0]["uid"] == uid.as_str()
            })
            .collect()
    };

    // phase: three pods, named <rs>-<suffix>, owned by the ReplicaSet, bound by the scheduler
    let pods = wait_for(Duration::from_secs(30), "3 bound replicas", || {
        let pods = active();
        (pods.len() == 3 && pods.iter().all(|p| p["spec"]["nodeName"].is_string())).then_some(pods)
    });
    for p in &pods {
        let name = p["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web-") && name.len() == "web-".len() + 5, "{name}");
    }
    wait_for(Duration::from_secs(20), "status.replicas = 3", || {
        let rs = list("replicasets").into_iter().next()?;
        (rs["status"]["replicas"] == 3).then_some(())
    });
    // Steady state: nothing new appears while the replicas' own status and bind events queue
    // the ReplicaSet again (each reconciled within milliseconds). A negative check needs a span
    // of time; the bound is the reconciles it covers, not a race being waited out.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(active().len(), 3, "no duplicate replicas");

    // phase: scale to 1 — two are deleted (they stay Terminating until a node finishes them)
    let mut current = list("replicasets").into_iter().next().unwrap();
    current["spec"]["replicas"] = json!(1);
    rt.block_on(async {
        objects()
            .await
            .update(RawRequest { resource: "replicasets".into(), json: current.to_string(), ..Default::default() })
            .await
    })
    .unwrap();
    wait_for(Duration::from_secs(20), "one active replica", || (active().len() == 1).then_some(()));

    // phase: deleting the ReplicaSet deletes its pods
    rt.block_on(async {
        objects()
            .await
            .delete(RawRequest {
                resource: "replicasets".into(),
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            })
            .await
    })
    .unwrap();
    wait_for(Duration::from_secs(20), "no active pods of the deleted ReplicaSet", || active().is_empty().then_some(()));
}

/// A registered (fake) node named `name`, Ready, with its hostname and `zone` labels.
fn fake_node(name: &str, zone: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}, zone: {zone}}}}}\n\
         status: {{allocatable: {{cpu: '4', memory: 8Gi, pods: '110'}}, conditions: [{{type: Ready, status: 'True'}}]}}\n"
    )
}

#[test]
fn pod_anti_affinity_spreads_a_deployment_pod_affinity_waits_for_its_group_and_zones_balance() {
    let c = Cluster::up(1, &[]);
    for (n, zone) in [("n1", "z1"), ("n2", "z1"), ("n3", "z2")] {
        c.apply_yaml(&fake_node(n, zone));
    }
    // phase: one replica per node; the fourth is unschedulable in Kubernetes' words
    c.apply_yaml(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: spread}\nspec:\n  replicas: 4\n  selector: {matchLabels: {app: spread}}\n  template:\n    metadata: {labels: {app: spread}}\n    spec:\n      containers: [{name: c, image: busybox:test}]\n      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          - {labelSelector: {matchLabels: {app: spread}}, topologyKey: kubernetes.io/hostname}\n",
    );
    let pods = || -> Vec<Value> {
        let list: Value = serde_json::from_str(&c.ctl_ok(&["get", "pods", "-l", "app=spread", "-o", "json"])).unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    };
    let (bound, pending) = wait_for(Duration::from_secs(30), "3 pods bound and 1 reported unschedulable", || {
        let all = pods();
        let bound: Vec<String> = all.iter().filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from)).collect();
        let pending: Vec<Value> = all.into_iter().filter(|p| p["spec"]["nodeName"].is_null()).collect();
        let reported = pending.iter().all(|p| p["status"]["conditions"][0]["reason"] == "Unschedulable");
        (bound.len() == 3 && pending.len() == 1 && reported).then_some((bound, pending))
    });
    let mut nodes = bound.clone();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"], "one replica per node");
    assert_eq!(
        pending[0]["status"]["conditions"][0]["message"],
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );

    // phase: a pod whose required affinity names a group with no pod yet waits, and follows
    // the first pod of the group into its zone
    c.apply_yaml(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: near-cache}\nspec:\n  containers: [{name: c, image: busybox:test}]\n  affinity:\n    podAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - {labelSelector: {matchLabels: {app: cache}}, topologyKey: zone}\n",
    );
    let waiting = wait_for(Duration::from_secs(30), "near-cache reported unschedulable", || {
        let p = c.get_json("pods", "near-cache")?;
        (p["status"]["conditions"][0]["reason"] == "Unschedulable").then_some(p)
    });
    assert_eq!(
        waiting["status"]["conditions"][0]["message"],
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules."
    );
    c.apply_yaml("apiVersion: v1\nkind: Pod\nmetadata: {name: cache, labels: {app: cache}}\nspec:\n  nodeName: n3\n  containers: [{name: c, image: busybox:test}]\n");
    let placed = wait_for(Duration::from_secs(30), "near-cache bound once the cache is placed", || {
        c.get_json("pods", "near-cache")?["spec"]["nodeName"].as_str().map(String::from)
    });
    assert_eq!(placed, "n3", "the only node in the cache's zone");

    // phase: topology spread with maxSkew 1 over zones of two nodes and one: two pods each
    c.apply_yaml(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: zonal}\nspec:\n  replicas: 4\n  selector: {matchLabels: {app: zonal}}\n  template:\n    metadata: {labels: {app: zonal}}\n    spec:\n      containers: [{name: c, image: busybox:test}]\n      topologySpreadConstraints:\n      - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: zonal}}}\n",
    );
    let zones = wait_for(Duration::from_secs(30), "4 zonal pods bound", || {
        let list: Value = serde_json::from_str(&c.ctl_ok(&["get", "pods", "-l", "app=zonal", "-o", "json"])).unwrap();
        let nodes: Vec<String> =
            list["items"].as_array()?.iter().filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from)).collect();
        (nodes.len() == 4).then_some(nodes)
    });
    let in_z2 = zones.iter().filter(|n| *n == "n3").count();
    assert_eq!(in_z2, 2, "zone z2 (n3 alone) takes half: {zones:?}");

    // phase: a high-priority pod preempts a low-priority one on a full node
    c.apply_yaml(&fake_node("full", "z9").replace("cpu: '4'", "cpu: '1'"));
    c.apply_yaml(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: low}\nvalue: 10\n---\n\
         apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n",
    );
    let on_full = |name: &str, class: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  priorityClassName: {class}\n  \
             terminationGracePeriodSeconds: 0\n  nodeSelector: {{kubernetes.io/hostname: full}}\n  \
             containers: [{{name: c, image: busybox:test, resources: {{requests: {{cpu: '1'}}}}}}]\n"
        )
    };
    c.apply_yaml(&on_full("low", "low"));
    let low = wait_for(Duration::from_secs(30), "the low-priority pod bound to the full node", || {
        let p = c.get_json("pods", "low")?;
        (p["spec"]["nodeName"] == "full").then_some(p)
    });
    c.apply_yaml(&on_full("high", "high"));
    wait_for(Duration::from_secs(30), "the low-priority pod marked for deletion, high nominated", || {
        let going = c.get_json("pods", "low")?["metadata"]["deletionTimestamp"].is_string();
        let nominated = c.get_json("pods", "high")?["status"]["nominatedNodeName"] == "full";
        (going && nominated).then_some(())
    });
    // The node is not a daemon: finish the deletion as its daemon would once the pod stopped.
    c.ctl_ok(&["delete", "pod", "low", "--grace-period=0", "--force"]);
    let seen = || format!("high: {:?}\nlow: {:?}", c.get_json("pods", "high"), c.get_json("pods", "low"));
    let high =
        wait_for_showing(Duration::from_secs(30), "the high-priority pod bound where the low one was", seen, || {
            let p = c.get_json("pods", "high")?;
            (p["spec"]["nodeName"] == "full").then_some(p)
        });
    assert_eq!(high["status"]["nominatedNodeName"], "full", "{high}");
    let low_now = c.get_json("pods", "low");
    assert!(
        low_now.as_ref().is_none_or(|p| p["metadata"]["uid"] != low["metadata"]["uid"]),
        "the low-priority pod is still there: {low_now:?}"
    );
    let events = c.ctl_ok(&["get", "events", "--field-selector", "reason=Preempted", "-o", "json"]);
    let events: Value = serde_json::from_str(&events).unwrap();
    let said: Vec<&str> =
        events["items"].as_array().into_iter().flatten().filter_map(|e| e["message"].as_str()).collect();
    let want = format!("Preempted by pod {} on node full", high["metadata"]["uid"].as_str().unwrap());
    assert_eq!(said, [want.as_str()], "{events}");
}
