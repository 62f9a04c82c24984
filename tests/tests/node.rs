//! The node daemon running real containers (libcontainer, as root) in a `skiff up --nodes`
//! cluster, driven the way a user does: manifests through `skiff apply`, state read back with
//! `skiff get -o json`, and the machine itself inspected for leftovers.

use serde_json::Value;
use skiff_tests::{pid_alive, run_piped, skiff_bin, wait_for, wait_for_showing, Cluster};
use std::process::{Command, Output};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["status"][list].as_array().and_then(|a| a.iter().find(|c| c["name"] == name)).unwrap_or(&Value::Null)
}

/// A container's restartCount (proto3 JSON leaves a zero out).
fn restarts(st: &Value) -> i64 {
    st["restartCount"].as_i64().unwrap_or(0)
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

/// Lines the container wrote, read from its log file on the node (the logs API is not built).
fn log_of(c: &Cluster, pod: &Value, name: &str, run: u32) -> String {
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let root = &c.nodes()[0].2;
    let path = root.join(format!("pods/{uid}/containers/{name}/{run}/container.log"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // CRI format: `<time> stdout|stderr F <line>`; stdout only.
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, ' ');
            let (_, stream, _, line) = (f.next()?, f.next()?, f.next()?, f.next()?);
            (stream == "stdout").then_some(line)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn leftovers(uid: &str, host_veth_prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    found.extend(mounts.lines().filter(|l| l.contains(uid)).map(|l| format!("mount: {l}")));
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for sub in std::fs::read_dir(entry.path().join("skiff")).into_iter().flatten().flatten() {
            let pod_dir = sub.path().join(format!("pod{uid}"));
            if pod_dir.exists() {
                found.push(format!("cgroup: {}", pod_dir.display()));
            }
        }
    }
    let links = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    found.extend(links.lines().filter(|l| l.contains(host_veth_prefix)).map(|l| format!("veth: {l}")));
    let ps = std::process::Command::new("ps").args(["-eo", "pid,args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    found.extend(ps.lines().filter(|l| l.contains(uid)).map(|l| format!("process: {l}")));
    found
}

#[test]
fn a_multi_container_pod_runs_inits_in_order_shares_localhost_and_leaves_nothing_behind() {
    let c = Cluster::with_nodes(3, 1, &[]);
    // phase: two init containers, then a server and a client talking over localhost and an emptyDir
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: duo}
spec:
  terminationGracePeriodSeconds: 2
  volumes: [{name: shared, emptyDir: {}}]
  initContainers:
  - {name: init-1, image: "busybox:test", command: [sh, -c, "echo first > /data/order"], volumeMounts: [{name: shared, mountPath: /data}]}
  - {name: init-2, image: "busybox:test", command: [sh, -c, "sleep 1; echo second >> /data/order"], volumeMounts: [{name: shared, mountPath: /data}]}
  containers:
  - name: server
    image: "busybox:test"
    command: [sh, -c, "echo hi-over-localhost | nc -l -p 8080; exec sleep 3600"]
    volumeMounts: [{name: shared, mountPath: /data}]
  - name: client
    image: "busybox:test"
    command: [sh, -c, "until nc 127.0.0.1 8080 > /data/got; do sleep 0.2; done; cat /data/order /data/got; hostname; exec sleep 3600"]
    volumeMounts: [{name: shared, mountPath: /data}]
"#,
    );
    let pod = wait_for(T, "pod duo Running and Ready", || {
        let p = c.get_json("pods", "duo")?;
        (phase(&p) == "Running" && p["status"]["conditions"][3]["status"] == "True").then_some(p)
    });
    // phase: the app containers started after both inits finished
    let init2_done = container(&pod, "initContainerStatuses", "init-2")["state"]["terminated"]["finishedAt"].clone();
    for name in ["server", "client"] {
        let started = &container(&pod, "containerStatuses", name)["state"]["running"]["startedAt"];
        assert!(
            started.as_str() >= init2_done.as_str(),
            "{name} started {started} before init-2 finished {init2_done}"
        );
    }
    let out = wait_for(T, "the client to print what it read", || {
        let out = log_of(&c, &pod, "client", 0);
        out.contains("hi-over-localhost").then_some(out)
    });
    assert_eq!(out.lines().collect::<Vec<_>>(), ["first", "second", "hi-over-localhost", "duo"], "{out}");
    let ip = pod["status"]["podIP"].as_str().unwrap();
    assert!(ip.starts_with("10.244."), "pod IP {ip} comes from the node's pod CIDR");

    // phase: exec runs in the container's namespaces and cgroup, with its environment; stdin,
    // exit codes, a default container and a command that cannot start as kubectl gives them
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let config = c.dir.path().join("client.json");
    let exec = |args: &[&str], stdin: Option<&str>| exec_as(&config, args, stdin);
    let o = exec(
        &["duo", "-c", "client", "--", "sh", "-c", "cat /data/order; hostname; hostname -i; cat /proc/self/cgroup"],
        None,
    );
    let said = text(&o);
    assert!(o.status.success(), "{said}");
    assert_eq!(said.lines().take(4).collect::<Vec<_>>(), ["first", "second", "duo", ip], "{said}");
    assert!(said.contains(&format!("/pod{uid}/client\n")), "not in the container's cgroup: {said}");
    let o = exec(&["duo", "-c", "client", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], None);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\ncommand terminated with exit code 3\n");
    let o = exec(&["-i", "duo", "-c", "server", "--", "sh", "-c", "cat; echo done"], Some("piped through\n"));
    assert_eq!((o.status.code(), String::from_utf8_lossy(&o.stdout).as_ref()), (Some(0), "piped through\ndone\n"));
    let o = exec(&["duo", "--", "hostname"], None);
    assert!(
        o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("Defaulted container \"server\" out of: server, client"),
        "{}",
        text(&o)
    );
    let (ok, _, refused) = skiff_tests::grpcurl_call(
        &c.admin_token(),
        &c.masters[0].etcd,
        "skiff.api.PodExec/Exec",
        &serde_json::json!({"start": {"name": "duo", "container": "client", "command": ["sh"], "tty": true}}),
    );
    assert!(!ok && refused.contains("a terminal (tty) is not served yet"), "{refused}");
    let o = exec(&["duo", "-c", "client", "--", "no-such-command"], None);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o));
    assert!(text(&o).contains("exec: \"no-such-command\": executable file not found in $PATH"), "{}", text(&o));
    // cp: a directory (a binary file, a nested one, a link) into the pod and back, identical.
    let here = tempfile::tempdir().unwrap();
    let source = here.path().join("source");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(source.join("sub/blob"), &blob).unwrap();
    std::fs::write(source.join("a.txt"), "hello\n").unwrap();
    std::os::unix::fs::symlink("a.txt", source.join("link")).unwrap();
    let cp = |from: &str, to: &str| {
        let mut cmd = Command::new(skiff_bin());
        cmd.env("SKIFF_CONFIG", &config).args(["cp", "-c", "client", from, to]);
        run_piped(cmd, None)
    };
    let o = cp(source.to_str().unwrap(), "duo:/tmp/copied");
    assert!(o.status.success(), "{}", text(&o));
    let listed = text(&exec(
        &["duo", "-c", "client", "--", "sh", "-c", "cat /tmp/copied/a.txt; readlink /tmp/copied/link"],
        None,
    ));
    assert_eq!(listed, "hello\na.txt\n");
    let back = here.path().join("back");
    let o = cp("duo:/tmp/copied", back.to_str().unwrap());
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(back.join("sub/blob")).unwrap(), blob, "the binary file came back changed");
    assert_eq!(std::fs::read_to_string(back.join("a.txt")).unwrap(), "hello\n");
    assert_eq!(std::fs::read_link(back.join("link")).unwrap(), std::path::Path::new("a.txt"));
    let o = cp("duo:/no/such/path", here.path().join("none").to_str().unwrap());
    assert!(!o.status.success() && text(&o).contains("No such file"), "{}", text(&o));

    // A user who may read pods but not exec into them is refused.
    c.add_user("reader-token", "reader", &[]);
    c.apply_yaml(READER);
    let reader = c.dir.path().join("reader.json");
    let admin = std::fs::read_to_string(&config).unwrap();
    let token = serde_json::from_str::<Value>(&admin).unwrap()["users"][0]["token"].as_str().unwrap().to_string();
    std::fs::write(&reader, admin.replace(&token, "reader-token")).unwrap();
    let o = exec_as(&reader, &["duo", "-c", "client", "--", "true"], None);
    assert!(!o.status.success() && text(&o).contains("cannot create resource \"pods/exec\""), "{}", text(&o));

    // phase: delete it; everything it had on the machine goes
    let veth = format!("skv{}", uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(11).collect::<String>());
    c.ctl_ok(&["delete", "pod", "duo"]);
    wait_for(T, "pod duo to be gone from the API", || c.get_json("pods", "duo").is_none().then_some(()));
    wait_for(Duration::from_secs(10), "no process, mount, cgroup or veth of the pod", || {
        let left = leftovers(&uid, &veth);
        left.is_empty().then_some(()).or_else(|| {
            eprintln!("still there: {left:?}");
            None
        })
    });
    let node_root = &c.nodes()[0].2;
    assert!(!node_root.join("pods").join(&uid).exists(), "pod directory removed");
    assert!(!node_root.join("ns").join(&uid).exists(), "sandbox removed");

    // phase: a sidecar (an init container with restartPolicy Always) serves the init container
    // after it and the app container, and is stopped once the app container has finished
    c.apply_yaml(SIDECAR_POD);
    let pod = wait_for_showing(
        T,
        "the pod with a sidecar Succeeded",
        || format!("{:?}", c.get_json("pods", "with-sidecar").map(|p| p["status"].clone())),
        || c.get_json("pods", "with-sidecar").filter(|p| phase(p) == "Succeeded"),
    );
    assert_eq!(log_of(&c, &pod, "job", 0), "from-sidecar\nfrom-sidecar", "{pod}");
    let proxy = container(&pod, "initContainerStatuses", "proxy");
    assert!(proxy["state"]["terminated"].is_object(), "the sidecar stopped with the pod: {proxy}");
    let setup = &container(&pod, "initContainerStatuses", "setup")["state"]["terminated"];
    assert_eq!(setup["exitCode"].as_i64().unwrap_or(0), 0, "{pod}");
}

