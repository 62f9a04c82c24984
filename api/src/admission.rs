//! Admission for pods: ResourceQuota (pods, requests.cpu/memory, limits.cpu/memory) and the
//! Pod Security "baseline" level for namespaces labelled
//! `pod-security.kubernetes.io/enforce: baseline` (or `restricted`, checked as baseline).

use crate::error::ApiError;
use serde_json::{json, Value};
use skiff_proto::quantity::{format_quantity, parse_quantity};
use std::collections::BTreeMap;

/// What a pod counts against a quota, per quota resource name, in thousandths.
pub fn pod_usage(pod: &Value) -> BTreeMap<String, i128> {
    let mut usage = BTreeMap::new();
    usage.insert("pods".into(), 1000);
    for (quota_key, field, res) in [
        ("requests.cpu", "requests", "cpu"),
        ("requests.memory", "requests", "memory"),
        ("limits.cpu", "limits", "cpu"),
        ("limits.memory", "limits", "memory"),
    ] {
        let sum = |list: &str| -> Vec<i128> {
            pod.pointer(&format!("/spec/{list}"))
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            c.pointer(&format!("/resources/{field}/{res}"))
                                .and_then(Value::as_str)
                                .and_then(parse_quantity)
                                .unwrap_or(0)
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        // Effective request: the larger of the app containers' sum and the largest init container.
        let apps: i128 = sum("containers").iter().sum();
        let init = sum("initContainers").into_iter().max().unwrap_or(0);
        usage.insert(quota_key.to_string(), apps.max(init));
        if field == "requests" {
            usage.insert(res.to_string(), apps.max(init)); // `cpu`/`memory` are aliases of requests.*
        }
    }
    usage
}

fn counts(pod: &Value) -> bool {
    !matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

/// Checks `new_pod` against `quota` given the namespace's existing pods. Returns the quota's
/// new `status` (hard and used, including the new pod) to write in the same transaction.
pub fn check_quota(quota: &Value, existing: &[Value], new_pod: &Value) -> Result<Value, ApiError> {
    let hard: BTreeMap<String, String> = quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default();
    let requested = pod_usage(new_pod);
    let mut used: BTreeMap<String, i128> = BTreeMap::new();
    for pod in existing.iter().filter(|p| counts(p)) {
        for (k, v) in pod_usage(pod) {
            *used.entry(k).or_default() += v;
        }
    }
    struct Excess<'a> {
        resource: &'a str,
        requested: i128,
        used: i128,
        limit: &'a str,
    }
    let mut exceeded = Vec::new();
    for (resource, limit) in &hard {
        let Some(limit_v) = parse_quantity(limit) else { continue };
        let (Some(&req), current) = (requested.get(resource), used.get(resource).copied().unwrap_or(0)) else {
            continue;
        };
        if req > 0 && current + req > limit_v {
            exceeded.push(Excess { resource, requested: req, used: current, limit });
        }
    }
    if !exceeded.is_empty() {
        let list = |f: fn(&Excess) -> String| exceeded.iter().map(f).collect::<Vec<_>>().join(",");
        return Err(ApiError::QuotaExceeded(format!(
            "pods {:?} is forbidden: exceeded quota: {}, requested: {}, used: {}, limited: {}",
            crate::object::name(new_pod),
            crate::object::name(quota),
            list(|e| format!("{}={}", e.resource, format_quantity(e.requested, e.resource))),
            list(|e| format!("{}={}", e.resource, format_quantity(e.used, e.resource))),
            list(|e| format!("{}={}", e.resource, e.limit)),
        )));
    }
    let used_after: serde_json::Map<String, Value> = hard
        .keys()
        .map(|r| {
            (
                r.clone(),
                json!(format_quantity(used.get(r).copied().unwrap_or(0) + requested.get(r).copied().unwrap_or(0), r)),
            )
        })
        .collect();
    Ok(json!({"hard": hard, "used": used_after}))
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Pod Security "baseline": the violations of `pod`, in Kubernetes' words (empty = allowed).
pub fn baseline_violations(pod: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let spec = pod.get("spec").cloned().unwrap_or(Value::Null);
    let host_ns: Vec<&str> =
        [("hostNetwork", "hostNetwork=true"), ("hostPID", "hostPID=true"), ("hostIPC", "hostIPC=true")]
            .into_iter()
            .filter(|(f, _)| spec.get(*f) == Some(&json!(true)))
            .map(|(_, s)| s)
            .collect();
    if !host_ns.is_empty() {
        v.push(format!("host namespaces ({})", host_ns.join(", ")));
    }
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let name = |c: &Value| c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    let privileged: Vec<String> = containers
        .iter()
        .filter(|c| c.pointer("/securityContext/privileged") == Some(&json!(true)))
        .map(|c| format!("{:?}", name(c)))
        .collect();
    if !privileged.is_empty() {
        v.push(format!(
            "privileged (container {} must not set securityContext.privileged=true)",
            privileged.join(", ")
        ));
    }
    let mut caps = Vec::new();
    for c in &containers {
        for cap in c.pointer("/securityContext/capabilities/add").and_then(Value::as_array).into_iter().flatten() {
            let cap = cap.as_str().unwrap_or_default();
            if !BASELINE_CAPABILITIES.contains(&cap) {
                caps.push(format!("container {:?} adds {cap:?}", name(c)));
            }
        }
    }
    if !caps.is_empty() {
        v.push(format!("non-default capabilities ({})", caps.join(", ")));
    }
    let host_paths: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|vol| vol.get("hostPath").is_some())
        .map(|vol| format!("{:?}", vol.get("name").and_then(Value::as_str).unwrap_or_default()))
        .collect();
    if !host_paths.is_empty() {
        v.push(format!("hostPath volumes (volume {})", host_paths.join(", ")));
    }
    let host_ports: Vec<String> = containers
        .iter()
        .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
        .filter_map(|p| p.get("hostPort").and_then(Value::as_i64).filter(|p| *p != 0))
        .map(|p| p.to_string())
        .collect();
    if !host_ports.is_empty() {
        v.push(format!("hostPort (hostPorts {})", host_ports.join(", ")));
    }
    v
}

/// The enforced Pod Security level of a namespace object, if any.
pub fn enforced_level(namespace: &Value) -> Option<&str> {
    namespace
        .pointer("/metadata/labels/pod-security.kubernetes.io~1enforce")
        .and_then(Value::as_str)
        .filter(|l| *l != "privileged")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("100m"), Some(100));
        assert_eq!(parse_quantity("1"), Some(1000));
        assert_eq!(parse_quantity("0.5"), Some(500));
        assert_eq!(parse_quantity("64Mi"), Some(64 * 1024 * 1024 * 1000));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000_000));
        assert_eq!(parse_quantity("2e3"), Some(2_000_000));
        assert_eq!(parse_quantity("1.5Gi"), Some(1536 * 1024 * 1024 * 1000));
        assert_eq!(parse_quantity("abc"), None);
        assert_eq!(format_quantity(64 * 1024 * 1024 * 1000, "requests.memory"), "64Mi");
        assert_eq!(format_quantity(250, "requests.cpu"), "250m");
    }

    #[test]
    fn quota_counts_existing_pods_and_names_what_is_exceeded() {
        let quota = json!({"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1"}}});
        let pod = |cpu: &str| json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}});
        let status = check_quota(&quota, &[pod("400m")], &pod("500m")).unwrap();
        assert_eq!(status["used"]["requests.cpu"], "900m");
        assert_eq!(status["used"]["pods"], "2");
        let err = check_quota(&quota, &[pod("400m"), pod("100m")], &pod("100m")).unwrap_err().to_string();
        assert!(err.contains("exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"), "{err}");
        let err = check_quota(&quota, &[pod("800m")], &pod("300m")).unwrap_err().to_string();
        assert!(
            err.contains("requested: requests.cpu=300m, used: requests.cpu=800m, limited: requests.cpu=1"),
            "{err}"
        );
        let done = json!({"spec": {"containers": []}, "status": {"phase": "Succeeded"}});
        assert!(check_quota(&quota, &[done.clone(), done], &pod("100m")).is_ok(), "finished pods do not count");
    }

    #[test]
    fn baseline_refuses_privilege_host_access_and_extra_capabilities() {
        let pod = json!({"spec": {"hostNetwork": true, "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}, "ports": [{"containerPort": 80, "hostPort": 8080}]}]}});
        let v = baseline_violations(&pod);
        assert_eq!(v.len(), 5, "{v:?}");
        assert!(v[0].starts_with("host namespaces (hostNetwork=true)"));
        assert!(v.iter().any(|x| x.contains("adds \"NET_ADMIN\"") && !x.contains("CHOWN")));
        assert!(baseline_violations(&json!({"spec": {"containers": [{"name": "c"}]}})).is_empty());
    }
}
