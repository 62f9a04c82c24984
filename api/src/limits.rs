//! The LimitRanger admission plugin, as Kubernetes runs it on creates: containers get the
//! default limits and requests of their namespace's LimitRanges for the resources they leave
//! out (recorded in the `kubernetes.io/limit-ranger` annotation), then every Container, Pod and
//! PersistentVolumeClaim item's min, max and maxLimitRequestRatio is checked, in Kubernetes'
//! words.

use skiff_proto::api::{Container, LimitRange, LimitRangeItem, PersistentVolumeClaim, Pod};
use skiff_proto::quantity::parse_quantity;
use std::collections::{BTreeMap, BTreeSet};

pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

type Resources = BTreeMap<String, String>;

/// One bound (`enforced`, on `resource` per `kind`) against what an object asks for.
#[derive(Clone, Copy)]
struct Observed<'a> {
    kind: &'a str,
    resource: &'a str,
    enforced: &'a str,
    requests: &'a Resources,
    limits: &'a Resources,
}

/// A bound's check: what it refuses.
type Constraint = fn(&Observed) -> Option<String>;

fn items<'a>(ranges: &'a [LimitRange], kind: &'a str) -> impl Iterator<Item = &'a LimitRangeItem> + 'a {
    ranges.iter().flat_map(|r| r.spec.iter().flat_map(|s| s.limits.iter())).filter(move |i| i.r#type == kind)
}

/// Sets the Container items' defaults on the pod's containers; the annotation text when any
/// was set.
pub fn default_pod(pod: &mut Pod, ranges: &[LimitRange]) -> Option<String> {
    let (mut limits, mut requests) = (Resources::new(), Resources::new());
    for item in items(ranges, "Container") {
        limits.extend(item.default.clone());
        requests.extend(item.default_request.clone());
    }
    if limits.is_empty() && requests.is_empty() {
        return None;
    }
    let spec = pod.spec.as_mut()?;
    let mut said = Vec::new();
    let mut merge = |c: &mut Container, prefix: &str| {
        let resources = c.resources.get_or_insert_with(Default::default);
        let mut set = |defaults: &Resources, have: &mut Resources, what: &str| {
            let added: Vec<&str> = defaults.keys().filter(|k| !have.contains_key(*k)).map(String::as_str).collect();
            for k in &added {
                have.insert(k.to_string(), defaults[*k].clone());
            }
            if !added.is_empty() {
                said.push(format!("{} {what} for {prefix} {}", added.join(", "), c.name));
            }
        };
        set(&requests, &mut resources.requests, "request");
        set(&limits, &mut resources.limits, "limit");
    };
    for c in &mut spec.init_containers {
        merge(c, "init container");
    }
    for c in &mut spec.containers {
        merge(c, "container");
    }
    (!said.is_empty()).then(|| format!("LimitRanger plugin set: {}", said.join("; ")))
}

fn value(q: &str) -> i128 {
    parse_quantity(q).unwrap_or(0)
}

fn min_constraint(o: &Observed) -> Option<String> {
    let Observed { kind, resource, enforced, requests, limits } = *o;
    let Some(req) = requests.get(resource) else {
        return Some(format!("minimum {resource} usage per {kind} is {enforced}.  No request is specified"));
    };
    if value(req) < value(enforced) {
        return Some(format!("minimum {resource} usage per {kind} is {enforced}, but request is {req}"));
    }
    let lim = limits.get(resource).filter(|l| value(l) < value(enforced))?;
    Some(format!("minimum {resource} usage per {kind} is {enforced}, but limit is {lim}"))
}

fn max_constraint(o: &Observed) -> Option<String> {
    let Observed { kind, resource, enforced, requests, limits } = *o;
    let Some(lim) = limits.get(resource) else {
        return Some(format!("maximum {resource} usage per {kind} is {enforced}.  No limit is specified"));
    };
    if value(lim) > value(enforced) {
        return Some(format!("maximum {resource} usage per {kind} is {enforced}, but limit is {lim}"));
    }
    let req = requests.get(resource).filter(|r| value(r) > value(enforced))?;
    Some(format!("maximum {resource} usage per {kind} is {enforced}, but request is {req}"))
}

