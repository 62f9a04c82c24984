//! The verbs on JSON objects for a caller already authenticated: authorize (RBAC, node
//! restriction, no escalation), admit, then the [`Registry`](crate::Registry). The per-kind
//! gRPC services, the kind-agnostic `Objects` service and the REST API all call these, so each
//! rule is written once whatever the protocol.

use crate::auth::{Attributes, User};
use crate::error::{ApiError, ApiResult};
use crate::kinds::{self, KindInfo};
use crate::registry::{CreateId, DeleteOptions, ListOptions, ListPage, UpdateScope, WatchEvent, WatchOptions};
use crate::service::Api;
use serde_json::Value;
use tokio::sync::mpsc;

/// The namespace an object body goes to: none for cluster-scoped kinds, else its own, else
/// `fallback` (the request's), else `default`.
pub fn ns_of<'a>(info: &KindInfo, obj: &'a Value, fallback: &'a str) -> &'a str {
    if !info.namespaced {
        ""
    } else {
        match crate::object::namespace(obj) {
            "" if fallback.is_empty() => "default",
            "" => fallback,
            ns => ns,
        }
    }
}

/// The namespace a call on one object names (`default` when none is given), or for a list or
/// watch the one given (empty: all).
fn call_ns<'a>(info: &KindInfo, verb: &str, ns: &'a str) -> &'a str {
    if !info.namespaced {
        ""
    } else if ns.is_empty() && !matches!(verb, "list" | "watch" | "deletecollection") {
        "default"
    } else {
        ns
    }
}

/// How many times a patch is re-applied to a newer object after a conflict (a patch that
/// names a resourceVersion is not retried).
const PATCH_ATTEMPTS: usize = 5;

/// Drops every `null` member of the objects in `v`: in Kubernetes' JSON a null is the field
/// left unset (Go writes an unset time as `"creationTimestamp": null` in every template, which
/// `kubectl rollout undo` and `replace` send back).
pub fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, x| !x.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// How a write is made: for real or as a dry run, and by which field manager (REST writes
/// name one, and what each changes is recorded in `managedFields`; gRPC writes keep what is
/// recorded).
#[derive(Debug, Clone, Copy, Default)]
pub struct Write<'a> {
    pub dry_run: bool,
    pub manager: Option<&'a str>,
    /// `?fieldValidation=Strict`: a field a custom kind's schema does not name is refused
    /// rather than pruned (built-in kinds always refuse them).
    pub strict_fields: bool,
}

/// A dry run's object shows the version the store still has (none for a create).
fn dry_version(mut obj: Value, stored: Option<&Value>) -> Value {
    let rv = stored.map(|s| crate::object::resource_version(s).to_string()).unwrap_or_default();
    crate::object::set_meta(&mut obj, "resourceVersion", Value::String(rv));
    obj
}

impl Api {
    /// The registry a write goes to: the store's, or a dry run's that writes nothing.
    pub(crate) fn writer(&self, w: Write<'_>) -> std::borrow::Cow<'_, crate::Registry> {
        if w.dry_run || w.strict_fields {
            let (dry_run, strict_fields) = (w.dry_run, w.strict_fields);
            std::borrow::Cow::Owned(crate::Registry { dry_run, strict_fields, ..self.registry.clone() })
        } else {
            std::borrow::Cow::Borrowed(&self.registry)
        }
    }

    /// Authorizes `verb` on `sub` of one object (or a collection, `name` empty).
    #[allow(clippy::too_many_arguments)]
    pub async fn allow(
        &self,
        user: &User,
        info: &'static KindInfo,
        verb: &str,
        sub: &str,
        ns: &str,
        name: &str,
        object: Option<&Value>,
        stored: Option<&Value>,
    ) -> ApiResult<()> {
        let a = Attributes { verb, info, subresource: sub, namespace: call_ns(info, verb, ns), name };
        self.authorize(user, &a, object, stored).await
    }

    /// Creates `obj` (in `ns_hint` when it names no namespace); with `dry_run`, answers with
    /// what would be stored.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_object(
        &self,
        user: &User,
        info: &'static KindInfo,
        mut obj: Value,
        ns_hint: &str,
        id: Option<&CreateId>,
        w: Write<'_>,
    ) -> ApiResult<Value> {
        drop_nulls(&mut obj);
        let name = crate::object::name(&obj).to_string();
        self.allow(user, info, "create", "", ns_of(info, &obj, ns_hint), &name, Some(&obj), None).await?;
        crate::admission::stamp_requester(info, &mut obj, user);
        if let Some(manager) = w.manager {
            crate::fields::track_update(None, &mut obj, manager, info.api_version, "");
        }
        let made = self.writer(w).create_as(info, obj, ns_hint, id).await?;
        Ok(if w.dry_run { dry_version(made, None) } else { made })
    }