/// A user who may get and list pods, and nothing more.
const READER: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: pod-reader}
rules: [{apiGroups: [''], resources: [pods], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: reader-reads-pods}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: pod-reader}
subjects: [{kind: User, name: reader, apiGroup: rbac.authorization.k8s.io}]
";

/// `skiff exec ARGS` with the client configuration `config`, stdin piped.
fn exec_as(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(skiff_bin());
    cmd.env("SKIFF_CONFIG", config).arg("exec").args(args);
    run_piped(cmd, stdin)
}

/// What a command printed, stdout then stderr.
fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// A job-like pod whose init container and app container both ask its sidecar, which the
/// next init container waits on until its startup probe passes.
const SIDECAR_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: with-sidecar}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  volumes: [{name: shared, emptyDir: {}}]
  initContainers:
  - name: proxy
    image: busybox:test
    restartPolicy: Always
    command: [sh, -c, "mkdir -p /www && echo from-sidecar > /www/index.html && exec httpd -f -p 8080 -h /www"]
    startupProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  - name: setup
    image: busybox:test
    command: [sh, -c, "wget -q -O /data/setup http://127.0.0.1:8080/"]
    volumeMounts: [{name: shared, mountPath: /data}]
  containers:
  - name: job
    image: busybox:test
    command: [sh, -c, "cat /data/setup; wget -q -O - http://127.0.0.1:8080/"]
    volumeMounts: [{name: shared, mountPath: /data}]
