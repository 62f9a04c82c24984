//! Disk faults under one master of three: a data directory that fills (a size-limited tmpfs
//! mounted under master 3) and a raft log whose fsync fails (the `raft-log-fsync` failpoint,
//! compiled into the test build only). The cluster stops acknowledging what would grow the
//! store and raises etcd's NOSPACE alarm, the failed master stops rather than carry on with a
//! log it cannot trust, and after space is freed (and the alarm disarmed) it catches up with
//! nothing acknowledged lost — checked with the real etcdctl and by comparing HashKV.

use skiff_chaos::disk::{self, Tmpfs};
use skiff_raft_store::master::DISK_CHECK_PERIOD;
use skiff_tests::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Moves master `id`'s (stopped) data directory onto a tmpfs of `bytes` and sets its reserve.
fn data_on_tmpfs(c: &Cluster, id: u64, bytes: u64, reserve: u64) -> Tmpfs {
    let m = c.master(id);
    let data = PathBuf::from(&m.data_dir);
    let before = data.with_extension("before");
    std::fs::rename(&data, &before).expect("move data aside");
    std::fs::create_dir(&data).expect("mount point");
    let mount = Tmpfs::mount(&data, bytes).expect("tmpfs");
    skiff_chaos::net::run("cp", &["-a", &format!("{}/.", before.display()), data.to_str().unwrap()]).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&m.config).expect("master config")).expect("config is JSON");
    config["disk_reserve_bytes"] = reserve.into();
    std::fs::write(&m.config, serde_json::to_vec_pretty(&config).unwrap()).expect("write config");
    mount
}

