//! Serde helpers the generated API types use (see `build.rs`), so that they read and write
//! JSON/YAML exactly as Kubernetes manifests spell them.

/// Skips a field on output when it holds its default (Kubernetes' `omitempty`).
pub fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Kubernetes' IntOrString (`maxSurge: 25%`, `targetPort: 8080`, `port: http`), held as a
/// `google.protobuf.Value` so gRPC's JSON mapping also accepts a number or a string.
pub mod int_or_string {
    use prost_types::{value::Kind, Value};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Int(i64),
        Str(String),
    }

    pub fn serialize<S: Serializer>(v: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
        match v.as_ref().and_then(|v| v.kind.as_ref()) {
            Some(Kind::NumberValue(n)) => Repr::Int(*n as i64).serialize(s),
            Some(Kind::StringValue(t)) => Repr::Str(t.clone()).serialize(s),
            _ => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        Ok(Option::<Repr>::deserialize(d)?.map(|r| Value {
            kind: Some(match r {
                Repr::Int(n) => Kind::NumberValue(n as f64),
                Repr::Str(t) => Kind::StringValue(t),
            }),
        }))
    }
}

/// Quantities (`cpu: 1`, `memory: 64Mi`): Kubernetes takes a YAML number as well as a string
/// and keeps the string form.
mod quantity_repr {
    use serde::{de, Deserialize, Deserializer};

    struct Quantity;

    impl de::Visitor<'_> for Quantity {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a quantity (a string such as \"500m\" or \"64Mi\", or a number)")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            if v.is_finite() {
                Ok(v.to_string())
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }
    }

    pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_any(Quantity)
    }

    /// A map value read through [`text`].
    #[derive(Deserialize)]
    pub struct Text(#[serde(deserialize_with = "text")] pub String);
}

/// A map of quantities (`resources.requests`, `capacity`, `hard`).
pub mod quantity_map {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(v: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
        let read = Option::<BTreeMap<String, super::quantity_repr::Text>>::deserialize(d)?;
        Ok(read.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

/// One quantity (`emptyDir.sizeLimit`).
pub mod quantity {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(Option::<super::quantity_repr::Text>::deserialize(d)?.map(|t| t.0).unwrap_or_default())
    }
}

/// A read view of an IntOrString field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

impl IntOrString {
    pub fn from_value(v: &Option<prost_types::Value>) -> Option<IntOrString> {
        match v.as_ref()?.kind.as_ref()? {
            prost_types::value::Kind::NumberValue(n) => Some(IntOrString::Int(*n as i64)),
            prost_types::value::Kind::StringValue(s) => Some(IntOrString::Str(s.clone())),
            _ => None,
        }
    }

    pub fn to_value(&self) -> Option<prost_types::Value> {
        Some(prost_types::Value {
            kind: Some(match self {
                IntOrString::Int(n) => prost_types::value::Kind::NumberValue(*n as f64),
                IntOrString::Str(s) => prost_types::value::Kind::StringValue(s.clone()),
            }),
        })
    }
}

/// `bytes` as base64, as Kubernetes writes Secret data.
pub mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(serde::de::Error::custom)
    }
}

/// `map<string, bytes>` with base64 values (Secret `data`, ConfigMap `binaryData`).
pub mod base64_map {
    use base64::Engine;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(v: &BTreeMap<String, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(v.len()))?;
        for (k, b) in v {
            m.serialize_entry(k, &base64::engine::general_purpose::STANDARD.encode(b))?;
        }
        m.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .map_err(|e| serde::de::Error::custom(format!("{k}: {e}")))?;
                Ok((k, bytes))
            })
            .collect()
    }
}

/// A string field holding JSON text, written and read as that JSON (Kubernetes' `fieldsV1`).
pub mod raw_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
        let value: serde_json::Value = serde_json::from_str(v).map_err(serde::ser::Error::custom)?;
        value.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        if !value.is_object() {
            return Err(serde::de::Error::custom(format!("invalid type: {value}, expected an object")));
        }
        Ok(value.to_string())
    }
}

/// Reads JSON as `T` and writes it back: the canonical form of an object, or an error naming
/// the path of the first unknown or mistyped field (`spec.replica: unknown field ...`).
pub fn normalize<T: serde::Serialize + serde::de::DeserializeOwned>(
    v: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let typed: T = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn quantities_given_as_numbers_are_kept_as_strings() {
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": 0.5, "memory": "64Mi"}, "limits": {"cpu": 1, "example.com/dongle": 3}}}],
            "volumes": [{"name": "v", "emptyDir": {"sizeLimit": 1000}}]}});
        let out = crate::api::normalize_json("Pod", pod).unwrap().unwrap();
        let r = &out["spec"]["containers"][0]["resources"];
        assert_eq!(r["requests"], json!({"cpu": "0.5", "memory": "64Mi"}));
        assert_eq!(r["limits"], json!({"cpu": "1", "example.com/dongle": "3"}));
        assert_eq!(out["spec"]["volumes"][0]["emptyDir"]["sizeLimit"], "1000");
        let refused = crate::api::normalize_json(
            "Pod",
            json!({"spec": {"containers": [{"resources": {"limits": {"cpu": true}}}]}}),
        );
        let why = refused.unwrap().unwrap_err();
        assert!(why.contains("cpu: invalid type: boolean `true`, expected a quantity"), "{why}");
    }
}