"#;

#[test]
fn crashing_containers_back_off_init_failures_block_the_pod_and_memory_limits_oom_kill() {
    let c = Cluster::with_nodes(3, 1, &[]);
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: "busybox:test", command: [sh, -c, "echo crashing; exit 1"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: blocked}
spec:
  terminationGracePeriodSeconds: 1
  initContainers: [{name: setup, image: "busybox:test", command: [sh, -c, "exit 3"]}]
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: "busybox:test"
    command: [sh, -c, "head -c 200m /dev/zero | tail > /dev/null"]
    resources: {limits: {memory: 32Mi}}
"#,
    );
    // phase: a container exiting 1 restarts with growing delays and shows CrashLoopBackOff
    let mut saw_back_off = false;
    let node_root = c.nodes()[0].2.clone();
    let crasher = wait_for(Duration::from_secs(90), "crasher to restart 3 times", || {
        let p = c.get_json("pods", "crasher")?;
        let st = container(&p, "containerStatuses", "app");
        saw_back_off |= st["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        // The fourth run must have started too: the gaps below read its start.
        let uid = p["metadata"]["uid"].as_str()?;
        let fourth = node_root.join(format!("pods/{uid}/containers/app/3/started.json"));
        (st["restartCount"].as_i64() >= Some(3) && saw_back_off && fourth.exists()).then_some(p)
    });
    let st = container(&crasher, "containerStatuses", "app");
    assert_eq!(st["lastState"]["terminated"]["exitCode"], 1, "{st}");
    assert_eq!(phase(&crasher), "Running");
    // Delays grow: 1 s, 2 s, 4 s between a run's end and the next run's start.
    let uid = crasher["metadata"]["uid"].as_str().unwrap();
    let runs = c.nodes()[0].2.join(format!("pods/{uid}/containers/app"));
    let read = |n: u32, f: &str, k: &str| -> i64 {
        let v: Value = serde_json::from_slice(&std::fs::read(runs.join(format!("{n}/{f}"))).unwrap()).unwrap();
        skiff_proto::time::parse_rfc3339(v[k].as_str().unwrap()).unwrap()
    };
    let gap = |n: u32| read(n + 1, "started.json", "startedAt") - read(n, "exit.json", "finishedAt");
    assert!(gap(0) >= 1 && gap(2) >= 3 && gap(2) > gap(0), "back-off gaps {} {} {}", gap(0), gap(1), gap(2));
    assert!(log_of(&c, &crasher, "app", 0).contains("crashing"));

    // phase: a failing init container is retried and the app never starts
    let blocked = wait_for(T, "the init container to be retried", || {
        let p = c.get_json("pods", "blocked")?;
        (container(&p, "initContainerStatuses", "setup")["restartCount"].as_i64() >= Some(1)).then_some(p)
    });
    assert_eq!(phase(&blocked), "Pending");
    let app = container(&blocked, "containerStatuses", "app");
    assert_eq!(app["state"]["waiting"]["reason"], "PodInitializing", "{app}");
    let table = c.ctl_ok(&["get", "pod", "blocked"]);
    assert!(table.contains("Init:"), "kubectl-style status shows the init phase:\n{table}");

    // phase: 32Mi limit, 200m allocated: OOMKilled
    let hog = wait_for(T, "hog to be OOM-killed", || {
        let p = c.get_json("pods", "hog")?;
        (phase(&p) == "Failed").then_some(p)
    });
    let term = &container(&hog, "containerStatuses", "app")["state"]["terminated"];
    assert_eq!(term["reason"], "OOMKilled", "{term}");
    assert_eq!(term["exitCode"], 137, "{term}");
}

#[test]
fn a_killed_node_daemon_leaves_containers_running_and_readopts_them() {
    let mut c = Cluster::with_nodes(3, 1, &[]);
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: steady}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: "busybox:test", command: [sh, -c, "echo started; exec sleep 3600"]}]
"#,
    );
    let before = wait_for(T, "steady Running", || {
        let p = c.get_json("pods", "steady")?;
        (phase(&p) == "Running").then_some(p)
    });
    let uid = before["metadata"]["uid"].as_str().unwrap().to_string();
    let root = c.nodes()[0].2.clone();
    let started: Value =
        serde_json::from_slice(&std::fs::read(root.join(format!("pods/{uid}/containers/app/0/started.json"))).unwrap())
            .unwrap();
    let container_pid = started["pid"].as_i64().unwrap() as u32;

    // phase: SIGKILL the daemon; the container keeps running
    let daemon = c.nodes()[0].1;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_for(Duration::from_secs(10), "the node daemon to exit", || (!pid_alive(daemon)).then_some(()));
    assert!(pid_alive(container_pid), "the container (pid {container_pid}) died with its daemon");
    // An exec into a pod whose node does not answer fails at once, saying so.
    let asked = std::time::Instant::now();
    let o = exec_as(&c.dir.path().join("client.json"), &["steady", "--", "true"], None);
    assert!(!o.status.success() && text(&o).contains("error dialing backend"), "{}", text(&o));
    assert!(asked.elapsed() < Duration::from_secs(10), "the exec took {:?} to fail", asked.elapsed());

    // phase: restart it; the same container is re-adopted, nothing started twice
    c.restart_stopped();
    assert_ne!(c.nodes()[0].1, daemon, "a new daemon runs");
    // A new pod reaching Running proves the new daemon has run full rounds over every pod.
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: later}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    wait_for(T, "the restarted daemon to start a new pod", || {
        let p = c.get_json("pods", "later")?;
        (phase(&p) == "Running").then_some(())
    });
    let after = c.get_json("pods", "steady").unwrap();
    let runs: Vec<_> = std::fs::read_dir(root.join(format!("pods/{uid}/containers/app"))).unwrap().collect();
    assert_eq!(runs.len(), 1, "no second run of the container");
    assert!(pid_alive(container_pid));
    assert_eq!(phase(&after), "Running");
    let st = container(&after, "containerStatuses", "app");
    assert_eq!(restarts(st), 0, "{st}");
    let was = &container(&before, "containerStatuses", "app")["state"]["running"]["startedAt"];
    assert_eq!(&st["state"]["running"]["startedAt"], was);
}

