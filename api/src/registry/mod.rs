//! The generic object store behind every kind: objects live in the replicated store as JSON
//! under `/registry/<resource>/[<namespace>/]<name>`; their `resourceVersion` is the key's mod
//! revision. Every write is one raft transaction guarded by a compare, so a stale update fails
//! with a conflict instead of overwriting (DESIGN.md rule 3), and nothing is half-applied.
//!
//! This module holds creates, gets, updates, patches and binds; `list`, `watch`, `delete`
//! and `addresses` (a Service's cluster IP and node ports) hold the rest.

mod addresses;
mod create_id;
mod delete;
mod evict;
mod list;
mod watch;

use addresses::claim_ops;
pub use create_id::CreateId;
pub(crate) use list::scan;

use crate::admission;
use crate::allocator::{self, Claims, ServiceRange};
use crate::defaults;
use crate::error::{ApiError, ApiResult};
use crate::kinds::{self, KindInfo, KINDS};
use crate::list_cache::{ListCaches, Stored};
use crate::object::{self, meta_mut, set_meta};
use crate::selector::{labels_of, FieldSelector, LabelSelector};
use crate::validation;
use base64::Engine;
use prost::Message;
use serde_json::{json, Value};
use skiff_proto::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use skiff_proto::mvccpb::{event::EventType, KeyValue};
use skiff_raft_store::master::reply_result;
use skiff_raft_store::mvcc::KeyRange;
use skiff_raft_store::types::{ApplyError, Op, Reply};
use skiff_raft_store::watch_feed::{self, Feed, FeedSpec};
use skiff_raft_store::{Master, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Largest object the API stores, as Kubernetes' request limit.
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024;
/// Namespaces that exist from bootstrap and may not be deleted.
pub const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: String,
    pub field_selector: String,
    pub limit: i64,
    pub continue_token: String,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    /// Background (default), Foreground or Orphan.
    pub propagation_policy: String,
    pub resource_version: String,
}

#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    pub label_selector: String,
    pub field_selector: String,
    pub resource_version: String,
    pub allow_bookmarks: bool,
    /// Bookmarks this often, and only when the revision moved on since what was last sent;
    /// `None`: the registry's interval, unconditionally.
    pub bookmark_interval: Option<Duration>,
}

/// Kubernetes' finalizer on an owner whose delete orphans its dependents.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// Kubernetes' finalizer on an owner whose delete waits for its dependents to go first.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// The shortest bookmark interval a watcher may ask for.
pub const MIN_BOOKMARK_INTERVAL: Duration = Duration::from_millis(10);

/// One watch event: `ADDED`, `MODIFIED`, `DELETED` or `BOOKMARK`, with the object.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: &'static str,
    pub object: Value,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Arc<Stored>>,
    pub resource_version: i64,
    pub continue_token: String,
}

/// How an update treats `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateScope {
    /// Everything but status (status kept as stored, for kinds with a status subresource).
    Main,
    /// Only status.
    Status,
    /// Spec and status together (server-side subresources such as binding).
    All,
}

/// A JSON object as its kind's message (objects here passed validation: a failure is ours).
fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> ApiResult<T> {
    T::deserialize(v).map_err(|e| ApiError::Internal(format!("an object does not decode as its kind: {e}")))
}

#[derive(Clone)]
pub struct Registry {
    pub master: Arc<Master>,
    /// Server-side dry run (`?dryRun=All`): every check, admission and compare of a write
    /// runs, and nothing is written — the write gate ([`Registry::txn`]) proposes the
    /// transaction's compares without its operations.
    pub dry_run: bool,
    /// Encryption at rest of Secrets (`--encryption-provider-config`); `None` stores them as
    /// they are.
    pub at_rest: Option<Arc<crate::at_rest::AtRest>>,
    /// How often a watch that allows bookmarks receives one.
    pub bookmark_interval: Duration,
    /// The range Services' cluster IPs come from.
    pub service_range: ServiceRange,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Every listed kind's objects in memory, current to the store ([`ListCaches`]).
    pub lists: Arc<ListCaches>,
    /// The kinds CustomResourceDefinitions define ([`Registry::refresh_custom`]).
    pub custom: Arc<crate::crd::Catalog>,
    /// Refuse, rather than prune, fields a custom object's schema does not name
    /// (`?fieldValidation=Strict`).
    pub strict_fields: bool,
}

impl ListPage {
    /// The items as JSON objects, copied out of the cache.
    pub fn into_values(self) -> Vec<Value> {
        self.items.into_iter().map(|s| s.object.clone()).collect()
    }

    /// The items as `T` (their kind's message).
    pub fn typed<T: serde::de::DeserializeOwned + prost::Message + Default>(&self) -> ApiResult<Vec<T>> {
        self.items.iter().map(|s| s.typed::<T>()).collect()
    }

    /// The items as their kind's protobuf encoding `T`, made once per stored version of each.
    pub fn encoded<T: serde::de::DeserializeOwned + prost::Message>(&self) -> ApiResult<Vec<prost::bytes::Bytes>> {
        self.items.iter().map(|s| s.encoded::<T>()).collect()
    }
}

