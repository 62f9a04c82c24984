//! Looking up kinds by the names people type (`Pod`, `pods`, `po`) and their storage keys.

use crate::error::ApiError;
pub use skiff_proto::api::{KindInfo, KINDS};

/// Finds a kind by kind name, resource name (plural or singular) or short name,
/// case-insensitively.
pub fn lookup(name: &str) -> Option<&'static KindInfo> {
    let n = name.to_ascii_lowercase();
    KINDS.iter().find(|k| {
        k.kind.eq_ignore_ascii_case(&n)
            || k.resource == n
            || k.kind.to_ascii_lowercase() == n
            || k.short_names.split(',').any(|s| !s.is_empty() && s == n)
    })
}

pub fn by_kind(kind: &str, api_version: &str) -> Result<&'static KindInfo, ApiError> {
    let info = KINDS
        .iter()
        .find(|k| k.kind == kind)
        .ok_or_else(|| ApiError::BadRequest(format!("no kind {kind:?} is registered (apiVersion {api_version:?})")))?;
    if !api_version.is_empty() && api_version != info.api_version {
        return Err(ApiError::BadRequest(format!(
            "no kind {kind:?} is registered for version {api_version:?} (it is served as {:?})",
            info.api_version
        )));
    }
    Ok(info)
}

pub fn by_resource(resource: &str) -> Result<&'static KindInfo, ApiError> {
    KINDS
        .iter()
        .find(|k| k.resource == resource)
        .ok_or_else(|| ApiError::BadRequest(format!("the server doesn't have a resource type {resource:?}")))
}

/// `pods` or `deployments.apps`, as Kubernetes names a resource in messages.
pub fn qualified(info: &KindInfo) -> String {
    match info.api_version.split_once('/') {
        Some((group, _)) => format!("{}.{group}", info.resource),
        None => info.resource.to_string(),
    }
}

/// `Pod` or `Deployment.apps`.
pub fn qualified_kind(info: &KindInfo) -> String {
    match info.api_version.split_once('/') {
        Some((group, _)) => format!("{}.{group}", info.kind),
        None => info.kind.to_string(),
    }
}

/// Where objects of a kind live in the store: `/registry/<resource>/[<namespace>/]<name>`.
/// Custom kinds live under `/registry/<group>/<resource>/`, as in Kubernetes (a group has a
/// dot and a built-in resource has none, so they never meet).
pub fn key(info: &KindInfo, namespace: &str, name: &str) -> String {
    let base = collection(info);
    if info.namespaced {
        format!("{base}{namespace}/{name}")
    } else {
        format!("{base}{name}")
    }
}

fn collection(info: &KindInfo) -> String {
    match info.api_version.split_once('/') {
        Some((group, _)) if info.custom => format!("/registry/{group}/{}/", info.resource),
        _ => format!("/registry/{}/", info.resource),
    }
}

/// Key prefix of a kind's objects, in one namespace or (empty) all of them.
pub fn prefix(info: &KindInfo, namespace: &str) -> String {
    if info.namespaced && !namespace.is_empty() {
        format!("{}{namespace}/", collection(info))
    } else {
        collection(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_accepts_what_kubectl_users_type() {
        for (typed, kind) in [
            ("po", "Pod"),
            ("pods", "Pod"),
            ("Pod", "Pod"),
            ("deploy", "Deployment"),
            ("svc", "Service"),
            ("ep", "Endpoints"),
            ("cj", "CronJob"),
            ("ingresses", "Ingress"),
        ] {
            assert_eq!(lookup(typed).map(|k| k.kind), Some(kind), "{typed}");
        }
        assert!(lookup("podz").is_none());
        assert_eq!(qualified(by_resource("deployments").unwrap()), "deployments.apps");
    }
}
