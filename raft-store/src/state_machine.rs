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
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8] = b"SKIFFSNAP1\n";
const INSTALLING: &[u8] = b"installing_snapshot";
/// Bytes of records written to RocksDB at once when a snapshot or backup is loaded.
pub(crate) const BATCH_BYTES: usize = 4 << 20;

/// Shared between openraft's state machine handle and the API layer's readers.
pub struct SmShared {
    pub mvcc: Mvcc,
    pub hub: WatchHub,
    /// The store's users and roles as applied here (`sm_key::AUTH` on disk).
    pub auth: AuthStore,
    /// The alarms as applied here (`sm_key::ALARMS` on disk).
    pub alarms: AlarmStore,
    /// The index of the last log entry applied here, for writers waiting to read their own
    /// write on this member ([`SmShared::applied`]).
    applied: tokio::sync::watch::Sender<u64>,
    snapshot_dir: PathBuf,
    receiving: Mutex<Option<PathBuf>>,
    /// How long each state-machine write took (`etcd_disk_backend_commit_duration_seconds`).
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl SmShared {
    pub fn db(&self) -> &Arc<DB> {
        self.mvcc.db()
    }

    fn current_path(&self) -> PathBuf {
        self.snapshot_dir.join("current.snap")
    }

    /// The index of the last log entry applied here, as it moves.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn note_applied(&self, index: u64) {
        self.applied.send_if_modified(|held| std::mem::replace(held, index) != index);
    }

    /// Re-reads what is kept in memory from the database (after opening or a snapshot install).
    fn reload(&self) -> std::io::Result<()> {
        self.mvcc.reload();
        let (applied, _) = read_applied(self.db()).map_err(std::io::Error::other)?;
        self.note_applied(applied.map_or(0, |l| l.index));
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
            applied: tokio::sync::watch::channel(0).0,
            snapshot_dir: snapshot_dir.to_path_buf(),
            receiving: Mutex::new(None),
            commit_seconds: skiff_proto::metrics::disk_seconds(),
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
        let term = entry.log_id.leader_id.term;
        match &entry.payload {
            EntryPayload::Blank => {
                self.commit(self.shared.mvcc.writer(), Ok(Reply::Empty), Staged::default(), Step::Entry(entry.log_id))
            }
            EntryPayload::Membership(m) => {
                let mut w = self.shared.mvcc.writer();
                for id in m.nodes().map(|(id, _)| *id) {
                    w.note_member_id(id);
                }
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                w.put_meta(sm_key::MEMBERSHIP, &bincode::serialize(&stored).map_err(sm_err)?);
                self.commit(w, Ok(Reply::Empty), Staged::default(), Step::Entry(entry.log_id))
            }
            EntryPayload::Normal(Request { op: Op::Batch(reqs), .. }) => self.apply_batch(entry.log_id, reqs),
            EntryPayload::Normal(req) => self.apply_normal(req, term, Step::Entry(entry.log_id)),
        }
    }

    /// Applies a batch entry's requests, each in a write of its own that records how far the
    /// entry got; a crash part-way resumes after the last one written (its replies went to a
    /// leader that no longer waits for them).
    fn apply_batch(&self, log_id: LogId, reqs: &[Request]) -> Result<Response, StorageError> {
        let done = match sm_meta::<Option<(LogId, u32)>>(self.shared.db(), sm_key::APPLIED_PART).map_err(sm_err)? {
            Some((part, n)) if part == log_id => n as usize,
            _ => 0,
        };
        let mut replies = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.iter().enumerate().skip(done) {
            let step = if i + 1 == reqs.len() { Step::Entry(log_id) } else { Step::Part(log_id, i as u32 + 1) };
            replies.push(if matches!(req.op, Op::Batch(_)) {
                let result = Err(ApplyError::Invalid("a batch inside a batch".into()));
                self.commit(self.shared.mvcc.writer(), result, Staged::default(), step)?
            } else {
                self.apply_normal(req, log_id.leader_id.term, step)?
            });
        }
        if reqs.is_empty() {
            self.commit(self.shared.mvcc.writer(), Ok(Reply::Empty), Staged::default(), Step::Entry(log_id))?;
        }
        Ok(Response { revision: self.shared.mvcc.current_revision(), result: Ok(Reply::Batch(replies)) })
    }

