//! The StatefulSet controller: pods `<name>-0 … <name>-(N-1)` with stable names, created in
//! order — each Running and Ready before the next (OrderedReady; Parallel creates them all) —
//! and removed from the highest ordinal down, one at a time; a PVC per ordinal from each
//! volumeClaimTemplate (`<template>-<name>-<ordinal>`), kept when pods go; a new template rolled
//! from the highest ordinal down, one pod at a time, once every pod is ready.
//!
//! `plan` is pure: the StatefulSet, its namespace's pods and PVCs in; what to create and
//! delete and the status out.

use crate::deployment::template_hash;
use crate::objects::json::controller_uid;
use serde_json::{json, Value};

pub const REVISION_LABEL: &str = "controller-revision-hash";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create_claims: Vec<Value>,
    pub create: Vec<Value>,
    pub delete: Vec<String>,
    pub status: Value,
}

fn ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

/// The ordinal of `<set>-<n>`.
fn ordinal(set: &str, pod: &Value) -> Option<usize> {
    pod["metadata"]["name"].as_str()?.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

pub fn plan(sts: &Value, pods: &[Value], claims: &[Value]) -> Plan {
    let name = sts["metadata"]["name"].as_str().unwrap_or("sts");
    let uid = sts["metadata"]["uid"].as_str().unwrap_or_default();
    let ns = sts["metadata"]["namespace"].clone();
    let replicas = sts.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0) as usize;
    let template = sts.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let revision = template_hash(&template);
    let parallel = sts.pointer("/spec/podManagementPolicy").and_then(Value::as_str) == Some("Parallel");
    let mut p = Plan::default();
    let mut mine: Vec<(usize, &Value)> = pods
        .iter()
        .filter(|p| controller_uid(p) == Some(uid))
        .filter_map(|p| ordinal(name, p).map(|o| (o, p)))
        .collect();
    mine.sort_by_key(|(o, _)| *o);
    let at = |i: usize| mine.iter().find(|(o, _)| *o == i).map(|(_, p)| *p);
    let any_terminating = mine.iter().any(|(_, p)| terminating(p));

    // Claims for every wanted ordinal, before its pod.
    let templates = sts.pointer("/spec/volumeClaimTemplates").and_then(Value::as_array).cloned().unwrap_or_default();
    for i in 0..replicas {
        for t in &templates {
            let claim = format!("{}-{name}-{i}", t["metadata"]["name"].as_str().unwrap_or("data"));
            if !claims.iter().any(|c| c["metadata"]["name"] == claim.as_str()) {
                let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": ns, "labels": template["metadata"]["labels"]}, "spec": t["spec"]});
                if !c["metadata"]["labels"].is_object() {
                    c["metadata"].as_object_mut().map(|m| m.remove("labels"));
                }
                p.create_claims.push(c);
            }
        }
    }

    // Scale up, in order.
    for i in 0..replicas {
        match at(i) {
            Some(pod) if ready(pod) || parallel => continue,
            Some(_) => break,
            None => {
                if any_terminating && !parallel {
                    break;
                }
                let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template["spec"]});
                let pod_name = format!("{name}-{i}");
                pod["metadata"]["name"] = json!(pod_name);
                pod["metadata"]["namespace"] = ns.clone();
                pod["metadata"]["labels"][REVISION_LABEL] = json!(revision);
                pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
                pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                    "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
                pod["spec"]["hostname"] = json!(pod_name);
                if let Some(svc) = sts.pointer("/spec/serviceName").and_then(Value::as_str) {
                    pod["spec"]["subdomain"] = json!(svc);
                }
                let mut volumes = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
                for t in &templates {
                    let vname = t["metadata"]["name"].as_str().unwrap_or("data");
                    volumes.push(
                        json!({"name": vname, "persistentVolumeClaim": {"claimName": format!("{vname}-{name}-{i}")}}),
                    );
                }
                if !volumes.is_empty() {
                    pod["spec"]["volumes"] = json!(volumes);
                }
                p.create.push(pod);
                if !parallel {
                    break;
                }
            }
        }
    }

    // Scale down, from the top, one at a time (all at once when Parallel).
    let extra: Vec<&(usize, &Value)> = mine.iter().filter(|(o, p)| *o >= replicas && !terminating(p)).collect();
    if let Some((_, top)) = extra.last() {
        if parallel {
            p.delete.extend(extra.iter().map(|(_, p)| p["metadata"]["name"].as_str().unwrap_or_default().to_string()));
        } else if !any_terminating {
            p.delete.push(top["metadata"]["name"].as_str().unwrap_or_default().to_string());
        }
    }

    // Rolling update, from the top, when every pod is there and ready.
    let all_ready = (0..replicas).all(|i| at(i).is_some_and(ready));
    let on_delete = sts.pointer("/spec/updateStrategy/type").and_then(Value::as_str) == Some("OnDelete");
    if !on_delete && all_ready && !any_terminating && p.delete.is_empty() && p.create.is_empty() {
        if let Some(old) =
            (0..replicas).rev().filter_map(at).find(|p| p["metadata"]["labels"][REVISION_LABEL] != revision.as_str())
        {
            p.delete.push(old["metadata"]["name"].as_str().unwrap_or_default().to_string());
        }
    }

    let live: Vec<&Value> = mine.iter().map(|(_, p)| *p).filter(|p| !terminating(p)).collect();
    let updated = live.iter().filter(|p| p["metadata"]["labels"][REVISION_LABEL] == revision.as_str()).count();
    p.status = json!({
        "observedGeneration": sts.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": live.len(),
        "readyReplicas": live.iter().filter(|p| ready(p)).count(),
        "currentReplicas": live.len() - updated,
        "updatedReplicas": updated,
        "availableReplicas": live.iter().filter(|p| ready(p)).count(),
        "updateRevision": format!("{name}-{revision}"),
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(replicas: i64) -> Value {
        json!({"metadata": {"name": "db", "namespace": "default", "uid": "s-uid"},
               "spec": {"replicas": replicas, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
                        "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}})
    }

    fn pod(s: &Value, i: usize, is_ready: bool) -> Value {
        json!({"metadata": {"name": format!("db-{i}"), "labels": {"app": "db", REVISION_LABEL: template_hash(&s["spec"]["template"])},
                            "ownerReferences": [{"uid": "s-uid", "controller": true}]},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn pods_come_up_one_at_a_time_in_order_with_their_claims() {
        let s = sts(3);
        let p = plan(&s, &[], &[]);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0]["metadata"]["name"], "db-0");
        assert_eq!(p.create[0]["spec"]["hostname"], "db-0");
        assert_eq!(p.create[0]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "data-db-0");
        assert_eq!(p.create_claims.len(), 3);
        // db-0 not ready yet: nothing more.
        assert!(plan(&s, &[pod(&s, 0, false)], &[]).create.is_empty());
        let p = plan(&s, &[pod(&s, 0, true)], &[]);
        assert_eq!(p.create[0]["metadata"]["name"], "db-1");
    }

    #[test]
    fn scaling_down_removes_the_highest_ordinal_first_one_at_a_time() {
        let s = sts(1);
        let pods = [pod(&s, 0, true), pod(&s, 1, true), pod(&s, 2, true)];
        assert_eq!(plan(&s, &pods, &[]).delete, ["db-2"]);
    }

    #[test]
    fn a_new_template_replaces_pods_from_the_top() {
        let old = sts(2);
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        let p = plan(&new, &[pod(&old, 0, true), pod(&old, 1, true)], &[]);
        assert_eq!(p.delete, ["db-1"]);
        // db-1 back with the new template but not ready: db-0 waits.
        let p = plan(&new, &[pod(&old, 0, true), pod(&new, 1, false)], &[]);
        assert!(p.delete.is_empty());
    }
}
