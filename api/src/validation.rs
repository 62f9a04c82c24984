//! Validation with Kubernetes' rules. Every error names the field path; all errors of an object
//! are reported together.

use crate::error::FieldError;
use crate::kinds::KindInfo;
use crate::selector::{labels_of, LabelSelector};
use serde_json::{json, Value};
use std::collections::BTreeSet;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
     '-', and must start and end with an alphanumeric character";
pub(crate) const DNS1123_SUBDOMAIN_MSG: &str =
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
     characters, '-' or '.', and must start and end with an alphanumeric character";

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && !s.is_empty() && s.split('.').all(is_dns1123_label)
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
                                  start and end with an alphanumeric character";

fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

struct V {
    errs: Vec<FieldError>,
}

impl V {
    fn push(&mut self, e: FieldError) {
        self.errs.push(e);
    }

    fn one_of(&mut self, obj: &Value, path: &str, field: &str, allowed: &[&str]) {
        if let Some(v) = obj.get(field).and_then(Value::as_str) {
            if !allowed.contains(&v) {
                self.push(FieldError::not_supported(format!("{path}.{field}"), v, allowed));
            }
        }
    }

    fn port(&mut self, path: String, v: Option<&Value>, required: bool) {
        match v.and_then(Value::as_i64) {
            Some(p) if (1..=65535).contains(&p) => {}
            Some(p) => self.push(FieldError::invalid(path, p, "must be between 1 and 65535, inclusive")),
            None if required => self.push(FieldError::required(path, "")),
            None => {}
        }
    }

    fn labels(&mut self, path: &str, obj: &Value) {
        for (k, v) in obj.as_object().into_iter().flatten() {
            if !is_label_key(k) {
                self.push(FieldError::invalid(path, k, QUALIFIED_NAME_MSG));
            }
            if !v.as_str().is_some_and(is_label_value) {
                self.push(FieldError::invalid(path, v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63)"));
            }
        }
    }
}

/// Why `name` cannot be one segment of a URL path (Kubernetes' `ValidatePathSegmentName`).
fn path_segment_problems(name: &str) -> Vec<&'static str> {
    match name {
        "." => vec!["may not be '.'"],
        ".." => vec!["may not be '..'"],
        _ => [('/', "may not contain '/'"), ('%', "may not contain '%'")]
            .into_iter()
            .filter(|(c, _)| name.contains(*c))
            .map(|(_, why)| why)
            .collect(),
    }
}

/// Validates an object of `info`'s kind (already defaulted). `name` may be empty when the
/// object uses `generateName`.
pub fn validate(info: &KindInfo, obj: &Value) -> Vec<FieldError> {
    let mut v = V { errs: Vec::new() };
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    let generate = meta.get("generateName").and_then(Value::as_str).unwrap_or_default();
    let label_only = matches!(info.kind, "Namespace" | "Service");
    if name.is_empty() && generate.is_empty() {
        v.push(FieldError::required("metadata.name", "name or generateName is required"));
    } else if matches!(info.kind, "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding") {
        // RBAC names are path segments (`system:controller:…`), as Kubernetes checks them.
        for why in path_segment_problems(name) {
            v.push(FieldError::invalid("metadata.name", name, why));
        }
    } else if !name.is_empty() {
        let ok = if label_only { is_dns1123_label(name) } else { is_dns1123_subdomain(name) };
        if !ok {
            v.push(FieldError::invalid(
                "metadata.name",
                name,
                if label_only { DNS1123_LABEL_MSG } else { DNS1123_SUBDOMAIN_MSG },
            ));
        }
    }
    if let Some(l) = meta.get("labels") {
        v.labels("metadata.labels", l);
    }
    match info.kind {
        "PriorityClass" => {
            if name.starts_with("system-") {
                v.push(FieldError::invalid(
                    "metadata.name",
                    name,
                    "priority class names with 'system-' prefix are reserved",
                ));
            }
            let value = obj.get("value").and_then(Value::as_i64).unwrap_or(0);
            if value > 1_000_000_000 {
                v.push(FieldError::forbidden(
                    "value",
                    "maximum allowed value of a user defined priority is 1000000000",
                ));
            }
            let policies = ["PreemptLowerPriority", "Never"];
            if let Some(p) = obj.get("preemptionPolicy").and_then(Value::as_str).filter(|p| !policies.contains(p)) {
                v.push(FieldError::not_supported("preemptionPolicy", p, &policies));
            }
        }
        "Pod" => {
            let spec = obj.get("spec").unwrap_or(&Value::Null);
            pod_spec(&mut v, spec, "spec", &[]);
            scheduling_gates(&mut v, spec);
            pod_os(&mut v, spec);
        }
        "RuntimeClass" => runtime_class(&mut v, obj),
        "CustomResourceDefinition" => v.errs.extend(crate::crd::validate(obj)),
        "PodDisruptionBudget" => disruption_budget(&mut v, obj.get("spec").unwrap_or(&Value::Null)),
        "LimitRange" => limit_range(&mut v, obj.get("spec").unwrap_or(&Value::Null)),
        "EndpointSlice" => {
            if let Ok(slice) = serde_json::from_value(obj.clone()) {
                endpoint_slice(&mut v, &slice)
            }
        }
        "NetworkPolicy" => match obj.get("spec").map(|s| serde_json::from_value(s.clone())) {
            Some(Ok(spec)) => network_policy(&mut v, &spec),
            Some(Err(_)) => {}
            None => v.push(FieldError::required("spec", "")),
        },
        "HorizontalPodAutoscaler" => {
            if let Some(spec) = obj.get("spec").and_then(|s| serde_json::from_value(s.clone()).ok()) {
                autoscaler(&mut v, &spec)
            }
        }
        "Deployment" | "ReplicaSet" | "ReplicationController" | "DaemonSet" | "StatefulSet" => {
            workload(&mut v, info.kind, obj)
        }
        "Job" => {
            if let Some(t) = obj.pointer("/spec/template/spec") {
                pod_spec(&mut v, t, "spec.template.spec", &[]);
                job_restart(&mut v, t, "spec.template.spec");
            } else {
                v.push(FieldError::required("spec.template", ""));
            }
        }
        "CronJob" => {
            if obj.pointer("/spec/schedule").and_then(Value::as_str).unwrap_or_default().trim().is_empty() {
                v.push(FieldError::required("spec.schedule", ""));
            }
            let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
            v.one_of(&spec, "spec", "concurrencyPolicy", &["Allow", "Forbid", "Replace"]);
            match obj.pointer("/spec/jobTemplate/spec/template/spec") {
                Some(t) => {
                    pod_spec(&mut v, t, "spec.jobTemplate.spec.template.spec", &[]);
                    job_restart(&mut v, t, "spec.jobTemplate.spec.template.spec");
                }
                None => v.push(FieldError::required("spec.jobTemplate.spec.template", "")),
            }
        }
        "Service" => service(&mut v, obj),
        "IngressClass" => {
            let controller = obj.pointer("/spec/controller").and_then(Value::as_str).unwrap_or_default();
            match controller.split_once('/') {
                _ if controller.is_empty() => v.push(FieldError::required("spec.controller", "")),
                Some((domain, path)) if is_dns1123_subdomain(domain) && !path.is_empty() && controller.len() <= 250 => {
                }
                _ => v.push(FieldError::invalid(
                    "spec.controller",
                    controller,
                    "must be a domain-prefixed path (such as \"acme.io/foo\")",
                )),
            }
        }
        "Node" => node(&mut v, obj),
        "CertificateSigningRequest" => csr(&mut v, obj),
        "ConfigMap" | "Secret" => {
            for field in ["data", "binaryData", "stringData"] {
                for k in obj.get(field).and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k) {
                    let ok = !k.is_empty()
                        && k.len() <= 253
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                    if !ok {
                        v.push(FieldError::invalid(
                            format!("{field}[{k}]"),
                            k,
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    v.errs
}

/// Key usages a CertificateSigningRequest may ask for (certificates.k8s.io/v1).
const CSR_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// A CertificateSigningRequest: a PEM request whose signature verifies, a signer named as a
/// domain-prefixed path, known usages.
fn csr(v: &mut V, obj: &Value) {
    use base64::Engine;
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match spec.get("request").and_then(Value::as_str).filter(|r| !r.is_empty()) {
        None => v.push(FieldError::required("spec.request", "a PEM CERTIFICATE REQUEST, base64-encoded")),
        Some(encoded) => {
            let checked = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("not base64: {e}"))
                .and_then(|pem| skiff_proto::cert::parse_request(&pem));
            if let Err(e) = checked {
                v.push(FieldError::invalid("spec.request", "<request>", e));
            }
        }
    }
    let signer = spec.get("signerName").and_then(Value::as_str).unwrap_or_default();
    match signer.split_once('/') {
        _ if signer.is_empty() => v.push(FieldError::required("spec.signerName", "")),
        Some((domain, path)) if is_dns1123_subdomain(domain) && !path.is_empty() => {}
        _ => v.push(FieldError::invalid(
            "spec.signerName",
            signer,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        )),
    }
    for (i, u) in spec.get("usages").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let u = u.as_str().unwrap_or_default();
        if !CSR_USAGES.contains(&u) {
            v.push(FieldError::not_supported(format!("spec.usages[{i}]"), u, CSR_USAGES));
        }
    }
    if spec.get("expirationSeconds").and_then(Value::as_i64).is_some_and(|s| s < 600) {
        v.push(FieldError::invalid(
            "spec.expirationSeconds",
            spec["expirationSeconds"].clone(),
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
}

/// A Node's pod ranges: CIDRs, at most one per address family, `podCIDR` the first of them.
fn node(v: &mut V, obj: &Value) {
    let cidrs: Vec<&str> = obj
        .pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut families = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        match c.parse::<ipnet::IpNet>() {
            Ok(net) => {
                let family = matches!(net, ipnet::IpNet::V4(_));
                if families.contains(&family) {
                    v.push(FieldError::invalid(
                        format!("spec.podCIDRs[{i}]"),
                        c,
                        "may specify no more than one CIDR for each IP family",
                    ));
                }
                families.push(family);
            }
            Err(_) => v.push(FieldError::invalid(
                format!("spec.podCIDRs[{i}]"),
                c,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            )),
        }
    }
    let one = obj.pointer("/spec/podCIDR").and_then(Value::as_str).unwrap_or_default();
    if !one.is_empty() && cidrs.first().is_some_and(|first| *first != one) {
        v.push(FieldError::invalid("spec.podCIDR", one, "must match the first element of spec.podCIDRs"));
    }
}

fn job_restart(v: &mut V, spec: &Value, path: &str) {
    match spec.get("restartPolicy").and_then(Value::as_str) {
        Some("OnFailure") | Some("Never") => {}
        other => v.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            other.unwrap_or(""),
            &["OnFailure", "Never"],
        )),
    }
}

fn workload(v: &mut V, kind: &str, obj: &Value) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64) {
        if r < 0 {
            v.push(FieldError::invalid("spec.replicas", r, "must be greater than or equal to 0"));
        }
    }
    let template_labels = labels_of(spec.get("template").unwrap_or(&Value::Null));
    // A ReplicationController's selector is a label map (required non-empty).
    let selector = match kind {
        "ReplicationController" => spec
            .get("selector")
            .filter(|m| m.as_object().is_some_and(|m| !m.is_empty()))
            .map(|m| json!({"matchLabels": m})),
        _ => spec.get("selector").cloned(),
    };
    match &selector {
        None => v.push(FieldError::required("spec.selector", "")),
        Some(sel) => match LabelSelector::from_object(sel) {
            Ok(s) if s.is_empty() => {
                v.push(FieldError::invalid("spec.selector", sel, "empty selector is invalid for deployment"))
            }
            Ok(s) if !s.matches(&template_labels) => v.push(FieldError::invalid(
                "spec.template.metadata.labels",
                &template_labels,
                "`selector` does not match template `labels`",
            )),
            Ok(_) => {}
            Err(e) => v.push(FieldError::invalid("spec.selector", sel, e.to_string())),
        },
    }
    match spec.pointer("/template/spec") {
        Some(t) => {
            // A StatefulSet's containers may mount its volumeClaimTemplates.
            let claims: Vec<String> = spec
                .get("volumeClaimTemplates")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str).map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            pod_spec(v, t, "spec.template.spec", &claims);
            if kind != "Job" && t.get("restartPolicy").and_then(Value::as_str) != Some("Always") {
                v.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    t.get("restartPolicy").and_then(Value::as_str).unwrap_or(""),
                    &["Always"],
                ));
            }
        }
        None => v.push(FieldError::required("spec.template", "")),
    }
    if kind == "Deployment" {
        v.one_of(spec.get("strategy").unwrap_or(&Value::Null), "spec.strategy", "type", &["RollingUpdate", "Recreate"]);
        let ru = spec.pointer("/strategy/rollingUpdate");
        let zero = |f: &str| ru.and_then(|r| r.get(f)).is_some_and(|x| x == 0 || x == "0" || x == "0%");
        if zero("maxSurge") && zero("maxUnavailable") {
            v.push(FieldError::invalid(
                "spec.strategy.rollingUpdate.maxUnavailable",
                0,
                "may not be 0 when `maxSurge` is 0",
            ));
        }
        for f in ["maxSurge", "maxUnavailable"] {
            if let Some(x) = ru.and_then(|r| r.get(f)) {
                int_or_percent(v, &format!("spec.strategy.rollingUpdate.{f}"), x);
            }
        }
    }
}

