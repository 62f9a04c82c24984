//! Discovery as Kubernetes serves it: `/version`, `/api`, `/apis`, `/apis/{group}` and each
//! group version's resource list, made from the kinds table — what `kubectl api-resources`,
//! `api-versions` and every client's RESTMapper read first.

use crate::crd::CustomKind;
use crate::kinds::{KindInfo, KINDS};
use serde_json::{json, Value};
use std::sync::Arc;

/// The Kubernetes version Skiff's API follows (kubectl warns beyond one minor of skew).
pub const KUBERNETES_MINOR: &str = "32";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0-skiff.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `group/version` of a kind, split: `("", "v1")` for the core group.
pub fn group_version(info: &KindInfo) -> (&'static str, &'static str) {
    info.api_version.split_once('/').unwrap_or(("", info.api_version))
}

/// Resources that are not stored kinds: requests answered on the spot (a review is created
/// and answered, never kept) and usage figures gathered from the nodes.
/// (group version, resource, kind, namespaced, verbs)
pub const VIRTUAL: [(&str, &str, &str, bool, &[&str]); 6] = [
    ("authentication.k8s.io/v1", "tokenreviews", "TokenReview", false, &["create"]),
    ("authentication.k8s.io/v1", "selfsubjectreviews", "SelfSubjectReview", false, &["create"]),
    ("authorization.k8s.io/v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", false, &["create"]),
    ("authorization.k8s.io/v1", "selfsubjectrulesreviews", "SelfSubjectRulesReview", false, &["create"]),
    ("metrics.k8s.io/v1beta1", "nodes", "NodeMetrics", false, &["get", "list"]),
    ("metrics.k8s.io/v1beta1", "pods", "PodMetrics", true, &["get", "list"]),
];

/// The group versions other than the core one, in the kinds table's order (a group's stored
/// version, its preferred one, before the older ones also served), then the custom kinds'.
fn groups(custom: &[Arc<CustomKind>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let versions = KINDS
        .iter()
        .map(|k| k.api_version.to_string())
        .chain(VIRTUAL.iter().map(|v| v.0.to_string()))
        .chain(crate::versions::ALSO_SERVED.iter().map(|v| v.0.to_string()))
        .chain(custom.iter().flat_map(|k| k.api_versions()));
    for api_version in versions {
        if api_version.contains('/') && !out.contains(&api_version) {
            out.push(api_version);
        }
    }
    out
}

/// The groups, each with its versions, preferred first.
fn group_versions(custom: &[Arc<CustomKind>]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for gv in groups(custom) {
        let (group, version) = gv.split_once('/').unwrap_or(("", &gv));
        match out.iter_mut().find(|(g, _)| g == group) {
            Some((_, versions)) => versions.push(version.to_string()),
            None => out.push((group.to_string(), vec![version.to_string()])),
        }
    }
    out
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "preferredVersion": versions[0], "versions": versions})
}