#[test]
fn images_pull_from_a_registry_and_bad_images_and_commands_fail_clearly() {
    let mut registry = skiff_tests::Registry::start();
    let insecure = format!("--node-arg=--insecure-registry={}", registry.addr);
    let c = Cluster::with_nodes(3, 1, &[&insecure]);
    // phase: push the test image to the registry with `skiff image push`
    let target = format!("{}/tools/busybox:test", registry.addr);
    let image = skiff_tests::test_image();
    c.ctl_ok(&["image", "push", image.to_str().unwrap(), &target, "--insecure"]);
    c.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: healthy}}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{{name: app, image: "busybox:test", command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: pulled}}
spec:
  restartPolicy: Never
  containers: [{{name: app, image: "{target}", command: [echo, pulled-and-ran]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: noimage}}
spec:
  containers: [{{name: app, image: "{}/tools/nothere:1"}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: badcmd}}
spec:
  restartPolicy: Never
  containers: [{{name: app, image: "busybox:test", command: ["/no/such/binary"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: rootless}}
spec:
  securityContext: {{runAsNonRoot: true}}
  containers: [{{name: app, image: "busybox:test", command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: for-windows}}
spec:
  os: {{name: windows}}
  containers: [{{name: app, image: "busybox:test", command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: asuser}}
spec:
  restartPolicy: Never
  securityContext: {{runAsNonRoot: true, runAsUser: 1000, runAsGroup: 3000}}
  containers: [{{name: app, image: "busybox:test", command: [id]}}]
"#,
        registry.addr
    ));
    // phase: an image only the registry has is pulled (digest-verified) and runs
    let pulled = wait_for(T, "pulled Succeeded", || {
        let p = c.get_json("pods", "pulled")?;
        (phase(&p) == "Succeeded").then_some(p)
    });
    assert_eq!(c.ctl_ok(&["logs", "pulled"]), "pulled-and-ran\n");
    let image_id = container(&pulled, "containerStatuses", "app")["imageID"].as_str().unwrap().to_string();
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let events = c.ctl_ok(&["get", "events", "-o", "json"]);
    assert!(events.contains("Successfully pulled image"), "{events}");

    // phase: a missing image is ErrImagePull, then ImagePullBackOff, with the registry's reason
    let mut reasons = Vec::new();
    wait_for(T, "ErrImagePull then ImagePullBackOff", || {
        let p = c.get_json("pods", "noimage")?;
        let w = &container(&p, "containerStatuses", "app")["state"]["waiting"];
        if let Some(r) = w["reason"].as_str().filter(|r| r.contains("Image")) {
            if reasons.last().map(String::as_str) != Some(r) {
                reasons.push(r.to_string());
                assert!(w["message"].as_str().unwrap_or_default().contains("manifest unknown"), "{w}");
            }
        }
        // Each failed pull shows ErrImagePull, then ImagePullBackOff until the next try.
        (reasons.windows(2).any(|w| w[0] == "ErrImagePull" && w[1] == "ImagePullBackOff")).then_some(())
    });
    let events = c.ctl_ok(&["get", "events", "-o", "json"]);
    assert!(events.contains("MANIFEST_UNKNOWN"), "a Failed event with the registry's reason: {events}");

    // phase: a command that does not exist fails the container with the error in its state
    let bad = wait_for(T, "badcmd Failed", || {
        let p = c.get_json("pods", "badcmd")?;
        (phase(&p) == "Failed").then_some(p)
    });
    let term = &container(&bad, "containerStatuses", "app")["state"]["terminated"];
    assert_ne!(term["exitCode"], 0, "{term}");
    let said = format!("{} {}", term["reason"], term["message"]);
    assert!(said.contains("StartError") || said.contains("Error"), "{term}");
    assert!(
        term["message"].as_str().unwrap_or_default().contains("/no/such/binary")
            || term["exitCode"] == 127
            || term["exitCode"] == 128,
        "{term}"
    );

    // phase: runAsNonRoot (from the pod's securityContext) keeps a root image from starting,
    // in the kubelet's words; with a non-root runAsUser it runs as that user
    let rootless = wait_for(T, "rootless waiting on its config", || {
        let p = c.get_json("pods", "rootless")?;
        let w = container(&p, "containerStatuses", "app")["state"]["waiting"].clone();
        (w["reason"] == "CreateContainerConfigError").then_some(w)
    });
    let uid = c.get_json("pods", "rootless").unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(
        rootless["message"],
        format!(
            "container has runAsNonRoot and image will run as root (pod: \"rootless_default({uid})\", container: app)"
        ),
        "{rootless}"
    );
    wait_for(T, "asuser Succeeded", || (phase(&c.get_json("pods", "asuser")?) == "Succeeded").then_some(()));

    // phase: a pod for another operating system is refused by the node, as the kubelet does
    let refused = wait_for(T, "for-windows Failed", || {
        let p = c.get_json("pods", "for-windows")?;
        (phase(&p) == "Failed").then_some(p)
    });
    assert_eq!(refused["status"]["reason"], "PodOSNotSupported", "{refused}");
    assert_eq!(refused["status"]["message"], "Failed to admit pod as the OS field doesn't match node OS");
    let listed = c.ctl_ok(&["get", "pod", "for-windows"]);
    assert!(listed.contains("PodOSNotSupported"), "{listed}");
    c.ctl_ok(&["delete", "pod", "for-windows"]);
    wait_for(T, "for-windows deleted", || c.get_json("pods", "for-windows").is_none().then_some(()));
    let id = c.ctl_ok(&["logs", "asuser"]);
    assert!(id.starts_with("uid=1000 gid=3000"), "{id}");

    // phase: a registry that asks for credentials: a pod whose imagePullSecrets hold them
    // pulls; one without gets the registry's refusal
    for tag in ["private:1", "private:2"] {
        c.ctl_ok(&["image", "push", image.to_str().unwrap(), &format!("{}/tools/{tag}", registry.addr), "--insecure"]);
    }
    registry.require_auth("puller", "s3cret-pw");
    let config = serde_json::json!({"auths": {registry.addr.clone(): {"username": "puller", "password": "s3cret-pw"}}});
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, config.to_string());
    c.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: regcred}}