/// A non-negative int or a percentage of at most 100%, in Kubernetes' words
/// (`ValidatePositiveIntOrPercent` and `IsNotMoreThan100Percent`).
fn int_or_percent(v: &mut V, path: &str, x: &Value) {
    if let Some(n) = x.as_i64() {
        if n < 0 {
            v.push(FieldError::invalid(path, n, "must be greater than or equal to 0"));
        }
    } else if let Some(s) = x.as_str() {
        match s.strip_suffix('%').filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
            None => v.push(FieldError::invalid(
                path,
                s,
                "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', \
                 regex used for validation is '[0-9]+%')",
            )),
            Some(p) if p.parse::<u64>().map_or(true, |p| p > 100) => {
                v.push(FieldError::invalid(path, s, "must not be greater than 100%"))
            }
            Some(_) => {}
        }
    } else {
        v.push(FieldError::invalid(path, x, "must be an integer or percentage (e.g '5%')"));
    }
}

/// A LimitRange's items, as Kubernetes' `ValidateLimitRange` compares their bounds.
fn limit_range(v: &mut V, spec: &Value) {
    use skiff_proto::quantity::parse_quantity;
    for (i, item) in spec.get("limits").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("spec.limits[{i}]");
        let map = |f: &str| item.get(f).and_then(Value::as_object).cloned().unwrap_or_default();
        if item.get("type").and_then(Value::as_str) == Some("Pod") {
            for f in ["default", "defaultRequest"] {
                if !map(f).is_empty() {
                    v.push(FieldError::forbidden(format!("{path}.{f}"), "may not be specified when `type` is 'Pod'"));
                }
            }
        }
        let (min, max, default, request, ratio) =
            (map("min"), map("max"), map("default"), map("defaultRequest"), map("maxLimitRequestRatio"));
        let resources: std::collections::BTreeSet<&String> =
            [&min, &max, &default, &request, &ratio].into_iter().flat_map(|m| m.keys()).collect();
        for r in resources {
            let get = |m: &serde_json::Map<String, Value>| {
                let text = m.get(r).and_then(Value::as_str)?.to_string();
                Some((parse_quantity(&text)?, text))
            };
            let (min, max, default, request, ratio) = (get(&min), get(&max), get(&default), get(&request), get(&ratio));
            let mut bad = |field: &str, value: &str, why: String| {
                v.push(FieldError::invalid(format!("{path}.{field}[{r}]"), value, why))
            };
            if let (Some(lo), Some(hi)) = (&min, &max) {
                if lo.0 > hi.0 {
                    bad("min", &lo.1, format!("min value {} is greater than max value {}", lo.1, hi.1));
                }
            }
            if let Some(req) = &request {
                if let Some(lo) = min.as_ref().filter(|lo| lo.0 > req.0) {
                    bad(
                        "defaultRequest",
                        &req.1,
                        format!("min value {} is greater than default request value {}", lo.1, req.1),
                    );
                }
                if let Some(hi) = max.as_ref().filter(|hi| req.0 > hi.0) {
                    bad(
                        "defaultRequest",
                        &req.1,
                        format!("default request value {} is greater than max value {}", req.1, hi.1),
                    );
                }
                if let Some(d) = default.as_ref().filter(|d| req.0 > d.0) {
                    bad(
                        "defaultRequest",
                        &req.1,
                        format!("default request value {} is greater than default limit value {}", req.1, d.1),
                    );
                }
            }
            if let Some(d) = &default {
                if let Some(lo) = min.as_ref().filter(|lo| lo.0 > d.0) {
                    bad("default", &lo.1, format!("min value {} is greater than default value {}", lo.1, d.1));
                }
                if let Some(hi) = max.as_ref().filter(|hi| d.0 > hi.0) {
                    bad("default", &hi.1, format!("default value {} is greater than max value {}", d.1, hi.1));
                }
            }
            if let Some(ratio) = ratio.as_ref().filter(|q| q.0 < 1000) {
                bad("maxLimitRequestRatio", &ratio.1, format!("ratio {} is less than 1", ratio.1));
            }
        }
    }
}

/// A PodDisruptionBudget's spec, as Kubernetes' policy validation checks it.
fn disruption_budget(v: &mut V, spec: &Value) {
    let min = spec.get("minAvailable").filter(|x| !x.is_null());
    let max = spec.get("maxUnavailable").filter(|x| !x.is_null());
    if min.is_some() && max.is_some() {
        v.push(FieldError::invalid("spec", spec, "minAvailable and maxUnavailable cannot be both set"));
    }
    for (f, x) in [("minAvailable", min), ("maxUnavailable", max)] {
        if let Some(x) = x {
            int_or_percent(v, &format!("spec.{f}"), x);
        }
    }
    if let Some(sel) = spec.get("selector").filter(|s| !s.is_null()) {
        if let Err(e) = LabelSelector::from_object(sel) {
            v.push(FieldError::invalid("spec.selector", sel, e.to_string()));
        }
    }
    v.one_of(spec, "spec", "unhealthyPodEvictionPolicy", &["AlwaysAllow", "IfHealthyBudget"]);
}

/// Linux-only fields of a pod (`spec.…`) and of its containers' securityContext.
const LINUX_ONLY_POD: [&str; 11] = [
    "hostPID",
    "hostIPC",
    "shareProcessNamespace",
    "securityContext.seLinuxOptions",
    "securityContext.seccompProfile",
    "securityContext.fsGroup",
    "securityContext.fsGroupChangePolicy",
    "securityContext.sysctls",
    "securityContext.runAsUser",
    "securityContext.runAsGroup",
    "securityContext.supplementalGroups",
];
const LINUX_ONLY_CONTAINER: [&str; 9] = [
    "seLinuxOptions",
    "seccompProfile",
    "capabilities",
    "readOnlyRootFilesystem",
    "privileged",
    "allowPrivilegeEscalation",
    "procMount",
    "runAsUser",
    "runAsGroup",
];

/// A pod's `os`: a name, linux or windows; a windows pod sets none of the Linux-only fields,
/// as Kubernetes' `validateWindows` has it.
fn pod_os(v: &mut V, spec: &Value) {
    let Some(os) = spec.get("os").filter(|o| !o.is_null()) else { return };
    let name = os.get("name").and_then(Value::as_str).unwrap_or_default();
    match name {
        "" => return v.push(FieldError::required("spec.os.name", "")),
        "linux" => return,
        "windows" => {}
        other => return v.push(FieldError::not_supported("spec.os.name", other, &["linux", "windows"])),
    }
    let set = |value: Option<&Value>| value.is_some_and(|x| !x.is_null() && x != &Value::Bool(false));
    for field in LINUX_ONLY_POD {
        let pointer = format!("/{}", field.replace('.', "/"));
        if set(spec.pointer(&pointer)) {
            v.push(FieldError::forbidden(format!("spec.{field}"), "may not be set for a windows pod"));
        }
    }
    for list in ["initContainers", "containers"] {
        for (i, c) in spec.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
            for field in LINUX_ONLY_CONTAINER {
                if set(c.pointer(&format!("/securityContext/{field}"))) {
                    v.push(FieldError::forbidden(
                        format!("spec.{list}[{i}].securityContext.{field}"),
                        "may not be set for a windows pod",
                    ));
                }
            }
        }
    }
}

