//! The MVCC key-value model, etcd's: one cluster-wide revision per write transaction; per key
//! create/mod revision and version; ranges at the current or an older revision; transactions;
//! compaction; leases. Everything here is deterministic: every replica applying the same log
//! produces the same bytes, which `hash_kv` checks.
//!
//! Reads take a RocksDB snapshot so a range sees one revision. Writes are staged in a
//! [`Writer`] (so a transaction's later operations see its earlier ones) and land in one
//! `WriteBatch`: a transaction is applied whole or not at all.

use crate::db::{self, cf, hist_key, lease_key, memcmp_decode, parse_rev_key, rev_key};
use crate::types::ApplyError;
use prost::Message;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};
use skiff_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use skiff_proto::mvccpb::{event::EventType, Event, KeyValue};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Keys of the `sm` column family.
pub mod sm_key {
    pub const APPLIED: &[u8] = b"applied";
    /// bincode `(LogId, u32)`: how many requests of a batch entry are applied, while the
    /// entry is part-way (each request is its own write; `APPLIED` moves with the last).
    pub const APPLIED_PART: &[u8] = b"applied_part";
    pub const MEMBERSHIP: &[u8] = b"membership";
    pub const REVISION: &[u8] = b"revision";
    pub const COMPACTED: &[u8] = b"compacted";
    pub const MAX_MEMBER_ID: &[u8] = b"max_member_id";
    /// bincode `auth::AuthState`.
    pub const AUTH: &[u8] = b"auth";
    /// bincode `alarm::Alarms`.
    pub const ALARMS: &[u8] = b"alarms";
    pub const LEASE_PREFIX: &[u8] = b"lease/";
}

/// Maximum operations in one transaction, as etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// The range end that covers every key starting with `prefix`, as etcd clients compute it:
/// the prefix with its last byte below 0xff incremented (bytes after it dropped); `"\0"`
/// (every key) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A key range as etcd requests spell it: `range_end` empty = one key, `"\0"` = to the end.
#[derive(Debug, Clone)]
pub struct KeyRange {
    pub start: Vec<u8>,
    /// Exclusive end; `None` = unbounded.
    pub end: Option<Vec<u8>>,
    pub single: bool,
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        if range_end.is_empty() {
            KeyRange { start: key.to_vec(), end: None, single: true }
        } else if range_end == [0] {
            KeyRange { start: key.to_vec(), end: None, single: false }
        } else {
            KeyRange { start: key.to_vec(), end: Some(range_end.to_vec()), single: false }
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        if self.single {
            return k == self.start.as_slice();
        }
        k >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| k < e)
    }

    fn past_end(&self, k: &[u8]) -> bool {
        if self.single {
            return k > self.start.as_slice();
        }
        self.end.as_deref().is_some_and(|e| k >= e)
    }
}

/// The MVCC store over the state-machine column families.
pub struct Mvcc {
    db: Arc<DB>,
    current: AtomicI64,
    compacted: AtomicI64,
}

fn get_i64(db: &DB, key: &[u8]) -> i64 {
    db.get_cf(cf(db, db::CF_SM), key)
        .ok()
        .flatten()
        .map(|v| i64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])))
        .unwrap_or(0)
}

fn decode_kv(bytes: &[u8]) -> KeyValue {
    KeyValue::decode(bytes).expect("kv column family holds encoded KeyValue")
}

fn decode_event(bytes: &[u8]) -> Event {
    Event::decode(bytes).expect("rev column family holds encoded Event")
}

impl Mvcc {
    pub fn open(db: Arc<DB>) -> Self {
        let m = Mvcc { db, current: AtomicI64::new(0), compacted: AtomicI64::new(0) };
        m.reload();
        m
    }

