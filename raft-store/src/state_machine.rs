//! The raft state machine: applies committed entries to the MVCC store, builds snapshots of
//! it, and installs snapshots received from the leader.
//!
//! Snapshot file format (`snapshots/current.snap`): `SKIFFSNAP1\n`, a u64 BE length and the
//! bincode `SnapshotMeta`, then records `[cf u8][key len u32][key][value len u32][value]` for
//! every state-machine column family, then a `0xFF` end marker. openraft streams the file to
//! followers in chunks (`snapshot_max_chunk_size`), so no message ever holds the database.

use crate::alarm::{AlarmStore, Alarms};
use crate::auth::{AuthState, AuthStore};
use crate::db::{self, cf, SM_CFS};
use crate::mvcc::{sm_key, Mvcc, Writer};
use crate::types::{ApplyError, LogId, Member, Op, Reply, Request, Response, StorageError, TypeConfig};
use crate::watch_hub::WatchHub;
use openraft::storage::RaftStateMachine;
use openraft::{Entry, EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError, StoredMembership};
use prost::Message;
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use skiff_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, TxnRequest};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8] = b"SKIFFSNAP1\n";
const INSTALLING: &[u8] = b"installing_snapshot";
const BATCH_BYTES: usize = 4 << 20;

/// Shared between openraft's state machine handle and the API layer's readers.
pub struct SmShared {
    pub mvcc: Mvcc,
    pub hub: WatchHub,
    /// The store's users and roles as applied here (`sm_key::AUTH` on disk).
    pub auth: AuthStore,
    /// The alarms as applied here (`sm_key::ALARMS` on disk).
    pub alarms: AlarmStore,
    snapshot_dir: PathBuf,
    receiving: Mutex<Option<PathBuf>>,
}

impl SmShared {
    pub fn db(&self) -> &Arc<DB> {
        self.mvcc.db()
    }

    fn current_path(&self) -> PathBuf {
        self.snapshot_dir.join("current.snap")
    }

    /// Re-reads what is kept in memory from the database (after opening or a snapshot install).
    fn reload(&self) -> std::io::Result<()> {
        self.mvcc.reload();
        self.auth.set(sm_meta::<AuthState>(self.db(), sm_key::AUTH)?);
        self.alarms.set(sm_meta::<Alarms>(self.db(), sm_key::ALARMS)?);
        Ok(())
    }
}

/// openraft's handle on the state machine.
pub struct StateMachine {
    shared: Arc<SmShared>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, &e).into()
}

