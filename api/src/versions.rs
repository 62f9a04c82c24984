//! Kinds also served at another version or group: objects are stored at the kind's one
//! version ([`crate::kinds`]) and converted on the way in and out of the REST API, as
//! Kubernetes' conversion functions do.
//!
//! `events.k8s.io/v1` Events (what client-go's events recorder writes) are core Events under
//! other names: `regarding` is `involvedObject`, `note` is `message`, the old counters and
//! timestamps are `deprecated…`; they are validated as Kubernetes validates that version.
//!
//! `autoscaling/v1` HorizontalPodAutoscalers (what `kubectl autoscale` sends): the cpu
//! utilization target is `targetCPUUtilizationPercentage`, and what v1 cannot say — other
//! metrics, `behavior`, the current metrics and the conditions — rides in Kubernetes'
//! `autoscaling.alpha.kubernetes.io/…` annotations, so an object read and written back at v1
//! loses nothing.

use crate::error::{ApiError, ApiResult};
use serde_json::{json, Map, Value};

/// (group version, resource) served besides the stored version.
pub const ALSO_SERVED: [(&str, &str); 2] =
    [("autoscaling/v1", "horizontalpodautoscalers"), ("events.k8s.io/v1", "events")];

/// A stored object as `api_version` (one of [`ALSO_SERVED`]) shows it.
pub fn shown_at(api_version: &str, stored: &Value) -> Value {
    match api_version {
        "autoscaling/v1" => autoscaler_to_v1(stored),
        "events.k8s.io/v1" => event_to_v1(stored),
        _ => stored.clone(),
    }
}

/// An object written at `api_version` (one of [`ALSO_SERVED`]) as it is stored.
pub fn stored_from(api_version: &str, given: Value) -> ApiResult<Value> {
    match api_version {
        "autoscaling/v1" => autoscaler_from_v1(given),
        "events.k8s.io/v1" => event_from_v1(given),
        _ => Ok(given),
    }
}

/// (core Event field, events.k8s.io/v1 field) where the names differ.
const EVENT_RENAMES: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn renamed(mut obj: Value, api_version: &str, pairs: impl Iterator<Item = (&'static str, &'static str)>) -> Value {
    if let Some(map) = obj.as_object_mut() {
        for (from, to) in pairs {
            if let Some(v) = map.remove(from) {
                map.insert(to.into(), v);
            }
        }
        map.insert("apiVersion".into(), json!(api_version));
    }
    obj
}

/// A stored core Event as events.k8s.io/v1 shows it.
pub fn event_to_v1(stored: &Value) -> Value {
    renamed(stored.clone(), "events.k8s.io/v1", EVENT_RENAMES.into_iter())
}

/// An events.k8s.io/v1 Event, validated as Kubernetes does for that version, as the core
/// Event it is stored as.
pub fn event_from_v1(given: Value) -> ApiResult<Value> {
    use crate::error::FieldError;
    let text = |f: &str| given.get(f).and_then(Value::as_str).unwrap_or_default();
    let mut causes = Vec::new();
    for field in ["eventTime", "reportingController", "reportingInstance", "action", "reason"] {
        if text(field).is_empty() {
            causes.push(FieldError::required(field, ""));
        }
    }
    for (field, limit) in [("reportingInstance", 128), ("action", 128), ("reason", 128), ("note", 1024)] {
        if text(field).len() > limit {
            causes.push(FieldError::invalid(field, "", format!("can have at most {limit} characters")));
        }
    }
    if !matches!(text("type"), "Normal" | "Warning") {
        causes.push(FieldError::invalid("type", "", format!("has invalid value: {}", text("type"))));
    }
    if !causes.is_empty() {
        let name = given.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        return Err(ApiError::Invalid { kind: "Event.events.k8s.io".into(), name, causes });
    }
    Ok(renamed(given, "v1", EVENT_RENAMES.into_iter().map(|(core, v1)| (v1, core))))
}

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";

/// Whether `api_version` serves `resource` as a converted older version.
pub fn also_served(api_version: &str, resource: &str) -> bool {
    ALSO_SERVED.contains(&(api_version, resource))
}

