//! Defaulting as Kubernetes does it, on the JSON form of an object before validation.

use crate::kinds::KindInfo;
use crate::object::default_at;
use serde_json::{json, Value};

pub fn apply(info: &KindInfo, obj: &mut Value) {
    match info.kind {
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec(spec);
                // Pods only, not templates (a template's hash must not change under it). The
                // deprecated `serviceAccount` names the account when `serviceAccountName` does not.
                let alias = spec.get("serviceAccount").and_then(Value::as_str).filter(|a| !a.is_empty());
                let account = alias.unwrap_or("default").to_string();
                default_at(spec, &["serviceAccountName"], json!(account));
            }
            default_at(obj, &["status", "phase"], json!("Pending"));
            // A gated pod says why it waits, as Kubernetes' pod strategy writes it on create.
            let gated = obj.pointer("/spec/schedulingGates").and_then(Value::as_array).is_some_and(|g| !g.is_empty());
            let conditions = obj.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            if gated && conditions.iter().all(|c| c["type"] != "PodScheduled") {
                let mut conditions = conditions;
                conditions.push(json!({
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "SchedulingGated",
                    "message": "Scheduling is blocked due to non-empty scheduling gates",
                }));
                obj["status"]["conditions"] = json!(conditions);
            }
        }
        "PriorityClass" => default_at(obj, &["preemptionPolicy"], json!("PreemptLowerPriority")),
        "HorizontalPodAutoscaler" => autoscaler(obj),
        "NetworkPolicy" => network_policy(obj),
        "Deployment" => {
            default_at(obj, &["spec", "replicas"], json!(1));
            default_at(obj, &["spec", "strategy", "type"], json!("RollingUpdate"));
            if obj.pointer("/spec/strategy/type") == Some(&json!("RollingUpdate")) {
                default_at(obj, &["spec", "strategy", "rollingUpdate", "maxSurge"], json!("25%"));
                default_at(obj, &["spec", "strategy", "rollingUpdate", "maxUnavailable"], json!("25%"));
            }
            default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
            default_at(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            template(obj);
        }
        "ReplicaSet" => {
            default_at(obj, &["spec", "replicas"], json!(1));
            template(obj);
        }
        "LimitRange" => {
            // As Kubernetes: a Container item's default limit is its max, its default request
            // its default limit or else its min, for each resource it leaves out.
            for item in obj.pointer_mut("/spec/limits").and_then(Value::as_array_mut).into_iter().flatten() {
                if item.get("type").and_then(Value::as_str) != Some("Container") {
                    continue;
                }
                for (from, to) in [("max", "default"), ("default", "defaultRequest"), ("min", "defaultRequest")] {
                    let Some(source) = item.get(from).and_then(Value::as_object).cloned() else { continue };
                    for (resource, q) in source {
                        default_at(item, &[to, &resource], q);
                    }
                }
            }
        }
        "ReplicationController" => {
            default_at(obj, &["spec", "replicas"], json!(1));
            // As Kubernetes: an empty selector, and empty labels, are the template's labels.
            let labels =
                obj.pointer("/spec/template/metadata/labels").filter(|l| l.as_object().is_some_and(|m| !m.is_empty()));
            if let Some(labels) = labels.cloned() {
                let empty = |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(|m| m.is_empty());
                if empty(obj.pointer("/spec/selector")) {
                    obj["spec"]["selector"] = labels.clone();
                }
                if empty(obj.pointer("/metadata/labels")) && obj["metadata"].is_object() {
                    obj["metadata"]["labels"] = labels;
                }
            }
            template(obj);
        }
        "DaemonSet" => {
            default_at(obj, &["spec", "updateStrategy", "type"], json!("RollingUpdate"));
            if obj.pointer("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
                default_at(obj, &["spec", "updateStrategy", "rollingUpdate", "maxUnavailable"], json!(1));
            }
            default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
            template(obj);
        }
        "StatefulSet" => {
            default_at(obj, &["spec", "replicas"], json!(1));
            default_at(obj, &["spec", "podManagementPolicy"], json!("OrderedReady"));
            default_at(obj, &["spec", "updateStrategy", "type"], json!("RollingUpdate"));
            default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
            template(obj);
        }
        "Job" => {
            job_spec(obj.get_mut("spec"));
        }
        "CronJob" => {
            default_at(obj, &["spec", "concurrencyPolicy"], json!("Allow"));
            default_at(obj, &["spec", "suspend"], json!(false));
            default_at(obj, &["spec", "successfulJobsHistoryLimit"], json!(3));
            default_at(obj, &["spec", "failedJobsHistoryLimit"], json!(1));
            job_spec(obj.pointer_mut("/spec/jobTemplate/spec"));
        }
        "Service" => service(obj),
        "Namespace" => {
            default_at(obj, &["status", "phase"], json!("Active"));
        }
        "Node" => {
            // podCIDR and podCIDRs say the same: either one fills in the other.
            let one = obj.pointer("/spec/podCIDR").and_then(Value::as_str).unwrap_or_default().to_string();
            let first = obj.pointer("/spec/podCIDRs/0").and_then(Value::as_str).map(String::from);
            match first {
                None if !one.is_empty() => obj["spec"]["podCIDRs"] = json!([one]),
                Some(first) if one.is_empty() => obj["spec"]["podCIDR"] = json!(first),
                _ => {}
            }
        }
        "Secret" => {
            default_at(obj, &["type"], json!("Opaque"));
        }
        "PersistentVolume" => {
            default_at(obj, &["spec", "persistentVolumeReclaimPolicy"], json!("Retain"));
            default_at(obj, &["status", "phase"], json!("Available"));
        }
        "PersistentVolumeClaim" => {
            default_at(obj, &["status", "phase"], json!("Pending"));
        }
        "Event" => {
            default_at(obj, &["type"], json!("Normal"));
            // Events written through events.k8s.io/v1 count with `series`, not `count`.
            if obj.get("eventTime").and_then(Value::as_str).is_none_or(str::is_empty) {
                default_at(obj, &["count"], json!(1));
            }
        }
        _ => {}
    }
}

