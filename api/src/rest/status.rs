//! API errors as Kubernetes answers them over HTTP: a `metav1.Status` with its reason, code
//! and details (causes naming the field for Invalid), so kubectl and client libraries print
//! their own familiar messages.

use crate::error::{ApiError, FieldErrorKind};
use http::StatusCode;
use serde_json::{json, Value};

/// The HTTP code and `metav1.Status` body of `e`.
pub fn of(e: &ApiError) -> (StatusCode, Value) {
    let (code, reason, details) = match e {
        ApiError::NotFound { resource, name } => (StatusCode::NOT_FOUND, "NotFound", details(resource, name)),
        ApiError::AlreadyExists { resource, name } => (StatusCode::CONFLICT, "AlreadyExists", details(resource, name)),
        ApiError::Conflict { resource, name, .. } => (StatusCode::CONFLICT, "Conflict", details(resource, name)),
        ApiError::BindConflict(_) => (StatusCode::CONFLICT, "Conflict", Value::Null),
        ApiError::ApplyConflict { causes, .. } => {
            let causes: Vec<Value> = causes
                .iter()
                .map(|(message, field)| json!({"reason": "FieldManagerConflict", "message": message, "field": field}))
                .collect();
            (StatusCode::CONFLICT, "Conflict", json!({"causes": causes}))
        }
        ApiError::Invalid { kind, name, causes } => {
            let (group, kind) = match kind.split_once('.') {
                Some((k, g)) => (g, k),
                None => ("", kind.as_str()),
            };
            let causes: Vec<Value> = causes
                .iter()
                .map(|c| {
                    let reason = match c.kind {
                        FieldErrorKind::Required => "FieldValueRequired",
                        FieldErrorKind::Invalid(_) => "FieldValueInvalid",
                        FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
                        FieldErrorKind::NotSupported(_) => "FieldValueNotSupported",
                        FieldErrorKind::Forbidden => "FieldValueForbidden",
                        FieldErrorKind::TooMany(_) => "FieldValueTooMany",
                    };
                    let message = c.to_string();
                    let message = message.strip_prefix(&format!("{}: ", c.path)).unwrap_or(&message).to_string();
                    json!({"reason": reason, "message": message, "field": c.path})
                })
                .collect();
            let mut d = json!({"name": name, "kind": kind, "causes": causes});
            if !group.is_empty() {
                d["group"] = json!(group);
            }
            (StatusCode::UNPROCESSABLE_ENTITY, "Invalid", d)
        }
        ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest", Value::Null),
        ApiError::NotFoundPath(_) => (StatusCode::NOT_FOUND, "NotFound", Value::Null),
        ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", Value::Null),
        ApiError::Precondition(_) => (StatusCode::CONFLICT, "Conflict", Value::Null),
        ApiError::NamespaceTerminating(_) => (StatusCode::FORBIDDEN, "Forbidden", Value::Null),
        ApiError::Gone { .. } => (StatusCode::GONE, "Expired", Value::Null),
        ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", Value::Null),
        ApiError::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "Forbidden", Value::Null),
        ApiError::TooManyRequests { causes, .. } => {
            let causes: Vec<Value> =
                causes.iter().map(|(reason, message)| json!({"reason": reason, "message": message})).collect();
            (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", json!({"causes": causes}))
        }
        ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "Unauthorized", Value::Null),
        ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden", Value::Null),
        ApiError::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", Value::Null),
        ApiError::Store(s) => {
            let status = tonic::Status::from(s.clone());
            match status.code() {
                tonic::Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "Timeout", Value::Null),
                tonic::Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", Value::Null),
                tonic::Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", Value::Null),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", Value::Null),
            }
        }
        ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", Value::Null),
    };
    let message = match e {
        // Kubernetes' text; the gRPC form adds the two versions.
        ApiError::Conflict { resource, name, .. } => format!(
            "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your \
             changes to the latest version and try again"
        ),
        ApiError::Unauthenticated(_) => "Unauthorized".to_string(),
        ApiError::TooManyRequests { message, .. } => message.clone(),
        other => other.to_string(),
    };
    (code, status(code, reason, &message, details))
}

/// A failure `metav1.Status`.
pub fn status(code: StatusCode, reason: &str, message: &str, details: Value) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if !details.is_null() {
        s["details"] = details;
    }
    s
}

/// `details` naming an object: `deployments.apps` → name, group and kind (the resource).
fn details(resource: &str, name: &str) -> Value {
    match resource.split_once('.') {
        Some((kind, group)) => json!({"name": name, "group": group, "kind": kind}),
        None => json!({"name": name, "kind": resource}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldError;

    #[test]
    fn errors_carry_kubernetes_reasons_and_codes() {
        let (code, s) = of(&ApiError::NotFound { resource: "deployments.apps".into(), name: "web".into() });
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["details"], json!({"name": "web", "group": "apps", "kind": "deployments"}));
        let invalid = ApiError::Invalid {
            kind: "Deployment.apps".into(),
            name: "web".into(),
            causes: vec![FieldError::invalid("spec.replicas", -1, "must be greater than or equal to 0")],
        };
        let (code, s) = of(&invalid);
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            s["message"],
            "Deployment.apps \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            s["details"]["causes"][0],
            json!({"reason": "FieldValueInvalid", "message": "Invalid value: -1: must be greater than or equal to 0", "field": "spec.replicas"})
        );
        assert_eq!(s["details"]["group"], "apps");
        let conflict =
            ApiError::Conflict { resource: "pods".into(), name: "p".into(), given: "1".into(), current: "2".into() };
        let (code, s) = of(&conflict);
        assert_eq!((code, s["reason"].as_str()), (StatusCode::CONFLICT, Some("Conflict")));
        assert!(!s["message"].as_str().unwrap().contains("resourceVersion 1"), "{s}");
        assert_eq!(of(&ApiError::Unauthenticated("no token".into())).0, StatusCode::UNAUTHORIZED);
    }
}
