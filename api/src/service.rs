//! The per-kind gRPC services (`skiff.api.Pods`, `skiff.api.Deployments`, …) and the
//! kind-agnostic `skiff.api.Objects`. Handlers are adapters: typed message → JSON → the
//! [`Registry`] → JSON → typed message; errors map through `ApiError`'s table.

use crate::auth::{check_no_escalation, Attributes, Policy, TokenFile, User};
use crate::calls::Write;
use crate::encoded_list::{EncodedList, ListRoute};
use crate::error::{ApiError, ApiResult};
use crate::kinds::{self, KindInfo};
use crate::registry::{CreateId, DeleteOptions, ListOptions, Registry, UpdateScope, WatchOptions};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use skiff_proto::api::*;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The API server's shared state.
pub struct Api {
    pub registry: Registry,
    /// Bearer tokens; `None` leaves the API open (loopback-only clusters).
    pub tokens: Option<TokenFile>,
    /// Identities of components inside this master process (the scheduler), by token.
    pub internal: std::collections::HashMap<String, User>,
    /// The service-account token signing key, once read from the store.
    pub sa_key: tokio::sync::OnceCell<Vec<u8>>,
    /// TLS for dialing node servers (logs, metrics): the cluster CA their serving certificates
    /// come from, and this master's client certificate. `None` only in `--insecure` clusters,
    /// whose node servers take the caller's forwarded token instead.
    pub node_client: Option<tonic::transport::ClientTlsConfig>,
    /// The RBAC policy as last read, rebuilt only when an RBAC object has changed.
    policy: PolicyCache,
}

/// The kinds RBAC decisions are made from.
const RBAC: [&str; 4] = ["roles", "clusterroles", "rolebindings", "clusterrolebindings"];

/// The RBAC policy, read once per change of an RBAC object rather than listed four times per
/// request. Stamped with the sum of the store's change counters under the four kinds'
/// prefixes, which the apply path bumps before a write counts as applied: after a read
/// barrier, an unchanged stamp means the policy is current, so a role granted (or taken
/// away) a moment ago through any master holds for the next request.
struct PolicyCache {
    changes: Vec<Arc<std::sync::atomic::AtomicU64>>,
    built: std::sync::Mutex<Option<(u64, Arc<Policy>)>>,
}

impl PolicyCache {
    fn new(registry: &Registry) -> PolicyCache {
        let changes = RBAC
            .iter()
            .filter_map(|r| kinds::by_resource(r).ok())
            .map(|info| registry.master.sm.hub.changes_under(kinds::prefix(info, "").as_bytes()))
            .collect();
        PolicyCache { changes, built: std::sync::Mutex::default() }
    }

    fn stamp(&self) -> u64 {
        self.changes.iter().map(|c| c.load(std::sync::atomic::Ordering::Acquire)).sum()
    }

    fn current(&self, stamp: u64) -> Option<Arc<Policy>> {
        let built = self.built.lock().expect("not poisoned");
        built.as_ref().filter(|(s, _)| *s == stamp).map(|(_, p)| p.clone())
    }
}

impl Api {
    pub fn new(registry: Registry, tokens: Option<TokenFile>, internal: Vec<(String, User)>) -> Api {
        Api {
            policy: PolicyCache::new(&registry),
            registry,
            tokens,
            internal: internal.into_iter().collect(),
            sa_key: tokio::sync::OnceCell::new(),
            node_client: None,
        }
    }

    /// The signing key, made if no master has made one yet (issuing a token).
    pub async fn sa_key(&self) -> ApiResult<&[u8]> {
        Ok(self.sa_key.get_or_try_init(|| self.registry.service_account_key()).await?.as_slice())
    }

    /// The signing key if one exists (checking a token must not make one).
    async fn existing_sa_key(&self) -> ApiResult<Option<&[u8]>> {
        if self.sa_key.get().is_none() {
            let Some(key) = self.registry.existing_service_account_key().await? else { return Ok(None) };
            let _ = self.sa_key.set(key);
        }
        Ok(self.sa_key.get().map(Vec::as_slice))
    }

