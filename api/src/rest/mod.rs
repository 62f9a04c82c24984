//! The Kubernetes REST API on every master's client port, beside the gRPC services (tonic
//! routes gRPC by its `/skiff.…/` paths; everything under `/api`, `/apis` and `/version` comes
//! here), so `kubectl`, client-go and the other Kubernetes client libraries work unchanged.
//!
//! Requests authenticate as gRPC calls do (a bearer token or a client certificate on the same
//! TLS listener) and go through [`Api`]'s verbs — the same authorization, admission and
//! registry as every gRPC call, so no rule has a second code path. Errors are `metav1.Status`
//! ([`status`]); `Accept: …;as=Table` gets the columns kubectl shows ([`crate::table`]).

pub mod discovery;
pub mod metrics;
pub mod openapi;
pub mod patch;
pub mod status;
pub mod tokens;
pub mod wire;

use crate::calls::Write;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::kinds::KindInfo;
use crate::registry::{CreateId, DeleteOptions, ListOptions, UpdateScope, WatchOptions};
use crate::service::Api;
use crate::table::{self, Include};
use axum::body::Body;
use http::{header, HeaderMap, Method, StatusCode};
use patch::PatchType;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body read (Kubernetes' limit is 3 MiB of object; a patch or an object with
/// its envelope fits in twice that).
const MAX_BODY: usize = crate::registry::MAX_OBJECT_BYTES * 2;

/// The REST routes, for the master's client listener.
pub fn router(api: Arc<Api>) -> axum::Router {
    let handler = move |req: http::Request<Body>| {
        let api = api.clone();
        async move { serve(api, req).await }
    };
    axum::Router::new()
        .route("/version", axum::routing::get(|| async { json_response(StatusCode::OK, &discovery::version()) }))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/livez", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .route("/openapi/v3", axum::routing::get(handler.clone()))
        .route("/openapi/v3/*path", axum::routing::any(handler.clone()))
        .route("/api", axum::routing::any(handler.clone()))
        .route("/api/*rest", axum::routing::any(handler.clone()))
        .route("/apis", axum::routing::any(handler.clone()))
        .route("/apis/*rest", axum::routing::any(handler))
}

/// One REST call, answered.
async fn serve(api: Arc<Api>, req: http::Request<Body>) -> http::Response<Body> {
    let start = Instant::now();
    let mut seen = Seen::default();
    let response = match handle(&api, req, &mut seen).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    if let Some(resource) = seen.resource {
        api.registry.metrics.rest_request(seen.verb, resource, &seen.sub, response.status().as_u16(), start.elapsed());
    }
    response
}

/// What a call turned out to be, for `apiserver_request_total`.
#[derive(Default)]
struct Seen {
    verb: &'static str,
    resource: Option<&'static str>,
    sub: String,
}

fn json_response(code: StatusCode, body: &Value) -> http::Response<Body> {
    json_text_response(code, body.to_string())
}

/// A response of JSON already written out.
fn json_text_response(code: StatusCode, body: String) -> http::Response<Body> {
    let mut r = http::Response::new(Body::from(body));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError) -> http::Response<Body> {
    let (code, body) = status::of(e);
    json_response(code, &body)
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::NotFoundPath(path.to_string())
}

/// The query string's parameters (the last of a repeated one wins).
struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned().collect())
    }

    fn str(&self, k: &str) -> &str {
        self.0.get(k).map(String::as_str).unwrap_or_default()
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.str(k), "true" | "1")
    }

    fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        match self.0.get(k) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ApiError::BadRequest(format!("{k}: {v:?} is not an integer"))),
        }
    }
}

/// What the path names below a group version.
struct Target {
    info: &'static KindInfo,
    ns: String,
    name: String,
    sub: String,
    /// The other version the client speaks (`autoscaling/v1`, or a custom kind's served
    /// version other than its storage one), converted to and from the stored one
    /// ([`crate::versions`]; a custom kind's only by its apiVersion); None: the stored version.
    older: Option<String>,
}

/// The kind served at `api_version` as `resource`: built-in, or a custom kind's.
fn kind_at(api: &Api, api_version: &str, resource: &str) -> Option<&'static KindInfo> {
    discovery::kind_at(api_version, resource).or_else(|| api.registry.custom.at(api_version, resource).map(|k| k.info))
}

