//! Deletes: finalizers, graceful pod deletion, propagation to dependents (background,
//! foreground, orphan) and namespace termination.

use super::*;

impl Registry {
    /// Deletes (or marks for deletion) an object. Without a resourceVersion precondition a
    /// concurrent update (a status write, say) is not the caller's conflict: it retries, as
    /// Kubernetes' delete does. Every step before the guarded write is idempotent.
    pub async fn delete(
        &self,
        info: &'static KindInfo,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        let mut attempt = 0;
        loop {
            match self.delete_once(info, ns, name, opts).await {
                Err(ApiError::Conflict { .. }) if opts.resource_version.is_empty() && attempt < 5 => attempt += 1,
                other => return other,
            }
        }
    }

    pub(super) async fn delete_once(
        &self,
        info: &'static KindInfo,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        let ns = effective_namespace(info, ns);
        let key = kinds::key(info, &ns, name);
        let kv = self
            .read(&key)
            .await?
            .ok_or_else(|| ApiError::NotFound { resource: kinds::qualified(info), name: name.into() })?;
        if !opts.resource_version.is_empty() && opts.resource_version != kv.mod_revision.to_string() {
            return Err(ApiError::Conflict {
                resource: kinds::qualified(info),
                name: name.into(),
                given: opts.resource_version.clone(),
                current: kv.mod_revision.to_string(),
            });
        }
        let mut obj = self.decode(&kv)?;
        let uid = object::meta_str(&obj, "uid").to_string();
        if info.kind == "Namespace" {
            return Box::pin(self.delete_namespace(obj, kv.mod_revision)).await;
        }
        let policy = match opts.propagation_policy.as_str() {
            "" | "Background" => "Background",
            p @ ("Foreground" | "Orphan") => p,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "propagationPolicy {other:?} is not supported (Background, Foreground or Orphan)"
                )))
            }
        };
        let mut revision = kv.mod_revision;
        let graceful = info.kind == "Pod"
            && opts.grace_period_seconds != Some(0)
            && pod_still_running(&obj)
            && !obj.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default().is_empty();
        let grace = opts
            .grace_period_seconds
            .or_else(|| obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
            .unwrap_or(30);
        // Marks the object as being deleted: now, or at the end of a running pod's grace period.
        let mark = |obj: &mut Value| {
            let now = skiff_proto::time::now_secs();
            set_meta(obj, "deletionTimestamp", json!(object::rfc3339(now + if graceful { grace } else { 0 })));
            if graceful {
                set_meta(obj, "deletionGracePeriodSeconds", json!(grace));
            }
        };
        // Orphan and Foreground hold the object with a finalizer of this delete's own while
        // its dependents are released or deleted, as Kubernetes does: marked as being deleted
        // first, so its controller neither re-adopts nor replaces them meanwhile (and a status
        // write of that controller cannot make this delete's final write a conflict). A
        // delete cut short is finished by deleting again.
        let own = match policy {
            "Orphan" => Some(ORPHAN_FINALIZER),
            "Foreground" => Some(FOREGROUND_FINALIZER),
            _ => None,
        };
        if let Some(own) = own {
            let mut finalizers =
                obj.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
            let marked = !object::meta_str(&obj, "deletionTimestamp").is_empty();
            let held = finalizers.contains(&json!(own));
            if !marked || !held {
                if !marked {
                    mark(&mut obj);
                }
                if !held {
                    finalizers.push(json!(own));
                }
                set_meta(&mut obj, "finalizers", Value::Array(finalizers));
                let ops = vec![self.put_object(&key, &obj)?];
                revision = self.guarded(&kinds::qualified(info), name, &key, revision, ops).await?;
            }
            if policy == "Orphan" {
                self.orphan_dependents(&ns, &uid).await?;
            } else {
                Box::pin(self.delete_dependents(&ns, &uid)).await?;
            }
        }
        // This delete's own finalizer is done once the dependents are released or gone.
        let finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|f| own.is_none_or(|own| f != own)));
        if finalizers || graceful {
            // Mark for deletion; finalizers' owners (or the node, for a pod) finish it.
            if let Some(own) = own {
                // Others' finalizers hold it still; this delete's own is done.
                if let Some(list) = obj.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) {
                    list.retain(|f| f != own);
                }
                let ops = vec![self.put_object(&key, &obj)?];
                let revision = self.guarded(&kinds::qualified(info), name, &key, revision, ops).await?;
                set_meta(&mut obj, "resourceVersion", json!(revision.to_string()));
            } else if object::meta_str(&obj, "deletionTimestamp").is_empty() {
                mark(&mut obj);
                let ops = vec![self.put_object(&key, &obj)?];
                let revision = self.guarded(&kinds::qualified(info), name, &key, revision, ops).await?;
                set_meta(&mut obj, "resourceVersion", json!(revision.to_string()));
            }
        } else {
            self.guarded(&kinds::qualified(info), name, &key, revision, delete_ops(info, &key, &obj)).await?;
        }
        if policy == "Background" {
            Box::pin(self.delete_dependents(&ns, &uid)).await?;
        }
        Ok(obj)
    }

    /// Objects in `ns` (and cluster-scoped ones) whose ownerReferences name `uid`.
    pub(super) async fn dependents(&self, ns: &str, uid: &str) -> ApiResult<Vec<(&'static KindInfo, Value)>> {
        let mut out = Vec::new();
        for info in self.all_kinds() {
            let page = self.list(info, if info.namespaced { ns } else { "" }, &ListOptions::default()).await?;
            for obj in page.into_values() {
                let owned = obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)));
                if owned {
                    out.push((info, obj));
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn delete_dependents(&self, ns: &str, uid: &str) -> ApiResult<()> {
        for (info, obj) in self.dependents(ns, uid).await? {
            let opts = DeleteOptions { propagation_policy: "Background".into(), ..Default::default() };
            match self.delete(info, object::namespace(&obj), object::name(&obj), &opts).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(super) async fn orphan_dependents(&self, ns: &str, uid: &str) -> ApiResult<()> {
        for (info, obj) in self.dependents(ns, uid).await? {
            let refs: Vec<Value> = obj
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid)).cloned().collect())
                .unwrap_or_default();
            let patch = json!({"metadata": {"ownerReferences": if refs.is_empty() { Value::Null } else { Value::Array(refs) }}});
            self.patch(info, object::namespace(&obj), object::name(&obj), &patch, UpdateScope::Main).await?;
        }
        Ok(())
    }

    /// Marks the namespace Terminating, deletes everything in it, then the namespace itself
    /// (unless something in it waits on a finalizer; then it stays Terminating).
    pub(super) async fn delete_namespace(&self, mut ns_obj: Value, mod_revision: i64) -> ApiResult<Value> {
        let ns_info = kinds::by_resource("namespaces")?;
        let name = object::name(&ns_obj).to_string();
        if SYSTEM_NAMESPACES.contains(&name.as_str()) {
            return Err(ApiError::Forbidden(format!(
                "namespace {name:?} is a system namespace and may not be deleted"
            )));
        }
        let key = kinds::key(ns_info, "", &name);
        let mut rev = mod_revision;
        if ns_obj.pointer("/status/phase") != Some(&json!("Terminating")) {
            ns_obj["status"] = json!({"phase": "Terminating"});
            set_meta(&mut ns_obj, "deletionTimestamp", json!(object::now_rfc3339()));
            rev = self.guarded("namespaces", &name, &key, rev, vec![self.put_object(&key, &ns_obj)?]).await?;
        }
        let mut left = 0;
        for info in self.all_kinds().into_iter().filter(|k| k.namespaced) {
            for obj in self.list(info, &name, &ListOptions::default()).await?.into_values() {
                let opts = DeleteOptions { grace_period_seconds: Some(0), ..Default::default() };
                match self.delete(info, &name, object::name(&obj), &opts).await {
                    Ok(o) if !object::meta_str(&o, "deletionTimestamp").is_empty() => left += 1,
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if left == 0 {
            self.guarded("namespaces", &name, &key, rev, vec![delete_op(&key)]).await?;
        }
        set_meta(&mut ns_obj, "resourceVersion", json!(rev.to_string()));
        Ok(ns_obj)
    }
}
