//! Field ownership, as Kubernetes records it in `metadata.managedFields` for server-side
//! apply. Each field manager owns a set of field paths (FieldsV1:
//! `{"f:spec":{"f:replicas":{}}}`). An apply sets the fields its configuration names, removes
//! the ones it named last time and no longer does (unless another manager owns them too), and
//! is refused when it would change a field another manager owns — unless forced, which takes
//! the field over. Every other write that names a manager (`fieldManager`, or the client's
//! user agent) takes ownership of the fields it changed, away from their previous owners.
//!
//! Lists of named things (containers by `name`, …) are owned element by element, by the same
//! merge keys as strategic merge patch; other lists are owned whole (atomic).

use crate::error::{ApiError, ApiResult};
use crate::rest::patch::{self, ListMerge, PatchType};
use serde_json::{json, Map, Value};
use skiff_proto::api::ManagedFieldsEntry;
use std::collections::BTreeSet;

/// One field path in FieldsV1's spelling: `f:spec`, `k:{"name":"web"}`, `v:"x"`, and `.` for
/// a list element (or map) itself.
type Path = Vec<String>;

const ITSELF: &str = ".";

/// A set of field paths: the leaves of a FieldsV1 tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet(BTreeSet<Path>);

impl FieldSet {
    /// Reads a FieldsV1 tree.
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
            match v.as_object() {
                Some(m) if !m.is_empty() => {
                    for (k, child) in m {
                        path.push(k.clone());
                        walk(child, path, out);
                        path.pop();
                    }
                }
                _ if !path.is_empty() => {
                    out.insert(path.clone());
                }
                _ => {}
            }
        }
        let mut out = BTreeSet::new();
        walk(v, &mut Vec::new(), &mut out);
        FieldSet(out)
    }

    /// The set as a FieldsV1 tree.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for el in path {
                node = node
                    .entry(el.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("FieldsV1 nodes are objects");
            }
        }
        Value::Object(root)
    }

    /// The fields an object sets, as its writer owns them: not its identity (apiVersion, kind,
    /// name, namespace, …) nor its status; of its metadata only labels, annotations,
    /// finalizers and owner references.
    pub fn of_object(obj: &Value) -> FieldSet {
        let mut out = BTreeSet::new();
        let Some(top) = obj.as_object() else { return FieldSet(out) };
        for (field, value) in top {
            let kept: Option<Value> = match field.as_str() {
                "apiVersion" | "kind" | "status" => None,
                "metadata" => value.as_object().map(|m| {
                    Value::Object(
                        m.iter()
                            .filter(|(k, _)| {
                                matches!(k.as_str(), "labels" | "annotations" | "finalizers" | "ownerReferences")
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    )
                }),
                _ => Some(value.clone()),
            };
            match kept {
                Some(Value::Object(m)) if m.is_empty() && field == "metadata" => {}
                Some(v) => {
                    let mut names = vec![field.clone()];
                    let mut path = vec![format!("f:{field}")];
                    collect(&v, &mut names, &mut path, &mut out);
                }
                None => {}
            }
        }
        FieldSet(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Adds the leaves of `v` (at `path`; `names` are the JSON field names leading to it).
fn collect(v: &Value, names: &mut Vec<String>, path: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => collect_members(v, names, path, out),
        Value::Array(items) if !items.is_empty() => {
            let merge = names.split_last().and_then(|(field, context)| patch::list_merge(context, field));
            match merge {
                Some(ListMerge::ByKey(key)) if items.iter().all(|i| i.get(key).is_some()) => {
                    for item in items {
                        path.push(format!("k:{}", json!({ key: item[key] })));
                        path.push(ITSELF.into());
                        out.insert(path.clone());
                        path.pop();
                        collect_members(item, names, path, out);
                        path.pop();
                    }
                }
                Some(ListMerge::Union) => {
                    for item in items {
                        path.push(format!("v:{item}"));
                        out.insert(path.clone());
                        path.pop();
                    }
                }
                _ => {
                    out.insert(path.clone());
                }
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The members of a list element (owned one by one, the element itself by `.`).
fn collect_members(item: &Value, names: &mut Vec<String>, path: &mut Path, out: &mut BTreeSet<Path>) {
    if let Some(m) = item.as_object() {
        for (k, x) in m {
            names.push(k.clone());
            path.push(format!("f:{k}"));
            collect(x, names, path, out);
            path.pop();
            names.pop();
        }
    }
}

/// Where one path element leads inside a value.
enum Step {
    Member(String),
    Index(usize),
    Here,
}

fn step(cur: &Value, el: &str) -> Option<Step> {
    if el == ITSELF {
        return Some(Step::Here);
    }
    if let Some(field) = el.strip_prefix("f:") {
        return cur.get(field).map(|_| Step::Member(field.to_string()));
    }
    let items = cur.as_array()?;
    let found = if let Some(keys) = el.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(keys).ok()?;
        items.iter().position(|e| keys.iter().all(|(k, v)| e.get(k) == Some(v)))
    } else if let Some(value) = el.strip_prefix("v:") {
        let value: Value = serde_json::from_str(value).ok()?;
        items.iter().position(|e| *e == value)
    } else {
        el.strip_prefix("i:")?.parse().ok().filter(|i| *i < items.len())
    };
    found.map(Step::Index)
}

/// The value at `path` in `obj`, if it is there.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |cur, el| match step(cur, el)? {
        Step::Member(f) => cur.get(&f),
        Step::Index(i) => cur.get(i),
        Step::Here => Some(cur),
    })
}

fn value_at_mut<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = obj;
    for el in path {
        cur = match step(cur, el)? {
            Step::Member(f) => cur.get_mut(&f)?,
            Step::Index(i) => cur.get_mut(i)?,
            Step::Here => cur,
        };
    }
    Some(cur)
}

/// Whether `path` is the merge key of the list element it is in (`…k:{"name":"web"}/f:name`).
fn is_merge_key(path: &[String]) -> bool {
    match path {
        [.., element, member] => match (element.strip_prefix("k:"), member.strip_prefix("f:")) {
            (Some(keys), Some(field)) => {
                serde_json::from_str::<Map<String, Value>>(keys).is_ok_and(|k| k.contains_key(field))
            }
            _ => false,
        },
        _ => false,
    }
}

/// Removes the field (or, for a path ending in `.`, the list element) at `path`.
fn remove(obj: &mut Value, path: &[String]) {
    let path = path.strip_suffix(&[ITSELF.to_string()]).unwrap_or(path);
    let Some((last, parent)) = path.split_last() else { return };
    let Some(container) = value_at_mut(obj, parent) else { return };
    match step(container, last) {
        Some(Step::Member(f)) => {
            container.as_object_mut().map(|m| m.remove(&f));
        }
        Some(Step::Index(i)) => {
            container.as_array_mut().map(|a| a.remove(i));
        }
        _ => {}
    }
}

/// A path as Kubernetes prints it in a conflict: `.spec.template.spec.containers[name="web"].image`.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(keys) = el.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(keys).unwrap_or_default();
            let shown: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", shown.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = el.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// One manager's entry with its field set read.
struct Owner {
    entry: ManagedFieldsEntry,
    fields: FieldSet,
}

impl Owner {
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.entry.manager == manager && self.entry.operation == operation && self.entry.subresource == subresource
    }

    /// How a conflict names this manager: `"kubectl"`, or `"kubectl-edit" using apps/v1`.
    fn shown(&self) -> String {
        let mut s = format!("{:?}", self.entry.manager);
        if !self.entry.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.entry.subresource));
        }
        if self.entry.operation == "Update" {
            s.push_str(&format!(" using {}", self.entry.api_version));
        }
        s
    }
}