type: kubernetes.io/dockerconfigjson
data: {{.dockerconfigjson: {encoded}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: private}}
spec:
  restartPolicy: Never
  imagePullSecrets: [{{name: regcred}}, {{name: not-there}}]
  containers: [{{name: app, image: "{0}/tools/private:1", command: [echo, pulled-with-credentials]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: no-credentials}}
spec:
  containers: [{{name: app, image: "{0}/tools/private:2", command: [sleep, "3600"]}}]
"#,
        registry.addr
    ));
    wait_for_showing(
        T,
        "private Succeeded",
        || c.ctl_ok(&["get", "events"]),
        || (phase(&c.get_json("pods", "private")?) == "Succeeded").then_some(()),
    );
    assert_eq!(c.ctl_ok(&["logs", "private"]), "pulled-with-credentials\n");
    let events = c.ctl_ok(&["get", "events", "-o", "json"]);
    assert!(events.contains("Unable to retrieve some image pull secrets (not-there)"), "{events}");
    let refused = wait_for(T, "no-credentials refused by the registry", || {
        let p = c.get_json("pods", "no-credentials")?;
        let w = container(&p, "containerStatuses", "app")["state"]["waiting"].clone();
        (w["reason"] == "ErrImagePull" || w["reason"] == "ImagePullBackOff").then_some(w)
    });
    assert!(refused["message"].as_str().unwrap_or_default().contains("401"), "{refused}");

    // phase: the healthy pod never noticed
    let ok = wait_for(T, "healthy Running", || {
        let p = c.get_json("pods", "healthy")?;
        (phase(&p) == "Running").then_some(p)
    });
    assert_eq!(restarts(container(&ok, "containerStatuses", "app")), 0);

    // phase: an image whose layer does not match its digest is refused, and nothing is stored
    let corrupt = c.dir.path().join("corrupt-image");
    let copy =
        std::process::Command::new("cp").arg("-r").arg(skiff_tests::test_image()).arg(&corrupt).status().unwrap();
    assert!(copy.success());
    let index: Value = serde_json::from_slice(&std::fs::read(corrupt.join("index.json")).unwrap()).unwrap();
    let manifest_hex = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(corrupt.join("blobs/sha256").join(&manifest_hex)).unwrap()).unwrap();
    let layer = corrupt
        .join("blobs/sha256")
        .join(manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    let d = c.dir.path().to_str().unwrap();
    let out = c.ctl(&["image", "import", corrupt.to_str().unwrap(), "--tag", "corrupt:1", "--dir", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("refusing"), "corrupt layer accepted: {err}");
    let refs = std::fs::read_to_string(c.nodes()[0].2.join("images/refs.json")).unwrap();
    assert!(!refs.contains("corrupt"), "{refs}");
}

#[test]
fn probes_restart_unhealthy_containers_and_drive_readiness() {
    let c = Cluster::with_nodes(3, 1, &[]);
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: sickly}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: "busybox:test"
    command: [sh, -c, "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 3600"]
    livenessProbe: {exec: {command: [cat, /tmp/healthy]}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: flappy}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: "busybox:test"
    command: [sh, -c, "sleep 2; touch /tmp/ready; sleep 4; rm /tmp/ready; exec sleep 3600"]
    readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: "busybox:test"
    command: [sh, -c, "mkdir -p /www && echo ok > /www/index.html && sleep 2 && exec httpd -f -p 8080 -h /www"]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, initialDelaySeconds: 4, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: gated}