impl StateMachine {
    /// Opens the state machine over `db`, finishing a snapshot install a crash interrupted.
    pub fn open(db: Arc<DB>, snapshot_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(snapshot_dir)?;
        let shared = Arc::new(SmShared {
            mvcc: Mvcc::open(db.clone()),
            hub: WatchHub::new(4096),
            auth: AuthStore::default(),
            alarms: AlarmStore::default(),
            snapshot_dir: snapshot_dir.to_path_buf(),
            receiving: Mutex::new(None),
        });
        if db.get_cf(cf(&db, db::CF_META), INSTALLING).map_err(std::io::Error::other)?.is_some() {
            tracing::warn!("finishing a snapshot install interrupted by a crash");
            load_snapshot_file(&db, &shared.current_path())?;
        }
        shared.reload()?;
        Ok(StateMachine { shared })
    }

    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }

    fn apply_one(&self, entry: &Entry<TypeConfig>) -> Result<Response, StorageError> {
        let mvcc = &self.shared.mvcc;
        let mut w = mvcc.writer();
        let mut staged = Staged::default();
        let result = match &entry.payload {
            EntryPayload::Blank => Ok(Reply::Empty),
            EntryPayload::Membership(m) => {
                for id in m.nodes().map(|(id, _)| *id) {
                    w.note_member_id(id);
                }
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                w.put_meta(sm_key::MEMBERSHIP, &bincode::serialize(&stored).map_err(sm_err)?);
                Ok(Reply::Empty)
            }
            EntryPayload::Normal(req) => {
                let now = Now { auth: self.shared.auth.current(), alarms: self.shared.alarms.current() };
                apply_request(&mut w, req, entry.log_id.leader_id.term, &now, &mut staged)
            }
        };
        if result.is_err() {
            // A refused command changes nothing but the applied index.
            w = mvcc.writer();
        }
        w.put_meta(sm_key::APPLIED, &bincode::serialize(&Some(entry.log_id)).map_err(sm_err)?);
        let (batch, revision, compacted, events) = w.finish();
        mvcc.db().write_opt(batch, &WriteOptions::default()).map_err(sm_err)?;
        mvcc.publish_counters(revision, compacted);
        if result.is_ok() {
            if let Some(next) = staged.auth {
                self.shared.auth.set(next);
            }
            if let Some(next) = staged.alarms {
                self.shared.alarms.set(next);
            }
        }
        if !events.is_empty() {
            self.shared.hub.publish(revision, events);
        }
        Ok(Response { revision, result })
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ApplyError> {
    M::decode(bytes).map_err(|e| ApplyError::Invalid(format!("malformed request: {e}")))
}

/// The in-memory state an entry applies against.
struct Now {
    auth: Arc<AuthState>,
    alarms: Arc<Alarms>,
}

/// In-memory state an entry changes, set once the entry's batch is written.
#[derive(Default)]
struct Staged {
    auth: Option<AuthState>,
    alarms: Option<Alarms>,
}

fn encode_meta<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ApplyError> {
    bincode::serialize(v).map_err(|e| ApplyError::Invalid(e.to_string()))
}

/// Applies one command against `now`; what it changes in memory is staged in `staged`.
fn apply_request(
    w: &mut Writer<'_>,
    req: &Request,
    term: u64,
    now: &Now,
    staged: &mut Staged,
) -> Result<Reply, ApplyError> {
    if let Some(expected) = req.fence_term {
        if expected != term {
            return Err(ApplyError::Fenced { expected, actual: term });
        }
    }
    let capped = now.alarms.nospace();
    match &req.op {
        Op::Put(_) | Op::LeaseGrant { .. } if capped => Err(ApplyError::NoSpace),
        Op::Put(b) => Ok(Reply::Encoded(w.put(&decode::<PutRequest>(b)?)?.encode_to_vec())),
        Op::DeleteRange(b) => Ok(Reply::Encoded(w.delete_range(&decode::<DeleteRangeRequest>(b)?)?.encode_to_vec())),
        Op::Txn(b) => {
            let txn = decode::<TxnRequest>(b)?;
            if capped && crate::alarm::txn_puts(&txn) {
                return Err(ApplyError::NoSpace);
            }
            Ok(Reply::Encoded(w.txn(&txn)?.encode_to_vec()))
        }
        Op::Compact { revision } => w.compact(*revision).map(|_| Reply::Empty),
        Op::LeaseGrant { id, ttl } => w.lease_grant(*id, *ttl).map(|_| Reply::LeaseGranted { id: *id, ttl: *ttl }),
        Op::LeaseRevoke { id } => w.lease_revoke(*id).map(|_| Reply::Empty),
        Op::AllocateMemberId => Ok(Reply::MemberId(w.allocate_member_id())),
        Op::Auth(op) => {
            let next = now.auth.apply(op)?;
            w.put_meta(sm_key::AUTH, &encode_meta(&next)?);
            staged.auth = Some(next);
            Ok(Reply::Empty)
        }
        Op::Alarm { activate, member, alarm } => {
            let (next, changed) = now.alarms.apply(*activate, *member, *alarm)?;
            w.put_meta(sm_key::ALARMS, &encode_meta(&next)?);
            staged.alarms = Some(next);
            Ok(Reply::Alarm(changed.map(|a| (a.member_id, a.alarm))))
        }
    }
}

/// A bincode value of the `sm` column family; its default when absent.
fn sm_meta<T: serde::de::DeserializeOwned + Default>(db: &DB, key: &[u8]) -> std::io::Result<T> {
    match db.get_cf(cf(db, db::CF_SM), key).map_err(std::io::Error::other)? {
        Some(b) => bincode::deserialize(&b).map_err(std::io::Error::other),
        None => Ok(T::default()),
    }
}

fn read_applied(db: &DB) -> Result<(Option<LogId>, StoredMembership<u64, Member>), StorageError> {
    Ok((sm_meta(db, sm_key::APPLIED).map_err(sm_err)?, sm_meta(db, sm_key::MEMBERSHIP).map_err(sm_err)?))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership<u64, Member>), StorageError> {
        read_applied(self.shared.db())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        entries.into_iter().map(|e| self.apply_one(&e)).collect()
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: self.shared.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.shared.snapshot_dir.join(format!("receiving-{:016x}.snap", rand::random::<u64>()));
        // Read and write: openraft writes the chunks, install reads them back.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        if let Some(old) = self.shared.receiving.lock().expect("not poisoned").replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncSeekExt;
        // Copy from the handle we are given (not a path we remember): it is the snapshot.
        let staged = self.shared.snapshot_dir.join(format!("installing-{}.snap", meta.snapshot_id));
        snapshot.seek(std::io::SeekFrom::Start(0)).await.map_err(snap_err)?;
        let mut out = tokio::fs::File::create(&staged).await.map_err(snap_err)?;
        tokio::io::copy(&mut *snapshot, &mut out).await.map_err(snap_err)?;
        out.sync_all().await.map_err(snap_err)?;
        drop((out, snapshot));
        if let Some(received) = self.shared.receiving.lock().expect("not poisoned").take() {
            let _ = std::fs::remove_file(received);
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Err(e) = verify_snapshot_file(&staged) {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
            let current = shared.current_path();
            std::fs::rename(&staged, &current)?;
            load_snapshot_file(shared.db(), &current)?;
            shared.reload()
        })
        .await
        .map_err(|e| snap_err(std::io::Error::other(e)))?
        .map_err(snap_err)?;
        self.shared.hub.everything_changed();
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.shared.current_path();
        if !path.exists() {
            return Ok(None);
        }
        let meta = read_snapshot_meta(&path).map_err(snap_err)?;
        let file = tokio::fs::File::open(&path).await.map_err(snap_err)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}

/// Builds snapshots from a RocksDB point-in-time view while applies go on.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let meta = tokio::task::spawn_blocking(move || write_snapshot_file(&shared))
            .await
            .map_err(|e| snap_err(std::io::Error::other(e)))?
            .map_err(snap_err)?;
        let file = tokio::fs::File::open(self.shared.current_path()).await.map_err(snap_err)?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

fn write_snapshot_file(shared: &SmShared) -> std::io::Result<SnapshotMeta<u64, Member>> {
    let db = shared.db();
    let snap = db.snapshot();
    let get = |k: &[u8]| snap.get_cf(cf(db, db::CF_SM), k).map_err(std::io::Error::other);
    let last_log_id: Option<LogId> = match get(sm_key::APPLIED)? {
        Some(b) => bincode::deserialize(&b).map_err(std::io::Error::other)?,
        None => None,
    };
    let last_membership: StoredMembership<u64, Member> = match get(sm_key::MEMBERSHIP)? {
        Some(b) => bincode::deserialize(&b).map_err(std::io::Error::other)?,
        None => StoredMembership::default(),
    };
    let snapshot_id = match &last_log_id {
        Some(l) => format!("{}-{}-{:08x}", l.leader_id.term, l.index, rand::random::<u32>()),
        None => format!("0-0-{:08x}", rand::random::<u32>()),
    };
    let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
    let tmp = shared.snapshot_dir.join(format!("building-{}.snap", meta.snapshot_id));
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    out.write_all(MAGIC)?;
    let m = bincode::serialize(&meta).map_err(std::io::Error::other)?;
    out.write_all(&(m.len() as u64).to_be_bytes())?;
    out.write_all(&m)?;
    for (i, name) in SM_CFS.iter().enumerate() {
        for item in snap.iterator_cf(cf(db, name), IteratorMode::Start) {
            let (k, v) = item.map_err(std::io::Error::other)?;
            out.write_all(&[i as u8])?;
            out.write_all(&(k.len() as u32).to_be_bytes())?;
            out.write_all(&k)?;
            out.write_all(&(v.len() as u32).to_be_bytes())?;
            out.write_all(&v)?;
        }
    }
    out.write_all(&[0xFF])?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, shared.current_path())?;
    Ok(meta)
}