    /// The caller: a component of this master, a pod's service account (a token the masters
    /// signed, for a pod that still exists), a user of the token file, or — without a bearer
    /// token — the user a verified client certificate names (CN the user, O its groups, as
    /// Kubernetes' x509 authenticator).
    pub async fn authenticate<T>(&self, req: &Request<T>) -> ApiResult<User> {
        let md = req.metadata();
        let bearer = md.get("authorization").and_then(|v| v.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
        if bearer.is_none() {
            if let Some(subject) = skiff_proto::cert::client_subject(req) {
                return Ok(crate::auth::certificate_user(subject));
            }
        }
        if let Some(user) = bearer.and_then(|t| self.internal.get(t)) {
            return Ok(user.clone());
        }
        let Some(tokens) = &self.tokens else { return Ok(User::anonymous_admin()) };
        if let Some((id, secret)) = bearer.map(str::trim).and_then(crate::bootstrap::parse_token) {
            return self.bootstrapper(id, secret).await;
        }
        if let Some(token) = bearer.map(str::trim).filter(|t| crate::satoken::looks_like_jwt(t)) {
            if let Some(user) = self.service_account(token).await? {
                return Ok(user);
            }
        }
        tokens.authenticate(md)
    }

    /// The machine a bootstrap token names, as its Secret in kube-system says now.
    async fn bootstrapper(&self, id: &str, secret: &str) -> ApiResult<User> {
        let refused = |why: String| ApiError::Unauthenticated(format!("Unauthorized: {why}"));
        let secrets = kinds::by_resource("secrets")?;
        let name = crate::bootstrap::secret_name(id);
        let stored = match self.registry.get(secrets, crate::bootstrap::NAMESPACE, &name).await {
            Ok(s) => s,
            Err(ApiError::NotFound { .. }) => return Err(refused(format!("no bootstrap token {id}"))),
            Err(e) => return Err(e),
        };
        crate::bootstrap::user_of(&stored, id, secret, skiff_proto::time::now_secs()).map_err(refused)
    }

    /// The account a token this cluster signed names, if it is such a token and meant for this
    /// API.
    async fn service_account(&self, token: &str) -> ApiResult<Option<User>> {
        let Some(claims) = self.service_account_claims(token).await? else { return Ok(None) };
        if !claims.audiences.is_empty() && !claims.audiences.iter().any(|a| a == crate::satoken::API_AUDIENCE) {
            return Err(ApiError::Unauthenticated(format!(
                "Unauthorized: service-account token is meant for {:?}, not this API",
                claims.audiences
            )));
        }
        Ok(Some(claims.user()))
    }

    /// What a token this cluster signed says (None: not such a token); refused once it has
    /// expired or the object it is bound to is gone or replaced.
    pub(crate) async fn service_account_claims(&self, token: &str) -> ApiResult<Option<crate::satoken::Claims>> {
        use crate::satoken::Bound;
        let refused = |why: String| ApiError::Unauthenticated(format!("Unauthorized: service-account token {why}"));
        let Some(key) = self.existing_sa_key().await? else { return Ok(None) };
        let Some(claims) = crate::satoken::verify(key, token) else { return Ok(None) };
        if let Some(exp) = claims.expires.filter(|exp| *exp <= skiff_proto::time::now_secs()) {
            return Err(refused(format!("expired at {}", skiff_proto::time::rfc3339(exp))));
        }
        let ns = &claims.namespace;
        let (resource, name, uid) = match &claims.bound {
            Bound::Pod { name, uid } => ("pods", name, uid),
            Bound::Account { uid } => ("serviceaccounts", &claims.service_account, uid),
        };
        match self.registry.get(kinds::by_resource(resource)?, ns, name).await {
            Ok(o) if crate::object::meta_str(&o, "uid") == uid => Ok(Some(claims)),
            Ok(_) | Err(ApiError::NotFound { .. }) => {
                Err(refused(format!("is bound to {resource} {ns}/{name} (uid {uid}), which no longer exists")))
            }
            Err(e) => Err(e),
        }
    }

    /// The RBAC objects as of now (a read barrier first), from the cache while none changed.
    async fn policy(&self) -> ApiResult<Arc<Policy>> {
        self.registry.master.read_barrier().await?;
        let stamp = self.policy.stamp();
        if let Some(policy) = self.policy.current(stamp) {
            return Ok(policy);
        }
        let list = |r: &'static str| async move {
            let info = kinds::by_resource(r)?;
            Ok::<_, ApiError>(self.registry.list(info, "", &ListOptions::default()).await?.into_values())
        };
        let [roles, cluster_roles, role_bindings, cluster_role_bindings] = RBAC;
        let policy = Arc::new(Policy {
            roles: list(roles).await?,
            cluster_roles: list(cluster_roles).await?,
            role_bindings: list(role_bindings).await?,
            cluster_role_bindings: list(cluster_role_bindings).await?,
        });
        // Stamped with the count from before the lists: a change meanwhile rebuilds it again.
        *self.policy.built.lock().expect("not poisoned") = Some((stamp, policy.clone()));
        Ok(policy)
    }

