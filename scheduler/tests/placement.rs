//! Table tests of scheduling decisions, with Kubernetes' documentation cases. No cluster.

use serde_json::{json, Value};
use skiff_proto::api::{Node, Pod};
use skiff_scheduler::placement::needs_scheduling;
use skiff_scheduler::{schedule, Snapshot};

fn node(name: &str, extra: Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    });
    merge(&mut n, &extra);
    serde_json::from_value(n).unwrap()
}

fn pod(name: &str, extra: Value) -> Pod {
    let mut p = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "x",
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}});
    merge(&mut p, &extra);
    serde_json::from_value(p).unwrap()
}

fn merge(t: &mut Value, e: &Value) {
    match (t, e) {
        (Value::Object(t), Value::Object(e)) => {
            e.iter().for_each(|(k, v)| merge(t.entry(k.clone()).or_insert(Value::Null), v))
        }
        (t, e) => *t = e.clone(),
    }
}

fn place(p: &Pod, nodes: &[Node], bound: &[Pod]) -> Result<String, String> {
    schedule(p, &Snapshot::new(nodes, bound)).map_err(|e| e.to_string())
}

#[test]
fn node_selector_disktype_ssd() {
    let nodes = [node("a", json!({})), node("b", json!({"metadata": {"labels": {"disktype": "ssd"}}}))];
    let p = pod("nginx", json!({"spec": {"nodeSelector": {"disktype": "ssd"}}}));
    assert_eq!(place(&p, &nodes, &[]), Ok("b".into()));
    assert_eq!(
        place(&p, &nodes[..1], &[]),
        Err("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.".into())
    );
}

#[test]
fn required_and_preferred_node_affinity() {
    let nodes = [
        node("n1", json!({"metadata": {"labels": {"gpu": "nvidia-tesla"}}})),
        node("n2", json!({"metadata": {"labels": {"gpu": "yes"}}})),
        node("n3", json!({})),
    ];
    let p = pod(
        "with-affinity",
        json!({"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["nvidia-tesla"]}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["yes"]}]}}]
        }}}}),
    );
    assert_eq!(place(&p, &nodes, &[]), Ok("n1".into()), "required wins over preferred");
    // Preferred alone steers among feasible nodes.
    let preferred = pod(
        "pref",
        json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution":
        [{"weight": 50, "preference": {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["yes"]}]}}]}}}}),
    );
    assert_eq!(place(&preferred, &nodes, &[]), Ok("n2".into()));
}

#[test]
fn affinity_operators() {
    let nodes = [
        node("small", json!({"metadata": {"labels": {"cores": "4", "zone": "a"}}})),
        node("big", json!({"metadata": {"labels": {"cores": "64"}}})),
    ];
    let with = |op: &str, key: &str, values: Value| {
        pod(
            "p",
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]}}}}}),
        )
    };
    assert_eq!(place(&with("Gt", "cores", json!(["8"])), &nodes, &[]), Ok("big".into()));
    assert_eq!(place(&with("Lt", "cores", json!(["8"])), &nodes, &[]), Ok("small".into()));
    assert_eq!(place(&with("NotIn", "zone", json!(["a"])), &nodes, &[]), Ok("big".into()));
    assert_eq!(place(&with("Exists", "zone", json!([])), &nodes, &[]), Ok("small".into()));
    assert_eq!(place(&with("DoesNotExist", "zone", json!([])), &nodes, &[]), Ok("big".into()));
    assert!(place(&with("In", "zone", json!(["b"])), &nodes, &[]).is_err());
}

