//! etcd's data model, tested on the MVCC store directly (no raft, no network).

use skiff_proto::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use skiff_raft_store::mvcc::{validate_txn, Mvcc, Writer};
use skiff_raft_store::types::ApplyError;
use tempfile::TempDir;

fn store() -> (TempDir, Mvcc) {
    let dir = TempDir::new().unwrap();
    let db = skiff_raft_store::db::open(&dir.path().join("db")).unwrap();
    (dir, Mvcc::open(db))
}

/// Applies one "log entry" the way the state machine does: all or nothing.
fn commit<T>(m: &Mvcc, f: impl FnOnce(&mut Writer<'_>) -> Result<T, ApplyError>) -> Result<T, ApplyError> {
    let mut w = m.writer();
    let out = f(&mut w)?;
    let (batch, rev, compacted, _) = w.finish();
    m.db().write(batch).unwrap();
    m.publish_counters(rev, compacted);
    Ok(out)
}

fn put(m: &Mvcc, k: &str, v: &str) {
    commit(m, |w| w.put(&PutRequest { key: k.into(), value: v.into(), ..Default::default() })).unwrap();
}

fn get(m: &Mvcc, k: &str, rev: i64) -> Result<Option<String>, ApplyError> {
    let r = m.range(&RangeRequest { key: k.into(), revision: rev, ..Default::default() })?;
    Ok(r.kvs.first().map(|kv| String::from_utf8(kv.value.clone()).unwrap()))
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

#[test]
fn revisions_versions_and_reads_at_older_revisions() {
    let (_d, m) = store();
    put(&m, "a", "1"); // rev 1
    put(&m, "b", "1"); // rev 2
    put(&m, "a", "2"); // rev 3
    assert_eq!(m.current_revision(), 3);
    let r = m.range(&RangeRequest { key: "a".into(), ..Default::default() }).unwrap();
    let kv = &r.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (1, 3, 2));
    assert_eq!(get(&m, "a", 1).unwrap().as_deref(), Some("1"));
    assert_eq!(get(&m, "a", 2).unwrap().as_deref(), Some("1"));
    assert_eq!(get(&m, "a", 3).unwrap().as_deref(), Some("2"));
    assert_eq!(get(&m, "b", 1).unwrap(), None, "b did not exist at revision 1");
    assert!(matches!(get(&m, "a", 9), Err(ApplyError::FutureRevision { requested: 9, current: 3 })));
}

#[test]
fn prefix_ranges_limits_counts_and_keys_only() {
    let (_d, m) = store();
    for k in ["p/1", "p/2", "p/3", "q/1"] {
        put(&m, k, "v");
    }
    let r = m
        .range(&RangeRequest {
            key: "p/".into(),
            range_end: "p0".into(),
            limit: 2,
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 3);
    assert!(r.more);
    assert_eq!(r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), vec![b"p/1".to_vec(), b"p/2".to_vec()]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    let all =
        m.range(&RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() }).unwrap();
    assert_eq!((all.count, all.kvs.len()), (4, 0));
}

#[test]
fn deleted_key_is_gone_now_but_visible_before() {
    let (_d, m) = store();
    put(&m, "k", "v"); // 1
    let del =
        commit(&m, |w| w.delete_range(&DeleteRangeRequest { key: "k".into(), prev_kv: true, ..Default::default() }))
            .unwrap();
    assert_eq!(del.deleted, 1);
    assert_eq!(del.prev_kvs[0].value, b"v");
    assert_eq!(get(&m, "k", 0).unwrap(), None);
    assert_eq!(get(&m, "k", 1).unwrap().as_deref(), Some("v"));
    put(&m, "k", "again"); // 3: a new incarnation
    let kv = m.range(&RangeRequest { key: "k".into(), ..Default::default() }).unwrap().kvs[0].clone();
    assert_eq!((kv.create_revision, kv.version), (3, 1));
}

#[test]
fn txn_compares_and_sees_its_own_writes() {
    let (_d, m) = store();
    put(&m, "x", "1");
    let cas = |expect: &str, new: &str| TxnRequest {
        compare: vec![Compare {
            key: "x".into(),
            target: compare::CompareTarget::Value as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Value(expect.into())),
            ..Default::default()
        }],
        success: vec![
            put_op("x", new),
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: "x".into(),
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    let ok = commit(&m, |w| w.txn(&cas("1", "2"))).unwrap();
    assert!(ok.succeeded);
    let Some(skiff_proto::etcdserverpb::response_op::Response::ResponseRange(r)) = &ok.responses[1].response else {
        panic!("second response is a range: {:?}", ok.responses)
    };
    assert_eq!(r.kvs[0].value, b"2", "a range after a put in the same txn sees the put");
    let stale = commit(&m, |w| w.txn(&cas("1", "3"))).unwrap();
    assert!(!stale.succeeded);
    assert_eq!(get(&m, "x", 0).unwrap().as_deref(), Some("2"));
    assert_eq!(m.current_revision(), 2, "a txn that wrote nothing does not take a revision");
}

#[test]
fn a_failing_txn_changes_nothing() {
    let (_d, m) = store();
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("first", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: "second".into(),
                    lease: 42,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    assert_eq!(commit(&m, |w| w.txn(&txn)).unwrap_err(), ApplyError::LeaseNotFound { id: 42 });
    assert_eq!(get(&m, "first", 0).unwrap(), None);
    assert_eq!(m.current_revision(), 0);
}

#[test]
fn txn_validation_refuses_duplicate_keys_and_too_many_ops() {
    let dup = TxnRequest { success: vec![put_op("a", "1"), put_op("a", "2")], ..Default::default() };
    assert_eq!(validate_txn(&dup), Err(ApplyError::DuplicateKey));
    let many = TxnRequest { success: (0..129).map(|i| put_op(&format!("k{i}"), "v")).collect(), ..Default::default() };
    assert!(matches!(validate_txn(&many), Err(ApplyError::Invalid(_))));
}

#[test]
fn compaction_keeps_the_latest_version_and_refuses_older_reads() {
    let (_d, m) = store();
    put(&m, "a", "1"); // 1
    put(&m, "a", "2"); // 2
    put(&m, "b", "1"); // 3
    commit(&m, |w| w.delete_range(&DeleteRangeRequest { key: "b".into(), ..Default::default() })).unwrap(); // 4
    put(&m, "c", "1"); // 5
    commit(&m, |w| w.compact(4)).unwrap();
    assert_eq!(m.compact_revision(), 4);
    assert!(matches!(get(&m, "a", 1), Err(ApplyError::Compacted { compacted: 4, .. })));
    assert_eq!(get(&m, "a", 4).unwrap().as_deref(), Some("2"), "latest version at the compact revision survives");
    assert_eq!(get(&m, "b", 4).unwrap(), None);
    let kept: Vec<i64> = m.events(0, 10, 100).into_iter().map(|(r, _)| r).collect();
    assert_eq!(kept, vec![2, 5], "superseded versions and tombstones are removed");
    assert!(matches!(commit(&m, |w| w.compact(3)), Err(ApplyError::Compacted { .. })));
}

#[test]
fn revoking_a_lease_deletes_its_keys_in_one_revision() {
    let (_d, m) = store();
    commit(&m, |w| w.lease_grant(7, 10)).unwrap();
    assert_eq!(m.current_revision(), 0, "granting a lease is not a key change");
    for k in ["l/1", "l/2"] {
        commit(&m, |w| w.put(&PutRequest { key: k.into(), value: "v".into(), lease: 7, ..Default::default() }))
            .unwrap();
    }
    put(&m, "other", "v");
    assert_eq!(m.lease_keys(7).len(), 2);
    commit(&m, |w| w.lease_revoke(7)).unwrap();
    assert_eq!(m.current_revision(), 4);
    let events = m.events(4, 4, 100);
    assert_eq!(events.len(), 2, "both keys deleted at revision 4: {events:?}");
    assert_eq!(get(&m, "other", 0).unwrap().as_deref(), Some("v"));
    assert!(m.lease_ttl(7).is_none());
    assert_eq!(commit(&m, |w| w.lease_revoke(7)).unwrap_err(), ApplyError::LeaseNotFound { id: 7 });
}

#[test]
fn hash_kv_is_equal_for_equal_histories_and_differs_otherwise() {
    let (_d1, a) = store();
    let (_d2, b) = store();
    for m in [&a, &b] {
        put(m, "k", "1");
        put(m, "k", "2");
    }
    assert_eq!(a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
    put(&b, "k", "3");
    assert_eq!(a.hash_kv(2).unwrap(), b.hash_kv(2).unwrap(), "equal up to revision 2");
    put(&a, "k", "different");
    assert_ne!(a.hash_kv(3).unwrap().0, b.hash_kv(3).unwrap().0);
}

#[test]
fn prev_kv_finds_the_version_before_a_revision() {
    let (_d, m) = store();
    put(&m, "k", "1"); // 1
    put(&m, "z", "1"); // 2
    put(&m, "k", "2"); // 3
    assert_eq!(m.prev_kv(b"k", 3).unwrap().value, b"1");
    assert!(m.prev_kv(b"k", 1).is_none());
    assert!(m.prev_kv(b"z", 2).is_none());
}

#[test]
fn a_limited_range_reads_a_page_and_counts_the_rest_now_and_at_older_revisions() {
    let (_d, m) = store();
    for i in 0..300 {
        put(&m, &format!("k/{i:03}"), "v");
    }
    let old = m.current_revision();
    // After `old`: a key in the first page is deleted and one is added beyond it.
    commit(&m, |w| w.delete_range(&DeleteRangeRequest { key: "k/001".into(), ..Default::default() })).unwrap();
    put(&m, "k/999", "v");
    let page = |rev: i64, exact: bool| {
        let req =
            RangeRequest { key: "k/".into(), range_end: "k0".into(), limit: 5, revision: rev, ..Default::default() };
        let r = if exact { m.range(&req) } else { m.range_page(&req) }.unwrap();
        let keys: Vec<String> = r.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect();
        (keys, r.more, r.count)
    };
    let keys = |ks: &[&str]| -> Vec<String> { ks.iter().map(|k| k.to_string()).collect() };
    let now = (keys(&["k/000", "k/002", "k/003", "k/004", "k/005"]), true);
    let then = (keys(&["k/000", "k/001", "k/002", "k/003", "k/004"]), true);
    let (keys, more, count) = page(0, true);
    assert_eq!((keys, more, count), (now.0.clone(), now.1, 300), "etcd's count covers the whole range");
    let (keys, more, count) = page(0, false);
    assert_eq!((keys, more), now.clone());
    assert!(count <= 6, "a page read stops after limit + 1 keys, read {count}");
    let (keys, more, count) = page(old, true);
    assert_eq!((keys, more, count), (then.0.clone(), then.1, 300), "at the older revision");
    let (keys, more, _) = page(old, false);
    assert_eq!((keys, more), then);
    // Unbounded and sorted ranges are unchanged.
    let all = m.range(&RangeRequest { key: "k/".into(), range_end: "k0".into(), ..Default::default() }).unwrap();
    assert_eq!((all.kvs.len(), all.count, all.more), (300, 300, false));
}

#[test]
fn a_range_at_every_old_revision_matches_a_model_of_the_history() {
    use std::collections::BTreeMap;
    let (_d, m) = store();
    // Keys with a zero byte and a common prefix, written many times, deleted and put again.
    let keys = ["a", "a\0b", "ab", "b", "c"];
    let mut model: Vec<BTreeMap<&str, String>> = vec![BTreeMap::new()]; // state after each revision
    let mut seed = 7u64;
    for step in 0..300 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let key = keys[(seed >> 33) as usize % keys.len()];
        let mut next = model.last().unwrap().clone();
        if (seed >> 40).is_multiple_of(5) && next.contains_key(key) {
            commit(&m, |w| w.delete_range(&DeleteRangeRequest { key: key.into(), ..Default::default() })).unwrap();
            next.remove(key);
        } else {
            let value = format!("v{step}");
            put(&m, key, &value);
            next.insert(key, value);
        }
        model.push(next);
    }
    let current = model.len() as i64 - 1;
    for rev in 1..=current {
        for (start, end) in [("a", "c"), ("a", "\0"), ("", "\0"), ("a\0", "b"), ("b", "")] {
            let req = RangeRequest { key: start.into(), range_end: end.into(), revision: rev, ..Default::default() };
            let got: Vec<(String, String)> = m
                .range(&req)
                .unwrap()
                .kvs
                .iter()
                .map(|kv| (String::from_utf8(kv.key.clone()).unwrap(), String::from_utf8(kv.value.clone()).unwrap()))
                .collect();
            let in_range = |k: &str| match end {
                "" => k == start,
                "\0" => k >= start,
                e => k >= start && k < e,
            };
            let want: Vec<(String, String)> = model[rev as usize]
                .iter()
                .filter(|(k, _)| in_range(k))
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            assert_eq!(got, want, "range [{start:?}, {end:?}) at revision {rev}");
        }
        // A bounded read stops after its limit, in key order.
        let req =
            RangeRequest { key: "\0".into(), range_end: "\0".into(), revision: rev, limit: 2, ..Default::default() };
        let got = m.range(&req).unwrap().kvs.len();
        assert_eq!(got, model[rev as usize].len().min(2), "limit 2 at revision {rev}");
    }
}
