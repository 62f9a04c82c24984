//! Structural OpenAPI v3 schemas, as a CustomResourceDefinition gives them for its objects:
//! checking that a schema is structural, and, for each object written, pruning the fields the
//! schema does not name, applying its defaults and validating the rest — in that order, as
//! Kubernetes' apiextensions server does. Error texts follow Kubernetes' (`spec.replicas:
//! Invalid value: "two": spec.replicas in body must be of type integer: "two"`).
//!
//! Supported: `type`, `properties`, `required`, `items`, `additionalProperties` (a schema or
//! `true`), `enum`, `minimum`/`maximum` (and their exclusive forms), `multipleOf`,
//! `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`, `uniqueItems`,
//! `minProperties`/`maxProperties`, `nullable`, `default`, `allOf`/`anyOf`/`oneOf`/`not`,
//! `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields` and
//! `x-kubernetes-embedded-resource`. CEL rules (`x-kubernetes-validations`) are not evaluated.

use crate::error::FieldError;
use serde_json::{Map, Value};

const TYPES: [&str; 6] = ["object", "array", "string", "integer", "number", "boolean"];

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn type_of(schema: &Value) -> &str {
    schema.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Problems that make `schema` (at `path`, e.g. `spec.versions[0].schema.openAPIV3Schema`)
/// not structural: a missing or unknown type where one is needed, an array without items.
pub fn structural_problems(schema: &Value, path: &str) -> Vec<FieldError> {
    let mut out = Vec::new();
    if type_of(schema) != "object" {
        match schema.get("type").and_then(Value::as_str) {
            None | Some("") => out.push(FieldError::required(child(path, "type"), "must not be empty at the root")),
            Some(t) => out.push(FieldError::not_supported(child(path, "type"), t, &["object"])),
        }
    }
    check_node(schema, path, true, &mut out);
    out
}

fn check_node(schema: &Value, path: &str, root: bool, out: &mut Vec<FieldError>) {
    let Some(map) = schema.as_object() else {
        out.push(FieldError::invalid(path, schema, "must be a schema object"));
        return;
    };
    let t = type_of(schema);
    let loose = flag(schema, "x-kubernetes-int-or-string") || flag(schema, "x-kubernetes-preserve-unknown-fields");
    if !t.is_empty() && !TYPES.contains(&t) {
        out.push(FieldError::not_supported(child(path, "type"), t, &TYPES));
    }
    if t.is_empty() && !loose && !root {
        out.push(FieldError::required(child(path, "type"), "must not be empty for specified object fields"));
    }
    if t == "array" && !map.contains_key("items") {
        out.push(FieldError::required(child(path, "items"), "must be specified"));
    }
    if map.contains_key("properties") && map.get("additionalProperties").is_some_and(|a| a != &Value::Bool(true)) {
        out.push(FieldError::forbidden(
            child(path, "additionalProperties"),
            "additionalProperties and properties are mutual exclusive",
        ));
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            check_node(sub, &format!("{}[{name}]", child(path, "properties")), false, out);
        }
    }
    if let Some(items) = map.get("items") {
        check_node(items, &child(path, "items"), false, out);
    }
    if let Some(extra) = map.get("additionalProperties").filter(|a| a.is_object()) {
        check_node(extra, &child(path, "additionalProperties"), false, out);
    }
}

/// Removes every field the schema does not name, and says which (`spec.typo`). At the root
/// `apiVersion`, `kind` and `metadata` stay (they belong to every object).
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut removed = Vec::new();
    prune_at(schema, obj, true, "", &mut removed);
    removed
}

fn prune_at(schema: &Value, obj: &mut Value, root: bool, path: &str, removed: &mut Vec<String>) {
    let keep_all = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
    match obj {
        Value::Object(fields) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            fields.retain(|k, v| {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    return true;
                }
                if let Some(sub) = props.and_then(|p| p.get(k)) {
                    prune_at(sub, v, false, &child(path, k), removed);
                    return true;
                }
                let kept = match extra {
                    Some(sub) if sub.is_object() => {
                        prune_at(sub, v, false, &child(path, k), removed);
                        true
                    }
                    Some(Value::Bool(true)) => true,
                    _ => keep_all,
                };
                if !kept {
                    removed.push(child(path, k));
                }
                kept
            });
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(sub, item, false, &format!("{path}[{i}]"), removed);
                }
            }
        }
        _ => {}
    }
}

