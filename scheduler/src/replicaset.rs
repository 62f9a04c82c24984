//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector.
//!
//! `plan` is pure (DESIGN.md rule 6): from the ReplicaSet and the namespace's pods it returns
//! what to create, delete, adopt and release, and the status to report. The runner executes it
//! and lets the next round see the result — level-triggered, so a missed round, a restarted
//! leader or a lost watch changes nothing in the outcome.

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The smallest change that moves the pods toward the ReplicaSet's spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Pods to create (full objects; the API fills the generated name suffix).
    pub create: Vec<Value>,
    /// Names of pods to delete, least valuable first.
    pub delete: Vec<String>,
    /// Orphans matching the selector, to take ownership of (name → pod with the new owner).
    pub adopt: Vec<Value>,
    /// Owned pods whose labels no longer match, to release (pod without our owner reference).
    pub release: Vec<Value>,
    pub status: Value,
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

/// `matchLabels` and `matchExpressions` as Kubernetes evaluates them.
pub fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let eq = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str()));
    let exprs = selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> =
            e["values"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        match e["operator"].as_str().unwrap_or_default() {
            "In" => labels.get(key).is_some_and(|v| values.contains(&v.as_str())),
            "NotIn" => labels.get(key).is_none_or(|v| !values.contains(&v.as_str())),
            "Exists" => labels.contains_key(key),
            "DoesNotExist" => !labels.contains_key(key),
            _ => false,
        }
    });
    eq && exprs
}

/// The uid of the object's controlling owner (the ownerReference with `controller: true`).
pub(crate) fn controller_uid(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller") == Some(&Value::Bool(true)))
        .and_then(|r| r.get("uid").and_then(Value::as_str))
}

/// Being deleted, or finished (Succeeded / Failed): no longer counts as a replica.
pub(crate) fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
        || matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