    pub async fn get_object(&self, user: &User, info: &'static KindInfo, ns: &str, name: &str) -> ApiResult<Value> {
        self.allow(user, info, "get", "", ns, name, None, None).await?;
        self.registry.get(info, ns, name).await
    }

    pub async fn list_objects(
        &self,
        user: &User,
        info: &'static KindInfo,
        ns: &str,
        opts: &ListOptions,
    ) -> ApiResult<ListPage> {
        self.allow(user, info, "list", "", ns, "", None, None).await?;
        self.registry.list(info, ns, opts).await
    }

    /// Replaces an object (`Status`: its status) with `obj`.
    pub async fn update_object(
        &self,
        user: &User,
        info: &'static KindInfo,
        obj: Value,
        ns_hint: &str,
        scope: UpdateScope,
        w: Write<'_>,
    ) -> ApiResult<Value> {
        let sub = if scope == UpdateScope::Status { "status" } else { "" };
        let mut obj = obj;
        drop_nulls(&mut obj);
        let (ns, name) = (ns_of(info, &obj, ns_hint).to_string(), crate::object::name(&obj).to_string());
        let stored = self.stored(info, &ns, &name).await?;
        self.allow(user, info, "update", sub, &ns, &name, Some(&obj), stored.as_ref()).await?;
        if info.namespaced && crate::object::namespace(&obj).is_empty() {
            crate::object::set_meta(&mut obj, "namespace", Value::String(ns));
        }
        if let (Some(manager), UpdateScope::Main) = (w.manager, scope) {
            crate::fields::track_update(stored.as_ref(), &mut obj, manager, info.api_version, "");
        }
        let updated = self.writer(w).update(info, obj, scope).await?;
        Ok(if w.dry_run { dry_version(updated, stored.as_ref()) } else { updated })
    }

    /// Patches an object: `apply` turns the stored object into the patched one. Authorized on
    /// the object as it will be stored (escalation, node restriction) on each attempt; a
    /// conflict re-applies the patch to the newer object unless `pinned` (the patch names a
    /// resourceVersion, which must then be current).
    #[allow(clippy::too_many_arguments)]
    pub async fn patch_object(
        &self,
        user: &User,
        info: &'static KindInfo,
        ns: &str,
        name: &str,
        scope: UpdateScope,
        pinned: bool,
        w: Write<'_>,
        apply: &(dyn Fn(&Value) -> ApiResult<Value> + Send + Sync),
    ) -> ApiResult<Value> {
        let sub = if scope == UpdateScope::Status { "status" } else { "" };
        let mut attempts = 0;
        loop {
            let Some(stored) = self.stored(info, ns, name).await? else {
                // Missing: say so only to a caller who may patch such objects at all.
                self.allow(user, info, "patch", sub, ns, name, None, None).await?;
                return Err(ApiError::NotFound { resource: kinds::qualified(info), name: name.into() });
            };
            let mut patched = apply(&stored)?;
            drop_nulls(&mut patched);
            self.allow(user, info, "patch", sub, ns, name, Some(&patched), Some(&stored)).await?;
            if let (Some(manager), UpdateScope::Main) = (w.manager, scope) {
                crate::fields::track_update(Some(&stored), &mut patched, manager, info.api_version, "");
            }
            match self.writer(w).update(info, patched, scope).await {
                Err(ApiError::Conflict { .. }) if !pinned && attempts < PATCH_ATTEMPTS => attempts += 1,
                Ok(done) if w.dry_run => return Ok(dry_version(done, Some(&stored))),
                other => return other,
            }
        }
    }