fn ratio_constraint(o: &Observed) -> Option<String> {
    let Observed { kind, resource, enforced, requests, limits } = *o;
    let req = requests.get(resource).map_or(0, |r| value(r));
    let lim = limits.get(resource).map_or(0, |l| value(l));
    if req == 0 {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"
        ));
    }
    if lim == 0 {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"
        ));
    }
    let ratio = lim as f64 / req as f64;
    (ratio * 1000.0 > value(enforced) as f64).then(|| {
        format!("{resource} max limit to request ratio per {kind} is {enforced}, but provided ratio is {ratio:.6}")
    })
}

fn check(kind: &str, item: &LimitRangeItem, requests: &Resources, limits: &Resources, errors: &mut Vec<String>) {
    let constraints: [(&Resources, Constraint); 3] =
        [(&item.min, min_constraint), (&item.max, max_constraint), (&item.max_limit_request_ratio, ratio_constraint)];
    for (bounds, constraint) in constraints {
        for (resource, enforced) in bounds {
            errors.extend(constraint(&Observed { kind, resource, enforced, requests, limits }));
        }
    }
}

/// A pod's requests or limits: the sum over its containers, or the largest init container's
/// when that is more (a resource counts when any container names it).
fn pod_total(pod: &Pod, of: fn(&Container) -> Option<&Resources>) -> Resources {
    let Some(spec) = pod.spec.as_ref() else { return Resources::new() };
    let names: BTreeSet<&String> =
        spec.containers.iter().chain(&spec.init_containers).filter_map(of).flat_map(|r| r.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let sum: i128 = spec.containers.iter().filter_map(of).filter_map(|r| r.get(name)).map(|q| value(q)).sum();
            let init = spec.init_containers.iter().filter_map(of).filter_map(|r| r.get(name)).map(|q| value(q)).max();
            let total = sum.max(init.unwrap_or(0));
            (name.clone(), skiff_proto::quantity::format_quantity(total, name))
        })
        .collect()
}

/// What the Container and Pod items refuse in `pod`.
pub fn check_pod(pod: &Pod, ranges: &[LimitRange]) -> Vec<String> {
    let mut errors = Vec::new();
    let empty = Resources::new();
    for item in items(ranges, "Container") {
        for c in pod.spec.iter().flat_map(|s| s.containers.iter().chain(&s.init_containers)) {
            let r = c.resources.as_ref();
            check("Container", item, r.map_or(&empty, |r| &r.requests), r.map_or(&empty, |r| &r.limits), &mut errors);
        }
    }
    let requests = pod_total(pod, |c| c.resources.as_ref().map(|r| &r.requests));
    let limits = pod_total(pod, |c| c.resources.as_ref().map(|r| &r.limits));
    for item in items(ranges, "Pod") {
        check("Pod", item, &requests, &limits, &mut errors);
    }
    errors
}

/// What the PersistentVolumeClaim items refuse in `claim` (its requests only, as Kubernetes).
pub fn check_claim(claim: &PersistentVolumeClaim, ranges: &[LimitRange]) -> Vec<String> {
    let empty = Resources::new();
    let requests = claim.spec.as_ref().and_then(|s| s.resources.as_ref()).map_or(&empty, |r| &r.requests);
    let mut errors = Vec::new();
    for item in items(ranges, "PersistentVolumeClaim") {
        for (resource, enforced) in &item.min {
            let kind = "PersistentVolumeClaim";
            errors.extend(min_constraint(&Observed { kind, resource, enforced, requests, limits: &empty }));
        }
        for (resource, enforced) in &item.max {
            errors.extend(match requests.get(resource) {
                None => Some(format!(
                    "maximum {resource} usage per PersistentVolumeClaim is {enforced}.  No request is specified"
                )),
                Some(req) if value(req) > value(enforced) => Some(format!(
                    "maximum {resource} usage per PersistentVolumeClaim is {enforced}, but request is {req}"
                )),
                Some(_) => None,
            });
        }
    }
    errors
}

