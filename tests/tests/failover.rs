//! Losing masters loses nothing: leader SIGKILL, SIGTERM, restart from the data dir, and
//! catch-up through a snapshot after the others compacted their logs.

use skiff_tests::{assert_same_hash, runtime, status, wait_for, Cluster};
use std::time::{Duration, Instant};

/// Writes `key` through any of `addrs`, retrying while no leader is available; returns the
/// revision. A write is retried only after an Unavailable answer.
fn put_retrying(c: &Cluster, addrs: &[String], key: &str, value: &str, timeout: Duration) -> i64 {
    let rt = runtime();
    let deadline = Instant::now() + timeout;
    for addr in addrs.iter().cycle() {
        let last = match rt.block_on(c.put(addr, key, value.as_bytes())) {
            Ok(rev) => return rev,
            Err(e) if e.code() == tonic::Code::Unavailable => e,
            Err(e) => panic!("put {key} through {addr}: {e}"),
        };
        assert!(Instant::now() < deadline, "no write succeeded within {timeout:?}; last error: {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

#[test]
fn sigkill_of_the_leader_loses_no_acknowledged_write() {
    let mut c = Cluster::up(3, &[]);
    let all: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    let addrs: Vec<String> = c.masters.iter().map(|m| m.etcd.clone()).collect();

    // phase: writes through every master
    let mut acked = Vec::new();
    for i in 0..30 {
        let key = format!("before/{i}");
        put_retrying(&c, &addrs[i % 3..i % 3 + 1], &key, &i.to_string(), Duration::from_secs(10));
        acked.push((key, i.to_string()));
    }

    // phase: kill the leader
    let leader = c.wait_leader(&all, Duration::from_secs(10));
    c.kill(leader);
    let survivors: Vec<u64> = all.iter().copied().filter(|&id| id != leader).collect();
    let survivor_addrs: Vec<String> = survivors.iter().map(|&id| c.master(id).etcd.clone()).collect();
    let killed_at = Instant::now();
    let new_leader = c.wait_leader(&survivors, Duration::from_secs(15));
    assert_ne!(new_leader, leader);

    // phase: writes succeed again through the survivors
    put_retrying(&c, &survivor_addrs, "after/0", "0", Duration::from_secs(15));
    eprintln!("first write after the kill took {:?}", killed_at.elapsed());
    for i in 1..30 {
        let key = format!("after/{i}");
        put_retrying(&c, &survivor_addrs[i % 2..i % 2 + 1], &key, &i.to_string(), Duration::from_secs(10));
        acked.push((key, i.to_string()));
    }

    // phase: every acknowledged write is readable (linearizable) through each survivor
    let rt = runtime();
    for addr in &survivor_addrs {
        for (k, v) in &acked {
            let got = rt.block_on(c.get(addr, k, false)).unwrap_or_else(|e| panic!("get {k} via {addr}: {e}"));
            assert_eq!(got.as_deref(), Some(v.as_bytes()), "{k} through {addr}");
        }
    }

    // phase: the killed master restarts from its data dir and catches up
    c.restart_stopped();
    let revision = rt.block_on(status(&survivor_addrs[0])).unwrap().header.unwrap().revision;
    assert_same_hash(&c, &all, revision);
    for (k, v) in &acked {
        assert_eq!(rt.block_on(c.get(&c.master(leader).etcd, k, true)).unwrap().as_deref(), Some(v.as_bytes()));
    }
}

#[test]
fn sigterm_stops_a_leader_cleanly_and_the_others_carry_on() {
    let mut c = Cluster::up(3, &[]);
    let all: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    let leader = c.wait_leader(&all, Duration::from_secs(10));
    let pid = c.master(leader).pid;
    // An open watch (and the controllers' own informer watches) must not hold the exit.
    let mut watcher = skiff_tests::etcdctl_command(&c.master(leader).etcd)
        .arg(format!("--user=root:{}", c.root_password()))
        .args(["watch", "held-open"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcdctl");
    wait_for(Duration::from_secs(10), "the watch to be open on the leader", || {
        let out = std::process::Command::new("ss").args(["-Htn", "state", "established"]).output().ok()?;
        let port = c.master(leader).etcd.rsplit(':').next()?.to_string();
        String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")).then_some(())
    });
    c.signal(leader, nix::sys::signal::Signal::SIGTERM);
    wait_for(Duration::from_secs(10), "the leader to exit on SIGTERM", || (!skiff_tests::pid_alive(pid)).then_some(()));
    let _ = watcher.kill();
    let _ = watcher.wait();
    let survivors: Vec<u64> = all.iter().copied().filter(|&id| id != leader).collect();
    c.wait_leader(&survivors, Duration::from_secs(10));
    let addrs: Vec<String> = survivors.iter().map(|&id| c.master(id).etcd.clone()).collect();
    let rev = put_retrying(&c, &addrs, "after-term", "ok", Duration::from_secs(10));
    c.restart_stopped();
    assert_same_hash(&c, &all, rev);
}

#[test]
fn a_member_that_missed_compaction_catches_up_through_a_snapshot() {
    let mut c = Cluster::up(3, &["--snapshot-logs", "40"]);
    let all: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    let leader = c.wait_leader(&all, Duration::from_secs(10));
    let lagging = *all.iter().find(|&&id| id != leader).unwrap();
    c.kill(lagging);
    let up: Vec<String> = all.iter().filter(|&&id| id != lagging).map(|&id| c.master(id).etcd.clone()).collect();

    // phase: enough writes that the others snapshot and purge the entries it would need
    let mut rev = 0;
    for i in 0..400 {
        rev = put_retrying(&c, &up, &format!("bulk/{}", i % 50), &"x".repeat(100 + i), Duration::from_secs(10));
    }
    let rt = runtime();
    rt.block_on(async {
        use skiff_proto::etcdserverpb::{kv_client::KvClient, CompactionRequest};
        let ch = skiff_tests::channel(&up[0]).await.unwrap();
        let req = c.as_root(&up[0], CompactionRequest { revision: rev - 10, physical: true }).await.unwrap();
        KvClient::new(ch).compact(req).await.unwrap();
    });
    let rev = put_retrying(&c, &up, "last", "1", Duration::from_secs(10));

    // phase: restart; it must install a snapshot and end with the same history
    c.restart_stopped();
    assert_same_hash(&c, &all, rev);
    let log = std::fs::read_to_string(&c.master(lagging).log).unwrap();
    assert!(
        log.contains("installed snapshot"),
        "the lagging member caught up without a snapshot:\n{}",
        c.log_tail(lagging)
    );
    assert_eq!(rt.block_on(c.get(&c.master(lagging).etcd, "bulk/49", true)).unwrap().map(|v| v.len()), Some(100 + 399));
}

/// A follower that missed more entries than one peer message may carry catches up by appends
/// split to the message budget (a snapshot chunk's worth each), not by a batch the transport
/// refuses: 24 one-MiB values pile up while it is stopped, then it must reach the same hash.
#[test]
fn a_follower_behind_by_many_large_entries_catches_up_in_bounded_messages() {
    use nix::sys::signal::Signal;
    let c = Cluster::up(3, &[]);
    let all: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    let leader = c.wait_leader(&all, Duration::from_secs(10));
    let lagging = *all.iter().find(|&&id| id != leader).unwrap();
    let up: Vec<String> = all.iter().filter(|&&id| id != lagging).map(|&id| c.master(id).etcd.clone()).collect();
    c.signal(lagging, Signal::SIGSTOP);
    let mut rev = 0;
    for i in 0..24 {
        rev = put_retrying(&c, &up, &format!("big/{i}"), &"x".repeat(1 << 20), Duration::from_secs(20));
    }
    c.signal(lagging, Signal::SIGCONT);
    assert_same_hash(&c, &all, rev);
    let log = std::fs::read_to_string(&c.master(lagging).log).unwrap();
    assert!(
        !log.contains("installed snapshot"),
        "it caught up through a snapshot, not appends:\n{}",
        c.log_tail(lagging)
    );
    let rt = runtime();
    let got = rt.block_on(c.get(&c.master(lagging).etcd, "big/23", true)).unwrap();
    assert_eq!(got.map(|v| v.len()), Some(1 << 20));
}

/// A controller's writes carry the term of the leadership it read under (DESIGN.md rule 4):
/// the leader of that term takes them; a follower refuses rather than forwards them; the next
/// leader refuses them; and a fence that is not a term is refused by name. Refused writes
/// leave nothing behind.
#[test]
fn writes_fenced_to_a_leadership_are_refused_once_it_is_over() {
    use serde_json::json;
    use skiff_client::{Client, ClientConfig};
    let mut c = Cluster::up(3, &[]);
    let all: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    let token = c.admin_token();
    let client_of = |c: &Cluster, id: u64| {
        Client::new(ClientConfig {
            endpoints: vec![c.master(id).etcd.clone()],
            token: Some(token.clone()),
            ca: c.ca(),
            client_cert: None,
            namespace: "default".into(),
            timeout: Duration::from_secs(10),
        })
        .expect("client")
    };
    let cm =
        |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}});
    let rt = runtime();
    // Channels connect lazily, on the runtime that makes them.
    let _in_runtime = rt.enter();
    let term_of = |c: &Cluster, id: u64| rt.block_on(status(&c.master(id).etcd)).expect("status").raft_term;

    // phase: the leader takes a write fenced to its own term
    let leader = c.wait_leader(&all, Duration::from_secs(10));
    let term = term_of(&c, leader);
    rt.block_on(client_of(&c, leader).fenced(term).create("configmaps", "default", &cm("in-term")))
        .unwrap_or_else(|e| panic!("a write fenced to the leader's own term {term}: {e}"));

    // phase: a follower refuses it instead of forwarding it to the leader
    let follower = *all.iter().find(|&&id| id != leader).expect("a follower");
    let e = rt
        .block_on(client_of(&c, follower).fenced(term).create("configmaps", "default", &cm("via-follower")))
        .expect_err("a follower took a fenced write");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");

    // phase: once the leader is dead, its term's writes are refused by the next leader
    c.kill(leader);
    let survivors: Vec<u64> = all.iter().copied().filter(|&id| id != leader).collect();
    let next = c.wait_leader(&survivors, Duration::from_secs(15));
    let next_term = term_of(&c, next);
    assert!(next_term > term, "the next leader's term {next_term} is not past {term}");
    let e = rt
        .block_on(client_of(&c, next).fenced(term).create("configmaps", "default", &cm("stale-term")))
        .expect_err("the next leader took a write of the old leadership");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains(&format!("term {term}")), "{e}");
    rt.block_on(client_of(&c, next).fenced(next_term).create("configmaps", "default", &cm("next-term")))
        .unwrap_or_else(|e| panic!("a write fenced to the new leader's term {next_term}: {e}"));

    // phase: a fence that is not a term is refused, naming the header
    let bad = rt.block_on(async {
        let channel = skiff_tests::channel(&c.master(next).etcd).await.expect("channel");
        let mut auth = skiff_tests::bearer(&token);
        let mut client = skiff_proto::api::objects_client::ObjectsClient::with_interceptor(channel, move |req| {
            let mut req = auth(req)?;
            req.metadata_mut().insert(skiff_proto::FENCE_HEADER, "yesterday".parse().expect("ASCII"));
            Ok(req)
        });
        let req = skiff_proto::api::RawRequest {
            resource: "configmaps".into(),
            namespace: "default".into(),
            json: cm("bad-fence").to_string(),
            ..Default::default()
        };
        client.create(req).await
    });
    let e = bad.expect_err("a write with a malformed fence was taken");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains(skiff_proto::FENCE_HEADER) && e.message().contains("yesterday"), "{e}");

    // phase: only the two writes that were in term exist
    c.restart_stopped();
    for (name, exists) in
        [("in-term", true), ("via-follower", false), ("stale-term", false), ("next-term", true), ("bad-fence", false)]
    {
        assert_eq!(c.get_json("configmaps", name).is_some(), exists, "configmap {name}");
    }
}

