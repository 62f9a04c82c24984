//! The raft log and vote in RocksDB (`log` and `meta` column families).
//!
//! Durability: `append`, `save_vote` and `purge` write with `sync = true` and only then tell
//! openraft the I/O is done. `truncate` writes without sync: RocksDB's WAL is one ordered
//! stream, so the synced `append` that follows a truncate makes both durable together, and a
//! crash in between leaves a log that is a prefix of the intended one — never one with a hole.

use crate::db::{cf, CF_LOG, CF_META};
use crate::types::{LogId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogState, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Handle to the raft log; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// How long each synced append took (`etcd_disk_wal_fsync_duration_seconds`).
    pub fsync_seconds: prometheus_client::metrics::histogram::Histogram,
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> Self {
        LogStore { db, fsync_seconds: skiff_proto::metrics::disk_seconds() }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.db.get_cf(cf(&self.db, CF_META), key).map_err(read_err)? {
            None => Ok(None),
            Some(b) => Ok(Some(bincode::deserialize(&b).map_err(read_err)?)),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T, sync: bool) -> Result<(), StorageError> {
        let bytes = bincode::serialize(v).map_err(write_err)?;
        let opts = if sync { synced() } else { WriteOptions::default() };
        self.db.put_cf_opt(cf(&self.db, CF_META), key, bytes, &opts).map_err(write_err)
    }
}

/// Testing only (the `failpoints` feature, off in every other build): `FAILPOINTS=
/// raft-log-fsync=N*off->return` in a master's environment fails its log appends after the
/// first N as a failing fsync would. openraft then stops this member's raft (a storage error is
/// fatal), the master exits, and it recovers from what is durable when restarted — an fsync
/// that failed is never retried as if the data were safe.
fn injected_fsync_failure() -> Option<std::io::Error> {
    fail::fail_point!("raft-log-fsync", |_| Some(std::io::Error::other(
        "fsync of the raft log failed: input/output error (failpoint raft-log-fsync)"
    )));
    None
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let iter =
            self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::From(&start.to_be_bytes(), Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(k[..8].try_into().expect("log keys are u64"));
            if !range.contains(&index) {
                break;
            }
            out.push(bincode::deserialize(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let mut it = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        let last = match it.next() {
            None => last_purged,
            Some(item) => {
                let (_, v) = item.map_err(read_err)?;
                let e: Entry<TypeConfig> = bincode::deserialize(&v).map_err(read_err)?;
                Some(e.log_id)
            }
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote, true)
            .map_err(|_| StorageIOError::write_vote(&std::io::Error::other("vote write failed")).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: committed is a hint that speeds up restart, never needed for safety.
        self.put_meta(COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let log = cf(&self.db, CF_LOG);
        for e in entries {
            batch.put_cf(log, e.log_id.index.to_be_bytes(), bincode::serialize(&e).map_err(write_err)?);
        }
        let result = match injected_fsync_failure() {
            // What a failed fsync leaves: the write may sit in the page cache, unconfirmed.
            Some(e) => self.db.write(batch).map_err(std::io::Error::other).and(Err(e)),
            None => {
                let start = std::time::Instant::now();
                let written = self.db.write_opt(batch, &synced()).map_err(std::io::Error::other);
                self.fsync_seconds.observe(skiff_proto::metrics::since(start));
                written
            }
        };
        let failed = result.as_ref().err().map(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(write_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.db
            .delete_range_cf(cf(&self.db, CF_LOG), log_id.index.to_be_bytes(), u64::MAX.to_be_bytes())
            .map_err(write_err)?;
        // delete_range excludes its end key.
        self.db.delete_cf(cf(&self.db, CF_LOG), u64::MAX.to_be_bytes()).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META), LAST_PURGED, bincode::serialize(&log_id).map_err(write_err)?);
        batch.delete_range_cf(cf(&self.db, CF_LOG), 0u64.to_be_bytes(), (log_id.index + 1).to_be_bytes());
        // Synced, so every state-machine write before it (not synced by itself) is on disk
        // before the log entries that could replay it are gone.
        self.db.write_opt(batch, &synced()).map_err(write_err)
    }
}
