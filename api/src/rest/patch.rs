//! The patch types a PATCH request may carry: JSON patch (RFC 6902, with the `json-patch`
//! crate), JSON merge patch (RFC 7386) and Kubernetes' strategic merge patch — a merge patch
//! whose lists of named things (containers by `name`, container ports by `containerPort`,
//! volume mounts by `mountPath`, …) merge element by element, with the `$patch`,
//! `$retainKeys`, `$setElementOrder/` and `$deleteFromPrimitiveList/` directives kubectl
//! sends (`kubectl apply`, `set image`, `label`, `rollout restart`).

use crate::error::{ApiError, ApiResult};
use serde_json::{Map, Value};

/// The patch types, by their content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn of_content_type(content_type: &str) -> Option<PatchType> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Whether the patch pins a resourceVersion (a conflict is then final, not retried).
pub fn pins_version(kind: PatchType, patch: &Value) -> bool {
    match kind {
        PatchType::Json => patch
            .as_array()
            .into_iter()
            .flatten()
            .any(|op| op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion")),
        _ => patch.pointer("/metadata/resourceVersion").is_some_and(|v| !v.is_null()),
    }
}

/// `stored` with `patch` applied.
pub fn apply(kind: PatchType, stored: &Value, patch: &Value) -> ApiResult<Value> {
    let mut out = stored.clone();
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch is malformed: {e}")))?;
            json_patch::patch(&mut out, &ops).map_err(|e| ApiError::Invalid {
                kind: String::new(),
                name: crate::object::name(stored).into(),
                causes: vec![crate::error::FieldError::invalid(
                    "patch",
                    e.to_string(),
                    "the JSON patch does not apply",
                )],
            })?;
        }
        PatchType::Merge => crate::object::merge_patch(&mut out, patch),
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest("a strategic merge patch must be a JSON object".into()));
            }
            strategic_merge(&mut out, patch, &mut Vec::new())?;
        }
        PatchType::Apply => return Err(ApiError::Unsupported("server-side apply is not served yet".into())),
    }
    Ok(out)
}

/// How a list field merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMerge {
    /// Elements are objects matched by this key.
    ByKey(&'static str),
    /// A list of scalars merged as a set.
    Union,
}

/// Kubernetes' `patchStrategy:"merge"` lists of the built-in kinds, by field name (and, for
/// `ports`, by whether a container holds it).
pub(crate) fn list_merge(path: &[String], field: &str) -> Option<ListMerge> {
    let in_container =
        path.iter().any(|p| matches!(p.as_str(), "containers" | "initContainers" | "ephemeralContainers"));
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "secrets" => ListMerge::ByKey("name"),
        "volumeMounts" => ListMerge::ByKey("mountPath"),
        "volumeDevices" => ListMerge::ByKey("devicePath"),
        "hostAliases" | "podIPs" | "hostIPs" => ListMerge::ByKey("ip"),
        "ownerReferences" => ListMerge::ByKey("uid"),
        "conditions" => ListMerge::ByKey("type"),
        "addresses" if path.last().map(String::as_str) == Some("status") => ListMerge::ByKey("type"),
        "topologySpreadConstraints" => ListMerge::ByKey("topologyKey"),
        "ports" if in_container => ListMerge::ByKey("containerPort"),
        "ports" if path.last().map(String::as_str) == Some("spec") => ListMerge::ByKey("port"),
        "finalizers" => ListMerge::Union,
        _ => return None,
    })
}

/// How the list `field` of the API message `parent` (`PodSpec`, `Container`) merges: what
/// the OpenAPI documents tell kubectl, from the same table the server merges by.
pub fn merge_strategy(parent: &str, field: &str) -> Option<ListMerge> {
    let context = match parent {
        "Container" | "EphemeralContainer" => "containers",
        "ServiceSpec" => "spec",
        "NodeStatus" => "status",
        other => other,
    };
    list_merge(&[context.to_string()], field)
}

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM: &str = "$deleteFromPrimitiveList/";