#[test]
fn taints_and_tolerations() {
    let tainted =
        |n: &str| node(n, json!({"spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}}));
    let nodes = [tainted("a"), tainted("b"), tainted("c")];
    let plain = pod("p", json!({}));
    assert_eq!(
        place(&plain, &nodes, &[]),
        Err("0/3 nodes are available: 3 node(s) had untolerated taint {gpu: yes}.".into())
    );
    let tolerant = pod(
        "t",
        json!({"spec": {"tolerations": [{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}]}}),
    );
    assert_eq!(place(&tolerant, &nodes, &[]), Ok("a".into()));
    let exists = pod("e", json!({"spec": {"tolerations": [{"operator": "Exists"}]}}));
    assert!(place(&exists, &nodes, &[]).is_ok(), "an empty key with Exists tolerates everything");
    let wrong_value = pod("w", json!({"spec": {"tolerations": [{"key": "gpu", "operator": "Equal", "value": "no"}]}}));
    assert!(place(&wrong_value, &nodes, &[]).is_err());
    // PreferNoSchedule only lowers the score.
    let soft = [
        node("a", json!({"spec": {"taints": [{"key": "slow", "value": "", "effect": "PreferNoSchedule"}]}})),
        node("b", json!({})),
    ];
    assert_eq!(place(&plain, &soft, &[]), Ok("b".into()));
}

#[test]
fn node_name_skips_the_scheduler_even_onto_a_tainted_node() {
    let p = pod("pinned", json!({"spec": {"nodeName": "tainted"}}));
    assert!(!needs_scheduling(&p));
    assert!(needs_scheduling(&pod("free", json!({}))));
}

#[test]
fn resources_count_bound_pods_and_the_message_counts_each_reason() {
    let nodes = [
        node("a", json!({"status": {"allocatable": {"cpu": "500m"}}})),
        node("b", json!({"spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}})),
        node("c", json!({"spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}})),
    ];
    let hog = pod(
        "hog",
        json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "400m"}}}]}}),
    );
    assert_eq!(place(&hog, &nodes, &[]), Ok("a".into()));
    let mut bound = hog.clone();
    bound.spec.as_mut().unwrap().node_name = "a".into();
    assert_eq!(
        place(&hog, &nodes, &[bound.clone()]),
        Err("0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {gpu: yes}.".into())
    );
    // A finished pod frees its resources.
    bound.status = Some(skiff_proto::api::PodStatus { phase: "Succeeded".into(), ..Default::default() });
    assert_eq!(place(&hog, &nodes, &[bound]), Ok("a".into()));
}

#[test]
fn not_ready_cordoned_and_host_ports() {
    let nodes = [
        node("down", json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
        node("cordoned", json!({"spec": {"unschedulable": true}})),
        node("ok", json!({})),
    ];
    let web = pod(
        "web",
        json!({"spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
    );
    assert_eq!(place(&web, &nodes, &[]), Ok("ok".into()));
    let mut running = web.clone();
    running.spec.as_mut().unwrap().node_name = "ok".into();
    assert_eq!(
        place(&web, &nodes, &[running]),
        Err("0/3 nodes are available: 1 node(s) didn't have free ports for the requested pod ports, 1 node(s) were not ready, 1 node(s) were unschedulable.".into())
    );
}

#[test]
fn scores_prefer_emptier_nodes_and_spread_an_owners_pods() {
    let nodes = [node("a", json!({})), node("b", json!({}))];
    let owned = |name: &str, node_name: &str| {
        pod(
            name,
            json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1"}]},
            "spec": {"nodeName": node_name}}),
        )
    };
    // One replica already on a: the next goes to b.
    assert_eq!(place(&owned("web-2", ""), &nodes, &[owned("web-1", "a")]), Ok("b".into()));
    // A big unrelated pod on b: an unowned pod prefers the emptier a.
    let big = pod(
        "big",
        json!({"spec": {"nodeName": "b", "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1500m", "memory": "3Gi"}}}]}}),
    );
    assert_eq!(place(&pod("p", json!({})), &nodes, &[big]), Ok("a".into()));
}

#[test]
fn large_clusters_score_a_share_of_their_nodes_as_kubernetes_does() {
    use skiff_scheduler::placement::feasible_to_find;
    assert_eq!(feasible_to_find(3), 3);
    assert_eq!(feasible_to_find(99), 99);
    assert_eq!(feasible_to_find(100), 100);
    assert_eq!(feasible_to_find(5000), 500);
    assert_eq!(feasible_to_find(20_000), 1000);
}

