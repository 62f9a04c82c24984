//! Backup and restore as an operator does it: `etcdctl snapshot save` from a loaded 3-master
//! cluster with a node, `skiff down --purge`, `skiff up --restore FILE`. The restored cluster
//! serves every key at the snapshot's revision (and nothing written after it), the Deployment
//! from before runs again on the node, and a master added afterwards receives the store.

use serde_json::Value;
use skiff_tests::{runtime, skiff, status, wait_for, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: kept}
spec:
  replicas: 2
  selector: {matchLabels: {app: kept}}
  template:
    metadata: {labels: {app: kept}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: app
        image: "busybox:test"
        command: [sh, -c, "touch /tmp/ready; exec sleep 3600"]
        readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}
"#;

/// The Deployment's pods that are Ready: name → their container's `startedAt`.
fn ready_pods(c: &Cluster) -> Vec<(String, String)> {
    let out = c.ctl_ok(&["get", "pods", "-l", "app=kept", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut pods: Vec<(String, String)> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| skiff_tests::ready(p))
        .map(|p| {
            let started = &p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"];
            (p["metadata"]["name"].as_str().unwrap().to_string(), started.as_str().unwrap_or_default().to_string())
        })
        .collect();
    pods.sort();
    pods
}

fn etcdctl_lines(c: &Cluster, addr: &str, args: &[&str]) -> Vec<String> {
    c.etcdctl_ok(addr, args).lines().map(String::from).collect()
}

#[test]
fn a_cluster_restored_from_etcdctl_snapshot_save_serves_its_keys_and_runs_its_deployment() {
    let mut c = Cluster::with_nodes(3, 1, &["--snapshot-interval", "1", "--snapshot-retain", "2"]);
    let e1 = c.masters[0].etcd.clone();
    c.apply_yaml(DEPLOYMENT);
    let before = wait_for(T, "the Deployment's 2 pods Ready", || {
        let pods = ready_pods(&c);
        (pods.len() == 2).then_some(pods)
    });
    assert!(before.iter().all(|(_, started)| started.ends_with('Z')), "running since: {before:?}");
    for i in 0..300 {
        c.etcdctl_ok(&c.masters[i % 3].etcd, &["put", &format!("restore/{i:03}"), &format!("v{i}")]);
    }
    c.etcdctl_ok(&e1, &["put", "restore/changed", "before"]);

    // phase: scheduled backups — each master keeps its newest two, each a whole backup
    for m in &c.masters {
        let dir = std::path::Path::new(&m.data_dir).join("backups");
        let names = || -> Vec<String> {
            let mut n: Vec<String> = std::fs::read_dir(&dir)
                .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
                .unwrap_or_default();
            n.retain(|n| n.starts_with(&format!("skiff-snapshot-{}-", m.name)) && n.ends_with(".db"));
            n.sort();
            n
        };
        let first =
            wait_for(Duration::from_secs(20), "two scheduled backups", || Some(names()).filter(|n| n.len() == 2));
        let later = wait_for(Duration::from_secs(20), "a newer backup in place of the oldest", || {
            Some(names()).filter(|n| n.len() == 2 && *n != first)
        });
        assert!(later[0] > first[0], "{}: {first:?} then {later:?}", m.name);
        let newest = dir.join(&later[1]);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&newest).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "{}: a backup holds every Secret: {mode:o}", newest.display());
        let status = skiff(&["snapshot", "status", "-w", "json", newest.to_str().unwrap()]);
        assert!(status.contains("\"revision\""), "{status}");
    }

    // phase: back up from a follower while the cluster runs
    let rt = runtime();
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let follower = c.masters.iter().find(|m| m.id != leader).unwrap().etcd.clone();
    let revision = rt.block_on(c.revision(&e1)).expect("revision");
    wait_for(Duration::from_secs(10), "the follower to apply every put", || {
        (rt.block_on(status(&follower)).ok()?.header?.revision >= revision).then_some(())
    });
    let file = c.dir.path().join("backup.db");
    let saved = c.etcdctl_ok(&follower, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let status_json = skiff(&["snapshot", "status", "-w", "json", file.to_str().unwrap()]);
    let summary: Value = serde_json::from_str(&status_json).unwrap_or_else(|e| panic!("{e}: {status_json}"));
    let snapshot_rev = summary["revision"].as_i64().expect("revision");
    assert!(snapshot_rev >= revision, "{summary}");
    // `skiff snapshot restore` builds one member's data directory (etcdutl's command); never
    // over an existing one.
    let restored = c.dir.path().join("by-hand");
    let restore_args =
        ["snapshot", "restore", file.to_str().unwrap(), "--data-dir", restored.to_str().unwrap(), "--initial-cluster"];
    let out = skiff(&[&restore_args[..], &["1=127.0.0.1:1/127.0.0.1:2"]].concat());
    assert!(out.contains(&format!("at revision {snapshot_rev} into")), "{out}");
    let again = std::process::Command::new(skiff_tests::skiff_bin())
        .args(restore_args)
        .arg("1=127.0.0.1:1/127.0.0.1:2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("already exists"), "{err}");
    let expected = etcdctl_lines(&c, &e1, &["get", "restore/", "--prefix", &format!("--rev={snapshot_rev}")]);
    assert_eq!(expected.len(), 2 * 301, "300 keys and restore/changed, a key and a value each");

    // Written after the backup: the restore must not bring these.
    c.etcdctl_ok(&e1, &["put", "restore/after", "x"]);
    c.etcdctl_ok(&e1, &["put", "restore/changed", "after"]);
    c.etcdctl_ok(&e1, &["del", "restore/000"]);

    // phase: stop everything, containers too, and restore
    let dir = c.dir.path().to_str().unwrap().to_string();
    skiff(&["down", "--dir", &dir, "--purge"]);
    let up = skiff(&["up", "--dir", &dir, "--restore", file.to_str().unwrap(), "--timeout", "90"]);
    assert!(up.contains("Skiff cluster up"), "{up}");
    c.reload();
    let asides: Vec<_> = c
        .masters
        .iter()
        .filter_map(|m| std::fs::read_dir(m.data_dir.parent().unwrap()).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.before-restore-"))
        .collect();
    assert_eq!(asides.len(), 3, "each master's old data directory is kept beside the restored one");

    // phase: every key at the snapshot's revision, on every master, and nothing written after
    for m in &c.masters {
        wait_for(Duration::from_secs(20), "every master to apply the restored store", || {
            (rt.block_on(status(&m.etcd)).ok()?.header?.revision >= snapshot_rev).then_some(())
        });
        let got = etcdctl_lines(&c, &m.etcd, &["get", "restore/", "--prefix", "--consistency=s"]);
        assert_eq!(got, expected, "{}: the restored keys", m.name);
    }
    let at = etcdctl_lines(&c, &e1, &["get", "restore/", "--prefix", &format!("--rev={snapshot_rev}")]);
    assert_eq!(at, expected, "reads at the snapshot's revision");
    assert_eq!(etcdctl_lines(&c, &e1, &["get", "restore/changed", "--print-value-only"]), ["before"]);
    // The root password of this cluster directory opens the restored store (the etcdctl
    // calls above used it), and writes go on from the snapshot's revision.
    c.etcdctl_ok(&e1, &["put", "restore/new", "y"]);
    assert!(rt.block_on(c.revision(&e1)).unwrap() > snapshot_rev);

    // phase: the Deployment from before runs again: the same pods, started anew on the node
    let after = wait_for(T, "the Deployment's pods Ready again, started after the restore", || {
        let pods = ready_pods(&c);
        let names: Vec<&String> = pods.iter().map(|(n, _)| n).collect();
        let restarted = pods.iter().zip(&before).all(|((_, now), (_, then))| now > then);
        (names == before.iter().map(|(n, _)| n).collect::<Vec<_>>() && restarted).then_some(pods)
    });
    assert_eq!(after.len(), 2, "{after:?} (before: {before:?})");

    // phase: a master added after the restore receives the whole store
    let ports = skiff_chaos::net::free_loopback_ports(2).unwrap();
    let (peer, client) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));
    let added = c.etcdctl_ok(&e1, &["member", "add", "master-4", "--learner", &format!("--peer-urls=http://{peer}")]);
    let id = u64::from_str_radix(added.split_whitespace().nth(1).expect("member id"), 16).unwrap();
    let _joiner = c.start_joiner(id, "master-4", &peer, &client);
    let rev = rt.block_on(c.revision(&e1)).unwrap();
    wait_for(Duration::from_secs(30), "the added master to catch up", || {
        (rt.block_on(status(&client)).ok()?.header?.revision >= rev).then_some(())
    });
    let (h1, _) = rt.block_on(c.hash_kv(&e1, rev)).expect("hash on master-1");
    let last = std::cell::RefCell::new(String::new());
    let (h4, _) = skiff_tests::wait_for_showing(
        Duration::from_secs(20),
        "master-4's hash",
        || {
            format!(
                "{}\nmaster-4's log:\n{}",
                last.borrow(),
                std::fs::read_to_string(c.dir.path().join("master-4/master.log")).unwrap_or_default()
            )
        },
        || rt.block_on(c.hash_kv(&client, rev)).map_err(|e| *last.borrow_mut() = e).ok(),
    );
    assert_eq!(h4, h1, "the added master holds the same store at revision {rev}");
}
