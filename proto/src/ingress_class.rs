//! Which Ingresses Skiff's ingress controller serves, decided as Kubernetes controllers do:
//! by `spec.ingressClassName` (or the older `kubernetes.io/ingress.class` annotation) naming an
//! IngressClass whose `spec.controller` is Skiff's, or, naming none, by the default class.

use serde_json::Value;

/// `spec.controller` of the IngressClasses Skiff serves.
pub const CONTROLLER: &str = "skiff.io/ingress-controller";
/// The class `skiff` the API creates at start-up (the default class).
pub const DEFAULT_CLASS: &str = "skiff";
pub const IS_DEFAULT: &str = "ingressclass.kubernetes.io/is-default-class";

/// The class an Ingress names, if any.
pub fn class_of(ing: &Value) -> Option<&str> {
    ing["spec"]["ingressClassName"]
        .as_str()
        .or_else(|| ing["metadata"]["annotations"]["kubernetes.io/ingress.class"].as_str())
        .filter(|c| !c.is_empty())
}

/// Whether Skiff serves `ing`, given the cluster's IngressClasses. An Ingress naming no class
/// goes to the default class's controller — or to Skiff if no class is marked default.
pub fn served(ing: &Value, classes: &[Value]) -> bool {
    let ours = |c: &Value| c["spec"]["controller"] == CONTROLLER;
    match class_of(ing) {
        Some(name) => classes.iter().any(|c| c["metadata"]["name"] == name && ours(c)),
        None => {
            let defaults: Vec<&Value> =
                classes.iter().filter(|c| c["metadata"]["annotations"][IS_DEFAULT] == "true").collect();
            defaults.is_empty() || defaults.iter().any(|c| ours(c))
        }
    }
}

/// [`served`] on the proto types.
pub fn serves<'a>(ing: &crate::api::Ingress, classes: impl IntoIterator<Item = &'a crate::api::IngressClass>) -> bool {
    let ours = |c: &crate::api::IngressClass| c.spec.as_ref().is_some_and(|s| s.controller == CONTROLLER);
    let meta = |c: &'a crate::api::IngressClass| c.metadata.as_ref();
    let named = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()).or_else(|| {
        ing.metadata.as_ref().and_then(|m| m.annotations.get("kubernetes.io/ingress.class")).map(String::as_str)
    });
    match named.filter(|c| !c.is_empty()) {
        Some(name) => classes.into_iter().any(|c| meta(c).is_some_and(|m| m.name == name) && ours(c)),
        None => {
            let defaults: Vec<&crate::api::IngressClass> = classes
                .into_iter()
                .filter(|c| meta(c).is_some_and(|m| m.annotations.get(IS_DEFAULT).is_some_and(|v| v == "true")))
                .collect();
            defaults.is_empty() || defaults.iter().any(|c| ours(c))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(name: &str, controller: &str, default: bool) -> Value {
        let mut c = json!({"metadata": {"name": name}, "spec": {"controller": controller}});
        if default {
            c["metadata"]["annotations"] = json!({IS_DEFAULT: "true"});
        }
        c
    }

    #[test]
    fn an_ingress_is_served_by_its_class_controller_or_the_default() {
        let named = |n: &str| json!({"spec": {"ingressClassName": n}});
        let classes =
            vec![class("skiff", CONTROLLER, true), class("nginx", CONTROLLER, false), class("other", "x.io/y", false)];
        assert!(served(&named("skiff"), &classes));
        assert!(served(&named("nginx"), &classes), "a class pointing at Skiff's controller");
        assert!(!served(&named("other"), &classes), "another controller's class");
        assert!(!served(&named("missing"), &classes), "a class that does not exist");
        assert!(served(&json!({"spec": {}}), &classes), "no class: the default");
        let legacy = json!({"metadata": {"annotations": {"kubernetes.io/ingress.class": "other"}}, "spec": {}});
        assert!(!served(&legacy, &classes), "the old annotation names a class too");
        let foreign_default = vec![class("skiff", CONTROLLER, false), class("other", "x.io/y", true)];
        assert!(!served(&json!({"spec": {}}), &foreign_default), "another controller is the default");
        assert!(served(&json!({"spec": {}}), &[]), "no classes at all: Skiff is the only controller");
    }

    #[test]
    fn the_typed_decision_is_the_same() {
        let named = |n: &str| json!({"spec": {"ingressClassName": n}});
        let legacy = json!({"metadata": {"annotations": {"kubernetes.io/ingress.class": "other"}}, "spec": {}});
        let ingresses = [named("skiff"), named("nginx"), named("other"), named("missing"), json!({"spec": {}}), legacy];
        let class_sets = [
            vec![class("skiff", CONTROLLER, true), class("nginx", CONTROLLER, false), class("other", "x.io/y", false)],
            vec![class("skiff", CONTROLLER, false), class("other", "x.io/y", true)],
            vec![],
        ];
        for classes in &class_sets {
            let typed: Vec<crate::api::IngressClass> =
                classes.iter().map(|c| serde_json::from_value(c.clone()).unwrap()).collect();
            for ing in &ingresses {
                let typed_ing: crate::api::Ingress = serde_json::from_value(ing.clone()).unwrap();
                assert_eq!(serves(&typed_ing, &typed), served(ing, classes), "{ing} with {classes:?}");
            }
        }
    }
}
