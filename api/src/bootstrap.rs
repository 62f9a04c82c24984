//! Bootstrap tokens, as Kubernetes keeps them: a Secret `bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` in `kube-system` holds a token `<id>.<secret>` (6 and 16
//! characters of `[a-z0-9]`), its expiry and what it may be used for. A joining machine sends
//! the token as its bearer token and is `system:bootstrap:<id>` in `system:bootstrappers`
//! (plus the token's `auth-extra-groups`): enough to ask for its certificates, nothing more.

use crate::auth::User;
use base64::Engine;
use serde_json::Value;

pub const NAMESPACE: &str = "kube-system";
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
pub const GROUP: &str = "system:bootstrappers";
pub const USER_PREFIX: &str = "system:bootstrap:";

fn is_token_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `(id, secret)` of a string shaped as a bootstrap token.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    (is_token_part(id, 6) && is_token_part(secret, 16)).then_some((id, secret))
}

/// The Secret that holds token `id`.
pub fn secret_name(id: &str) -> String {
    format!("{SECRET_PREFIX}{id}")
}

/// A field of the Secret's `data`, decoded.
pub fn field(secret: &Value, name: &str) -> Option<String> {
    let encoded = secret.get("data")?.get(name)?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    String::from_utf8(bytes).ok()
}

/// Constant-time equality, so a wrong secret takes as long to refuse whatever its prefix.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user token `id.secret` authenticates as, judged against its Secret at `now` (seconds
/// since the epoch); the error says why it is refused.
pub fn user_of(stored: &Value, id: &str, secret: &str, now: i64) -> Result<User, String> {
    if stored.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
        return Err(format!("secret {} is not of type {SECRET_TYPE}", secret_name(id)));
    }
    if field(stored, "token-id").as_deref() != Some(id) {
        return Err(format!("secret {} does not hold token {id}", secret_name(id)));
    }
    if !field(stored, "token-secret").is_some_and(|s| same(&s, secret)) {
        return Err(format!("wrong secret for bootstrap token {id}"));
    }
    if field(stored, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(format!("bootstrap token {id} is not for authentication"));
    }
    if let Some(expiration) = field(stored, "expiration") {
        match skiff_proto::time::parse_rfc3339(&expiration) {
            Some(at) if at > now => {}
            Some(_) => return Err(format!("bootstrap token {id} expired at {expiration}")),
            None => return Err(format!("bootstrap token {id} has an unreadable expiration {expiration:?}")),
        }
    }
    let mut groups = vec![GROUP.to_string()];
    for g in field(stored, "auth-extra-groups").unwrap_or_default().split(',').map(str::trim).filter(|g| !g.is_empty())
    {
        // As Kubernetes: extra groups stay within the bootstrappers' own.
        if !g.starts_with("system:bootstrappers:") {
            return Err(format!("bootstrap token {id}: extra group {g:?} is not under system:bootstrappers:"));
        }
        groups.push(g.to_string());
    }
    groups.push("system:authenticated".into());
    Ok(User { name: format!("{USER_PREFIX}{id}"), groups })
}

/// Whether `user` is a bootstrapping machine (a bootstrap token's user).
pub fn is_bootstrapper(user: &User) -> bool {
    user.name.starts_with(USER_PREFIX) && user.groups.iter().any(|g| g == GROUP)
}

/// The prefix of the Secret in kube-system holding the control plane's keys, sealed with a
/// certificate key, for machines that join as masters with token `<id>` (kubeadm's
/// `kubeadm-certs`, one per token here).
pub const CERTS_PREFIX: &str = "skiff-certs-";

/// The Secret a master joining with token `id` reads its sealed keys from.
pub fn certs_secret_name(id: &str) -> String {
    format!("{CERTS_PREFIX}{id}")
}

