//! What the controllers ask of any object: does a selector match it, who controls it, is a pod
//! still a replica, is it ready — on the proto types.

use skiff_proto::api::{LabelSelector, ObjectMeta, OwnerReference, Pod};
use std::collections::BTreeMap;

/// `matchLabels` and `matchExpressions` as Kubernetes evaluates them (an empty selector
/// matches everything).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector.matches(labels)
}

/// The owner reference with `controller: true`.
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().find(|r| r.controller == Some(true))
}

/// Marked for deletion.
pub fn deleting(meta: &ObjectMeta) -> bool {
    !meta.deletion_timestamp.is_empty()
}

/// Being deleted, or finished (Succeeded / Failed): no longer counts as a replica.
pub fn terminating(pod: &Pod) -> bool {
    pod.metadata.as_ref().is_some_and(deleting) || crate::snapshot::is_terminal(pod)
}

/// The pod's Ready condition is True.
pub fn ready(pod: &Pod) -> bool {
    pod.is_ready()
}

/// The pod's phase ("" before the node reports one).
pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().map_or("", |s| s.phase.as_str())
}

/// The node the pod is bound to ("" while unscheduled).
pub fn node_name(pod: &Pod) -> &str {
    pod.spec.as_ref().map_or("", |s| s.node_name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors_match_as_kubernetes_evaluates_them() {
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let sel = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![req("tier", "In", &["a", "b"]), req("canary", "DoesNotExist", &[])],
        };
        assert!(selector_matches(&sel, &labels(&[("app", "web"), ("tier", "a")])));
        assert!(!selector_matches(&sel, &labels(&[("app", "web"), ("tier", "c")])));
        assert!(!selector_matches(&sel, &labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])));
        assert!(!selector_matches(&sel, &labels(&[("tier", "a")])));
        let odd = LabelSelector { match_expressions: vec![req("x", "Near", &[])], ..Default::default() };
        assert!(!selector_matches(&odd, &labels(&[("x", "1")])), "an unknown operator matches nothing");
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
    }
}