fn read_snapshot_meta(path: &Path) -> std::io::Result<SnapshotMeta<u64, Member>> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    read_header(&mut r)
}

fn read_header(r: &mut impl Read) -> std::io::Result<SnapshotMeta<u64, Member>> {
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(std::io::Error::other("not a skiff snapshot file"));
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_be_bytes(len);
    if len > MAX_META_BYTES {
        return Err(std::io::Error::other(format!("corrupt snapshot: metadata of {len} bytes")));
    }
    let mut m = vec![0u8; len as usize];
    r.read_exact(&mut m)?;
    bincode::deserialize(&m).map_err(std::io::Error::other)
}

/// Largest snapshot header (membership and log id) and record accepted from a peer's file.
const MAX_META_BYTES: u64 = 16 << 20;
const MAX_RECORD_BYTES: usize = 64 << 20;

/// One record of a snapshot file: the index of its column family in `SM_CFS`, key, value.
type Record = (usize, Vec<u8>, Vec<u8>);

/// The next record of a snapshot file; `None` at the end marker. Lengths are bounded and
/// column families checked, so a malformed file is an error.
fn read_record(r: &mut impl Read) -> std::io::Result<Option<Record>> {
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag)?;
    if tag[0] == 0xFF {
        return Ok(None);
    }
    let cf = tag[0] as usize;
    if cf >= SM_CFS.len() {
        return Err(std::io::Error::other(format!("corrupt snapshot: column family {cf}")));
    }
    let mut read_blob = || -> std::io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_RECORD_BYTES {
            return Err(std::io::Error::other(format!("corrupt snapshot: a record of {len} bytes")));
        }
        let mut b = vec![0u8; len];
        r.read_exact(&mut b)?;
        Ok(b)
    };
    Ok(Some((cf, read_blob()?, read_blob()?)))
}

