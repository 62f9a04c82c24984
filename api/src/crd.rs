//! CustomResourceDefinitions: the rules a definition must meet, the status the server gives it,
//! and the [`Catalog`] of the kinds they define, which every master keeps current from its
//! store (a watch on the definitions, and a fresh read when a request names a kind the
//! catalog does not know yet, so a kind is served at once on every master).
//!
//! A custom kind gets a [`KindInfo`] like the built-in ones, so every verb, list, watch,
//! authorization and table path takes it unchanged; its objects live under
//! `/registry/<group>/<plural>/` and are checked by the storage version's schema
//! ([`crate::schema`]) instead of a compiled type. The `KindInfo` strings are interned for the
//! life of the process: each distinct definition costs a few hundred bytes once.

use crate::error::FieldError;
use crate::kinds::{KindInfo, KINDS};
use crate::validation::{is_dns1123_label, is_dns1123_subdomain};
use serde_json::{json, Value};
use skiff_proto::api::{CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceSubresourceScale};
use std::sync::{Arc, Mutex, RwLock};

/// One served version of a custom kind.
#[derive(Debug, Clone)]
pub struct Version {
    pub name: String,
    pub storage: bool,
    pub deprecated: bool,
    pub deprecation_warning: Option<String>,
    pub schema: Value,
    pub columns: Vec<CustomResourceColumnDefinition>,
}

/// A kind a CustomResourceDefinition defines.
#[derive(Debug, Clone)]
pub struct CustomKind {
    /// At the storage version.
    pub info: &'static KindInfo,
    pub group: String,
    pub singular: String,
    pub list_kind: String,
    pub categories: Vec<String>,
    /// Served versions, in the definition's order.
    pub versions: Vec<Version>,
    pub scale: Option<CustomResourceSubresourceScale>,
}

impl CustomKind {
    pub fn storage(&self) -> &Version {
        self.versions.iter().find(|v| v.storage).unwrap_or(&self.versions[0])
    }

    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// `group/version` of each served version, the storage version first.
    pub fn api_versions(&self) -> Vec<String> {
        let storage = self.storage().name.clone();
        std::iter::once(storage.clone())
            .chain(self.versions.iter().map(|v| v.name.clone()).filter(|v| *v != storage))
            .map(|v| format!("{}/{v}", self.group))
            .collect()
    }

    /// The kind as it is written from a definition that passed [`validate`].
    fn from_definition(crd: &CustomResourceDefinition) -> Option<CustomKind> {
        let spec = crd.spec.as_ref()?;
        let names = spec.names.clone().unwrap_or_default();
        let served: Vec<Version> = spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| Version {
                name: v.name.clone(),
                storage: v.storage,
                deprecated: v.deprecated,
                deprecation_warning: v.deprecation_warning.clone(),
                schema: v
                    .schema
                    .as_ref()
                    .and_then(|s| serde_json::from_str(&s.open_apiv3_schema).ok())
                    .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})),
                columns: v.additional_printer_columns.clone(),
            })
            .collect();
        let storage = spec.versions.iter().find(|v| v.storage)?;
        if served.is_empty() {
            return None;
        }
        let subresources = storage.subresources.clone().unwrap_or_default();
        let mut subs = Vec::new();
        if subresources.status.is_some() {
            subs.push("status");
        }
        if subresources.scale.is_some() {
            subs.push("scale");
        }
        let info = intern(KindInfo {
            kind: leak(&names.kind),
            resource: leak(&names.plural),
            api_version: leak(&format!("{}/{}", spec.group, storage.name)),
            namespaced: spec.scope == "Namespaced",
            short_names: leak(&names.short_names.join(",")),
            subresources: leak(&subs.join(",")),
            custom: true,
        });
        Some(CustomKind {
            info,
            group: spec.group.clone(),
            singular: if names.singular.is_empty() { names.kind.to_lowercase() } else { names.singular },
            list_kind: if names.list_kind.is_empty() { format!("{}List", names.kind) } else { names.list_kind },
            categories: names.categories,
            versions: served,
            scale: subresources.scale,
        })
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// The one `&'static KindInfo` for a definition's shape, made the first time it is seen.
fn intern(info: KindInfo) -> &'static KindInfo {
    static SEEN: Mutex<Vec<&'static KindInfo>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = seen.iter().find(|k| ***k == info) {
        return found;
    }
    let made: &'static KindInfo = Box::leak(Box::new(info));
    seen.push(made);
    made
}