    fn apply_normal(&self, req: &Request, term: u64, step: Step) -> Result<Response, StorageError> {
        let mut w = self.shared.mvcc.writer();
        let mut staged = Staged::default();
        let now = Now { auth: self.shared.auth.current(), alarms: self.shared.alarms.current() };
        let result = apply_request(&mut w, req, term, &now, &mut staged);
        self.commit(w, result, staged, step)
    }

    /// Writes what one command staged (nothing but the progress if it was refused) with how
    /// far the log has applied, then publishes it to readers and watchers.
    fn commit<'a>(
        &'a self,
        mut w: Writer<'a>,
        result: Result<Reply, ApplyError>,
        staged: Staged,
        step: Step,
    ) -> Result<Response, StorageError> {
        let mvcc = &self.shared.mvcc;
        if result.is_err() {
            // A refused command changes nothing but the applied index.
            w = mvcc.writer();
        }
        match step {
            Step::Entry(log_id) => w.put_meta(sm_key::APPLIED, &bincode::serialize(&Some(log_id)).map_err(sm_err)?),
            Step::Part(log_id, n) => {
                w.put_meta(sm_key::APPLIED_PART, &bincode::serialize(&Some((log_id, n))).map_err(sm_err)?)
            }
        }
        let (batch, revision, compacted, events) = w.finish();
        let start = std::time::Instant::now();
        mvcc.db().write_opt(batch, &WriteOptions::default()).map_err(sm_err)?;
        self.shared.commit_seconds.observe(skiff_proto::metrics::since(start));
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
        if let Step::Entry(log_id) = step {
            self.shared.note_applied(log_id.index);
        }
        Ok(Response { revision, result })
    }
}

/// How far a write takes the applied log: a whole entry, or the first `n` requests of a batch
/// entry.
#[derive(Clone, Copy)]
enum Step {
    Entry(LogId),
    Part(LogId, u32),
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
        Op::Batch(_) => Err(ApplyError::Invalid("a batch is applied request by request".into())),
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
    let tmp = shared.snapshot_dir.join(format!("building-{:016x}.snap", rand::random::<u64>()));
    let (meta, _) = write_snapshot_to(shared, &tmp)?;
    std::fs::rename(&tmp, shared.current_path())?;
    Ok(meta)
}

impl SmShared {
    /// A snapshot file of this member's store as it is now, for a backup (etcd's
    /// `Maintenance.Snapshot`); raft's own snapshot is left alone. Zeros after the end marker
    /// pad it to a multiple of [`BACKUP_ALIGN`] bytes: `etcdctl snapshot save` takes a file
    /// for a whole bbolt database only when it is, with the 32-byte SHA-256 after it. Returns
    /// the open file — already unlinked, so nothing is left behind whatever becomes of the
    /// caller — and the store revision it holds.
    pub fn export_snapshot(&self) -> std::io::Result<(std::fs::File, i64)> {
        let path = self.snapshot_dir.join(format!("exporting-{:016x}.snap", rand::random::<u64>()));
        let exported = write_snapshot_to(self, &path).and_then(|(_, rev)| {
            let mut file = std::fs::OpenOptions::new().read(true).append(true).open(&path)?;
            let len = file.metadata()?.len();
            let padding = (BACKUP_ALIGN - len % BACKUP_ALIGN) % BACKUP_ALIGN;
            file.write_all(&vec![0u8; padding as usize])?;
            file.rewind()?;
            Ok((file, rev))
        });
        let _ = std::fs::remove_file(&path);
        exported
    }
}

