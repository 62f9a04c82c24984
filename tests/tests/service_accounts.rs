//! Service accounts: every namespace gets a `default` account; each pod gets a token for its
//! account at `/var/run/secrets/kubernetes.io/serviceaccount/token`, which authenticates as
//! `system:serviceaccount:<ns>:<name>` under RBAC until the pod is gone; a pod naming an account
//! that does not exist is refused.

use serde_json::{json, Value};
use skiff_tests::{wait_for, Cluster};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// `skiff ARGS` with `token` as the bearer instead of the admin's.
fn ctl_as(c: &Cluster, token: &str, args: &[&str]) -> std::process::Output {
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(c.dir.path().join("client.json")).unwrap()).unwrap();
    for u in cfg["users"].as_array_mut().unwrap() {
        u["token"] = json!(token);
    }
    let path = c.dir.path().join("client-sa.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    Command::new(skiff_tests::skiff_bin()).env("SKIFF_CONFIG", &path).args(args).output().unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// grpcurl (over the cluster's TLS) with `token`.
fn grpcurl(c: &Cluster, token: &str, method: &str, body: &Value) -> (bool, String) {
    let out = Command::new("grpcurl")
        .args(skiff_tests::grpcurl_transport(&c.master(1).api))
        .args(["-max-time", "20", "-H", &format!("authorization: Bearer {token}")])
        .args(["-d", &body.to_string(), &c.master(1).api, method])
        .output()
        .expect("grpcurl is installed (scripts/setup)");
    (out.status.success(), text(&out))
}

#[test]
fn pods_get_a_token_for_their_service_account_that_rbac_governs_and_that_dies_with_the_pod() {
    let c = Cluster::with_nodes(1, 1, &[]);
    c.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    wait_for(T, "a default ServiceAccount in the new namespace", || {
        c.ctl(&["get", "sa", "default", "-n", "shop"]).status.success().then_some(())
    });

    c.apply_yaml(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: reader, namespace: shop}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: shop}\nspec:\n  serviceAccountName: reader\n  \
         terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: busybox:test\n    \
         command: [sh, -c, 'cat /var/run/secrets/kubernetes.io/serviceaccount/token; echo; \
         cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; sleep 3600']\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: quiet, namespace: shop}\nspec:\n  \
         automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    \
         image: busybox:test\n    command: [sh, -c, 'ls /var/run/secrets/kubernetes.io/serviceaccount/; sleep 3600']\n",
    );
    let token = wait_for(T, "the pod printing its token and namespace", || {
        let out = c.ctl(&["logs", "app", "-n", "shop"]);
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = log.lines().collect();
        (lines.len() >= 2 && lines[1] == "shop").then(|| lines[0].to_string())
    });
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let quiet = wait_for(T, "the pod without a token listing its directory", || {
        let out = c.ctl(&["logs", "quiet", "-n", "shop"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()).filter(|s| !s.is_empty())
    });
    assert!(quiet.contains("namespace") && !quiet.contains("token"), "automountServiceAccountToken: false: {quiet}");
    // The default account is what a pod runs as when it names none.
    let q = c.ctl_ok(&["get", "pod", "quiet", "-n", "shop", "-o", "jsonpath={.spec.serviceAccountName}"]);
    assert_eq!(q.trim(), "default");

    // The token is the account, and RBAC decides what it may do.
    let out = ctl_as(&c, &token, &["get", "pods", "-n", "shop"]);
    assert!(!out.status.success(), "no role yet: {}", text(&out));
    assert!(text(&out).contains("system:serviceaccount:shop:reader"), "{}", text(&out));
    c.apply_yaml(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pod-reader, namespace: shop}\n\
         rules: [{apiGroups: [\"\"], resources: [pods], verbs: [get, list]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: reader-reads, namespace: shop}\n\
         subjects: [{kind: ServiceAccount, name: reader, namespace: shop}]\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}\n",
    );
    let listed = wait_for(T, "the bound account listing pods", || {
        let out = ctl_as(&c, &token, &["get", "pods", "-n", "shop"]);
        out.status.success().then(|| text(&out))
    });
    assert!(listed.contains("app") && listed.contains("quiet"), "{listed}");
    let out = ctl_as(&c, &token, &["get", "secrets", "-n", "shop"]);
    assert!(!out.status.success() && text(&out).contains("forbidden"), "secrets are not in the role: {}", text(&out));

    // The account cannot mint tokens (for another pod) without `create serviceaccounts/token`.
    let (ok, said) =
        grpcurl(&c, &token, "skiff.api.ServiceAccountTokens/Create", &json!({"namespace": "shop", "podName": "quiet"}));
    assert!(!ok && said.contains("PermissionDenied") && said.contains("serviceaccounts"), "{said}");
    // A forged token (another key) is refused.
    let (head, rest) = token.split_once('.').unwrap();
    let forged = format!("{head}.{}.AAAA", rest.split_once('.').unwrap().0);
    let out = ctl_as(&c, &forged, &["get", "pods", "-n", "shop"]);
    assert!(text(&out).contains("Unauthorized"), "{}", text(&out));

    // A pod naming an account that does not exist is refused, and nothing is stored.
    let ghost = c.dir.path().join("ghost.yaml");
    std::fs::write(
        &ghost,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ghost, namespace: shop}\nspec:\n  serviceAccountName: missing\n  \
         containers: [{name: c, image: busybox:test}]\n",
    )
    .unwrap();
    let out = c.ctl(&["create", "-f", ghost.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("serviceaccount \"missing\" not found"), "{}", text(&out));
    assert!(!c.ctl(&["get", "pod", "ghost", "-n", "shop"]).status.success(), "nothing stored");

    // The token dies with its pod.
    c.ctl_ok(&["delete", "pod", "app", "-n", "shop"]);
    let refused = wait_for(T, "the token refused once its pod is gone", || {
        let out = ctl_as(&c, &token, &["get", "pods", "-n", "shop"]);
        (!out.status.success() && text(&out).contains("no longer exists")).then(|| text(&out))
    });
    assert!(refused.contains("Unauthorized"), "{refused}");
}