/// The custom kinds a master serves, rebuilt when the stored definitions change.
#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    /// (name, resourceVersion) of the definitions the kinds were made from.
    from: Vec<(String, String)>,
    kinds: Vec<Arc<CustomKind>>,
}

impl Catalog {
    /// Rebuilds the kinds from `definitions` (every stored one) if they changed.
    pub fn sync(&self, definitions: &[Value]) {
        let from: Vec<(String, String)> = definitions
            .iter()
            .map(|d| (crate::object::name(d).to_string(), crate::object::resource_version(d).to_string()))
            .collect();
        if self.state.read().unwrap_or_else(|p| p.into_inner()).from == from {
            return;
        }
        let kinds = definitions
            .iter()
            .filter_map(|d| serde_json::from_value::<CustomResourceDefinition>(d.clone()).ok())
            .filter_map(|d| CustomKind::from_definition(&d))
            .map(Arc::new)
            .collect();
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = State { from, kinds };
    }

    pub fn kinds(&self) -> Vec<Arc<CustomKind>> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).kinds.clone()
    }

    /// The kind served at `group/version` as `resource`.
    pub fn at(&self, api_version: &str, resource: &str) -> Option<Arc<CustomKind>> {
        let (group, version) = api_version.split_once('/')?;
        self.kinds()
            .into_iter()
            .find(|k| k.group == group && k.info.resource == resource && k.version(version).is_some())
    }

    /// The kind named by `resource` or `resource.group` (as `kubectl` and the Objects service
    /// name resources).
    pub fn by_resource(&self, resource: &str) -> Option<Arc<CustomKind>> {
        self.kinds().into_iter().find(|k| {
            k.info.resource == resource
                || resource.strip_prefix(k.info.resource).and_then(|r| r.strip_prefix('.')) == Some(k.group.as_str())
        })
    }

    /// The kind whose objects carry `kind` and `apiVersion`.
    pub fn by_kind(&self, kind: &str, api_version: &str) -> Option<Arc<CustomKind>> {
        self.kinds().into_iter().find(|k| k.info.kind == kind && k.api_versions().iter().any(|v| v == api_version))
    }

    /// The kind whose `KindInfo` is `info`.
    pub fn of(&self, info: &KindInfo) -> Option<Arc<CustomKind>> {
        self.kinds().into_iter().find(|k| std::ptr::eq(k.info, info) || *k.info == *info)
    }
}

/// Where a kind's scale subresource reads and writes: a built-in workload's
/// `spec.replicas` / `status.replicas` and its selector, or the paths a definition names.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    /// JSON pointers (`/spec/replicas`).
    pub spec: Vec<String>,
    pub status: String,
    /// None: the built-in workloads' selector ([`crate::service::scale_selector`]).
    pub selector: Option<String>,
}

impl ScalePaths {
    pub fn of(catalog: &Catalog, info: &KindInfo) -> ScalePaths {
        let custom = if info.custom { catalog.of(info).and_then(|k| k.scale.clone()) } else { None };
        match custom {
            Some(scale) => ScalePaths {
                spec: fields(&scale.spec_replicas_path),
                status: pointer(&scale.status_replicas_path),
                selector: Some(scale.label_selector_path.as_deref().map(pointer).unwrap_or_default()),
            },
            None => ScalePaths {
                spec: vec!["spec".into(), "replicas".into()],
                status: "/status/replicas".into(),
                selector: None,
            },
        }
    }

    pub fn spec_replicas(&self, obj: &Value) -> i64 {
        obj.pointer(&format!("/{}", self.spec.join("/"))).and_then(Value::as_i64).unwrap_or(0)
    }

    pub fn status_replicas(&self, obj: &Value) -> i64 {
        obj.pointer(&self.status).and_then(Value::as_i64).unwrap_or(0)
    }

    pub fn selector(&self, obj: &Value) -> String {
        match &self.selector {
            Some(p) if p.is_empty() => String::new(),
            Some(p) => obj.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string(),
            None => crate::service::scale_selector(obj),
        }
    }