/// A client whose master stops answering (SIGSTOP: the connection stays open, nothing comes
/// back) moves on: the hung call fails at its deadline — its outcome unknown, so it is not
/// repeated — and the next call goes to another master and answers at once.
#[test]
fn a_client_moves_past_a_master_that_stops_answering() {
    use skiff_client::{Client, ClientConfig};
    let c = Cluster::up(3, &[]);
    let all: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    let leader = c.wait_leader(&all, Duration::from_secs(10));
    let follower = *all.iter().find(|&&id| id != leader).expect("a follower");
    let rt = runtime();
    let _in_runtime = rt.enter();
    let client = Client::new(ClientConfig {
        endpoints: vec![c.master(follower).etcd.clone(), c.master(leader).etcd.clone()],
        token: Some(c.admin_token()),
        ca: c.ca(),
        client_cert: None,
        namespace: "default".into(),
        timeout: Duration::from_secs(2),
    })
    .expect("client");
    rt.block_on(client.list("namespaces", "", "", "")).expect("listing through the follower");

    // phase: the follower hangs; the call that was on it runs out of time
    c.signal(follower, nix::sys::signal::Signal::SIGSTOP);
    let e = rt.block_on(client.list("namespaces", "", "", "")).expect_err("a stopped master answered");
    assert!(matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{e}");

    // phase: the next call starts with the other master
    let started = Instant::now();
    let listed = rt.block_on(client.list("namespaces", "", "", ""));
    let took = started.elapsed();
    c.signal(follower, nix::sys::signal::Signal::SIGCONT);
    listed.unwrap_or_else(|e| panic!("the call after the hang failed too: {e}"));
    assert!(took < Duration::from_secs(1), "the call after the hang took {took:?}");
}

/// A client configured with one master learns the others from the cluster (etcd clientv3's
/// `Sync`), and keeps working when the one it was configured with is gone; one that did not
/// sync has nowhere else to go.
#[test]
fn a_client_learns_the_masters_and_outlives_the_one_it_was_configured_with() {
    use skiff_client::{Client, ClientConfig};
    let c = Cluster::up(3, &[]);
    let all: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    c.wait_leader(&all, Duration::from_secs(10));
    let first = all[0];
    let rt = runtime();
    let _in_runtime = rt.enter();
    let config = ClientConfig {
        endpoints: vec![c.master(first).etcd.clone()],
        token: Some(c.admin_token()),
        ca: c.ca(),
        client_cert: None,
        namespace: "default".into(),
        timeout: Duration::from_secs(2),
    };
    let synced = Client::new(config.clone()).expect("client");
    let unsynced = Client::new(config).expect("client");
    assert_eq!(synced.endpoints(), [c.master(first).etcd.clone()]);
    assert!(rt.block_on(synced.sync_endpoints()).expect("sync"), "the first sync learned nothing");
    let mut learned = synced.endpoints();
    learned.sort();
    let mut masters: Vec<String> = c.masters.iter().map(|m| m.etcd.clone()).collect();
    masters.sort();
    assert_eq!(learned, masters, "the masters as the client learned them");
    assert!(!rt.block_on(synced.sync_endpoints()).expect("sync"), "a second sync changed the set");

    // phase: the configured master is gone
    c.kill(first);
    let e = rt.block_on(unsynced.list("namespaces", "", "", "")).expect_err("a dead master answered");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    wait_for(Duration::from_secs(15), "a list through the learned masters", || {
        rt.block_on(synced.list("namespaces", "", "", "")).ok()
    });
}