/// A pod's scheduling gates: qualified names, each once, and no node named while any is left.
fn scheduling_gates(v: &mut V, spec: &Value) {
    let gates: Vec<&str> = spec
        .get("schedulingGates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|g| g.get("name").and_then(Value::as_str).unwrap_or_default())
        .collect();
    for (i, name) in gates.iter().enumerate() {
        if !is_label_key(name) {
            v.push(FieldError::invalid(
                format!("spec.schedulingGates[{i}].name"),
                name,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
                 alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is \
                 '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ));
        }
        if gates[..i].contains(name) {
            v.push(FieldError::duplicate(format!("spec.schedulingGates[{i}].name"), name));
        }
    }
    let node = spec.get("nodeName").and_then(Value::as_str).unwrap_or_default();
    if !gates.is_empty() && !node.is_empty() {
        v.push(FieldError::forbidden("spec.nodeName", "cannot be set until all schedulingGates have been cleared"));
    }
}

/// An EndpointSlice, as Kubernetes' discovery validation checks it.
fn endpoint_slice(v: &mut V, slice: &skiff_proto::api::EndpointSlice) {
    let types = ["IPv4", "IPv6", "FQDN"];
    if slice.address_type.is_empty() {
        v.push(FieldError::required("addressType", ""));
    } else if !types.contains(&slice.address_type.as_str()) {
        v.push(FieldError::not_supported("addressType", &slice.address_type, &types));
    }
    if slice.endpoints.len() > 1000 {
        v.push(FieldError::invalid("endpoints", slice.endpoints.len(), "must have at most 1000 items"));
    }
    for (i, e) in slice.endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        if e.addresses.is_empty() {
            v.push(FieldError::required(format!("{path}.addresses"), "must contain at least 1 address"));
        } else if e.addresses.len() > 100 {
            v.push(FieldError::invalid(format!("{path}.addresses"), e.addresses.len(), "must have at most 100 items"));
        }
        for (j, a) in e.addresses.iter().enumerate() {
            let bad = match slice.address_type.as_str() {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_err().then_some("must be a valid IPv4 address"),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_err().then_some("must be a valid IPv6 address"),
                "FQDN" => (!is_dns1123_subdomain(a)).then_some(DNS1123_SUBDOMAIN_MSG),
                _ => None,
            };
            if let Some(why) = bad {
                v.push(FieldError::invalid(format!("{path}.addresses[{j}]"), a, why));
            }
        }
        if !e.hostname.is_empty() && !is_dns1123_label(&e.hostname) {
            v.push(FieldError::invalid(format!("{path}.hostname"), &e.hostname, DNS1123_LABEL_MSG));
        }
        if !e.node_name.is_empty() && !is_dns1123_subdomain(&e.node_name) {
            v.push(FieldError::invalid(format!("{path}.nodeName"), &e.node_name, DNS1123_SUBDOMAIN_MSG));
        }
    }
    if slice.ports.len() > 100 {
        v.push(FieldError::invalid("ports", slice.ports.len(), "must have at most 100 items"));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in slice.ports.iter().enumerate() {
        let path = format!("ports[{i}]");
        if !p.name.is_empty() && !is_dns1123_label(&p.name) {
            v.push(FieldError::invalid(format!("{path}.name"), &p.name, DNS1123_LABEL_MSG));
        }
        if !names.insert(p.name.as_str()) {
            v.push(FieldError::duplicate(format!("{path}.name"), &p.name));
        }
        let protocols = ["SCTP", "TCP", "UDP"];
        if p.protocol.is_empty() {
            v.push(FieldError::required(format!("{path}.protocol"), ""));
        } else if !protocols.contains(&p.protocol.as_str()) {
            v.push(FieldError::not_supported(format!("{path}.protocol"), &p.protocol, &protocols));
        }
        if let Some(port) = p.port.filter(|n| !(1..=65535).contains(n)) {
            v.push(FieldError::invalid(format!("{path}.port"), port, "must be between 1 and 65535, inclusive"));
        }
    }
}

/// An object reference's kind and name, as path segments.
fn object_reference(v: &mut V, path: &str, r: Option<&skiff_proto::api::CrossVersionObjectReference>) {
    let r = r.cloned().unwrap_or_default();
    for (field, value) in [("kind", &r.kind), ("name", &r.name)] {
        if value.is_empty() {
            v.push(FieldError::required(format!("{path}.{field}"), ""));
        }
        for why in path_segment_problems(value).into_iter().filter(|_| !value.is_empty()) {
            v.push(FieldError::invalid(format!("{path}.{field}"), value, why));
        }
    }
}

/// A HorizontalPodAutoscaler's spec, as Kubernetes' autoscaling/v2 validation checks it.
fn autoscaler(v: &mut V, spec: &skiff_proto::api::HorizontalPodAutoscalerSpec) {
    if let Some(min) = spec.min_replicas.filter(|m| *m < 1) {
        v.push(FieldError::invalid("spec.minReplicas", min, "must be greater than or equal to 1"));
    }
    if spec.max_replicas < 1 {
        v.push(FieldError::invalid("spec.maxReplicas", spec.max_replicas, "must be greater than 0"));
    }
    if spec.min_replicas.is_some_and(|min| spec.max_replicas < min) {
        v.push(FieldError::invalid(
            "spec.maxReplicas",
            spec.max_replicas,
            "must be greater than or equal to `minReplicas`",
        ));
    }
    object_reference(v, "spec.scaleTargetRef", spec.scale_target_ref.as_ref());
    for (i, m) in spec.metrics.iter().enumerate() {
        metric_spec(v, &format!("spec.metrics[{i}]"), m);
    }
    if let Some(b) = &spec.behavior {
        for (dir, rules) in [("scaleUp", &b.scale_up), ("scaleDown", &b.scale_down)] {
            if let Some(rules) = rules {
                scaling_rules(v, &format!("spec.behavior.{dir}"), rules);
            }
        }
    }
}

/// A NetworkPolicy's spec, as Kubernetes' `ValidateNetworkPolicySpec` checks it.
fn network_policy(v: &mut V, spec: &skiff_proto::api::NetworkPolicySpec) {
    selector(v, "spec.podSelector", spec.pod_selector.as_ref());
    let rules = spec.ingress.iter().map(|r| ("ingress", "from", &r.ports, &r.from));
    let rules = rules.enumerate().chain(spec.egress.iter().map(|r| ("egress", "to", &r.ports, &r.to)).enumerate());
    for (i, (direction, peers_field, ports, peers)) in rules {
        let path = format!("spec.{direction}[{i}]");
        for (j, port) in ports.iter().enumerate() {
            network_policy_port(v, &format!("{path}.ports[{j}]"), port);
        }
        for (j, peer) in peers.iter().enumerate() {
            network_policy_peer(v, &format!("{path}.{peers_field}[{j}]"), peer);
        }
    }
    const TYPES: [&str; 2] = ["Ingress", "Egress"];
    if spec.policy_types.len() > TYPES.len() {
        v.push(FieldError::invalid(
            "spec.policyTypes",
            &spec.policy_types,
            "may not specify more than two policyTypes",
        ));
        return;
    }
    for (i, t) in spec.policy_types.iter().enumerate() {
        if !TYPES.contains(&t.as_str()) {
            v.push(FieldError::not_supported(format!("spec.policyTypes[{i}]"), t, &TYPES));
        }
    }
}

/// A label selector, when one is given, as Kubernetes' `ValidateLabelSelector` checks it.
fn selector(v: &mut V, path: &str, sel: Option<&skiff_proto::api::LabelSelector>) {
    let Some(sel) = sel else { return };
    v.labels(&format!("{path}.matchLabels"), &json!(sel.match_labels));
    for (i, e) in sel.match_expressions.iter().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => v.push(FieldError::required(
                format!("{at}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !e.values.is_empty() => v.push(FieldError::forbidden(
                format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => v.push(FieldError::invalid(format!("{at}.operator"), other, "not a valid selector operator")),
        }
        if !is_label_key(&e.key) {
            v.push(FieldError::invalid(format!("{at}.key"), &e.key, QUALIFIED_NAME_MSG));
        }
    }
}

fn network_policy_port(v: &mut V, path: &str, port: &skiff_proto::api::NetworkPolicyPort) {
    const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
    if let Some(p) = port.protocol.as_deref().filter(|p| !PROTOCOLS.contains(p)) {
        v.push(FieldError::not_supported(format!("{path}.protocol"), p, &PROTOCOLS));
    }
    use skiff_proto::serde_util::IntOrString;
    let at_port = format!("{path}.port");
    match IntOrString::from_value(&port.port) {
        Some(IntOrString::Int(n)) => {
            port_or_name(v, &at_port, &port.port);
            if let Some(end) = port.end_port {
                if i64::from(end) < n {
                    v.push(FieldError::invalid(
                        format!("{path}.endPort"),
                        n,
                        "must be greater than or equal to `port`",
                    ));
                }
                v.port(format!("{path}.endPort"), Some(&json!(end)), false);
            }
        }
        Some(IntOrString::Str(_)) => {
            if let Some(end) = port.end_port {
                v.push(FieldError::invalid(
                    format!("{path}.endPort"),
                    end,
                    "may not be specified when `port` is non-numeric",
                ));
            }
            port_or_name(v, &at_port, &port.port);
        }
        None => {
            if let Some(end) = port.end_port {
                v.push(FieldError::invalid(
                    format!("{path}.endPort"),
                    end,
                    "may not be specified when `port` is not specified",
                ));
            }
        }
    }
}

/// Why `name` is not an IANA service name (Kubernetes' `IsValidPortName`).
fn port_name_problems(name: &str) -> Vec<&'static str> {
    let mut why = Vec::new();
    if name.len() > 15 {
        why.push("must be no more than 15 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        why.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if name.contains("--") {
        why.push("must not contain consecutive hyphens");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        why.push("must contain at least one letter (a-z)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        why.push("must not begin or end with a hyphen");
    }
    why
}

fn network_policy_peer(v: &mut V, path: &str, peer: &skiff_proto::api::NetworkPolicyPeer) {
    selector(v, &format!("{path}.podSelector"), peer.pod_selector.as_ref());
    selector(v, &format!("{path}.namespaceSelector"), peer.namespace_selector.as_ref());
    let given = [peer.pod_selector.is_some(), peer.namespace_selector.is_some(), peer.ip_block.is_some()];
    match (given.iter().filter(|g| **g).count(), &peer.ip_block) {
        (0, _) => v.push(FieldError::required(path, "must specify a peer")),
        (1, Some(block)) => ip_block(v, &format!("{path}.ipBlock"), block),
        (1, None) => {}
        (_, Some(_)) => v.push(FieldError::forbidden(path, "may not specify both ipBlock and another peer")),
        (_, None) => {}
    }
}

fn ip_block(v: &mut V, path: &str, block: &skiff_proto::api::IpBlock) {
    const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
    if block.cidr.is_empty() {
        v.push(FieldError::required(format!("{path}.cidr"), ""));
        return;
    }
    let Ok(cidr) = block.cidr.parse::<ipnet::IpNet>() else {
        v.push(FieldError::invalid(format!("{path}.cidr"), &block.cidr, CIDR_MSG));
        return;
    };
    for (i, except) in block.except.iter().enumerate() {
        let at = format!("{path}.except[{i}]");
        match except.parse::<ipnet::IpNet>() {
            Err(_) => v.push(FieldError::invalid(at, except, CIDR_MSG)),
            Ok(e) if !cidr.trunc().contains(&e.addr()) || e.prefix_len() <= cidr.prefix_len() => {
                v.push(FieldError::invalid(at, except, "must be a strict subset of `cidr`"))
            }
            Ok(_) => {}
        }
    }
}

/// One metric: its type names the one source that is set, and that source is complete.
fn metric_spec(v: &mut V, path: &str, m: &skiff_proto::api::MetricSpec) {
    const TYPES: [&str; 5] = ["Object", "Pods", "Resource", "External", "ContainerResource"];
    let present: Vec<(&str, &str)> = [
        ("object", "Object", m.object.is_some()),
        ("pods", "Pods", m.pods.is_some()),
        ("resource", "Resource", m.resource.is_some()),
        ("external", "External", m.external.is_some()),
        ("containerResource", "ContainerResource", m.container_resource.is_some()),
    ]
    .into_iter()
    .filter(|(_, _, set)| *set)
    .map(|(field, ty, _)| (field, ty))
    .collect();
    if m.r#type.is_empty() {
        v.push(FieldError::required(format!("{path}.type"), "must specify a metric source type"));
    } else if !TYPES.contains(&m.r#type.as_str()) {
        v.push(FieldError::not_supported(format!("{path}.type"), &m.r#type, &TYPES));
    } else if !present.iter().any(|(_, ty)| *ty == m.r#type) {
        let field = match m.r#type.as_str() {
            "ContainerResource" => "containerResource".to_string(),
            other => other.to_lowercase(),
        };
        v.push(FieldError::required(
            format!("{path}.{field}"),
            "must populate information for the given metric source",
        ));
    }
    for (field, ty) in &present {
        if *ty != m.r#type && present.len() > 1 {
            v.push(FieldError::forbidden(format!("{path}.{field}"), "must populate the given metric source only"));
        }
    }
    let target = |v: &mut V, p: String, t: &Option<skiff_proto::api::MetricTarget>| {
        let t = t.clone().unwrap_or_default();
        metric_target(v, &p, &t);
        t
    };
    let metric_name = |v: &mut V, p: String, id: &Option<skiff_proto::api::MetricIdentifier>| {
        if id.as_ref().is_none_or(|id| id.name.is_empty()) {
            v.push(FieldError::required(format!("{p}.metric.name"), "must specify a metric name"));
        }
    };
    if let Some(r) = &m.resource {
        let p = format!("{path}.resource");
        if r.name.is_empty() {
            v.push(FieldError::required(format!("{p}.name"), "must specify a resource name"));
        }
        let t = target(v, format!("{p}.target"), &r.target);
        utilization_or_value(v, &format!("{p}.target"), &t);
    }
    if let Some(r) = &m.container_resource {
        let p = format!("{path}.containerResource");
        if r.name.is_empty() {
            v.push(FieldError::required(format!("{p}.name"), "must specify a resource name"));
        }
        if r.container.is_empty() {
            v.push(FieldError::required(format!("{p}.container"), "must specify a container"));
        }
        let t = target(v, format!("{p}.target"), &r.target);
        utilization_or_value(v, &format!("{p}.target"), &t);
    }
    if let Some(pods) = &m.pods {
        let p = format!("{path}.pods");
        metric_name(v, p.clone(), &pods.metric);
        if target(v, format!("{p}.target"), &pods.target).average_value.is_empty() {
            v.push(FieldError::required(
                format!("{p}.target.averageValue"),
                "must specify a positive target averageValue",
            ));
        }
    }
    if let Some(o) = &m.object {
        let p = format!("{path}.object");
        object_reference(v, &format!("{p}.describedObject"), o.described_object.as_ref());
        metric_name(v, p.clone(), &o.metric);
        let t = target(v, format!("{p}.target"), &o.target);
        if t.value.is_empty() && t.average_value.is_empty() {
            v.push(FieldError::required(format!("{p}.target.value"), "must set either a target value or averageValue"));
        }
    }
    if let Some(e) = &m.external {
        let p = format!("{path}.external");
        metric_name(v, p.clone(), &e.metric);
        let t = target(v, format!("{p}.target"), &e.target);
        if t.value.is_empty() && t.average_value.is_empty() {
            v.push(FieldError::required(
                format!("{p}.target.value"),
                "must set either a target value for metric or a per-pod target",
            ));
        } else if !t.value.is_empty() && !t.average_value.is_empty() {
            v.push(FieldError::forbidden(
                format!("{p}.target.value"),
                "may not set both a target value for metric and a per-pod target",
            ));
        }
    }
}

/// A resource metric's target is a utilization or a raw average value, not both.
fn utilization_or_value(v: &mut V, path: &str, t: &skiff_proto::api::MetricTarget) {
    match (t.average_utilization.is_some(), !t.average_value.is_empty()) {
        (false, false) => v.push(FieldError::required(
            format!("{path}.averageUtilization"),
            "must set either a target raw value or a target utilization",
        )),
        (true, true) => v.push(FieldError::forbidden(
            format!("{path}.averageValue"),
            "may not set both a target raw value and a target utilization",
        )),
        _ => {}
    }
}

fn metric_target(v: &mut V, path: &str, t: &skiff_proto::api::MetricTarget) {
    if t.r#type.is_empty() {
        v.push(FieldError::required(format!("{path}.type"), "must specify a metric target type"));
    } else if !["Utilization", "Value", "AverageValue"].contains(&t.r#type.as_str()) {
        v.push(FieldError::invalid(
            format!("{path}.type"),
            &t.r#type,
            "must be either Utilization, Value, or AverageValue",
        ));
    }
    for (field, q) in [("value", &t.value), ("averageValue", &t.average_value)] {
        if !q.is_empty() && skiff_proto::quantity::parse_quantity(q).is_none_or(|n| n <= 0) {
            v.push(FieldError::invalid(format!("{path}.{field}"), q, "must be positive"));
        }
    }
    if let Some(u) = t.average_utilization.filter(|u| *u < 1) {
        v.push(FieldError::invalid(format!("{path}.averageUtilization"), u, "must be greater than 0"));
    }
}

/// One direction's scaling rules: a window of at most an hour, a known select policy, and
/// policies of a known type with positive values and periods of at most 30 minutes.
fn scaling_rules(v: &mut V, path: &str, rules: &skiff_proto::api::HpaScalingRules) {
    match rules.stabilization_window_seconds {
        Some(w) if w < 0 => v.push(FieldError::invalid(
            format!("{path}.stabilizationWindowSeconds"),
            w,
            "must be greater than or equal to zero",
        )),
        Some(w) if w > 3600 => v.push(FieldError::invalid(
            format!("{path}.stabilizationWindowSeconds"),
            w,
            "must be less than or equal to 3600",
        )),
        _ => {}
    }
    let selects = ["Disabled", "Max", "Min"];
    if !rules.select_policy.is_empty() && !selects.contains(&rules.select_policy.as_str()) {
        v.push(FieldError::not_supported(format!("{path}.selectPolicy"), &rules.select_policy, &selects));
    }
    if rules.policies.is_empty() {
        v.push(FieldError::required(format!("{path}.policies"), "must specify at least one Policy"));
    }
    for (i, p) in rules.policies.iter().enumerate() {
        let pp = format!("{path}.policies[{i}]");
        if !["Percent", "Pods"].contains(&p.r#type.as_str()) {
            v.push(FieldError::not_supported(format!("{pp}.type"), &p.r#type, &["Percent", "Pods"]));
        }
        if p.value <= 0 {
            v.push(FieldError::invalid(format!("{pp}.value"), p.value, "must be greater than zero"));
        }
        if p.period_seconds <= 0 {
            v.push(FieldError::invalid(format!("{pp}.periodSeconds"), p.period_seconds, "must be greater than zero"));
        } else if p.period_seconds > 1800 {
            v.push(FieldError::invalid(
                format!("{pp}.periodSeconds"),
                p.period_seconds,
                "must be less than or equal to 1800",
            ));
        }
    }
}

/// `dnsPolicy`, `dnsConfig` and `hostAliases`, with Kubernetes' limits.
fn dns(v: &mut V, spec: &Value, path: &str) {
    v.one_of(spec, path, "dnsPolicy", &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"]);
    let config = spec.get("dnsConfig").unwrap_or(&Value::Null);
    let strings = |field: &str| -> Vec<String> {
        config
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    };
    let (servers, searches) = (strings("nameservers"), strings("searches"));
    let cp = format!("{path}.dnsConfig");
    if spec.get("dnsPolicy").and_then(Value::as_str) == Some("None") && servers.is_empty() {
        v.push(FieldError::required(
            format!("{cp}.nameservers"),
            "must provide at least one DNS nameserver when dnsPolicy is None",
        ));
    }
    if servers.len() > 3 {
        v.push(FieldError::invalid(
            format!("{cp}.nameservers"),
            servers.join(","),
            "must not have more than 3 nameservers",
        ));
    }
    for (i, ns) in servers.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            v.push(FieldError::invalid(format!("{cp}.nameservers[{i}]"), ns.as_str(), "must be a valid IP address"));
        }
    }
    if searches.len() > 32 {
        v.push(FieldError::invalid(
            format!("{cp}.searches"),
            searches.len() as i64,
            "must not have more than 32 search paths",
        ));
    }
    for (i, s) in searches.iter().enumerate() {
        if !is_dns1123_subdomain(s.trim_end_matches('.')) {
            v.push(FieldError::invalid(format!("{cp}.searches[{i}]"), s.as_str(), DNS1123_SUBDOMAIN_MSG));
        }
    }
    for (i, o) in config.get("options").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if o.get("name").and_then(Value::as_str).unwrap_or_default().is_empty() {
            v.push(FieldError::required(format!("{cp}.options[{i}].name"), "must not be empty"));
        }
    }
    for (i, a) in spec.get("hostAliases").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let ap = format!("{path}.hostAliases[{i}]");
        let ip = a.get("ip").and_then(Value::as_str).unwrap_or_default();
        if ip.parse::<std::net::IpAddr>().is_err() {
            v.push(FieldError::invalid(format!("{ap}.ip"), ip, "must be a valid IP address"));
        }
        for (j, h) in a.get("hostnames").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let h = h.as_str().unwrap_or_default();
            if !is_dns1123_subdomain(h) {
                v.push(FieldError::invalid(format!("{ap}.hostnames[{j}]"), h, DNS1123_SUBDOMAIN_MSG));
            }
        }
    }
}

fn pod_spec(v: &mut V, spec: &Value, path: &str, claim_templates: &[String]) {
    if spec.is_null() {
        v.push(FieldError::required(path, ""));
        return;
    }
    v.one_of(spec, path, "restartPolicy", &["Always", "OnFailure", "Never"]);
    dns(v, spec, path);
    let mut volumes: BTreeSet<String> = claim_templates.iter().cloned().collect();
    for (i, vol) in spec.get("volumes").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let n = vol.get("name").and_then(Value::as_str).unwrap_or_default();
        if !is_dns1123_label(n) {
            v.push(FieldError::invalid(format!("{path}.volumes[{i}].name"), n, DNS1123_LABEL_MSG));
        } else if !volumes.insert(n.to_string()) {
            v.push(FieldError::duplicate(format!("{path}.volumes[{i}].name"), n));
        }
        if let Ok(typed) = serde_json::from_value::<skiff_proto::api::Volume>(vol.clone()) {
            downward_items(v, &format!("{path}.volumes[{i}]"), &typed);
        }
    }
    let containers = spec.get("containers").and_then(Value::as_array).cloned().unwrap_or_default();
    if containers.is_empty() {
        v.push(FieldError::required(format!("{path}.containers"), "a pod needs at least one container"));
    }
    let mut names = BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let cp = format!("{path}.{list}[{i}]");
            let n = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if n.is_empty() {
                v.push(FieldError::required(format!("{cp}.name"), ""));
            } else if !is_dns1123_label(n) {
                v.push(FieldError::invalid(format!("{cp}.name"), n, DNS1123_LABEL_MSG));
            } else if !names.insert(n.to_string()) {
                v.push(FieldError::duplicate(format!("{cp}.name"), n));
            }
            if c.get("image").and_then(Value::as_str).unwrap_or_default().trim().is_empty() {
                v.push(FieldError::required(format!("{cp}.image"), ""));
            }
            v.one_of(c, &cp, "imagePullPolicy", &["Always", "IfNotPresent", "Never"]);
            // A container's own restartPolicy makes an init container a sidecar; nothing else.
            match c.get("restartPolicy").and_then(Value::as_str).filter(|p| !p.is_empty()) {
                Some(_) if list == "containers" => v.push(FieldError::forbidden(
                    format!("{cp}.restartPolicy"),
                    "may not be set for non-init containers",
                )),
                Some(p) if p != "Always" => {
                    v.push(FieldError::not_supported(format!("{cp}.restartPolicy"), p, &["Always"]))
                }
                _ => {}
            }
            if let Ok(typed) = serde_json::from_value::<skiff_proto::api::Container>(c.clone()) {
                container_env(v, &cp, &typed);
                container_probes(v, &cp, &typed);
            }
            let mut port_names = BTreeSet::new();
            for (j, p) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                v.port(format!("{cp}.ports[{j}].containerPort"), p.get("containerPort"), true);
                v.port(format!("{cp}.ports[{j}].hostPort"), p.get("hostPort"), false);
                v.one_of(p, &format!("{cp}.ports[{j}]"), "protocol", &["TCP", "UDP", "SCTP"]);
                if let Some(pn) = p.get("name").and_then(Value::as_str) {
                    if !port_names.insert(pn.to_string()) {
                        v.push(FieldError::duplicate(format!("{cp}.ports[{j}].name"), pn));
                    }
                }
            }
            for (j, m) in c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let mn = m.get("name").and_then(Value::as_str).unwrap_or_default();
                if !volumes.contains(mn) {
                    v.push(FieldError::invalid(
                        format!("{cp}.volumeMounts[{j}].name"),
                        mn,
                        "not found in the pod's volumes",
                    ));
                }
                if m.get("mountPath").and_then(Value::as_str).unwrap_or_default().is_empty() {
                    v.push(FieldError::required(format!("{cp}.volumeMounts[{j}].mountPath"), ""));
                }
            }
        }
    }
    if let Some(a) = spec.get("affinity").and_then(|a| serde_json::from_value(a.clone()).ok()) {
        pod_affinity(v, &format!("{path}.affinity"), &a);
    }
    let spread: Vec<skiff_proto::api::TopologySpreadConstraint> =
        spec.get("topologySpreadConstraints").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
    for (i, c) in spread.iter().enumerate() {
        let cp = format!("{path}.topologySpreadConstraints[{i}]");
        if c.max_skew <= 0 {
            v.push(FieldError::invalid(format!("{cp}.maxSkew"), c.max_skew, "must be greater than zero"));
        }
        if c.topology_key.is_empty() {
            v.push(FieldError::required(format!("{cp}.topologyKey"), "can not be empty"));
        }
        if !matches!(c.when_unsatisfiable.as_str(), "DoNotSchedule" | "ScheduleAnyway") {
            let supported = ["DoNotSchedule", "ScheduleAnyway"];
            v.push(FieldError::not_supported(format!("{cp}.whenUnsatisfiable"), &c.when_unsatisfiable, &supported));
        }
        if c.min_domains.is_some_and(|m| m <= 0) {
            v.push(FieldError::invalid(format!("{cp}.minDomains"), c.min_domains, "must be greater than zero"));
        }
    }
    tolerations(v, &format!("{path}.tolerations"), spec.get("tolerations"));
}