spec:
  terminationGracePeriodSeconds: 0
  readinessGates: [{conditionType: example.com/load-balancer}]
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    // phase: a readiness gate holds Ready back until its condition, set by someone else
    // through the status subresource, is True; the node keeps that condition
    let ready_of = |p: &Value| {
        let c = p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
        Some((c["status"].as_str()?.to_string(), c["reason"].clone(), c["message"].clone()))
    };
    let held = wait_for(T, "gated Running with Ready held by its gate", || {
        let p = c.get_json("pods", "gated")?;
        (phase(&p) == "Running" && container(&p, "containerStatuses", "app")["ready"] == true).then(|| ready_of(&p))?
    });
    assert_eq!(
        held,
        (
            "False".to_string(),
            "ReadinessGatesNotReady".into(),
            "corresponding condition of pod readiness gate \"example.com/load-balancer\" does not exist.".into()
        )
    );
    let kubeconfig = c.dir.path().join("kubeconfig");
    let patch = |status: &str| {
        let out = std::process::Command::new("kubectl")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["patch", "pod", "gated", "--subresource=status", "--type=json", "-p"])
            .arg(format!(r#"[{{"op":"add","path":"/status/conditions/-","value":{{"type":"example.com/load-balancer","status":"{status}"}}}}]"#))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    patch("True");
    wait_for_showing(
        T,
        "gated Ready once its gate's condition is True",
        || c.get_json("pods", "gated").map(|p| p["status"].to_string()).unwrap_or_default(),
        || {
            let p = c.get_json("pods", "gated")?;
            let kept = p["status"]["conditions"].as_array()?.iter().any(|c| c["type"] == "example.com/load-balancer");
            (kept && ready_of(&p)?.0 == "True").then_some(())
        },
    );

    // phase: readiness goes False → True → False as the file comes and goes
    let mut seen: Vec<String> = Vec::new();
    wait_for(T, "flappy Ready False, True, then False", || {
        let p = c.get_json("pods", "flappy")?;
        let ready = p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?["status"]
            .as_str()?
            .to_string();
        if phase(&p) == "Running" && seen.last() != Some(&ready) {
            seen.push(ready);
        }
        (seen.len() >= 3).then_some(())
    });
    assert_eq!(seen[..3], ["False", "True", "False"]);

    // phase: liveness failures restart the container
    let sick = wait_for(T, "sickly restarted by its liveness probe", || {
        let p = c.get_json("pods", "sickly")?;
        (restarts(container(&p, "containerStatuses", "app")) >= 1).then_some(p)
    });
    let last = &container(&sick, "containerStatuses", "app")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "killed by the probe: {last}");
    let events = c.ctl_ok(&["get", "events", "-o", "json"]);
    assert!(events.contains("Liveness probe failed"), "an Unhealthy event: {events}");

    // phase: httpGet readiness on a named port, and a passing tcpSocket liveness probe
    let web = wait_for(T, "web Ready through its httpGet probe", || {
        let p = c.get_json("pods", "web")?;
        (container(&p, "containerStatuses", "app")["ready"] == true).then_some(p)
    });
    // A negative check needs a window: a failing tcpSocket probe (delay 4 s, period 1 s,
    // threshold 3) would have killed the container within 7 s of its start.
    std::thread::sleep(Duration::from_secs(6));
    let web_now = c.get_json("pods", "web").unwrap();
    assert_eq!(restarts(container(&web_now, "containerStatuses", "app")), 0, "tcpSocket liveness passes: {web}");
}

#[test]
fn logs_follow_while_written_and_previous_shows_the_crashed_run() {
    use std::io::BufRead;
    let c = Cluster::with_nodes(3, 1, &[]);
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: "busybox:test"
    command: [sh, -c, "echo run-start; i=0; while [ $i -lt 8 ]; do echo line $i; i=$((i+1)); sleep 0.4; done; echo dying >&2; exit 3"]
"#,
    );
    wait_for(T, "talker running", || {
        let p = c.get_json("pods", "talker")?;
        (container(&p, "containerStatuses", "app")["state"]["running"].is_object()).then_some(())
    });
    // phase: --follow delivers lines as they are written, and ends when the run ends
    let mut child = std::process::Command::new(skiff_tests::skiff_bin())
        .env("SKIFF_CONFIG", c.dir.path().join("client.json"))
        .args(["logs", "talker", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    for line in reader.lines() {
        let line = line.unwrap();
        seen.push((std::time::Instant::now(), line));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "logs -f exited {status}");
    let text: Vec<&str> = seen.iter().map(|(_, l)| l.as_str()).collect();
    assert!(text.contains(&"line 0") && text.contains(&"line 7") && text.contains(&"dying"), "{text:?}");
    let at = |l: &str| seen.iter().find(|(_, x)| x == l).unwrap().0;
    assert!(
        at("line 7").duration_since(at("line 1")) >= Duration::from_millis(1500),
        "lines arrived together, not as written: {text:?}"
    );

    // phase: after the restart, --previous is the crashed run; --tail limits it
    wait_for(T, "talker restarted", || {
        let p = c.get_json("pods", "talker")?;
        (restarts(container(&p, "containerStatuses", "app")) >= 1).then_some(())
    });
    let previous = c.ctl_ok(&["logs", "talker", "--previous", "--tail", "2"]);
    assert_eq!(previous, "line 7\ndying\n");
    let missing = c.ctl(&["logs", "talker", "-c", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("container nope is not valid for pod talker"));
}

#[test]
fn env_and_volumes_come_from_config_maps_secrets_claims_and_static_pods_are_mirrored() {
    let manifests = tempfile::tempdir().unwrap();
    let pv_dir = tempfile::tempdir().unwrap();
    let arg = format!("--node-arg=--pod-manifest-path={}", manifests.path().display());
    let c = Cluster::with_nodes(3, 1, &[&arg]);
    c.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: hello}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
data: {{password: czNjcmV0}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv1}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  hostPath: {{path: "{}"}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: claim1}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
  volumeName: pv1
---
apiVersion: v1
kind: Pod
metadata: {{name: configured, labels: {{tier: demo}}}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: settings, configMap: {{name: settings}}}}
  - {{name: creds, secret: {{secretName: creds}}}}
  - {{name: data, persistentVolumeClaim: {{claimName: claim1}}}}
  - name: podinfo
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: mem, resourceFieldRef: {{containerName: app, resource: limits.memory, divisor: 1Mi}}}}
  - name: all-in-one
    projected:
      sources:
      - {{configMap: {{name: settings, items: [{{key: greeting, path: conf/greeting.txt}}]}}}}
      - {{secret: {{name: creds}}}}
      - {{downwardAPI: {{items: [{{path: name, fieldRef: {{fieldPath: metadata.name}}}}]}}}}
      - {{serviceAccountToken: {{path: token, expirationSeconds: 3600}}}}
  containers:
  - name: app
    image: "busybox:test"
    env:
    - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: settings, key: greeting}}}}}}
    - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}
    - {{name: MY_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: MY_TIER, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['tier']"}}}}}}
    - {{name: MY_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: MEM_MI, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}
    - {{name: CPU_M, valueFrom: {{resourceFieldRef: {{resource: requests.cpu, divisor: 1m}}}}}}
    envFrom:
    - {{prefix: CFG_, configMapRef: {{name: settings}}}}
    - {{secretRef: {{name: creds}}}}
    - {{configMapRef: {{name: absent, optional: true}}}}
    resources: {{requests: {{cpu: 0.25}}, limits: {{memory: 64Mi}}}}
    volumeMounts:
    - {{name: settings, mountPath: /etc/settings}}
    - {{name: creds, mountPath: /etc/creds, readOnly: true}}
    - {{name: data, mountPath: /data}}
    - {{name: podinfo, mountPath: /etc/podinfo}}
    - {{name: all-in-one, mountPath: /etc/all}}
    command: [sh, -c, "echo env $GREETING $PASSWORD $MY_NAME $MY_TIER $MY_IP; echo from $CFG_greeting $password res $MEM_MI $CPU_M; echo dapi $(cat /etc/podinfo/labels) $(cat /etc/podinfo/mem); echo proj $(cat /etc/all/conf/greeting.txt) $(cat /etc/all/password) $(cat /etc/all/name) $(head -c 3 /etc/all/token); echo file $(cat /etc/creds/password); echo persisted > /data/written; while true; do echo now $(cat /etc/settings/greeting); sleep 0.5; done"]
"#,
        pv_dir.path().display()
    ));
    let pod = wait_for(T, "configured Running", || {
        let p = c.get_json("pods", "configured")?;
        (phase(&p) == "Running").then_some(p)
    });
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    let logs = wait_for(T, "the container's first lines", || {
        let l = c.ctl_ok(&["logs", "configured"]);
        l.contains("now hello").then_some(l)
    });
    assert!(logs.contains(&format!("env hello s3cret configured demo {ip}")), "{logs}");
    assert!(logs.contains("file s3cret"), "{logs}");
    assert!(logs.contains("from hello s3cret res 64 250"), "envFrom and resourceFieldRef: {logs}");
    assert!(logs.contains("dapi tier=\"demo\" 64"), "a downwardAPI volume: {logs}");
    assert!(logs.contains("proj hello s3cret configured eyJ"), "a projected volume: {logs}");
    wait_for(T, "the claim's hostPath to hold the file", || {
        (std::fs::read_to_string(pv_dir.path().join("written")).ok()? == "persisted\n").then_some(())
    });

    // phase: a changed ConfigMap reaches the mounted file without a restart
    let mut cm = c.get_json("configmaps", "settings").unwrap();
    cm["data"]["greeting"] = Value::from("bonjour");
    let file = c.dir.path().join("cm.json");
    std::fs::write(&file, cm.to_string()).unwrap();
    c.ctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    wait_for(T, "the new greeting in the mounted file", || {
        c.ctl_ok(&["logs", "configured", "--tail", "1"]).contains("now bonjour").then_some(())
    });
    assert_eq!(restarts(container(&c.get_json("pods", "configured").unwrap(), "containerStatuses", "app")), 0);

    // phase: deleting a pod runs its container's preStop hook first; SIGTERM waits for it
    let seen = tempfile::tempdir().unwrap();
    c.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: stopper}}