/// Merges `patch` into the object `target` (at `path`) by the strategic rules.
fn strategic_merge(target: &mut Value, patch: &Value, path: &mut Vec<String>) -> ApiResult<()> {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = p.clone();
            replaced.remove("$patch");
            *target = Value::Object(strip_directives(replaced));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(bad(path, &format!("unknown patch directive $patch: {other:?}"))),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object");
    for (key, value) in p {
        if key == "$patch" || key == "$retainKeys" || key.starts_with(SET_ORDER) {
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_FROM) {
            let doomed = value.as_array().ok_or_else(|| bad(path, &format!("{key} must be a list")))?;
            if let Some(list) = t.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|v| !doomed.contains(v));
            }
            continue;
        }
        if value.is_null() {
            t.remove(key);
            continue;
        }
        path.push(key.clone());
        let result = match (value, list_merge(&path[..path.len() - 1], key)) {
            (Value::Array(items), Some(strategy)) => {
                let current = t.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                merge_list(current, items, strategy, path)
            }
            (Value::Object(_), _) => strategic_merge(t.entry(key.clone()).or_insert(Value::Null), value, path),
            _ => {
                t.insert(key.clone(), strip_value(value.clone()));
                Ok(())
            }
        };
        path.pop();
        result?;
        if let Some(order) = p.get(&format!("{SET_ORDER}{key}")).and_then(Value::as_array) {
            if let (Some(list), Some(strategy)) = (t.get_mut(key).and_then(Value::as_array_mut), list_merge(path, key))
            {
                reorder(list, order, strategy);
            }
        }
    }
    // An order given for a list the patch does not otherwise touch still applies.
    for (key, order) in p.iter().filter_map(|(k, v)| Some((k.strip_prefix(SET_ORDER)?, v.as_array()?))) {
        if !p.contains_key(key) {
            if let (Some(list), Some(strategy)) = (t.get_mut(key).and_then(Value::as_array_mut), list_merge(path, key))
            {
                reorder(list, order, strategy);
            }
        }
    }
    if let Some(keep) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or_else(|| bad(path, "$retainKeys must be a list"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(current: &mut Value, items: &[Value], strategy: ListMerge, path: &mut Vec<String>) -> ApiResult<()> {
    if !current.is_array() {
        *current = Value::Array(Vec::new());
    }
    let list = current.as_array_mut().expect("made a list");
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *list = items.iter().filter(|i| i.get("$patch").is_none()).map(|i| strip_value(i.clone())).collect();
        return Ok(());
    }
    match strategy {
        ListMerge::Union => {
            for item in items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
        }
        ListMerge::ByKey(key) => {
            for item in items {
                let Some(id) = item.get(key) else {
                    return Err(bad(path, &format!("an element of the list has no merge key {key:?}")));
                };
                let found = list.iter().position(|e| e.get(key) == Some(id));
                match (item.get("$patch").and_then(Value::as_str), found) {
                    (Some("delete"), Some(i)) => {
                        list.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => strategic_merge(&mut list[i], item, path)?,
                    (_, None) => {
                        let mut fresh = Value::Object(Map::new());
                        strategic_merge(&mut fresh, item, path)?;
                        list.push(fresh);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Orders `list` as `order` names its elements; those it does not name keep their order, after.
fn reorder(list: &mut [Value], order: &[Value], strategy: ListMerge) {
    let rank = |v: &Value| {
        order.iter().position(|o| match strategy {
            ListMerge::ByKey(key) => o.get(key).is_some() && o.get(key) == v.get(key),
            ListMerge::Union => o == v,
        })
    };
    list.sort_by_key(|v| rank(v).unwrap_or(usize::MAX));
}

/// A patch value stored as it is, without directives.
fn strip_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_value).collect()),
        other => other,
    }
}

fn strip_directives(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k, strip_value(v))).collect()
}

fn bad(path: &[String], why: &str) -> ApiError {
    ApiError::BadRequest(format!("invalid strategic merge patch at {}: {why}", path.join(".")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p", "labels": {"a": "1"}, "finalizers": ["x"]},
            "spec": {
                "containers": [
                    {"name": "web", "image": "busybox:1", "ports": [{"containerPort": 80}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "side", "image": "busybox:1"}
                ],
                "tolerations": [{"key": "k"}]
            }
        })
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let patch = json!({"spec": {"containers": [{"name": "web", "image": "busybox:2", "env": [{"name": "B", "value": "3"}]}]}});
        let out = apply(PatchType::Strategic, &pod(), &patch).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "busybox:2");
        assert_eq!(
            out["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}])
        );
        assert_eq!(out["spec"]["containers"][1]["name"], "side", "the other container is kept");
        assert_eq!(out["spec"]["containers"][0]["ports"], json!([{"containerPort": 80}]));
        // The same patch as a merge patch replaces the list.
        let merged = apply(PatchType::Merge, &pod(), &patch).unwrap();
        assert_eq!(merged["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn directives_delete_replace_order_and_retain() {
        let patch = json!({"spec": {
            "containers": [{"name": "side", "$patch": "delete"}],
            "tolerations": [{"key": "other"}]
        }});
        let out = apply(PatchType::Strategic, &pod(), &patch).unwrap();
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "other"}]), "a list without a strategy is replaced");

        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}]}});
        let out = apply(PatchType::Strategic, &pod(), &patch).unwrap();
        assert_eq!(out["spec"]["containers"][0]["name"], "side");

        let patch = json!({"metadata": {"finalizers": ["y"], "labels": {"a": null, "b": "2"}}});
        let out = apply(PatchType::Strategic, &pod(), &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}});
        let out = apply(PatchType::Strategic, &pod(), &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!([]));

        let strategy = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = apply(PatchType::Strategic, &strategy, &patch).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));

        let patch = json!({"spec": {"containers": [{"name": "only", "image": "i"}, {"$patch": "replace"}]}});
        let out = apply(PatchType::Strategic, &pod(), &patch).unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "only", "image": "i"}]));
    }

    #[test]
    fn json_patch_and_bad_patches() {
        let patch = json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "busybox:9"}]);
        let out = apply(PatchType::Json, &pod(), &patch).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "busybox:9");
        let failing = json!([{"op": "test", "path": "/metadata/name", "value": "q"}]);
        assert!(matches!(apply(PatchType::Json, &pod(), &failing), Err(ApiError::Invalid { .. })));
        assert!(matches!(apply(PatchType::Json, &pod(), &json!({"op": 1})), Err(ApiError::BadRequest(_))));
        let keyless = json!({"spec": {"containers": [{"image": "x"}]}});
        assert!(matches!(apply(PatchType::Strategic, &pod(), &keyless), Err(ApiError::BadRequest(_))));
        assert!(pins_version(PatchType::Merge, &json!({"metadata": {"resourceVersion": "5"}})));
        assert!(!pins_version(PatchType::Strategic, &json!({"metadata": {"labels": {}}})));
    }
}
