//! The Skiff API over gRPC: the real grpcurl against a 3-master cluster, manifests from the
//! Kubernetes documentation round-tripping through the API, a table of bad input, and a watch
//! on a follower that survives a SIGKILL of the leader without a gap or a duplicate.

use serde_json::{json, Value};
use skiff_proto::api::objects_client::ObjectsClient;
use skiff_proto::api::{RawRequest, WatchRequest};
use skiff_tests::{bearer, channel, grpcurl, grpcurl_call, runtime, status, wait_api_ready, Cluster};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

#[test]
fn grpcurl_lists_describes_creates_gets_lists_and_deletes() {
    let c = Cluster::up(3, &[]);
    let (a1, a2, a3) = (c.masters[0].etcd.clone(), c.masters[1].etcd.clone(), c.masters[2].etcd.clone());
    let t = c.admin_token();
    wait_api_ready(&t, &a1);

    // phase: reflection: list and describe
    let (ok, services, err) = grpcurl(&t, &a2, &["list"]);
    assert!(ok, "{err}");
    for s in
        ["skiff.api.Pods", "skiff.api.Deployments", "skiff.api.Namespaces", "etcdserverpb.KV", "grpc.health.v1.Health"]
    {
        assert!(services.lines().any(|l| l == s), "{s} missing from:\n{services}");
    }
    let (ok, desc, err) = grpcurl(&t, &a2, &["describe", "skiff.api.Deployments"]);
    assert!(
        ok && desc.contains("rpc Create ( .skiff.api.Deployment ) returns ( .skiff.api.Deployment )"),
        "{desc}{err}"
    );
    let (ok, desc, _) = grpcurl(&t, &a2, &["describe", "skiff.api.DeploymentSpec"]);
    assert!(ok && desc.contains("revision_history_limit"), "{desc}");

    // phase: create a namespace and a deployment from JSON, through different masters
    let (ok, out, err) = grpcurl_call(&t, &a1, "skiff.api.Namespaces/Create", &json!({"metadata": {"name": "team-a"}}));
    assert!(ok, "{err}");
    assert!(out.contains("\"phase\": \"Active\""), "{out}");
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a", "labels": {"app": "web", "tier": "front"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "busybox:1.36", "ports": [{"containerPort": 8080}]}]}}}
    });
    let (ok, out, err) = grpcurl_call(&t, &a2, "skiff.api.Deployments/Create", &deployment);
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%", "defaulted: {out}");
    assert!(!created["metadata"]["uid"].as_str().unwrap_or_default().is_empty());
    let other = json!({"metadata": {"name": "db", "namespace": "team-a", "labels": {"app": "db"}},
        "spec": {"selector": {"matchLabels": {"app": "db"}}, "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "busybox:1.36"}]}}}});
    assert!(grpcurl_call(&t, &a3, "skiff.api.Deployments/Create", &other).0);

    // phase: get and list with label selectors (equality and set-based)
    let (ok, out, _) =
        grpcurl_call(&t, &a3, "skiff.api.Deployments/Get", &json!({"namespace": "team-a", "name": "web"}));
    assert!(ok);
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["metadata"]["uid"], created["metadata"]["uid"]);
    for (selector, want) in [
        ("app=web", vec!["web"]),
        ("app in (web,db)", vec!["db", "web"]),
        ("tier!=front", vec!["db"]),
        ("!tier", vec!["db"]),
    ] {
        let (ok, out, err) = grpcurl_call(
            &t,
            &a1,
            "skiff.api.Deployments/List",
            &json!({"namespace": "team-a", "labelSelector": selector}),
        );
        assert!(ok, "{err}");
        let list: Value = serde_json::from_str(&out).unwrap();
        let names: Vec<&str> = list["items"]
            .as_array()
            .map(|a| a.iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(names, want, "selector {selector}: {out}");
    }

    // phase: delete
    let (ok, _, err) =
        grpcurl_call(&t, &a1, "skiff.api.Deployments/Delete", &json!({"namespace": "team-a", "name": "web"}));
    assert!(ok, "{err}");
    let (ok, _, err) =
        grpcurl_call(&t, &a2, "skiff.api.Deployments/Get", &json!({"namespace": "team-a", "name": "web"}));
    assert!(!ok && err.contains("NotFound") && err.contains("deployments.apps \"web\" not found"), "{err}");
}

/// Fields Kubernetes' Go types declare as plain bools with `omitempty`: false is not written.
const OMITTED_WHEN_FALSE: [&str; 1] = ["globalDefault"];

/// Every leaf of `want` is present and equal in `got`.
fn contains(got: &Value, want: &Value, path: &str) -> Result<(), String> {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                // Kubernetes omits these when false too (plain bools with omitempty).
                if wv == &Value::Bool(false) && !g.contains_key(k) && OMITTED_WHEN_FALSE.contains(&k.as_str()) {
                    continue;
                }
                let gv = g.get(k).ok_or_else(|| format!("{path}.{k} missing"))?;
                contains(gv, wv, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => {
            g.iter().zip(w).enumerate().try_for_each(|(i, (gv, wv))| contains(gv, wv, &format!("{path}[{i}]")))
        }
        _ if got == want => Ok(()),
        _ => Err(format!("{path}: sent {want}, got back {got}")),
    }
}

#[test]
fn kubernetes_manifests_round_trip_through_the_api() {
    let c = Cluster::up(3, &[]);
    let addr = c.masters[1].etcd.clone();
    let t = c.admin_token();
    wait_api_ready(&t, &addr);
    let rt = runtime();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 15, "fixture folder holds the manifests");
    let mut checked = 0;
    // Namespaces first: other manifests may live in them.
    files.sort_by_key(|f| !f.to_string_lossy().contains("namespace"));
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let sent: Value = serde::Deserialize::deserialize(doc).unwrap();
            let kind = sent["kind"].as_str().unwrap().to_string();
            let resource = skiff_tests::resource_of(&kind);
            let back: Value = rt.block_on(async {
                let mut objects = ObjectsClient::with_interceptor(channel(&addr).await.unwrap(), bearer(&t));
                let created = objects
                    .create(RawRequest { resource: resource.clone(), json: sent.to_string(), ..Default::default() })
                    .await
                    .unwrap_or_else(|e| panic!("{}: create {kind}: {e}", file.display()));
                let created: Value = serde_json::from_str(&created.into_inner().json).unwrap();
                let got = objects
                    .get(RawRequest {
                        resource,
                        namespace: created["metadata"]["namespace"].as_str().unwrap_or_default().into(),
                        name: created["metadata"]["name"].as_str().unwrap().into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                serde_json::from_str(&got.into_inner().json).unwrap()
            });
            contains(&back, &sent, &kind).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            // What the server added is server-set metadata, status, or a Kubernetes default.
            for field in ["uid", "resourceVersion", "creationTimestamp"] {
                assert!(back["metadata"][field].is_string(), "{kind}: {field} set by the server");
            }
            // YAML out parses back to the same object.
            let yaml = serde_yaml::to_string(&back).unwrap();
            assert_eq!(serde_yaml::from_str::<Value>(&yaml).unwrap(), back);
            checked += 1;
        }
    }
    assert!(checked >= 17, "checked {checked} manifests");

    // Kubernetes' documentation examples: each created, read back unchanged, then deleted
    // (several share a name); every refusal is collected and reported together.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/k8s-docs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    rt.block_on(async {
        let mut objects = ObjectsClient::with_interceptor(channel(&addr).await.unwrap(), bearer(&t));
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "docs"}});
        objects.create(RawRequest { resource: "namespaces".into(), json: ns.to_string(), ..Default::default() }).await
    })
    .unwrap();
    let mut refused = Vec::new();
    let mut applied = 0;
    for file in &files {
        let sent: Value = serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let kind = sent["kind"].as_str().unwrap().to_string();
        let resource = skiff_tests::resource_of(&kind);
        let outcome: Result<(), String> = rt.block_on(async {
            let mut objects = ObjectsClient::with_interceptor(channel(&addr).await.unwrap(), bearer(&t));
            // Into their own namespace, as `kubectl apply -n docs` puts them, unless they name one.
            let req = RawRequest {
                resource: resource.clone(),
                namespace: sent["metadata"]["namespace"].as_str().unwrap_or("docs").into(),
                json: sent.to_string(),
                ..Default::default()
            };
            let created = objects.create(req).await.map_err(|e| format!("create: {}", e.message()))?;
            let created: Value = serde_json::from_str(&created.into_inner().json).unwrap();
            let named = RawRequest {
                resource,
                namespace: created["metadata"]["namespace"].as_str().unwrap_or_default().into(),
                name: created["metadata"]["name"].as_str().unwrap().into(),
                ..Default::default()
            };
            let got = objects.get(named.clone()).await.map_err(|e| format!("get: {}", e.message()))?;
            let back: Value = serde_json::from_str(&got.into_inner().json).unwrap();
            let same = contains(&back, &sent, &kind);
            objects
                .delete(RawRequest { grace_period_seconds: Some(0), ..named })
                .await
                .map_err(|e| format!("delete: {}", e.message()))?;
            same
        });
        match outcome {
            Ok(()) => applied += 1,
            Err(e) => refused.push(format!("{}: {e}", file.display())),
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {} documentation examples refused:\n{}",
        refused.len(),
        files.len(),
        refused.join("\n")
    );
    assert!(applied >= 30, "applied {applied} documentation examples");
}