    /// Re-reads the revision counters (after a snapshot install).
    pub fn reload(&self) {
        self.current.store(get_i64(&self.db, sm_key::REVISION), Ordering::SeqCst);
        self.compacted.store(get_i64(&self.db, sm_key::COMPACTED), Ordering::SeqCst);
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    pub fn current_revision(&self) -> i64 {
        self.current.load(Ordering::SeqCst)
    }

    pub fn compact_revision(&self) -> i64 {
        self.compacted.load(Ordering::SeqCst)
    }

    /// Called after a batch built by [`Mvcc::writer`] was written.
    pub fn publish_counters(&self, revision: i64, compacted: i64) {
        self.current.store(revision, Ordering::SeqCst);
        self.compacted.store(compacted, Ordering::SeqCst);
    }

    // ---- reads -------------------------------------------------------------------------

    /// A range read outside any transaction, at one consistent point.
    /// etcd's Range. With a `limit` and key order, no more than `limit + 1` values are
    /// decoded; the keys after them are only counted, for `count`.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        self.range_bounded(req, true)
    }

    /// One page of a range for readers that do not use `count` (the API's lists): with a
    /// `limit` and key order it stops after `limit + 1` keys, so a list read in pages costs
    /// O(page) per page, not a scan of the rest of the range; `count` is then only what was
    /// read.
    pub fn range_page(&self, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        self.range_bounded(req, false)
    }