    /// What `user` may do at the cluster scope and in `namespace`, as RBAC grants it:
    /// (resource rules, non-resource rules, incomplete). Incomplete when another authorizer
    /// (node restriction, bootstrap) decides for this user too.
    pub async fn rules_review(&self, user: &User, namespace: &str) -> ApiResult<(Vec<Value>, Vec<Value>, bool)> {
        if user.is_superuser() {
            let everything = json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]});
            return Ok((vec![everything], vec![json!({"verbs": ["*"], "nonResourceURLs": ["*"]})], false));
        }
        let rules = self.policy().await?.rules_for(user, namespace);
        let (non_resource, resource): (Vec<Value>, Vec<Value>) = rules
            .into_iter()
            .partition(|r| r.get("nonResourceURLs").is_some_and(|u| u.as_array().is_some_and(|a| !a.is_empty())));
        let other_authorizers = crate::auth::node_name(user).is_some() || crate::bootstrap::is_bootstrapper(user);
        Ok((resource, non_resource, other_authorizers))
    }

    /// Whether a pod bound to `node` uses object `ns/name` of `resource` (one of
    /// [`crate::node_authz::GUARDED`]); Secrets also when an Ingress names them for TLS.
    async fn node_uses(&self, node: &str, resource: &str, ns: &str, name: &str) -> ApiResult<bool> {
        use crate::node_authz::{ingress_tls_uses, References};
        let all = |resource: &'static str, field_selector: String| async move {
            let opts = ListOptions { field_selector, ..Default::default() };
            self.registry.list(kinds::by_resource(resource)?, "", &opts).await
        };
        let pods = all("pods", format!("spec.nodeName={node}")).await?.typed::<Pod>()?;
        let refs = References::of(pods.iter());
        let key = (ns.to_string(), name.to_string());
        Ok(match resource {
            "secrets" if refs.secrets.contains(&key) => true,
            "secrets" => {
                let ingresses = all("ingresses", String::new()).await?.typed::<Ingress>()?;
                ingress_tls_uses(ingresses.iter(), ns, name)
            }
            "configmaps" => refs.configmaps.contains(&key),
            "persistentvolumeclaims" => refs.claims.contains(&key),
            "persistentvolumes" => {
                let claims = kinds::by_resource("persistentvolumeclaims")?;
                let mut bound = false;
                for (claim_ns, claim) in &refs.claims {
                    if let Some(pvc) = self.stored(claims, claim_ns, claim).await? {
                        bound |= pvc.pointer("/spec/volumeName").and_then(Value::as_str) == Some(name);
                    }
                }
                bound
            }
            _ => false,
        })
    }

    /// The stored object, or `None` when there is none; any other failure is an error (an
    /// authorization decided on "no object" after a failed read would be decided wrongly).
    pub async fn stored(&self, info: &'static KindInfo, ns: &str, name: &str) -> ApiResult<Option<Value>> {
        match self.registry.get(info, ns, name).await {
            Ok(obj) => Ok(Some(obj)),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Authorizes `a` for `user`. `object` is the object as it will be stored (for a patch:
    /// the patched result) or, for reads and deletes, the stored one; `stored` is what an
    /// update or patch replaces. Escalation is judged on `object`; node restriction on both.
    pub async fn authorize(
        &self,
        user: &User,
        a: &Attributes<'_>,
        object: Option<&Value>,
        stored: Option<&Value>,
    ) -> ApiResult<()> {
        // What this call acts on, for its `apiserver_request_total` labels.
        match a.subresource {
            "" => skiff_proto::metrics::note_target(a.info.resource),
            sub => skiff_proto::metrics::note_target(&format!("{}/{sub}", a.info.resource)),
        }
        if user.is_superuser() {
            return Ok(());
        }
        if let Some(node) = crate::auth::node_name(user) {
            if crate::node_authz::GUARDED.contains(&a.info.resource) && matches!(a.verb, "get" | "list" | "watch") {
                let allowed = a.verb == "get" && self.node_uses(node, a.info.resource, a.namespace, a.name).await?;
                return if allowed { Ok(()) } else { Err(crate::auth::forbidden(user, a)) };
            }
        }
        // A joining machine may ask for its certificates, and a joining master read its sealed
        // keys; nothing else.
        if crate::bootstrap::is_bootstrapper(user) {
            let allowed =
                crate::bootstrap::bootstrapper_may(user, a.verb, a.info.resource, a.subresource, a.namespace, a.name);
            return if allowed { Ok(()) } else { Err(crate::auth::forbidden(user, a)) };
        }
        if let Some(allowed) = crate::auth::node_restriction(user, a, object, stored) {
            return if allowed { Ok(()) } else { Err(crate::auth::forbidden(user, a)) };
        }
        let policy = self.policy().await?;
        if !policy.allows(user, a) {
            return Err(crate::auth::forbidden(user, a));
        }
        // No escalation through RBAC objects: grant only what you hold — unless, as in
        // Kubernetes, you hold `escalate` on the role, or `bind` on the role a binding names.
        if let Some(obj) = object.filter(|_| matches!(a.verb, "create" | "update" | "patch")) {
            let ns = crate::object::namespace(obj);
            match a.info.kind {
                "Role" | "ClusterRole" => {
                    let escalate = Attributes { verb: "escalate", subresource: "", ..*a };
                    if !policy.allows(user, &escalate) {
                        let rules: Vec<Value> = obj.get("rules").and_then(Value::as_array).cloned().unwrap_or_default();
                        check_no_escalation(&policy, user, &rules, ns)?;
                    }
                }
                "RoleBinding" | "ClusterRoleBinding" => {
                    let binding_ns = (a.info.kind == "RoleBinding").then_some(ns);
                    let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
                    if !may_bind(&policy, user, role_ref, binding_ns)? {
                        let rules = policy.rules_of(role_ref, binding_ns);
                        check_no_escalation(&policy, user, &rules, ns)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Whether `user` holds Kubernetes' `bind` verb on the role `role_ref` names (a Role in the
/// binding's namespace, or a ClusterRole).
fn may_bind(policy: &Policy, user: &User, role_ref: &Value, binding_ns: Option<&str>) -> ApiResult<bool> {
    let resource = match role_ref.get("kind").and_then(Value::as_str) {
        Some("Role") => "roles",
        Some("ClusterRole") => "clusterroles",
        _ => return Ok(false),
    };
    let name = role_ref.get("name").and_then(Value::as_str).unwrap_or_default();
    let info = kinds::by_resource(resource)?;
    let bind = Attributes { verb: "bind", info, subresource: "", namespace: binding_ns.unwrap_or(""), name };
    Ok(policy.allows(user, &bind))
}

/// One kind's service over the shared [`Api`].
pub struct KindService<T> {
    api: Arc<Api>,
    info: &'static KindInfo,
    _t: PhantomData<fn() -> T>,
}

impl<T> KindService<T> {
    pub fn new(api: Arc<Api>, resource: &str) -> Self {
        let info = kinds::by_resource(resource).expect("generated services name registered kinds");
        KindService { api, info, _t: PhantomData }
    }
}

fn to_json<T: Serialize>(v: &T) -> ApiResult<Value> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()))
}

fn from_json<T: DeserializeOwned>(v: Value) -> ApiResult<T> {
    serde_json::from_value(v).map_err(|e| ApiError::Internal(format!("stored object does not fit its schema: {e}")))
}

type EventStream<E> = Pin<Box<dyn Stream<Item = Result<E, Status>> + Send>>;

impl<T: Serialize + DeserializeOwned + Message + Default + Clone + Send + Sync + 'static> KindService<T> {
    async fn create(&self, req: Request<T>) -> ApiResult<T> {
        let user = self.api.authenticate(&req).await?;
        let id = CreateId::of_request(req.metadata(), &user.name)?;
        let obj = to_json(req.get_ref())?;
        from_json(self.api.create_object(&user, self.info, obj, "", id.as_ref(), Write::default()).await?)
    }

    async fn get(&self, req: Request<GetRequest>) -> ApiResult<T> {
        let user = self.api.authenticate(&req).await?;
        let r = req.get_ref();
        from_json(self.api.get_object(&user, self.info, &r.namespace, &r.name).await?)
    }

    /// A list, its items as they are encoded in the list cache (each encoded once per stored
    /// version).
    pub(crate) async fn list(&self, req: Request<ListRequest>) -> ApiResult<EncodedList> {
        let user = self.api.authenticate(&req).await?;
        let req = req.into_inner();
        let opts = ListOptions {
            label_selector: req.label_selector,
            field_selector: req.field_selector,
            limit: req.limit,
            continue_token: req.r#continue,
        };
        let page = self.api.list_objects(&user, self.info, &req.namespace, &opts).await?;
        let items = page.encoded::<T>()?;
        let metadata = ListMeta {
            resource_version: page.resource_version.to_string(),
            r#continue: page.continue_token,
            remaining_item_count: None,
        };
        Ok(EncodedList {
            api_version: self.info.api_version.into(),
            kind: format!("{}List", self.info.kind),
            metadata: Some(metadata),
            items,
        })
    }

    async fn update(&self, req: Request<T>, scope: UpdateScope) -> ApiResult<T> {
        let user = self.api.authenticate(&req).await?;
        let obj = to_json(req.get_ref())?;
        from_json(self.api.update_object(&user, self.info, obj, "", scope, Write::default()).await?)
    }

    async fn patch(&self, req: Request<PatchRequest>) -> ApiResult<T> {
        let user = self.api.authenticate(&req).await?;
        let r = req.get_ref();
        let patch: Value =
            serde_json::from_str(&r.patch).map_err(|e| ApiError::BadRequest(format!("patch is not JSON: {e}")))?;
        let pinned = patch.pointer("/metadata/resourceVersion").is_some();
        let apply = |stored: &Value| {
            let mut patched = stored.clone();
            crate::object::merge_patch(&mut patched, &patch);
            Ok(patched)
        };
        from_json(
            self.api
                .patch_object(
                    &user,
                    self.info,
                    &r.namespace,
                    &r.name,
                    UpdateScope::Main,
                    pinned,
                    Write::default(),
                    &apply,
                )
                .await?,
        )
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> ApiResult<T> {
        let user = self.api.authenticate(&req).await?;
        let req = req.into_inner();
        let opts = DeleteOptions {
            grace_period_seconds: req.grace_period_seconds,
            propagation_policy: req.propagation_policy,
            resource_version: req.resource_version,
        };
        from_json(self.api.delete_object(&user, self.info, &req.namespace, &req.name, &opts, false).await?)
    }

    async fn watch<E: DeserializeOwned + Send + 'static>(
        &self,
        req: Request<WatchRequest>,
    ) -> ApiResult<EventStream<E>> {
        let user = self.api.authenticate(&req).await?;
        let req = req.into_inner();
        let opts = WatchOptions {
            label_selector: req.label_selector,
            field_selector: req.field_selector,
            resource_version: req.resource_version,
            allow_bookmarks: req.allow_watch_bookmarks,
            bookmark_interval: (req.bookmark_interval_ms > 0)
                .then(|| std::time::Duration::from_millis(u64::from(req.bookmark_interval_ms))),
        };
        let rx = self.api.watch_objects(&user, self.info, &req.namespace, opts).await?;
        Ok(Box::pin(ReceiverStream::new(rx).map(|item| {
            let ev = item.map_err(Status::from)?;
            from_json::<E>(json!({"type": ev.kind, "object": ev.object})).map_err(Status::from)
        })))
    }

    async fn get_scale(&self, req: Request<GetRequest>) -> ApiResult<Scale> {
        let user = self.api.authenticate(&req).await?;
        let r = req.get_ref();
        Ok(scale_of(&self.api.get_scaled(&user, self.info, &r.namespace, &r.name).await?))
    }

    async fn update_scale(&self, req: Request<Scale>) -> ApiResult<Scale> {
        let user = self.api.authenticate(&req).await?;
        let meta = req.get_ref().metadata.clone().unwrap_or_default();
        let replicas = req.get_ref().spec.as_ref().map_or(0, |s| s.replicas);
        let (ns, name, rv) = (&meta.namespace, &meta.name, &meta.resource_version);
        Ok(scale_of(&self.api.scale_object(&user, self.info, ns, name, replicas.into(), rv, Write::default()).await?))
    }

    async fn bind(&self, req: Request<Binding>) -> ApiResult<T> {
        let user = self.api.authenticate(&req).await?;
        let meta = req.get_ref().metadata.clone().unwrap_or_default();
        let target = req.get_ref().target.clone().unwrap_or_default();
        from_json(self.api.bind_pod(&user, &meta.namespace, &meta.name, &target.name, &meta.resource_version).await?)
    }

    async fn evict(&self, req: Request<Eviction>) -> ApiResult<T> {
        let user = self.api.authenticate(&req).await?;
        let meta = req.get_ref().metadata.clone().unwrap_or_default();
        let grace = req.get_ref().grace_period_seconds;
        from_json(self.api.evict_pod(&user, &meta.namespace, &meta.name, grace).await?)
    }
}

/// A workload's pod selector as its Scale's `status.selector` says it (`app=web`).
pub(crate) fn scale_selector(obj: &Value) -> String {
    // A ReplicationController's selector is the labels themselves.
    crate::table::pairs(
        obj.pointer("/spec/selector/matchLabels")
            .or_else(|| obj.pointer("/spec/selector").filter(|_| obj["kind"] == "ReplicationController")),
    )
}

/// A workload's `autoscaling/v1` Scale.
pub(crate) fn scale_of(obj: &Value) -> Scale {
    let selector = scale_selector(obj);
    Scale {
        api_version: "autoscaling/v1".into(),
        kind: "Scale".into(),
        metadata: Some(ObjectMetaRef {
            name: crate::object::name(obj).into(),
            namespace: crate::object::namespace(obj).into(),
            resource_version: crate::object::resource_version(obj).into(),
        }),
        spec: Some(ScaleSpec { replicas: obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0) as i32 }),
        status: Some(ScaleStatus {
            replicas: obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0) as i32,
            selector,
        }),
    }
}

// Methods that a nested macro adds are invisible to `#[tonic::async_trait]` (it sees the macro
// call, not the method), so these are written in the form async_trait expands to.
type BoxFut<'a, T> = Pin<Box<dyn std::future::Future<Output = Result<Response<T>, Status>> + Send + 'a>>;

macro_rules! subresource_status {
    (yes, $kind:ident) => {
        fn update_status<'life0, 'async_trait>(&'life0 self, req: Request<$kind>) -> BoxFut<'async_trait, $kind>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Ok(Response::new(KindService::update(self, req, UpdateScope::Status).await?)) })
        }
    };
    (no, $kind:ident) => {};
}