    /// Sets the desired replicas in `obj`, making the objects on the way.
    pub fn set_replicas(&self, obj: &mut Value, replicas: i64) {
        let mut at = obj;
        for (i, field) in self.spec.iter().enumerate() {
            if !at.is_object() {
                *at = json!({});
            }
            let map = at.as_object_mut().expect("an object");
            if i == self.spec.len() - 1 {
                map.insert(field.clone(), json!(replicas));
                return;
            }
            at = map.entry(field.clone()).or_insert_with(|| json!({}));
        }
    }
}

/// `.spec.replicas` → `["spec", "replicas"]`.
fn fields(path: &str) -> Vec<String> {
    path.split('.').filter(|f| !f.is_empty()).map(str::to_string).collect()
}

/// `.status.replicas` → `/status/replicas`.
fn pointer(path: &str) -> String {
    fields(path).iter().map(|f| format!("/{f}")).collect()
}

/// The API groups of Skiff's built-in kinds, which no definition may add to.
fn built_in_group(group: &str) -> bool {
    KINDS.iter().any(|k| k.api_version.split_once('/').map_or("", |(g, _)| g) == group)
        || crate::rest::discovery::VIRTUAL.iter().any(|v| v.0.split_once('/').map_or("", |(g, _)| g) == group)
}

const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with \
                           an alphabetic character, and end with an alphanumeric character";

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

const COLUMN_TYPES: [&str; 5] = ["integer", "number", "string", "boolean", "date"];

