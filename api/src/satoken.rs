//! Service-account tokens: JWTs (HS256) that name a service account and the object they are
//! bound to, signed with a key every master reads from the store. A token authenticates only
//! while that object exists with the same uid, as Kubernetes' bound tokens do: the pod a node
//! asked for it for, or — a TokenRequest (`kubectl create token`) that names no pod — the
//! service account itself, until the token expires.

use crate::auth::{Attributes, User};
use crate::error::ApiError;
use crate::{kinds, object};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// The audience the API takes tokens for when a TokenRequest names none (Kubernetes' default
/// `--api-audiences`).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub service_account: String,
    pub bound: Bound,
    /// Seconds since the epoch from which the token is refused; `None`: while its pod lives.
    pub expires: Option<i64>,
    /// Who the token is meant for (`aud`). Empty for the tokens nodes mount into pods, which
    /// the API takes.
    pub audiences: Vec<String>,
}

/// The object a token lives and dies with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    Pod { name: String, uid: String },
    Account { uid: String },
}

impl Claims {
    pub fn user(&self) -> User {
        User {
            name: format!("system:serviceaccount:{}:{}", self.namespace, self.service_account),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", self.namespace),
                "system:authenticated".into(),
            ],
        }
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn hmac_key(key: &[u8]) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key)
}

/// A signed token for `claims`, issued at `now` (seconds since the epoch).
pub fn issue(key: &[u8], claims: &Claims, now: i64) -> String {
    let mut k8s = json!({
        "namespace": claims.namespace,
        "serviceaccount": {"name": claims.service_account},
    });
    match &claims.bound {
        Bound::Pod { name, uid } => k8s["pod"] = json!({"name": name, "uid": uid}),
        Bound::Account { uid } => k8s["serviceaccount"]["uid"] = json!(uid),
    }
    let mut body = json!({"iss": "skiff", "sub": claims.user().name, "iat": now, "kubernetes.io": k8s});
    if let Some(exp) = claims.expires {
        body["exp"] = json!(exp);
    }
    if !claims.audiences.is_empty() {
        body["aud"] = json!(claims.audiences);
    }
    let signed = format!("{}.{}", B64.encode(HEADER), B64.encode(body.to_string()));
    let sig = B64.encode(ring::hmac::sign(&hmac_key(key), signed.as_bytes()));
    format!("{signed}.{sig}")
}

/// Whether a bearer token has a JWT's shape (three base64url parts), i.e. is meant for
/// [`verify`] rather than the token file.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty())
}

/// The claims of a token this key signed; `None` for anything else.
pub fn verify(key: &[u8], token: &str) -> Option<Claims> {
    let (signed, sig) = token.rsplit_once('.')?;
    let sig = B64.decode(sig).ok()?;
    ring::hmac::verify(&hmac_key(key), signed.as_bytes(), &sig).ok()?;
    let (header, body) = signed.split_once('.')?;
    let header: Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
    if header["alg"] != "HS256" {
        return None;
    }
    let body: Value = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
    let k = &body["kubernetes.io"];
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
    let bound = match (text(&k["pod"]["name"]), text(&k["pod"]["uid"])) {
        (Some(name), Some(uid)) => Bound::Pod { name, uid },
        _ => Bound::Account { uid: text(&k["serviceaccount"]["uid"])? },
    };
    let audiences = match &body["aud"] {
        Value::Null => Vec::new(),
        Value::String(a) => vec![a.clone()],
        Value::Array(a) => a.iter().map(|a| a.as_str().map(String::from)).collect::<Option<_>>()?,
        _ => return None,
    };
    let expires = match &body["exp"] {
        Value::Null => None,
        exp => Some(exp.as_i64()?),
    };
    Some(Claims {
        namespace: text(&k["namespace"])?,
        service_account: text(&k["serviceaccount"]["name"])?,
        bound,
        expires,
        audiences,
    })
}

/// `skiff.api.ServiceAccountTokens` on the masters. A node daemon may ask for the tokens of
/// pods bound to it (node restriction); anyone else needs `create serviceaccounts/token` in the
/// namespace.
pub struct TokenService {
    pub api: std::sync::Arc<crate::service::Api>,
}