    fn range_bounded(&self, req: &RangeRequest, exact_count: bool) -> Result<RangeResponse, ApplyError> {
        let snap = self.db.snapshot();
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        let current = snap
            .get_cf(cf(&self.db, db::CF_SM), sm_key::REVISION)
            .ok()
            .flatten()
            .map(|v| i64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])))
            .unwrap_or(0);
        let compacted = self.compact_revision();
        let range = KeyRange::new(&req.key, &req.range_end);
        let at = if req.revision <= 0 || req.revision == current { None } else { Some(req.revision) };
        if let Some(rev) = at {
            if rev > current {
                return Err(ApplyError::FutureRevision { requested: rev, current });
            }
            if rev < compacted {
                return Err(ApplyError::Compacted { requested: rev, compacted });
            }
        }
        let window = Window::of(req, exact_count);
        let (kvs, count) = match at {
            None => self.scan_current_window(ro, &range, window),
            // Counting live keys at an old revision means reading each one's event: bounded
            // only when no exact count is asked for.
            Some(rev) => {
                let kvs = self.scan_at(ro, &range, rev, window.filter(|w| !w.count_rest).map(|w| w.take));
                let n = kvs.len() as i64;
                (kvs, n)
            }
        };
        let mut resp = finish_range(req, kvs);
        resp.count = count;
        resp.header = Some(header(current));
        Ok(resp)
    }

    /// The current values of `range`: all of them, or the first `window.take` and (if asked)
    /// a count of the rest. Returns the values and the number of keys in the range.
    fn scan_current_window(&self, ro: ReadOptions, range: &KeyRange, window: Option<Window>) -> (Vec<KeyValue>, i64) {
        match window.filter(|_| !range.single) {
            Some(w) => self.scan_keys(ro, range, w.take, w.count_rest),
            None => {
                let kvs = self.scan_current(ro, range, None);
                let n = kvs.len() as i64;
                (kvs, n)
            }
        }
    }

    /// The first `take` current values of a (multi-key) range, and the number of keys read:
    /// all of the range's when `count_rest`, else no more than `take`.
    fn scan_keys(&self, ro: ReadOptions, range: &KeyRange, take: usize, count_rest: bool) -> (Vec<KeyValue>, i64) {
        let mut out = Vec::with_capacity(take.min(1024));
        let mut count = 0i64;
        let iter =
            self.db.iterator_cf_opt(cf(&self.db, db::CF_KV), ro, IteratorMode::From(&range.start, Direction::Forward));
        for item in iter {
            let Ok((k, v)) = item else { break };
            if range.past_end(&k) {
                break;
            }
            if out.len() == take && !count_rest {
                break;
            }
            count += 1;
            if out.len() < take {
                out.push(decode_kv(&v));
            }
        }
        (out, count)
    }

    fn scan_current(
        &self,
        ro: ReadOptions,
        range: &KeyRange,
        overlay: Option<&BTreeMap<Vec<u8>, Option<KeyValue>>>,
    ) -> Vec<KeyValue> {
        if range.single {
            let v = match overlay.and_then(|o| o.get(&range.start)) {
                Some(staged) => staged.clone(),
                None => {
                    self.db.get_cf_opt(cf(&self.db, db::CF_KV), &range.start, &ro).ok().flatten().map(|b| decode_kv(&b))
                }
            };
            return v.into_iter().collect();
        }
        let (out, _) = self.scan_keys(ro, range, usize::MAX, false);
        if let Some(overlay) = overlay {
            if !overlay.is_empty() {
                let mut merged: BTreeMap<Vec<u8>, KeyValue> = out.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
                for (k, staged) in overlay.iter().filter(|(k, _)| range.contains(k)) {
                    match staged {
                        Some(kv) => merged.insert(k.clone(), kv.clone()),
                        None => merged.remove(k),
                    };
                }
                return merged.into_values().collect();
            }
        }
        out
    }

    /// The values of `range` as they were at `rev`, from the history column family; at most
    /// `take` of them when given. Each key costs two seeks — to its newest entry at or below
    /// `rev`, then past its entries — however many versions it has: a read at an old
    /// revision of a key written a hundred thousand times reads one of them, not all.
    fn scan_at(&self, ro: ReadOptions, range: &KeyRange, rev: i64, take: Option<usize>) -> Vec<KeyValue> {
        let mut first = Vec::new();
        db::memcmp_encode(&range.start, &mut first);
        first.truncate(first.len() - 2); // position before the terminator: includes `start` itself
        let mut it = self.db.raw_iterator_cf_opt(cf(&self.db, db::CF_HIST), ro);
        let rev_cf = cf(&self.db, db::CF_REV);
        let value_of = |r: i64, sub: u32| {
            let ev = decode_event(&self.db.get_cf(rev_cf, rev_key(r, sub)).ok()??);
            (ev.r#type == EventType::Put as i32).then_some(ev.kv).flatten()
        };
        let mut out = Vec::new();
        it.seek(&first);
        while it.valid() && take.is_none_or(|t| out.len() < t) {
            let Some((key, _)) = it.key().and_then(memcmp_decode) else { break };
            if range.past_end(&key) {
                break;
            }
            // This key's entries are `prefix ++ revision`: the prefix ends in the terminator,
            // so no other key's entries start with it.
            let mut prefix = Vec::with_capacity(key.len() + 10);
            db::memcmp_encode(&key, &mut prefix);
            if key.as_slice() >= range.start.as_slice() {
                let mut at = prefix.clone();
                at.extend_from_slice(&(rev as u64).to_be_bytes());
                it.seek_for_prev(&at);
                let newest = match (it.key(), it.value()) {
                    (Some(k), Some(v)) if k.len() == prefix.len() + 8 && k.starts_with(&prefix) && v.len() >= 4 => {
                        let r = u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or([0; 8])) as i64;
                        Some((r, u32::from_be_bytes(v[..4].try_into().unwrap_or([0; 4]))))
                    }
                    _ => None,
                };
                if let Some((r, sub)) = newest {
                    out.extend(value_of(r, sub));
                }
            }
            // Past every entry of this key (revisions are below 2^63).
            prefix.extend_from_slice(&[0xFF; 8]);
            it.seek(&prefix);
        }
        out
    }

    /// Events with revisions in `[from, to]`, in order, at most `max` (whole revisions only
    /// are cut: the result may exceed `max` to finish the last revision).
    pub fn events(&self, from: i64, to: i64, max: usize) -> Vec<(i64, Event)> {
        let mut out = Vec::new();
        let iter =
            self.db.iterator_cf(cf(&self.db, db::CF_REV), IteratorMode::From(&rev_key(from, 0), Direction::Forward));
        for item in iter {
            let Ok((k, v)) = item else { break };
            let (rev, _) = parse_rev_key(&k);
            if rev > to {
                break;
            }
            if out.len() >= max && out.last().is_some_and(|(r, _)| *r != rev) {
                break;
            }
            out.push((rev, decode_event(&v)));
        }
        out
    }

    /// The key's value just before `rev`, if it existed and is not compacted away.
    pub fn prev_kv(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        if rev <= 1 {
            return None;
        }
        let probe = hist_key(key, rev - 1);
        let mut it = self.db.raw_iterator_cf(cf(&self.db, db::CF_HIST));
        it.seek_for_prev(&probe);
        let k = it.key()?;
        if k.len() != probe.len() || k[..probe.len() - 8] != probe[..probe.len() - 8] {
            return None;
        }
        let (r, _) = (u64::from_be_bytes(k[k.len() - 8..].try_into().ok()?) as i64, ());
        let sub = u32::from_be_bytes(it.value()?[..4].try_into().ok()?);
        let ev = decode_event(&self.db.get_cf(cf(&self.db, db::CF_REV), rev_key(r, sub)).ok()??);
        (ev.r#type == EventType::Put as i32).then_some(ev.kv).flatten()
    }

    /// etcd's HashKV: a CRC32 over the MVCC history up to `revision` (0 = current).
    /// Returns (hash, compact revision, hashed revision).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), ApplyError> {
        let snap = self.db.snapshot();
        let current = self.current_revision();
        let compacted = self.compact_revision();
        let rev = if revision <= 0 { current } else { revision };
        if rev > current {
            return Err(ApplyError::FutureRevision { requested: rev, current });
        }
        if rev < compacted {
            return Err(ApplyError::Compacted { requested: rev, compacted });
        }
        let mut h = crc32fast::Hasher::new();
        for item in snap.iterator_cf(cf(&self.db, db::CF_REV), IteratorMode::Start) {
            let Ok((k, v)) = item else { break };
            if parse_rev_key(&k).0 > rev {
                break;
            }
            h.update(&k);
            h.update(&v);
        }
        Ok((h.finalize(), compacted, rev))
    }

    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        let k = [sm_key::LEASE_PREFIX, &id.to_be_bytes()].concat();
        let v = self.db.get_cf(cf(&self.db, db::CF_SM), k).ok()??;
        Some(i64::from_be_bytes(v[..8].try_into().ok()?))
    }

    /// All leases and their granted TTLs.
    pub fn leases(&self) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let iter =
            self.db.iterator_cf(cf(&self.db, db::CF_SM), IteratorMode::From(sm_key::LEASE_PREFIX, Direction::Forward));
        for item in iter {
            let Ok((k, v)) = item else { break };
            let Some(id) = k.strip_prefix(sm_key::LEASE_PREFIX) else { break };
            let (Ok(id), Ok(ttl)) = (id.try_into(), v[..8].try_into()) else { continue };
            out.push((i64::from_be_bytes(id), i64::from_be_bytes(ttl)));
        }
        out
    }

    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        let prefix = (id as u64).to_be_bytes();
        self.db
            .prefix_iterator_cf(cf(&self.db, db::CF_LKEY), prefix)
            .filter_map(Result::ok)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k[8..].to_vec())
            .collect()
    }

    pub fn max_member_id(&self) -> u64 {
        get_i64(&self.db, sm_key::MAX_MEMBER_ID) as u64
    }

    // ---- writes ------------------------------------------------------------------------

    /// A writer staging one log entry's changes at revision `current + 1`.
    pub fn writer(&self) -> Writer<'_> {
        let base = self.current_revision();
        Writer {
            mvcc: self,
            rev: base + 1,
            compacted: self.compact_revision(),
            overlay: BTreeMap::new(),
            events: Vec::new(),
            batch: WriteBatch::default(),
            leases: BTreeMap::new(),
        }
    }
}