pub fn group_list(custom: &[Arc<CustomKind>]) -> Value {
    let groups: Vec<Value> = group_versions(custom).iter().map(|(g, v)| group_json(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`, if Skiff serves the group.
pub fn group(name: &str, custom: &[Arc<CustomKind>]) -> Option<Value> {
    let (group, versions) = group_versions(custom).into_iter().find(|(g, _)| g == name)?;
    Some({
        let mut g = group_json(&group, &versions);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

const VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// The kinds `kubectl get all` shows.
fn categories(info: &KindInfo) -> Vec<&'static str> {
    match info.kind {
        "Pod"
        | "Service"
        | "Deployment"
        | "ReplicaSet"
        | "ReplicationController"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "CronJob"
        | "HorizontalPodAutoscaler" => {
            vec!["all"]
        }
        _ => vec![],
    }
}

/// The kind at `api_version` whose resource is `resource`.
pub fn kind_at(api_version: &str, resource: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| {
        k.resource == resource && (k.api_version == api_version || crate::versions::also_served(api_version, resource))
    })
}

/// `/api/v1` or `/apis/{group}/{version}`: the resources and their subresources.
pub fn resource_list(api_version: &str, custom: &[Arc<CustomKind>]) -> Option<Value> {
    // An older version also served lists its resource without subresources.
    let older = |k: &&KindInfo| crate::versions::also_served(api_version, k.resource);
    let kinds: Vec<&KindInfo> = KINDS.iter().filter(|k| k.api_version == api_version || older(k)).collect();
    let virtual_resources: Vec<Value> = VIRTUAL
        .iter()
        .filter(|v| v.0 == api_version)
        .map(|(_, resource, kind, namespaced, verbs)| {
            json!({"name": resource, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind, "verbs": verbs})
        })
        .collect();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let custom: Vec<&Arc<CustomKind>> =
        custom.iter().filter(|k| k.group == group && k.version(version).is_some()).collect();
    if kinds.is_empty() && virtual_resources.is_empty() && custom.is_empty() {
        return None;
    }
    let mut resources = virtual_resources;
    for kind in custom {
        let info = kind.info;
        let mut r = json!({
            "name": info.resource, "singularName": kind.singular, "namespaced": info.namespaced,
            "kind": info.kind, "verbs": VERBS,
        });
        let short: Vec<&str> = info.short_names.split(',').filter(|s| !s.is_empty()).collect();
        if !short.is_empty() {
            r["shortNames"] = json!(short);
        }
        if !kind.categories.is_empty() {
            r["categories"] = json!(kind.categories);
        }
        resources.push(r);
        for sub in info.subresources.split(',').filter(|s| !s.is_empty()) {
            let name = format!("{}/{sub}", info.resource);
            resources.push(match sub {
                "scale" => json!({"name": name, "singularName": "", "namespaced": info.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}),
                _ => json!({"name": name, "singularName": "", "namespaced": info.namespaced, "kind": info.kind, "verbs": ["get", "patch", "update"]}),
            });
        }
    }
    for info in kinds {
        let short: Vec<&str> = info.short_names.split(',').filter(|s| !s.is_empty()).collect();
        let mut r = json!({
            "name": info.resource,
            "singularName": info.kind.to_lowercase(),
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": VERBS,
        });
        if !short.is_empty() {
            r["shortNames"] = json!(short);
        }
        let categories = categories(info);
        if !categories.is_empty() {
            r["categories"] = json!(categories);
        }
        resources.push(r);
        let subresources = if info.api_version == api_version { info.subresources } else { "" };
        for sub in subresources.split(',').filter(|s| !s.is_empty()) {
            let name = format!("{}/{sub}", info.resource);
            resources.push(match sub {
                "status" => json!({"name": name, "singularName": "", "namespaced": info.namespaced, "kind": info.kind, "verbs": ["get", "patch", "update"]}),
                "scale" => json!({"name": name, "singularName": "", "namespaced": true, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}),
                "binding" => json!({"name": name, "singularName": "", "namespaced": true, "kind": "Binding", "verbs": ["create"]}),
                "eviction" => json!({"name": name, "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}),
                "token" => json!({"name": name, "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}),
                _ => continue,
            });
        }
        if info.kind == "Pod" {
            resources.push(
                json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}),
            );
        }
    }
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version, "resources": resources}))
}

/// The media type of aggregated discovery (`apidiscovery.k8s.io/v2`), which kubectl asks for
/// first: every version's resources of `/api` or `/apis` in one answer.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an Accept header's media types include [`AGGREGATED`] (parameters in any order).
pub fn wants_aggregated(accept: &str) -> bool {
    super::media_types(accept)
        .any(|params| ["g=apidiscovery.k8s.io", "v=v2", "as=APIGroupDiscoveryList"].iter().all(|p| params.contains(p)))
}

/// `/api` (`core`) or `/apis` as an APIGroupDiscoveryList: the same resources as
/// [`resource_list`] gives per version, subresources folded into their resource.
pub fn aggregated(core: bool, custom: &[Arc<CustomKind>]) -> Value {
    let groups = if core { vec![(String::new(), vec!["v1".to_string()])] } else { group_versions(custom) };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> =
                versions.iter().map(|version| aggregated_version(&group, version, custom)).collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// One version of a group in aggregated discovery.
fn aggregated_version(group: &str, version: &str, custom: &[Arc<CustomKind>]) -> Value {
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    let listed = resource_list(&gv, custom).unwrap_or_default();
    let mut resources: Vec<Value> = Vec::new();
    for r in listed["resources"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or_default();
        let kind = json!({
            "group": r.get("group").unwrap_or(&json!(group)),
            "version": r.get("version").unwrap_or(&json!(version)),
            "kind": r["kind"],
        });
        if let Some((parent, sub)) = name.split_once('/') {
            let Some(parent) = resources.iter_mut().find(|p| p["resource"] == parent) else { continue };
            let entry = json!({"subresource": sub, "responseKind": kind, "verbs": r["verbs"]});
            parent["subresources"].as_array_mut().expect("made with a list").push(entry);
            continue;
        }
        let scope = if r["namespaced"] == true { "Namespaced" } else { "Cluster" };
        let mut entry = json!({
            "resource": name, "responseKind": kind, "scope": scope,
            "singularResource": r["singularName"], "verbs": r["verbs"], "subresources": [],
        });
        for optional in ["shortNames", "categories"] {
            if let Some(v) = r.get(optional) {
                entry[optional] = v.clone();
            }
        }
        resources.push(entry);
    }
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_names_every_kind_once_with_its_subresources() {
        let core = resource_list("v1", &[]).unwrap();
        let names: Vec<&str> =
            core["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        for want in ["pods", "pods/status", "pods/binding", "pods/eviction", "pods/log", "services", "namespaces"] {
            assert_eq!(names.iter().filter(|n| **n == want).count(), 1, "{want} in {names:?}");
        }
        let apps = resource_list("apps/v1", &[]).unwrap();
        let scale = apps["resources"].as_array().unwrap().iter().find(|r| r["name"] == "deployments/scale").unwrap();
        assert_eq!((scale["group"].as_str(), scale["kind"].as_str()), (Some("autoscaling"), Some("Scale")));
        assert!(resource_list("apps/v2", &[]).is_none());
        let groups = group_list(&[]);
        let names: Vec<&str> =
            groups["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"apps") && names.contains(&"rbac.authorization.k8s.io"), "{names:?}");
        assert!(!names.contains(&""), "the core group is /api's, not /apis'");
        assert!(group("apps", &[]).is_some() && group("nope", &[]).is_none());
        assert_eq!(group("metrics.k8s.io", &[]).unwrap()["preferredVersion"]["version"], "v1beta1");
    }

    #[test]
    fn aggregated_discovery_folds_subresources_into_their_resource() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(wants_aggregated(kubectl));
        assert!(!wants_aggregated("application/json"));
        assert!(!wants_aggregated("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"));
        let core = aggregated(true, &[]);
        let v1 = &core["items"][0]["versions"][0];
        let pods = v1["resources"].as_array().unwrap().iter().find(|r| r["resource"] == "pods").unwrap();
        let subs: Vec<&str> =
            pods["subresources"].as_array().unwrap().iter().map(|s| s["subresource"].as_str().unwrap()).collect();
        assert_eq!(subs, ["status", "binding", "eviction", "log"]);
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["scope"], "Namespaced");
        let apps = aggregated(false, &[]);
        let deployments = apps["items"].as_array().unwrap().iter().find(|g| g["metadata"]["name"] == "apps").unwrap()
            ["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap()
            .clone();
        let scale =
            deployments["subresources"].as_array().unwrap().iter().find(|s| s["subresource"] == "scale").unwrap();
        assert_eq!(scale["responseKind"], json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}));
    }
}