spec:
  terminationGracePeriodSeconds: 20
  volumes: [{{name: seen, hostPath: {{path: "{}"}}}}]
  containers:
  - name: app
    image: "busybox:test"
    volumeMounts: [{{name: seen, mountPath: /seen}}]
    command: [sh, -c, "trap 'echo term $(date +%s) >> /seen/log; exit 0' TERM; echo up > /seen/up; while true; do sleep 0.2; done"]
    lifecycle:
      preStop: {{exec: {{command: [sh, -c, "echo prestop $(date +%s) >> /seen/log; sleep 2"]}}}}
"#,
        seen.path().display()
    ));
    wait_for(T, "stopper running", || seen.path().join("up").exists().then_some(()));
    c.ctl_ok(&["delete", "pod", "stopper"]);
    let log = wait_for(T, "the preStop hook and then SIGTERM", || {
        let log = std::fs::read_to_string(seen.path().join("log")).ok()?;
        (log.lines().count() == 2).then_some(log)
    });
    let times: Vec<(&str, i64)> = log
        .lines()
        .map(|l| {
            let (what, at) = l.split_once(' ').unwrap();
            (what, at.parse().unwrap())
        })
        .collect();
    assert_eq!((times[0].0, times[1].0), ("prestop", "term"), "{log}");
    assert!(times[1].1 - times[0].1 >= 2, "SIGTERM came before the hook's 2 s were up: {log}");

    // phase: a postStart hook runs before the pod is Ready; one that fails restarts the
    // container with a FailedPostStartHook event
    c.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: starter}}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{{name: seen, hostPath: {{path: "{}"}}}}]
  containers:
  - name: app
    image: "busybox:test"
    volumeMounts: [{{name: seen, mountPath: /seen}}]
    command: [sh, -c, "echo main >> /seen/start; exec sleep 3600"]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, "sleep 2; echo hook >> /seen/start"]}}}}
  - name: broken
    image: "busybox:test"
    command: [sleep, "3600"]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, "exit 3"]}}}}
"#,
        seen.path().display()
    ));
    let app_ready = |p: &Value| container(p, "containerStatuses", "app")["ready"] == true;
    wait_for(T, "the app container ready", || c.get_json("pods", "starter").filter(|p| app_ready(p)).map(|_| ()));
    let start = std::fs::read_to_string(seen.path().join("start")).unwrap();
    assert_eq!(start, "main\nhook\n", "ready before its postStart hook finished");
    wait_for(T, "a FailedPostStartHook event and a restart of the broken container", || {
        let p = c.get_json("pods", "starter")?;
        let events =
            c.ctl_ok(&["get", "events", "--field-selector", "involvedObject.name=starter,reason=FailedPostStartHook"]);
        (restarts(container(&p, "containerStatuses", "broken")) >= 1 && events.contains("exit 3")).then_some(())
    });
    c.ctl_ok(&["delete", "pod", "starter"]);

    // phase: a static pod manifest runs as a mirror pod; removing the file removes it
    std::fs::write(
        manifests.path().join("static.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: static-web}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers: [{name: app, image: \"busybox:test\", command: [sleep, \"3600\"]}]\n",
    )
    .unwrap();
    let mirror = wait_for(T, "mirror pod static-web-node-1 Running", || {
        let p = c.get_json("pods", "static-web-node-1")?;
        (phase(&p) == "Running").then_some(p)
    });
    assert!(mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string(), "{mirror}");
    assert_eq!(mirror["spec"]["nodeName"], "node-1");
    std::fs::remove_file(manifests.path().join("static.yaml")).unwrap();
    wait_for(T, "the mirror pod to go with its manifest", || {
        c.get_json("pods", "static-web-node-1").is_none().then_some(())
    });
}