pub fn header(revision: i64) -> skiff_proto::etcdserverpb::ResponseHeader {
    skiff_proto::etcdserverpb::ResponseHeader { revision, ..Default::default() }
}

/// Filters, counts, sorts and limits a range's key-values as etcd does.
/// How much of a range to read: the first `take` values (a page and one more, to know there
/// is more), and whether to count the keys after them. Only for key-ordered ranges without
/// revision filters, whose first values are the page.
#[derive(Clone, Copy)]
struct Window {
    take: usize,
    count_rest: bool,
}

impl Window {
    fn of(req: &RangeRequest, count_rest: bool) -> Option<Window> {
        use skiff_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
        let key_order = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key) == SortTarget::Key
            && matches!(
                SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None),
                SortOrder::None | SortOrder::Ascend
            );
        let unfiltered = req.min_mod_revision == 0
            && req.max_mod_revision == 0
            && req.min_create_revision == 0
            && req.max_create_revision == 0;
        (req.limit > 0 && key_order && unfiltered && !req.count_only)
            .then(|| Window { take: req.limit as usize + 1, count_rest })
    }
}

fn finish_range(req: &RangeRequest, all: Vec<KeyValue>) -> RangeResponse {
    use skiff_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
    let count = all.len() as i64;
    let mut kvs: Vec<KeyValue> = all
        .into_iter()
        .filter(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        })
        .collect();
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    if order != SortOrder::None {
        kvs.sort_by(|a, b| match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        });
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.count_only {
        kvs.clear();
    } else if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResponse { header: None, kvs, more, count }
}

