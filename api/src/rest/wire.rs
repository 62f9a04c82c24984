//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! which kubectl's typed clients send (its `create` generators, `run`, `drain`): the `k8s\0`
//! magic, a `runtime.Unknown` envelope naming apiVersion and kind, and the object's message.
//! Decoded with `prost-reflect` against `proto/k8s/wire.proto` and written as the JSON
//! object Kubernetes' JSON encoding gives: numbers as numbers, bytes as base64, `Time` as
//! RFC 3339, `IntOrString` as an int or a string, `Quantity` as its string, embedded Go
//! structs inline. A field outside the described subset is refused by name, never dropped.

use crate::error::{ApiError, ApiResult};
use base64::Engine;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value as Field};
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

/// The media type.
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";
const PACKAGE: &str = "k8s.wire";

/// Fields Go embeds in their parent: their fields appear in the parent's JSON object.
const INLINE: [(&str, &str); 6] = [
    ("ConfigMapKeySelector", "localObjectReference"),
    ("SecretKeySelector", "localObjectReference"),
    ("ConfigMapEnvSource", "localObjectReference"),
    ("SecretEnvSource", "localObjectReference"),
    ("IngressRule", "ingressRuleValue"),
    ("Volume", "volumeSource"),
];

/// Pointer fields in Go whose zero value is a choice (`replicas: 0`, `automountServiceAccountToken:
/// false`): Go writes them only when set, so they are kept when zero. Every other zero scalar
/// is what Go writes for a field left unset, and is dropped (Kubernetes' JSON omits it).
const ZERO_MEANS_SOMETHING: [(&str, &str); 10] = [
    ("DeploymentSpec", "replicas"),
    ("JobSpec", "parallelism"),
    ("JobSpec", "completions"),
    ("JobSpec", "backoffLimit"),
    ("JobSpec", "suspend"),
    ("CronJobSpec", "suspend"),
    ("PodSpec", "terminationGracePeriodSeconds"),
    ("PodSpec", "automountServiceAccountToken"),
    ("PodSpec", "enableServiceLinks"),
    ("ServiceAccount", "automountServiceAccountToken"),
];

/// Whether `v` is a scalar at its zero value.
fn zero(v: &Field) -> bool {
    match v {
        Field::Bool(b) => !b,
        Field::I32(n) => *n == 0,
        Field::I64(n) => *n == 0,
        Field::U32(n) => *n == 0,
        Field::U64(n) => *n == 0,
        Field::String(s) => s.is_empty(),
        _ => false,
    }
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(skiff_proto::K8S_WIRE_DESCRIPTORS).expect("the built-in wire descriptors decode")
    })
}

fn message(name: &str) -> Option<MessageDescriptor> {
    pool().get_message_by_name(&format!("{PACKAGE}.{name}"))
}

fn unsupported(why: String) -> ApiError {
    ApiError::UnsupportedMediaType(format!("{why}; send the object as application/json instead"))
}