/// Kubernetes' aggregate of errors: one as itself, more in brackets.
pub fn aggregate(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        more => format!("[{}]", more.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{LimitRangeSpec, ObjectMeta, PodSpec, ResourceRequirements};

    fn q(pairs: &[(&str, &str)]) -> Resources {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn range(items: Vec<LimitRangeItem>) -> LimitRange {
        LimitRange { spec: Some(LimitRangeSpec { limits: items }), ..Default::default() }
    }

    fn pod(containers: Vec<(&str, Resources, Resources)>) -> Pod {
        Pod {
            metadata: Some(ObjectMeta { name: "p".into(), ..Default::default() }),
            spec: Some(PodSpec {
                containers: containers
                    .into_iter()
                    .map(|(name, requests, limits)| Container {
                        name: name.into(),
                        resources: Some(ResourceRequirements { requests, limits }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn containers_get_the_defaults_they_leave_out_and_the_annotation_says_which() {
        let ranges = [range(vec![LimitRangeItem {
            r#type: "Container".into(),
            default: q(&[("cpu", "500m"), ("memory", "256Mi")]),
            default_request: q(&[("cpu", "100m"), ("memory", "128Mi")]),
            ..Default::default()
        }])];
        let mut p =
            pod(vec![("app", q(&[("cpu", "200m")]), Resources::new()), ("side", Resources::new(), Resources::new())]);
        let said = default_pod(&mut p, &ranges).unwrap();
        assert_eq!(
            said,
            "LimitRanger plugin set: memory request for container app; cpu, memory limit for container app; \
             cpu, memory request for container side; cpu, memory limit for container side"
        );
        let app = p.spec.as_ref().unwrap().containers[0].resources.clone().unwrap();
        assert_eq!(app.requests, q(&[("cpu", "200m"), ("memory", "128Mi")]), "what the container said stays");
        assert_eq!(app.limits, q(&[("cpu", "500m"), ("memory", "256Mi")]));
        assert!(default_pod(&mut p, &ranges).is_none(), "nothing left to set");
    }

    #[test]
    fn min_max_and_ratio_are_checked_in_kubernetes_words() {
        let ranges = [range(vec![
            LimitRangeItem {
                r#type: "Container".into(),
                min: q(&[("cpu", "100m")]),
                max: q(&[("cpu", "1")]),
                max_limit_request_ratio: q(&[("cpu", "4")]),
                ..Default::default()
            },
            LimitRangeItem { r#type: "Pod".into(), max: q(&[("memory", "1Gi")]), ..Default::default() },
        ])];
        let e = check_pod(&pod(vec![("a", q(&[("cpu", "50m")]), q(&[("cpu", "2")]))]), &ranges);
        assert_eq!(
            e,
            [
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum cpu usage per Container is 1, but limit is 2",
                "cpu max limit to request ratio per Container is 4, but provided ratio is 40.000000",
                "maximum memory usage per Pod is 1Gi.  No limit is specified",
            ]
        );
        let two = pod(vec![
            ("a", q(&[("cpu", "500m")]), q(&[("cpu", "1"), ("memory", "768Mi")])),
            ("b", q(&[("cpu", "500m")]), q(&[("cpu", "1"), ("memory", "512Mi")])),
        ]);
        assert_eq!(check_pod(&two, &ranges), ["maximum memory usage per Pod is 1Gi, but limit is 1280Mi"]);
        assert_eq!(aggregate(&["a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "b".into()]), "[a, b]");
    }

    #[test]
    fn claims_are_bounded_by_their_requests() {
        let ranges = [range(vec![LimitRangeItem {
            r#type: "PersistentVolumeClaim".into(),
            min: q(&[("storage", "1Gi")]),
            max: q(&[("storage", "2Gi")]),
            ..Default::default()
        }])];
        let claim = |size: &str| PersistentVolumeClaim {
            spec: Some(skiff_proto::api::PersistentVolumeClaimSpec {
                resources: Some(ResourceRequirements { requests: q(&[("storage", size)]), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            check_claim(&claim("5Gi"), &ranges),
            ["maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"]
        );
        assert_eq!(
            check_claim(&claim("500Mi"), &ranges),
            ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]
        );
        assert!(check_claim(&claim("1Gi"), &ranges).is_empty());
    }
}