/// One log entry's staged changes. Nothing reaches the database until the caller writes
/// [`Writer::finish`]'s batch; dropping a writer discards everything.
pub struct Writer<'a> {
    mvcc: &'a Mvcc,
    rev: i64,
    compacted: i64,
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    /// Events in order, each with `prev_kv` filled (watchers may want it).
    events: Vec<Event>,
    batch: WriteBatch,
    /// Lease records staged by this entry: id → Some(ttl) granted, None revoked.
    leases: BTreeMap<i64, Option<i64>>,
}

impl Writer<'_> {
    /// The header of a response inside a transaction, as etcd fills it: only the revision, the
    /// store's as the transaction has left it so far (its own revision once it has written).
    /// The API layer replaces a top-level response's header with the full one.
    fn inner_header(&self) -> Option<skiff_proto::etcdserverpb::ResponseHeader> {
        let revision = if self.events.is_empty() { self.rev - 1 } else { self.rev };
        Some(skiff_proto::etcdserverpb::ResponseHeader { revision, ..Default::default() })
    }

    fn get(&self, key: &[u8]) -> Option<KeyValue> {
        match self.overlay.get(key) {
            Some(staged) => staged.clone(),
            None => {
                let db = &self.mvcc.db;
                db.get_cf(cf(db, db::CF_KV), key).ok().flatten().map(|b| decode_kv(&b))
            }
        }
    }

    fn lease_exists(&self, id: i64) -> bool {
        match self.leases.get(&id) {
            Some(staged) => staged.is_some(),
            None => self.mvcc.lease_ttl(id).is_some(),
        }
    }

    /// A range inside a transaction: revision 0 sees the transaction's own earlier writes; an
    /// explicit revision reads the store as it was, without them.
    fn range_in_txn(&self, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let base = self.rev - 1;
        let kvs = if req.revision <= 0 {
            self.mvcc.scan_current(ReadOptions::default(), &range, Some(&self.overlay))
        } else if req.revision > base {
            return Err(ApplyError::FutureRevision { requested: req.revision, current: base });
        } else if req.revision < self.compacted {
            return Err(ApplyError::Compacted { requested: req.revision, compacted: self.compacted });
        } else if req.revision == base {
            self.mvcc.scan_current(ReadOptions::default(), &range, None)
        } else {
            self.mvcc.scan_at(ReadOptions::default(), &range, req.revision, None)
        };
        Ok(RangeResponse { header: self.inner_header(), ..finish_range(req, kvs) })
    }

    fn attach(&mut self, lease: i64, key: &[u8]) {
        let db = &self.mvcc.db;
        self.batch.put_cf(cf(db, db::CF_LKEY), lease_key(lease, key), b"");
    }

    fn detach(&mut self, lease: i64, key: &[u8]) {
        let db = &self.mvcc.db;
        self.batch.delete_cf(cf(db, db::CF_LKEY), lease_key(lease, key));
    }

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, ApplyError> {
        if req.key.is_empty() {
            return Err(ApplyError::Invalid("etcdserver: key is not provided".into()));
        }
        let prev = self.get(&req.key);
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(ApplyError::KeyNotFound);
        }
        let value = if req.ignore_value {
            prev.as_ref().map(|p| p.value.clone()).unwrap_or_default()
        } else {
            req.value.clone()
        };
        let lease = if req.ignore_lease { prev.as_ref().map_or(0, |p| p.lease) } else { req.lease };
        if lease != 0 && !self.lease_exists(lease) {
            return Err(ApplyError::LeaseNotFound { id: lease });
        }
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(self.rev, |p| p.create_revision),
            mod_revision: self.rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.detach(old_lease, &req.key);
            }
            if lease != 0 {
                self.attach(lease, &req.key);
            }
        }
        self.overlay.insert(req.key.clone(), Some(kv.clone()));
        self.events.push(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: prev.clone() });
        Ok(PutResponse { header: self.inner_header(), prev_kv: if req.prev_kv { prev } else { None } })
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, ApplyError> {
        if req.key.is_empty() {
            return Err(ApplyError::Invalid("etcdserver: key is not provided".into()));
        }
        let range = KeyRange::new(&req.key, &req.range_end);
        let doomed = self.mvcc.scan_current(ReadOptions::default(), &range, Some(&self.overlay));
        let deleted = doomed.len() as i64;
        for prev in &doomed {
            if prev.lease != 0 {
                self.detach(prev.lease, &prev.key);
            }
            self.overlay.insert(prev.key.clone(), None);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue { key: prev.key.clone(), mod_revision: self.rev, ..Default::default() }),
                prev_kv: Some(prev.clone()),
            });
        }
        Ok(DeleteRangeResponse {
            header: self.inner_header(),
            deleted,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        })
    }

    fn compare(&self, c: &Compare) -> bool {
        use skiff_proto::etcdserverpb::compare::{CompareResult, CompareTarget};
        let range = KeyRange::new(&c.key, &c.range_end);
        let kvs = if range.single {
            self.get(&c.key).into_iter().collect::<Vec<_>>()
        } else {
            self.mvcc.scan_current(ReadOptions::default(), &range, Some(&self.overlay))
        };
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        if kvs.is_empty() && target == CompareTarget::Value {
            return false;
        }
        let absent = [KeyValue::default()];
        let kvs: &[KeyValue] = if kvs.is_empty() { &absent } else { &kvs };
        let result = CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal);
        kvs.iter().all(|kv| {
            let ord = match (&c.target_union, target) {
                (Some(compare::TargetUnion::Value(v)), CompareTarget::Value) => kv.value.as_slice().cmp(v.as_slice()),
                (Some(compare::TargetUnion::Version(v)), CompareTarget::Version) => kv.version.cmp(v),
                (Some(compare::TargetUnion::CreateRevision(v)), CompareTarget::Create) => kv.create_revision.cmp(v),
                (Some(compare::TargetUnion::ModRevision(v)), CompareTarget::Mod) => kv.mod_revision.cmp(v),
                (Some(compare::TargetUnion::Lease(v)), CompareTarget::Lease) => kv.lease.cmp(v),
                (None, CompareTarget::Version) => kv.version.cmp(&0),
                (None, CompareTarget::Create) => kv.create_revision.cmp(&0),
                (None, CompareTarget::Mod) => kv.mod_revision.cmp(&0),
                (None, CompareTarget::Lease) => kv.lease.cmp(&0),
                (None, CompareTarget::Value) => kv.value.as_slice().cmp(&[]),
                _ => return false,
            };
            match result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
                CompareResult::NotEqual => ord.is_ne(),
            }
        })
    }

    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, ApplyError> {
        let succeeded = req.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range_in_txn(r)?)
                }
                Some(request_op::Request::RequestPut(r)) => response_op::Response::ResponsePut(self.put(r)?),
                Some(request_op::Request::RequestDeleteRange(r)) => {
                    response_op::Response::ResponseDeleteRange(self.delete_range(r)?)
                }
                Some(request_op::Request::RequestTxn(r)) => response_op::Response::ResponseTxn(self.txn(r)?),
                None => return Err(ApplyError::Invalid("etcdserver: txn operation has no request".into())),
            };
            responses.push(ResponseOp { response: Some(response) });
        }
        Ok(TxnResponse { header: self.inner_header(), succeeded, responses })
    }

    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<(), ApplyError> {
        if self.lease_exists(id) {
            return Err(ApplyError::LeaseExists { id });
        }
        let db = &self.mvcc.db;
        let k = [sm_key::LEASE_PREFIX, &id.to_be_bytes()].concat();
        self.batch.put_cf(cf(db, db::CF_SM), k, ttl.to_be_bytes());
        self.leases.insert(id, Some(ttl));
        Ok(())
    }

    /// Revokes a lease and deletes every key attached to it, in one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<(), ApplyError> {
        if !self.lease_exists(id) {
            return Err(ApplyError::LeaseNotFound { id });
        }
        for key in self.mvcc.lease_keys(id) {
            if self.get(&key).is_some_and(|kv| kv.lease == id) {
                self.delete_range(&DeleteRangeRequest { key, ..Default::default() })?;
            }
        }
        let db = &self.mvcc.db;
        let k = [sm_key::LEASE_PREFIX, &id.to_be_bytes()].concat();
        self.batch.delete_cf(cf(db, db::CF_SM), k);
        self.leases.insert(id, None);
        Ok(())
    }

    /// Removes history superseded at or before `revision`, keeping each key's newest version
    /// at `revision` (unless it is a deletion), as etcd's compaction does.
    pub fn compact(&mut self, revision: i64) -> Result<(), ApplyError> {
        let current = self.rev - 1;
        if revision <= self.compacted {
            return Err(ApplyError::Compacted { requested: revision, compacted: self.compacted });
        }
        if revision > current {
            return Err(ApplyError::FutureRevision { requested: revision, current });
        }
        let db = &self.mvcc.db;
        let (rev_cf, hist_cf) = (cf(db, db::CF_REV), cf(db, db::CF_HIST));
        let mut hist = db.raw_iterator_cf(hist_cf);
        for item in db.iterator_cf(rev_cf, IteratorMode::Start) {
            let Ok((k, v)) = item else { break };
            let (r, _) = parse_rev_key(&k);
            if r > revision {
                break;
            }
            let ev = decode_event(&v);
            let key = ev.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
            let this = hist_key(&key, r);
            hist.seek(hist_key(&key, r + 1));
            let superseded = hist.key().is_some_and(|next| {
                next.len() == this.len()
                    && next[..this.len() - 8] == this[..this.len() - 8]
                    && u64::from_be_bytes(next[next.len() - 8..].try_into().unwrap_or([0xFF; 8])) as i64 <= revision
            });
            if superseded || ev.r#type == EventType::Delete as i32 {
                self.batch.delete_cf(rev_cf, &k);
                self.batch.delete_cf(hist_cf, &this);
            }
        }
        self.batch.put_cf(cf(db, db::CF_SM), sm_key::COMPACTED, revision.to_be_bytes());
        self.compacted = revision;
        Ok(())
    }

    pub fn allocate_member_id(&mut self) -> u64 {
        let id = self.mvcc.max_member_id() + 1;
        self.note_member_id(id);
        id
    }

    /// Remembers that `id` was used, so it is never handed out again.
    pub fn note_member_id(&mut self, id: u64) {
        if id > self.mvcc.max_member_id() {
            let db = &self.mvcc.db;
            self.batch.put_cf(cf(db, db::CF_SM), sm_key::MAX_MEMBER_ID, (id as i64).to_be_bytes());
        }
    }

    /// Stages `key = value` in the `sm` column family (raft metadata written with the entry).
    pub fn put_meta(&mut self, key: &[u8], value: &[u8]) {
        let db = &self.mvcc.db;
        self.batch.put_cf(cf(db, db::CF_SM), key, value);
    }

    /// Turns the staged changes into one batch. Returns it with the revision after the entry,
    /// the compact revision, and the events (with `prev_kv`) to publish once it is written.
    pub fn finish(mut self) -> (WriteBatch, i64, i64, Vec<Event>) {
        let db = &self.mvcc.db;
        let revision = if self.events.is_empty() { self.rev - 1 } else { self.rev };
        if !self.events.is_empty() {
            let (rev_cf, hist_cf, kv_cf) = (cf(db, db::CF_REV), cf(db, db::CF_HIST), cf(db, db::CF_KV));
            for (sub, ev) in self.events.iter().enumerate() {
                let stored = Event { r#type: ev.r#type, kv: ev.kv.clone(), prev_kv: None };
                let key = ev.kv.as_ref().map(|kv| kv.key.as_slice()).unwrap_or_default();
                self.batch.put_cf(rev_cf, rev_key(self.rev, sub as u32), stored.encode_to_vec());
                self.batch.put_cf(hist_cf, hist_key(key, self.rev), (sub as u32).to_be_bytes());
            }
            for (key, staged) in &self.overlay {
                match staged {
                    Some(kv) => self.batch.put_cf(kv_cf, key, kv.encode_to_vec()),
                    None => self.batch.delete_cf(kv_cf, key),
                }
            }
            self.batch.put_cf(cf(db, db::CF_SM), sm_key::REVISION, self.rev.to_be_bytes());
        }
        (self.batch, revision, self.compacted, self.events)
    }
}