fn target(api: &Api, api_version: &str, rest: &[&str], path: &str) -> ApiResult<Target> {
    let found = |res: &str| kind_at(api, api_version, res).ok_or_else(|| not_found_path(path));
    let (info, ns, tail) = match rest {
        ["namespaces", ns, res, tail @ ..] if kind_at(api, api_version, res).is_some_and(|k| k.namespaced) => {
            (found(res)?, ns.to_string(), tail)
        }
        [res, tail @ ..] => (found(res)?, String::new(), tail),
        [] => return Err(not_found_path(path)),
    };
    if tail.len() > 2 || (info.namespaced && ns.is_empty() && !tail.is_empty()) {
        return Err(not_found_path(path));
    }
    let name = tail.first().map(|s| s.to_string()).unwrap_or_default();
    let sub = tail.get(1).map(|s| s.to_string()).unwrap_or_default();
    let older = match info.custom {
        true => Some(api_version.to_string()).filter(|v| v != info.api_version),
        false => crate::versions::ALSO_SERVED
            .iter()
            .find(|(v, r)| *v == api_version && *r == info.resource)
            .map(|v| v.0.to_string()),
    };
    let served = sub.is_empty()
        || ((older.is_none() || info.custom) && info.subresources.split(',').any(|s| s == sub))
        || (info.kind == "Pod" && sub == "log");
    if !served {
        return Err(not_found_path(path));
    }
    Ok(Target { info, ns, name, sub, older })
}

/// A stored object as `version` shows it: a built-in kind converted ([`crate::versions`]), a
/// custom one only relabelled (its definitions' conversion is `None`).
fn shown_at(info: &KindInfo, version: &str, obj: &Value) -> Value {
    if info.custom {
        let mut o = obj.clone();
        o["apiVersion"] = json!(version);
        return o;
    }
    crate::versions::shown_at(version, obj)
}

/// An object given at `version` as it is stored.
fn stored_from(info: &KindInfo, version: &str, mut obj: Value) -> ApiResult<Value> {
    if info.custom {
        obj["apiVersion"] = json!(info.api_version);
        return Ok(obj);
    }
    crate::versions::stored_from(version, obj)
}

/// The printer columns of a custom kind at the version the client speaks; None for a
/// built-in kind (its columns are [`table::columns`]).
fn printer_columns(api: &Api, t: &Target) -> Option<Vec<skiff_proto::api::CustomResourceColumnDefinition>> {
    let kind = api.registry.custom.of(t.info).filter(|_| t.info.custom)?;
    let api_version = t.older.as_deref().unwrap_or(t.info.api_version);
    let version = api_version.split_once('/').map_or(api_version, |(_, v)| v);
    Some(kind.version(version).map(|v| v.columns.clone()).unwrap_or_default())
}

/// A Table of `objects`, with a custom kind's printer columns or a built-in kind's own.
fn make_table<'a>(
    info: &KindInfo,
    printer: Option<&[skiff_proto::api::CustomResourceColumnDefinition]>,
    objects: impl IntoIterator<Item = &'a Value>,
    metadata: Value,
    include: Include,
) -> Value {
    match printer {
        Some(columns) => table::custom_table(columns, objects, metadata, include),
        None => table::table(info, objects, metadata, include),
    }
}

/// The resource a path below a group version names (`crontabs` in
/// `namespaces/default/crontabs/a`).
fn resource_named<'a>(rest: &[&'a str]) -> Option<&'a str> {
    match rest {
        ["namespaces", _, res, ..] => Some(res),
        [res, ..] => Some(res),
        [] => None,
    }
}

/// A request's body, up to [`MAX_BODY`].
async fn read_body(body: Body) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::TooLarge(format!("the request body could not be read: {e}")))
}

/// The parameters of each media type an Accept header lists (`application/json;as=Table;…`).
pub(crate) fn media_types(accept: &str) -> impl Iterator<Item = Vec<&str>> {
    accept.split(',').map(|media| media.split(';').map(str::trim).collect())
}