fn template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        pod_spec(spec);
    }
}

fn job_spec(spec: Option<&mut Value>) {
    let Some(spec) = spec else { return };
    default_at(spec, &["completions"], json!(1));
    default_at(spec, &["parallelism"], json!(1));
    default_at(spec, &["backoffLimit"], json!(6));
    default_at(spec, &["completionMode"], json!("NonIndexed"));
    default_at(spec, &["suspend"], json!(false));
    if let Some(pod) = spec.pointer_mut("/template/spec") {
        pod_spec(pod);
    }
}

/// Pod spec defaults; `restartPolicy` stays as given when set (Jobs must set it).
pub fn pod_spec(spec: &mut Value) {
    default_at(spec, &["restartPolicy"], json!("Always"));
    default_at(spec, &["terminationGracePeriodSeconds"], json!(30));
    default_at(spec, &["dnsPolicy"], json!("ClusterFirst"));
    default_at(spec, &["schedulerName"], json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            container(c);
        }
    }
}

fn container(c: &mut Value) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default().to_string();
    let tag = image.rsplit('/').next().and_then(|last| last.split_once(':')).map(|(_, t)| t.to_string());
    let pull = if image.contains('@') {
        "IfNotPresent"
    } else if tag.as_deref().is_none_or(|t| t == "latest") {
        "Always"
    } else {
        "IfNotPresent"
    };
    default_at(c, &["imagePullPolicy"], json!(pull));
    default_at(c, &["terminationMessagePath"], json!("/dev/termination-log"));
    default_at(c, &["terminationMessagePolicy"], json!("File"));
    // `resources` is a plain struct in Kubernetes: empty is the same as absent. Kept absent, so
    // a template that says `resources: {}` (what kubectl writes back on `rollout undo`, and in
    // every generated manifest) is the same template — the same ReplicaSet — as one without.
    if c.get("resources")
        .and_then(Value::as_object)
        .is_some_and(|r| r.values().all(|v| v.as_object().is_some_and(|m| m.is_empty())))
    {
        c.as_object_mut().expect("a container is an object").remove("resources");
    }
    for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        default_at(p, &["protocol"], json!("TCP"));
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe) {
            default_at(p, &["timeoutSeconds"], json!(1));
            default_at(p, &["periodSeconds"], json!(10));
            default_at(p, &["successThreshold"], json!(1));
            default_at(p, &["failureThreshold"], json!(3));
            if let Some(h) = p.get_mut("httpGet") {
                default_at(h, &["path"], json!("/"));
                default_at(h, &["scheme"], json!("HTTP"));
            }
        }
    }
}

