//! The Endpoints controller: for each Service with a selector, an Endpoints object of the same
//! name listing its pods' IPs — ready ones under `addresses`, the rest under
//! `notReadyAddresses` — with each service port's `targetPort` resolved (a number, or a
//! container port's name, which may differ between pods: pods are grouped into subsets by the
//! ports they resolve to, as Kubernetes does).
//!
//! `desired` is pure: Service and the namespace's pods in, the Endpoints `subsets` out.

use serde_json::{json, Value};
use std::collections::BTreeMap;

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn selected(selector: &serde_json::Map<String, Value>, pod: &Value) -> bool {
    selector.iter().all(|(k, v)| pod["metadata"]["labels"][k] == *v)
}

/// The container port a service port reaches on `pod`, or None if a named port is missing.
fn target_port(port: &Value, pod: &Value) -> Option<i64> {
    let target = &port["targetPort"];
    if let Some(n) = target.as_i64() {
        return Some(n);
    }
    match target.as_str() {
        None | Some("") => port["port"].as_i64(),
        Some(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_i64()),
    }
}

/// A service port resolved on one pod: (name, container port, protocol).
type Resolved = (String, i64, String);

/// The `subsets` the Service's Endpoints should hold.
pub fn desired(svc: &Value, pods: &[Value]) -> Value {
    let Some(selector) = svc["spec"]["selector"].as_object().filter(|s| !s.is_empty()) else {
        return json!([]);
    };
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    // Resolved ports → (ready addresses, not-ready addresses).
    let mut groups: BTreeMap<Vec<Resolved>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut live: Vec<&Value> = pods
        .iter()
        .filter(|p| selected(selector, p))
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .filter(|p| p["status"]["podIP"].as_str().is_some_and(|ip| !ip.is_empty()))
        .collect();
    live.sort_by_key(|p| p["status"]["podIP"].as_str().unwrap_or_default().to_string());
    for pod in live {
        let resolved: Option<Vec<Resolved>> = ports
            .iter()
            .map(|sp| {
                let protocol = sp["protocol"].as_str().filter(|s| !s.is_empty()).unwrap_or("TCP").to_string();
                target_port(sp, pod).map(|n| (sp["name"].as_str().unwrap_or_default().to_string(), n, protocol))
            })
            .collect();
        let Some(resolved) = resolved else { continue };
        let address = json!({
            "ip": pod["status"]["podIP"],
            "nodeName": pod["spec"]["nodeName"],
            "targetRef": {"kind": "Pod", "namespace": pod["metadata"]["namespace"], "name": pod["metadata"]["name"],
                          "uid": pod["metadata"]["uid"]},
        });
        let entry = groups.entry(resolved).or_default();
        if ready(pod) {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let subsets: Vec<Value> = groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(name, port, protocol)| {
                    let mut p = json!({"port": port, "protocol": protocol});
                    if !name.is_empty() {
                        p["name"] = json!(name);
                    }
                    p
                })
                .collect();
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    json!(subsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, is_ready: bool, http_port: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"), "labels": {"app": "web"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": http_port}]}]},
               "status": {"phase": "Running", "podIP": ip,
                          "conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports_resolved_per_pod() {
        let svc =
            json!({"spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}});
        let mut other = pod("c", "10.0.0.3", true, 8080);
        other["metadata"]["labels"]["app"] = json!("db");
        let pods = [
            pod("a", "10.0.0.1", true, 8080),
            pod("b", "10.0.0.2", false, 8080),
            pod("d", "10.0.0.4", true, 9090),
            other,
        ];
        let subsets = desired(&svc, &pods);
        let subsets = subsets.as_array().unwrap();
        assert_eq!(subsets.len(), 2, "two resolved port sets: {subsets:?}");
        let s8080 = subsets.iter().find(|s| s["ports"][0]["port"] == 8080).unwrap();
        assert_eq!(s8080["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(s8080["notReadyAddresses"][0]["ip"], "10.0.0.2");
        assert_eq!(s8080["ports"][0]["name"], "web");
        assert_eq!(s8080["addresses"][0]["targetRef"]["name"], "a");
    }

    #[test]
    fn services_without_a_selector_are_left_alone() {
        assert_eq!(desired(&json!({"spec": {"ports": [{"port": 80}]}}), &[]), json!([]));
    }
}
