//! Every write passes authorization and admission whatever its verb: RBAC's no-escalation
//! rule judges a patch by the object it produces, Pod Security and Kubernetes' pod-spec
//! immutability hold on update and patch as on create, and a node may not take another node's
//! pod. Each refusal is checked to have changed nothing. (The real grpcurl, as a user would.)

use serde_json::{json, Value};
use skiff_tests::{grpcurl_call, wait_api_ready, Cluster};

/// A call that must be refused with `code`, its message containing `phrase`.
fn refused(result: (bool, String, String), what: &str, code: &str, phrase: &str) {
    let (ok, out, err) = result;
    assert!(!ok, "{what} must be refused; it answered {out}");
    assert!(err.contains(&format!("Code: {code}")) && err.contains(phrase), "{what}: {err}");
}

fn ok(result: (bool, String, String), what: &str) -> Value {
    let (ok, out, err) = result;
    assert!(ok, "{what}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: {e}: {out}"))
}

#[test]
fn writes_are_authorized_and_admitted_on_what_they_store_whatever_the_verb() {
    let c = Cluster::up(3, &[]);
    let addr = c.masters[1].etcd.clone();
    let admin = c.admin_token();
    wait_api_ready(&admin, &addr);
    let call = |token: &str, method: &str, body: Value| grpcurl_call(token, &addr, method, &body);

    // phase: a user who may patch ClusterRoles cannot patch one into granting what it lacks
    c.add_user("mallory-token", "mallory", &[]);
    ok(
        call(
            &admin,
            "skiff.api.ClusterRoles/Create",
            json!({"metadata": {"name": "role-patcher"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["get", "patch"]}]}),
        ),
        "role-patcher",
    );
    ok(
        call(&admin, "skiff.api.ClusterRoles/Create", json!({"metadata": {"name": "mallory-extra"}, "rules": []})),
        "mallory-extra",
    );
    for role in ["role-patcher", "mallory-extra"] {
        ok(
            call(
                &admin,
                "skiff.api.ClusterRoleBindings/Create",
                json!({"metadata": {"name": role},
            "subjects": [{"kind": "User", "name": "mallory"}],
            "roleRef": {"kind": "ClusterRole", "name": role, "apiGroup": "rbac.authorization.k8s.io"}}),
            ),
            role,
        );
    }
    let everything = json!({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
    refused(
        call(
            "mallory-token",
            "skiff.api.ClusterRoles/Patch",
            json!({"name": "mallory-extra", "patch": everything.to_string()}),
        ),
        "granting */*/* by patch",
        "PermissionDenied",
        "not currently held",
    );
    let stored = ok(call(&admin, "skiff.api.ClusterRoles/Get", json!({"name": "mallory-extra"})), "get");
    assert!(stored.get("rules").is_none_or(|r| r == &json!([])), "the refused patch changed nothing: {stored}");
    refused(
        call("mallory-token", "skiff.api.Secrets/List", json!({"namespace": "kube-system"})),
        "mallory listing Secrets",
        "PermissionDenied",
        "cannot list",
    );
    // A patch within what mallory holds goes through: the check is on the result, not a ban.
    let modest = json!({"rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["get"]}]});
    ok(
        call(
            "mallory-token",
            "skiff.api.ClusterRoles/Patch",
            json!({"name": "mallory-extra", "patch": modest.to_string()}),
        ),
        "a patch granting only what mallory holds",
    );
    // Patching something that does not exist tells a caller without the right nothing.
    c.add_user("nobody-token", "nobody", &[]);
    refused(
        call("nobody-token", "skiff.api.ClusterRoles/Patch", json!({"name": "no-such-role", "patch": "{}"})),
        "a patch of a missing role by a user without patch rights",
        "PermissionDenied",
        "cannot patch",
    );

    // phase: Kubernetes' `bind` and `escalate` verbs: holding `bind` on a role lets a user bind
    // it without holding its rules; holding `escalate` lets a user write rules beyond its own
    ok(
        call(
            &admin,
            "skiff.api.ClusterRoles/Create",
            json!({"metadata": {"name": "secret-reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]}),
        ),
        "secret-reader",
    );
    let grant = |name: &str, user: &str, rules: Value| {
        ok(call(&admin, "skiff.api.ClusterRoles/Create", json!({"metadata": {"name": name}, "rules": rules})), name);
        ok(
            call(
                &admin,
                "skiff.api.ClusterRoleBindings/Create",
                json!({"metadata": {"name": name},
            "subjects": [{"kind": "User", "name": user}],
            "roleRef": {"kind": "ClusterRole", "name": name, "apiGroup": "rbac.authorization.k8s.io"}}),
            ),
            name,
        );
    };
    let rbac = "rbac.authorization.k8s.io";
    grant(
        "binder",
        "binder",
        json!([{"apiGroups": [rbac], "resources": ["rolebindings"], "verbs": ["create"]},
        {"apiGroups": [rbac], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["secret-reader"]}]),
    );
    grant("creator", "creator", json!([{"apiGroups": [rbac], "resources": ["rolebindings"], "verbs": ["create"]}]));
    grant(
        "escalator",
        "escalator",
        json!([{"apiGroups": [rbac], "resources": ["clusterroles"], "verbs": ["create", "escalate"]}]),
    );
    grant(
        "role-creator",
        "role-creator",
        json!([{"apiGroups": [rbac], "resources": ["clusterroles"], "verbs": ["create"]}]),
    );
    for user in ["binder", "creator", "escalator", "role-creator"] {
        c.add_user(&format!("{user}-token"), user, &[]);
    }
    let binding = |name: &str| {
        json!({"metadata": {"name": name, "namespace": "default"},
        "subjects": [{"kind": "User", "name": "friend"}],
        "roleRef": {"kind": "ClusterRole", "name": "secret-reader", "apiGroup": rbac}})
    };
    refused(
        call("creator-token", "skiff.api.RoleBindings/Create", binding("by-creator")),
        "binding a role one does not hold, without bind",
        "PermissionDenied",
        "not currently held",
    );
    ok(call("binder-token", "skiff.api.RoleBindings/Create", binding("by-binder")), "a binding by a user with bind");
    let reader = json!({"metadata": {"name": "escalated"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]});
    refused(
        call("role-creator-token", "skiff.api.ClusterRoles/Create", reader.clone()),
        "a role beyond one's own, without escalate",
        "PermissionDenied",
        "not currently held",
    );
    ok(call("escalator-token", "skiff.api.ClusterRoles/Create", reader), "a role beyond one's own, with escalate");

    // phase: a pod in a baseline namespace cannot be patched or updated into a privileged one
    ok(
        call(
            &admin,
            "skiff.api.Namespaces/Create",
            json!({"metadata": {"name": "secure",
        "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}),
        ),
        "namespace",
    );
    let pod = ok(
        call(
            &admin,
            "skiff.api.Pods/Create",
            json!({"metadata": {"name": "app", "namespace": "secure"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}),
        ),
        "a baseline pod",
    );
    let privileged = json!({"spec": {"hostNetwork": true,
        "containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": true}}]}});
    let immutable = "pod updates may not change fields other than";
    refused(
        call(
            &admin,
            "skiff.api.Pods/Patch",
            json!({"namespace": "secure", "name": "app", "patch": privileged.to_string()}),
        ),
        "a privileged pod by patch",
        "InvalidArgument",
        immutable,
    );
    // Updates without a resourceVersion (the scheduler writes the pod's status meanwhile), so
    // the refusal is the rule's and not a conflict.
    let current = || {
        let mut pod = ok(call(&admin, "skiff.api.Pods/Get", json!({"namespace": "secure", "name": "app"})), "get");
        pod["metadata"].as_object_mut().unwrap().remove("resourceVersion");
        pod
    };
    let mut updated = current();
    updated["spec"]["hostNetwork"] = json!(true);
    refused(call(&admin, "skiff.api.Pods/Update", updated), "hostNetwork by update", "InvalidArgument", immutable);
    let mut moved = current();
    moved["spec"]["nodeName"] = json!("elsewhere");
    refused(call(&admin, "skiff.api.Pods/Update", moved), "nodeName by update", "InvalidArgument", immutable);
    assert_eq!(current()["spec"], pod["spec"], "refused updates changed nothing");
    // What Kubernetes lets change does change: the image, and labels.
    let image =
        json!({"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}, "metadata": {"labels": {"v": "2"}}});
    let patched = ok(
        call(&admin, "skiff.api.Pods/Patch", json!({"namespace": "secure", "name": "app", "patch": image.to_string()})),
        "an image patch",
    );
    assert_eq!(patched["spec"]["containers"][0]["image"], "busybox:1.37");

    // phase: a node cannot take another node's pod, by update, status update or patch
    for node in ["node-a", "node-b"] {
        ok(call(&admin, "skiff.api.Nodes/Create", json!({"metadata": {"name": node}})), node);
    }
    c.add_user("node-a-token", "system:node:node-a", &["system:nodes"]);
    let theirs = ok(
        call(
            &admin,
            "skiff.api.Pods/Create",
            json!({"metadata": {"name": "on-b", "namespace": "default"},
        "spec": {"nodeName": "node-b", "containers": [{"name": "c", "image": "busybox:1.36"}]}}),
        ),
        "a pod on node-b",
    );
    let mut claimed = ok(call(&admin, "skiff.api.Pods/Get", json!({"namespace": "default", "name": "on-b"})), "get");
    claimed["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    claimed["spec"]["nodeName"] = json!("node-a");
    claimed["status"] = json!({"phase": "Running", "podIP": "10.244.0.66"});
    let denied = "cannot update resource \"pods";
    refused(
        call("node-a-token", "skiff.api.Pods/Update", claimed.clone()),
        "re-binding by update",
        "PermissionDenied",
        denied,
    );
    refused(
        call("node-a-token", "skiff.api.Pods/UpdateStatus", claimed),
        "another node's pod status",
        "PermissionDenied",
        denied,
    );
    refused(
        call(
            "node-a-token",
            "skiff.api.Pods/Patch",
            json!({"namespace": "default", "name": "on-b", "patch": json!({"spec": {"nodeName": "node-a"}}).to_string()}),
        ),
        "re-binding by patch",
        "PermissionDenied",
        "cannot patch resource \"pods\"",
    );
    refused(
        call(
            "node-a-token",
            "skiff.api.ServiceAccountTokens/Create",
            json!({"namespace": "default", "podName": "on-b"}),
        ),
        "a token for another node's pod",
        "PermissionDenied",
        "cannot create",
    );
    // phase: a node reads only the Secrets and ConfigMaps its own pods use (and Secrets that
    // Ingresses name for TLS: nodes run the ingress controller), and lists neither
    for (kind, name) in [
        ("Secrets", "for-a"),
        ("Secrets", "for-b"),
        ("Secrets", "site-cert"),
        ("ConfigMaps", "conf-a"),
        ("ConfigMaps", "conf-other"),
    ] {
        ok(
            call(
                &admin,
                &format!("skiff.api.{kind}/Create"),
                json!({"metadata": {"name": name, "namespace": "default"}}),
            ),
            name,
        );
    }
    ok(
        call(
            &admin,
            "skiff.api.Pods/Create",
            json!({"metadata": {"name": "uses-on-a", "namespace": "default"},
        "spec": {"nodeName": "node-a", "volumes": [{"name": "s", "secret": {"secretName": "for-a"}}],
            "containers": [{"name": "c", "image": "busybox:1.36",
                "env": [{"name": "C", "valueFrom": {"configMapKeyRef": {"name": "conf-a", "key": "k"}}}]}]}}),
        ),
        "pod on a",
    );
    ok(
        call(
            &admin,
            "skiff.api.Pods/Create",
            json!({"metadata": {"name": "uses-on-b", "namespace": "default"},
        "spec": {"nodeName": "node-b", "volumes": [{"name": "s", "secret": {"secretName": "for-b"}}],
            "containers": [{"name": "c", "image": "busybox:1.36"}]}}),
        ),
        "pod on b",
    );
    ok(
        call(
            &admin,
            "skiff.api.Ingresses/Create",
            json!({"metadata": {"name": "site", "namespace": "default"},
        "spec": {"tls": [{"hosts": ["site.test"], "secretName": "site-cert"}],
            "rules": [{"host": "site.test", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
        ),
        "ingress",
    );
    let node_get = |kind: &str, name: &str| {
        call("node-a-token", &format!("skiff.api.{kind}/Get"), json!({"namespace": "default", "name": name}))
    };
    ok(node_get("Secrets", "for-a"), "node-a reading its pod's Secret");
    ok(node_get("ConfigMaps", "conf-a"), "node-a reading its pod's ConfigMap");
    ok(node_get("Secrets", "site-cert"), "node-a reading an Ingress's TLS Secret");
    refused(node_get("Secrets", "for-b"), "node-a reading node-b's pod's Secret", "PermissionDenied", "cannot get");
    refused(
        node_get("ConfigMaps", "conf-other"),
        "node-a reading an unused ConfigMap",
        "PermissionDenied",
        "cannot get",
    );
    refused(
        call("node-a-token", "skiff.api.Secrets/List", json!({"namespace": "default"})),
        "node-a listing Secrets",
        "PermissionDenied",
        "cannot list",
    );
    ok(call("node-a-token", "skiff.api.Services/List", json!({"namespace": "default"})), "other kinds stay readable");

    let after = ok(call(&admin, "skiff.api.Pods/Get", json!({"namespace": "default", "name": "on-b"})), "get");
    assert_eq!(after["spec"]["nodeName"], "node-b");
    assert_eq!(after["spec"], theirs["spec"], "nothing node-a tried changed the spec");
    assert_ne!(after["status"]["podIP"], "10.244.0.66", "nor the status: {}", after["status"]);
}