/// The owners recorded on an object (entries that do not read are dropped).
fn owners(obj: &Value) -> Vec<Owner> {
    let entries = obj.pointer("/metadata/managedFields").and_then(Value::as_array).cloned().unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|e| serde_json::from_value::<ManagedFieldsEntry>(e).ok())
        .map(|entry| {
            let tree = serde_json::from_str(&entry.fields_v1).unwrap_or(Value::Null);
            Owner { fields: FieldSet::from_fields_v1(&tree), entry }
        })
        .collect()
}

/// Writes the owners with fields left into `obj`'s metadata (an empty list when none is, so
/// that the store does not keep the previous owners).
fn record(obj: &mut Value, owners: Vec<Owner>) {
    let entries: Vec<Value> = owners
        .into_iter()
        .filter(|o| !o.fields.is_empty())
        .map(|mut o| {
            o.entry.fields_type = "FieldsV1".into();
            o.entry.fields_v1 = o.fields.to_fields_v1().to_string();
            serde_json::to_value(&o.entry).expect("a ManagedFieldsEntry serializes")
        })
        .collect();
    crate::object::set_meta(obj, "managedFields", Value::Array(entries));
}

fn entry(manager: &str, operation: &str, api_version: &str) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        manager: manager.into(),
        operation: operation.into(),
        api_version: api_version.into(),
        time: skiff_proto::time::now_rfc3339(),
        ..Default::default()
    }
}