macro_rules! subresource_scale {
    (yes) => {
        fn get_scale<'life0, 'async_trait>(&'life0 self, req: Request<GetRequest>) -> BoxFut<'async_trait, Scale>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Ok(Response::new(KindService::get_scale(self, req).await?)) })
        }
        fn update_scale<'life0, 'async_trait>(&'life0 self, req: Request<Scale>) -> BoxFut<'async_trait, Scale>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Ok(Response::new(KindService::update_scale(self, req).await?)) })
        }
    };
    (no) => {};
}

macro_rules! subresource_binding {
    (yes, $kind:ident) => {
        fn bind<'life0, 'async_trait>(&'life0 self, req: Request<Binding>) -> BoxFut<'async_trait, $kind>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Ok(Response::new(KindService::bind(self, req).await?)) })
        }
        fn evict<'life0, 'async_trait>(&'life0 self, req: Request<Eviction>) -> BoxFut<'async_trait, $kind>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Ok(Response::new(KindService::evict(self, req).await?)) })
        }
    };
    (no, $kind:ident) => {};
}

macro_rules! kind_service {
    ($kind:ident, $list:ident, $event:ident, $module:ident, $svc:ident, $server:ident, $resource:literal, status: $status:ident, scale: $scale:ident, binding: $binding:ident) => {
        #[tonic::async_trait]
        impl $module::$svc for KindService<$kind> {
            async fn create(&self, req: Request<$kind>) -> Result<Response<$kind>, Status> {
                Ok(Response::new(KindService::create(self, req).await?))
            }
            async fn get(&self, req: Request<GetRequest>) -> Result<Response<$kind>, Status> {
                Ok(Response::new(KindService::get(self, req).await?))
            }
            /// Served by [`ListRoute`] in front of this service, which sends the encoded list
            /// as it is; here the same list is decoded into the generated type.
            async fn list(&self, req: Request<ListRequest>) -> Result<Response<$list>, Status> {
                let encoded = KindService::list(self, req).await?.encode_to_vec();
                let list = $list::decode(encoded.as_slice()).map_err(|e| Status::internal(e.to_string()))?;
                Ok(Response::new(list))
            }
            async fn update(&self, req: Request<$kind>) -> Result<Response<$kind>, Status> {
                Ok(Response::new(KindService::update(self, req, UpdateScope::Main).await?))
            }
            async fn patch(&self, req: Request<PatchRequest>) -> Result<Response<$kind>, Status> {
                Ok(Response::new(KindService::patch(self, req).await?))
            }
            async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<$kind>, Status> {
                Ok(Response::new(KindService::delete(self, req).await?))
            }
            type WatchStream = EventStream<$event>;
            async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
                Ok(Response::new(KindService::watch::<$event>(self, req).await?))
            }
            subresource_status!($status, $kind);
            subresource_scale!($scale);
            subresource_binding!($binding, $kind);
        }
    };
}