impl SmShared {
    /// Writes a backup of this member's store to `path` as `etcdctl snapshot save` writes
    /// one ([`verify_backup`] reads it): the exported snapshot and its SHA-256. Built in a
    /// temporary file beside it, readable by its owner alone, and renamed into place once
    /// synced. Returns the store revision it holds.
    pub fn write_backup(&self, path: &Path) -> std::io::Result<i64> {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::OpenOptionsExt;
        let (mut file, revision) = self.export_snapshot()?;
        let tmp = path.with_extension(format!("part-{:08x}", rand::random::<u32>()));
        let written = (|| {
            let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            out.write_all(&hash.finalize())?;
            out.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map(|()| revision)
    }
}

/// Writes a snapshot of the store's state now to `path` (synced); returns its metadata and
/// the store revision it holds.
fn write_snapshot_to(shared: &SmShared, path: &Path) -> std::io::Result<(SnapshotMeta<u64, Member>, i64)> {
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
    let revision = match get(sm_key::REVISION)? {
        Some(b) => i64::from_be_bytes(b.as_slice().try_into().map_err(std::io::Error::other)?),
        None => 0,
    };
    let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
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
    Ok((meta, revision))
}

fn read_snapshot_meta(path: &Path) -> std::io::Result<SnapshotMeta<u64, Member>> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    read_header(&mut r)
}

pub(crate) fn read_header(r: &mut impl Read) -> std::io::Result<SnapshotMeta<u64, Member>> {
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
pub(crate) fn read_record(r: &mut impl Read) -> std::io::Result<Option<Record>> {
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
    verify_snapshot(BufReader::with_capacity(1 << 20, std::fs::File::open(path)?)).map(|_| ())
}

/// What a well-formed snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// The store revision it was taken at.
    pub revision: i64,
    /// Keys with a current value.
    pub keys: u64,
}

/// [`verify_snapshot_file`] over any reader (the fuzz target `snapshots` feeds it bytes).
pub fn verify_snapshot(mut r: impl Read) -> std::io::Result<SnapshotSummary> {
    use prost::Message as _;
    read_header(&mut r)?;
    let mut summary = SnapshotSummary { revision: 0, keys: 0 };
    while let Some((cf, key, value)) = read_record(&mut r)? {
        match SM_CFS[cf] {
            db::CF_KV => summary.keys += 1,
            db::CF_SM if key == sm_key::REVISION => {
                let bytes =
                    value.as_slice().try_into().map_err(|_| std::io::Error::other("corrupt snapshot: revision"));
                summary.revision = i64::from_be_bytes(bytes?);
            }
            _ => {}
        }
        let ok = match SM_CFS[cf] {
            db::CF_KV => skiff_proto::mvccpb::KeyValue::decode(value.as_slice()).is_ok(),
            db::CF_REV => key.len() == 12 && skiff_proto::mvccpb::Event::decode(value.as_slice()).is_ok(),
            _ => true,
        };
        if !ok {
            return Err(std::io::Error::other(format!("corrupt snapshot: a malformed {} record", SM_CFS[cf])));
        }
    }
    Ok(summary)
}

/// The size a backup's snapshot is padded to a multiple of (a disk sector, as etcd's pages).
pub const BACKUP_ALIGN: u64 = 512;

/// A backup as `Maintenance.Snapshot` streams it (and `etcdctl snapshot save` writes it): a
/// snapshot file and the SHA-256 of it as the last 32 bytes. Checks both; what `skiff snapshot
/// status` prints.
pub fn verify_backup(path: &Path) -> std::io::Result<(SnapshotSummary, [u8; 32])> {
    use sha2::{Digest, Sha256};
    let len = std::fs::metadata(path)?.len();
    let Some(body) = len.checked_sub(32).filter(|b| b % BACKUP_ALIGN == 0) else {
        return Err(std::io::Error::other(format!(
            "{len} bytes: not a snapshot and its SHA-256 (a multiple of {BACKUP_ALIGN} bytes and 32); it may be cut short"
        )));
    };
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    std::io::copy(&mut (&mut file).take(body), &mut hash)?;
    let mut trailer = [0u8; 32];
    file.read_exact(&mut trailer)?;
    let digest: [u8; 32] = hash.finalize().into();
    if digest != trailer {
        return Err(std::io::Error::other(
            "its SHA-256 does not match the one it ends with: the file is corrupt or cut short",
        ));
    }
    let file = std::fs::File::open(path)?;
    let summary = verify_snapshot(BufReader::with_capacity(1 << 20, file).take(body))?;
    Ok((summary, digest))
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

    fn put(key: &str, value: &str) -> Request {
        let p = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
        Request::new(Op::Put(p.encode_to_vec()))
    }

    fn entry(index: u64, req: Request) -> Entry<TypeConfig> {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), index),
            payload: EntryPayload::Normal(req),
        }
    }

    fn kv(sm: &StateMachine, key: &str) -> Option<skiff_proto::mvccpb::KeyValue> {
        let req = skiff_proto::etcdserverpb::RangeRequest { key: key.into(), ..Default::default() };
        sm.shared.mvcc.range(&req).unwrap().kvs.pop()
    }

    #[test]
    fn a_batch_entry_applies_each_request_as_an_entry_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(db::open(&dir.path().join("db")).unwrap(), &dir.path().join("snap")).unwrap();
        let mut watch = sm.shared.hub.subscribe();
        let fenced = Request { fence_term: Some(2), op: put("c", "fenced").op };
        let batch = vec![put("a", "1"), fenced, put("b", "2"), put("a", "3")];
        let r = sm.apply_one(&entry(7, Request::new(Op::Batch(batch)))).unwrap();
        let Ok(Reply::Batch(each)) = r.result else { panic!("a batch reply: {r:?}") };
        let revisions: Vec<i64> = each.iter().map(|r| r.revision).collect();
        assert_eq!(revisions, [1, 1, 2, 3], "each write its own revision; the refused one none");
        assert!(matches!(each[1].result, Err(ApplyError::Fenced { expected: 2, actual: 3 })), "{:?}", each[1]);
        assert_eq!(kv(&sm, "a").map(|kv| (kv.version, kv.mod_revision, kv.value)), Some((2, 3, b"3".to_vec())));
        assert!(kv(&sm, "c").is_none(), "the fenced write changed nothing");
        assert_eq!(*sm.shared.applied().borrow(), 7);
        let mut published = Vec::new();
        while let Ok(r) = watch.try_recv() {
            published.push(r.revision);
        }
        assert_eq!(published, [1, 2, 3], "watchers see one revision per write");
        let nested = Request::new(Op::Batch(vec![Request::new(Op::Batch(vec![put("d", "4")]))]));
        let r = sm.apply_one(&entry(8, nested)).unwrap();
        let Ok(Reply::Batch(each)) = r.result else { panic!("a batch reply: {r:?}") };
        assert!(matches!(&each[0].result, Err(ApplyError::Invalid(m)) if m.contains("inside a batch")), "{each:?}");
        assert!(kv(&sm, "d").is_none());
    }

    #[test]
    fn a_batch_entry_cut_short_by_a_crash_resumes_after_its_last_written_request() {
        let dir = tempfile::tempdir().unwrap();
        let open = || StateMachine::open(db::open(&dir.path().join("db")).unwrap(), &dir.path().join("snap")).unwrap();
        let batch = vec![put("a", "1"), put("a", "2"), put("b", "3")];
        let e = entry(5, Request::new(Op::Batch(batch.clone())));
        {
            // What a crash after the batch's second write leaves.
            let sm = open();
            for (i, req) in batch[..2].iter().enumerate() {
                sm.apply_normal(req, 3, Step::Part(e.log_id, i as u32 + 1)).unwrap();
            }
            assert_eq!(read_applied(sm.shared.db()).unwrap().0, None, "the entry is not applied yet");
        }
        let sm = open();
        sm.apply_one(&e).unwrap();
        assert_eq!(kv(&sm, "a").map(|kv| (kv.version, kv.value)), Some((2, b"2".to_vec())), "nothing applied twice");
        assert_eq!(kv(&sm, "b").map(|kv| kv.mod_revision), Some(3));
        assert_eq!(read_applied(sm.shared.db()).unwrap().0, Some(e.log_id));
    }
}