/// Server-side apply of the configuration `applied` by `manager` to `live` (none: the object
/// is created from it). Refused with the conflicting fields, unless `force`.
pub fn apply(live: Option<&Value>, applied: &Value, manager: &str, api_version: &str, force: bool) -> ApiResult<Value> {
    if applied.pointer("/metadata/managedFields").is_some_and(|m| !m.is_null()) {
        return Err(ApiError::BadRequest("metadata.managedFields must be nil in an applied configuration".into()));
    }
    if let Some(key) = directive(applied) {
        return Err(ApiError::BadRequest(format!("{key}: an applied configuration may not hold patch directives")));
    }
    let mut applied = applied.clone();
    if let Some(m) = applied.as_object_mut() {
        m.remove("status");
    }
    let wanted = FieldSet::of_object(&applied);
    let Some(live) = live else {
        let mut made = applied;
        record(&mut made, vec![Owner { entry: entry(manager, "Apply", api_version), fields: wanted }]);
        return Ok(made);
    };
    let mut owners = owners(live);
    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for owner in owners.iter_mut().filter(|o| !o.is(manager, "Apply", "")) {
        let taken: Vec<Path> = wanted
            .0
            .intersection(&owner.fields.0)
            .filter(|p| p.last().map(String::as_str) != Some(ITSELF))
            .filter(|p| value_at(live, p) != value_at(&applied, p))
            .cloned()
            .collect();
        if force {
            owner.fields.0.retain(|p| !taken.contains(p));
        } else {
            conflicts.extend(taken.into_iter().map(|p| (owner.shown(), p)));
        }
    }
    if !conflicts.is_empty() {
        return Err(apply_conflict(&conflicts));
    }
    let previous = owners.iter().find(|o| o.is(manager, "Apply", "")).map(|o| o.fields.clone()).unwrap_or_default();
    let others: BTreeSet<&Path> =
        owners.iter().filter(|o| !o.is(manager, "Apply", "")).flat_map(|o| o.fields.0.iter()).collect();
    let mut out = live.clone();
    // In order, so an element goes before its members (which then are gone with it); an
    // element's merge key stays while the element does.
    for gone in previous.0.difference(&wanted.0) {
        if others.contains(gone) || is_merge_key(gone) {
            continue;
        }
        if gone.last().map(String::as_str) == Some(ITSELF) {
            let element = &gone[..gone.len() - 1];
            if others.iter().any(|p| p.starts_with(element)) || wanted.0.iter().any(|p| p.starts_with(element)) {
                continue;
            }
        }
        remove(&mut out, gone);
    }
    out = patch::apply(PatchType::Strategic, &out, &applied)?;
    match owners.iter_mut().find(|o| o.is(manager, "Apply", "")) {
        Some(mine) => {
            mine.fields = wanted;
            mine.entry.api_version = api_version.into();
            mine.entry.time = skiff_proto::time::now_rfc3339();
        }
        None => owners.push(Owner { entry: entry(manager, "Apply", api_version), fields: wanted }),
    }
    record(&mut out, owners);
    Ok(out)
}