pub(crate) use skiff_raft_store::mvcc::prefix_end;

/// A stored object with its resourceVersion, opened first if it is encrypted at rest.
pub(crate) fn decode_object(at_rest: Option<&crate::at_rest::AtRest>, kv: &KeyValue) -> ApiResult<Value> {
    let value = crate::at_rest::open(at_rest, &kv.key, &kv.value)?;
    let mut v: Value = serde_json::from_slice(&value).map_err(|e| {
        ApiError::Internal(format!("stored object {} is not JSON: {e}", String::from_utf8_lossy(&kv.key)))
    })?;
    set_meta(&mut v, "resourceVersion", json!(kv.mod_revision.to_string()));
    Ok(v)
}

fn encode_object(obj: &Value) -> ApiResult<Vec<u8>> {
    let mut stored = obj.clone();
    meta_mut(&mut stored).remove("resourceVersion");
    let bytes = serde_json::to_vec(&stored).map_err(|e| ApiError::Internal(e.to_string()))?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::TooLarge(format!(
            "Request entity too large: {} \"{}\" is {} bytes, limit is {MAX_OBJECT_BYTES}",
            object::meta_str(obj, "namespace"),
            object::name(obj),
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Where the service-account token signing key is kept (not an API object).
pub(crate) const SERVICE_ACCOUNT_KEY: &str = "/registry/skiff/serviceaccount-signing-key";

fn put_op(key: &str, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest { key: key.into(), value, ..Default::default() })),
    }
}

fn delete_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn mod_is(key: &str, rev: i64) -> Compare {
    Compare {
        key: key.into(),
        target: compare::CompareTarget::Mod as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

fn absent(key: &str) -> Compare {
    Compare {
        key: key.into(),
        target: compare::CompareTarget::Create as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        ..Default::default()
    }
}

/// The ops that delete `obj`'s key and, for a Service, give back its addresses.
fn delete_ops(info: &KindInfo, key: &str, obj: &Value) -> Vec<RequestOp> {
    let mut ops = vec![delete_op(key)];
    if info.kind == "Service" {
        ops.extend(allocator::held(obj).iter().map(|k| delete_op(k)));
    }
    if info.kind == "CustomResourceDefinition" {
        // Its objects go with it, in the same write (their finalizers are not waited for).
        let (group, plural) = (obj.pointer("/spec/group"), obj.pointer("/spec/names/plural"));
        if let (Some(Value::String(group)), Some(Value::String(plural))) = (group, plural) {
            let prefix = format!("/registry/{group}/{plural}/");
            ops.push(RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: prefix.clone().into_bytes(),
                    range_end: skiff_raft_store::mvcc::prefix_end(prefix.as_bytes()),
                    ..Default::default()
                })),
            });
        }
    }
    ops
}

fn random_suffix() -> String {
    suffix_from(&rand::random::<[u8; 5]>())
}

