//! OpenAPI v3 documents generated from Skiff's own schema (the proto descriptors its API types
//! come from), one per group version as Kubernetes serves them: `/openapi/v3` lists them and
//! `/openapi/v3/apis/apps/v1` is one. `kubectl explain` reads the schemas (descriptions are
//! the proto comments); `kubectl apply` reads the patch strategies (the same merge keys the
//! server's strategic merge patch uses); kubectl sees the `fieldValidation` parameter on each
//! PATCH and leaves field validation to the server, which refuses unknown fields.

use super::discovery::group_version;
use crate::crd::CustomKind;
use crate::kinds::{KindInfo, KINDS};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// The package the API types live in, and the prefix of their schema names.
const PACKAGE: &str = "skiff.api";

/// Every message of the API package with its comment and its fields' comments.
struct Messages {
    by_name: BTreeMap<String, (DescriptorProto, String, Vec<String>)>,
}

fn messages() -> &'static Messages {
    static M: OnceLock<Messages> = OnceLock::new();
    M.get_or_init(|| {
        let set =
            FileDescriptorSet::decode(skiff_proto::FILE_DESCRIPTOR_SET).expect("the built-in descriptor set decodes");
        let mut by_name = BTreeMap::new();
        for file in set.file.iter().filter(|f| f.package() == PACKAGE) {
            let comments: BTreeMap<Vec<i32>, String> = file
                .source_code_info
                .iter()
                .flat_map(|i| &i.location)
                .filter_map(|l| l.leading_comments.as_ref().map(|c| (l.path.clone(), c.trim().replace('\n', " "))))
                .collect();
            for (i, msg) in file.message_type.iter().enumerate() {
                let path = vec![4, i as i32];
                let own = comments.get(&path).cloned().unwrap_or_default();
                let fields = (0..msg.field.len())
                    .map(|f| comments.get(&[4, i as i32, 2, f as i32][..]).cloned().unwrap_or_default())
                    .collect();
                by_name.insert(msg.name().to_string(), (msg.clone(), own, fields));
            }
        }
        Messages { by_name }
    })
}

fn schema_ref(message: &str) -> Value {
    json!({"allOf": [{"$ref": format!("#/components/schemas/{PACKAGE}.{message}")}]})
}

/// Volume sources kept as the JSON objects given (`proto/build.rs` stores them raw).
const RAW_VOLUME_SOURCES: [&str; 22] = [
    "gce_persistent_disk",
    "aws_elastic_block_store",
    "git_repo",
    "iscsi",
    "glusterfs",
    "rbd",
    "flex_volume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azure_file",
    "vsphere_volume",
    "quobyte",
    "azure_disk",
    "photon_persistent_disk",
    "portworx_volume",
    "scale_io",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

/// The OpenAPI schema of one field.
fn field_schema(f: &prost_types::FieldDescriptorProto) -> Value {
    let type_name = f.type_name().rsplit('.').next().unwrap_or_default();
    let scalar = match f.r#type() {
        Type::String if f.name() == "fields_v1" || RAW_VOLUME_SOURCES.contains(&f.name()) => {
            json!({"type": "object"})
        }
        Type::String => json!({"type": "string"}),
        Type::Bool => json!({"type": "boolean"}),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 | Type::Uint32 | Type::Fixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Type::Int64 | Type::Sint64 | Type::Sfixed64 | Type::Uint64 | Type::Fixed64 => {
            json!({"type": "integer", "format": "int64"})
        }
        Type::Double | Type::Float => json!({"type": "number", "format": "double"}),
        Type::Bytes => json!({"type": "string", "format": "byte"}),
        Type::Enum => json!({"type": "string"}),
        Type::Message if f.type_name() == ".google.protobuf.Value" => json!({"x-kubernetes-int-or-string": true}),
        Type::Message if f.type_name().starts_with(".google.protobuf.") => {
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
        }
        Type::Message => schema_ref(type_name),
        _ => json!({}),
    };
    if f.label() == Label::Repeated {
        json!({"type": "array", "items": scalar})
    } else {
        scalar
    }
}

/// The JSON name of a proto field.
fn json_name(f: &prost_types::FieldDescriptorProto) -> String {
    f.json_name.clone().unwrap_or_else(|| f.name().to_string())
}