async fn handle(api: &Api, req: http::Request<Body>, seen: &mut Seen) -> ApiResult<http::Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = Query::parse(parts.uri.query());
    let grpc = tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(parts.headers.clone()),
        std::mem::take(&mut parts.extensions),
        (),
    );
    let user = api.authenticate(&grpc).await?;
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    // Discovery and OpenAPI name the custom kinds as the store has them now.
    let listing = matches!(segments.as_slice(), ["openapi", ..] | ["apis"] | ["apis", _] | ["apis", _, _]);
    if listing {
        api.registry.refresh_custom().await?;
    }
    let custom = api.registry.custom.kinds();
    if let ["openapi", "v3"] = segments.as_slice() {
        return Ok(json_response(StatusCode::OK, &openapi::index(&custom)));
    }
    if let ["openapi", "v3", gv @ ..] = segments.as_slice() {
        let doc = openapi::document(&gv.join("/"), &custom).ok_or_else(|| not_found_path(&path))?;
        return Ok(json_response(StatusCode::OK, &doc));
    }
    let accept = parts.headers.get(header::ACCEPT).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if matches!(segments.as_slice(), ["api"] | ["apis"]) && discovery::wants_aggregated(accept) {
        let mut answer = json_response(StatusCode::OK, &discovery::aggregated(segments[0] == "api", &custom));
        answer.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(discovery::AGGREGATED));
        return Ok(answer);
    }
    let (api_version, rest) = match segments.as_slice() {
        ["api"] => {
            let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
            let host = if host.is_empty() {
                parts.uri.authority().map(|a| a.to_string()).unwrap_or_default()
            } else {
                host.into()
            };
            return Ok(json_response(StatusCode::OK, &discovery::core_versions(&host)));
        }
        ["apis"] => return Ok(json_response(StatusCode::OK, &discovery::group_list(&custom))),
        ["apis", group] => {
            let g = discovery::group(group, &custom).ok_or_else(|| not_found_path(&path))?;
            return Ok(json_response(StatusCode::OK, &g));
        }
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return Err(not_found_path(&path)),
    };
    if rest.is_empty() {
        let list = discovery::resource_list(&api_version, &custom).ok_or_else(|| not_found_path(&path))?;
        return Ok(json_response(StatusCode::OK, &list));
    }
    // Reviews: created and answered on the spot, never stored.
    let review = match (&parts.method, api_version.as_str(), rest) {
        (&Method::POST, "authorization.k8s.io/v1", [r @ ("selfsubjectaccessreviews" | "selfsubjectrulesreviews")])
        | (&Method::POST, "authentication.k8s.io/v1", [r @ ("tokenreviews" | "selfsubjectreviews")]) => Some(*r),
        _ => None,
    };
    if let Some(review) = review {
        let body = read_body(body).await?;
        let asked = || parse_body(&parts.headers, &body);
        let answer = match review {
            "selfsubjectaccessreviews" => access_review(api, &user, asked()?).await?,
            "selfsubjectrulesreviews" => rules_review(api, &user, asked()?).await?,
            "tokenreviews" => tokens::token_review(api, &user, asked()?).await?,
            _ => tokens::self_review(&user),
        };
        return Ok(json_response(StatusCode::CREATED, &answer));
    }
    if api_version == metrics::GROUP_VERSION && parts.method == Method::GET {
        let from = tonic::metadata::MetadataMap::from_headers(parts.headers.clone());
        let answer = metrics::serve(api, &user, &from, rest, query.str("labelSelector")).await?;
        return Ok(json_response(StatusCode::OK, &answer));
    }
    // A kind defined a moment ago (perhaps through another master) is looked for in the store.
    let unknown = resource_named(rest).is_some_and(|res| kind_at(api, &api_version, res).is_none());
    if unknown && api_version.contains('.') {
        api.registry.refresh_custom().await?;
    }
    let t = target(api, &api_version, rest, &path)?;
    seen.resource = Some(t.info.resource);
    seen.sub = t.sub.clone();
    let body = if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        read_body(body).await?
    } else {
        Default::default()
    };
    let call = Call { api, user, t, query, headers: &parts.headers, body: &body };
    let (verb, response) = match (&parts.method, call.t.name.is_empty()) {
        (&Method::GET, true) if call.query.flag("watch") => ("WATCH", call.watch().await?),
        (&Method::GET, true) => ("LIST", call.list().await?),
        (&Method::GET, false) => ("GET", call.get().await?),
        (&Method::POST, true) => ("POST", call.create().await?),
        (&Method::POST, false) => ("POST", call.post_subresource().await?),
        (&Method::PUT, false) => ("PUT", call.update().await?),
        (&Method::PATCH, false) => ("PATCH", call.patch().await?),
        (&Method::DELETE, false) => ("DELETE", call.delete().await?),
        (&Method::DELETE, true) => ("DELETE", call.delete_collection().await?),
        (m, _) => {
            return Err(ApiError::Unsupported(format!(
                "the server does not allow this method on the requested resource: {m}"
            )))
        }
    };
    seen.verb = verb;
    Ok(response)
}

/// One call on a resource, authenticated.
struct Call<'a> {
    api: &'a Api,
    user: crate::auth::User,
    t: Target,
    query: Query,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