/// Kubernetes' `generateName` suffix: five characters (no vowels, no look-alikes), one per byte.
fn suffix_from(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    bytes.iter().take(5).map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

fn uid() -> String {
    uid_from(rand::random())
}

fn uid_from(b: [u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

impl Registry {
    pub fn new(master: Arc<Master>) -> Self {
        let metrics = Arc::new(crate::metrics::Metrics::new(master.metrics.clone()));
        Registry {
            master,
            dry_run: false,
            at_rest: None,
            bookmark_interval: Duration::from_secs(5),
            service_range: ServiceRange::default(),
            metrics,
            lists: Arc::default(),
            custom: Arc::default(),
            strict_fields: false,
        }
    }

    /// Reads the stored CustomResourceDefinitions (linearizably) into [`Registry::custom`]:
    /// what a request naming a kind the catalog lacks does before it is refused, so a kind
    /// defined a moment ago through another master is served here too. Answers with the
    /// revision it read at.
    pub async fn refresh_custom(&self) -> ApiResult<i64> {
        let definitions =
            self.list(kinds::by_resource("customresourcedefinitions")?, "", &ListOptions::default()).await?;
        let revision = definitions.resource_version;
        self.custom.sync(&definitions.into_values());
        Ok(revision)
    }

    /// The built-in kinds and the custom ones.
    pub fn all_kinds(&self) -> Vec<&'static KindInfo> {
        KINDS.iter().chain(self.custom.kinds().iter().map(|k| k.info)).collect()
    }

    /// The kind named by a resource (`pods`, `crontabs`, `crontabs.stable.example.com`),
    /// built-in or custom (looked for again in the store when the catalog lacks it).
    pub async fn kind_by_resource(&self, resource: &str) -> ApiResult<&'static KindInfo> {
        if let Ok(info) = kinds::by_resource(resource) {
            return Ok(info);
        }
        if self.custom.by_resource(resource).is_none() {
            self.refresh_custom().await?;
        }
        match self.custom.by_resource(resource) {
            Some(kind) => Ok(kind.info),
            None => kinds::by_resource(resource),
        }
    }

    // ---- store access ----------------------------------------------------------------------

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<RequestOp>,
        failure: Vec<RequestOp>,
    ) -> ApiResult<(bool, i64, TxnResponse)> {
        let req = if self.dry_run {
            TxnRequest { compare: compares, success: Vec::new(), failure: Vec::new() }
        } else {
            TxnRequest { compare: compares, success, failure }
        };
        let (revision, reply) = reply_result(self.master.propose(Op::Txn(req.encode_to_vec())).await?)?;
        let Reply::Encoded(bytes) = reply else {
            return Err(ApiError::Internal("unexpected reply to a transaction".into()));
        };
        let resp = TxnResponse::decode(bytes.as_slice()).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok((resp.succeeded, revision, resp))
    }

    /// Runs `ops` if `key` is still at `expected` (its mod revision); otherwise a conflict naming
    /// the revision it has now. Returns the revision of the write.
    async fn guarded(
        &self,
        resource: &str,
        name: &str,
        key: &str,
        expected: i64,
        ops: Vec<RequestOp>,
    ) -> ApiResult<i64> {
        self.guarded_claiming(resource, name, key, expected, None, ops).await
    }

    /// The key that signs service-account tokens, shared by every master through the store:
    /// made by whichever master needs it first (guarded by being absent), read by the rest.
    pub async fn service_account_key(&self) -> ApiResult<Vec<u8>> {
        if let Some(key) = self.existing_service_account_key().await? {
            return Ok(key);
        }
        let fresh: [u8; 32] = rand::random();
        let sealed = crate::at_rest::seal(self.at_rest.as_deref(), SERVICE_ACCOUNT_KEY.as_bytes(), fresh.to_vec())?;
        self.txn(vec![mod_is(SERVICE_ACCOUNT_KEY, 0)], vec![put_op(SERVICE_ACCOUNT_KEY, sealed)], vec![]).await?;
        self.existing_service_account_key()
            .await?
            .ok_or_else(|| ApiError::Internal("the service-account signing key vanished".into()))
    }

    /// The signing key if one was made (checking a token must not make one).
    pub async fn existing_service_account_key(&self) -> ApiResult<Option<Vec<u8>>> {
        let Some(kv) = self.read(SERVICE_ACCOUNT_KEY).await? else { return Ok(None) };
        Ok(Some(crate::at_rest::open(self.at_rest.as_deref(), &kv.key, &kv.value)?.into_owned()))
    }

    /// A stored object, opened if it is encrypted at rest.
    fn decode(&self, kv: &KeyValue) -> ApiResult<Value> {
        decode_object(self.at_rest.as_deref(), kv)
    }

    /// The write of `obj` under `key`, sealed if its kind is encrypted at rest.
    fn put_object(&self, key: &str, obj: &Value) -> ApiResult<RequestOp> {
        let bytes = crate::at_rest::seal(self.at_rest.as_deref(), key.as_bytes(), encode_object(obj)?)?;
        Ok(put_op(key, bytes))
    }

    /// A linearizable read of one key.
    async fn read(&self, key: &str) -> ApiResult<Option<KeyValue>> {
        self.master.read_barrier().await?;
        let r = self
            .master
            .sm
            .mvcc
            .range(&RangeRequest { key: key.into(), ..Default::default() })
            .map_err(StoreError::from)?;
        Ok(r.kvs.into_iter().next())
    }

    // ---- verbs -----------------------------------------------------------------------------

    pub async fn create(&self, info: &'static KindInfo, obj: Value, namespace_hint: &str) -> ApiResult<Value> {
        self.create_as(info, obj, namespace_hint, None).await
    }

    /// [`Registry::create`] of a create its client may retry ([`CreateId`]): an attempt that
    /// finds the object an earlier attempt made answers with it.
    pub async fn create_as(
        &self,
        info: &'static KindInfo,
        mut obj: Value,
        namespace_hint: &str,
        id: Option<&CreateId>,
    ) -> ApiResult<Value> {
        self.prepare_new(info, &mut obj, namespace_hint, id)?;
        let ns = object::namespace(&obj).to_string();
        let key = kinds::key(info, &ns, object::name(&obj));
        if info.kind == "Pod" {
            self.resolve_priority(&mut obj).await?;
            self.resolve_runtime_class(&mut obj).await?;
        }
        if matches!(info.kind, "Pod" | "PersistentVolumeClaim") {
            self.limit_ranger(info, &mut obj).await?;
        }
        let prepared = obj;
        for _ in 0..5 {
            let mut obj = prepared.clone();
            let claims = match info.kind {
                "Service" => Some(self.assign_addresses(&mut obj, None).await?),
                _ => None,
            };
            let mut compares = vec![absent(&key)];
            let mut ops = vec![self.put_object(&key, &obj)?];
            if let Some(claims) = &claims {
                claim_ops(claims, &obj, &mut compares, &mut ops);
            }
            if info.kind == "Namespace" {
                // Its `default` ServiceAccount in the same write: a pod created right after
                // the namespace finds it (the leader's controller covers older namespaces).
                let accounts = kinds::by_resource("serviceaccounts")?;
                let name = object::name(&obj).to_string();
                let mut account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": name}});
                self.prepare_new(accounts, &mut account, &name, None)?;
                ops.push(self.put_object(&kinds::key(accounts, &name, "default"), &account)?);
            }
            if info.namespaced {
                let ns_kv = self.namespace_for_create(&ns).await?;
                compares.push(mod_is(&kinds::key(kinds::by_resource("namespaces")?, "", &ns), ns_kv.mod_revision));
                if info.kind == "Pod" {
                    self.admit_pod(&obj, &self.decode(&ns_kv)?, &mut compares, &mut ops).await?;
                }
            }
            let (ok, revision, _) = self.txn(compares, ops, vec![]).await?;
            if ok {
                if create_id::lose_this_reply(&ns, &key) {
                    return Err(ApiError::Store(StoreError::Interrupted(
                        "testing: the reply to a committed create was lost".into(),
                    )));
                }
                set_meta(&mut obj, "resourceVersion", json!(revision.to_string()));
                return Ok(obj);
            }
            if let Some(kv) = self.read(&key).await? {
                if let Some(id) = id {
                    let existing = self.decode(&kv)?;
                    if object::meta_str(&existing, "uid") == id.uid() {
                        // This create's earlier attempt made it; its reply was lost.
                        return Ok(existing);
                    }
                }
                return Err(ApiError::AlreadyExists {
                    resource: kinds::qualified(info),
                    name: object::name(&obj).into(),
                });
            }
            if let Some(claims) = &claims {
                self.refuse_taken(claims, &obj).await?;
            }
            // The namespace, a quota or a picked address changed under us: look again.
        }
        Err(ApiError::Internal(format!("namespace {ns} kept changing while creating {key}")))
    }

    /// Kubernetes' Priority admission: a pod naming a PriorityClass (or, naming none, the
    /// cluster's global default class, if there is one) gets the class's value as
    /// `spec.priority` and its preemption policy; the built-in `system-cluster-critical` and
    /// `system-node-critical` classes always exist. A priority given outright must agree.
    /// The LimitRanger admission plugin on a new pod or claim: its namespace's LimitRanges'
    /// defaults, then their bounds ([`crate::limits`]); the result is validated again.
    async fn limit_ranger(&self, info: &'static KindInfo, obj: &mut Value) -> ApiResult<()> {
        let ranges = kinds::by_resource("limitranges")?;
        let ns = object::namespace(obj).to_string();
        let ranges: Vec<skiff_proto::api::LimitRange> =
            self.list(ranges, &ns, &ListOptions::default()).await?.typed()?;
        if ranges.is_empty() {
            return Ok(());
        }
        let errors = if info.kind == "Pod" {
            let mut pod: skiff_proto::api::Pod = typed(obj)?;
            if let Some(said) = crate::limits::default_pod(&mut pod, &ranges) {
                if let Some(meta) = pod.metadata.as_mut() {
                    meta.annotations.insert(crate::limits::ANNOTATION.into(), said);
                }
                *obj = serde_json::to_value(&pod).map_err(|e| ApiError::Internal(e.to_string()))?;
                self.finish_object(info, obj)?;
            }
            crate::limits::check_pod(&pod, &ranges)
        } else {
            crate::limits::check_claim(&typed(obj)?, &ranges)
        };
        if errors.is_empty() {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "{} {:?} is forbidden: {}",
            info.resource,
            object::name(obj),
            crate::limits::aggregate(&errors)
        )))
    }

    /// Kubernetes' RuntimeClass admission: a pod naming a RuntimeClass gets the class's
    /// overhead (one given outright must equal it) and its scheduling constraints (its node
    /// selector merged in, refused on a conflicting label; its tolerations added); a class that
    /// does not exist, or an overhead without a class that defines one, refuses the pod.
    async fn resolve_runtime_class(&self, obj: &mut Value) -> ApiResult<()> {
        let mut pod: skiff_proto::api::Pod = typed(obj)?;
        let name = object::name(obj).to_string();
        let forbidden = |why: String| ApiError::Forbidden(format!("pods {name:?} is forbidden: pod rejected: {why}"));
        let Some(spec) = pod.spec.as_mut() else { return Ok(()) };
        let class: Option<skiff_proto::api::RuntimeClass> = match spec.runtime_class_name.as_deref() {
            None | Some("") => None,
            Some(class) => match self.get(kinds::by_resource("runtimeclasses")?, "", class).await {
                Ok(c) => Some(typed(&c)?),
                Err(ApiError::NotFound { .. }) => return Err(forbidden(format!("RuntimeClass {class:?} not found"))),
                Err(e) => return Err(e),
            },
        };
        let overhead = class.as_ref().and_then(|c| c.overhead.as_ref()).map(|o| &o.pod_fixed);
        match overhead {
            None if !spec.overhead.is_empty() => {
                return Err(forbidden("Pod Overhead set without corresponding RuntimeClass defined Overhead".into()))
            }
            Some(fixed) if !spec.overhead.is_empty() && spec.overhead != *fixed => {
                return Err(forbidden("Pod's Overhead doesn't match RuntimeClass's defined Overhead".into()))
            }
            Some(fixed) => spec.overhead = fixed.clone(),
            None => {}
        }
        let Some(class) = class else { return Ok(()) };
        let scheduling = class.scheduling.unwrap_or_default();
        for (key, value) in scheduling.node_selector {
            match spec.node_selector.get(&key) {
                Some(had) if *had != value => {
                    return Err(ApiError::Forbidden(format!(
                        "pods {name:?} is forbidden: conflict: runtimeClass.scheduling.nodeSelector[{key}] = {value}; \
                         pod.spec.nodeSelector[{key}] = {had}"
                    )))
                }
                _ => {
                    spec.node_selector.insert(key, value);
                }
            }
        }
        for toleration in scheduling.tolerations {
            if !spec.tolerations.contains(&toleration) {
                spec.tolerations.push(toleration);
            }
        }
        *obj = serde_json::to_value(&pod).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.finish_object(kinds::by_resource("pods")?, obj)
    }

    async fn resolve_priority(&self, pod: &mut Value) -> ApiResult<()> {
        let pod_name = object::name(pod).to_string();
        let named = pod.pointer("/spec/priorityClassName").and_then(Value::as_str).unwrap_or_default().to_string();
        let forbidden = |why: String| ApiError::Forbidden(format!("pods {pod_name:?} is forbidden: {why}"));
        let classes = kinds::by_resource("priorityclasses")?;
        let class = match named.as_str() {
            "system-node-critical" => Some((named.clone(), 2_000_001_000, "PreemptLowerPriority".to_string())),
            "system-cluster-critical" => Some((named.clone(), 2_000_000_000, "PreemptLowerPriority".to_string())),
            "" => {
                let all = self.list(classes, "", &ListOptions::default()).await?.into_values();
                all.iter().find(|c| c.get("globalDefault") == Some(&Value::Bool(true))).map(class_of)
            }
            name => match self.get(classes, "", name).await {
                Ok(c) => Some(class_of(&c)),
                Err(ApiError::NotFound { .. }) => {
                    return Err(forbidden(format!("no PriorityClass with name {name} was found")))
                }
                Err(e) => return Err(e),
            },
        };
        let Some((name, value, policy)) = class else { return Ok(()) };
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
        if let Some(given) = spec.get("priority").and_then(Value::as_i64).filter(|p| *p != value) {
            return Err(forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission \
                 controller computed {value} from the given PriorityClass name"
            )));
        }
        spec.insert("priorityClassName".into(), json!(name));
        spec.insert("priority".into(), json!(value));
        spec.entry("preemptionPolicy").or_insert(json!(policy));
        Ok(())
    }

    /// Pod admission: Pod Security for labelled namespaces, then every ResourceQuota of the
    /// namespace. Each quota's new usage is written in the same transaction as the pod, guarded
    /// by the quota's revision, so concurrent creates cannot both slip under a limit.
    async fn admit_pod(
        &self,
        pod: &Value,
        namespace: &Value,
        compares: &mut Vec<Compare>,
        ops: &mut Vec<RequestOp>,
    ) -> ApiResult<()> {
        admission::pod_security(pod, namespace)?;
        let ns = object::namespace(pod);
        // Its service account must exist (`default` is made for every namespace, and may lag
        // a namespace created a moment ago).
        let account = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
        if account != "default" {
            match self.get(kinds::by_resource("serviceaccounts")?, ns, account).await {
                Ok(_) => {}
                Err(ApiError::NotFound { .. }) => {
                    return Err(ApiError::Forbidden(format!(
                        "pods {:?} is forbidden: error looking up service account {ns}/{account}: serviceaccount {account:?} not found",
                        object::name(pod)
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        let quota_info = kinds::by_resource("resourcequotas")?;
        let quotas = self.list(quota_info, ns, &ListOptions::default()).await?.into_values();
        if quotas.is_empty() {
            return Ok(());
        }
        let pods = self.list(kinds::by_resource("pods")?, ns, &ListOptions::default()).await?.items;
        for mut quota in quotas {
            quota["status"] = admission::check_quota(&quota, pods.iter().map(|p| &p.object), pod)?;
            let key = kinds::key(quota_info, ns, object::name(&quota));
            let rv: i64 = object::resource_version(&quota).parse().unwrap_or(0);
            compares.push(mod_is(&key, rv));
            ops.push(self.put_object(&key, &quota)?);
        }
        Ok(())
    }

    /// Admission of a pod's update, as of its creation: the spec fields Kubernetes makes
    /// immutable stay as they are, and a changed spec must meet its namespace's Pod Security
    /// level (metadata-only updates are exempt, as in Kubernetes, so finalizers and owners of
    /// a pod that predates the level can still change). Quota needs no second look: what it
    /// counts is among the immutable fields.
    async fn admit_pod_update(&self, current: &Value, pod: &Value, ns: &str) -> ApiResult<()> {
        admission::pod_update_allowed(current, pod).map_err(|cause| ApiError::Invalid {
            kind: "Pod".into(),
            name: object::name(pod).into(),
            causes: vec![cause],
        })?;
        if admission::pod_security_exempt_update(current, pod) {
            return Ok(());
        }
        // A terminating namespace still takes updates (finalizers are removed through them).
        let namespace = self.get(kinds::by_resource("namespaces")?, "", ns).await?;
        admission::pod_security(pod, &namespace)
    }

    /// Metadata, defaults and validation for an object about to be created.
    fn prepare_new(
        &self,
        info: &'static KindInfo,
        obj: &mut Value,
        namespace_hint: &str,
        id: Option<&CreateId>,
    ) -> ApiResult<()> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest(format!("a {} must be a JSON object", info.kind)));
        }
        check_type(info, obj)?;
        if !object::resource_version(obj).is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{} {:?}: resourceVersion should not be set on objects to be created",
                kinds::qualified(info),
                object::name(obj)
            )));
        }
        if info.namespaced {
            let ns = match (object::namespace(obj), namespace_hint) {
                ("", "") => "default".to_string(),
                ("", hint) => hint.to_string(),
                (own, hint) if !hint.is_empty() && own != hint => {
                    return Err(ApiError::BadRequest(format!(
                        "the namespace of the object ({own}) does not match the namespace on the request ({hint})"
                    )))
                }
                (own, _) => own.to_string(),
            };
            set_meta(obj, "namespace", json!(ns));
        } else {
            set_meta(obj, "namespace", Value::Null);
        }
        if object::name(obj).is_empty() {
            let generate = object::meta_str(obj, "generateName").to_string();
            if !generate.is_empty() {
                let suffix = id.map_or_else(random_suffix, CreateId::suffix);
                set_meta(obj, "name", json!(format!("{generate}{suffix}")));
            }
        }
        if info.custom && info.subresources.split(',').any(|s| s == "status") {
            // As Kubernetes: with a status subresource, a create sets no status.
            obj.as_object_mut().expect("an object").remove("status");
        }
        set_meta(obj, "uid", json!(id.map_or_else(uid, CreateId::uid)));
        set_meta(obj, "creationTimestamp", json!(object::now_rfc3339()));
        set_meta(obj, "generation", json!(1));
        set_meta(obj, "deletionTimestamp", Value::Null);
        set_meta(obj, "deletionGracePeriodSeconds", Value::Null);
        self.finish_object(info, obj)
    }

    /// Defaulting, normalisation through the typed schema, and validation.
    fn finish_object(&self, info: &'static KindInfo, obj: &mut Value) -> ApiResult<()> {
        obj["apiVersion"] = json!(info.api_version);
        obj["kind"] = json!(info.kind);
        if info.custom {
            return self.finish_custom(info, obj);
        }
        if info.kind == "CustomResourceDefinition" {
            crate::crd::apply_defaults(obj);
            let before = obj.clone();
            crate::crd::set_status(obj, Some(&before));
        }
        defaults::apply(info, obj);
        *obj = skiff_proto::api::normalize_json(info.kind, obj.clone())
            .expect("every registered kind normalises")
            .map_err(|e| {
                ApiError::BadRequest(format!("{} {:?}: {e}", kinds::qualified_kind(info), object::name(obj)))
            })?;
        let causes = validation::validate(info, obj);
        if !causes.is_empty() {
            return Err(ApiError::Invalid {
                kind: kinds::qualified_kind(info),
                name: object::name(obj).into(),
                causes,
            });
        }
        Ok(())
    }

    /// A custom object: its metadata through the typed ObjectMeta, then its definition's
    /// storage schema — unknown fields pruned, defaults applied, the rest validated.
    fn finish_custom(&self, info: &'static KindInfo, obj: &mut Value) -> ApiResult<()> {
        let name = object::name(obj).to_string();
        let kind = self.custom.of(info).ok_or_else(|| ApiError::NotFound {
            resource: "customresourcedefinitions".into(),
            name: kinds::qualified(info),
        })?;
        let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
        obj["metadata"] = skiff_proto::serde_util::normalize::<skiff_proto::api::ObjectMeta>(meta)
            .map_err(|e| ApiError::BadRequest(format!("{} {name:?}: metadata.{e}", kinds::qualified_kind(info))))?;
        let schema = &kind.storage().schema;
        let unknown = crate::schema::prune(schema, obj);
        if self.strict_fields && !unknown.is_empty() {
            let (kind, version) = (info.kind, info.api_version.split_once('/').map_or("", |(_, v)| v));
            let each: Vec<String> = unknown.iter().map(|f| format!("unknown field {f:?}")).collect();
            return Err(ApiError::BadRequest(format!(
                "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
                each.join(", ")
            )));
        }
        crate::schema::apply_defaults(schema, obj);
        let mut causes = validation::validate(info, obj);
        causes.extend(crate::schema::validate(schema, obj));
        if !causes.is_empty() {
            return Err(ApiError::Invalid { kind: kinds::qualified_kind(info), name, causes });
        }
        Ok(())
    }

    async fn namespace_for_create(&self, ns: &str) -> ApiResult<KeyValue> {
        let ns_info = kinds::by_resource("namespaces")?;
        let kv = self
            .read(&kinds::key(ns_info, "", ns))
            .await?
            .ok_or_else(|| ApiError::NotFound { resource: "namespaces".into(), name: ns.into() })?;
        let obj = self.decode(&kv)?;
        if obj.pointer("/status/phase") == Some(&json!("Terminating"))
            || !object::meta_str(&obj, "deletionTimestamp").is_empty()
        {
            return Err(ApiError::NamespaceTerminating(ns.into()));
        }
        Ok(kv)
    }

    pub async fn get(&self, info: &'static KindInfo, ns: &str, name: &str) -> ApiResult<Value> {
        let ns = effective_namespace(info, ns);
        match self.read(&kinds::key(info, &ns, name)).await? {
            Some(kv) => self.decode(&kv),
            None => Err(ApiError::NotFound { resource: kinds::qualified(info), name: name.into() }),
        }
    }

    /// Replaces an object (or its status). A non-empty `resourceVersion` must be current.
    pub async fn update(&self, info: &'static KindInfo, mut obj: Value, scope: UpdateScope) -> ApiResult<Value> {
        check_type(info, &obj)?;
        let ns = effective_namespace(info, object::namespace(&obj));
        let name = object::name(&obj).to_string();
        if name.is_empty() {
            return Err(ApiError::Invalid {
                kind: kinds::qualified_kind(info),
                name: String::new(),
                causes: vec![crate::error::FieldError::required("metadata.name", "")],
            });
        }
        let key = kinds::key(info, &ns, &name);
        let current_kv = self
            .read(&key)
            .await?
            .ok_or_else(|| ApiError::NotFound { resource: kinds::qualified(info), name: name.clone() })?;
        let given = object::resource_version(&obj).to_string();
        if !given.is_empty() && given != current_kv.mod_revision.to_string() {
            return Err(ApiError::Conflict {
                resource: kinds::qualified(info),
                name,
                given,
                current: current_kv.mod_revision.to_string(),
            });
        }
        let current = self.decode(&current_kv)?;
        let has_status = info.subresources.contains("status");
        obj = match scope {
            UpdateScope::Status => {
                let mut merged = current.clone();
                merged["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
                merged
            }
            UpdateScope::Main => {
                if has_status {
                    obj["status"] = current.get("status").cloned().unwrap_or(Value::Null);
                }
                obj
            }
            UpdateScope::All => obj,
        };
        if obj.get("status") == Some(&Value::Null) {
            obj.as_object_mut().expect("object").remove("status");
        }
        // Identity and server-set metadata stay as stored.
        for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace"] {
            set_meta(&mut obj, field, current["metadata"].get(field).cloned().unwrap_or(Value::Null));
        }
        // Field ownership stays as stored unless the writer sends its own (an empty list
        // clears it, as in Kubernetes).
        if obj.pointer("/metadata/managedFields").is_none() {
            if let Some(owners) = current.pointer("/metadata/managedFields") {
                set_meta(&mut obj, "managedFields", owners.clone());
            }
        }
        // Generation moves only when the (defaulted) spec really changed.
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        set_meta(&mut obj, "generation", json!(generation));
        self.finish_object(info, &mut obj)?;
        if info.kind == "Pod" && scope == UpdateScope::Main {
            self.admit_pod_update(&current, &obj, &ns).await?;
        }
        let immutable = match info.kind {
            "Node" if scope != UpdateScope::Status => admission::node_update_allowed(&current, &obj),
            "CertificateSigningRequest" => admission::csr_update_allowed(&current, &obj),
            "CustomResourceDefinition" => crate::crd::update_allowed(&current, &obj),
            _ => Ok(()),
        };
        immutable.map_err(|cause| ApiError::Invalid {
            kind: info.kind.into(),
            name: name.clone(),
            causes: vec![cause],
        })?;
        let claims = match (info.kind, scope) {
            ("Service", UpdateScope::Main | UpdateScope::All) => {
                Some(self.assign_addresses(&mut obj, Some(&current)).await?)
            }
            _ => None,
        };
        if scope != UpdateScope::Status && obj.get("spec") != current.get("spec") {
            set_meta(&mut obj, "generation", json!(generation + 1));
        }
        // An object being deleted goes once its last finalizer is removed.
        let deleting = !object::meta_str(&obj, "deletionTimestamp").is_empty();
        let no_finalizers = obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(|f| f.is_empty());
        let (ops, claims) = if deleting && no_finalizers && !(info.kind == "Pod" && pod_still_running(&obj)) {
            (delete_ops(info, &key, &current), None)
        } else {
            (vec![self.put_object(&key, &obj)?], claims)
        };
        let claims = claims.as_ref().map(|c| (c, &obj));
        let revision =
            self.guarded_claiming(&kinds::qualified(info), &name, &key, current_kv.mod_revision, claims, ops).await?;
        set_meta(&mut obj, "resourceVersion", json!(revision.to_string()));
        Ok(obj)
    }

    /// Applies a JSON merge patch, retrying on conflicts unless the patch names a
    /// resourceVersion (then that version must be current).
    pub async fn patch(
        &self,
        info: &'static KindInfo,
        ns: &str,
        name: &str,
        patch: &Value,
        scope: UpdateScope,
    ) -> ApiResult<Value> {
        let pinned = patch.pointer("/metadata/resourceVersion").is_some();
        let mut attempts = 0;
        loop {
            let mut obj = self.get(info, ns, name).await?;
            object::merge_patch(&mut obj, patch);
            match self.update(info, obj, scope).await {
                Err(ApiError::Conflict { .. }) if !pinned && attempts < 5 => attempts += 1,
                other => return other,
            }
        }
    }

    /// The binding subresource: assigns an unscheduled pod to `node` and marks it scheduled.
    /// A pod already bound elsewhere is a conflict; `resource_version`, if given, must be current.
    pub async fn bind(&self, ns: &str, name: &str, node: &str, resource_version: &str) -> ApiResult<Value> {
        let info = kinds::by_resource("pods")?;
        if node.is_empty() {
            return Err(ApiError::Invalid {
                kind: "Binding".into(),
                name: name.into(),
                causes: vec![crate::error::FieldError::required("target.name", "the node to bind to")],
            });
        }
        for _ in 0..5 {
            let mut pod = self.get(info, ns, name).await?;
            if !resource_version.is_empty() && object::resource_version(&pod) != resource_version {
                return Err(ApiError::Conflict {
                    resource: "pods".into(),
                    name: name.into(),
                    given: resource_version.into(),
                    current: object::resource_version(&pod).into(),
                });
            }
            let bound = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default().to_string();
            if !bound.is_empty() {
                return Err(ApiError::BindConflict(format!("pod {name} is already assigned to node {bound:?}")));
            }
            pod["spec"]["nodeName"] = json!(node);
            let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
            conditions
                .push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": object::now_rfc3339()}));
            pod["status"]["conditions"] = Value::Array(conditions);
            match self.update(info, pod, UpdateScope::All).await {
                Err(ApiError::Conflict { .. }) if resource_version.is_empty() => continue,
                other => return other,
            }
        }
        Err(ApiError::BindConflict(format!("pod {name} kept changing while being bound")))
    }

    /// Creates the system namespaces if they are missing (idempotent; any master may run it).
    pub async fn ensure_system_namespaces(&self) -> ApiResult<()> {
        let info = kinds::by_resource("namespaces")?;
        for ns in SYSTEM_NAMESPACES {
            match self.create(info, json!({"metadata": {"name": ns}}), "").await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The IngressClass of the built-in ingress controller, marked default, if there is none of
    /// that name (a class the user changed or replaced is left as it is).
    pub async fn ensure_ingress_class(&self) -> ApiResult<()> {
        use skiff_proto::ingress_class::{CONTROLLER, DEFAULT_CLASS, IS_DEFAULT};
        let class = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": DEFAULT_CLASS, "annotations": {IS_DEFAULT: "true"}},
            "spec": {"controller": CONTROLLER}});
        match self.create(kinds::by_resource("ingressclasses")?, class, "").await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn pod_still_running(pod: &Value) -> bool {
    !matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

fn effective_namespace(info: &KindInfo, ns: &str) -> String {
    if !info.namespaced {
        String::new()
    } else if ns.is_empty() {
        "default".into()
    } else {
        ns.into()
    }
}

/// The body's kind and apiVersion, when given, are this resource's.
pub(crate) fn check_type(info: &KindInfo, obj: &Value) -> ApiResult<()> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if !kind.is_empty() && kind != info.kind {
        return Err(ApiError::BadRequest(format!("kind {kind:?} sent to the {} endpoint", info.resource)));
    }
    if !api_version.is_empty() && api_version != info.api_version {
        return Err(ApiError::BadRequest(format!(
            "apiVersion {api_version:?} is not served for {} (use {:?})",
            info.kind, info.api_version
        )));
    }
    Ok(())
}

/// A PriorityClass's name, value and preemption policy.
fn class_of(class: &Value) -> (String, i64, String) {
    let policy = class.get("preemptionPolicy").and_then(Value::as_str).unwrap_or("PreemptLowerPriority");
    (object::name(class).to_string(), class.get("value").and_then(Value::as_i64).unwrap_or(0), policy.to_string())
}