#[test]
fn bad_input_gets_specific_codes_and_leaves_the_store_unchanged() {
    let c = Cluster::up(3, &[]);
    let addr = c.masters[0].etcd.clone();
    let t = c.admin_token();
    wait_api_ready(&t, &addr);
    let rt = runtime();
    let pod = |name: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}});
    // The reference object is a ConfigMap: no controller writes to it, so any revision change
    // afterwards would come from the bad input (a pod would be marked Unschedulable by the
    // leader's scheduler, legitimately).
    let cm =
        |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}});
    let (existing_rv, before) = rt.block_on(async {
        let mut o = ObjectsClient::with_interceptor(channel(&addr).await.unwrap(), bearer(&t));
        let created = o
            .create(RawRequest {
                resource: "configmaps".into(),
                json: cm("existing").to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
        let created: Value = serde_json::from_str(&created.into_inner().json).unwrap();
        let rv = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        // Move the object on so `rv` is stale.
        let mut newer = created.clone();
        newer["metadata"]["labels"] = json!({"touched": "yes"});
        o.update(RawRequest { resource: "configmaps".into(), json: newer.to_string(), ..Default::default() })
            .await
            .unwrap();
        let before = c.revision(&addr).await.unwrap();
        (rv, before)
    });
    let huge = "x".repeat(3 * 1024 * 1024 + 10);
    let mut stale = cm("existing");
    stale["metadata"]["resourceVersion"] = json!(existing_rv);
    let mut quota_free_big = pod("big");
    quota_free_big["metadata"]["annotations"] = json!({"blob": huge});
    let cases: Vec<(&str, &str, Value, Code, &str)> = vec![
        ("malformed JSON", "pods", Value::String("{not json".into()), Code::InvalidArgument, "not valid JSON"),
        ("unknown kind", "podz", pod("x"), Code::InvalidArgument, "doesn't have a resource type \"podz\""),
        (
            "unknown field",
            "pods",
            json!({"metadata": {"name": "u"}, "spec": {"containerz": []}}),
            Code::InvalidArgument,
            "spec.containerz: unknown field `containerz`",
        ),
        (
            "invalid name",
            "pods",
            pod("Not_Valid"),
            Code::InvalidArgument,
            "metadata.name: Invalid value: \"Not_Valid\"",
        ),
        (
            "duplicate containers",
            "pods",
            json!({"metadata": {"name": "d"}, "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "a", "image": "x"}]}}),
            Code::InvalidArgument,
            "spec.containers[1].name: Duplicate value",
        ),
        (
            "missing namespace",
            "pods",
            json!({"metadata": {"name": "m", "namespace": "nope"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
            Code::NotFound,
            "namespaces \"nope\" not found",
        ),
        ("oversized object", "pods", quota_free_big, Code::ResourceExhausted, "too large"),
        ("already exists", "configmaps", cm("existing"), Code::AlreadyExists, "configmaps \"existing\" already exists"),
    ];
    rt.block_on(async {
        let mut o = ObjectsClient::with_interceptor(channel(&addr).await.unwrap(), bearer(&t))
            .max_encoding_message_size(16 << 20);
        for (what, resource, body, code, phrase) in cases {
            let json = match &body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let err =
                o.create(RawRequest { resource: resource.into(), json, ..Default::default() }).await.expect_err(what);
            assert_eq!(err.code(), code, "{what}: {err:?}");
            assert!(err.message().contains(phrase), "{what}: {:?} lacks {phrase:?}", err.message());
        }
        let err = o
            .update(RawRequest { resource: "configmaps".into(), json: stale.to_string(), ..Default::default() })
            .await
            .expect_err("stale update");
        assert_eq!(err.code(), Code::Aborted, "{err:?}");
        assert!(err.message().contains(&format!("resourceVersion {existing_rv}, current")), "{}", err.message());
        // phase: nothing changed
        let after = c.revision(&addr).await.unwrap();
        assert_eq!(after, before, "the store revision moved on bad input");
    });
}

#[test]
fn a_watch_on_a_follower_survives_a_leader_kill_without_gap_or_duplicate() {
    let c = Cluster::up(3, &[]);
    let all: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    let leader = c.wait_leader(&all, Duration::from_secs(10));
    let follower = *all.iter().find(|&&id| id != leader).unwrap();
    let other = *all.iter().find(|&&id| id != leader && id != follower).unwrap();
    let (f_addr, l_addr, o_addr) =
        (c.master(follower).etcd.clone(), c.master(leader).etcd.clone(), c.master(other).etcd.clone());
    let t = c.admin_token();
    wait_api_ready(&t, &f_addr);
    let rt = runtime();
    let cm = |name: &str, v: i32| json!({"metadata": {"name": name}, "data": {"v": v.to_string()}});
    rt.block_on(async {
        use skiff_proto::api::config_maps_client::ConfigMapsClient;
        let mut objects = ObjectsClient::with_interceptor(channel(&l_addr).await.unwrap(), bearer(&t));
        let mut w = ConfigMapsClient::with_interceptor(channel(&f_addr).await.unwrap(), bearer(&t));
        let start = status(&f_addr).await.unwrap().header.unwrap().revision;
        let mut stream = w
            .watch(WatchRequest {
                namespace: "default".into(),
                resource_version: start.to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // phase: changes through the leader and the other follower
        let mut expected = Vec::new();
        for i in 0..10 {
            let via = if i % 2 == 0 {
                &mut objects
            } else {
                &mut ObjectsClient::with_interceptor(channel(&o_addr).await.unwrap(), bearer(&t))
            };
            via.create(RawRequest {
                resource: "configmaps".into(),
                json: cm(&format!("cm-{i}"), i).to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
            expected.push(format!("ADDED cm-{i}"));
        }
        let mut seen = Vec::new();
        let mut last_rv = String::new();
        while seen.len() < expected.len() {
            let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("event in time")
                .unwrap()
                .unwrap();
            let obj = ev.object.unwrap();
            let meta = obj.metadata.unwrap();
            last_rv = meta.resource_version.clone();
            seen.push(format!("{} {}", ev.r#type, meta.name));
        }
        assert_eq!(seen, expected);

        // phase: kill the leader; resume the watch from the last resourceVersion on the follower
        drop(stream);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.master(leader).pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let mut w = ConfigMapsClient::with_interceptor(channel(&f_addr).await.unwrap(), bearer(&t));
        let mut stream = w
            .watch(WatchRequest { namespace: "default".into(), resource_version: last_rv, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let mut survivors = ObjectsClient::with_interceptor(channel(&o_addr).await.unwrap(), bearer(&t));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut expected = Vec::new();
        for i in 10..15 {
            loop {
                let r = survivors
                    .create(RawRequest {
                        resource: "configmaps".into(),
                        json: cm(&format!("cm-{i}"), i).to_string(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => break,
                    Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) if e.code() == Code::AlreadyExists => break,
                    Err(e) => panic!("create after failover: {e}"),
                }
            }
            expected.push(format!("ADDED cm-{i}"));
        }
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("event in time")
                .unwrap()
                .unwrap();
            seen.push(format!("{} {}", ev.r#type, ev.object.unwrap().metadata.unwrap().name));
        }
        assert_eq!(seen, expected, "resumed watch: no gap, no duplicate");
    });
}

#[test]
fn unauthenticated_and_unauthorized_calls_are_refused() {
    let c = Cluster::up(3, &[]);
    let addr = c.masters[2].etcd.clone();
    let admin = c.admin_token();
    wait_api_ready(&admin, &addr);

    // phase: no token, a wrong token
    let (ok, _, err) = grpcurl_call("", &addr, "skiff.api.Pods/List", &json!({"namespace": "default"}));
    assert!(!ok && err.contains("Code: Unauthenticated"), "{err}");
    let (ok, _, err) = grpcurl_call("not-a-token", &addr, "skiff.api.Pods/List", &json!({"namespace": "default"}));
    assert!(!ok && err.contains("Code: Unauthenticated") && err.contains("unknown bearer token"), "{err}");

    // phase: a known user without permissions is denied, naming user, verb, resource, namespace
    c.add_user("jane-token", "jane", &[]);
    let (ok, _, err) = grpcurl_call("jane-token", &addr, "skiff.api.Pods/List", &json!({"namespace": "default"}));
    assert!(!ok && err.contains("Code: PermissionDenied"), "{err}");
    assert!(
        err.contains(r#"User "jane" cannot list resource "pods" in API group "" in the namespace "default""#),
        "{err}"
    );

    // phase: the admin grants pod-reader in default (the Kubernetes RBAC example)
    let rbac =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/manifests/rbac.yaml")).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&rbac) {
        let obj: Value = serde::Deserialize::deserialize(doc).unwrap();
        let method = format!("skiff.api.{}s/Create", obj["kind"].as_str().unwrap());
        let (ok, _, err) = grpcurl_call(&admin, &addr, &method, &obj);
        assert!(ok, "{method}: {err}");
    }
    let (ok, _, err) = grpcurl_call("jane-token", &addr, "skiff.api.Pods/List", &json!({"namespace": "default"}));
    assert!(ok, "jane may list pods in default now: {err}");
    let (ok, _, err) = grpcurl_call("jane-token", &addr, "skiff.api.Pods/List", &json!({"namespace": "kube-system"}));
    assert!(!ok && err.contains("PermissionDenied") && err.contains("kube-system"), "{err}");
    let (ok, _, err) =
        grpcurl_call("jane-token", &addr, "skiff.api.Pods/Delete", &json!({"namespace": "default", "name": "x"}));
    assert!(!ok && err.contains("PermissionDenied") && err.contains("cannot delete"), "{err}");

    // phase: no escalation: a user allowed to write Roles cannot grant what it does not hold
    c.add_user("rolemaker-token", "rolemaker", &[]);
    let maker_role = json!({"metadata": {"name": "role-maker", "namespace": "default"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create"]}]});
    let maker_binding = json!({"metadata": {"name": "role-maker", "namespace": "default"},
        "subjects": [{"kind": "User", "name": "rolemaker"}], "roleRef": {"kind": "Role", "name": "role-maker", "apiGroup": "rbac.authorization.k8s.io"}});
    assert!(grpcurl_call(&admin, &addr, "skiff.api.Roles/Create", &maker_role).0);
    assert!(grpcurl_call(&admin, &addr, "skiff.api.RoleBindings/Create", &maker_binding).0);
    let greedy = json!({"metadata": {"name": "pod-killer", "namespace": "default"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]});
    let (ok, _, err) = grpcurl_call("rolemaker-token", &addr, "skiff.api.Roles/Create", &greedy);
    assert!(!ok && err.contains("PermissionDenied") && err.contains("not currently held"), "{err}");
    let (ok, out, _) = grpcurl_call(&admin, &addr, "skiff.api.Roles/List", &json!({"namespace": "default"}));
    assert!(ok && !out.contains("pod-killer"), "the refused role was not created: {out}");
}

#[test]
fn admission_enforces_quota_even_under_concurrent_creates_and_pod_security() {
    let c = Cluster::up(3, &[]);
    let addrs: Vec<String> = c.masters.iter().map(|m| m.etcd.clone()).collect();
    let t = c.admin_token();
    wait_api_ready(&t, &addrs[0]);
    let create = |addr: &str, resource: &str, body: Value| {
        let rt = runtime();
        let t = t.clone();
        let addr = addr.to_string();
        let resource = resource.to_string();
        std::thread::spawn(move || {
            rt.block_on(async {
                let mut o = ObjectsClient::with_interceptor(channel(&addr).await.unwrap(), bearer(&t));
                o.create(RawRequest { resource, json: body.to_string(), ..Default::default() }).await.map(|_| ())
            })
        })
    };
    let ns = |name: &str, labels: Value| json!({"metadata": {"name": name, "labels": labels}});
    create(&addrs[0], "namespaces", ns("quota", json!({}))).join().unwrap().unwrap();
    create(&addrs[0], "namespaces", ns("secure", json!({"pod-security.kubernetes.io/enforce": "baseline"})))
        .join()
        .unwrap()
        .unwrap();
    let quota = json!({"metadata": {"name": "compute", "namespace": "quota"}, "spec": {"hard": {"pods": "4", "requests.cpu": "2"}}});
    create(&addrs[1], "resourcequotas", quota).join().unwrap().unwrap();
    let pod = |ns: &str, name: &str, extra: Value| {
        let mut p = json!({"metadata": {"name": name, "namespace": ns}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": {"cpu": "100m"}}}]}});
        object_merge(&mut p, &extra);
        p
    };

    // phase: six creates at once through three masters against a limit of four pods
    let handles: Vec<_> =
        (0..6).map(|i| create(&addrs[i % 3], "pods", pod("quota", &format!("p{i}"), json!({})))).collect();
    let results: Vec<Result<(), tonic::Status>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 4, "exactly the quota's four pods are admitted: {results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            e.code() == Code::ResourceExhausted
                && e.message().contains("exceeded quota: compute")
                && e.message().contains("limited: pods=4"),
            "{e:?}"
        );
    }
    // A CPU request over what is left is refused, naming the resource.
    let big = pod(
        "quota",
        "big",
        json!({"spec": {"containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": {"cpu": "3"}}}]}}),
    );
    let err = create(&addrs[2], "pods", big).join().unwrap().unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    // phase: Pod Security baseline in the labelled namespace
    let privileged = pod(
        "secure",
        "root",
        json!({"spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": true}}]}}),
    );
    let err = create(&addrs[0], "pods", privileged).join().unwrap().unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("violates PodSecurity \"baseline:latest\"")
            && err.message().contains("hostNetwork=true")
            && err.message().contains("privileged"),
        "{}",
        err.message()
    );
    create(&addrs[0], "pods", pod("secure", "plain", json!({}))).join().unwrap().expect("a baseline pod is admitted");
}

/// JSON merge of `extra` into `target` (objects merge, everything else replaces).
fn object_merge(target: &mut Value, extra: &Value) {
    match (target, extra) {
        (Value::Object(t), Value::Object(e)) => {
            for (k, v) in e {
                object_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, e) => *t = e.clone(),
    }
}

#[test]
fn patch_paging_finalizers_cascades_and_namespace_deletion() {
    let c = Cluster::up(3, &[]);
    let addr = c.masters[1].etcd.clone();
    let t = c.admin_token();
    wait_api_ready(&t, &addr);
    let call = |method: &str, body: Value| -> Value {
        let (ok, out, err) = grpcurl_call(&t, &addr, method, &body);
        assert!(ok, "{method} {body}: {err}");
        serde_json::from_str(&out).unwrap_or(Value::Null)
    };
    let fails = |method: &str, body: Value| -> String {
        let (ok, _, err) = grpcurl_call(&t, &addr, method, &body);
        assert!(!ok, "{method} {body} should fail");
        err
    };
    call("skiff.api.Namespaces/Create", json!({"metadata": {"name": "life"}}));

    // phase: JSON merge patch adds and removes labels, bumps resourceVersion
    let cm = call(
        "skiff.api.ConfigMaps/Create",
        json!({"metadata": {"name": "cfg", "namespace": "life", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}}),
    );
    let patched = call(
        "skiff.api.ConfigMaps/Patch",
        json!({"namespace": "life", "name": "cfg", "patch": r#"{"metadata":{"labels":{"a":"9","b":null}}}"#}),
    );
    assert_eq!(patched["metadata"]["labels"], json!({"a": "9"}));
    assert_eq!(patched["data"], json!({"k": "v"}));
    assert_ne!(patched["metadata"]["resourceVersion"], cm["metadata"]["resourceVersion"]);

    // phase: paging: 7 objects, pages of 3, consistent at the first page's revision
    for i in 0..6 {
        call("skiff.api.ConfigMaps/Create", json!({"metadata": {"name": format!("page-{i}"), "namespace": "life"}}));
    }
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = call("skiff.api.ConfigMaps/List", json!({"namespace": "life", "limit": 3, "continue": token}));
        names.extend(
            page["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        token = page["metadata"]["continue"].as_str().unwrap_or_default().to_string();
        if names.len() == 3 {
            // A write between pages is not seen by the rest of this listing.
            call("skiff.api.ConfigMaps/Create", json!({"metadata": {"name": "page-late", "namespace": "life"}}));
        }
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(names, ["cfg", "page-0", "page-1", "page-2", "page-3", "page-4", "page-5"]);

    // phase: a finalizer holds deletion until it is removed
    call(
        "skiff.api.ConfigMaps/Create",
        json!({"metadata": {"name": "held", "namespace": "life", "finalizers": ["example.com/hold"]}}),
    );
    let marked = call("skiff.api.ConfigMaps/Delete", json!({"namespace": "life", "name": "held"}));
    assert!(marked["metadata"]["deletionTimestamp"].is_string(), "{marked}");
    assert!(call("skiff.api.ConfigMaps/Get", json!({"namespace": "life", "name": "held"}))["metadata"]
        ["deletionTimestamp"]
        .is_string());
    call(
        "skiff.api.ConfigMaps/Patch",
        json!({"namespace": "life", "name": "held", "patch": r#"{"metadata":{"finalizers":null}}"#}),
    );
    assert!(fails("skiff.api.ConfigMaps/Get", json!({"namespace": "life", "name": "held"})).contains("NotFound"));

    // phase: ownerReferences cascade (background) and orphan
    let owner = call("skiff.api.ConfigMaps/Create", json!({"metadata": {"name": "owner", "namespace": "life"}}));
    let owner_ref =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]);
    call(
        "skiff.api.Secrets/Create",
        json!({"metadata": {"name": "dep", "namespace": "life", "ownerReferences": owner_ref}}),
    );
    call("skiff.api.ConfigMaps/Delete", json!({"namespace": "life", "name": "owner"}));
    assert!(
        fails("skiff.api.Secrets/Get", json!({"namespace": "life", "name": "dep"})).contains("NotFound"),
        "dependent deleted with its owner"
    );
    let owner = call("skiff.api.ConfigMaps/Create", json!({"metadata": {"name": "owner2", "namespace": "life"}}));
    let owner_ref =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner["metadata"]["uid"]}]);
    call(
        "skiff.api.Secrets/Create",
        json!({"metadata": {"name": "orphan", "namespace": "life", "ownerReferences": owner_ref}}),
    );
    call("skiff.api.ConfigMaps/Delete", json!({"namespace": "life", "name": "owner2", "propagationPolicy": "Orphan"}));
    let orphan = call("skiff.api.Secrets/Get", json!({"namespace": "life", "name": "orphan"}));
    assert!(orphan["metadata"]["ownerReferences"].is_null(), "orphaned: {orphan}");

    // phase: a pod bound to a node is deleted gracefully; an unbound one at once
    let pod = |name: &str| json!({"metadata": {"name": name, "namespace": "life"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}});
    call("skiff.api.Pods/Create", pod("bound"));
    call(
        "skiff.api.Pods/Bind",
        json!({"metadata": {"name": "bound", "namespace": "life"}, "target": {"kind": "Node", "name": "node-1"}}),
    );
    let err = fails(
        "skiff.api.Pods/Bind",
        json!({"metadata": {"name": "bound", "namespace": "life"}, "target": {"kind": "Node", "name": "node-2"}}),
    );
    assert!(err.contains("Aborted") && err.contains("already assigned to node"), "{err}");
    let deleting = call("skiff.api.Pods/Delete", json!({"namespace": "life", "name": "bound"}));
    assert_eq!(deleting["metadata"]["deletionGracePeriodSeconds"], json!("30"), "{deleting}");
    call("skiff.api.Pods/Create", pod("unbound"));
    call("skiff.api.Pods/Delete", json!({"namespace": "life", "name": "unbound"}));
    assert!(fails("skiff.api.Pods/Get", json!({"namespace": "life", "name": "unbound"})).contains("NotFound"));

    // phase: deleting the namespace deletes what is in it, then the namespace
    call("skiff.api.Pods/Delete", json!({"namespace": "life", "name": "bound", "gracePeriodSeconds": 0}));
    call("skiff.api.Namespaces/Delete", json!({"name": "life"}));
    assert!(fails("skiff.api.Namespaces/Get", json!({"name": "life"})).contains("NotFound"));
    let err = fails("skiff.api.ConfigMaps/Create", json!({"metadata": {"name": "x", "namespace": "life"}}));
    assert!(err.contains("namespaces \"life\" not found"), "{err}");
    let err = fails("skiff.api.Namespaces/Delete", json!({"name": "default"}));
    assert!(err.contains("PermissionDenied") && err.contains("system namespace"), "{err}");
}