/// Kubernetes' rules for a definition (`ValidateCustomResourceDefinition`), and that its group
/// is not one of Skiff's own.
pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Ok(crd) = serde_json::from_value::<CustomResourceDefinition>(obj.clone()) else { return errs };
    let spec = crd.spec.unwrap_or_default();
    let names = spec.names.unwrap_or_default();
    let name = crate::object::name(obj);
    if spec.group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else if !is_dns1123_subdomain(&spec.group) {
        errs.push(FieldError::invalid("spec.group", &spec.group, crate::validation::DNS1123_SUBDOMAIN_MSG));
    } else if !spec.group.contains('.') {
        errs.push(FieldError::invalid("spec.group", &spec.group, "should be a domain with at least one dot"));
    } else if built_in_group(&spec.group) {
        errs.push(FieldError::invalid("spec.group", &spec.group, "is served by Skiff itself"));
    }
    if name != format!("{}.{}", names.plural, spec.group) {
        errs.push(FieldError::invalid("metadata.name", name, "must be spec.names.plural+\".\"+spec.group"));
    }
    for (field, value) in [("plural", &names.plural), ("singular", &names.singular)] {
        if field == "plural" && value.is_empty() {
            errs.push(FieldError::required("spec.names.plural", ""));
        } else if !value.is_empty() && !is_dns1035_label(value) {
            errs.push(FieldError::invalid(format!("spec.names.{field}"), value, DNS1035_MSG));
        }
    }
    for (field, value) in [("kind", &names.kind), ("listKind", &names.list_kind)] {
        if field == "kind" && value.is_empty() {
            errs.push(FieldError::required("spec.names.kind", ""));
        } else if !value.is_empty() && !is_dns1035_label(&value.to_lowercase()) {
            errs.push(FieldError::invalid(
                format!("spec.names.{field}"),
                value,
                "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
            ));
        }
    }
    if !names.kind.is_empty() && names.kind == names.list_kind {
        errs.push(FieldError::invalid(
            "spec.names.listKind",
            &names.list_kind,
            "kind and listKind may not be the same",
        ));
    }
    for (i, short) in names.short_names.iter().enumerate() {
        if !is_dns1035_label(short) {
            errs.push(FieldError::invalid(format!("spec.names.shortNames[{i}]"), short, DNS1035_MSG));
        }
    }
    if !matches!(spec.scope.as_str(), "Namespaced" | "Cluster") {
        errs.push(FieldError::not_supported("spec.scope", &spec.scope, &["Cluster", "Namespaced"]));
    }
    if spec.preserve_unknown_fields {
        errs.push(FieldError::invalid(
            "spec.preserveUnknownFields",
            true,
            "cannot set to true, set x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead",
        ));
    }
    if !matches!(spec.conversion.as_ref().map(|c| c.strategy.as_str()), None | Some("None" | "Webhook")) {
        let strategy = spec.conversion.as_ref().map(|c| c.strategy.clone()).unwrap_or_default();
        errs.push(FieldError::not_supported("spec.conversion.strategy", strategy, &["None", "Webhook"]));
    }
    if spec.versions.is_empty() {
        errs.push(FieldError::required("spec.versions", "must have exactly one version marked as storage version"));
    } else if spec.versions.iter().filter(|v| v.storage).count() != 1 {
        let shown: Vec<String> = spec.versions.iter().map(|v| v.name.clone()).collect();
        errs.push(FieldError::invalid(
            "spec.versions",
            shown,
            "must have exactly one version marked as storage version",
        ));
    }
    if !spec.versions.is_empty() && !spec.versions.iter().any(|v| v.served) {
        errs.push(FieldError::invalid("spec.versions", spec.versions.len(), "must have at least one served version"));
    }
    for (i, version) in spec.versions.iter().enumerate() {
        let vp = format!("spec.versions[{i}]");
        if !is_dns1035_label(&version.name) {
            errs.push(FieldError::invalid(format!("{vp}.name"), &version.name, DNS1035_MSG));
        }
        if spec.versions[..i].iter().any(|v| v.name == version.name) {
            errs.push(FieldError::duplicate(format!("{vp}.name"), &version.name));
        }
        match version.schema.as_ref().map(|s| s.open_apiv3_schema.as_str()).filter(|s| !s.is_empty()) {
            None => errs.push(FieldError::required(format!("{vp}.schema.openAPIV3Schema"), "schemas are required")),
            Some(raw) => {
                let schema: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
                errs.extend(crate::schema::structural_problems(&schema, &format!("{vp}.schema.openAPIV3Schema")));
            }
        }
        for (j, column) in version.additional_printer_columns.iter().enumerate() {
            let cp = format!("{vp}.additionalPrinterColumns[{j}]");
            if column.name.is_empty() {
                errs.push(FieldError::required(format!("{cp}.name"), ""));
            }
            if !COLUMN_TYPES.contains(&column.r#type.as_str()) {
                errs.push(FieldError::not_supported(format!("{cp}.type"), &column.r#type, &COLUMN_TYPES));
            }
            if column.json_path.is_empty() {
                errs.push(FieldError::required(format!("{cp}.jsonPath"), ""));
            } else if let Err(e) = skiff_proto::jsonpath::eval(&column.json_path, &Value::Null) {
                errs.push(FieldError::invalid(format!("{cp}.jsonPath"), &column.json_path, e));
            }
        }
        if let Some(scale) = version.subresources.as_ref().and_then(|s| s.scale.as_ref()) {
            for (field, path) in
                [("specReplicasPath", &scale.spec_replicas_path), ("statusReplicasPath", &scale.status_replicas_path)]
            {
                let ok = match field {
                    "specReplicasPath" => path.starts_with(".spec."),
                    _ => path.starts_with(".status."),
                };
                if !ok {
                    let under = if field == "specReplicasPath" { ".spec" } else { ".status" };
                    errs.push(FieldError::invalid(
                        format!("{vp}.subresources.scale.{field}"),
                        path,
                        format!("should be a json path under {under}"),
                    ));
                }
            }
        }
    }
    errs
}

/// A definition's update may not move its objects: scope and names' plural are fixed (the
/// group is fixed by the name).
pub fn update_allowed(current: &Value, new: &Value) -> Result<(), FieldError> {
    let scope = |o: &Value| o.pointer("/spec/scope").cloned().unwrap_or(Value::Null);
    if scope(current) != scope(new) {
        return Err(FieldError::invalid("spec.scope", scope(new), "field is immutable"));
    }
    Ok(())
}

/// What Kubernetes defaults in a definition: singular and listKind from the kind, the `None`
/// conversion strategy.
pub fn apply_defaults(obj: &mut Value) {
    let kind = obj.pointer("/spec/names/kind").and_then(Value::as_str).unwrap_or_default().to_string();
    if !kind.is_empty() {
        crate::object::default_at(obj, &["spec", "names", "singular"], json!(kind.to_lowercase()));
        crate::object::default_at(obj, &["spec", "names", "listKind"], json!(format!("{kind}List")));
    }
    crate::object::default_at(obj, &["spec", "conversion", "strategy"], json!("None"));
}

/// The status the server keeps on a definition: its names accepted, Established, and every
/// version objects were stored at.
pub fn set_status(obj: &mut Value, current: Option<&Value>) {
    let now = crate::object::now_rfc3339();
    let before = |t: &str| {
        current
            .and_then(|c| c.pointer("/status/conditions"))
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .and_then(|c| c.get("lastTransitionTime"))
            .cloned()
            .unwrap_or_else(|| json!(now))
    };
    let mut stored: Vec<Value> = current
        .and_then(|c| c.pointer("/status/storedVersions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .and_then(|v| v.get("name"))
        .cloned();
    if let Some(storage) = storage.filter(|s| !stored.contains(s)) {
        stored.push(storage);
    }
    obj["status"] = json!({
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
             "lastTransitionTime": before("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": before("Established")},
        ],
        "acceptedNames": obj.pointer("/spec/names").cloned().unwrap_or_else(|| json!({})),
        "storedVersions": stored,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crontabs() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
                        "properties": {"cronSpec": {"type": "string"}, "replicas": {"type": "integer"}}}}}},
                    "additionalPrinterColumns": [{"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"}]}]}})
    }

    fn texts(obj: &Value) -> Vec<String> {
        validate(obj).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_definition_meets_kubernetes_rules() {
        assert_eq!(texts(&crontabs()), Vec::<String>::new());
        let broken = |pointer: &str, v: Value| {
            let mut d = crontabs();
            *d.pointer_mut(pointer).unwrap() = v;
            texts(&d)
        };
        assert_eq!(
            broken("/metadata/name", json!("crontab.stable.example.com")),
            vec!["metadata.name: Invalid value: \"crontab.stable.example.com\": must be spec.names.plural+\".\"+spec.group"]
        );
        assert_eq!(
            broken("/spec/scope", json!("Global")),
            vec!["spec.scope: Unsupported value: \"Global\": supported values: \"Cluster\", \"Namespaced\""]
        );
        assert_eq!(
            broken("/spec/versions/0/storage", json!(false)),
            vec!["spec.versions: Invalid value: [\"v1\"]: must have exactly one version marked as storage version"]
        );
        assert_eq!(
            broken("/spec/versions/0/schema", json!({})),
            vec!["spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required"]
        );
        assert_eq!(broken("/spec/versions/0/additionalPrinterColumns/0/type", json!("text")), vec![
            "spec.versions[0].additionalPrinterColumns[0].type: Unsupported value: \"text\": supported values: \"integer\", \"number\", \"string\", \"boolean\", \"date\""
        ]);
        let mut apps = crontabs();
        apps["spec"]["group"] = json!("apps");
        apps["metadata"]["name"] = json!("crontabs.apps");
        assert_eq!(texts(&apps), vec!["spec.group: Invalid value: \"apps\": should be a domain with at least one dot"]);
        let mut ours = crontabs();
        ours["spec"]["group"] = json!("networking.k8s.io");
        ours["metadata"]["name"] = json!("crontabs.networking.k8s.io");
        assert_eq!(texts(&ours), vec!["spec.group: Invalid value: \"networking.k8s.io\": is served by Skiff itself"]);
    }

    #[test]
    fn the_catalog_serves_what_the_stored_definitions_say() {
        let catalog = Catalog::default();
        let mut stored = crontabs();
        stored["metadata"]["resourceVersion"] = json!("5");
        catalog.sync(std::slice::from_ref(&stored));
        let kind = catalog.at("stable.example.com/v1", "crontabs").expect("served");
        assert_eq!((kind.info.kind, kind.info.namespaced, kind.info.short_names), ("CronTab", true, "ct"));
        assert_eq!(crate::kinds::key(kind.info, "default", "a"), "/registry/stable.example.com/crontabs/default/a");
        assert!(catalog.by_resource("crontabs.stable.example.com").is_some());
        assert!(catalog.by_kind("CronTab", "stable.example.com/v1").is_some());
        assert!(catalog.at("stable.example.com/v2", "crontabs").is_none());
        catalog.sync(&[]);
        assert!(catalog.at("stable.example.com/v1", "crontabs").is_none(), "a deleted definition is no longer served");
        catalog.sync(std::slice::from_ref(&stored));
        let again = catalog.at("stable.example.com/v1", "crontabs").unwrap();
        assert!(std::ptr::eq(kind.info, again.info), "the same definition interns one KindInfo");
    }
}
