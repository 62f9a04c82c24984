//! Authentication (bearer tokens from a token file) and authorization (RBAC with Roles,
//! ClusterRoles and their bindings, as Kubernetes evaluates them).
//!
//! Token file: one user per line, `token,user,uid,"group1,group2"` (Kubernetes' static token
//! file format); `#` starts a comment. Members of `system:masters` are allowed everything.
//! Without a token file and without a client CA the API is open (only allowed when the
//! listener is on loopback, for `--insecure` experiments); with a client CA but no token file,
//! only certificates authenticate.

use crate::error::{ApiError, ApiResult};
use crate::kinds::{self, KindInfo};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// A token file, re-read whenever it changes on disk (adding a user needs no restart).
#[derive(Debug)]
pub struct TokenFile {
    /// `None`: no tokens at all (a master whose users authenticate by certificate only).
    path: Option<std::path::PathBuf>,
    cached: std::sync::RwLock<(Option<std::time::SystemTime>, Tokens)>,
}

impl TokenFile {
    pub fn open(path: &Path) -> Result<TokenFile, String> {
        let tokens = Tokens::load(path)?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(TokenFile { path: Some(path.to_path_buf()), cached: std::sync::RwLock::new((mtime, tokens)) })
    }

    /// No tokens: every bearer token is refused (users authenticate by client certificate).
    pub fn none() -> TokenFile {
        TokenFile { path: None, cached: std::sync::RwLock::new((None, Tokens::default())) }
    }

    pub fn authenticate(&self, metadata: &tonic::metadata::MetadataMap) -> ApiResult<User> {
        if let Some(path) = &self.path {
            let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if mtime != self.cached.read().expect("not poisoned").0 {
                match Tokens::load(path) {
                    Ok(t) => *self.cached.write().expect("not poisoned") = (mtime, t),
                    Err(e) => tracing::warn!("keeping the previous tokens: {e}"),
                }
            }
        }
        self.cached.read().expect("not poisoned").1.authenticate(metadata)
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The user a verified client certificate names: CN the name, each O a group (plus
/// `system:authenticated`), as Kubernetes' x509 client-certificate authenticator.
pub fn certificate_user(subject: skiff_proto::cert::Subject) -> User {
    let mut groups = subject.organizations;
    groups.push("system:authenticated".into());
    User { name: subject.common_name, groups }
}

impl User {
    pub fn anonymous_admin() -> User {
        User { name: "system:admin".into(), groups: vec!["system:masters".into()] }
    }

    pub fn is_superuser(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// Bearer token → user.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    users: HashMap<String, User>,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("token file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, groups) = match line.split_once(",\"") {
                Some((h, g)) => (h, g.trim_end_matches('"')),
                None => (line, ""),
            };
            let fields: Vec<&str> = head.split(',').collect();
            if fields.len() < 2 || fields[0].is_empty() || fields[1].is_empty() {
                return Err(format!("line {}: expected token,user,uid[,\"groups\"]", i + 1));
            }
            let mut groups: Vec<String> =
                groups.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect();
            if fields.len() > 3 && groups.is_empty() {
                groups =
                    fields[3..].iter().map(|g| g.trim_matches('"').to_string()).filter(|g| !g.is_empty()).collect();
            }
            groups.push("system:authenticated".into());
            users.insert(fields[0].to_string(), User { name: fields[1].to_string(), groups });
        }
        Ok(Tokens { users })
    }

    /// The caller named by `authorization: Bearer <token>`.
    pub fn authenticate(&self, metadata: &tonic::metadata::MetadataMap) -> ApiResult<User> {
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok()).ok_or_else(|| {
            ApiError::Unauthenticated("Unauthorized: no bearer token (send `authorization: Bearer <token>`)".into())
        })?;
        let token = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).ok_or_else(|| {
            ApiError::Unauthenticated("Unauthorized: the authorization header is not `Bearer <token>`".into())
        })?;
        self.users
            .get(token.trim())
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("Unauthorized: unknown bearer token".into()))
    }
}

