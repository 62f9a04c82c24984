//! etcd requests *handled* by the store: decoded, checked as the API checks them, and applied
//! to one MVCC store on a real RocksDB (opened once, in a temporary directory) that every input
//! keeps changing — ranges at any revision, puts, deletes, transactions, compactions.
//!
//! The first byte picks the request; the rest is its protobuf (or a compaction's revision).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use skiff_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};
use skiff_raft_store::mvcc::{validate_txn, Mvcc};
use std::sync::{Mutex, OnceLock};

fn store() -> &'static Mutex<Mvcc> {
    static STORE: OnceLock<Mutex<Mvcc>> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("skiff-fuzz-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = skiff_raft_store::db::open(&dir).expect("open RocksDB");
        Mutex::new(Mvcc::open(db))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let mvcc = store().lock().unwrap_or_else(|e| e.into_inner());
    if which % 5 == 0 {
        if let Ok(req) = RangeRequest::decode(body) {
            let _ = mvcc.range(&req);
        }
        return;
    }
    let mut w = mvcc.writer();
    let applied = match which % 5 {
        1 => PutRequest::decode(body).ok().map(|r| w.put(&r).is_ok()),
        2 => DeleteRangeRequest::decode(body).ok().map(|r| w.delete_range(&r).is_ok()),
        3 => TxnRequest::decode(body).ok().filter(|t| validate_txn(t).is_ok()).map(|t| w.txn(&t).is_ok()),
        _ => {
            let rev = body.iter().take(8).fold(0i64, |acc, b| (acc << 8) | i64::from(*b));
            Some(w.compact(rev).is_ok())
        }
    };
    // As the state machine: an entry that failed changes nothing.
    if applied == Some(true) {
        let (batch, revision, compacted, _events) = w.finish();
        mvcc.db().write(batch).expect("RocksDB write");
        mvcc.publish_counters(revision, compacted);
    }
});