/// A web pod of the Kubernetes documentation's "co-located with a cache, one per node" example.
fn web(name: &str, node: &str) -> Pod {
    pod(
        name,
        json!({"metadata": {"namespace": "default", "uid": name, "labels": {"app": "web"}},
               "spec": {"nodeName": node, "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                   {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
    )
}

#[test]
fn required_pod_anti_affinity_spreads_one_per_node_and_leaves_the_rest_pending() {
    let nodes = [node("a", json!({})), node("b", json!({})), node("c", json!({}))];
    let mut bound = Vec::new();
    for i in 1..=3 {
        let at = place(&web(&format!("web-{i}"), ""), &nodes, &bound).unwrap();
        assert!(bound.iter().all(|b: &Pod| b.spec.as_ref().unwrap().node_name != at), "web-{i} joined another on {at}");
        bound.push(web(&format!("web-{i}"), &at));
    }
    assert_eq!(
        place(&web("web-4", ""), &nodes, &bound),
        Err("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.".into())
    );
    // A pod without the term, but selected by the placed pods' terms, is kept off them too.
    let plain = pod("plain", json!({"metadata": {"namespace": "default", "labels": {"app": "web"}}}));
    assert_eq!(
        place(&plain, &nodes, &bound),
        Err("0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules.".into())
    );
    // Another namespace is out of the terms' reach.
    let elsewhere = pod("plain", json!({"metadata": {"namespace": "other", "labels": {"app": "web"}}}));
    assert!(place(&elsewhere, &nodes, &bound).is_ok());
}

#[test]
fn required_pod_affinity_follows_its_group_by_zone_and_the_first_of_a_group_goes_anywhere() {
    let zone = |name: &str, z: &str| node(name, json!({"metadata": {"labels": {"zone": z}}}));
    let nodes = [zone("a", "z1"), zone("b", "z2"), zone("c", "z2")];
    let cache = pod(
        "cache",
        json!({"metadata": {"namespace": "default", "uid": "c1", "labels": {"app": "cache"}}, "spec": {"nodeName": "c"}}),
    );
    let with_cache = json!({"metadata": {"namespace": "default"}, "spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["cache"]}]}, "topologyKey": "zone"}]}}}});
    let p = pod("web", with_cache.clone());
    // z2 holds the cache: b or c, never a.
    let at = place(&p, &nodes, std::slice::from_ref(&cache)).unwrap();
    assert!(at == "b" || at == "c", "{at}");
    assert_eq!(
        place(&p, &nodes, &[]),
        Err("0/3 nodes are available: 3 node(s) didn't match pod affinity rules.".into())
    );
    // A pod its own term selects may start the group anywhere with the key.
    let mut first = with_cache;
    first["metadata"]["labels"] = json!({"app": "cache"});
    assert!(place(&pod("first", first), &nodes, &[]).is_ok());
}

#[test]
fn preferred_pod_anti_affinity_spreads_when_it_can() {
    let nodes = [node("a", json!({})), node("b", json!({}))];
    let spread = json!({"metadata": {"namespace": "default", "labels": {"app": "s"}}, "spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "s"}}, "topologyKey": "kubernetes.io/hostname"}}]}}}});
    let mut on_a = spread.clone();
    on_a["metadata"]["uid"] = json!("s1");
    on_a["spec"]["nodeName"] = json!("a");
    // Node a is emptier by far without it; the preference wins.
    let heavy = pod(
        "heavy",
        json!({"metadata": {"uid": "h"}, "spec": {"nodeName": "b", "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]}}),
    );
    assert_eq!(place(&pod("s2", spread), &nodes, &[pod("s1", on_a), heavy]), Ok("b".into()));
}

#[test]
fn topology_spread_keeps_the_skew_and_names_nodes_without_the_key() {
    let zone = |name: &str, z: &str| node(name, json!({"metadata": {"labels": {"zone": z}}}));
    let foo = |name: &str, at: &str| {
        pod(
            name,
            json!({"metadata": {"namespace": "default", "uid": name, "labels": {"foo": "bar"}}, "spec": {"nodeName": at}}),
        )
    };
    let spread = |when: &str| {
        pod(
            "new",
            json!({"metadata": {"namespace": "default", "labels": {"foo": "bar"}}, "spec": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"foo": "bar"}}}]}}),
        )
    };
    // Zone A holds 2, B 1: a pod in A would make the skew 2.
    let nodes = [zone("a1", "A"), zone("a2", "A"), zone("b1", "B"), zone("b2", "B")];
    let bound = [foo("p1", "a1"), foo("p2", "a2"), foo("p3", "b1")];
    let at = place(&spread("DoNotSchedule"), &nodes, &bound).unwrap();
    assert!(at == "b1" || at == "b2", "{at}");
    assert_eq!(
        place(&spread("DoNotSchedule"), &[node("bare", json!({}))], &[]),
        Err(
            "0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label)."
                .into()
        )
    );
    // With zone B's only node cordoned, zone A is still refused: B still counts its pod.
    let two = [zone("a1", "A"), zone("b1", "B")];
    let lopsided = [foo("p1", "a1"), foo("p2", "a1"), foo("p3", "b1")];
    assert_eq!(place(&spread("DoNotSchedule"), &two, &lopsided), Ok("b1".into()));
    let mut cordoned = two.clone();
    cordoned[1].spec = Some(serde_json::from_value(json!({"unschedulable": true})).unwrap());
    assert_eq!(
        place(&spread("DoNotSchedule"), &cordoned, &lopsided),
        Err("0/2 nodes are available: 1 node(s) didn't match pod topology spread constraints, 1 node(s) were unschedulable.".into())
    );
    // ScheduleAnyway only prefers: the emptier zone, but the fuller one is allowed.
    assert_eq!(place(&spread("ScheduleAnyway"), &two, &lopsided), Ok("b1".into()));
    assert_eq!(place(&spread("ScheduleAnyway"), &cordoned, &lopsided), Ok("a1".into()));
}
