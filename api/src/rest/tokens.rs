//! Tokens over REST as Kubernetes serves them: TokenRequest (`POST
//! …/serviceaccounts/{name}/token`, what `kubectl create token` sends) issues a service-account
//! token bound to the account or to one of its pods, expiring; TokenReview
//! (`authentication.k8s.io/v1`, what webhooks and proxies in front of other services ask) says
//! who a token authenticates as, for which audiences. Neither is stored.

use crate::auth::{Attributes, User};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::kinds::KindInfo;
use crate::satoken::{Bound, Claims, API_AUDIENCE};
use crate::service::Api;
use crate::{kinds, object};
use serde::Deserialize;
use serde_json::{json, Value};

/// TokenReviews are authorized as this resource (`create tokenreviews`, as Kubernetes'
/// `system:auth-delegator` role grants); it is not a stored kind.
const TOKEN_REVIEWS: KindInfo = KindInfo {
    kind: "TokenReview",
    resource: "tokenreviews",
    api_version: "authentication.k8s.io/v1",
    namespaced: false,
    short_names: "",
    subresources: "",
    custom: false,
};

/// Kubernetes' bounds on `spec.expirationSeconds`: 10 minutes to 2^32 seconds; 1 hour when
/// unset.
const MIN_SECONDS: i64 = 600;
const MAX_SECONDS: i64 = 1 << 32;
const DEFAULT_SECONDS: i64 = 3600;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct TokenRequestSpec {
    audiences: Vec<String>,
    expiration_seconds: Option<i64>,
    bound_object_ref: Option<BoundObjectRef>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct BoundObjectRef {
    kind: String,
    api_version: String,
    name: String,
    uid: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct TokenReviewSpec {
    token: String,
    audiences: Vec<String>,
}

fn spec<T: for<'de> Deserialize<'de> + Default>(body: &Value, kind: &str) -> ApiResult<T> {
    match body.get("spec") {
        None | Some(Value::Null) => Ok(T::default()),
        Some(spec) => T::deserialize(spec).map_err(|e| ApiError::BadRequest(format!("{kind}.spec: {e}"))),
    }
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: a token for the account,
/// bound to it (or to the pod `spec.boundObjectRef` names, which must run as it), expiring
/// after `spec.expirationSeconds`.
pub async fn token_request(api: &Api, user: &User, ns: &str, name: &str, body: Value) -> ApiResult<Value> {
    let invalid = |cause: FieldError| ApiError::Invalid {
        kind: "TokenRequest.authentication.k8s.io".into(),
        name: name.to_string(),
        causes: vec![cause],
    };
    let asked: TokenRequestSpec = spec(&body, "TokenRequest")?;
    let seconds = asked.expiration_seconds.unwrap_or(DEFAULT_SECONDS);
    if seconds < MIN_SECONDS {
        return Err(invalid(FieldError::invalid(
            "spec.expirationSeconds",
            seconds,
            "may not specify a duration less than 10 minutes",
        )));
    }
    if seconds > MAX_SECONDS {
        return Err(invalid(FieldError::invalid(
            "spec.expirationSeconds",
            seconds,
            "may not specify a duration larger than 2^32 seconds",
        )));
    }
    let accounts = kinds::by_resource("serviceaccounts")?;
    // The pod a bound token names is the object node restriction judges, as for the gRPC path.
    let pod = match &asked.bound_object_ref {
        None => None,
        Some(r) if r.kind == "Pod" && matches!(r.api_version.as_str(), "" | "v1") => {
            if r.name.is_empty() {
                return Err(invalid(FieldError::required("spec.boundObjectRef.name", "")));
            }
            Some(api.registry.get(kinds::by_resource("pods")?, ns, &r.name).await?)
        }
        Some(r) => return Err(invalid(FieldError::not_supported("spec.boundObjectRef.kind", &r.kind, &["v1/Pod"]))),
    };
    let a = Attributes { verb: "create", info: accounts, subresource: "token", namespace: ns, name };
    api.authorize(user, &a, pod.as_ref(), None).await?;
    let account = api.registry.get(accounts, ns, name).await?;
    let bound = match (&pod, &asked.bound_object_ref) {
        (Some(pod), Some(r)) => {
            let uid = object::meta_str(pod, "uid");
            if !r.uid.is_empty() && r.uid != uid {
                return Err(invalid(FieldError::invalid(
                    "spec.boundObjectRef.uid",
                    &r.uid,
                    format!("does not match the UID in record: pod {ns}/{} has {uid}", r.name),
                )));
            }
            let runs_as = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
            if runs_as != name {
                return Err(invalid(FieldError::invalid(
                    "spec.boundObjectRef.name",
                    &r.name,
                    format!("pod runs as service account {runs_as:?}, not {name:?}"),
                )));
            }
            Bound::Pod { name: r.name.clone(), uid: uid.to_string() }
        }
        _ => Bound::Account { uid: object::meta_str(&account, "uid").to_string() },
    };
    let audiences = if asked.audiences.is_empty() { vec![API_AUDIENCE.to_string()] } else { asked.audiences };
    let now = skiff_proto::time::now_secs();
    let claims = Claims {
        namespace: ns.to_string(),
        service_account: name.to_string(),
        bound,
        expires: Some(now + seconds),
        audiences: audiences.clone(),
    };
    let token = crate::satoken::issue(api.sa_key().await?, &claims, now);
    let mut spec = json!({"audiences": audiences, "expirationSeconds": seconds});
    if let Some(r) = body.pointer("/spec/boundObjectRef") {
        spec["boundObjectRef"] = r.clone();
    }
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": skiff_proto::time::rfc3339(now)},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": skiff_proto::time::rfc3339(now + seconds)},
    }))
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`: who `spec.token` authenticates as, for
/// the audiences of `spec.audiences` (the API's when empty) that the token is meant for.
pub async fn token_review(api: &Api, user: &User, body: Value) -> ApiResult<Value> {
    let a = Attributes { verb: "create", info: &TOKEN_REVIEWS, subresource: "", namespace: "", name: "" };
    api.authorize(user, &a, None, None).await?;
    let asked: TokenReviewSpec = spec(&body, "TokenReview")?;
    if asked.token.is_empty() {
        return Err(ApiError::BadRequest("token is required for TokenReview in authentication".into()));
    }
    let wanted = if asked.audiences.is_empty() { vec![API_AUDIENCE.to_string()] } else { asked.audiences.clone() };
    let answer = match reviewed(api, &asked.token).await {
        Ok((who, meant_for)) => {
            let common: Vec<String> = wanted.iter().filter(|a| meant_for.contains(a)).cloned().collect();
            if common.is_empty() {
                json!({"authenticated": false, "error": format!(
                    "token audiences {meant_for:?} is invalid for the target audiences {wanted:?}"
                )})
            } else {
                json!({"authenticated": true, "audiences": common, "user": {"username": who.name, "groups": who.groups}})
            }
        }
        Err(ApiError::Unauthenticated(why)) => json!({"authenticated": false, "error": why}),
        Err(e) => return Err(e),
    };
    let mut spec = json!({"token": asked.token});
    if !asked.audiences.is_empty() {
        spec["audiences"] = json!(asked.audiences);
    }
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": answer,
    }))
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` (`kubectl auth whoami`): who the
/// caller is, which anyone may ask.
pub fn self_review(user: &User) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "SelfSubjectReview",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": {"username": user.name, "groups": user.groups}},
    })
}

/// The user `token` authenticates as and the audiences it is meant for: a service-account
/// token's own, the API's for every other kind (token file, bootstrap tokens).
async fn reviewed(api: &Api, token: &str) -> ApiResult<(User, Vec<String>)> {
    if crate::satoken::looks_like_jwt(token) {
        if let Some(claims) = api.service_account_claims(token).await? {
            let meant_for =
                if claims.audiences.is_empty() { vec![API_AUDIENCE.to_string()] } else { claims.audiences.clone() };
            return Ok((claims.user(), meant_for));
        }
    }
    let mut req = tonic::Request::new(());
    let header = format!("Bearer {token}")
        .parse()
        .map_err(|_| ApiError::Unauthenticated("the token is not a valid header value".into()))?;
    req.metadata_mut().insert("authorization", header);
    Ok((api.authenticate(&req).await?, vec![API_AUDIENCE.to_string()]))
}
