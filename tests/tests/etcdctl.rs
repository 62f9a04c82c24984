//! The real `etcdctl` (Debian etcd-client 3.4) against a 3-master Skiff cluster.

use skiff_tests::{wait_for, Cluster};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn etcdctl_kv_txn_members_and_status() {
    let c = Cluster::up(3, &[]);
    let (e1, e2, e3) = (c.masters[0].etcd.clone(), c.masters[1].etcd.clone(), c.masters[2].etcd.clone());

    // phase: put through each master, read through another
    assert_eq!(c.etcdctl_ok(&e1, &["put", "app/a", "1"]).trim(), "OK");
    assert_eq!(c.etcdctl_ok(&e2, &["put", "app/b", "2"]).trim(), "OK");
    assert_eq!(c.etcdctl_ok(&e3, &["put", "other", "3"]).trim(), "OK");
    assert_eq!(c.etcdctl_ok(&e3, &["get", "--prefix", "app/"]), "app/a\n1\napp/b\n2\n");

    // phase: delete
    assert_eq!(c.etcdctl_ok(&e2, &["del", "app/a"]).trim(), "1");
    assert_eq!(c.etcdctl_ok(&e1, &["get", "--prefix", "app/"]), "app/b\n2\n");

    // phase: txn, both branches
    let txn = |endpoint: &str, expect: &str| {
        let mut child = skiff_tests::etcdctl_command(endpoint)
            .arg(format!("--user=root:{}", c.root_password()))
            .args(["txn"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let script = format!("value(\"app/b\") = \"{expect}\"\n\nput app/b swapped\n\nput app/failed yes\n\n");
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    assert!(txn(&e1, "2").starts_with("SUCCESS"), "compare on the current value succeeds");
    assert!(txn(&e2, "2").starts_with("FAILURE"), "the same compare now fails");
    assert_eq!(c.etcdctl_ok(&e3, &["get", "--prefix", "app/"]), "app/b\nswapped\napp/failed\nyes\n");

    // phase: members and endpoint status
    let members = c.etcdctl_ok(&e1, &["member", "list"]);
    let scheme = if c.ca().is_some() { "https" } else { "http" };
    for m in &c.masters {
        assert!(members.contains(&m.name) && members.contains(&format!("{scheme}://{}", m.etcd)), "{members}");
    }
    // The member list's URLs are dialable as listed: --cluster reaches every member through them.
    let listed = c.etcdctl_ok(&e1, &["endpoint", "status", "--cluster"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let status = c.etcdctl_ok(&c.endpoints(), &["endpoint", "status"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    assert_eq!(status.matches(", true, false,").count(), 1, "exactly one leader:\n{status}");

    // phase: a backup with `etcdctl snapshot save` from a follower, checked by `skiff snapshot
    // status`; a file cut short or changed is refused by name
    for i in 0..200 {
        c.etcdctl_ok(&e1, &["put", &format!("backup/{i:03}"), &"x".repeat(100)]);
    }
    let revision = skiff_tests::runtime().block_on(c.revision(&e1)).expect("revision");
    let file = c.dir.path().join("backup.db");
    let follower =
        c.masters.iter().find(|m| !status.lines().any(|l| l.contains(&m.etcd) && l.contains(", true, false,")));
    let follower = &follower.expect("a follower").etcd;
    skiff_tests::wait_for(Duration::from_secs(10), "the follower to apply every put", || {
        (skiff_tests::runtime().block_on(skiff_tests::status(follower)).ok()?.header?.revision >= revision)
            .then_some(())
    });
    let saved = c.etcdctl_ok(follower, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let out = skiff_tests::skiff(&["snapshot", "status", "-w", "json", file.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["revision"].as_i64(), Some(revision), "{v}");
    // The 200 backups, app/b, app/failed and other, and whatever the control plane keeps.
    assert!(v["totalKey"].as_u64().is_some_and(|n| n >= 203), "{v}");
    let bytes = std::fs::read(&file).unwrap();
    let cut = c.dir.path().join("cut.db");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    let changed = c.dir.path().join("changed.db");
    std::fs::write(&changed, &flipped).unwrap();
    for (bad, why) in [(&cut, "cut short"), (&changed, "SHA-256 does not match")] {
        let out = std::process::Command::new(skiff_tests::skiff_bin())
            .args(["snapshot", "status", bad.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{}: {err}", bad.display());
    }
}

#[test]
fn etcdctl_lock_waits_for_the_holder_and_elect_reports_the_leader() {
    let c = Cluster::up(3, &[]);
    let (e1, e2) = (c.masters[0].etcd.clone(), c.masters[1].etcd.clone());
    let user = format!("--user=root:{}", c.root_password());
    let spawn = |endpoint: &str, args: &[&str]| {
        skiff_tests::etcdctl_command(endpoint).arg(&user).args(args).stdout(Stdio::piped()).spawn().unwrap()
    };
    // The first holds the lock (printing its key) until it is told to stop.
    let mut holder = spawn(&e1, &["lock", "ctl-lock"]);
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let key = lines.next().expect("the holder prints its key").unwrap();
    assert!(key.starts_with("ctl-lock/"), "{key}");
    let mut waiter = spawn(&e2, &["lock", "ctl-lock", "--", "echo", "second holder ran"]);
    // The second has queued its key behind the first's, and waits.
    wait_for(Duration::from_secs(15), "the second etcdctl's key queued behind the first's", || {
        let keys = c.etcdctl_ok(&e1, &["get", "--prefix", "ctl-lock/", "--keys-only"]);
        (keys.lines().filter(|l| !l.is_empty()).count() == 2).then_some(())
    });
    assert!(waiter.try_wait().unwrap().is_none(), "the second ran while the first held the lock");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(holder.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_for(Duration::from_secs(15), "the second to take the lock", || waiter.try_wait().unwrap());
    let _ = holder.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut waiter.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success() && out.contains("second holder ran"), "{status}: {out}");

    // An election: the candidate proclaims, `elect -l` observes it.
    let mut candidate = spawn(&e1, &["elect", "ctl-election", "candidate-one"]);
    let mut said = BufReader::new(candidate.stdout.take().unwrap()).lines();
    let leader_key = said.next().expect("the leader prints its key").unwrap();
    assert!(leader_key.starts_with("ctl-election/"), "{leader_key}");
    let mut observer = spawn(&e2, &["elect", "-l", "ctl-election"]);
    let mut seen = BufReader::new(observer.stdout.take().unwrap()).lines();
    let first: Vec<String> = (0..2).map(|_| seen.next().expect("observed").unwrap()).collect();
    assert_eq!(first[1], "candidate-one", "{first:?}");
    for child in [&mut candidate, &mut observer] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn etcdctl_watch_on_one_master_sees_writes_through_another() {
    let c = Cluster::up(3, &[]);
    let (e1, e2, e3) = (c.masters[0].etcd.clone(), c.masters[1].etcd.clone(), c.masters[2].etcd.clone());
    let mut watch = skiff_tests::etcdctl_command(&e1)
        .arg(format!("--user=root:{}", c.root_password()))
        .args(["watch", "--prefix", "w/"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The watch is registered when a write made after it starts is seen.
    let mut lines = Vec::new();
    wait_for(Duration::from_secs(15), "the watch to see a probe write", || {
        c.etcdctl_ok(&e2, &["put", "w/probe", "x"]);
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
            lines.push(l);
        }
        lines.iter().any(|l| l == "w/probe").then_some(())
    });
    c.etcdctl_ok(&e2, &["put", "w/a", "1"]);
    c.etcdctl_ok(&e3, &["put", "w/b", "2"]);
    c.etcdctl_ok(&e2, &["del", "w/a"]);
    c.etcdctl_ok(&e3, &["put", "not-watched", "x"]);
    // etcdctl prints each event as three lines: type, key, value. Under load the loop above may
    // have put the probe more than once before the watch showed it; those events are not ours.
    let ours = |lines: &[String]| -> Vec<String> {
        lines.chunks(3).filter(|e| e.get(1).is_some_and(|k| k != "w/probe")).flatten().cloned().collect()
    };
    wait_for(Duration::from_secs(10), "three watch events", || {
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(l);
        }
        (ours(&lines).len() >= 9).then_some(())
    });
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(ours(&lines)[..9], ["PUT", "w/a", "1", "PUT", "w/b", "2", "DELETE", "w/a", ""], "{lines:?}");

    // phase: history replay from a revision through a third master
    let rt = skiff_tests::runtime();
    let events = rt.block_on(async {
        use skiff_proto::etcdserverpb::{watch_client::WatchClient, watch_request, WatchCreateRequest, WatchRequest};
        let ch = skiff_tests::channel(&e3).await.unwrap();
        let token = skiff_tests::etcd_token(&c.root_token(&e3).await.unwrap());
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"w/".to_vec(),
                range_end: b"w0".to_vec(),
                start_revision: 1,
                ..Default::default()
            })),
        };
        let mut stream =
            WatchClient::with_interceptor(ch, token).watch(tokio_stream_once(create)).await.unwrap().into_inner();
        let mut keys = Vec::new();
        while keys.iter().filter(|(_, k)| k != "w/probe").count() < 3 {
            let resp = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
            keys.extend(
                resp.events
                    .iter()
                    .map(|e| (e.r#type, String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned())),
            );
        }
        keys
    });
    // The history starts with the probe put(s), then exactly our three events, in order.
    let probes = events.iter().take_while(|(t, k)| *t == 0 && k == "w/probe").count();
    assert!(probes >= 1, "replay from revision 1 lacks the probe: {events:?}");
    assert_eq!(
        events[probes..],
        [(0, "w/a".to_string()), (0, "w/b".into()), (1, "w/a".into())],
        "replay from revision 1 is complete and ordered: {events:?}"
    );
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures_like::Stream<Item = T> {
    futures_like::once_then_pending(item)
}

/// A request stream that sends one message and then stays open (closing it would end the watch).
mod futures_like {
    pub use tokio_stream::Stream;
    pub fn once_then_pending<T: Send + 'static>(item: T) -> impl Stream<Item = T> {
        use tokio_stream::StreamExt;
        tokio_stream::once(item).chain(tokio_stream::pending())
    }
}

#[test]
fn etcdctl_leases_expire_keys_and_keep_alive_keeps_them() {
    let c = Cluster::up(3, &[]);
    let (e1, e2, e3) = (c.masters[0].etcd.clone(), c.masters[1].etcd.clone(), c.masters[2].etcd.clone());

    // phase: a key on a 3s lease vanishes once the lease expires
    let granted = c.etcdctl_ok(&e1, &["lease", "grant", "3"]);
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    c.etcdctl_ok(&e2, &["put", "--lease", &id, "ephemeral", "v"]);
    assert_eq!(c.etcdctl_ok(&e3, &["get", "ephemeral"]), "ephemeral\nv\n");
    let ttl = c.etcdctl_ok(&e3, &["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("attached keys([ephemeral])"), "{ttl}");
    wait_for(Duration::from_secs(15), "the leased key to expire", || {
        c.etcdctl_ok(&e3, &["get", "ephemeral"]).is_empty().then_some(())
    });
    assert!(c.etcdctl_ok(&e1, &["lease", "timetolive", &id]).contains("already expired"));

    // phase: keep-alive through a follower keeps another leased key past its TTL
    let granted = c.etcdctl_ok(&e2, &["lease", "grant", "3"]);
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    c.etcdctl_ok(&e1, &["put", "--lease", &id, "kept", "v"]);
    let mut ka = skiff_tests::etcdctl_command(&e3)
        .arg(format!("--user=root:{}", c.root_password()))
        .args(["lease", "keep-alive", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        assert_eq!(c.etcdctl_ok(&e1, &["get", "kept"]), "kept\nv\n", "kept alive for {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = ka.kill();
    let _ = ka.wait();
    wait_for(Duration::from_secs(15), "the key to expire once keep-alives stop", || {
        c.etcdctl_ok(&e2, &["get", "kept"]).is_empty().then_some(())
    });
}