skiff_proto::for_each_kind!(kind_service);

/// The kind-agnostic service: JSON bodies, any kind by resource name.
pub struct ObjectsService {
    api: Arc<Api>,
}

fn parse_body(json: &str) -> ApiResult<Value> {
    serde_json::from_str(json).map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))
}

fn raw(v: &Value) -> RawObject {
    RawObject { json: v.to_string() }
}

#[tonic::async_trait]
impl objects_server::Objects for ObjectsService {
    async fn create(&self, req: Request<RawRequest>) -> Result<Response<RawObject>, Status> {
        let user = self.api.authenticate(&req).await?;
        let id = CreateId::of_request(req.metadata(), &user.name)?;
        let r = req.get_ref();
        let info = self.api.registry.kind_by_resource(&r.resource).await?;
        let obj = self
            .api
            .create_object(&user, info, parse_body(&r.json)?, &r.namespace, id.as_ref(), Write::default())
            .await?;
        Ok(Response::new(raw(&obj)))
    }
    async fn get(&self, req: Request<RawRequest>) -> Result<Response<RawObject>, Status> {
        let user = self.api.authenticate(&req).await?;
        let r = req.get_ref();
        let info = self.api.registry.kind_by_resource(&r.resource).await?;
        Ok(Response::new(raw(&self.api.get_object(&user, info, &r.namespace, &r.name).await?)))
    }
    async fn list(&self, req: Request<RawListRequest>) -> Result<Response<RawList>, Status> {
        let user = self.api.authenticate(&req).await?;
        let r = req.into_inner();
        let info = self.api.registry.kind_by_resource(&r.resource).await?;
        let opts = ListOptions {
            label_selector: r.label_selector,
            field_selector: r.field_selector,
            limit: r.limit,
            continue_token: r.r#continue,
        };
        let page = self.api.list_objects(&user, info, &r.namespace, &opts).await?;
        Ok(Response::new(RawList { json: list_json(info, &page)? }))
    }
    async fn update(&self, req: Request<RawRequest>) -> Result<Response<RawObject>, Status> {
        let user = self.api.authenticate(&req).await?;
        let r = req.get_ref();
        let info = self.api.registry.kind_by_resource(&r.resource).await?;
        let obj = self
            .api
            .update_object(&user, info, parse_body(&r.json)?, &r.namespace, UpdateScope::Main, Write::default())
            .await?;
        Ok(Response::new(raw(&obj)))
    }
    async fn delete(&self, req: Request<RawRequest>) -> Result<Response<RawObject>, Status> {
        let user = self.api.authenticate(&req).await?;
        let r = req.get_ref();
        let info = self.api.registry.kind_by_resource(&r.resource).await?;
        let opts = DeleteOptions {
            grace_period_seconds: r.grace_period_seconds,
            propagation_policy: r.propagation_policy.clone(),
            ..Default::default()
        };
        let obj = self.api.delete_object(&user, info, &r.namespace, &r.name, &opts, false).await?;
        Ok(Response::new(raw(&obj)))
    }
    type WatchStream = EventStream<RawWatchEvent>;
    async fn watch(&self, req: Request<RawWatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let user = self.api.authenticate(&req).await?;
        let r = req.into_inner();
        let info = self.api.registry.kind_by_resource(&r.resource).await?;
        let opts = WatchOptions {
            label_selector: r.label_selector,
            field_selector: r.field_selector,
            resource_version: r.resource_version,
            allow_bookmarks: false,
            bookmark_interval: None,
        };
        let rx = self.api.watch_objects(&user, info, &r.namespace, opts).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|item| {
            let ev = item.map_err(Status::from)?;
            Ok(RawWatchEvent { r#type: ev.kind.to_string(), json: ev.object.to_string() })
        }))))
    }
}