/// Decodes a protobuf body into the JSON object it encodes (with `apiVersion` and `kind`).
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| {
        ApiError::BadRequest("the protobuf body does not start with Kubernetes' k8s\\0 prefix".into())
    })?;
    let envelope_desc = message("Unknown").expect("wire.proto has Unknown");
    let envelope = DynamicMessage::decode(envelope_desc, rest)
        .map_err(|e| ApiError::BadRequest(format!("the protobuf envelope does not decode: {e}")))?;
    let type_meta = match envelope.get_field_by_name("typeMeta").as_deref() {
        Some(Field::Message(m)) => m.clone(),
        _ => DynamicMessage::new(message("TypeMeta").expect("wire.proto has TypeMeta")),
    };
    let api_version = string_field(&type_meta, "apiVersion");
    let kind = string_field(&type_meta, "kind");
    let encoding = string_field(&envelope, "contentEncoding");
    if !encoding.is_empty() {
        return Err(unsupported(format!("content encoding {encoding:?} is not read")));
    }
    let raw = match envelope.get_field_by_name("raw").as_deref() {
        Some(Field::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let desc = message(&kind).ok_or_else(|| {
        unsupported(format!("objects of kind {kind:?} ({api_version}) are not read in the protobuf encoding"))
    })?;
    let object = DynamicMessage::decode(desc, raw.as_ref())
        .map_err(|e| ApiError::BadRequest(format!("the protobuf {kind} does not decode: {e}")))?;
    let mut out = to_json(&object, &kind)?;
    if let Value::Object(map) = &mut out {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
    Ok(out)
}

fn string_field(m: &DynamicMessage, name: &str) -> String {
    m.get_field_by_name(name).and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// `m` as Kubernetes' JSON; `path` names where it is, for errors.
fn to_json(m: &DynamicMessage, path: &str) -> ApiResult<Value> {
    let name = m.descriptor().name().to_string();
    if let Some(unknown) = m.unknown_fields().next() {
        return Err(unsupported(format!(
            "field {} of {path} ({name}) is not one Skiff reads in the protobuf encoding",
            unknown.number()
        )));
    }
    match name.as_str() {
        "Time" => {
            let seconds = m.get_field_by_name("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
            // Go writes an unset (non-pointer) Time as the zero time: no time at all.
            return Ok(if seconds == 0 { Value::Null } else { json!(crate::object::rfc3339(seconds)) });
        }
        "IntOrString" => {
            let is_string = m.get_field_by_name("type").and_then(|v| v.as_i64()).unwrap_or(0) == 1;
            return Ok(if is_string {
                json!(string_field(m, "strVal"))
            } else {
                json!(m.get_field_by_name("intVal").and_then(|v| v.as_i32()).unwrap_or(0))
            });
        }
        "Quantity" => return Ok(json!(string_field(m, "string"))),
        _ => {}
    }
    let mut out = Map::new();
    for (field, value) in m.fields() {
        let key = field.json_name().to_string();
        if zero(value) && !ZERO_MEANS_SOMETHING.contains(&(name.as_str(), key.as_str())) {
            continue;
        }
        let here = format!("{path}.{key}");
        let v = field_json(value, &here)?;
        if v.is_null() {
            continue;
        }
        if INLINE.contains(&(name.as_str(), key.as_str())) {
            if let Value::Object(inner) = v {
                out.extend(inner);
            }
            continue;
        }
        out.insert(key, v);
    }
    Ok(Value::Object(out))
}

fn field_json(v: &Field, path: &str) -> ApiResult<Value> {
    Ok(match v {
        Field::Bool(b) => json!(b),
        Field::I32(n) => json!(n),
        Field::I64(n) => json!(n),
        Field::U32(n) => json!(n),
        Field::U64(n) => json!(n),
        Field::F32(n) => json!(n),
        Field::F64(n) => json!(n),
        Field::String(s) => json!(s),
        Field::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Field::EnumNumber(n) => json!(n),
        Field::Message(m) => to_json(m, path)?,
        Field::List(items) => Value::Array(
            items.iter().enumerate().map(|(i, x)| field_json(x, &format!("{path}[{i}]"))).collect::<ApiResult<_>>()?,
        ),
        Field::Map(entries) => {
            let mut out = Map::new();
            let mut keys: Vec<&MapKey> = entries.keys().collect();
            keys.sort();
            for k in keys {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                let value = field_json(&entries[k], &format!("{path}[{key}]"))?;
                out.insert(key, value);
            }
            Value::Object(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// A body as kubectl would send it: magic, envelope, object.
    fn body(api_version: &str, kind: &str, object: &DynamicMessage) -> Vec<u8> {
        let mut envelope = DynamicMessage::new(message("Unknown").unwrap());
        let mut type_meta = DynamicMessage::new(message("TypeMeta").unwrap());
        type_meta.set_field_by_name("apiVersion", Field::String(api_version.into()));
        type_meta.set_field_by_name("kind", Field::String(kind.into()));
        envelope.set_field_by_name("typeMeta", Field::Message(type_meta));
        envelope.set_field_by_name("raw", Field::Bytes(object.encode_to_vec().into()));
        [MAGIC.to_vec(), envelope.encode_to_vec()].concat()
    }

    fn msg(name: &str, fields: &[(&str, Field)]) -> DynamicMessage {
        let mut m = DynamicMessage::new(message(name).unwrap());
        for (f, v) in fields {
            m.set_field_by_name(f, v.clone());
        }
        m
    }

    #[test]
    fn a_deployment_decodes_to_kubernetes_json() {
        let meta = msg(
            "ObjectMeta",
            &[
                ("name", Field::String("web".into())),
                ("labels", Field::Map([(MapKey::String("app".into()), Field::String("web".into()))].into())),
                ("creationTimestamp", Field::Message(msg("Time", &[("seconds", Field::I64(0))]))),
                ("selfLink", Field::String(String::new())),
                ("generation", Field::I64(0)),
            ],
        );
        let container = msg(
            "Container",
            &[
                ("name", Field::String("busybox".into())),
                ("image", Field::String("busybox:test".into())),
                (
                    "resources",
                    Field::Message(msg(
                        "ResourceRequirements",
                        &[(
                            "limits",
                            Field::Map(
                                [(
                                    MapKey::String("cpu".into()),
                                    Field::Message(msg("Quantity", &[("string", Field::String("500m".into()))])),
                                )]
                                .into(),
                            ),
                        )],
                    )),
                ),
            ],
        );
        let strategy = msg(
            "DeploymentStrategy",
            &[(
                "rollingUpdate",
                Field::Message(msg(
                    "RollingUpdateDeployment",
                    &[
                        (
                            "maxSurge",
                            Field::Message(msg(
                                "IntOrString",
                                &[("type", Field::I64(1)), ("strVal", Field::String("25%".into()))],
                            )),
                        ),
                        ("maxUnavailable", Field::Message(msg("IntOrString", &[("intVal", Field::I32(1))]))),
                    ],
                )),
            )],
        );
        let spec = msg(
            "DeploymentSpec",
            &[
                ("replicas", Field::I32(0)),
                ("paused", Field::Bool(false)),
                ("strategy", Field::Message(strategy)),
                (
                    "template",
                    Field::Message(msg(
                        "PodTemplateSpec",
                        &[(
                            "spec",
                            Field::Message(msg(
                                "PodSpec",
                                &[("containers", Field::List(vec![Field::Message(container)]))],
                            )),
                        )],
                    )),
                ),
            ],
        );
        let deployment = msg(
            "Deployment",
            &[
                ("metadata", Field::Message(meta)),
                ("spec", Field::Message(spec)),
                ("status", Field::Message(msg("DeploymentStatus", &[("replicas", Field::I32(0))]))),
            ],
        );
        let got = decode(&body("apps/v1", "Deployment", &deployment)).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 0,
                    "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                    "template": {"spec": {"containers": [{"name": "busybox", "image": "busybox:test", "resources": {"limits": {"cpu": "500m"}}}]}}
                },
                "status": {}
            })
        );
    }

    #[test]
    fn secrets_inline_fields_and_what_is_not_read() {
        let secret = msg(
            "Secret",
            &[("data", Field::Map([(MapKey::String("k".into()), Field::Bytes(b"v".to_vec().into()))].into()))],
        );
        assert_eq!(decode(&body("v1", "Secret", &secret)).unwrap()["data"], json!({"k": "dg=="}));
        let selector = msg(
            "SecretKeySelector",
            &[
                (
                    "localObjectReference",
                    Field::Message(msg("LocalObjectReference", &[("name", Field::String("s".into()))])),
                ),
                ("key", Field::String("k".into())),
            ],
        );
        let env = msg(
            "EnvVar",
            &[
                ("name", Field::String("A".into())),
                ("valueFrom", Field::Message(msg("EnvVarSource", &[("secretKeyRef", Field::Message(selector))]))),
            ],
        );
        let json = to_json(&env, "env").unwrap();
        assert_eq!(json, json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}));
        // A field this subset does not describe (PodSpec's volumes, 1) is refused by number.
        let mut pod_spec = msg("PodSpec", &[]).encode_to_vec();
        pod_spec.extend([0x0a, 0x00]);
        let pod = [vec![0x12, pod_spec.len() as u8], pod_spec].concat();
        let pod = DynamicMessage::decode(message("Pod").unwrap(), pod.as_slice()).unwrap();
        let e = decode(&body("v1", "Pod", &pod)).unwrap_err();
        assert!(matches!(&e, ApiError::UnsupportedMediaType(m) if m.contains("field 1 of Pod.spec (PodSpec)")), "{e}");
        let e = decode(&body("v1", "PodTemplate", &msg("Pod", &[]))).unwrap_err();
        assert!(matches!(e, ApiError::UnsupportedMediaType(_)));
        assert!(matches!(decode(b"{}"), Err(ApiError::BadRequest(_))));
    }
}
