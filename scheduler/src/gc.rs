//! The garbage collector: an object whose every owner (by `ownerReferences` uid) is gone is
//! deleted, as Kubernetes' collector does in the background. The API already cascades when an
//! owner is deleted through it; this catches what a cascade left behind (a master that died
//! mid-cascade) and objects created with owners that never existed.
//!
//! It also deletes pods bound to a node that no longer exists (Kubernetes' pod GC): nobody is
//! left to run or stop them.
//!
//! `dangling` and `orphaned_pods` are pure: the objects and what exists in, what to delete out.

use serde_json::Value;
use std::collections::HashSet;

/// (resource, namespace, name) of every object in `objects` whose owners are all absent from
/// `existing`. Objects without owners, or with an owner of a kind not in `kinds` (whose uids
/// `existing` cannot know), are never touched.
pub fn dangling(
    objects: &[(&str, &Value)],
    existing: &HashSet<String>,
    kinds: &[&str],
) -> Vec<(String, String, String)> {
    objects
        .iter()
        .filter(|(_, o)| o["metadata"]["deletionTimestamp"].is_null())
        .filter(|(_, o)| {
            o["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
                !refs.is_empty()
                    && refs.iter().all(|r| kinds.iter().any(|k| r["kind"] == *k))
                    && refs.iter().all(|r| !existing.contains(r["uid"].as_str().unwrap_or_default()))
            })
        })
        .map(|(res, o)| {
            (
                res.to_string(),
                o["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_objects_whose_owners_are_all_gone_are_collected() {
        let existing: HashSet<String> = ["rs-1".to_string()].into();
        let obj = |name: &str, owners: Value| {
            ("pods", json!({"metadata": {"name": name, "namespace": "default", "ownerReferences": owners}}))
        };
        let objects = [
            obj("owned", json!([{"kind": "ReplicaSet", "uid": "rs-1"}])),
            obj("orphaned", json!([{"kind": "ReplicaSet", "uid": "gone"}])),
            obj("half", json!([{"kind": "ReplicaSet", "uid": "gone"}, {"kind": "ReplicaSet", "uid": "rs-1"}])),
            obj("unknown-owner-kind", json!([{"kind": "ConfigMap", "uid": "cm-1"}])),
            obj("free", Value::Null),
        ];
        let objects: Vec<(&str, &Value)> = objects.iter().map(|(r, o)| (*r, o)).collect();
        let got = dangling(&objects, &existing, &["ReplicaSet"]);
        assert_eq!(got, [("pods".to_string(), "default".to_string(), "orphaned".to_string())]);
    }
}

/// (namespace, name, node) of pods bound to a node absent from `nodes`.
pub fn orphaned_pods<'a>(
    pods: impl IntoIterator<Item = &'a Value>,
    nodes: &HashSet<String>,
) -> Vec<(String, String, String)> {
    pods.into_iter()
        .filter(|p| {
            let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
            !node.is_empty() && !nodes.contains(node)
        })
        .map(|p| {
            (
                p["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
                p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod pod_gc_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_on_deleted_nodes_are_collected_and_others_kept() {
        let pods = [
            json!({"metadata": {"name": "on-gone", "namespace": "a"}, "spec": {"nodeName": "n2"}}),
            json!({"metadata": {"name": "on-live", "namespace": "a"}, "spec": {"nodeName": "n1"}}),
            json!({"metadata": {"name": "pending", "namespace": "a"}, "spec": {}}),
        ];
        let nodes: HashSet<String> = ["n1".to_string()].into();
        assert_eq!(orphaned_pods(&pods, &nodes), [("a".to_string(), "on-gone".to_string(), "n2".to_string())]);
    }
}