/// Whether `m` is the cpu Utilization metric v1 names (`target` for a spec's, `current` for a
/// status's).
fn cpu_utilization(m: &Value, side: &str) -> Option<i64> {
    (m["type"] == "Resource" && m["resource"]["name"] == "cpu")
        .then(|| m["resource"][side]["averageUtilization"].as_i64())
        .flatten()
        .filter(|_| side == "current" || m["resource"]["target"]["type"] == "Utilization")
}

/// A stored (autoscaling/v2) autoscaler as autoscaling/v1 shows it.
pub fn autoscaler_to_v1(stored: &Value) -> Value {
    let mut out = stored.clone();
    out["apiVersion"] = json!("autoscaling/v1");
    let mut notes = Map::new();
    let spec = &stored["spec"];
    let mut v1_spec = json!({
        "scaleTargetRef": spec["scaleTargetRef"],
        "maxReplicas": spec["maxReplicas"],
    });
    if let Some(min) = spec.get("minReplicas") {
        v1_spec["minReplicas"] = min.clone();
    }
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    let (cpu, other): (Vec<Value>, Vec<Value>) =
        metrics.into_iter().partition(|m| cpu_utilization(m, "target").is_some());
    if let Some(percent) = cpu.first().and_then(|m| cpu_utilization(m, "target")) {
        v1_spec["targetCPUUtilizationPercentage"] = json!(percent);
    }
    if !other.is_empty() {
        notes.insert(METRICS.into(), json!(Value::Array(other).to_string()));
    }
    if let Some(behavior) = spec.get("behavior").filter(|b| !b.is_null()) {
        notes.insert(BEHAVIOR.into(), json!(behavior.to_string()));
    }
    out["spec"] = v1_spec;
    if let Some(status) = stored.get("status").filter(|s| s.is_object()) {
        let mut v1_status = common_status(status);
        let current = status["currentMetrics"].as_array().cloned().unwrap_or_default();
        let (cpu, other): (Vec<Value>, Vec<Value>) =
            current.into_iter().partition(|m| cpu_utilization(m, "current").is_some());
        if let Some(percent) = cpu.first().and_then(|m| cpu_utilization(m, "current")) {
            v1_status.insert("currentCPUUtilizationPercentage".into(), json!(percent));
        }
        if !other.is_empty() {
            notes.insert(CURRENT_METRICS.into(), json!(Value::Array(other).to_string()));
        }
        if let Some(conditions) = status.get("conditions").filter(|c| c.as_array().is_some_and(|c| !c.is_empty())) {
            notes.insert(CONDITIONS.into(), json!(conditions.to_string()));
        }
        out["status"] = Value::Object(v1_status);
    }
    if !notes.is_empty() {
        let annotations = &mut out["metadata"]["annotations"];
        if !annotations.is_object() {
            *annotations = json!({});
        }
        annotations.as_object_mut().expect("made an object").extend(notes);
    }
    out
}

