//! The kubectl verbs a user reaches for, driven through the built `skiff` binary: the
//! Deployment walkthrough (set image and edit with --record, rollout history, undo, scale), and
//! config contexts, version, get cs, get -w, jsonpath, replace, rollout pause/resume,
//! completion — with their errors.

use serde_json::Value;
use skiff_tests::{skiff, skiff_bin, test_image, wait_for, Cluster};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The Deployment's ReplicaSets as (revision, image, desired replicas), oldest revision first.
fn replicasets(c: &Cluster) -> Vec<(i64, String, i64)> {
    let v: Value = serde_json::from_str(&c.ctl_ok(&["get", "rs", "-o", "json"])).unwrap();
    let mut out: Vec<(i64, String, i64)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| {
            (
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
                rs["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string(),
                rs["spec"]["replicas"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until the Deployment's current template is fully rolled out and Ready.
fn rolled_out(c: &Cluster, image: &str, replicas: i64) {
    wait_for(T, &format!("{replicas} ready replicas of {image}"), || {
        let d = c.get_json("deployments", "web")?;
        let s = &d["status"];
        let done = d["spec"]["template"]["spec"]["containers"][0]["image"] == image
            && s["updatedReplicas"].as_i64() == Some(replicas)
            && s["readyReplicas"].as_i64() == Some(replicas)
            && s["replicas"].as_i64() == Some(replicas)
            && s["observedGeneration"] == d["metadata"]["generation"];
        done.then_some(())
    });
}

#[test]
fn deployment_walkthrough_with_record_edit_history_undo_and_scale() {
    let c = Cluster::with_nodes(3, 1, &[]);
    let dir = c.dir.path().to_str().unwrap().to_string();
    let layout = test_image();
    for tag in ["busybox:v1", "busybox:v2", "busybox:v3"] {
        skiff(&["image", "import", layout.to_str().unwrap(), "--tag", tag, "--dir", &dir]);
    }
    // phase: a 2-replica Deployment
    c.apply_yaml(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: app
        image: busybox:v1
        command: [sh, -c, "touch /tmp/ready; exec sleep 3600"]
        readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}
"#,
    );
    rolled_out(&c, "busybox:v1", 2);
    let tables = c.ctl_ok(&["get", "deploy,rs,po"]);
    assert!(tables.contains("NAME") && tables.contains("READY   UP-TO-DATE   AVAILABLE"), "{tables}");
    assert!(tables.contains("DESIRED   CURRENT   READY"), "{tables}");

    // phase: set image twice with --record, each rollout finished before the next
    c.ctl_ok(&["set", "image", "deployment/web", "app=busybox:v2", "--record"]);
    rolled_out(&c, "busybox:v2", 2);
    c.ctl_ok(&["set", "image", "deployment/web", "app=busybox:v3", "--record"]);
    rolled_out(&c, "busybox:v3", 2);

    // phase: edit once (in $EDITOR, here sed), recorded
    let edit = Command::new(skiff_bin())
        .env("SKIFF_CONFIG", c.dir.path().join("client.json"))
        .env("EDITOR", "sed -i 's/^  replicas: 2$/  replicas: 3/'")
        .args(["edit", "deploy/web", "--record"])
        .output()
        .unwrap();
    assert!(edit.status.success(), "{}", stderr(&edit));
    assert_eq!(String::from_utf8_lossy(&edit.stdout).trim(), "deployment.apps/web edited");
    rolled_out(&c, "busybox:v3", 3);

    // phase: three revisions, the set-image ones with their command lines as change cause
    let history = c.ctl_ok(&["rollout", "history", "deployment/web"]);
    let lines: Vec<&str> = history.lines().skip(2).collect();
    assert_eq!(lines.len(), 3, "{history}");
    assert!(lines[0].starts_with("1 ") && lines[0].ends_with("<none>"), "{history}");
    assert!(
        lines[1].starts_with("2 ") && lines[1].contains("set image deployment/web app=busybox:v2 --record"),
        "{history}"
    );
    // The edit changed no template: revision 3 keeps v3, with the edit as the latest cause.
    assert!(lines[2].starts_with("3 ") && lines[2].contains("edit deploy/web --record"), "{history}");
    assert_eq!(replicasets(&c).len(), 3, "{:?}", replicasets(&c));

    // phase: undo goes back to v2's ReplicaSet, --to-revision=1 to v1's
    c.ctl_ok(&["rollout", "undo", "deployment/web"]);
    rolled_out(&c, "busybox:v2", 3);
    let sets = replicasets(&c);
    assert_eq!(sets.len(), 3, "undo reuses a ReplicaSet: {sets:?}");
    assert_eq!(sets.last().unwrap(), &(4, "busybox:v2".to_string(), 3), "{sets:?}");
    c.ctl_ok(&["rollout", "undo", "deployment/web", "--to-revision=1"]);
    rolled_out(&c, "busybox:v1", 3);
    let sets = replicasets(&c);
    assert_eq!(sets.last().unwrap(), &(5, "busybox:v1".to_string(), 3), "{sets:?}");
    let rs = c.ctl_ok(&["get", "rs"]);
    let active = rs.lines().find(|l| l.split_whitespace().nth(1) == Some("3")).unwrap_or_default();
    assert_eq!(active.split_whitespace().collect::<Vec<_>>()[1..4], ["3", "3", "3"], "{rs}");

    // phase: scale creates no ReplicaSet
    c.ctl_ok(&["scale", "deployment/web", "--replicas=2"]);
    rolled_out(&c, "busybox:v1", 2);
    assert_eq!(replicasets(&c).len(), 3);
}

#[test]
fn contexts_version_cs_watch_jsonpath_replace_pause_and_completion() {
    let c = Cluster::up(3, &[]);
    // phase: config contexts
    let contexts = c.ctl_ok(&["config", "get-contexts"]);
    assert!(contexts.lines().nth(1).unwrap().starts_with('*'), "{contexts}");
    c.ctl_ok(&["config", "set-context", "--current", "--namespace", "kube-system"]);
    let ns_now = c.ctl_ok(&["config", "get-contexts"]);
    assert!(ns_now.contains("kube-system"), "{ns_now}");
    // Objects without a namespace now land in the context's.
    c.apply_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ctx-probe}\n");
    assert!(c.ctl_ok(&["get", "cm", "ctx-probe", "-n", "kube-system", "-o", "name"]).contains("ctx-probe"));
    assert_eq!(c.ctl(&["get", "cm", "ctx-probe", "-n", "default"]).status.code(), Some(1));
    c.ctl_ok(&["config", "set-context", "staging", "--namespace", "default"]);
    c.ctl_ok(&["config", "use-context", "staging"]);
    assert_eq!(c.ctl_ok(&["config", "current-context"]).trim(), "staging");
    let bad = c.ctl(&["config", "use-context", "nope"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("no context exists with the name: \"nope\""), "{}", stderr(&bad));
    assert!(!c.ctl_ok(&["config", "view"]).contains(&c.admin_token()), "view redacts tokens");

    // phase: version and component statuses (every master healthy, one leader)
    let version = c.ctl_ok(&["version"]);
    assert!(version.contains("Client Version: v") && version.contains("Server Version: v"), "{version}");
    let cs = c.ctl_ok(&["get", "cs"]);
    assert_eq!(cs.lines().filter(|l| l.contains("Healthy")).count(), 3, "{cs}");
    assert_eq!(cs.lines().filter(|l| l.contains(" leader ")).count(), 1, "{cs}");

    // phase: get -w prints the listing, then each change
    let mut watch = Command::new(skiff_bin())
        .env("SKIFF_CONFIG", c.dir.path().join("client.json"))
        .args(["get", "configmaps", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).expect("the watch prints a header");
    assert!(first.starts_with("NAME"), "{first}");
    c.apply_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: \"1\"}\n");
    let line = rx.recv_timeout(Duration::from_secs(20)).expect("the watch prints the new object");
    assert!(line.starts_with("watched "), "{line}");
    // phase: the master the watch talks to (the config's first) dies mid-command; the watch
    // resumes through another master without losing or repeating a change
    c.kill(c.masters[0].id);
    c.apply_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after-kill}\ndata: {a: \"1\"}\n");
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("the watch goes on after its master died");
    assert!(line.starts_with("after-kill "), "{line}");
    assert!(rx.recv_timeout(Duration::from_secs(2)).is_err(), "a change was printed twice");
    let _ = watch.kill();
    let _ = watch.wait();

    // phase: jsonpath, replace
    assert_eq!(c.ctl_ok(&["get", "cm", "watched", "-o", "jsonpath={.data.a}"]), "1");
    let listing = c.ctl_ok(&["get", "cm", "-o", r#"jsonpath={range .items[*]}{.metadata.name}{"\n"}{end}"#]);
    assert!(listing.lines().any(|l| l == "watched"), "{listing}");
    let file = c.dir.path().join("cm.yaml");
    std::fs::write(&file, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: \"2\"}\n").unwrap();
    assert_eq!(c.ctl_ok(&["replace", "-f", file.to_str().unwrap()]).trim(), "configmap/watched replaced");
    assert_eq!(c.ctl_ok(&["get", "cm", "watched", "-o", "jsonpath={.data.a}"]), "2");
    std::fs::write(&file, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: absent}\ndata: {a: \"2\"}\n").unwrap();
    let missing = c.ctl(&["replace", "-f", file.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("Error from server (NotFound)"), "{}", stderr(&missing));
    let bad_path = c.ctl(&["get", "cm", "watched", "-o", "jsonpath={.data[0"]);
    assert_eq!(bad_path.status.code(), Some(1));
    assert!(stderr(&bad_path).contains("error executing jsonpath"), "{}", stderr(&bad_path));

    // phase: an edit that does not parse changes nothing and keeps the copy
    let broken = Command::new(skiff_bin())
        .env("SKIFF_CONFIG", c.dir.path().join("client.json"))
        .env("EDITOR", "sh -c 'echo \"data: [unclosed\" >> \"$1\"' --")
        .args(["edit", "cm/watched"])
        .output()
        .unwrap();
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        stderr(&broken).contains("not valid YAML") && stderr(&broken).contains("A copy of your changes"),
        "{}",
        stderr(&broken)
    );
    assert_eq!(c.ctl_ok(&["get", "cm", "watched", "-o", "jsonpath={.data.a}"]), "2");

    // phase: rollout pause / resume
    c.apply_yaml(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: p}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: p}}\n  template:\n    metadata: {labels: {app: p}}\n    spec: {containers: [{name: c, image: busybox:v1}]}\n",
    );
    assert_eq!(c.ctl_ok(&["rollout", "pause", "deployment/p"]).trim(), "deployment.apps/p paused");
    let again = c.ctl(&["rollout", "pause", "deployment/p"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already paused"), "{}", stderr(&again));
    assert_eq!(c.ctl_ok(&["get", "deploy", "p", "-o", "jsonpath={.spec.paused}"]), "true");
    c.ctl_ok(&["rollout", "resume", "deployment/p"]);
    assert_ne!(c.ctl_ok(&["get", "deploy", "p", "-o", "jsonpath={.spec.paused}"]), "true");

    // phase: completion scripts
    for shell in ["bash", "zsh", "fish"] {
        let script = c.ctl_ok(&["completion", shell]);
        assert!(script.contains("skiff") && script.contains("rollout"), "{shell}: {script}");
    }

    // phase: the killed master shows as unhealthy, and get cs exits 1
    let cs = wait_for(T, "get cs to report the killed master", || {
        let out = c.ctl(&["get", "cs"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code() == Some(1) && text.contains("Unhealthy")).then_some(text)
    });
    assert_eq!(cs.lines().filter(|l| l.contains(" Healthy ")).count(), 2, "{cs}");
}

/// `skiff create <generator>`, `run` and `expose`, as kubectl's imperative commands: namespace,
/// serviceaccount, configmap, secret generic and tls, deployment, a pod, a service for a
/// deployment's pods — and their refusals, which create nothing.
#[test]
fn create_generators_make_what_kubectl_makes() {
    let c = Cluster::up(1, &[]);
    let dir = c.dir.path();
    std::fs::write(dir.join("app.conf"), "level=debug\n").unwrap();
    let said = c.ctl_ok(&["create", "namespace", "shop"]);
    assert_eq!(said.trim(), "namespace/shop created");
    c.ctl_ok(&["create", "serviceaccount", "robot", "-n", "shop"]);
    let conf = format!("settings={}", dir.join("app.conf").display());
    c.ctl_ok(&["create", "configmap", "cfg", "-n", "shop", "--from-literal", "mode=prod", "--from-file", &conf]);
    c.ctl_ok(&["create", "secret", "generic", "db", "-n", "shop", "--from-literal=password=s3cret"]);
    let cert = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), cert.key_pair.serialize_pem()).unwrap();
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    c.ctl_ok(&[
        "create",
        "secret",
        "tls",
        "web-tls",
        "-n",
        "shop",
        "--cert",
        crt.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    c.ctl_ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "shop",
        "--image",
        "busybox:test",
        "--replicas",
        "2",
        "--port",
        "8080",
    ]);

    let get = |kind: &str, name: &str| -> Value {
        serde_json::from_str(&c.ctl_ok(&["get", kind, name, "-n", "shop", "-o", "json"])).unwrap()
    };
    assert_eq!(get("sa", "robot")["metadata"]["namespace"], "shop");
    assert_eq!(get("cm", "cfg")["data"], serde_json::json!({"mode": "prod", "settings": "level=debug\n"}));
    let db = get("secret", "db");
    assert_eq!((db["type"].as_str(), db["data"]["password"].as_str()), (Some("Opaque"), Some("czNjcmV0")));
    assert_eq!(get("secret", "web-tls")["type"], "kubernetes.io/tls");
    let web = get("deployment", "web");
    assert_eq!(web["spec"]["replicas"], 2);
    assert_eq!(web["spec"]["template"]["spec"]["containers"][0]["name"], "busybox");
    assert_eq!(web["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 8080);

    // run and expose: a pod, and a Service selecting the Deployment's pods.
    c.ctl_ok(&[
        "run",
        "once",
        "-n",
        "shop",
        "--image",
        "busybox:test",
        "--restart",
        "Never",
        "--env",
        "A=1",
        "--",
        "sh",
        "-c",
        "echo hi",
    ]);
    let once = get("pod", "once");
    assert_eq!(once["metadata"]["labels"]["run"], "once");
    assert_eq!(once["spec"]["restartPolicy"], "Never");
    assert_eq!(once["spec"]["containers"][0]["command"], serde_json::json!(["sh", "-c", "echo hi"]));
    assert_eq!(once["spec"]["containers"][0]["env"][0], serde_json::json!({"name": "A", "value": "1"}));
    let said = c.ctl_ok(&[
        "expose",
        "deployment",
        "web",
        "-n",
        "shop",
        "--port",
        "80",
        "--target-port",
        "8080",
        "--type",
        "NodePort",
    ]);
    assert_eq!(said.trim(), "service/web created");
    let svc = get("service", "web");
    assert_eq!(svc["spec"]["selector"], serde_json::json!({"app": "web"}));
    assert_eq!(
        (svc["spec"]["type"].as_str(), svc["spec"]["ports"][0]["targetPort"].as_i64()),
        (Some("NodePort"), Some(8080))
    );
    let out = c.ctl(&["expose", "configmap/cfg", "-n", "shop", "--port", "80"]);
    assert!(!out.status.success() && stderr(&out).contains("cannot expose a ConfigMap"), "{}", stderr(&out));
    let out = c.ctl(&["expose", "deployment", "nope", "-n", "shop", "--port", "80"]);
    assert!(!out.status.success() && stderr(&out).contains("NotFound"), "{}", stderr(&out));

    // Refusals: a name taken, a malformed literal, a missing file — nothing made or changed.
    let out = c.ctl(&["create", "namespace", "shop"]);
    assert!(!out.status.success() && stderr(&out).contains("AlreadyExists"), "{}", stderr(&out));
    let out = c.ctl(&["create", "configmap", "bad", "-n", "shop", "--from-literal", "novalue"]);
    assert!(!out.status.success() && stderr(&out).contains("expected key=value"), "{}", stderr(&out));
    let out = c.ctl(&["create", "secret", "generic", "gone", "-n", "shop", "--from-file", "/nonexistent/file"]);
    assert!(!out.status.success() && stderr(&out).contains("/nonexistent/file"), "{}", stderr(&out));
    for (kind, name) in [("cm", "bad"), ("secret", "gone")] {
        assert!(!c.ctl(&["get", kind, name, "-n", "shop"]).status.success(), "{kind}/{name} must not exist");
    }
}