fn tolerations(v: &mut V, path: &str, list: Option<&Value>) {
    for (i, t) in list.and_then(Value::as_array).into_iter().flatten().enumerate() {
        let tp = format!("{path}[{i}]");
        v.one_of(t, &tp, "operator", &["Equal", "Exists"]);
        v.one_of(t, &tp, "effect", &["NoSchedule", "PreferNoSchedule", "NoExecute"]);
    }
}

/// A RuntimeClass: its handler a DNS label, its overhead non-negative quantities, its
/// scheduling a valid node selector and tolerations (Kubernetes' `ValidateRuntimeClass`).
fn runtime_class(v: &mut V, obj: &Value) {
    let handler = obj.get("handler").and_then(Value::as_str).unwrap_or_default();
    if !is_dns1123_label(handler) {
        v.push(FieldError::invalid("handler", handler, DNS1123_LABEL_MSG));
    }
    for (name, q) in obj.pointer("/overhead/podFixed").and_then(Value::as_object).into_iter().flatten() {
        let text = q.as_str().map(String::from).unwrap_or_else(|| q.to_string());
        if skiff_proto::quantity::parse_quantity(&text).is_none_or(|n| n < 0) {
            v.push(FieldError::invalid(
                format!("overhead.podFixed[{name}]"),
                &text,
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(selector) = obj.pointer("/scheduling/nodeSelector") {
        v.labels("scheduling.nodeSelector", selector);
    }
    tolerations(v, "scheduling.tolerations", obj.pointer("/scheduling/tolerations"));
}

/// Inter-pod affinity terms as Kubernetes checks them: a topology key on every term, weights
/// of 1–100 on preferred ones.
fn pod_affinity(v: &mut V, path: &str, a: &skiff_proto::api::Affinity) {
    let sides = [
        (
            "podAffinity",
            a.pod_affinity.as_ref().map(|p| {
                (
                    &p.required_during_scheduling_ignored_during_execution,
                    &p.preferred_during_scheduling_ignored_during_execution,
                )
            }),
        ),
        (
            "podAntiAffinity",
            a.pod_anti_affinity.as_ref().map(|p| {
                (
                    &p.required_during_scheduling_ignored_during_execution,
                    &p.preferred_during_scheduling_ignored_during_execution,
                )
            }),
        ),
    ];
    let term = |v: &mut V, tp: String, t: &skiff_proto::api::PodAffinityTerm| {
        if t.topology_key.is_empty() {
            v.push(FieldError::required(format!("{tp}.topologyKey"), "can not be empty"));
        } else if !is_label_key(&t.topology_key) {
            v.push(FieldError::invalid(format!("{tp}.topologyKey"), &t.topology_key, QUALIFIED_NAME_MSG));
        }
    };
    for (side, terms) in sides {
        let Some((required, preferred)) = terms else { continue };
        for (i, t) in required.iter().enumerate() {
            term(v, format!("{path}.{side}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"), t);
        }
        for (i, w) in preferred.iter().enumerate() {
            let wp = format!("{path}.{side}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
            if !(1..=100).contains(&w.weight) {
                v.push(FieldError::invalid(format!("{wp}.weight"), w.weight, "must be in the range 1-100"));
            }
            match &w.pod_affinity_term {
                Some(t) => term(v, format!("{wp}.podAffinityTerm"), t),
                None => v.push(FieldError::required(format!("{wp}.podAffinityTerm"), "")),
            }
        }
    }
}

/// The items of a downwardAPI volume or projection, and the paths of a projected volume, as
/// Kubernetes checks them: relative paths without `..`, one field per item, a container named
/// for a resource.
fn downward_items(v: &mut V, vp: &str, vol: &skiff_proto::api::Volume) {
    let mut lists: Vec<(String, &[skiff_proto::api::DownwardApiVolumeFile])> = Vec::new();
    if let Some(d) = &vol.downward_api {
        lists.push((format!("{vp}.downwardAPI"), &d.items));
    }
    for (j, source) in vol.projected.iter().flat_map(|p| p.sources.iter()).enumerate() {
        if let Some(d) = &source.downward_api {
            lists.push((format!("{vp}.projected.sources[{j}].downwardAPI"), &d.items));
        }
        if let Some(t) = &source.service_account_token {
            check_path(v, &format!("{vp}.projected.sources[{j}].serviceAccountToken.path"), &t.path);
        }
    }
    for (lp, items) in lists {
        for (k, item) in items.iter().enumerate() {
            let ip = format!("{lp}.items[{k}]");
            check_path(v, &format!("{ip}.path"), &item.path);
            match (&item.field_ref, &item.resource_field_ref) {
                (Some(_), Some(_)) => v.push(FieldError::invalid(
                    &ip,
                    "",
                    "fieldRef and resourceFieldRef can not be specified simultaneously",
                )),
                (None, None) => v.push(FieldError::required(&ip, "one of fieldRef and resourceFieldRef is required")),
                (None, Some(r)) if r.container_name.is_empty() => {
                    v.push(FieldError::required(format!("{ip}.resourceFieldRef.containerName"), ""))
                }
                _ => {}
            }
        }
    }
}

/// A file path inside a volume: relative, no `..` element.
fn check_path(v: &mut V, path: &str, value: &str) {
    if value.is_empty() {
        v.push(FieldError::required(path, ""));
    } else if value.starts_with('/') {
        v.push(FieldError::invalid(path, value, "must be a relative path"));
    } else if value.split('/').any(|e| e == "..") {
        v.push(FieldError::invalid(path, value, "must not contain '..'"));
    }
}

const ENV_NAME_MSG: &str = "a valid environment variable name must consist of alphabetic characters, digits, '_', \
                            '-', or '.', and must not start with a digit";

/// A container's `envFrom` and `env[].valueFrom.resourceFieldRef`, as Kubernetes checks them.
/// A container's probes and lifecycle hooks, as Kubernetes' `validateProbe` and
/// `validateLifecycle` check them.
fn container_probes(v: &mut V, cp: &str, c: &skiff_proto::api::Container) {
    let probes = [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ];
    for (field, probe) in probes {
        let Some(p) = probe else { continue };
        let at = format!("{cp}.{field}");
        let grpc = p.grpc.as_ref().map(|g| g.port);
        handler(v, &at, p.exec.as_ref(), p.http_get.as_ref(), p.tcp_socket.as_ref(), grpc, None);
        let counts = [
            ("initialDelaySeconds", Some(p.initial_delay_seconds)),
            ("timeoutSeconds", p.timeout_seconds),
            ("periodSeconds", p.period_seconds),
            ("successThreshold", p.success_threshold),
            ("failureThreshold", p.failure_threshold),
        ];
        for (name, n) in counts {
            if let Some(n) = n.filter(|n| *n < 0) {
                v.push(FieldError::invalid(format!("{at}.{name}"), n, "must be greater than or equal to 0"));
            }
        }
        if field != "readinessProbe" {
            if let Some(n) = p.success_threshold.filter(|n| *n != 1) {
                v.push(FieldError::invalid(format!("{at}.successThreshold"), n, "must be 1"));
            }
        }
        match p.termination_grace_period_seconds {
            Some(_) if field == "readinessProbe" => v.push(FieldError::forbidden(
                format!("{at}.terminationGracePeriodSeconds"),
                "must not be set for readinessProbes",
            )),
            Some(n) if n <= 0 => {
                v.push(FieldError::invalid(format!("{at}.terminationGracePeriodSeconds"), n, "must be greater than 0"))
            }
            _ => {}
        }
    }
    let Some(lifecycle) = &c.lifecycle else { return };
    for (field, hook) in [("postStart", &lifecycle.post_start), ("preStop", &lifecycle.pre_stop)] {
        let Some(h) = hook else { continue };
        let sleep = h.sleep.as_ref().map(|s| s.seconds);
        handler(
            v,
            &format!("{cp}.lifecycle.{field}"),
            h.exec.as_ref(),
            h.http_get.as_ref(),
            h.tcp_socket.as_ref(),
            None,
            sleep,
        );
    }
}

/// One probe or lifecycle handler: exactly one action, each well formed.
fn handler(
    v: &mut V,
    at: &str,
    exec: Option<&skiff_proto::api::ExecAction>,
    http_get: Option<&skiff_proto::api::HttpGetAction>,
    tcp_socket: Option<&skiff_proto::api::TcpSocketAction>,
    grpc_port: Option<i32>,
    sleep_seconds: Option<i64>,
) {
    let given = [
        ("exec", exec.is_some()),
        ("httpGet", http_get.is_some()),
        ("tcpSocket", tcp_socket.is_some()),
        ("grpc", grpc_port.is_some()),
        ("sleep", sleep_seconds.is_some()),
    ];
    let mut seen = 0;
    for (name, _) in given.iter().filter(|(_, g)| *g) {
        seen += 1;
        if seen > 1 {
            v.push(FieldError::forbidden(format!("{at}.{name}"), "may not specify more than 1 handler type"));
        }
    }
    if seen == 0 {
        v.push(FieldError::required(at, "must specify a handler type"));
    }
    if seen != 1 {
        return;
    }
    if exec.is_some_and(|e| e.command.is_empty()) {
        v.push(FieldError::required(format!("{at}.exec.command"), ""));
    }
    if let Some(h) = http_get {
        port_or_name(v, &format!("{at}.httpGet.port"), &h.port);
        const SCHEMES: [&str; 2] = ["HTTP", "HTTPS"];
        if !h.scheme.is_empty() && !SCHEMES.contains(&h.scheme.as_str()) {
            v.push(FieldError::not_supported(format!("{at}.httpGet.scheme"), &h.scheme, &SCHEMES));
        }
    }
    if let Some(t) = tcp_socket {
        port_or_name(v, &format!("{at}.tcpSocket.port"), &t.port);
    }
    if let Some(port) = grpc_port {
        v.port(format!("{at}.grpc.port"), Some(&json!(port)), true);
    }
    if let Some(n) = sleep_seconds.filter(|n| *n <= 0) {
        v.push(FieldError::invalid(format!("{at}.sleep.seconds"), n, "must be greater than 0"));
    }
}

/// A port given as a number or a container port's name (Kubernetes' `ValidatePortNumOrName`).
fn port_or_name(v: &mut V, at: &str, port: &Option<prost_types::Value>) {
    use skiff_proto::serde_util::IntOrString;
    match IntOrString::from_value(port) {
        Some(IntOrString::Int(n)) => v.port(at.to_string(), Some(&json!(n)), true),
        Some(IntOrString::Str(name)) => {
            for why in port_name_problems(&name) {
                v.push(FieldError::invalid(at, &name, why));
            }
        }
        None => v.push(FieldError::required(at, "")),
    }
}

fn container_env(v: &mut V, cp: &str, c: &skiff_proto::api::Container) {
    for (j, from) in c.env_from.iter().enumerate() {
        let fp = format!("{cp}.envFrom[{j}]");
        if !from.prefix.is_empty() && !skiff_proto::env::is_env_var_name(&from.prefix) {
            v.push(FieldError::invalid(format!("{fp}.prefix"), &from.prefix, ENV_NAME_MSG));
        }
        match (&from.config_map_ref, &from.secret_ref) {
            (Some(_), Some(_)) => {
                v.push(FieldError::invalid(&fp, "", "may not have more than one field specified at a time"))
            }
            (None, None) => v.push(FieldError::required(&fp, "must specify one of: `configMapRef` or `secretRef`")),
            (Some(r), None) if r.name.is_empty() => v.push(FieldError::required(format!("{fp}.configMapRef.name"), "")),
            (None, Some(r)) if r.name.is_empty() => v.push(FieldError::required(format!("{fp}.secretRef.name"), "")),
            _ => {}
        }
    }
    const RESOURCES: [&str; 6] = [
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
    ];
    for (j, e) in c.env.iter().enumerate() {
        let Some(r) = e.value_from.as_ref().and_then(|f| f.resource_field_ref.as_ref()) else { continue };
        let rp = format!("{cp}.env[{j}].valueFrom.resourceFieldRef");
        if r.resource.is_empty() {
            v.push(FieldError::required(format!("{rp}.resource"), ""));
        } else if !RESOURCES.contains(&r.resource.as_str()) {
            v.push(FieldError::not_supported(format!("{rp}.resource"), &r.resource, &RESOURCES));
        }
        if !r.divisor.is_empty() && skiff_proto::quantity::parse_quantity(&r.divisor).is_none_or(|d| d <= 0) {
            v.push(FieldError::invalid(format!("{rp}.divisor"), &r.divisor, "must be a positive quantity"));
        }
    }
}

fn service(v: &mut V, obj: &Value) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP");
    v.one_of(&spec, "spec", "type", &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]);
    v.one_of(&spec, "spec", "sessionAffinity", &["None", "ClientIP"]);
    if ty == "ExternalName" && spec.get("externalName").and_then(Value::as_str).unwrap_or_default().is_empty() {
        v.push(FieldError::required("spec.externalName", ""));
    }
    let ports = spec.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if ports.is_empty() && ty != "ExternalName" && !headless {
        v.push(FieldError::required("spec.ports", ""));
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        v.port(format!("{pp}.port"), p.get("port"), true);
        match p.get("name").and_then(Value::as_str) {
            None | Some("") if ports.len() > 1 => v.push(FieldError::required(
                format!("{pp}.name"),
                "port names are required when a service has more than one port",
            )),
            Some(n) if !n.is_empty() && !names.insert(n.to_string()) => {
                v.push(FieldError::duplicate(format!("{pp}.name"), n))
            }
            _ => {}
        }
        if let Some(np) = p.get("nodePort") {
            if ty == "ClusterIP" || ty == "ExternalName" {
                v.push(FieldError::forbidden(
                    format!("{pp}.nodePort"),
                    format!("may not be used when `type` is '{ty}'"),
                ));
            } else if !np.as_i64().is_some_and(|n| (30000..=32767).contains(&n)) {
                v.push(FieldError::invalid(
                    format!("{pp}.nodePort"),
                    np,
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            }
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {
                v.push(FieldError::invalid(format!("{pp}.targetPort"), n, "must be between 1 and 65535, inclusive"));
            }
            Some(Value::String(s)) if !is_dns1123_label(s) || s.len() > 15 => {
                v.push(FieldError::invalid(
                    format!("{pp}.targetPort"),
                    s,
                    "must be a port number or an IANA_SVC_NAME (at most 15 characters)",
                ));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_resource;

    fn errs(resource: &str, obj: Value) -> Vec<String> {
        validate(by_resource(resource).unwrap(), &obj).iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn names_labels_and_containers() {
        let e = errs(
            "pods",
            json!({"metadata": {"name": "Bad_Name", "labels": {"ok": "-bad"}}, "spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}, {"name": "a", "image": ""}]}}),
        );
        assert!(e.iter().any(|m| m.starts_with("metadata.name: Invalid value: \"Bad_Name\"")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("metadata.labels")), "{e:?}");
        assert!(e.iter().any(|m| m == "spec.containers[1].name: Duplicate value: \"a\""), "{e:?}");
        assert!(e.iter().any(|m| m == "spec.containers[1].image: Required value"), "{e:?}");
    }

    #[test]
    fn env_from_and_resource_fields() {
        let pod = |c: Value| json!({"metadata": {"name": "p"}, "spec": {"containers": [c]}});
        let ok = json!({"name": "c", "image": "x",
            "envFrom": [{"configMapRef": {"name": "a"}}, {"prefix": "DB_", "secretRef": {"name": "b"}}],
            "env": [{"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}]});
        assert_eq!(errs("pods", pod(ok)), Vec::<String>::new());
        let bad = json!({"name": "c", "image": "x",
            "envFrom": [{"prefix": "1X", "configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}, {}],
            "env": [{"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}}]});
        let e = errs("pods", pod(bad));
        assert!(
            e.iter().any(|m| m.starts_with(
                "spec.containers[0].envFrom[0].prefix: Invalid value: \"1X\": a valid environment variable name"
            )),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains("envFrom[0]: Invalid value: \"\": may not have more than one field")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m
                == "spec.containers[0].envFrom[1]: Required value: must specify one of: `configMapRef` or `secretRef`"),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.starts_with(
                "spec.containers[0].env[0].valueFrom.resourceFieldRef.resource: Unsupported value: \"limits.gpu\""
            )),
            "{e:?}"
        );
    }

    #[test]
    fn pod_affinity_terms() {
        let e = errs(
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}], "affinity": {
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]},
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 0, "podAffinityTerm": {"topologyKey": "zone"}}]}}}}),
        );
        assert!(e.iter().any(|m| m == "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: Required value: can not be empty"), "{e:?}");
        assert!(e.iter().any(|m| m == "spec.affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 0: must be in the range 1-100"), "{e:?}");
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errs(
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}],
                "topologySpreadConstraints": [{"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "Maybe"}]}}),
        );
        assert_eq!(
            e,
            [
                "spec.topologySpreadConstraints[0].maxSkew: Invalid value: 0: must be greater than zero",
                "spec.topologySpreadConstraints[0].whenUnsatisfiable: Unsupported value: \"Maybe\": supported values: \"DoNotSchedule\", \"ScheduleAnyway\""
            ]
        );
    }

    #[test]
    fn downward_api_and_projected_items() {
        let pod = |volume: Value| json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}], "volumes": [volume]}});
        let ok = json!({"name": "v", "projected": {"sources": [
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            {"serviceAccountToken": {"path": "token"}}]}});
        assert_eq!(errs("pods", pod(ok)), Vec::<String>::new());
        let bad = json!({"name": "v", "downwardAPI": {"items": [
            {"path": "../up", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "mem", "resourceFieldRef": {"resource": "limits.memory"}},
            {"path": "/abs"}]}});
        assert_eq!(
            errs("pods", pod(bad)),
            [
                "spec.volumes[0].downwardAPI.items[0].path: Invalid value: \"../up\": must not contain '..'",
                "spec.volumes[0].downwardAPI.items[1].resourceFieldRef.containerName: Required value",
                "spec.volumes[0].downwardAPI.items[2].path: Invalid value: \"/abs\": must be a relative path",
                "spec.volumes[0].downwardAPI.items[2]: Required value: one of fieldRef and resourceFieldRef is required",
            ]
        );
    }

    #[test]
    fn limit_ranges() {
        let lr = |item: Value| errs("limitranges", json!({"metadata": {"name": "l"}, "spec": {"limits": [item]}}));
        assert_eq!(
            lr(json!({"type": "Container", "min": {"cpu": "100m"}, "max": {"cpu": "1"}, "default": {"cpu": "500m"}})),
            Vec::<String>::new()
        );
        assert_eq!(
            lr(json!({"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}})),
            ["spec.limits[0].min[cpu]: Invalid value: \"2\": min value 2 is greater than max value 1"]
        );
        assert_eq!(
            lr(json!({"type": "Container", "default": {"memory": "1Gi"}, "defaultRequest": {"memory": "2Gi"}})),
            ["spec.limits[0].defaultRequest[memory]: Invalid value: \"2Gi\": default request value 2Gi is greater than default limit value 1Gi"]
        );
        assert_eq!(
            lr(json!({"type": "Pod", "default": {"cpu": "1"}})),
            ["spec.limits[0].default: Forbidden: may not be specified when `type` is 'Pod'"]
        );
        assert_eq!(
            lr(json!({"type": "Container", "maxLimitRequestRatio": {"cpu": "500m"}})),
            ["spec.limits[0].maxLimitRequestRatio[cpu]: Invalid value: \"500m\": ratio 500m is less than 1"]
        );
    }

    #[test]
    fn replication_controllers() {
        let rc = |spec: Value| errs("replicationcontrollers", json!({"metadata": {"name": "web"}, "spec": spec}));
        let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "x"}]}});
        assert_eq!(rc(json!({"selector": {"app": "web"}, "template": template})), Vec::<String>::new());
        assert_eq!(rc(json!({"template": template})), ["spec.selector: Required value"]);
        let e = rc(json!({"selector": {"app": "db"}, "template": template}));
        assert!(e.iter().any(|m| m.ends_with("`selector` does not match template `labels`")), "{e:?}");
    }

    #[test]
    fn pod_os() {
        let pod = |spec: Value| {
            let mut spec = spec;
            spec["containers"] = json!([{"name": "c", "image": "x", "securityContext": {"privileged": true}}]);
            errs("pods", json!({"metadata": {"name": "p"}, "spec": spec}))
        };
        assert_eq!(pod(json!({"os": {"name": "linux"}})), Vec::<String>::new());
        assert_eq!(
            pod(json!({"os": {"name": "plan9"}})),
            ["spec.os.name: Unsupported value: \"plan9\": supported values: \"linux\", \"windows\""]
        );
        assert_eq!(
            pod(json!({"os": {"name": "windows"}, "hostPID": true, "securityContext": {"runAsUser": 1000}})),
            [
                "spec.hostPID: Forbidden: may not be set for a windows pod",
                "spec.securityContext.runAsUser: Forbidden: may not be set for a windows pod",
                "spec.containers[0].securityContext.privileged: Forbidden: may not be set for a windows pod"
            ]
        );
    }

    #[test]
    fn endpoint_slices() {
        let slice = |body: Value| {
            let mut obj = json!({"metadata": {"name": "web-1"}});
            obj.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            errs("endpointslices", obj)
        };
        let good = json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": true}}], "ports": [{"name": "http", "protocol": "TCP", "port": 80}]});
        assert_eq!(slice(good), Vec::<String>::new());
        assert_eq!(
            slice(json!({"addressType": "IPv5", "endpoints": [{"addresses": []}]})),
            [
                "addressType: Unsupported value: \"IPv5\": supported values: \"IPv4\", \"IPv6\", \"FQDN\"",
                "endpoints[0].addresses: Required value: must contain at least 1 address"
            ]
        );
        assert_eq!(
            slice(
                json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.300"]}], "ports": [{"name": "http", "protocol": "TCP", "port": 0}, {"name": "http", "protocol": "HTTP"}]})
            ),
            [
                "endpoints[0].addresses[0]: Invalid value: \"10.0.0.300\": must be a valid IPv4 address",
                "ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "ports[1].name: Duplicate value: \"http\"",
                "ports[1].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\""
            ]
        );
    }

    #[test]
    fn probes_and_lifecycle_handlers() {
        let pod = |container: Value| {
            let mut c =
                json!({"name": "app", "image": "busybox:test", "ports": [{"name": "http", "containerPort": 80}]});
            c.as_object_mut().unwrap().extend(container.as_object().unwrap().clone());
            let mut obj = json!({"metadata": {"name": "p"}, "spec": {"containers": [c]}});
            crate::defaults::apply(by_resource("pods").unwrap(), &mut obj);
            errs("pods", obj)
        };
        let good = json!({
            "livenessProbe": {"grpc": {"port": 9090}, "terminationGracePeriodSeconds": 5},
            "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}, "successThreshold": 2},
            "startupProbe": {"tcpSocket": {"port": 80}, "failureThreshold": 30},
            "lifecycle": {"postStart": {"exec": {"command": ["true"]}}, "preStop": {"sleep": {"seconds": 5}}}
        });
        assert_eq!(pod(good), Vec::<String>::new());
        assert_eq!(
            pod(json!({
                "livenessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}, "successThreshold": 2, "periodSeconds": -1},
                "readinessProbe": {"terminationGracePeriodSeconds": 5},
                "startupProbe": {"grpc": {"port": 0}, "terminationGracePeriodSeconds": 0},
                "lifecycle": {"postStart": {"exec": {}}, "preStop": {"httpGet": {"port": "no_such_name", "scheme": "FTP"}}}
            })),
            [
                "spec.containers[0].livenessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
                "spec.containers[0].livenessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 0",
                "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
                "spec.containers[0].readinessProbe: Required value: must specify a handler type",
                "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Forbidden: must not be set for readinessProbes",
                "spec.containers[0].startupProbe.grpc.port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.containers[0].startupProbe.terminationGracePeriodSeconds: Invalid value: 0: must be greater than 0",
                "spec.containers[0].lifecycle.postStart.exec.command: Required value",
                "spec.containers[0].lifecycle.preStop.httpGet.port: Invalid value: \"no_such_name\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "spec.containers[0].lifecycle.preStop.httpGet.scheme: Unsupported value: \"FTP\": supported values: \"HTTP\", \"HTTPS\""
            ]
        );
    }

    #[test]
    fn only_init_containers_restart_on_their_own_as_sidecars() {
        let pod = |spec: Value| errs("pods", json!({"metadata": {"name": "p"}, "spec": spec}));
        let c = |policy: &str| json!({"name": format!("c-{}", policy.to_lowercase()), "image": "x", "restartPolicy": policy});
        assert_eq!(
            pod(json!({"initContainers": [c("Always")], "containers": [{"name": "app", "image": "x"}]})),
            Vec::<String>::new()
        );
        assert_eq!(
            pod(json!({"initContainers": [c("Never")], "containers": [c("Always")]})),
            [
                "spec.initContainers[0].restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
                "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers"
            ]
        );
    }

    #[test]
    fn runtime_classes() {
        let class = |body: Value| {
            let mut obj = json!({"metadata": {"name": "gvisor"}});
            obj.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            errs("runtimeclasses", obj)
        };
        let good = json!({"handler": "runsc", "overhead": {"podFixed": {"cpu": "250m", "memory": "120Mi"}},
            "scheduling": {"nodeSelector": {"runtime": "gvisor"}, "tolerations": [{"key": "sandboxed", "operator": "Exists", "effect": "NoSchedule"}]}});
        assert_eq!(class(good), Vec::<String>::new());
        assert_eq!(
            class(json!({"handler": "Run_SC", "overhead": {"podFixed": {"cpu": "-1"}}, "scheduling": {"tolerations": [{"operator": "Near"}]}})),
            [
                format!("handler: Invalid value: \"Run_SC\": {DNS1123_LABEL_MSG}"),
                "overhead.podFixed[cpu]: Invalid value: \"-1\": must be greater than or equal to 0".to_string(),
                "scheduling.tolerations[0].operator: Unsupported value: \"Near\": supported values: \"Equal\", \"Exists\"".to_string()
            ]
        );
        assert_eq!(class(json!({})), [format!("handler: Invalid value: \"\": {DNS1123_LABEL_MSG}")]);
    }

    #[test]
    fn network_policies() {
        let policy = |spec: Value| {
            let mut obj = json!({"metadata": {"name": "db", "namespace": "default"}, "spec": spec});
            crate::defaults::apply(by_resource("networkpolicies").unwrap(), &mut obj);
            errs("networkpolicies", obj)
        };
        // Kubernetes' own examples: deny all, and a full ingress and egress policy.
        assert_eq!(policy(json!({"podSelector": {}})), Vec::<String>::new());
        let full = json!({
            "podSelector": {"matchLabels": {"role": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [
                {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                {"podSelector": {"matchLabels": {"role": "frontend"}}, "namespaceSelector": {}}
            ], "ports": [{"protocol": "TCP", "port": 6379}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": 32000, "endPort": 32768}, {"port": "dns", "protocol": "UDP"}]}]
        });
        assert_eq!(policy(full), Vec::<String>::new());
        assert_eq!(
            policy(
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}, "policyTypes": ["Ingress", "Sideways"]})
            ),
            [
                "spec.podSelector.matchExpressions[0].operator: Invalid value: \"Near\": not a valid selector operator",
                "spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\""
            ]
        );
        assert_eq!(
            policy(json!({"podSelector": {}, "ingress": [{"from": [{}, {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}], "ports": [
                {"protocol": "ICMP", "port": 0}, {"port": 90, "endPort": 80}, {"port": "http", "endPort": 90}, {"endPort": 90}, {"port": "No_Name"}
            ]}]})),
            [
                "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
                "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ingress[0].ports[1].endPort: Invalid value: 90: must be greater than or equal to `port`",
                "spec.ingress[0].ports[2].endPort: Invalid value: 90: may not be specified when `port` is non-numeric",
                "spec.ingress[0].ports[3].endPort: Invalid value: 90: may not be specified when `port` is not specified",
                "spec.ingress[0].ports[4].port: Invalid value: \"No_Name\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "spec.ingress[0].from[0]: Required value: must specify a peer",
                "spec.ingress[0].from[1]: Forbidden: may not specify both ipBlock and another peer"
            ]
        );
        assert_eq!(
            policy(json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24", "10.0.0.0/16", "10.0.0.0/33"]}}, {"ipBlock": {"cidr": "ten"}}, {"ipBlock": {}}]}]})),
            [
                "spec.egress[0].to[0].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`",
                "spec.egress[0].to[0].ipBlock.except[1]: Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`",
                "spec.egress[0].to[0].ipBlock.except[2]: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                "spec.egress[0].to[1].ipBlock.cidr: Invalid value: \"ten\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                "spec.egress[0].to[2].ipBlock.cidr: Required value"
            ]
        );
        let mut defaulted = json!({"spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}});
        crate::defaults::apply(by_resource("networkpolicies").unwrap(), &mut defaulted);
        assert_eq!(defaulted.pointer("/spec/policyTypes"), Some(&json!(["Ingress", "Egress"])));
        assert_eq!(defaulted.pointer("/spec/egress/0/ports/0/protocol"), Some(&json!("TCP")));
    }

    #[test]
    fn horizontal_pod_autoscalers() {
        let hpa = |spec: Value| {
            let mut obj = json!({"metadata": {"name": "web"}, "spec": spec});
            crate::defaults::apply(by_resource("horizontalpodautoscalers").unwrap(), &mut obj);
            errs("horizontalpodautoscalers", obj)
        };
        let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
        let cpu = |t: Value| json!([{"type": "Resource", "resource": {"name": "cpu", "target": t}}]);
        // A bare autoscaler is valid: it defaults to 80% of the cpu request.
        assert_eq!(hpa(json!({"scaleTargetRef": target, "maxReplicas": 3})), Vec::<String>::new());
        assert_eq!(
            hpa(json!({"scaleTargetRef": target, "minReplicas": 0, "maxReplicas": 0})),
            [
                "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
                "spec.maxReplicas: Invalid value: 0: must be greater than 0"
            ]
        );
        assert_eq!(
            hpa(json!({"scaleTargetRef": target, "minReplicas": 5, "maxReplicas": 3})),
            ["spec.maxReplicas: Invalid value: 3: must be greater than or equal to `minReplicas`"]
        );
        assert_eq!(
            hpa(json!({"scaleTargetRef": {"kind": "Deployment"}, "maxReplicas": 3})),
            ["spec.scaleTargetRef.name: Required value"]
        );
        assert_eq!(
            hpa(json!({"scaleTargetRef": target, "maxReplicas": 3, "metrics": cpu(json!({"type": "Utilization"}))})),
            ["spec.metrics[0].resource.target.averageUtilization: Required value: must set either a target raw value or a target utilization"]
        );
        assert_eq!(
            hpa(
                json!({"scaleTargetRef": target, "maxReplicas": 3, "metrics": cpu(json!({"type": "Utilization", "averageUtilization": 0}))})
            ),
            ["spec.metrics[0].resource.target.averageUtilization: Invalid value: 0: must be greater than 0"]
        );
        assert_eq!(
            hpa(json!({"scaleTargetRef": target, "maxReplicas": 3, "metrics": cpu(json!({"type": "Often", "averageValue": "-1"}))})),
            [
                "spec.metrics[0].resource.target.type: Invalid value: \"Often\": must be either Utilization, Value, or AverageValue",
                "spec.metrics[0].resource.target.averageValue: Invalid value: \"-1\": must be positive"
            ]
        );
        assert_eq!(
            hpa(
                json!({"scaleTargetRef": target, "maxReplicas": 3, "metrics": [{"type": "Pods", "resource": {"name": "cpu", "target": {"type": "AverageValue", "averageValue": "100m"}}}]})
            ),
            ["spec.metrics[0].pods: Required value: must populate information for the given metric source"]
        );
        assert_eq!(
            hpa(json!({"scaleTargetRef": target, "maxReplicas": 3, "metrics": [{"type": "Sometimes"}]})),
            ["spec.metrics[0].type: Unsupported value: \"Sometimes\": supported values: \"Object\", \"Pods\", \"Resource\", \"External\", \"ContainerResource\""]
        );
        let behavior = json!({"scaleDown": {"stabilizationWindowSeconds": 4000, "selectPolicy": "Often", "policies": [{"type": "Pods", "value": 0, "periodSeconds": 2000}]}});
        assert_eq!(
            hpa(json!({"scaleTargetRef": target, "maxReplicas": 3, "behavior": behavior})),
            [
                "spec.behavior.scaleDown.stabilizationWindowSeconds: Invalid value: 4000: must be less than or equal to 3600",
                "spec.behavior.scaleDown.selectPolicy: Unsupported value: \"Often\": supported values: \"Disabled\", \"Max\", \"Min\"",
                "spec.behavior.scaleDown.policies[0].value: Invalid value: 0: must be greater than zero",
                "spec.behavior.scaleDown.policies[0].periodSeconds: Invalid value: 2000: must be less than or equal to 1800"
            ]
        );
    }

    #[test]
    fn disruption_budgets() {
        let pdb = |spec: Value| errs("poddisruptionbudgets", json!({"metadata": {"name": "web"}, "spec": spec}));
        for ok in
            [json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}), json!({"maxUnavailable": "25%"})]
        {
            assert_eq!(pdb(ok), Vec::<String>::new());
        }
        let e = pdb(json!({"minAvailable": 1, "maxUnavailable": 1}));
        assert!(
            e.iter().any(|m| m.starts_with("spec: Invalid value: ")
                && m.ends_with(": minAvailable and maxUnavailable cannot be both set")),
            "{e:?}"
        );
        assert_eq!(
            pdb(json!({"minAvailable": -1})),
            ["spec.minAvailable: Invalid value: -1: must be greater than or equal to 0"]
        );
        assert_eq!(
            pdb(json!({"maxUnavailable": "150%"})),
            ["spec.maxUnavailable: Invalid value: \"150%\": must not be greater than 100%"]
        );
        let e = pdb(json!({"minAvailable": "half"}));
        assert!(
            e[0].starts_with("spec.minAvailable: Invalid value: \"half\": a valid percent string must be"),
            "{e:?}"
        );
        assert_eq!(
            pdb(json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "Sometimes"})),
            ["spec.unhealthyPodEvictionPolicy: Unsupported value: \"Sometimes\": supported values: \"AlwaysAllow\", \"IfHealthyBudget\""]
        );
    }

    #[test]
    fn rbac_names_are_path_segments() {
        let role = |name: &str| json!({"metadata": {"name": name}, "rules": []});
        assert_eq!(errs("clusterroles", role("system:custom-reader")), Vec::<String>::new());
        assert_eq!(errs("roles", role("..")), ["metadata.name: Invalid value: \"..\": may not be '..'"]);
        assert_eq!(
            errs(
                "clusterrolebindings",
                json!({"metadata": {"name": "a/b%c"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"}})
            ),
            [
                "metadata.name: Invalid value: \"a/b%c\": may not contain '/'",
                "metadata.name: Invalid value: \"a/b%c\": may not contain '%'"
            ]
        );
    }

    #[test]
    fn workload_selector_must_match_template() {
        let e = errs(
            "deployments",
            json!({"metadata": {"name": "web"}, "spec": {"replicas": -1, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "x"}]}}}}),
        );
        assert!(e.iter().any(|m| m.starts_with("spec.replicas: Invalid value: -1")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("`selector` does not match template `labels`")), "{e:?}");
    }

    #[test]
    fn service_ports() {
        let e = errs(
            "services",
            json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30001}, {"port": 70000}]}}),
        );
        assert!(e.iter().any(|m| m.starts_with("spec.ports[0].nodePort: Forbidden")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("spec.ports[0].name: Required value")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("spec.ports[1].port: Invalid value: 70000")), "{e:?}");
    }

    #[test]
    fn dns_config_and_host_aliases() {
        let e = errs(
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Always", "dnsPolicy": "None",
                "dnsConfig": {"searches": ["Not_A_Domain"], "options": [{"value": "2"}]},
                "hostAliases": [{"ip": "10.0.0.300", "hostnames": ["db.corp"]}],
                "containers": [{"name": "c", "image": "x"}]}}),
        );
        assert!(e.iter().any(|m| m.starts_with("spec.dnsConfig.nameservers: Required value")), "{e:?}");
        assert!(
            e.iter().any(|m| m.starts_with("spec.dnsConfig.searches[0]: Invalid value: \"Not_A_Domain\"")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.starts_with("spec.dnsConfig.options[0].name: Required value")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("spec.hostAliases[0].ip: Invalid value: \"10.0.0.300\"")), "{e:?}");
        let e = errs(
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Always", "dnsPolicy": "Cluster",
                "containers": [{"name": "c", "image": "x"}]}}),
        );
        assert!(e.iter().any(|m| m.starts_with("spec.dnsPolicy: Unsupported value: \"Cluster\"")), "{e:?}");
    }
}