fn etcdctl_fails(c: &Cluster, endpoint: &str, args: &[&str]) -> String {
    let out = c.etcdctl(endpoint, args);
    assert!(!out.status.success(), "etcdctl {args:?} succeeded while it should not");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn alarms(c: &Cluster, endpoint: &str) -> String {
    c.etcdctl_ok(endpoint, &["alarm", "list"])
}

#[test]
fn a_master_out_of_disk_raises_nospace_stops_and_catches_up() {
    require_root();
    let mut c = Cluster::up(3, &[]);
    let one = c.master(1).etcd.clone();
    for i in 0..10 {
        c.etcdctl_ok(&one, &["put", &format!("/disk/before/{i}"), "v"]);
    }
    c.kill(3);
    let reserve = 48 << 20;
    let _tmpfs = data_on_tmpfs(&c, 3, 256 << 20, reserve);
    c.restart_stopped();
    c.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    let data = PathBuf::from(&c.master(3).data_dir);

    // Below the reserve, with room left: the alarm is raised and the cluster refuses growth.
    disk::fill(&data, reserve / 2).unwrap();
    wait_for(Duration::from_secs(20), "master 3's NOSPACE alarm", || {
        alarms(&c, &one).contains("memberID:3 alarm:NOSPACE").then_some(())
    });
    let refused = etcdctl_fails(&c, &one, &["put", "/disk/during", "v"]);
    assert!(refused.contains("database space exceeded"), "a put under NOSPACE failed with: {refused}");
    let status = c.etcdctl_ok(&one, &["endpoint", "status", "-w", "json"]);
    assert!(status.contains("alarm:NOSPACE"), "endpoint status does not show the alarm: {status}");
    // Reads and deletes still work, through any master.
    assert!(c.etcdctl_ok(&c.master(3).etcd, &["get", "/disk/before/1"]).contains("/disk/before/1"));
    assert!(c.etcdctl_ok(&one, &["del", "/disk/before/9"]).trim() == "1");
    // The Skiff API says why a create fails.
    let manifest = c.dir.path().join("cm.yaml");
    std::fs::write(&manifest, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: during-nospace\ndata:\n  a: b\n")
        .unwrap();
    let out = c.ctl(&["apply", "-f", manifest.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("database space exceeded"), "apply under NOSPACE: {stderr}");

    // Space freed and the alarm disarmed: writes go through again, and stay allowed.
    disk::free(&data).unwrap();
    c.etcdctl_ok(&one, &["alarm", "disarm"]);
    c.etcdctl_ok(&one, &["put", "/disk/after-disarm", "v"]);
    // Through three of master 3's disk checks, nothing raises it again.
    let quiet_until = Instant::now() + 3 * DISK_CHECK_PERIOD;
    while Instant::now() < quiet_until {
        assert_eq!(alarms(&c, &one).trim(), "", "an alarm came back with space free");
    }
    let rev = runtime().block_on(c.revision(&one)).unwrap();
    assert_same_hash(&c, &[1, 2, 3], rev);

    // Full to the last byte. The alarm comes back, and master 3 lives on the room RocksDB
    // preallocated for its log — until something must write a new file: a defragment (what an
    // operator runs to reclaim space) flushes and compacts, RocksDB fails with ENOSPC, and the
    // next log entry (a delete, which NOSPACE allows) cannot be written. Master 3 stops.
    disk::fill(&data, 0).unwrap();
    wait_for(Duration::from_secs(20), "master 3's NOSPACE alarm on a full disk", || {
        alarms(&c, &one).contains("memberID:3 alarm:NOSPACE").then_some(())
    });
    let _ = c.etcdctl(&c.master(3).etcd, &["defrag"]);
    let pid = c.master(3).pid;
    let rt = runtime();
    let mut n = 0;
    wait_for(Duration::from_secs(60), "master 3 to stop on a full disk", || {
        n += 1;
        let _ = c.etcdctl(&one, &["del", &format!("/disk/never/{n}")]);
        (!pid_alive(pid)).then_some(())
    });
    let acked = ["/disk/before/0".to_string(), "/disk/after-disarm".to_string()];
    let log = std::fs::read_to_string(&c.master(3).log).unwrap_or_default();
    // It said it was out of space (the monitor's last sample may predate the fill's last
    // bytes: "25165824 bytes free … raising the NOSPACE alarm"); then RocksDB either returns
    // ENOSPC (raft stops: "No space left on device") or, as Debian's librocksdb is built with
    // its assertions on, aborts on the write after the failed one. Either way the process ends
    // with its log as fsynced, which the restart below reads.
    assert!(
        log.contains("bytes free on") && log.contains("raising the NOSPACE alarm"),
        "master 3 stopped without saying why:\n{}",
        c.log_tail(3)
    );

    // Room again: it restarts on its own log, catches up, and nothing acknowledged is lost.
    disk::free(&data).unwrap();
    c.restart_stopped();
    c.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    c.etcdctl_ok(&one, &["alarm", "disarm"]);
    wait_for(Duration::from_secs(20), "a write after the full disk", || {
        rt.block_on(c.put(&one, "/disk/after-full", b"v")).ok()
    });
    let rev = rt.block_on(c.revision(&one)).unwrap();
    assert_same_hash(&c, &[1, 2, 3], rev);
    let three = c.master(3).etcd.clone();
    for key in &acked {
        assert_eq!(rt.block_on(c.get(&three, key, true)).unwrap(), Some(b"v".to_vec()), "{key} on master 3");
    }
}

#[test]
fn a_master_whose_log_fsync_fails_stops_and_recovers_on_restart() {
    let mut c = Cluster::up(3, &[]);
    let one = c.master(1).etcd.clone();
    c.kill(3);
    // Master 3 comes back with its log's fsync failing after 100 appends.
    let d = c.dir.path().to_str().unwrap().to_string();
    skiff_with_env(&["up", "--dir", &d, "--timeout", "60"], &[("FAILPOINTS", "raft-log-fsync=100*off->return")]);
    c.reload();
    let pid = c.master(3).pid;
    let rt = runtime();
    let mut acked = Vec::new();
    let mut n = 0;
    wait_for(Duration::from_secs(60), "master 3 to stop on a failed fsync", || {
        n += 1;
        let key = format!("/fsync/{n}");
        if rt.block_on(c.put(&one, &key, key.as_bytes())).is_ok() {
            acked.push(key);
        }
        (!pid_alive(pid)).then_some(())
    });
    assert!(acked.len() >= 50, "only {} writes were acknowledged before master 3 stopped", acked.len());
    let log = std::fs::read_to_string(&c.master(3).log).unwrap_or_default();
    assert!(
        log.contains("failpoint raft-log-fsync"),
        "master 3 stopped without naming the failure:\n{}",
        c.log_tail(3)
    );
    // Writes go on without it.
    rt.block_on(c.put(&one, "/fsync/while-down", b"/fsync/while-down")).expect("a write with master 3 down");
    acked.push("/fsync/while-down".into());

    c.restart_stopped();
    let rev = rt.block_on(c.revision(&one)).unwrap();
    assert_same_hash(&c, &[1, 2, 3], rev);
    let three = c.master(3).etcd.clone();
    for key in &acked {
        assert_eq!(rt.block_on(c.get(&three, key, true)).unwrap(), Some(key.as_bytes().to_vec()), "{key} on master 3");
    }
}