impl Call<'_> {
    fn info(&self) -> &'static KindInfo {
        self.t.info
    }

    /// Whether the client asked for a Table, and what its rows carry.
    fn table(&self) -> ApiResult<Option<Include>> {
        let accept = self.headers.get(header::ACCEPT).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let wants = media_types(accept)
            .any(|params| params.contains(&"as=Table") && params.iter().any(|p| p.starts_with("g=meta.k8s.io")));
        if !wants {
            return Ok(None);
        }
        Include::parse(self.query.str("includeObject")).map(Some).map_err(ApiError::BadRequest)
    }

    /// The request body as JSON, at the stored version.
    fn object(&self) -> ApiResult<Value> {
        let obj = parse_body(self.headers, self.body)?;
        match &self.t.older {
            Some(version) if obj.get("apiVersion").is_some_and(|v| v != version.as_str()) => Ok(obj),
            Some(version) => stored_from(self.info(), version, obj),
            None => Ok(obj),
        }
    }

    /// A stored object as the client's version shows it.
    fn shown(&self, obj: Value) -> Value {
        match &self.t.older {
            Some(version) if obj["kind"] == self.info().kind => shown_at(self.info(), version, &obj),
            _ => obj,
        }
    }

    /// `?dryRun=All`: check everything, write nothing.
    fn dry_run(&self) -> ApiResult<bool> {
        match self.query.str("dryRun") {
            "" => Ok(false),
            "All" => Ok(true),
            other => {
                Err(ApiError::BadRequest(format!("dryRun: unsupported value {other:?}: supported values: \"All\"")))
            }
        }
    }

    /// How this call writes: `?dryRun`, and the field manager it names (`?fieldManager`, else
    /// the client's user agent), which then owns the fields the write changes.
    fn manager(&self) -> ApiResult<String> {
        let agent = self.headers.get(header::USER_AGENT).and_then(|h| h.to_str().ok()).unwrap_or_default();
        crate::fields::manager_of(self.query.str("fieldManager"), agent)
    }

    /// `?fieldValidation`: Strict refuses fields a custom kind's schema does not name; Warn
    /// (Kubernetes' default) and Ignore prune them.
    fn strict_fields(&self) -> ApiResult<bool> {
        match self.query.str("fieldValidation") {
            "Strict" => Ok(true),
            "" | "Warn" | "Ignore" => Ok(false),
            other => Err(ApiError::BadRequest(format!(
                "fieldValidation: unsupported value {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }

    /// Bindings and evictions do not take a dry run yet.
    fn no_dry_run(&self) -> ApiResult<()> {
        match self.dry_run()? {
            false => Ok(()),
            true => Err(ApiError::BadRequest(format!(
                "dryRun=All is not supported on {}/{}",
                self.info().resource,
                self.t.sub
            ))),
        }
    }

    /// The body names the same object as the path (or leaves name and namespace to it).
    fn check_names(&self, obj: &mut Value) -> ApiResult<()> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest("the request body is not a JSON object".into()));
        }
        crate::registry::check_type(self.info(), obj)?;
        let namespace = if self.info().namespaced { self.t.ns.as_str() } else { "" };
        for (field, on_request) in [("name", self.t.name.as_str()), ("namespace", namespace)] {
            match crate::object::meta_str(obj, field) {
                _ if on_request.is_empty() => {}
                "" => crate::object::set_meta(obj, field, json!(on_request)),
                given if given == on_request => {}
                given => {
                    return Err(ApiError::BadRequest(format!(
                        "the {field} of the provided object ({given}) does not match the {field} sent on the request \
                         ({on_request})"
                    )))
                }
            }
        }
        Ok(())
    }

    fn list_options(&self) -> ApiResult<ListOptions> {
        Ok(ListOptions {
            label_selector: self.query.str("labelSelector").to_string(),
            field_selector: self.query.str("fieldSelector").to_string(),
            limit: self.query.int("limit")?.unwrap_or(0),
            continue_token: self.query.str("continue").to_string(),
        })
    }

    async fn list(&self) -> ApiResult<http::Response<Body>> {
        let page = self.api.list_objects(&self.user, self.info(), &self.t.ns, &self.list_options()?).await?;
        if let Some(include) = self.table()? {
            let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
            if !page.continue_token.is_empty() {
                metadata["continue"] = json!(page.continue_token);
            }
            let printer = printer_columns(self.api, &self.t);
            let t =
                make_table(self.info(), printer.as_deref(), page.items.iter().map(|s| &s.object), metadata, include);
            return Ok(json_response(StatusCode::OK, &t));
        }
        if let Some(version) = &self.t.older {
            let items: Vec<Value> = page.items.iter().map(|s| self.shown(s.object.clone())).collect();
            let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
            if !page.continue_token.is_empty() {
                metadata["continue"] = json!(page.continue_token);
            }
            let kind = format!("{}List", self.info().kind);
            let list = json!({"apiVersion": version, "kind": kind, "metadata": metadata, "items": items});
            return Ok(json_response(StatusCode::OK, &list));
        }
        Ok(json_text_response(StatusCode::OK, crate::service::list_json(self.info(), &page)?))
    }

    async fn get(&self) -> ApiResult<http::Response<Body>> {
        match self.t.sub.as_str() {
            "scale" => {
                let obj = self.api.get_scaled(&self.user, self.info(), &self.t.ns, &self.t.name).await?;
                return Ok(json_response(StatusCode::OK, &self.scale_json(&obj)));
            }
            "log" => {
                return crate::logs::rest_log(
                    self.api,
                    &self.user,
                    self.headers,
                    &self.t.ns,
                    &self.t.name,
                    &self.query.0,
                )
                .await
            }
            _ => {}
        }
        let obj = if self.t.sub == "status" {
            self.api.allow(&self.user, self.info(), "get", "status", &self.t.ns, &self.t.name, None, None).await?;
            self.api.registry.get(self.info(), &self.t.ns, &self.t.name).await?
        } else {
            self.api.get_object(&self.user, self.info(), &self.t.ns, &self.t.name).await?
        };
        if let Some(include) = self.table()? {
            let rv = crate::object::resource_version(&obj).to_string();
            let printer = printer_columns(self.api, &self.t);
            let t = make_table(self.info(), printer.as_deref(), [&obj], json!({"resourceVersion": rv}), include);
            return Ok(json_response(StatusCode::OK, &t));
        }
        Ok(json_response(StatusCode::OK, &self.shown(obj)))
    }

    async fn create(&self) -> ApiResult<http::Response<Body>> {
        let dry_run = self.dry_run()?;
        let mut obj = self.object()?;
        self.check_names(&mut obj)?;
        let id = match self.headers.get(skiff_proto::REQUEST_ID_HEADER).and_then(|h| h.to_str().ok()) {
            Some(id) => Some(CreateId::new(&self.user.name, id)?),
            None => None,
        };
        let manager = self.manager()?;
        let w = Write { dry_run, manager: Some(&manager), strict_fields: self.strict_fields()? };
        let made = self.api.create_object(&self.user, self.info(), obj, &self.t.ns, id.as_ref(), w).await?;
        Ok(json_response(StatusCode::CREATED, &self.shown(made)))
    }

    async fn update(&self) -> ApiResult<http::Response<Body>> {
        let dry_run = self.dry_run()?;
        let mut obj = self.object()?;
        if self.t.sub == "scale" {
            let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
            let rv = crate::object::resource_version(&obj).to_string();
            return self.scale_to(replicas, &rv).await;
        }
        self.check_names(&mut obj)?;
        let scope = if self.t.sub == "status" { UpdateScope::Status } else { UpdateScope::Main };
        let manager = self.manager()?;
        let w = Write { dry_run, manager: Some(&manager), strict_fields: self.strict_fields()? };
        let updated = self.api.update_object(&self.user, self.info(), obj, &self.t.ns, scope, w).await?;
        Ok(json_response(StatusCode::OK, &self.shown(updated)))
    }

    async fn patch(&self) -> ApiResult<http::Response<Body>> {
        let dry_run = self.dry_run()?;
        let content_type = self.headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let kind = PatchType::of_content_type(content_type).ok_or_else(|| {
            ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json \
                 (not {content_type:?})"
            ))
        })?;
        if kind == PatchType::Apply {
            if let Some(version) = &self.t.older {
                return Err(ApiError::Unsupported(format!(
                    "server-side apply is served at {}, not {version}",
                    self.info().api_version
                )));
            }
            return self.server_side_apply(dry_run).await;
        }
        let body: Value = serde_json::from_slice(self.body)
            .map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
        if self.t.sub == "scale" {
            let stored = self.api.registry.get(self.info(), &self.t.ns, &self.t.name).await?;
            let scale = patch::apply(kind, &self.scale_json(&stored), &body)?;
            let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
            let rv = if patch::pins_version(kind, &body) {
                crate::object::resource_version(&scale).to_string()
            } else {
                String::new()
            };
            return self.scale_to(replicas, &rv).await;
        }
        let scope = if self.t.sub == "status" { UpdateScope::Status } else { UpdateScope::Main };
        let pinned = patch::pins_version(kind, &body);
        let (ns, name, older, info) = (self.t.ns.clone(), self.t.name.clone(), self.t.older.clone(), self.info());
        let apply = move |stored: &Value| {
            // An older version's patch applies to the object as that version shows it.
            let mut patched = match &older {
                Some(v) => stored_from(info, v, patch::apply(kind, &shown_at(info, v, stored), &body)?)?,
                None => patch::apply(kind, stored, &body)?,
            };
            // The patch may not move the object elsewhere.
            for (field, want) in [("name", name.as_str()), ("namespace", crate::object::namespace(stored))] {
                if crate::object::meta_str(&patched, field) != want {
                    return Err(ApiError::BadRequest(format!("metadata.{field} may not be changed by a patch")));
                }
            }
            if ns.is_empty() && !crate::object::namespace(stored).is_empty() {
                crate::object::set_meta(&mut patched, "namespace", json!(crate::object::namespace(stored)));
            }
            Ok(patched)
        };
        let manager = self.manager()?;
        let w = Write { dry_run, manager: Some(&manager), strict_fields: self.strict_fields()? };
        let patched =
            self.api.patch_object(&self.user, self.info(), &self.t.ns, &self.t.name, scope, pinned, w, &apply).await?;
        Ok(json_response(StatusCode::OK, &self.shown(patched)))
    }

    /// Server-side apply: the body is the manager's whole configuration of the object, which
    /// is created when missing (see [`crate::fields`]).
    async fn server_side_apply(&self, dry_run: bool) -> ApiResult<http::Response<Body>> {
        if !self.t.sub.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "server-side apply is served on objects, not on their {} subresource",
                self.t.sub
            )));
        }
        let manager = self.query.str("fieldManager");
        if manager.is_empty() {
            return Err(ApiError::Invalid {
                kind: "PatchOptions.meta.k8s.io".into(),
                name: String::new(),
                causes: vec![FieldError::required("fieldManager", "is required for apply patch")],
            });
        }
        crate::fields::manager_of(manager, "")?;
        let force = match self.query.str("force") {
            "" | "false" => false,
            "true" => true,
            other => {
                return Err(ApiError::BadRequest(format!("force: invalid value {other:?}: must be true or false")))
            }
        };
        let mut applied = self.object()?;
        self.check_names(&mut applied)?;
        let pinned = patch::pins_version(PatchType::Apply, &applied);
        let api_version = self.info().api_version;
        let w = Write { dry_run, manager: None, strict_fields: self.strict_fields()? };
        let apply = |stored: &Value| crate::fields::apply(Some(stored), &applied, manager, api_version, force);
        let (ns, name) = (&self.t.ns, &self.t.name);
        match self.api.patch_object(&self.user, self.info(), ns, name, UpdateScope::Main, pinned, w, &apply).await {
            Err(ApiError::NotFound { .. }) => {
                let made = crate::fields::apply(None, &applied, manager, api_version, force)?;
                let made = self.api.create_object(&self.user, self.info(), made, ns, None, w).await?;
                Ok(json_response(StatusCode::CREATED, &made))
            }
            applied => Ok(json_response(StatusCode::OK, &applied?)),
        }
    }

    /// Sets a workload's replicas through its scale subresource.
    fn scale_json(&self, obj: &Value) -> Value {
        scale_json(obj, &crate::crd::ScalePaths::of(&self.api.registry.custom, self.info()))
    }

    async fn scale_to(&self, replicas: i64, resource_version: &str) -> ApiResult<http::Response<Body>> {
        let dry_run = self.dry_run()?;
        let (ns, name) = (&self.t.ns, &self.t.name);
        let manager = self.manager()?;
        let w = Write { dry_run, manager: Some(&manager), strict_fields: self.strict_fields()? };
        let obj = self.api.scale_object(&self.user, self.info(), ns, name, replicas, resource_version, w).await?;
        Ok(json_response(StatusCode::OK, &self.scale_json(&obj)))
    }

    async fn post_subresource(&self) -> ApiResult<http::Response<Body>> {
        self.no_dry_run()?;
        let body = self.object()?;
        let (ns, name) = (&self.t.ns, &self.t.name);
        match self.t.sub.as_str() {
            "binding" => {
                let node = body.pointer("/target/name").and_then(Value::as_str).unwrap_or_default();
                let rv = crate::object::resource_version(&body);
                self.api.bind_pod(&self.user, ns, name, node, rv).await?;
                Ok(json_response(StatusCode::CREATED, &success()))
            }
            "eviction" => {
                let grace = body.pointer("/deleteOptions/gracePeriodSeconds").and_then(Value::as_i64);
                self.api.evict_pod(&self.user, ns, name, grace).await?;
                Ok(json_response(StatusCode::CREATED, &success()))
            }
            "token" => {
                let answer = tokens::token_request(self.api, &self.user, ns, name, body).await?;
                Ok(json_response(StatusCode::CREATED, &answer))
            }
            _ => Err(ApiError::Unsupported(format!("POST is not allowed on {}/{}", self.info().resource, self.t.sub))),
        }
    }

    /// DeleteOptions from the body (as kubectl sends them) or the query.
    fn delete_options(&self) -> ApiResult<(DeleteOptions, String, bool)> {
        let body: Value = if self.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(self.body)
                .map_err(|e| ApiError::BadRequest(format!("the DeleteOptions are not valid JSON: {e}")))?
        };
        let dry_run = match body.get("dryRun").and_then(Value::as_array) {
            Some(modes) if modes.iter().all(|m| m == "All") && !modes.is_empty() => true,
            Some(modes) if !modes.is_empty() => {
                return Err(ApiError::BadRequest(format!(
                    "dryRun: unsupported value {modes:?}: supported values: \"All\""
                )))
            }
            _ => self.dry_run()?,
        };
        let grace = match body.get("gracePeriodSeconds").and_then(Value::as_i64) {
            Some(g) => Some(g),
            None => self.query.int("gracePeriodSeconds")?,
        };
        let mut propagation = body
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .unwrap_or(self.query.str("propagationPolicy"))
            .to_string();
        if propagation.is_empty() {
            // The older form: orphanDependents.
            match body.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => propagation = "Orphan".into(),
                Some(false) => propagation = "Background".into(),
                None => {}
            }
        }
        let rv = body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).unwrap_or_default();
        let uid = body.pointer("/preconditions/uid").and_then(Value::as_str).unwrap_or_default();
        Ok((
            DeleteOptions { grace_period_seconds: grace, propagation_policy: propagation, resource_version: rv.into() },
            uid.to_string(),
            dry_run,
        ))
    }

    async fn delete(&self) -> ApiResult<http::Response<Body>> {
        let (opts, uid, dry_run) = self.delete_options()?;
        if !uid.is_empty() {
            let stored = self.api.get_object(&self.user, self.info(), &self.t.ns, &self.t.name).await?;
            let actual = crate::object::meta_str(&stored, "uid");
            if actual != uid {
                return Err(ApiError::Precondition(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                )));
            }
        }
        let obj = self.api.delete_object(&self.user, self.info(), &self.t.ns, &self.t.name, &opts, dry_run).await?;
        Ok(json_response(StatusCode::OK, &self.shown(obj)))
    }

    /// Deletes every object the selectors match (authorized as `deletecollection`).
    async fn delete_collection(&self) -> ApiResult<http::Response<Body>> {
        let (opts, _, dry_run) = self.delete_options()?;
        let registry = self.api.writer(Write { dry_run, ..Default::default() });
        self.api.allow(&self.user, self.info(), "deletecollection", "", &self.t.ns, "", None, None).await?;
        let page = self.api.registry.list(self.info(), &self.t.ns, &self.list_options()?).await?;
        let mut deleted = Vec::new();
        for s in &page.items {
            let (ns, name) = (crate::object::namespace(&s.object), crate::object::name(&s.object));
            match registry.delete(self.info(), ns, name, &opts).await {
                Ok(obj) => deleted.push(self.shown(obj)),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let list = json!({
            "apiVersion": self.t.older.as_deref().unwrap_or(self.info().api_version),
            "kind": format!("{}List", self.info().kind),
            "metadata": {"resourceVersion": page.resource_version.to_string()},
            "items": deleted,
        });
        Ok(json_response(StatusCode::OK, &list))
    }

    async fn watch(&self) -> ApiResult<http::Response<Body>> {
        if self.query.flag("sendInitialEvents") {
            return Err(ApiError::Invalid {
                kind: "ListOptions.meta.k8s.io".into(),
                name: String::new(),
                causes: vec![crate::error::FieldError::forbidden(
                    "sendInitialEvents",
                    "sendInitialEvents is not served yet (list, then watch from the list's resourceVersion)",
                )],
            });
        }
        let mut fields = self.query.str("fieldSelector").to_string();
        if !self.t.name.is_empty() {
            let one = format!("metadata.name={}", self.t.name);
            fields = if fields.is_empty() { one } else { format!("{fields},{one}") };
        }
        let opts = WatchOptions {
            label_selector: self.query.str("labelSelector").to_string(),
            field_selector: fields,
            resource_version: self.query.str("resourceVersion").to_string(),
            allow_bookmarks: self.query.flag("allowWatchBookmarks"),
            bookmark_interval: None,
        };
        let timeout = self.query.int("timeoutSeconds")?.filter(|t| *t > 0).map(|t| Duration::from_secs(t as u64));
        let table = self.table()?;
        let info = self.info();
        let older = self.t.older.clone();
        let printer = printer_columns(self.api, &self.t);
        let mut rx = self.api.watch_objects(&self.user, info, &self.t.ns, opts).await?;
        let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
        tokio::spawn(async move {
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            loop {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                        Ok(next) => next,
                        Err(_) => return,
                    },
                    None => rx.recv().await,
                };
                let line = match next {
                    None => return,
                    Some(Ok(ev)) => {
                        let object = match table {
                            Some(include) if ev.kind != "BOOKMARK" => {
                                let rv = crate::object::resource_version(&ev.object).to_string();
                                make_table(
                                    info,
                                    printer.as_deref(),
                                    [&ev.object],
                                    json!({"resourceVersion": rv}),
                                    include,
                                )
                            }
                            _ if ev.kind == "BOOKMARK" => match &older {
                                Some(version) => {
                                    let mut o = ev.object;
                                    o["apiVersion"] = json!(version);
                                    o
                                }
                                None => ev.object,
                            },
                            _ => match &older {
                                Some(version) => shown_at(info, version, &ev.object),
                                None => ev.object,
                            },
                        };
                        json!({"type": ev.kind, "object": object})
                    }
                    Some(Err(e)) => {
                        let (_, status) = status::of(&e);
                        let line = json!({"type": "ERROR", "object": status});
                        let _ = tx.send(Ok(format!("{line}\n"))).await;
                        return;
                    }
                };
                if tx.send(Ok(format!("{line}\n"))).await.is_err() {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(body_rx);
        let mut r = http::Response::new(Body::from_stream(stream));
        r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r.headers_mut().insert(header::TRANSFER_ENCODING, http::HeaderValue::from_static("chunked"));
        Ok(r)
    }
}

/// A request body as JSON: JSON, YAML or Kubernetes' protobuf, by its content type.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or_default();
    match content_type.split(';').next().unwrap_or_default().trim() {
        "application/yaml" | "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid YAML: {e}"))),
        wire::PROTOBUF => wire::decode(body),
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}"))),
    }
}

