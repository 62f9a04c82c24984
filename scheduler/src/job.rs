//! The Job controller: runs pods until `completions` of them succeed, `parallelism` at a
//! time, giving up after `backoffLimit` failed pods or `activeDeadlineSeconds`; pods are
//! `<job>-<random>` labelled `job-name` and `controller-uid` as Kubernetes labels them.
//!
//! `plan` is pure: the Job, its namespace's pods and the time in; pods to create and delete
//! and the status out.

use crate::objects::json::controller_uid;
use serde_json::{json, Value};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Value>,
    pub delete: Vec<String>,
    pub status: Value,
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending")
}

fn condition(status: &Value, kind: &str) -> bool {
    status["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

/// Whether a Job has finished (Complete or Failed), from its status.
pub fn finished(job: &Value) -> Option<&'static str> {
    let s = &job["status"];
    if condition(s, "Complete") {
        Some("Complete")
    } else if condition(s, "Failed") {
        Some("Failed")
    } else {
        None
    }
}

pub fn plan(job: &Value, pods: &[Value], now: i64) -> Plan {
    let uid = job["metadata"]["uid"].as_str().unwrap_or_default();
    let name = job["metadata"]["name"].as_str().unwrap_or("job");
    let spec = &job["spec"];
    let completions = spec["completions"].as_i64().unwrap_or(1).max(0);
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6).max(0);
    let mut p = Plan::default();
    let mine: Vec<&Value> = pods.iter().filter(|p| controller_uid(p) == Some(uid)).collect();
    let deleting = |p: &&&Value| p.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
    let succeeded = mine.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
    let failed = mine.iter().filter(|p| phase(p) == "Failed").count() as i64;
    let active: Vec<&&Value> =
        mine.iter().filter(|p| !matches!(phase(p), "Succeeded" | "Failed") && !deleting(p)).collect();
    let old = &job["status"];
    let start = old["startTime"].as_str().map(String::from).unwrap_or_else(|| skiff_proto::time::rfc3339(now));
    let started_secs = skiff_proto::time::parse_rfc3339(&start).unwrap_or(now);
    let mut conditions: Vec<Value> = old["conditions"].as_array().cloned().unwrap_or_default();
    let mut completion_time = old["completionTime"].clone();
    let done = finished(job);
    let deadline_passed = spec["activeDeadlineSeconds"].as_i64().is_some_and(|d| now - started_secs >= d);
    let t = skiff_proto::time::rfc3339(now);
    if done.is_none() {
        if succeeded >= completions {
            conditions.push(json!({"type": "Complete", "status": "True", "lastTransitionTime": t, "lastProbeTime": t}));
            completion_time = json!(t);
        } else if failed > backoff_limit || deadline_passed {
            let (reason, message) = if deadline_passed {
                ("DeadlineExceeded", "Job was active longer than specified deadline")
            } else {
                ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            };
            conditions.push(json!({"type": "Failed", "status": "True", "reason": reason, "message": message,
                                   "lastTransitionTime": t, "lastProbeTime": t}));
            p.delete = active.iter().map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect();
        } else {
            let want = parallelism.min(completions - succeeded) - active.len() as i64;
            let template = spec.get("template").cloned().unwrap_or(json!({}));
            for _ in 0..want.max(0) {
                let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template["spec"]});
                pod["metadata"]["generateName"] = json!(format!("{name}-"));
                pod["metadata"]["namespace"] = job["metadata"]["namespace"].clone();
                pod["metadata"]["labels"]["job-name"] = json!(name);
                pod["metadata"]["labels"]["controller-uid"] = json!(uid);
                pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                    "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
                if let Some(m) = pod["metadata"].as_object_mut() {
                    m.remove("name");
                }
                p.create.push(pod);
            }
        }
    } else if done == Some("Failed") {
        p.delete = active.iter().map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect();
    }
    let mut status = json!({
        "active": active.len() as i64 + p.create.len() as i64 - p.delete.len() as i64,
        "succeeded": succeeded,
        "failed": failed,
        "startTime": start,
        "conditions": conditions,
    });
    if !completion_time.is_null() {
        status["completionTime"] = completion_time;
    }
    p.status = status;
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(completions: i64, parallelism: i64, backoff: i64) -> Value {
        json!({"metadata": {"name": "pi", "namespace": "default", "uid": "j-uid"},
               "spec": {"completions": completions, "parallelism": parallelism, "backoffLimit": backoff,
                        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}})
    }

    fn pod(n: usize, phase: &str) -> Value {
        json!({"metadata": {"name": format!("pi-{n}"), "ownerReferences": [{"uid": "j-uid", "controller": true}]},
               "status": {"phase": phase}})
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let p = plan(&job(3, 2, 6), &[], 1000);
        assert_eq!(p.create.len(), 2);
        assert_eq!(p.create[0]["metadata"]["labels"]["job-name"], "pi");
        let p = plan(&job(3, 2, 6), &[pod(0, "Succeeded"), pod(1, "Running")], 1000);
        assert_eq!(p.create.len(), 1, "one more to reach 3 with 2 at a time");
        let p = plan(&job(3, 2, 6), &[pod(0, "Succeeded"), pod(1, "Succeeded"), pod(2, "Succeeded")], 1000);
        assert!(p.create.is_empty());
        assert_eq!(p.status["conditions"][0]["type"], "Complete");
        assert_eq!(p.status["succeeded"], 3);
    }

    #[test]
    fn gives_up_after_the_backoff_limit() {
        let pods = [pod(0, "Failed"), pod(1, "Failed"), pod(2, "Running")];
        let p = plan(&job(1, 1, 1), &pods, 1000);
        assert_eq!(p.status["conditions"][0]["reason"], "BackoffLimitExceeded");
        assert_eq!(p.delete, ["pi-2"]);
        assert!(p.create.is_empty());
        // Failed pods within the limit are replaced.
        let p = plan(&job(1, 1, 3), &[pod(0, "Failed")], 1000);
        assert_eq!(p.create.len(), 1);
    }

    #[test]
    fn an_active_deadline_fails_the_job() {
        let mut j = job(1, 1, 6);
        j["spec"]["activeDeadlineSeconds"] = json!(10);
        j["status"]["startTime"] = json!(skiff_proto::time::rfc3339(1000));
        let p = plan(&j, &[pod(0, "Running")], 1011);
        assert_eq!(p.status["conditions"][0]["reason"], "DeadlineExceeded");
        assert_eq!(p.delete, ["pi-0"]);
    }
}