/// Reads a whole snapshot file before anything is replaced: its header, every record's
/// bounds, and the encodings the store later decodes without checking (current values and
/// events). A malformed snapshot from a peer is refused here, never half-installed.
fn verify_snapshot_file(path: &Path) -> std::io::Result<()> {
    verify_snapshot(BufReader::with_capacity(1 << 20, std::fs::File::open(path)?))
}

/// [`verify_snapshot_file`] over any reader (the fuzz target `snapshots` feeds it bytes).
pub fn verify_snapshot(mut r: impl Read) -> std::io::Result<()> {
    use prost::Message as _;
    read_header(&mut r)?;
    while let Some((cf, key, value)) = read_record(&mut r)? {
        let ok = match SM_CFS[cf] {
            db::CF_KV => skiff_proto::mvccpb::KeyValue::decode(value.as_slice()).is_ok(),
            db::CF_REV => key.len() == 12 && skiff_proto::mvccpb::Event::decode(value.as_slice()).is_ok(),
            _ => true,
        };
        if !ok {
            return Err(std::io::Error::other(format!("corrupt snapshot: a malformed {} record", SM_CFS[cf])));
        }
    }
    Ok(())
}

/// Replaces the state-machine column families with a snapshot file's contents. Marked in
/// `meta` while in progress so a crash mid-way is finished on the next start.
fn load_snapshot_file(db: &DB, path: &Path) -> std::io::Result<()> {
    let io = std::io::Error::other;
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    db.put_cf_opt(cf(db, db::CF_META), INSTALLING, b"1", &synced).map_err(io)?;
    for name in SM_CFS {
        let handle = cf(db, name);
        let mut batch = WriteBatch::default();
        for item in db.iterator_cf(handle, IteratorMode::Start) {
            let (k, _) = item.map_err(io)?;
            batch.delete_cf(handle, k);
            if batch.size_in_bytes() > BATCH_BYTES {
                db.write(std::mem::take(&mut batch)).map_err(io)?;
            }
        }
        db.write(batch).map_err(io)?;
    }
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    read_header(&mut r)?;
    let handles: Vec<_> = SM_CFS.iter().map(|n| cf(db, n)).collect();
    let mut batch = WriteBatch::default();
    while let Some((cf, k, v)) = read_record(&mut r)? {
        batch.put_cf(handles[cf], k, v);
        if batch.size_in_bytes() > BATCH_BYTES {
            db.write(std::mem::take(&mut batch)).map_err(io)?;
        }
    }
    db.write(batch).map_err(io)?;
    db.delete_cf_opt(cf(db, db::CF_META), INSTALLING, &synced).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn header() -> Vec<u8> {
        let meta: SnapshotMeta<u64, Member> = SnapshotMeta::default();
        let m = bincode::serialize(&meta).unwrap();
        [MAGIC, &(m.len() as u64).to_be_bytes(), &m].concat()
    }

    #[test]
    fn malformed_snapshots_are_errors_that_name_the_fault() {
        let bad = |bytes: Vec<u8>, phrase: &str| {
            let err = verify_snapshot_file(file(&bytes).path()).expect_err(phrase);
            assert!(err.to_string().contains(phrase), "{err} lacks {phrase:?}");
        };
        bad(b"NOTASNAP".to_vec(), "fill whole buffer");
        bad([MAGIC, &u64::MAX.to_be_bytes()].concat(), "metadata of");
        bad([header(), vec![9]].concat(), "column family 9");
        bad([header(), vec![0], u32::MAX.to_be_bytes().to_vec()].concat(), "a record of");
        let junk_kv = [header(), vec![0, 0, 0, 0, 1, b'k', 0, 0, 0, 2, 0xff, 0xff, 0xFF]].concat();
        bad(junk_kv, "malformed kv record");
        bad(header(), "fill whole buffer"); // no end marker
        verify_snapshot_file(file(&[header(), vec![0xFF]].concat()).path()).expect("an empty snapshot is well formed");
    }
}