/// A list as JSON, written straight from the cached objects rather than copied into a list
/// first.
pub fn list_json(info: &KindInfo, page: &crate::registry::ListPage) -> ApiResult<String> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Body<'a> {
        api_version: &'a str,
        kind: String,
        metadata: Value,
        items: Vec<&'a Value>,
    }
    let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
    if !page.continue_token.is_empty() {
        metadata["continue"] = json!(page.continue_token);
    }
    let body = Body {
        api_version: info.api_version,
        kind: format!("{}List", info.kind),
        metadata,
        items: page.items.iter().map(|s| &s.object).collect(),
    };
    serde_json::to_string(&body).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Every API service, ready to mount on the master's client listener.
pub fn routes(api: Arc<Api>) -> tonic::service::Routes {
    let mut routes = tonic::service::RoutesBuilder::default();
    macro_rules! add {
        ($kind:ident, $list:ident, $event:ident, $module:ident, $svc:ident, $server:ident, $resource:literal, status: $status:ident, scale: $scale:ident, binding: $binding:ident) => {
            let info = kinds::by_resource($resource).expect("generated services name registered kinds");
            api.registry.lists.convert_with(&kinds::prefix(info, ""), crate::list_cache::encode::<$kind>);
            let service = Arc::new(KindService::<$kind>::new(api.clone(), $resource));
            let server = $module::$server::from_arc(service.clone())
                .max_decoding_message_size(crate::registry::MAX_OBJECT_BYTES * 2);
            routes.add_service(ListRoute::new(server, service));
        };
    }
    skiff_proto::for_each_kind!(add);
    routes.add_service(objects_server::ObjectsServer::new(ObjectsService { api: api.clone() }));
    routes.add_service(pod_logs_server::PodLogsServer::new(crate::logs::PodLogsService { api: api.clone() }));
    routes.add_service(skiff_proto::api::pod_exec_server::PodExecServer::new(crate::exec::PodExecService {
        api: api.clone(),
    }));
    routes
        .add_service(node_metrics_server::NodeMetricsServer::new(crate::logs::NodeMetricsService { api: api.clone() }));
    routes.add_service(skiff_proto::api::api_metrics_server::ApiMetricsServer::new(crate::metrics::MetricsService {
        api: api.clone(),
    }));
    routes.add_service(skiff_proto::api::cluster_info_server::ClusterInfoServer::new(
        crate::cluster_info::ClusterInfoService { master: api.registry.master.clone() },
    ));
    routes.add_service(service_account_tokens_server::ServiceAccountTokensServer::new(crate::satoken::TokenService {
        api: api.clone(),
    }));
    let metrics = api.registry.metrics.clone();
    let observer: skiff_proto::metrics::Observer =
        Arc::new(move |path, target, code, took| metrics.request(path, target, code, took));
    let rest = crate::rest::router(api.clone());
    let router = routes
        .routes()
        .into_axum_router()
        .merge(rest)
        .route(
            "/metrics",
            axum::routing::get(move |req: http::Request<axum::body::Body>| crate::metrics::serve(api, req)),
        )
        .layer(skiff_proto::metrics::ObserveLayer(observer));
    tonic::service::Routes::from(router)
}
