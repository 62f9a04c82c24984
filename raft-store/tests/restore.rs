//! A backup restored into a new data directory: a one-master cluster of a new member id comes
//! up from it with the backup's keys, revision and users, without its alarms or membership,
//! takes writes after it, and has a raft snapshot ready for a member added later.

use prost::Message as _;
use sha2::{Digest, Sha256};
use skiff_proto::etcdserverpb::{PutRequest, RangeRequest};
use skiff_raft_store::auth::{hash_password, AuthOp};
use skiff_raft_store::types::Op;
use skiff_raft_store::{Master, MasterConfig, Member, StoreError};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(id: u64, data_dir: &Path) -> MasterConfig {
    let mut c =
        MasterConfig::new(id, format!("master-{id}"), data_dir.into(), "127.0.0.1:1".into(), "127.0.0.1:2".into());
    c.initial_members = BTreeMap::from([(id, c.member())]);
    c
}

async fn leading(master: &Arc<Master>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !master.is_leader() {
        assert!(Instant::now() < deadline, "master {} did not become leader", master.id());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn put(master: &Master, key: &str, value: &str) -> Result<i64, StoreError> {
    let req = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
    Ok(master.propose(Op::Put(req.encode_to_vec())).await?.revision)
}

fn value(master: &Master, key: &str, revision: i64) -> Option<String> {
    let req = RangeRequest { key: key.into(), revision, ..Default::default() };
    let kv = master.sm.mvcc.range(&req).unwrap().kvs.pop()?;
    Some(String::from_utf8(kv.value).unwrap())
}

/// What `Maintenance.Snapshot` streams: the export and its SHA-256.
fn backup(master: &Master, path: &Path) -> i64 {
    let revision = master.sm.write_backup(path).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(body).as_slice(), digest, "a backup ends with the SHA-256 of the rest");
    revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_serves_its_keys_at_its_revision_under_a_new_membership() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("backup.db");
    let old = Master::open(config(1, &tmp.path().join("old"))).await.unwrap();
    leading(&old).await;
    for i in 0..50 {
        put(&old, &format!("k{i}"), "1").await.unwrap();
    }
    put(&old, "k0", "2").await.unwrap();
    let auth = Op::Auth(AuthOp::Bootstrap {
        root_password: hash_password("old-secret"),
        token_key: skiff_raft_store::auth::new_token_key(),
    });
    old.propose(auth).await.unwrap();
    old.propose(Op::Alarm { activate: true, member: 1, alarm: 1 }).await.unwrap();
    assert!(old.sm.alarms.nospace(), "the old store has a NOSPACE alarm to leave behind");
    let revision = backup(&old, &file);
    assert_eq!(revision, 51);
    put(&old, "after", "the backup").await.unwrap_err(); // NOSPACE refuses it
    old.shutdown().await;

    // Refusals change nothing.
    let members = BTreeMap::from([(7, Member { name: "master-7".into(), ..config(7, tmp.path()).member() })]);
    let existing = tmp.path().join("old");
    let err = skiff_raft_store::restore::restore_backup(&file, &existing, &members, None).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let cut = tmp.path().join("cut.db");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    let refused = tmp.path().join("refused");
    let err = skiff_raft_store::restore::restore_backup(&cut, &refused, &members, None).unwrap_err();
    assert!(err.to_string().contains("cut short"), "{err}");
    assert!(!refused.exists(), "a refused restore leaves no directory");

    let new_dir = tmp.path().join("new");
    let hash = hash_password("new-secret");
    let summary = skiff_raft_store::restore::restore_backup(&file, &new_dir, &members, Some(&hash)).unwrap();
    assert_eq!((summary.revision, summary.keys), (51, 50));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".restoring"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Every member restored from the same backup holds the same state, token key included.
    let twin = tmp.path().join("twin");
    skiff_raft_store::restore::restore_backup(&file, &twin, &members, Some(&hash)).unwrap();
    let sm_state = |dir: &Path| {
        let db = skiff_raft_store::db::open(&dir.join("db")).unwrap();
        let sm = skiff_raft_store::db::cf(&db, skiff_raft_store::db::CF_SM);
        db.iterator_cf(sm, rocksdb::IteratorMode::Start).map(|kv| kv.unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(sm_state(&new_dir), sm_state(&twin));

    let mut restored_config = config(7, &new_dir);
    restored_config.initial_members = BTreeMap::new(); // restored: nothing to initialize
    let new = Master::open(restored_config).await.unwrap();
    leading(&new).await;
    assert_eq!(new.sm.mvcc.current_revision(), 51);
    assert_eq!(value(&new, "k0", 0).as_deref(), Some("2"));
    assert_eq!(value(&new, "k0", 50).as_deref(), Some("1"), "history kept");
    assert_eq!(value(&new, "k49", 0).as_deref(), Some("1"));
    assert_eq!(value(&new, "after", 0), None);
    assert!(!new.sm.alarms.nospace(), "alarms are the old disks' and stay behind");
    let root = new.sm.auth.current().users.get("root").cloned().expect("root kept");
    assert_eq!(root.password.as_deref(), Some(hash.as_str()), "root has the new password");
    let ids: Vec<u64> = new.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
    assert_eq!(ids, [7]);
    assert_eq!(put(&new, "after", "restore").await.unwrap(), 52, "writes go on from the backup's revision");
    assert!(new_dir.join("snapshots/current.snap").exists(), "a raft snapshot for members added later");
    new.shutdown().await;
}