/// Fills in the schema's defaults for fields that are missing, in objects that are present.
pub fn apply_defaults(schema: &Value, obj: &mut Value) {
    match obj {
        Value::Object(fields) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    if let Some(default) = sub.get("default") {
                        fields.entry(name.clone()).or_insert_with(|| default.clone());
                    }
                    if let Some(v) = fields.get_mut(name) {
                        apply_defaults(sub, v);
                    }
                }
            }
            if let Some(sub) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for v in fields.values_mut() {
                    apply_defaults(sub, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for item in items {
                    apply_defaults(sub, item);
                }
            }
        }
        _ => {}
    }
}

/// Every way `obj` breaks `schema`, each named by its field path. The root's `metadata`,
/// `apiVersion` and `kind` are the server's to check, not the schema's.
pub fn validate(schema: &Value, obj: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    match (schema.get("properties").and_then(Value::as_object), obj.as_object()) {
        (Some(_), Some(fields)) => {
            let rest: Map<String, Value> = fields
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut root = schema.clone();
            if let Some(props) = root.get_mut("properties").and_then(Value::as_object_mut) {
                props.retain(|k, _| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
            }
            if let Some(required) = root.get_mut("required").and_then(Value::as_array_mut) {
                required.retain(|k| !matches!(k.as_str(), Some("apiVersion" | "kind" | "metadata")));
            }
            check(&root, &Value::Object(rest), "", &mut out);
        }
        _ => check(schema, obj, "", &mut out),
    }
    out
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

/// `null`, `"two"`, `true`: a value as go-openapi quotes it after "must be of type".
fn quoted(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "\"null\"".into(),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        Value::Bool(_) => "\"boolean\"".into(),
        Value::Number(n) if n.is_f64() => "\"number\"".into(),
        Value::Number(_) => "\"integer\"".into(),
    }
}

fn check(schema: &Value, v: &Value, path: &str, out: &mut Vec<FieldError>) {
    let at = if path.is_empty() { "<root>" } else { path };
    let in_body = |what: String| format!("{at} in body {what}");
    if v.is_null() {
        if !flag(schema, "nullable") && !type_of(schema).is_empty() {
            out.push(FieldError::invalid(
                at,
                "null",
                in_body(format!("must be of type {}: \"null\"", type_of(schema))),
            ));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(v.is_string() || type_matches("integer", v)) {
            out.push(FieldError::invalid(at, v, in_body(format!("must be of type integer-or-string: {}", quoted(v)))));
            return;
        }
    } else {
        let t = type_of(schema);
        if !t.is_empty() && !type_matches(t, v) {
            out.push(FieldError::invalid(at, v, in_body(format!("must be of type {t}: {}", quoted(v)))));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let shown: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            out.push(FieldError {
                path: at.to_string(),
                kind: crate::error::FieldErrorKind::NotSupported(v.to_string()),
                detail: format!("supported values: {}", shown.join(", ")),
            });
        }
    }
    if let Some(n) = v.as_f64() {
        number(schema, v, n, at, out);
    }
    if let Some(s) = v.as_str() {
        string(schema, v, s, at, out);
    }
    if let Some(items) = v.as_array() {
        array(schema, v, items, path, out);
    }
    if let Some(fields) = v.as_object() {
        object(schema, fields, path, out);
    }
    for sub in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        check(sub, v, path, out);
    }
    let passes = |sub: &Value| {
        let mut e = Vec::new();
        check(sub, v, path, &mut e);
        e.is_empty()
    };
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(passes) {
            out.push(FieldError::invalid(at, v, in_body("must validate at least one schema (anyOf)".into())));
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        if one.iter().filter(|s| passes(s)).count() != 1 {
            out.push(FieldError::invalid(at, v, in_body("must validate one and only one schema (oneOf)".into())));
        }
    }
    if let Some(not) = schema.get("not") {
        if passes(not) {
            out.push(FieldError::invalid(at, v, in_body("should not validate the schema (not)".into())));
        }
    }
}

fn number(schema: &Value, v: &Value, n: f64, at: &str, out: &mut Vec<FieldError>) {
    let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
    let shown = |k: &str| schema.get(k).map(Value::to_string).unwrap_or_default();
    if let Some(min) = bound("minimum") {
        let exclusive = flag(schema, "exclusiveMinimum");
        if n < min || (exclusive && n == min) {
            let than = if exclusive { "greater than" } else { "greater than or equal to" };
            out.push(FieldError::invalid(at, v, format!("{at} in body should be {than} {}", shown("minimum"))));
        }
    }
    if let Some(max) = bound("maximum") {
        let exclusive = flag(schema, "exclusiveMaximum");
        if n > max || (exclusive && n == max) {
            let than = if exclusive { "less than" } else { "less than or equal to" };
            out.push(FieldError::invalid(at, v, format!("{at} in body should be {than} {}", shown("maximum"))));
        }
    }
    if let Some(m) = bound("multipleOf").filter(|m| *m > 0.0) {
        if (n / m).fract().abs() > 1e-9 {
            out.push(FieldError::invalid(
                at,
                v,
                format!("{at} in body should be a multiple of {}", shown("multipleOf")),
            ));
        }
    }
}

fn string(schema: &Value, v: &Value, s: &str, at: &str, out: &mut Vec<FieldError>) {
    let chars = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64).filter(|m| chars > *m) {
        out.push(FieldError::invalid(at, v, format!("{at} in body should be at most {max} chars long")));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64).filter(|m| chars < *m) {
        out.push(FieldError::invalid(at, v, format!("{at} in body should be at least {min} chars long")));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(s) => {}
            Ok(_) => out.push(FieldError::invalid(at, v, format!("{at} in body should match '{pattern}'"))),
            Err(e) => out.push(FieldError::invalid(at, v, format!("the schema's pattern does not compile: {e}"))),
        }
    }
}