/// A SelfSubjectAccessReview (`kubectl auth can-i`): whether the caller may do what its
/// resourceAttributes describe, decided by the same authorizer as every request; answered
/// with the review and its status, stored nowhere.
async fn access_review(api: &Api, user: &crate::auth::User, mut review: Value) -> ApiResult<Value> {
    let attr = |f: &str| {
        review.pointer(&format!("/spec/resourceAttributes/{f}")).and_then(Value::as_str).unwrap_or_default().to_string()
    };
    let (allowed, reason) = if review.pointer("/spec/resourceAttributes").is_some() {
        let (group, resource) = (attr("group"), attr("resource"));
        api.registry.refresh_custom().await?;
        let info = api
            .registry
            .all_kinds()
            .into_iter()
            .find(|k| k.resource == resource && discovery::group_version(k).0 == group);
        match info {
            None if user.is_superuser() => (true, String::new()),
            None => (false, format!("Skiff serves no resource {resource:?} in API group {group:?}")),
            Some(info) => {
                let (verb, sub, ns, name) = (attr("verb"), attr("subresource"), attr("namespace"), attr("name"));
                let a = crate::auth::Attributes { verb: &verb, info, subresource: &sub, namespace: &ns, name: &name };
                // As Kubernetes' RBAC: a denial carries no reason (kubectl prints a bare "no").
                match api.authorize(user, &a, None, None).await {
                    Ok(()) => (true, String::new()),
                    Err(ApiError::Forbidden(_)) => (false, String::new()),
                    Err(e) => return Err(e),
                }
            }
        }
    } else if review.pointer("/spec/nonResourceAttributes").is_some() {
        // Non-resource URLs (/healthz, /metrics) are not in Skiff's RBAC rules yet.
        (user.is_superuser(), String::new())
    } else {
        return Err(ApiError::Invalid {
            kind: "SelfSubjectAccessReview.authorization.k8s.io".into(),
            name: String::new(),
            causes: vec![crate::error::FieldError::required(
                "spec.resourceAttributes",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        });
    };
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SelfSubjectAccessReview");
    review["status"] = json!({"allowed": allowed});
    if !reason.is_empty() {
        review["status"]["reason"] = json!(reason);
    }
    Ok(review)
}

/// A SelfSubjectRulesReview (`kubectl auth can-i --list`): the rules RBAC grants the caller
/// at the cluster scope and in `spec.namespace`.
async fn rules_review(api: &Api, user: &crate::auth::User, mut review: Value) -> ApiResult<Value> {
    let namespace = review.pointer("/spec/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
    let (resource, non_resource, incomplete) = api.rules_review(user, &namespace).await?;
    let keep = |rule: &Value, fields: &[&str]| {
        let mut out = serde_json::Map::new();
        for f in fields {
            out.insert(f.to_string(), rule.get(*f).cloned().unwrap_or_else(|| json!([])));
        }
        Value::Object(out)
    };
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SelfSubjectRulesReview");
    review["status"] = json!({
        "resourceRules": resource.iter().map(|r| keep(r, &["verbs", "apiGroups", "resources", "resourceNames"])).collect::<Vec<_>>(),
        "nonResourceRules": non_resource.iter().map(|r| keep(r, &["verbs", "nonResourceURLs"])).collect::<Vec<_>>(),
        "incomplete": incomplete,
    });
    Ok(review)
}

/// `metav1.Status` of a success without an object (a binding, an eviction).
fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

/// A workload's `autoscaling/v1` Scale as Kubernetes writes it (`status.replicas` always,
/// even 0, which clients such as Python's require), read where its kind keeps replicas.
fn scale_json(obj: &Value, paths: &crate::crd::ScalePaths) -> Value {
    let meta = |f: &str| crate::object::meta_str(obj, f).to_string();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta("name"),
            "namespace": meta("namespace"),
            "uid": meta("uid"),
            "resourceVersion": meta("resourceVersion"),
            "creationTimestamp": meta("creationTimestamp"),
        },
        "spec": {"replicas": paths.spec_replicas(obj)},
        "status": {"replicas": paths.status_replicas(obj), "selector": paths.selector(obj)},
    })
}