fn service(obj: &mut Value) {
    default_at(obj, &["spec", "type"], json!("ClusterIP"));
    if obj.pointer("/spec/type") != Some(&json!("ExternalName")) {
        default_at(obj, &["spec", "sessionAffinity"], json!("None"));
    }
    for p in obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut).into_iter().flatten() {
        default_at(p, &["protocol"], json!("TCP"));
        if let Some(port) = p.get("port").cloned() {
            default_at(p, &["targetPort"], port);
        }
    }
}

/// An autoscaler's defaults, as Kubernetes' autoscaling/v2 sets them: one replica at least,
/// 80% of the pods' cpu request when no metric is named, and — when `behavior` is given — each
/// direction's rules filled from the defaults (a scale-down window stays unset: the controller
/// applies its own 5 minutes).
fn autoscaler(obj: &mut Value) {
    default_at(obj, &["spec", "minReplicas"], json!(1));
    let no_metrics = obj.pointer("/spec/metrics").and_then(Value::as_array).is_none_or(|m| m.is_empty());
    if no_metrics && obj["spec"].is_object() {
        obj["spec"]["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
    }
    let Some(behavior) = obj.pointer_mut("/spec/behavior").filter(|b| b.is_object()) else { return };
    use skiff_proto::api::HpaScalingRules;
    for (direction, default) in
        [("scaleUp", HpaScalingRules::default_scale_up()), ("scaleDown", HpaScalingRules::default_scale_down())]
    {
        let Ok(default) = serde_json::to_value(default) else { continue };
        for field in ["stabilizationWindowSeconds", "selectPolicy", "policies"] {
            if let Some(value) = default.get(field) {
                default_at(behavior, &[direction, field], value.clone());
            }
        }
    }
}

/// A NetworkPolicy's ports are TCP unless they say, and its policyTypes are Ingress, plus
/// Egress when it has egress rules (Kubernetes' `SetDefaults_NetworkPolicy`).
fn network_policy(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else { return };
    for direction in ["ingress", "egress"] {
        let rules = spec.get_mut(direction).and_then(Value::as_array_mut).into_iter().flatten();
        for port in
            rules.filter_map(|r| r.get_mut("ports").and_then(Value::as_array_mut)).flatten().filter(|p| p.is_object())
        {
            default_at(port, &["protocol"], json!("TCP"));
        }
    }
    let types = spec.get("policyTypes").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    if !types {
        let egress = spec.get("egress").and_then(Value::as_array).is_some_and(|e| !e.is_empty());
        spec["policyTypes"] = if egress { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_resource;

    #[test]
    fn deployment_defaults_match_kubernetes() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "busybox:1.36"}]}}}});
        apply(by_resource("deployments").unwrap(), &mut d);
        assert_eq!(d.pointer("/spec/replicas"), Some(&json!(1)));
        assert_eq!(d.pointer("/spec/strategy/rollingUpdate/maxSurge"), Some(&json!("25%")));
        assert_eq!(d.pointer("/spec/revisionHistoryLimit"), Some(&json!(10)));
        assert_eq!(d.pointer("/spec/template/spec/restartPolicy"), Some(&json!("Always")));
        assert_eq!(d.pointer("/spec/template/spec/containers/0/imagePullPolicy"), Some(&json!("Always")));
        assert_eq!(d.pointer("/spec/template/spec/containers/1/imagePullPolicy"), Some(&json!("IfNotPresent")));
    }

    #[test]
    fn service_target_port_defaults_to_port() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply(by_resource("services").unwrap(), &mut s);
        assert_eq!(s.pointer("/spec/ports/0/targetPort"), Some(&json!(80)));
        assert_eq!(s.pointer("/spec/type"), Some(&json!("ClusterIP")));
    }
}
