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
pub fn check_quota<'a>(
    quota: &Value,
    existing: impl IntoIterator<Item = &'a Value>,
    new_pod: &Value,
) -> Result<Value, ApiError> {
    let hard: BTreeMap<String, String> = quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default();
    let requested = pod_usage(new_pod);
    let mut used: BTreeMap<String, i128> = BTreeMap::new();
    for pod in existing.into_iter().filter(|p| counts(p)) {
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

/// Kubernetes' words for what a pod update may change.
/// A CertificateSigningRequest says who asked for it as the API saw the caller, whatever the
/// caller wrote there (Kubernetes sets `spec.username`, `uid` and `groups` the same way): the
/// approver decides on it.
pub fn stamp_requester(info: &crate::kinds::KindInfo, obj: &mut Value, user: &crate::auth::User) {
    if info.kind != "CertificateSigningRequest" || !obj.is_object() {
        return;
    }
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    obj["spec"]["username"] = json!(user.name);
    obj["spec"]["groups"] = json!(user.groups);
    obj["spec"]["uid"] = json!("");
}

/// A CertificateSigningRequest's spec never changes after it is made (what was approved is
/// what gets signed).
pub fn csr_update_allowed(old: &Value, new: &Value) -> Result<(), crate::error::FieldError> {
    if old.get("spec") == new.get("spec") {
        Ok(())
    } else {
        Err(crate::error::FieldError::forbidden("spec", "field is immutable"))
    }
}

/// Kubernetes' words for a Node update that moves its pod range.
pub const NODE_CIDR_FORBIDDEN: &str = "node updates may not change podCIDR except from \"\" to valid";

/// A Node's pod range is set once (by its node daemon or the node IPAM controller), never
/// changed: pods and routes on every machine use it.
pub fn node_update_allowed(old: &Value, new: &Value) -> Result<(), crate::error::FieldError> {
    let cidrs = |node: &Value| -> Vec<String> {
        let spec = node.get("spec");
        let list: Vec<String> = spec
            .and_then(|s| s.get("podCIDRs"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
            .unwrap_or_default();
        match spec.and_then(|s| s.get("podCIDR")).and_then(Value::as_str) {
            Some(one) if list.is_empty() && !one.is_empty() => vec![one.to_string()],
            _ => list,
        }
    };
    let (was, now) = (cidrs(old), cidrs(new));
    if was.is_empty() || was == now {
        Ok(())
    } else {
        Err(crate::error::FieldError::forbidden("spec.podCIDRs", NODE_CIDR_FORBIDDEN))
    }
}

pub const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,\
`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing \
tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Kubernetes' pod update rules: a pod's spec is fixed once created, but for the container
/// images, a new or shorter `activeDeadlineSeconds`, added tolerations, and a negative grace
/// period set to 1. `old` and `new` are the stored and the defaulted incoming pod.
pub fn pod_update_allowed(old: &Value, new: &Value) -> Result<(), crate::error::FieldError> {
    use skiff_proto::api::PodSpec;
    let spec = |pod: &Value| -> Result<PodSpec, crate::error::FieldError> {
        serde_json::from_value(pod.get("spec").cloned().unwrap_or(json!({})))
            .map_err(|e| crate::error::FieldError::invalid("spec", "", e.to_string()))
    };
    let (old, mut new) = (spec(old)?, spec(new)?);
    // Mask every change the rules allow; what is left must be no change at all.
    for (was, now) in [(&old.containers, &mut new.containers), (&old.init_containers, &mut new.init_containers)] {
        if was.len() == now.len() {
            for (w, n) in was.iter().zip(now.iter_mut()) {
                n.image.clone_from(&w.image);
            }
        }
    }
    if let Some(deadline) = new.active_deadline_seconds {
        if deadline > 0 && old.active_deadline_seconds.is_none_or(|o| deadline <= o) {
            new.active_deadline_seconds = old.active_deadline_seconds;
        }
    }
    if old.tolerations.iter().all(|t| new.tolerations.contains(t)) && new.tolerations.len() >= old.tolerations.len() {
        new.tolerations.clone_from(&old.tolerations);
    }
    if old.termination_grace_period_seconds.is_some_and(|g| g < 0) && new.termination_grace_period_seconds == Some(1) {
        new.termination_grace_period_seconds = old.termination_grace_period_seconds;
    }
    // Scheduling gates may only be removed; while a pod is gated its nodeSelector may gain
    // entries (Kubernetes' mutable scheduling directives).
    if let Some(added) = new.scheduling_gates.iter().find(|g| !old.scheduling_gates.contains(g)) {
        return Err(crate::error::FieldError::forbidden(
            "spec.schedulingGates",
            format!("only deletion is allowed, but found new scheduling gate '{}'", added.name),
        ));
    }
    let gated = !old.scheduling_gates.is_empty();
    new.scheduling_gates.clone_from(&old.scheduling_gates);
    if gated && old.node_selector.iter().all(|(k, v)| new.node_selector.get(k) == Some(v)) {
        new.node_selector.clone_from(&old.node_selector);
    }
    if new == old {
        Ok(())
    } else {
        Err(crate::error::FieldError::forbidden("spec", POD_UPDATE_FORBIDDEN))
    }
}

/// Whether a pod update is exempt from Pod Security checks (Kubernetes: it changes nothing
/// but metadata, `activeDeadlineSeconds` and tolerations).
pub fn pod_security_exempt_update(old: &Value, new: &Value) -> bool {
    let rest = |pod: &Value| {
        let mut spec = pod.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(s) = spec.as_object_mut() {
            s.remove("activeDeadlineSeconds");
            s.remove("tolerations");
        }
        spec
    };
    rest(old) == rest(new)
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

/// Refuses `pod` if it breaks the Pod Security level `namespace` enforces.
pub fn pod_security(pod: &Value, namespace: &Value) -> Result<(), ApiError> {
    let Some(level) = enforced_level(namespace) else { return Ok(()) };
    let violations = baseline_violations(pod);
    if violations.is_empty() {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "pods {:?} is forbidden: violates PodSecurity \"{level}:latest\": {}",
        crate::object::name(pod),
        violations.join(", ")
    )))
}

/// The enforced Pod Security level of a namespace object, if any.
fn enforced_level(namespace: &Value) -> Option<&str> {
    namespace
        .pointer("/metadata/labels/pod-security.kubernetes.io~1enforce")
        .and_then(Value::as_str)
        .filter(|l| *l != "privileged")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn a_pod_update_may_change_images_deadlines_and_add_tolerations_only() {
        let c = |image: &str| json!({"name": "c", "image": image});
        let old = pod(json!({"containers": [c("busybox:1")], "activeDeadlineSeconds": 60,
            "tolerations": [{"key": "a", "operator": "Exists"}]}));
        let ok = |new: Value| assert!(pod_update_allowed(&old, &pod(new.clone())).is_ok(), "{new}");
        let refused = |new: Value| {
            let err = pod_update_allowed(&old, &pod(new.clone())).expect_err(&new.to_string());
            assert_eq!(err.path, "spec");
            assert!(err.to_string().contains("pod updates may not change fields"), "{err}");
        };
        let tol = json!([{"key": "a", "operator": "Exists"}]);
        ok(json!({"containers": [c("busybox:2")], "activeDeadlineSeconds": 60, "tolerations": tol}));
        ok(json!({"containers": [c("busybox:1")], "activeDeadlineSeconds": 30, "tolerations": tol}));
        ok(json!({"containers": [c("busybox:1")], "activeDeadlineSeconds": 60,
            "tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}]}));
        refused(json!({"containers": [c("busybox:1")], "activeDeadlineSeconds": 90, "tolerations": tol}));
        refused(json!({"containers": [c("busybox:1")], "activeDeadlineSeconds": 60, "tolerations": []}));
        refused(json!({"containers": [c("busybox:1")], "activeDeadlineSeconds": 60, "tolerations": tol,
            "hostNetwork": true}));
        refused(json!({"containers": [{"name": "c", "image": "busybox:1", "securityContext": {"privileged": true}}],
            "activeDeadlineSeconds": 60, "tolerations": tol}));
        refused(json!({"containers": [c("busybox:1")], "activeDeadlineSeconds": 60, "tolerations": tol,
            "nodeName": "elsewhere"}));
        refused(
            json!({"containers": [c("busybox:1"), c("busybox:1")], "activeDeadlineSeconds": 60, "tolerations": tol}),
        );
    }

    #[test]
    fn pod_security_skips_updates_of_metadata_deadlines_and_tolerations_only() {
        let old = pod(json!({"containers": [{"name": "c", "image": "busybox:1"}]}));
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        relabelled["spec"]["tolerations"] = json!([{"key": "a", "operator": "Exists"}]);
        assert!(pod_security_exempt_update(&old, &relabelled));
        let reimaged = pod(json!({"containers": [{"name": "c", "image": "busybox:2"}]}));
        assert!(!pod_security_exempt_update(&old, &reimaged));
    }

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