#[tonic::async_trait]
impl skiff_proto::api::service_account_tokens_server::ServiceAccountTokens for TokenService {
    async fn create(
        &self,
        req: tonic::Request<skiff_proto::api::ServiceAccountTokenRequest>,
    ) -> Result<tonic::Response<skiff_proto::api::ServiceAccountToken>, tonic::Status> {
        Ok(tonic::Response::new(self.issue(&req).await?))
    }
}

impl TokenService {
    async fn issue(
        &self,
        req: &tonic::Request<skiff_proto::api::ServiceAccountTokenRequest>,
    ) -> Result<skiff_proto::api::ServiceAccountToken, ApiError> {
        let user = self.api.authenticate(req).await?;
        let r = req.get_ref();
        let ns = if r.namespace.is_empty() { "default" } else { r.namespace.as_str() };
        let pods = kinds::by_resource("pods")?;
        let pod = self.api.registry.get(pods, ns, &r.pod_name).await?;
        let uid = object::meta_str(&pod, "uid");
        if !r.pod_uid.is_empty() && r.pod_uid != uid {
            return Err(ApiError::BadRequest(format!(
                "pod {ns}/{}: uid is {uid}, not {} (the pod was replaced)",
                r.pod_name, r.pod_uid
            )));
        }
        let runs_as = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
        let account = if r.service_account.is_empty() { runs_as } else { r.service_account.as_str() };
        if account != runs_as {
            return Err(ApiError::BadRequest(format!(
                "pod {ns}/{} runs as service account {runs_as:?}, not {account:?}",
                r.pod_name
            )));
        }
        // The pod is the object: node restriction lets a node ask only for its own pods' tokens.
        let info = kinds::by_resource("serviceaccounts")?;
        let a = Attributes { verb: "create", info, subresource: "token", namespace: ns, name: account };
        self.api.authorize(&user, &a, Some(&pod), None).await?;
        let claims = Claims {
            namespace: ns.to_string(),
            service_account: account.to_string(),
            bound: Bound::Pod { name: r.pod_name.clone(), uid: uid.to_string() },
            expires: None,
            audiences: Vec::new(),
        };
        let now = skiff_proto::time::now_secs();
        Ok(skiff_proto::api::ServiceAccountToken { token: issue(self.api.sa_key().await?, &claims, now) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            namespace: "shop".into(),
            service_account: "default".into(),
            bound: Bound::Pod { name: "web-1".into(), uid: "0b6f".into() },
            expires: None,
            audiences: Vec::new(),
        }
    }

    #[test]
    fn a_requested_token_carries_its_account_expiry_and_audiences() {
        let claims = Claims {
            bound: Bound::Account { uid: "77aa".into() },
            expires: Some(1_700_003_600),
            audiences: vec![API_AUDIENCE.into(), "vault".into()],
            ..claims()
        };
        let token = issue(b"k", &claims, 1_700_000_000);
        assert_eq!(verify(b"k", &token), Some(claims));
    }

    #[test]
    fn a_token_verifies_with_its_key_only_and_names_the_account() {
        let token = issue(b"key one", &claims(), 1_700_000_000);
        assert!(looks_like_jwt(&token));
        assert_eq!(verify(b"key one", &token), Some(claims()));
        assert_eq!(verify(b"key two", &token), None);
        let user = claims().user();
        assert_eq!(user.name, "system:serviceaccount:shop:default");
        assert!(user.groups.contains(&"system:serviceaccounts:shop".to_string()));
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let token = issue(b"k", &claims(), 0);
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut other = claims();
        other.service_account = "admin".into();
        let forged_body = issue(b"attacker", &other, 0);
        let forged_body = forged_body.split('.').nth(1).unwrap();
        assert_eq!(verify(b"k", &format!("{head}.{forged_body}.{sig}")), None);
        assert_eq!(verify(b"k", "a.b.c"), None);
        assert_eq!(verify(b"k", "not-a-jwt"), None);
        assert!(!looks_like_jwt("0123456789abcdef"));
    }
}
