//! The node lifecycle controller: a node whose Lease has not been renewed for the grace
//! period is marked `Ready=Unknown` and tainted `node.kubernetes.io/unreachable` (NoSchedule and
//! NoExecute), as Kubernetes does; its pods are evicted once they have tolerated the NoExecute
//! taint for their `tolerationSeconds` (the eviction timeout for pods without a toleration,
//! Kubernetes' default 300 s). A node whose Lease is renewed again loses the taints.
//!
//! `plan` is pure: a node, its Lease, its pods and the time in; the node to write and the pods
//! to evict out.

use serde_json::{json, Value};
use std::time::Duration;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The node with changed taints and conditions, if it changes.
    pub node: Option<Value>,
    /// (namespace, name) of pods to evict.
    pub evict: Vec<(String, String)>,
}

fn taints(node: &Value) -> Vec<Value> {
    node["spec"]["taints"].as_array().cloned().unwrap_or_default()
}

/// Whether `node` carries the unreachable taint (either effect).
pub fn marked_unreachable(node: &Value) -> bool {
    node["spec"]["taints"].as_array().is_some_and(|t| t.iter().any(|t| t["key"] == UNREACHABLE))
}

/// How long `pod` tolerates `taint` (None: forever). Without a matching toleration: `default`.
fn tolerated_for(pod: &Value, taint: &Value, default: Duration) -> Option<Duration> {
    let tolerations = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    let matching = tolerations.iter().find(|t| {
        let key = t["key"].as_str().unwrap_or_default();
        let exists = t["operator"] == "Exists";
        let key_ok = (key.is_empty() && exists) || key == taint["key"].as_str().unwrap_or_default();
        let value_ok = exists || t["value"].as_str().unwrap_or_default() == taint["value"].as_str().unwrap_or_default();
        let effect_ok = t["effect"].as_str().is_none_or(|e| e.is_empty() || e == "NoExecute");
        key_ok && value_ok && effect_ok
    });
    match matching {
        Some(t) => t["tolerationSeconds"].as_i64().map(|s| Duration::from_secs(s.max(0) as u64)),
        None => Some(default),
    }
}