/// The first key of `v` (at any depth) that is a strategic-merge directive (`$patch`, …).
fn directive(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, x)| if k.starts_with('$') { Some(k.clone()) } else { directive(x) }),
        Value::Array(items) => items.iter().find_map(directive),
        _ => None,
    }
}

/// Records a write (create, update or patch; through `subresource` when not empty) by
/// `manager`: it owns the fields it changed,
/// which their previous owners lose; fields no longer set are owned by no one. `old` is the
/// stored object (none for a create); an explicit empty `managedFields` in `new` clears them.
pub fn track_update(old: Option<&Value>, new: &mut Value, manager: &str, api_version: &str, subresource: &str) {
    let reset = new.pointer("/metadata/managedFields").and_then(Value::as_array).is_some_and(Vec::is_empty);
    let mut owners = match old {
        Some(old) if !reset => owners(old),
        _ => Vec::new(),
    };
    let fields = FieldSet::of_object(new);
    let changed: BTreeSet<Path> =
        fields.0.iter().filter(|p| old.and_then(|o| value_at(o, p)) != value_at(new, p)).cloned().collect();
    for owner in owners.iter_mut() {
        let keeps_changed = owner.is(manager, "Update", subresource);
        owner.fields.0.retain(|p| fields.0.contains(p) && (keeps_changed || !changed.contains(p)));
    }
    if !changed.is_empty() {
        match owners.iter_mut().find(|o| o.is(manager, "Update", subresource)) {
            Some(mine) => {
                mine.fields.0.extend(changed);
                mine.entry.api_version = api_version.into();
                mine.entry.time = skiff_proto::time::now_rfc3339();
            }
            None => {
                let mut mine = entry(manager, "Update", api_version);
                mine.subresource = subresource.into();
                owners.push(Owner { entry: mine, fields: FieldSet(changed) });
            }
        }
    }
    record(new, owners);
}

/// The manager a write names: `fieldManager`, else the client's user agent up to its first
/// `/` (`kubectl`), as Kubernetes derives it.
pub fn manager_of(field_manager: &str, user_agent: &str) -> ApiResult<String> {
    let name = if field_manager.is_empty() {
        user_agent.split('/').next().unwrap_or_default().chars().take(128).collect()
    } else {
        field_manager.to_string()
    };
    if name.chars().count() > 128 || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest(format!(
            "fieldManager: Invalid value: {name:?}: must be at most 128 printable characters"
        )));
    }
    Ok(if name.is_empty() { "unknown".into() } else { name })
}