#[test]
fn two_nodes_keep_separate_pod_networks_and_ride_out_a_master_failure() {
    let c = Cluster::with_nodes(3, 2, &["--node-arg=--lease-interval-seconds=1"]);
    let nodes = c.nodes();
    assert_eq!(nodes.len(), 2);
    let cidr = |n: &str| c.get_json("nodes", n).unwrap()["spec"]["podCIDR"].as_str().unwrap().to_string();
    let (cidr1, cidr2) = (cidr("node-1"), cidr("node-2"));
    assert_ne!(cidr1, cidr2, "each node has its own pod CIDR");
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: on-one}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: on-two}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    let running = |name: &str| {
        wait_for(T, &format!("{name} Running"), || {
            let p = c.get_json("pods", name)?;
            (phase(&p) == "Running").then_some(p)
        })
    };
    let (one, two) = (running("on-one"), running("on-two"));
    let prefix = |cidr: &str| cidr.rsplit_once('.').unwrap().0.to_string();
    assert!(one["status"]["podIP"].as_str().unwrap().starts_with(&prefix(&cidr1)), "{one}");
    assert!(two["status"]["podIP"].as_str().unwrap().starts_with(&prefix(&cidr2)), "{two}");

    // phase: SIGKILL the master every node talks to first; nodes fail over, pods keep running
    c.kill(1);
    let lease_time = || {
        let out = c.ctl(&["get", "lease", "node-1", "-n", "kube-node-lease", "-o", "json"]);
        out.status.success().then(|| {
            serde_json::from_slice::<Value>(&out.stdout).unwrap()["spec"]["renewTime"].as_str().unwrap().to_string()
        })
    };
    let before = wait_for(T, "the lease readable after the failure", lease_time);
    wait_for(T, "node-1 to renew its lease through another master", || {
        lease_time().filter(|t| *t > before).map(|_| ())
    });
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: after-failure}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    running("after-failure");
    let one_now = c.get_json("pods", "on-one").unwrap();
    assert_eq!(restarts(container(&one_now, "containerStatuses", "app")), 0);
    assert_eq!(
        container(&one_now, "containerStatuses", "app")["state"]["running"]["startedAt"],
        container(&one, "containerStatuses", "app")["state"]["running"]["startedAt"]
    );
}

#[test]
fn host_ports_reach_the_pod_on_the_node_address_and_go_with_it() {
    use std::io::{Read, Write};
    let c = Cluster::with_nodes(3, 1, &[]);
    let host_port = 30000 + (std::process::id() % 2000) as u16;
    c.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: published}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: "busybox:test"
    command: [sh, -c, "mkdir -p /www && echo hello-through-hostport > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{{containerPort: 8080, hostPort: {host_port}}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"#
    ));
    let pod = wait_for(T, "published Ready", || {
        let p = c.get_json("pods", "published")?;
        (container(&p, "containerStatuses", "web")["ready"] == true).then_some(p)
    });
    let node_ip = pod["status"]["hostIP"].as_str().unwrap().to_string();
    // phase: the node's address and host port answer with the pod's page
    let addr = format!("{node_ip}:{host_port}");
    let body = wait_for(T, &format!("an HTTP answer on {addr}"), || {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.contains("hello-through-hostport").then_some(out)
    });
    assert!(body.starts_with("HTTP/1."), "{body}");

    // phase: deleting the pod removes its rule
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    c.ctl_ok(&["delete", "pod", "published"]);
    wait_for(T, "the pod's DNAT rule to go", || {
        let rules = std::process::Command::new("iptables").args(["-w", "5", "-t", "nat", "-S"]).output().ok()?;
        (!String::from_utf8_lossy(&rules.stdout).contains(&uid)).then_some(())
    });
}

#[test]
fn top_shows_node_and_pod_usage_from_cgroups() {
    let c = Cluster::with_nodes(3, 1, &[]);
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: burner}
spec:
  terminationGracePeriodSeconds: 0
  containers: [{name: app, image: "busybox:test", command: [sh, -c, "while true; do :; done"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: idler}
spec:
  terminationGracePeriodSeconds: 0
  containers: [{name: app, image: "busybox:test", command: [sleep, "3600"]}]
"#,
    );
    for name in ["burner", "idler"] {
        wait_for(T, &format!("{name} Running"), || {
            let p = c.get_json("pods", name)?;
            (phase(&p) == "Running").then_some(())
        });
    }
    // phase: after a sampling interval the busy pod uses most of a core, the idle one none
    let millicores = |table: &str, name: &str| -> Option<i64> {
        let line = table.lines().find(|l| l.split_whitespace().next() == Some(name))?;
        line.split_whitespace().nth(1)?.strip_suffix('m')?.parse().ok()
    };
    let table = wait_for(T, "top pods to see the burner busy", || {
        let out = c.ctl(&["top", "pods"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (millicores(&text, "burner")? >= 300).then_some(text)
    });
    assert!(table.starts_with("NAME"), "{table}");
    assert!(millicores(&table, "idler").unwrap() < 100, "{table}");
    let nodes = c.ctl_ok(&["top", "nodes"]);
    assert!(millicores(&nodes, "node-1").unwrap() >= 300, "{nodes}");
    assert!(nodes.lines().next().unwrap().contains("MEMORY%"), "{nodes}");
}