pub fn plan<'a>(
    node: &Value,
    lease: Option<&Value>,
    pods: impl IntoIterator<Item = &'a Value>,
    now: i64,
    grace: Duration,
    eviction: Duration,
) -> Plan {
    let mut p = Plan::default();
    // The Lease's renewal, else the Ready condition's last heartbeat; a node with neither
    // (registered by hand, not by a node daemon) is left alone.
    let ready_heartbeat = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastHeartbeatTime"].as_str());
    let renewed = lease
        .and_then(|l| l["spec"]["renewTime"].as_str())
        .or(ready_heartbeat)
        .and_then(skiff_proto::time::parse_rfc3339);
    // (A node with neither — registered by hand, not by a node daemon — is never stale.)
    let stale = renewed.is_some_and(|renewed| now - renewed > grace.as_secs() as i64);
    // The common case, every node at every tick: heard from in time, not marked unreachable, no
    // NoExecute taint to stamp or to evict by. Nothing to do, and nothing to look at.
    let no_execute = node["spec"]["taints"].as_array().is_some_and(|t| t.iter().any(|t| t["effect"] == "NoExecute"));
    if !stale && !no_execute && !marked_unreachable(node) {
        return p;
    }
    let mut current = taints(node);
    // A NoExecute taint counts from when it was added; one added by hand gets the time now, as
    // the Kubernetes API stamps `timeAdded`.
    let unstamped = current.iter().any(|t| t["effect"] == "NoExecute" && t["timeAdded"].as_str().is_none());
    if unstamped {
        for t in current.iter_mut().filter(|t| t["effect"] == "NoExecute" && t["timeAdded"].as_str().is_none()) {
            t["timeAdded"] = json!(skiff_proto::time::rfc3339(now));
        }
        let mut n = node.clone();
        n["spec"]["taints"] = json!(current);
        p.node = Some(n);
    }
    let stamped = p.node.clone();
    let node = stamped.as_ref().unwrap_or(node);
    let tainted = current.iter().any(|t| t["key"] == UNREACHABLE && t["effect"] == "NoExecute");
    let t = skiff_proto::time::rfc3339(now);
    if stale && !tainted {
        let mut n = node.clone();
        let mut list = current.clone();
        for effect in ["NoSchedule", "NoExecute"] {
            list.push(json!({"key": UNREACHABLE, "effect": effect, "timeAdded": t}));
        }
        n["spec"]["taints"] = json!(list);
        for c in n["status"]["conditions"].as_array_mut().into_iter().flatten() {
            if c["type"] == "Ready" || c["type"] == "MemoryPressure" || c["type"] == "DiskPressure" {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(t);
            }
        }
        p.node = Some(n);
    } else if !stale && marked_unreachable(node) {
        let mut n = node.clone();
        n["spec"]["taints"] = json!(current.iter().filter(|t| t["key"] != UNREACHABLE).cloned().collect::<Vec<_>>());
        p.node = Some(n);
    }
    // Every NoExecute taint the node will carry evicts the pods that do not tolerate it: at
    // once for a taint put there by hand, after the eviction timeout for the unreachable one
    // (Kubernetes admits pods with a 300 s toleration of it), after `tolerationSeconds` for a
    // pod that tolerates a taint for a while.
    let carried: Vec<Value> = match &p.node {
        Some(n) => taints(n),
        None => current.clone(),
    };
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    for pod in
        pods.into_iter().filter(|p| p["spec"]["nodeName"] == name && p["metadata"]["deletionTimestamp"].is_null())
    {
        let due = carried.iter().filter(|t| t["effect"] == "NoExecute").any(|taint| {
            let since = taint["timeAdded"].as_str().and_then(skiff_proto::time::parse_rfc3339).unwrap_or(now);
            let default = if taint["key"] == UNREACHABLE { eviction } else { Duration::ZERO };
            tolerated_for(pod, taint, default).is_some_and(|d| now - since >= d.as_secs() as i64)
        });
        if due {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            p.evict.push((ns, pod["metadata"]["name"].as_str().unwrap_or_default().to_string()));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_secs(40);
    const E: Duration = Duration::from_secs(300);

    fn node() -> Value {
        json!({"metadata": {"name": "n1"}, "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn lease(renewed: i64) -> Value {
        json!({"spec": {"renewTime": skiff_proto::time::rfc3339(renewed)}})
    }

    fn pod(name: &str, tolerations: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": "n1", "tolerations": tolerations}})
    }

    #[test]
    fn a_silent_node_is_tainted_and_marked_unknown() {
        let p = plan(&node(), Some(&lease(1000)), &[], 1041, G, E);
        let n = p.node.unwrap();
        assert_eq!(n["status"]["conditions"][0]["status"], "Unknown");
        assert_eq!(n["spec"]["taints"].as_array().unwrap().len(), 2);
        assert!(plan(&node(), Some(&lease(1000)), &[], 1039, G, E).node.is_none(), "within the grace period");
        assert!(plan(&node(), None, &[], 9999, G, E).node.is_none(), "no lease, no heartbeat: not managed");
        let mut beating = node();
        beating["status"]["conditions"][0]["lastHeartbeatTime"] = json!(skiff_proto::time::rfc3339(1000));
        assert!(plan(&beating, None, &[], 1041, G, E).node.is_some(), "the Ready heartbeat counts without a lease");
    }

    #[test]
    fn pods_are_evicted_after_their_toleration() {
        let mut n = node();
        n["spec"]["taints"] =
            json!([{"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": skiff_proto::time::rfc3339(2000)}]);
        let pods = [
            pod("default-timeout", json!([])),
            pod(
                "short",
                json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
            ),
            pod("forever", json!([{"operator": "Exists"}])),
        ];
        let p = plan(&n, Some(&lease(1000)), &pods, 2010, G, E);
        assert_eq!(p.evict, [("default".to_string(), "short".to_string())]);
        let p = plan(&n, Some(&lease(1000)), &pods, 2300, G, E);
        let names: Vec<&str> = p.evict.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["default-timeout", "short"]);
    }

    #[test]
    fn a_noexecute_taint_added_by_hand_evicts_pods_that_do_not_tolerate_it() {
        let mut n = node();
        n["spec"]["taints"] = json!([{"key": "maintenance", "value": "yes", "effect": "NoExecute", "timeAdded": skiff_proto::time::rfc3339(2000)}]);
        let pods = [
            pod("plain", json!([])),
            pod(
                "tolerant",
                json!([{"key": "maintenance", "operator": "Equal", "value": "yes", "effect": "NoExecute"}]),
            ),
            pod(
                "wrong-value",
                json!([{"key": "maintenance", "operator": "Equal", "value": "no", "effect": "NoExecute"}]),
            ),
            pod("for-a-while", json!([{"key": "maintenance", "operator": "Exists", "tolerationSeconds": 60}])),
        ];
        // The node is healthy (lease fresh); only the hand-added taint acts.
        let names = |now: i64| -> Vec<String> {
            plan(&n, Some(&lease(now - 1)), &pods, now, G, E).evict.into_iter().map(|(_, p)| p).collect()
        };
        assert_eq!(names(2010), ["plain", "wrong-value"]);
        assert_eq!(names(2060), ["plain", "wrong-value", "for-a-while"]);
    }

    #[test]
    fn a_node_that_comes_back_loses_the_taints() {
        let mut n = node();
        n["spec"]["taints"] =
            json!([{"key": UNREACHABLE, "effect": "NoExecute"}, {"key": "gpu", "effect": "NoSchedule"}]);
        let p = plan(&n, Some(&lease(5000)), &[], 5001, G, E);
        assert_eq!(p.node.unwrap()["spec"]["taints"], json!([{"key": "gpu", "effect": "NoSchedule"}]));
    }
}