/// What a bootstrapping machine may do: ask for certificates and follow its requests
/// (Kubernetes' system:node-bootstrapper role), and read the sealed control-plane keys uploaded
/// for its own token — none other's.
pub fn bootstrapper_may(
    user: &User,
    verb: &str,
    resource: &str,
    subresource: &str,
    namespace: &str,
    name: &str,
) -> bool {
    if !subresource.is_empty() {
        return false;
    }
    match resource {
        "certificatesigningrequests" => matches!(verb, "create" | "get" | "list" | "watch"),
        "secrets" => {
            let id = user.name.strip_prefix(USER_PREFIX).unwrap_or_default();
            verb == "get" && namespace == NAMESPACE && !id.is_empty() && name == certs_secret_name(id)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn secret(expiration: Option<&str>, extra: &str) -> Value {
        let mut data = json!({
            "token-id": b64("abc123"), "token-secret": b64("0123456789abcdef"),
            "usage-bootstrap-authentication": b64("true"),
        });
        if let Some(e) = expiration {
            data["expiration"] = json!(b64(e));
        }
        if !extra.is_empty() {
            data["auth-extra-groups"] = json!(b64(extra));
        }
        json!({"type": SECRET_TYPE, "metadata": {"name": "bootstrap-token-abc123"}, "data": data})
    }

    #[test]
    fn a_bootstrapper_reads_only_the_keys_sealed_for_its_own_token() {
        let user = User { name: "system:bootstrap:abc123".into(), groups: vec![GROUP.into()] };
        assert!(bootstrapper_may(&user, "get", "secrets", "", NAMESPACE, "skiff-certs-abc123"));
        assert!(!bootstrapper_may(&user, "get", "secrets", "", NAMESPACE, "skiff-certs-zzz999"));
        assert!(!bootstrapper_may(&user, "list", "secrets", "", NAMESPACE, ""));
        assert!(!bootstrapper_may(&user, "get", "secrets", "", "default", "skiff-certs-abc123"));
        assert!(!bootstrapper_may(&user, "get", "secrets", "", NAMESPACE, "bootstrap-token-abc123"));
        assert!(bootstrapper_may(&user, "create", "certificatesigningrequests", "", "", ""));
        assert!(!bootstrapper_may(&user, "update", "certificatesigningrequests", "approval", "", "x"));
        assert!(!bootstrapper_may(&user, "get", "pods", "", "default", "x"));
    }

    #[test]
    fn tokens_have_kubernetes_shape() {
        assert_eq!(parse_token("abc123.0123456789abcdef"), Some(("abc123", "0123456789abcdef")));
        for bad in ["abc123", "ABC123.0123456789abcdef", "abc12.0123456789abcdef", "abc123.0123456789abcde", "a.b.c"] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_valid_token_is_a_bootstrapper_and_a_bad_or_expired_one_says_why() {
        let now = skiff_proto::time::parse_rfc3339("2026-12-06T00:00:00Z").unwrap();
        let user = user_of(
            &secret(Some("2026-12-07T00:00:00Z"), "system:bootstrappers:workers"),
            "abc123",
            "0123456789abcdef",
            now,
        )
        .unwrap();
        assert_eq!(user.name, "system:bootstrap:abc123");
        assert_eq!(user.groups, ["system:bootstrappers", "system:bootstrappers:workers", "system:authenticated"]);
        assert!(is_bootstrapper(&user));
        let e = user_of(&secret(None, ""), "abc123", "0123456789abcdeX", now).unwrap_err();
        assert!(e.contains("wrong secret"), "{e}");
        let e = user_of(&secret(Some("2026-12-05T00:00:00Z"), ""), "abc123", "0123456789abcdef", now).unwrap_err();
        assert!(e.contains("expired at 2026-12-05T00:00:00Z"), "{e}");
        let e = user_of(&secret(None, "system:masters"), "abc123", "0123456789abcdef", now).unwrap_err();
        assert!(e.contains("system:masters"), "{e}");
        let mut opaque = secret(None, "");
        opaque["type"] = json!("Opaque");
        assert!(user_of(&opaque, "abc123", "0123456789abcdef", now).unwrap_err().contains("not of type"));
    }
}