/// `components.schemas`: every message of the API package (built once; it changes only with
/// the binary).
fn schemas() -> &'static Map<String, Value> {
    static SCHEMAS: OnceLock<Map<String, Value>> = OnceLock::new();
    SCHEMAS.get_or_init(build_schemas)
}

fn build_schemas() -> Map<String, Value> {
    let mut out = Map::new();
    for (name, (msg, description, field_comments)) in &messages().by_name {
        let mut properties = Map::new();
        // Map entries are nested types of their parent message.
        let nested: BTreeMap<&str, &DescriptorProto> = msg.nested_type.iter().map(|n| (n.name(), n)).collect();
        for (f, comment) in msg.field.iter().zip(field_comments) {
            let nested_entry = nested
                .get(f.type_name().rsplit('.').next().unwrap_or_default())
                .filter(|n| n.options.as_ref().is_some_and(|o| o.map_entry()));
            let mut schema = match nested_entry {
                Some(entry) => {
                    json!({"type": "object", "additionalProperties": entry.field.get(1).map(field_schema).unwrap_or(json!({}))})
                }
                None => field_schema(f),
            };
            let field = json_name(f);
            if !comment.is_empty() {
                schema["description"] = json!(comment);
            }
            if let Some(strategy) = super::patch::merge_strategy(name, &field) {
                match strategy {
                    super::patch::ListMerge::ByKey(key) => {
                        schema["x-kubernetes-patch-strategy"] = json!("merge");
                        schema["x-kubernetes-patch-merge-key"] = json!(key);
                    }
                    super::patch::ListMerge::Union => schema["x-kubernetes-patch-strategy"] = json!("merge"),
                }
            }
            properties.insert(field, schema);
        }
        let mut schema = json!({"type": "object", "properties": properties});
        if !description.is_empty() {
            schema["description"] = json!(description);
        }
        let kind = name.strip_suffix("List").unwrap_or(name);
        if let Some(info) = KINDS.iter().find(|k| k.kind == kind) {
            let (group, version) = group_version(info);
            schema["x-kubernetes-group-version-kind"] = json!([{"group": group, "version": version, "kind": name}]);
        }
        out.insert(format!("{PACKAGE}.{name}"), schema);
    }
    out
}

/// The URL prefix of a group version: `api/v1`, `apis/apps/v1`.
fn prefix(api_version: &str) -> String {
    if api_version.contains('/') {
        format!("apis/{api_version}")
    } else {
        format!("api/{api_version}")
    }
}

/// The group versions Skiff serves, in the kinds table's order.
fn group_versions() -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::new();
    for info in KINDS {
        if !out.contains(&info.api_version) {
            out.push(info.api_version);
        }
    }
    out
}

/// `/openapi/v3`: where each group version's document is (a custom kind's document's hash
/// changes with its definition, so clients that cache by hash read it again).
pub fn index(custom: &[Arc<CustomKind>]) -> Value {
    let mut paths: Map<String, Value> = group_versions()
        .into_iter()
        .map(|gv| {
            let p = prefix(gv);
            (p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash())}))
        })
        .collect();
    for kind in custom {
        for version in &kind.versions {
            let p = prefix(&format!("{}/{}", kind.group, version.name));
            let described = format!("{:?}{:?}", kind.info, version);
            let digest = ring::digest::digest(&ring::digest::SHA256, described.as_bytes());
            let own: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02X}")).collect();
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={own}")}));
        }
    }
    json!({"paths": paths})
}

