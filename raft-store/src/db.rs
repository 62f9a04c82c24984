//! The one RocksDB instance a master keeps, and its column families.
//!
//! | cf     | key                                   | value                              |
//! |--------|---------------------------------------|------------------------------------|
//! | `log`  | raft index (u64 BE)                   | bincode `Entry`                    |
//! | `meta` | `vote`, `committed`, `last_purged`    | bincode                            |
//! | `kv`   | user key                              | current `mvccpb::KeyValue`         |
//! | `rev`  | revision (u64 BE) + sub (u32 BE)      | `mvccpb::Event` (prev_kv unset)    |
//! | `hist` | memcomparable(user key) + rev (u64 BE)| sub (u32 BE): points into `rev`    |
//! | `lkey` | lease id (u64 BE) + user key          | empty: keys attached to a lease    |
//! | `sm`   | state-machine metadata (see `SmKey`)  | bincode                            |
//!
//! `log` and `meta` are the raft log; the rest is the state machine, which a snapshot copies.
//! Log writes are synced (`WriteOptions::set_sync`); state-machine writes are not, because the
//! log replays them — and every synced log write also syncs the WAL records written before it.

use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use std::path::Path;
use std::sync::Arc;

pub const CF_LOG: &str = "log";
pub const CF_META: &str = "meta";
pub const CF_KV: &str = "kv";
pub const CF_REV: &str = "rev";
pub const CF_HIST: &str = "hist";
pub const CF_LKEY: &str = "lkey";
pub const CF_SM: &str = "sm";

/// State-machine column families, in the order a snapshot writes them.
pub const SM_CFS: [&str; 5] = [CF_KV, CF_REV, CF_HIST, CF_LKEY, CF_SM];

pub fn open(path: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    let cfs = [CF_LOG, CF_META, CF_KV, CF_REV, CF_HIST, CF_LKEY, CF_SM]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?))
}

pub fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family is created on open")
}

/// Revision key of the `rev` column family.
pub fn rev_key(rev: i64, sub: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&(rev as u64).to_be_bytes());
    k[8..].copy_from_slice(&sub.to_be_bytes());
    k
}

pub fn parse_rev_key(k: &[u8]) -> (i64, u32) {
    let rev = u64::from_be_bytes(k[..8].try_into().expect("rev key is 12 bytes")) as i64;
    let sub = u32::from_be_bytes(k[8..12].try_into().expect("rev key is 12 bytes"));
    (rev, sub)
}

/// Order-preserving encoding of a user key: every 0x00 becomes 0x00 0xFF and the key ends
/// with 0x00 0x01, so `enc(a) < enc(b)` iff `a < b` and no encoding is a prefix of another.
pub fn memcmp_encode(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Decodes [`memcmp_encode`]; returns the key and the rest of the input.
pub fn memcmp_decode(input: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut key = Vec::with_capacity(input.len());
    let mut i = 0;
    while i + 1 < input.len() {
        let b = input[i];
        if b == 0 {
            match input[i + 1] {
                0xFF => key.push(0),
                0x01 => return Some((key, &input[i + 2..])),
                _ => return None,
            }
            i += 2;
        } else {
            key.push(b);
            i += 1;
        }
    }
    None
}

pub fn hist_key(key: &[u8], rev: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 10);
    memcmp_encode(key, &mut k);
    k.extend_from_slice(&(rev as u64).to_be_bytes());
    k
}

pub fn lease_key(lease: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&(lease as u64).to_be_bytes());
    k.extend_from_slice(key);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memcmp_encoding_preserves_order_and_round_trips() {
        let mut keys: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\0".to_vec(),
            b"a\x01".to_vec(),
            b"ab".to_vec(),
            b"b".to_vec(),
            vec![0xFF, 0x00],
            vec![0xFF],
        ];
        keys.sort();
        let encoded: Vec<Vec<u8>> = keys.iter().map(|k| hist_key(k, 7)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted, "encoding must keep the keys' order");
        for (k, e) in keys.iter().zip(&encoded) {
            let (decoded, rest) = memcmp_decode(e).expect("decodes");
            assert_eq!(&decoded, k);
            assert_eq!(rest, &7u64.to_be_bytes());
        }
    }
}