/// One request to authorize.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub info: &'a KindInfo,
    /// `status`, `scale`, `binding`, `eviction`, or empty.
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl Attributes<'_> {
    fn group(&self) -> &str {
        self.info.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    fn resource(&self) -> String {
        if self.subresource.is_empty() {
            self.info.resource.to_string()
        } else {
            format!("{}/{}", self.info.resource, self.subresource)
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Whether one PolicyRule (JSON) allows the request.
pub fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    let any = |list: &[&str], want: &str| list.iter().any(|x| *x == "*" || *x == want);
    let resources = strings(rule.get("resources"));
    let names = strings(rule.get("resourceNames"));
    any(&strings(rule.get("verbs")), a.verb)
        && any(&strings(rule.get("apiGroups")), a.group())
        && (any(&resources, &a.resource())
            || (!a.subresource.is_empty() && resources.contains(&format!("{}/*", a.info.resource).as_str())))
        && (names.is_empty() || names.contains(&a.name))
}

fn subject_matches(subject: &Value, user: &User) -> bool {
    let name = subject.get("name").and_then(Value::as_str).unwrap_or_default();
    match subject.get("kind").and_then(Value::as_str).unwrap_or_default() {
        "User" => name == user.name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = subject.get("namespace").and_then(Value::as_str).unwrap_or_default();
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// The RBAC objects an authorization decision reads.
#[derive(Debug, Default)]
pub struct Policy {
    pub roles: Vec<Value>,
    pub cluster_roles: Vec<Value>,
    pub role_bindings: Vec<Value>,
    pub cluster_role_bindings: Vec<Value>,
}

impl Policy {
    fn role_rules<'a>(&'a self, role_ref: &Value, binding_ns: Option<&str>) -> Vec<&'a Value> {
        let kind = role_ref.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = role_ref.get("name").and_then(Value::as_str).unwrap_or_default();
        let source = match (kind, binding_ns) {
            ("ClusterRole", _) => self.cluster_roles.iter().find(|r| crate::object::name(r) == name),
            ("Role", Some(ns)) => {
                self.roles.iter().find(|r| crate::object::name(r) == name && crate::object::namespace(r) == ns)
            }
            _ => None,
        };
        source.and_then(|r| r.get("rules")).and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
    }

    /// Whether `user` may do `a`.
    pub fn allows(&self, user: &User, a: &Attributes<'_>) -> bool {
        if user.is_superuser() {
            return true;
        }
        let granted_by = |binding: &Value, ns: Option<&str>| {
            strings_of_subjects(binding).iter().any(|s| subject_matches(s, user))
                && self.role_rules(binding.get("roleRef").unwrap_or(&Value::Null), ns).iter().any(|r| rule_allows(r, a))
        };
        self.cluster_role_bindings.iter().any(|b| granted_by(b, None))
            || (a.info.namespaced
                && !a.namespace.is_empty()
                && self
                    .role_bindings
                    .iter()
                    .filter(|b| crate::object::namespace(b) == a.namespace)
                    .any(|b| granted_by(b, Some(a.namespace))))
    }

    /// Every rule granted to `user` at the cluster scope and in `namespace` (a rules review).
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<Value> {
        let bound = |binding: &&Value| strings_of_subjects(binding).iter().any(|s| subject_matches(s, user));
        let cluster = self
            .cluster_role_bindings
            .iter()
            .filter(bound)
            .flat_map(|b| self.role_rules(b.get("roleRef").unwrap_or(&Value::Null), None));
        let local = self
            .role_bindings
            .iter()
            .filter(|b| !namespace.is_empty() && crate::object::namespace(b) == namespace)
            .filter(bound)
            .flat_map(|b| self.role_rules(b.get("roleRef").unwrap_or(&Value::Null), Some(namespace)));
        cluster.chain(local).cloned().collect()
    }

    /// Every rule `role_ref` grants, for escalation checks.
    pub fn rules_of(&self, role_ref: &Value, binding_ns: Option<&str>) -> Vec<Value> {
        self.role_rules(role_ref, binding_ns).into_iter().cloned().collect()
    }
}

fn strings_of_subjects(binding: &Value) -> Vec<&Value> {
    binding.get("subjects").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

/// `pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "default"`
pub fn forbidden(user: &User, a: &Attributes<'_>) -> ApiError {
    let scope = if a.info.namespaced && !a.namespace.is_empty() {
        format!(" in the namespace {:?}", a.namespace)
    } else {
        " at the cluster scope".into()
    };
    ApiError::Forbidden(format!(
        "{} is forbidden: User {:?} cannot {} resource {:?} in API group {:?}{scope}",
        kinds::qualified(a.info),
        user.name,
        a.verb,
        a.resource(),
        a.group()
    ))
}

/// No escalation: every rule in `rules` must be something `user` may already do, across
/// the resources and verbs it names (wildcards must be held as wildcards).
pub fn check_no_escalation(policy: &Policy, user: &User, rules: &[Value], namespace: &str) -> ApiResult<()> {
    if user.is_superuser() {
        return Ok(());
    }
    for rule in rules {
        for verb in strings(rule.get("verbs")) {
            for resource in strings(rule.get("resources")) {
                let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
                let groups = strings(rule.get("apiGroups"));
                let in_groups = |k: &&KindInfo| {
                    groups.contains(&"*") || groups.contains(&crate::rest::discovery::group_version(k).0)
                };
                let infos: Vec<&KindInfo> =
                    kinds::KINDS.iter().filter(|k| res == "*" || k.resource == res).filter(in_groups).collect();
                // A resource Skiff has no built-in kind for (a custom resource, or none yet) is
                // judged on the rule itself: it must be held as it is, or wider.
                if infos.is_empty() && res != "*" && !policy_allows_wildcard(policy, user, rule) {
                    return Err(ApiError::Forbidden(format!(
                        "user {:?} is attempting to grant RBAC permissions not currently held: verb {verb:?} on {resource:?}",
                        user.name
                    )));
                }
                for info in infos {
                    let names = strings(rule.get("resourceNames"));
                    let name = names.first().copied().unwrap_or_default();
                    let a = Attributes { verb, info, subresource: sub, namespace, name };
                    if verb == "*" || !policy.allows(user, &a) {
                        let held = verb != "*" && policy.allows(user, &a);
                        if !held && !policy_allows_wildcard(policy, user, rule) {
                            return Err(ApiError::Forbidden(format!(
                                "user {:?} is attempting to grant RBAC permissions not currently held: verb {verb:?} on {resource:?}",
                                user.name
                            )));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn policy_allows_wildcard(policy: &Policy, user: &User, wanted: &Value) -> bool {
    // A rule is held verbatim if some binding of the user grants an identical or wider rule.
    let held_rules: Vec<Value> = policy
        .cluster_role_bindings
        .iter()
        .chain(policy.role_bindings.iter())
        .filter(|b| strings_of_subjects(b).iter().any(|s| subject_matches(s, user)))
        .flat_map(|b| {
            let ns = if b.get("kind").and_then(Value::as_str) == Some("RoleBinding") {
                Some(crate::object::namespace(b))
            } else {
                None
            };
            policy.rules_of(b.get("roleRef").unwrap_or(&Value::Null), ns)
        })
        .collect();
    let covers = |have: &[&str], want: &[&str]| have.contains(&"*") || want.iter().all(|w| have.contains(w));
    held_rules.iter().any(|h| {
        covers(&strings(h.get("verbs")), &strings(wanted.get("verbs")))
            && covers(&strings(h.get("resources")), &strings(wanted.get("resources")))
            && covers(&strings(h.get("apiGroups")), &strings(wanted.get("apiGroups")))
    })
}

/// The node a node daemon's identity names (`system:node:<name>` in `system:nodes`).
pub fn node_name(user: &User) -> Option<&str> {
    if !user.groups.iter().any(|g| g == "system:nodes") {
        return None;
    }
    user.name.strip_prefix("system:node:")
}

/// Node restriction: a node daemon (`system:node:<name>` in `system:nodes`) may write only its
/// own Node and Lease and the pods bound to it — bound to it before the write (`stored`) as
/// well as after (`object`), so it cannot take another node's pod — and ask for
/// service-account tokens only for those pods (`object`: the pod); it may read everything it
/// needs to run pods.
pub fn node_restriction(
    user: &User,
    a: &Attributes<'_>,
    object: Option<&Value>,
    stored: Option<&Value>,
) -> Option<bool> {
    let node = node_name(user)?;
    let read = matches!(a.verb, "get" | "list" | "watch");
    Some(match a.info.resource {
        _ if read => true,
        "nodes" => a.name == node,
        "leases" => a.namespace == "kube-node-lease" && a.name == node,
        "events" => a.verb == "create" || a.verb == "patch",
        // Its own pods (and, on create, only mirror pods bound to itself).
        "pods" => {
            let bound = |p: &Value| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
            object.is_some_and(|p| {
                bound(p)
                    && (a.verb != "create" || p.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some())
            }) && stored.is_none_or(bound)
        }
        // Its serving certificate, asked for in its own name (the API stamps the requester).
        "certificatesigningrequests" => a.verb == "create" && a.subresource.is_empty(),
        "serviceaccounts" => {
            a.verb == "create"
                && a.subresource == "token"
                && object.is_some_and(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy {
            roles: vec![
                json!({"metadata": {"name": "pod-reader", "namespace": "default"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}),
            ],
            cluster_roles: vec![
                json!({"metadata": {"name": "deployer"}, "rules": [{"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "verbs": ["*"]}]}),
            ],
            role_bindings: vec![
                json!({"metadata": {"name": "read-pods", "namespace": "default"}, "subjects": [{"kind": "User", "name": "jane"}], "roleRef": {"kind": "Role", "name": "pod-reader"}}),
            ],
            cluster_role_bindings: vec![
                json!({"metadata": {"name": "ops"}, "subjects": [{"kind": "Group", "name": "ops"}], "roleRef": {"kind": "ClusterRole", "name": "deployer"}}),
            ],
        }
    }

    fn attrs<'a>(verb: &'a str, resource: &str, ns: &'a str) -> Attributes<'a> {
        Attributes { verb, info: kinds::by_resource(resource).unwrap(), subresource: "", namespace: ns, name: "" }
    }

    #[test]
    fn role_bindings_grant_in_their_namespace_only() {
        let p = policy();
        let jane = User { name: "jane".into(), groups: vec![] };
        assert!(p.allows(&jane, &attrs("list", "pods", "default")));
        assert!(!p.allows(&jane, &attrs("list", "pods", "other")));
        assert!(!p.allows(&jane, &attrs("delete", "pods", "default")));
        assert!(!p.allows(&jane, &attrs("list", "deployments", "default")));
        let ops = User { name: "bob".into(), groups: vec!["ops".into()] };
        assert!(p.allows(&ops, &attrs("delete", "deployments", "any")));
        assert!(!p.allows(&ops, &attrs("get", "pods", "any")));
        assert!(p.allows(&User::anonymous_admin(), &attrs("delete", "nodes", "")));
    }

    #[test]
    fn no_escalation_beyond_what_is_held() {
        let p = policy();
        let jane = User { name: "jane".into(), groups: vec![] };
        let reading = vec![json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]})];
        assert!(check_no_escalation(&p, &jane, &reading, "default").is_ok());
        let deleting = vec![json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]})];
        assert!(check_no_escalation(&p, &jane, &deleting, "default").is_err());
        // Resources without a built-in kind (custom ones) are judged by the rule as written,
        // and a built-in resource name in another group is not the built-in kind.
        for unheld in [
            json!({"apiGroups": ["stable.example.com"], "resources": ["crontabs"], "verbs": ["get"]}),
            json!({"apiGroups": ["stable.example.com"], "resources": ["pods"], "verbs": ["get"]}),
        ] {
            assert!(check_no_escalation(&p, &jane, std::slice::from_ref(&unheld), "default").is_err(), "{unheld}");
        }
        let mut p = policy();
        let crontabs =
            json!({"apiGroups": ["stable.example.com"], "resources": ["crontabs"], "verbs": ["get", "list"]});
        p.cluster_roles.push(json!({"metadata": {"name": "cron-reader"}, "rules": [crontabs]}));
        p.cluster_role_bindings
            .push(json!({"metadata": {"name": "cron"}, "subjects": [{"kind": "User", "name": "jane"}],
            "roleRef": {"kind": "ClusterRole", "name": "cron-reader"}}));
        let narrower = json!({"apiGroups": ["stable.example.com"], "resources": ["crontabs"], "verbs": ["get"]});
        assert!(check_no_escalation(&p, &jane, &[narrower], "default").is_ok(), "a held custom rule may be granted");
    }

    #[test]
    fn a_node_asks_for_tokens_of_its_own_pods_only() {
        let node = User { name: "system:node:n1".into(), groups: vec!["system:nodes".into()] };
        let token = Attributes { subresource: "token", ..attrs("create", "serviceaccounts", "default") };
        let on = |n: &str| json!({"spec": {"nodeName": n}});
        assert_eq!(node_restriction(&node, &token, Some(&on("n1")), None), Some(true));
        assert_eq!(node_restriction(&node, &token, Some(&on("n2")), None), Some(false));
        assert_eq!(node_restriction(&node, &token, None, None), Some(false));
        let plain = attrs("create", "serviceaccounts", "default");
        assert_eq!(node_restriction(&node, &plain, Some(&on("n1")), None), Some(false), "not the account itself");
    }

    #[test]
    fn token_file_parses_kubernetes_format() {
        let t = Tokens::parse("# comment\nabc,admin,1,\"system:masters,ops\"\nxyz,jane,2\n").unwrap();
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", "Bearer abc".parse().unwrap());
        let admin = t.authenticate(&md).unwrap();
        assert!(admin.is_superuser() && admin.groups.contains(&"ops".to_string()));
        md.insert("authorization", "Bearer nope".parse().unwrap());
        assert!(matches!(t.authenticate(&md), Err(ApiError::Unauthenticated(_))));
        assert!(matches!(t.authenticate(&tonic::metadata::MetadataMap::new()), Err(ApiError::Unauthenticated(_))));
    }
}
