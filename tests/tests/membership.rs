//! Adding a fourth master as a learner with the real etcdctl, promoting it, and surviving the
//! loss of any one of the four.

use skiff_tests::{assert_same_hash, pid_alive, runtime, status, wait_for, Cluster};
use std::time::{Duration, Instant};

fn write_somewhere(c: &Cluster, addrs: &[String], key: &str) -> i64 {
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for a in addrs {
            if let Ok(rev) = rt.block_on(c.put(a, key, b"v")) {
                return rev;
            }
        }
        assert!(Instant::now() < deadline, "no write through {addrs:?} within 20s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_fourth_master_joins_as_learner_is_promoted_and_any_one_may_fail() {
    let mut c = Cluster::up(3, &[]);
    let e1 = c.masters[0].etcd.clone();
    c.etcdctl_ok(&e1, &["put", "before-join", "1"]);

    // phase: member add --learner, then start the new master without an initial cluster
    let ports = skiff_chaos::net::free_loopback_ports(2).unwrap();
    let (peer, client) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));
    let added = c.etcdctl_ok(&e1, &["member", "add", "master-4", "--learner", &format!("--peer-urls=http://{peer}")]);
    let hex_id = added.split_whitespace().nth(1).expect("member id").to_string();
    let id = u64::from_str_radix(&hex_id, 16).unwrap();
    assert!(c.masters.iter().all(|m| m.id != id), "a new id, never one in use: {id}");
    let mut joiner = c.start_joiner(id, "master-4", &peer, &client);

    // The learner catches up and announces its client address.
    let rt = runtime();
    wait_for(Duration::from_secs(20), "the learner to apply the cluster's writes", || {
        let rev = rt.block_on(status(&e1)).ok()?.header?.revision;
        let mine = rt.block_on(status(&client)).ok()?;
        (mine.header?.revision == rev && mine.is_learner).then_some(())
    });
    wait_for(Duration::from_secs(20), "member list to show the learner's client URL", || {
        let scheme = if c.ca().is_some() { "https" } else { "http" };
        c.etcdctl_ok(&e1, &["member", "list"]).contains(&format!("{scheme}://{client}")).then_some(())
    });

    // phase: promote
    c.etcdctl_ok(&e1, &["member", "promote", &hex_id]);
    wait_for(Duration::from_secs(10), "the new member to be a voter", || {
        (!rt.block_on(status(&client)).ok()?.is_learner).then_some(())
    });
    let list = c.etcdctl_ok(&e1, &["member", "list"]);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(!list.lines().any(|l| l.ends_with("true")), "nobody is a learner any more:\n{list}");

    // phase: lose each of the four in turn; the other three keep accepting writes
    let mut ids: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    ids.push(id);
    let addrs: std::collections::BTreeMap<u64, String> =
        ids.iter().map(|&i| (i, if i == id { client.clone() } else { c.master(i).etcd.clone() })).collect();
    let addr_of = |i: u64| addrs[&i].clone();
    for &victim in &ids {
        if victim == id {
            let pid = joiner.0.id();
            let _ = joiner.0.kill();
            let _ = joiner.0.wait();
            assert!(!pid_alive(pid));
        } else {
            c.kill(victim);
        }
        let others: Vec<String> = ids.iter().filter(|&&i| i != victim).map(|&i| addr_of(i)).collect();
        let rev = write_somewhere(&c, &others, &format!("without/{victim}"));
        if victim == id {
            joiner = c.start_joiner(id, "master-4", &peer, &client);
        } else {
            c.restart_stopped();
        }
        wait_for(Duration::from_secs(30), "the restarted member to catch up", || {
            (rt.block_on(status(&addr_of(victim))).ok()?.header?.revision >= rev).then_some(())
        });
    }
    let rev = write_somewhere(&c, std::slice::from_ref(&e1), "final");
    assert_same_hash(&c, &ids[..3], rev);
    let (h4, _) = wait_for(Duration::from_secs(20), "master-4's hash", || rt.block_on(c.hash_kv(&client, rev)).ok());
    assert_eq!(h4, assert_same_hash(&c, &ids[..1], rev));
}