fn array(schema: &Value, v: &Value, items: &[Value], path: &str, out: &mut Vec<FieldError>) {
    let at = if path.is_empty() { "<root>" } else { path };
    let n = items.len() as u64;
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64).filter(|m| n > *m) {
        out.push(FieldError::too_many(at, items.len(), max));
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64).filter(|m| n < *m) {
        out.push(FieldError::invalid(at, v, format!("{at} in body should have at least {min} items")));
    }
    if flag(schema, "uniqueItems") {
        for (i, item) in items.iter().enumerate() {
            if items[..i].contains(item) {
                out.push(FieldError::duplicate(format!("{at}[{i}]"), item));
            }
        }
    }
    if let Some(sub) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(sub, item, &format!("{path}[{i}]"), out);
        }
    }
}

fn object(schema: &Value, fields: &Map<String, Value>, path: &str, out: &mut Vec<FieldError>) {
    let at = if path.is_empty() { "<root>" } else { path };
    for name in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if !fields.contains_key(name) {
            out.push(FieldError::required(child(path, name), ""));
        }
    }
    let n = fields.len() as u64;
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64).filter(|m| n > *m) {
        out.push(FieldError::invalid(at, n, format!("{at} in body should have at most {max} properties")));
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64).filter(|m| n < *m) {
        out.push(FieldError::invalid(at, n, format!("{at} in body should have at least {min} properties")));
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let extra = schema.get("additionalProperties").filter(|a| a.is_object());
    for (name, value) in fields {
        match (props.and_then(|p| p.get(name)), extra) {
            (Some(sub), _) => check(sub, value, &child(path, name), out),
            (None, Some(sub)) => check(sub, value, &format!("{at}[{name}]"), out),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crontab() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["cronSpec"], "properties": {
            "cronSpec": {"type": "string", "pattern": "^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$"},
            "image": {"type": "string", "maxLength": 20},
            "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
            "mode": {"type": "string", "enum": ["fast", "slow"]},
            "port": {"x-kubernetes-int-or-string": true},
            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }}, "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}})
    }

    fn texts(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn kubernetes_texts_name_each_field_that_breaks_the_schema() {
        let table: [(Value, &str); 9] = [
            (json!({"cronSpec": "* * * * */5", "replicas": "two"}), "spec.replicas: Invalid value: \"two\": spec.replicas in body must be of type integer: \"two\""),
            (json!({"image": "x"}), "spec.cronSpec: Required value"),
            (json!({"cronSpec": "often"}), "spec.cronSpec: Invalid value: \"often\": spec.cronSpec in body should match '^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$'"),
            (json!({"cronSpec": "* * * * *", "replicas": 0}), "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1"),
            (json!({"cronSpec": "* * * * *", "replicas": 11}), "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10"),
            (json!({"cronSpec": "* * * * *", "mode": "medium"}), "spec.mode: Unsupported value: \"medium\": supported values: \"fast\", \"slow\""),
            (json!({"cronSpec": "* * * * *", "image": "a-very-long-image-name:latest"}), "spec.image: Invalid value: \"a-very-long-image-name:latest\": spec.image in body should be at most 20 chars long"),
            (json!({"cronSpec": "* * * * *", "tags": ["a", "b", "c"]}), "spec.tags: Too many: 3: must have at most 2 items"),
            (json!({"cronSpec": "* * * * *", "labels": {"a": 1}}), "spec.labels[a]: Invalid value: 1: spec.labels[a] in body must be of type string: \"integer\""),
        ];
        for (spec, want) in table {
            let got = texts(&validate(&crontab(), &json!({"apiVersion": "x/v1", "kind": "CronTab", "spec": spec})));
            assert_eq!(got, vec![want.to_string()], "{spec}");
        }
        let good = json!({"spec": {"cronSpec": "*/5 * * * *", "port": "http", "tags": ["a"], "labels": {"a": "b"}}});
        assert_eq!(texts(&validate(&crontab(), &good)), Vec::<String>::new());
        let port = json!({"spec": {"cronSpec": "* * * * *", "port": true}});
        assert_eq!(
            texts(&validate(&crontab(), &port)),
            vec!["spec.port: Invalid value: true: spec.port in body must be of type integer-or-string: \"boolean\""]
        );
    }

    #[test]
    fn pruning_keeps_what_the_schema_names_and_defaults_fill_present_objects() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "CronTab", "metadata": {"name": "a"}, "extra": 1,
            "spec": {"cronSpec": "* * * * *", "typo": true, "labels": {"k": "v"}, "free": {"any": {"thing": 1}}},
            "status": {"ready": true, "other": 2}});
        assert_eq!(prune(&crontab(), &mut obj), ["extra", "spec.typo", "status.other"]);
        apply_defaults(&crontab(), &mut obj);
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "CronTab", "metadata": {"name": "a"},
                "spec": {"cronSpec": "* * * * *", "replicas": 1, "labels": {"k": "v"}, "free": {"any": {"thing": 1}}},
                "status": {"ready": true}})
        );
        let mut none = json!({"metadata": {"name": "b"}});
        apply_defaults(&crontab(), &mut none);
        assert_eq!(none, json!({"metadata": {"name": "b"}}), "a default fills only objects that are present");
    }

    #[test]
    fn a_schema_without_types_is_not_structural() {
        let texts = |s: Value| texts(&structural_problems(&s, "s"));
        assert_eq!(texts(crontab()), Vec::<String>::new());
        assert_eq!(texts(json!({"properties": {}})), vec!["s.type: Required value: must not be empty at the root"]);
        assert_eq!(
            texts(json!({"type": "object", "properties": {"a": {"properties": {}}, "b": {"type": "array"}}})),
            vec![
                "s.properties[a].type: Required value: must not be empty for specified object fields",
                "s.properties[b].items: Required value: must be specified"
            ]
        );
    }
}