/// Kubernetes' apply conflict: 409 Conflict naming each field and its manager.
fn apply_conflict(conflicts: &[(String, Path)]) -> ApiError {
    let message = if let [(manager, path)] = conflicts {
        format!("Apply failed with 1 conflict: conflict with {manager}: {}", path_string(path))
    } else {
        let mut by_manager: Vec<(&String, Vec<String>)> = Vec::new();
        for (manager, path) in conflicts {
            match by_manager.iter_mut().find(|(m, _)| *m == manager) {
                Some((_, paths)) => paths.push(path_string(path)),
                None => by_manager.push((manager, vec![path_string(path)])),
            }
        }
        by_manager.sort();
        let lines: Vec<String> = by_manager
            .iter()
            .flat_map(|(m, paths)| {
                std::iter::once(format!("conflicts with {m}:")).chain(paths.iter().map(|p| format!("- {p}")))
            })
            .collect();
        format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
    };
    ApiError::ApplyConflict {
        message,
        causes: conflicts.iter().map(|(m, p)| (format!("conflict with {m}"), path_string(p))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "web", "image": image, "args": ["a", "b"]}
            ]}}}
        })
    }

    #[test]
    fn an_objects_fields_follow_merge_keys_and_skip_identity() {
        let set = FieldSet::of_object(&deployment(2, "busybox:test"));
        let tree = set.to_fields_v1();
        assert_eq!(tree["f:metadata"], json!({"f:labels": {"f:app": {}}}));
        let container = &tree["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
        assert_eq!(container, &json!({".": {}, "f:name": {}, "f:image": {}, "f:args": {}}));
        assert_eq!(FieldSet::from_fields_v1(&tree), set);
        assert!(tree.get("f:apiVersion").is_none() && tree["f:metadata"].get("f:name").is_none());
    }

    #[test]
    fn apply_creates_then_conflicts_with_another_writer_unless_forced() {
        let made = apply(None, &deployment(2, "busybox:test"), "kubectl", "apps/v1", false).unwrap();
        assert_eq!(made["metadata"]["managedFields"][0]["manager"], "kubectl");
        assert_eq!(made["metadata"]["managedFields"][0]["operation"], "Apply");
        // Someone scales it: they now own spec.replicas.
        let mut scaled = made.clone();
        scaled["spec"]["replicas"] = json!(5);
        track_update(Some(&made), &mut scaled, "kubectl-scale", "apps/v1", "");
        let owners: Vec<&str> = scaled["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(owners, ["kubectl", "kubectl-scale"]);
        // Re-applying the old count conflicts, naming the field and its manager.
        let err = apply(Some(&scaled), &deployment(2, "busybox:test"), "kubectl", "apps/v1", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        // The same value is shared, not a conflict; a forced apply takes the field over.
        apply(Some(&scaled), &deployment(5, "busybox:test"), "kubectl", "apps/v1", false).unwrap();
        let forced = apply(Some(&scaled), &deployment(3, "busybox:test"), "kubectl", "apps/v1", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let scale_entry = &forced["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(scale_entry.len(), 1, "kubectl-scale owned only replicas: {scale_entry:?}");
    }

    #[test]
    fn apply_removes_what_it_no_longer_names_unless_another_owns_it() {
        let mut config = deployment(2, "busybox:test");
        config["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "busybox:test"}));
        config["metadata"]["labels"]["tier"] = json!("front");
        let live = apply(None, &config, "kubectl", "apps/v1", false).unwrap();
        // Another writer adds an annotation; the applier drops the sidecar and a label.
        let mut annotated = live.clone();
        annotated["metadata"]["annotations"] = json!({"note": "kept"});
        track_update(Some(&live), &mut annotated, "kubectl-annotate", "apps/v1", "");
        let out = apply(Some(&annotated), &deployment(2, "busybox:test"), "kubectl", "apps/v1", false).unwrap();
        let containers = out["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{containers:?}");
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(out["metadata"]["annotations"], json!({"note": "kept"}));
    }

    #[test]
    fn updates_move_ownership_and_paths_print_as_kubernetes_does() {
        let created = {
            let mut d = deployment(1, "busybox:test");
            track_update(None, &mut d, "kubectl-create", "apps/v1", "");
            d
        };
        let mut edited = created.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:new");
        track_update(Some(&created), &mut edited, "kubectl-edit", "apps/v1", "");
        let err = apply(Some(&edited), &deployment(1, "busybox:test"), "kubectl", "apps/v1", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: \
             .spec.template.spec.containers[name=\"web\"].image"
        );
        // An explicit empty list clears ownership.
        let mut reset = edited.clone();
        reset["metadata"]["managedFields"] = json!([]);
        track_update(Some(&edited), &mut reset, "x", "apps/v1", "");
        assert_eq!(reset["metadata"]["managedFields"], json!([]));
        assert_eq!(manager_of("", "kubectl/v1.32.0 (linux/amd64)").unwrap(), "kubectl");
        assert!(manager_of("bad\u{7}", "").is_err());
    }
}