/// A fixed hash of the schema (it changes only with the binary).
fn hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        let digest = ring::digest::digest(&ring::digest::SHA256, skiff_proto::FILE_DESCRIPTOR_SET);
        digest.as_ref()[..16].iter().map(|b| format!("{b:02X}")).collect()
    })
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`: a built-in group version's
/// document, or a custom one's made from its definitions' schemas.
pub fn document(path: &str, custom: &[Arc<CustomKind>]) -> Option<Value> {
    let mut paths = Map::new();
    let mut all = schemas().clone();
    if let Some(gv) = group_versions().into_iter().find(|gv| prefix(gv) == path) {
        for info in KINDS.iter().filter(|k| k.api_version == gv) {
            add_paths(&mut paths, info, gv, &format!("{PACKAGE}.{}", info.kind));
        }
    }
    for kind in custom {
        for version in &kind.versions {
            let gv = format!("{}/{}", kind.group, version.name);
            if prefix(&gv) != path {
                continue;
            }
            // Kubernetes' name for it: the group reversed, the version, the kind.
            let group: Vec<&str> = kind.group.split('.').rev().collect();
            let name = format!("{}.{}.{}", group.join("."), version.name, kind.info.kind);
            add_paths(&mut paths, kind.info, &gv, &name);
            all.insert(name, custom_schema(kind, version));
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBERNETES_MINOR)},
        "paths": paths,
        "components": {"schemas": all},
    }))
}

/// A custom kind's schema at one version, with the fields every object has.
fn custom_schema(kind: &CustomKind, version: &crate::crd::Version) -> Value {
    let mut schema = version.schema.clone();
    if !schema.is_object() {
        schema = json!({"type": "object"});
    }
    let (group, v) = (kind.group.as_str(), version.name.as_str());
    schema["x-kubernetes-group-version-kind"] = json!([{"group": group, "version": v, "kind": kind.info.kind}]);
    let properties = schema.as_object_mut().expect("an object").entry("properties").or_insert_with(|| json!({}));
    if let Some(properties) = properties.as_object_mut() {
        properties.insert(
            "apiVersion".into(),
            json!({"type": "string", "description": "The versioned schema of this object."}),
        );
        properties.insert("kind".into(), json!({"type": "string", "description": "The kind of this object."}));
        properties.insert("metadata".into(), schema_ref("ObjectMeta"));
    }
    schema
}

fn add_paths(paths: &mut Map<String, Value>, info: &'static KindInfo, api_version: &str, schema_name: &str) {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = json!({"group": group, "version": version, "kind": info.kind});
    let base = format!("/{}", prefix(api_version));
    let collection = if info.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", info.resource)
    } else {
        format!("{base}/{}", info.resource)
    };
    let body =
        json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}});
    let op = |action: &str, id: &str, params: Vec<Value>, with_body: bool| {
        let mut o = json!({
            "operationId": format!("{id}{}", info.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
        });
        if with_body {
            o["requestBody"] = body.clone();
        }
        o
    };
    let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": true});
    let writes = || vec![query("dryRun"), query("fieldManager"), query("fieldValidation")];
    paths.insert(
        collection.clone(),
        json!({
            "get": op("list", "list", vec![query("labelSelector"), query("fieldSelector"), query("limit"), query("continue"), query("watch"), query("resourceVersion")], false),
            "post": op("post", "create", writes(), true),
        }),
    );
    let mut patch = op("patch", "patch", writes(), false);
    patch["requestBody"] = json!({"content": {
        "application/json-patch+json": {"schema": {"type": "object"}},
        "application/merge-patch+json": {"schema": {"type": "object"}},
        "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
    }});
    paths.insert(
        format!("{collection}/{{name}}"),
        json!({
            "get": op("get", "read", vec![], false),
            "put": op("put", "replace", writes(), true),
            "patch": patch,
            "delete": op("delete", "delete", vec![query("dryRun"), query("gracePeriodSeconds"), query("propagationPolicy")], false),
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_describe_each_kind_with_its_fields_and_patch_strategies() {
        let index = index(&[]);
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap();
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
        let doc = document("apis/apps/v1", &[]).unwrap();
        let schemas = &doc["components"]["schemas"];
        let deployment = &schemas["skiff.api.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        assert_eq!(deployment["properties"]["spec"], schema_ref("DeploymentSpec"));
        let strategy = &schemas["skiff.api.DeploymentSpec"]["properties"]["strategy"];
        assert_eq!(strategy["allOf"][0]["$ref"], "#/components/schemas/skiff.api.DeploymentStrategy");
        assert_eq!(
            schemas["skiff.api.RollingUpdateDeployment"]["properties"]["maxSurge"]["x-kubernetes-int-or-string"],
            true
        );
        let containers = &schemas["skiff.api.PodSpec"]["properties"]["containers"];
        assert_eq!(
            (containers["type"].as_str(), containers["x-kubernetes-patch-merge-key"].as_str()),
            (Some("array"), Some("name"))
        );
        let labels = &schemas["skiff.api.ObjectMeta"]["properties"]["labels"];
        assert_eq!(labels, &json!({"type": "object", "additionalProperties": {"type": "string"}}));
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        assert!(document("apis/apps/v2", &[]).is_none());
        assert!(document("api/v1", &[]).unwrap()["paths"]["/api/v1/nodes/{name}"]["get"].is_object());
    }
}
