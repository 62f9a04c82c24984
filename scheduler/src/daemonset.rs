//! The DaemonSet controller: one pod on every node its template fits (nodeSelector, required
//! node affinity, taints), created already bound to the node, on nodes as they join, removed
//! from nodes that stop matching; a changed template is rolled out one node at a time
//! (RollingUpdate with maxUnavailable 1: a pod of the old template is deleted only while every
//! other daemon pod is ready).
//!
//! `plan` is pure: DaemonSet, nodes and the namespace's pods in, pods to create and delete and
//! the status out.

use crate::deployment::template_hash;
use crate::objects::json::{controller_uid, ready, terminating};
use crate::placement::daemon_fits;
use crate::snapshot::NodeInfo;
use serde_json::{json, Value};
use skiff_proto::api::{Node, Pod};
use std::collections::BTreeMap;

pub const HASH_LABEL: &str = "controller-revision-hash";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Value>,
    /// Pod names to delete.
    pub delete: Vec<String>,
    pub status: Value,
}

fn name(v: &Value) -> String {
    v["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

pub fn plan(ds: &Value, nodes: &[Node], pods: &[Value]) -> Plan {
    let uid = ds["metadata"]["uid"].as_str().unwrap_or_default();
    let template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    let as_pod: Pod = serde_json::from_value(json!({"spec": template["spec"]})).unwrap_or_default();
    let mut p = Plan::default();
    let mut by_node: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut stopping = 0;
    for pod in pods.iter().filter(|p| controller_uid(p) == Some(uid)) {
        if terminating(pod) {
            stopping += 1;
            continue;
        }
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default().to_string();
        by_node.entry(node).or_default().push(pod);
    }
    let eligible: Vec<String> = nodes
        .iter()
        .filter(|n| {
            let info = NodeInfo {
                node: (*n).clone(),
                allocatable: Default::default(),
                requested: Default::default(),
                host_ports: Default::default(),
                owners: Default::default(),
            };
            daemon_fits(&as_pod, &info)
        })
        .map(|n| n.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default())
        .collect();
    // Pods on nodes that are gone or no longer eligible, and duplicates.
    let mut misscheduled = 0;
    for (node, list) in &by_node {
        if !eligible.contains(node) {
            misscheduled += list.len();
            p.delete.extend(list.iter().map(|p| name(p)));
        } else if list.len() > 1 {
            let mut extra: Vec<&&Value> = list.iter().collect();
            extra.sort_by_key(|p| (p["metadata"]["labels"][HASH_LABEL] == hash.as_str(), ready(p)));
            p.delete.extend(extra[..extra.len() - 1].iter().map(|p| name(p)));
        }
    }
    let ds_name = ds["metadata"]["name"].as_str().unwrap_or("ds");
    for node in &eligible {
        if by_node.get(node).is_none_or(|l| l.is_empty()) {
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template["spec"]});
            pod["metadata"]["generateName"] = json!(format!("{ds_name}-"));
            pod["metadata"]["namespace"] = ds["metadata"]["namespace"].clone();
            pod["metadata"]["labels"][HASH_LABEL] = json!(hash);
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": ds_name,
                "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
            pod["spec"]["nodeName"] = json!(node);
            if let Some(m) = pod["metadata"].as_object_mut() {
                m.remove("name");
            }
            p.create.push(pod);
        }
    }
    // Rolling update, one node at a time: only while nothing else is down or on its way out.
    let current: Vec<&Value> =
        eligible.iter().filter_map(|n| by_node.get(n).and_then(|l| l.first().copied())).collect();
    let outdated: Vec<&&Value> =
        current.iter().filter(|p| p["metadata"]["labels"][HASH_LABEL] != hash.as_str()).collect();
    let all_ready = current.len() == eligible.len() && current.iter().all(|p| ready(p));
    let on_demand = ds.pointer("/spec/updateStrategy/type").and_then(Value::as_str) == Some("OnDelete");
    if !on_demand && all_ready && stopping == 0 && p.delete.is_empty() {
        if let Some(pod) = outdated.first() {
            p.delete.push(name(pod));
        }
    }
    let updated = current.iter().filter(|p| p["metadata"]["labels"][HASH_LABEL] == hash.as_str()).count();
    let ready_n = current.iter().filter(|p| ready(p)).count();
    p.status = json!({
        "desiredNumberScheduled": eligible.len(),
        "currentNumberScheduled": current.len(),
        "numberMisscheduled": misscheduled,
        "numberReady": ready_n,
        "numberAvailable": ready_n,
        "numberUnavailable": eligible.len().saturating_sub(ready_n),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
            .unwrap()
    }

    fn ds(selector: Value, image: &str) -> Value {
        json!({"metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-uid"},
               "spec": {"selector": {"matchLabels": {"app": "agent"}},
                        "template": {"metadata": {"labels": {"app": "agent"}},
                                     "spec": {"nodeSelector": selector, "containers": [{"name": "c", "image": image}]}}}})
    }

    fn pod_on(d: &Value, node: &str, n: usize, is_ready: bool) -> Value {
        let hash = template_hash(&d["spec"]["template"]);
        json!({"metadata": {"name": format!("agent-{n}"), "labels": {"app": "agent", HASH_LABEL: hash},
                            "ownerReferences": [{"uid": "ds-uid", "controller": true}]},
               "spec": {"nodeName": node},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn one_pod_per_matching_node_bound_to_it() {
        let nodes = [
            node("a", json!({"disk": "ssd"}), json!([])),
            node("b", json!({"disk": "hdd"}), json!([])),
            node("c", json!({"disk": "ssd"}), json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}])),
        ];
        let p = plan(&ds(json!({"disk": "ssd"}), "x"), &nodes, &[]);
        let targets: Vec<&str> = p.create.iter().map(|p| p["spec"]["nodeName"].as_str().unwrap()).collect();
        assert_eq!(targets, ["a"], "b does not match, c's taint is not tolerated");
        assert_eq!(p.status["desiredNumberScheduled"], 1);
        assert_eq!(p.create[0]["metadata"]["generateName"], "agent-");
    }

    #[test]
    fn pods_leave_nodes_that_stop_matching_and_new_nodes_get_one() {
        let d = ds(json!({}), "x");
        let nodes = [node("a", json!({}), json!([])), node("new", json!({}), json!([]))];
        let pods = [pod_on(&d, "a", 0, true), pod_on(&d, "gone", 1, true)];
        let p = plan(&d, &nodes, &pods);
        assert_eq!(p.delete, ["agent-1"]);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0]["spec"]["nodeName"], "new");
    }

    #[test]
    fn a_new_template_rolls_one_node_at_a_time() {
        let old = ds(json!({}), "v1");
        let new = ds(json!({}), "v2");
        let nodes = [node("a", json!({}), json!([])), node("b", json!({}), json!([]))];
        let p = plan(&new, &nodes, &[pod_on(&old, "a", 0, true), pod_on(&old, "b", 1, true)]);
        assert_eq!(p.delete.len(), 1, "one node at a time: {:?}", p.delete);
        // While a replacement is not ready, nothing else goes.
        let p = plan(&new, &nodes, &[pod_on(&new, "a", 2, false), pod_on(&old, "b", 1, true)]);
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert_eq!(p.status["updatedNumberScheduled"], 1);
    }
}