/// The pod's Ready condition is True.
pub(crate) fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The owner reference a ReplicaSet puts on its pods.
pub fn owner_ref(rs: &Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"],
           "uid": rs["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

/// What to do for `rs` given every pod of its namespace.
pub fn plan<'a>(rs: &Value, pods: impl IntoIterator<Item = &'a Value>) -> Plan {
    let uid = rs.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    let selector = rs.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
    let want = rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0) as usize;
    let mut p = Plan::default();
    let mut owned: Vec<&Value> = Vec::new();
    for pod in pods {
        let matches = selector_matches(&selector, &labels(pod));
        match controller_uid(pod) {
            Some(u) if u == uid => {
                if matches {
                    owned.push(pod);
                } else {
                    let mut released = pod.clone();
                    let refs: Vec<Value> = pod["metadata"]["ownerReferences"]
                        .as_array()
                        .map(|a| a.iter().filter(|r| r["uid"] != uid).cloned().collect())
                        .unwrap_or_default();
                    released["metadata"]["ownerReferences"] = Value::Array(refs);
                    p.release.push(released);
                }
            }
            None if matches && !terminating(pod) && rs.pointer("/metadata/deletionTimestamp").is_none() => {
                let mut adopted = pod.clone();
                let mut refs = pod["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
                refs.push(owner_ref(rs));
                adopted["metadata"]["ownerReferences"] = Value::Array(refs);
                p.adopt.push(adopted);
            }
            _ => {}
        }
    }
    let mut active: Vec<&Value> = owned.iter().copied().filter(|p| !terminating(p)).collect();
    let adopted = p.adopt.len();
    let have = active.len() + adopted;
    // A ReplicaSet being deleted keeps its replicas as they are (Kubernetes manages replicas
    // only while there is no deletionTimestamp): an orphaning delete releases them.
    let deleting = rs.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
    if !deleting && have < want {
        let template = rs.pointer("/spec/template").cloned().unwrap_or(Value::Null);
        for _ in 0..want - have {
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template["spec"]});
            pod["metadata"]["generateName"] = json!(format!("{}-", rs["metadata"]["name"].as_str().unwrap_or("rs")));
            pod["metadata"]["namespace"] = rs["metadata"]["namespace"].clone();
            pod["metadata"]["ownerReferences"] = json!([owner_ref(rs)]);
            if let Some(m) = pod["metadata"].as_object_mut() {
                m.remove("name");
            }
            p.create.push(pod);
        }
    } else if !deleting && active.len() > want {
        // Kubernetes' order: unscheduled, then pending, then not ready, then newest first.
        active.sort_by_key(|pod| {
            let unscheduled = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default().is_empty();
            let pending = pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running");
            let created =
                pod.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or_default().to_string();
            (!unscheduled, !pending, ready(pod), std::cmp::Reverse(created))
        });
        p.delete = active[..active.len() - want]
            .iter()
            .map(|pod| pod["metadata"]["name"].as_str().unwrap_or_default().to_string())
            .collect();
    }
    let counted: Vec<&Value> = owned.iter().copied().filter(|p| !terminating(p)).collect();
    let ready_n = counted.iter().filter(|p| ready(p)).count();
    p.status = json!({
        "replicas": counted.len(),
        "fullyLabeledReplicas": counted.len(),
        "readyReplicas": ready_n,
        "availableReplicas": ready_n,
        "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i64) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "rs-uid", "generation": 2},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    }

    fn pod(name: &str, owner: Option<&str>, app: &str, node: &str) -> Value {
        let refs = owner.map(
            |u| json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": u, "controller": true}]),
        );
        json!({"metadata": {"name": name, "labels": {"app": app}, "ownerReferences": refs, "creationTimestamp": format!("2026-01-01T00:00:0{}Z", name.len() % 10)},
               "spec": {"nodeName": node}, "status": {"phase": if node.is_empty() { "Pending" } else { "Running" }}})
    }

    #[test]
    fn creates_the_missing_replicas_from_the_template() {
        let p = plan(&rs(3), &[pod("web-a", Some("rs-uid"), "web", "n1")]);
        assert_eq!(p.create.len(), 2);
        assert_eq!(p.create[0]["metadata"]["generateName"], "web-");
        assert_eq!(p.create[0]["metadata"]["ownerReferences"][0]["uid"], "rs-uid");
        assert_eq!(p.create[0]["metadata"]["labels"]["app"], "web");
        assert_eq!(p.status["replicas"], 1);
    }

    #[test]
    fn a_replicaset_being_deleted_neither_adopts_nor_replaces_nor_removes_pods() {
        let mut deleting = rs(3);
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let pods = [pod("web-a", None, "web", "n1"), pod("web-b", Some("rs-uid"), "web", "n1")];
        let p = plan(&deleting, &pods);
        assert!(p.adopt.is_empty() && p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        deleting["spec"]["replicas"] = json!(1);
        let p = plan(&deleting, &[pods[1].clone(), pod("web-c", Some("rs-uid"), "web", "n1")]);
        assert!(p.delete.is_empty(), "{p:?}");
        assert_eq!(p.status["replicas"], 2, "its status still counts what it owns");
    }

    #[test]
    fn deletes_extras_unscheduled_first_and_ignores_terminating_pods() {
        let mut gone = pod("web-old", Some("rs-uid"), "web", "n1");
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let pods = [
            pod("web-a", Some("rs-uid"), "web", "n1"),
            pod("web-b", Some("rs-uid"), "web", ""),
            pod("web-c", Some("rs-uid"), "web", "n2"),
            gone,
        ];
        let p = plan(&rs(1), &pods);
        assert_eq!(p.delete.len(), 2);
        assert_eq!(p.delete[0], "web-b", "the unscheduled pod goes first");
        assert!(p.create.is_empty(), "a terminating pod is neither counted nor replaced twice");
    }

    #[test]
    fn adopts_orphans_and_releases_pods_that_stop_matching() {
        let pods = [
            pod("stray", None, "web", "n1"),
            pod("relabelled", Some("rs-uid"), "other", "n1"),
            pod("foreign", Some("x"), "web", "n1"),
        ];
        let p = plan(&rs(1), &pods);
        assert_eq!(p.adopt.len(), 1);
        assert_eq!(p.adopt[0]["metadata"]["name"], "stray");
        assert_eq!(p.release.len(), 1);
        assert_eq!(p.release[0]["metadata"]["ownerReferences"], json!([]));
        assert!(p.create.is_empty(), "the adopted pod counts toward replicas");
    }

    #[test]
    fn steady_state_changes_nothing() {
        let p = plan(&rs(2), &[pod("web-a", Some("rs-uid"), "web", "n1"), pod("web-b", Some("rs-uid"), "web", "n2")]);
        assert!(p.create.is_empty() && p.delete.is_empty() && p.adopt.is_empty() && p.release.is_empty());
        assert_eq!(p.status["observedGeneration"], 2);
    }
}