/// An autoscaling/v1 autoscaler as it is stored (autoscaling/v2): what [`autoscaler_to_v1`] put in
/// annotations comes back out of them.
pub fn autoscaler_from_v1(given: Value) -> ApiResult<Value> {
    let mut out = given.clone();
    out["apiVersion"] = json!("autoscaling/v2");
    let mut take = |key: &str| -> ApiResult<Option<Value>> {
        let Some(annotations) = out.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) else {
            return Ok(None);
        };
        let Some(text) = annotations.remove(key) else { return Ok(None) };
        if annotations.is_empty() {
            out["metadata"].as_object_mut().expect("has annotations").remove("annotations");
        }
        let text = text.as_str().unwrap_or_default().to_string();
        serde_json::from_str(&text).map(Some).map_err(|e| {
            ApiError::BadRequest(format!("metadata.annotations[{key}]: not the JSON this API writes: {e}"))
        })
    };
    let other = take(METRICS)?;
    let behavior = take(BEHAVIOR)?;
    let current_other = take(CURRENT_METRICS)?;
    let conditions = take(CONDITIONS)?;
    let spec = &given["spec"];
    if let Some(unknown) = spec.as_object().and_then(|s| s.keys().find(|k| !V1_SPEC.contains(&k.as_str()))) {
        return Err(ApiError::BadRequest(format!(
            "HorizontalPodAutoscaler in version \"v1\" cannot be handled as a HorizontalPodAutoscaler: strict \
             decoding error: unknown field \"spec.{unknown}\""
        )));
    }
    let mut v2_spec = json!({"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": spec["maxReplicas"]});
    if let Some(min) = spec.get("minReplicas") {
        v2_spec["minReplicas"] = min.clone();
    }
    let mut metrics = Vec::new();
    if let Some(percent) = spec.get("targetCPUUtilizationPercentage").filter(|p| !p.is_null()) {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}}}));
    }
    metrics.extend(other.and_then(|o| o.as_array().cloned()).unwrap_or_default());
    if !metrics.is_empty() {
        v2_spec["metrics"] = json!(metrics);
    }
    if let Some(b) = behavior {
        v2_spec["behavior"] = b;
    }
    out["spec"] = v2_spec;
    if let Some(status) = given.get("status").filter(|s| s.is_object()) {
        let mut v2_status = common_status(status);
        let mut current = Vec::new();
        if let Some(percent) = status.get("currentCPUUtilizationPercentage").filter(|p| !p.is_null()) {
            current.push(
                json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": percent}}}),
            );
        }
        current.extend(current_other.and_then(|o| o.as_array().cloned()).unwrap_or_default());
        if !current.is_empty() {
            v2_status.insert("currentMetrics".into(), json!(current));
        }
        if let Some(c) = conditions {
            v2_status.insert("conditions".into(), c);
        }
        out["status"] = Value::Object(v2_status);
    }
    Ok(out)
}

/// The status fields both versions have alike.
fn common_status(status: &Value) -> Map<String, Value> {
    let fields = ["observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"];
    fields.iter().filter_map(|f| status.get(*f).map(|v| (f.to_string(), v.clone()))).collect()
}

/// The fields of an autoscaling/v1 spec.
const V1_SPEC: [&str; 4] = ["scaleTargetRef", "minReplicas", "maxReplicas", "targetCPUUtilizationPercentage"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v2_autoscaler_round_trips_through_v1_unchanged() {
        let stored = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 75}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}]
            }
        });
        let v1 = autoscaler_to_v1(&stored);
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 75);
        assert!(v1["spec"].get("metrics").is_none() && v1["spec"].get("behavior").is_none(), "{v1}");
        assert!(v1["metadata"]["annotations"][METRICS].as_str().unwrap().contains("memory"), "{v1}");
        assert_eq!(autoscaler_from_v1(v1).unwrap(), stored);
    }

    #[test]
    fn events_v1_are_core_events_under_other_names() {
        let sent = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "default"},
            "eventTime": "2026-12-07T20:00:00.000000Z", "reportingController": "example.com/ctl",
            "reportingInstance": "ctl-0", "action": "Reconcile", "reason": "Synced", "type": "Normal",
            "note": "all good", "regarding": {"kind": "Pod", "name": "web", "namespace": "default"},
            "series": {"count": 2, "lastObservedTime": "2026-12-07T20:01:00.000000Z"}
        });
        let stored = event_from_v1(sent.clone()).unwrap();
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["message"], "all good");
        assert_eq!(stored["involvedObject"]["name"], "web");
        assert_eq!(stored["reportingComponent"], "example.com/ctl");
        assert_eq!(event_to_v1(&stored), sent);
        let e = event_from_v1(
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "bad"}, "type": "Odd"}),
        )
        .unwrap_err()
        .to_string();
        for said in [
            "eventTime: Required value",
            "reportingController: Required value",
            "action: Required value",
            "type: Invalid value: \"\": has invalid value: Odd",
        ] {
            assert!(e.contains(said), "{said} in {e}");
        }
    }

    #[test]
    fn what_kubectl_autoscale_sends_is_stored_as_a_cpu_metric() {
        let sent = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 80}
        });
        let stored = autoscaler_from_v1(sent).unwrap();
        assert_eq!(stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
        assert!(stored["metadata"].get("annotations").is_none(), "{stored}");
        let bad = json!({"spec": {"maxReplicas": 3, "behavior": {}}});
        let e = autoscaler_from_v1(bad).unwrap_err().to_string();
        assert!(e.contains("unknown field \"spec.behavior\""), "{e}");
    }
}