/// Checks etcd's request-level rules for a transaction before it is proposed: operation count,
/// and no key written twice in one branch — put twice, or put where a delete of the same
/// branch (at its level or an enclosing one) covers it (etcd's `checkIntervals`).
pub fn validate_txn(req: &TxnRequest) -> Result<(), ApplyError> {
    fn count(list: &[RequestOp]) -> usize {
        list.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestTxn(t)) => 1 + count(&t.success) + count(&t.failure),
                _ => 1,
            })
            .sum()
    }
    /// The keys one branch puts and the ranges it deletes, nested transactions included.
    fn written(list: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<KeyRange>), ApplyError> {
        let mut dels: Vec<KeyRange> = list
            .iter()
            .filter_map(|op| match &op.request {
                Some(request_op::Request::RequestDeleteRange(d)) => Some(KeyRange::new(&d.key, &d.range_end)),
                _ => None,
            })
            .collect();
        let deleted = |dels: &[KeyRange], key: &[u8]| dels.iter().any(|r| r.contains(key));
        let mut puts = BTreeSet::new();
        for op in list {
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                let (then_puts, then_dels) = written(&t.success)?;
                let (else_puts, else_dels) = written(&t.failure)?;
                // Only one of a nested transaction's branches runs: they may write the same key.
                if then_puts.iter().chain(&else_puts).any(|k| puts.contains(k) || deleted(&dels, k)) {
                    return Err(ApplyError::DuplicateKey);
                }
                puts.extend(then_puts.into_iter().chain(else_puts));
                dels.extend(then_dels.into_iter().chain(else_dels));
            }
        }
        for op in list {
            if let Some(request_op::Request::RequestPut(p)) = &op.request {
                if deleted(&dels, &p.key) || !puts.insert(p.key.clone()) {
                    return Err(ApplyError::DuplicateKey);
                }
            }
        }
        Ok((puts, dels))
    }
    if (req.compare.len() + count(&req.success)).max(count(&req.failure)) > MAX_TXN_OPS {
        return Err(ApplyError::Invalid("etcdserver: too many operations in txn request".into()));
    }
    written(&req.success)?;
    written(&req.failure)?;
    Ok(())
}