    pub async fn delete_object(
        &self,
        user: &User,
        info: &'static KindInfo,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> ApiResult<Value> {
        let current = self.stored(info, ns, name).await?;
        self.allow(user, info, "delete", "", ns, name, current.as_ref(), None).await?;
        let gone = self.writer(Write { dry_run, ..Default::default() }).delete(info, ns, name, opts).await?;
        Ok(if dry_run { dry_version(gone, current.as_ref()) } else { gone })
    }

    /// A workload as its scale subresource reads it (`get` on `scale`).
    pub async fn get_scaled(&self, user: &User, info: &'static KindInfo, ns: &str, name: &str) -> ApiResult<Value> {
        self.allow(user, info, "get", "scale", ns, name, None, None).await?;
        self.registry.get(info, ns, name).await
    }

    /// Sets a workload's replicas through its scale subresource (`update` on `scale`); a
    /// non-empty `resource_version` must be current. Answers with the workload.
    #[allow(clippy::too_many_arguments)]
    pub async fn scale_object(
        &self,
        user: &User,
        info: &'static KindInfo,
        ns: &str,
        name: &str,
        replicas: i64,
        resource_version: &str,
        w: Write<'_>,
    ) -> ApiResult<Value> {
        self.allow(user, info, "update", "scale", ns, name, None, None).await?;
        if replicas < 0 {
            return Err(ApiError::Invalid {
                kind: "Scale".into(),
                name: name.into(),
                causes: vec![crate::error::FieldError::invalid(
                    "spec.replicas",
                    replicas,
                    "must be greater than or equal to 0",
                )],
            });
        }
        let writer = self.writer(w);
        let paths = crate::crd::ScalePaths::of(&self.registry.custom, info);
        let mut attempts = 0;
        loop {
            let stored = writer.get(info, ns, name).await?;
            let mut scaled = stored.clone();
            paths.set_replicas(&mut scaled, replicas);
            if !resource_version.is_empty() {
                crate::object::set_meta(&mut scaled, "resourceVersion", resource_version.into());
            }
            if let Some(manager) = w.manager {
                crate::fields::track_update(Some(&stored), &mut scaled, manager, info.api_version, "scale");
            }
            match writer.update(info, scaled, UpdateScope::Main).await {
                Err(ApiError::Conflict { .. }) if resource_version.is_empty() && attempts < PATCH_ATTEMPTS => {
                    attempts += 1
                }
                other => return other,
            }
        }
    }

    /// Binds a pod to `node` (`create` on `pods/binding`).
    pub async fn bind_pod(
        &self,
        user: &User,
        ns: &str,
        name: &str,
        node: &str,
        resource_version: &str,
    ) -> ApiResult<Value> {
        let pods = kinds::by_resource("pods")?;
        self.allow(user, pods, "create", "binding", ns, name, None, None).await?;
        self.registry.bind(ns, name, node, resource_version).await
    }

    /// Evicts a pod (`create` on `pods/eviction`): deletes it with `grace_period_seconds` if
    /// its PodDisruptionBudget allows.
    pub async fn evict_pod(
        &self,
        user: &User,
        ns: &str,
        name: &str,
        grace_period_seconds: Option<i64>,
    ) -> ApiResult<Value> {
        let pods = kinds::by_resource("pods")?;
        self.allow(user, pods, "create", "eviction", ns, name, None, None).await?;
        self.registry.evict(ns, name, grace_period_seconds).await
    }

    pub async fn watch_objects(
        &self,
        user: &User,
        info: &'static KindInfo,
        ns: &str,
        opts: WatchOptions,
    ) -> ApiResult<mpsc::Receiver<ApiResult<WatchEvent>>> {
        self.allow(user, info, "watch", "", ns, "", None, None).await?;
        self.registry.watch(info, ns, opts).await
    }
}
