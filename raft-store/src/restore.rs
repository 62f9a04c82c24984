//! Restoring a backup (`skiff snapshot restore`, `skiff up --restore`): a new member's data
//! directory whose store holds a backup's keys, revisions, leases, users and roles, as
//! `etcdutl snapshot restore` builds one.
//!
//! The restored directory is a new cluster's: its raft log is empty and its state machine
//! says it has applied the very first log entry (the one `Raft::initialize` writes), which
//! made `members` the membership. Every founding member restored from the same backup with the
//! same members therefore starts from the same state, elects a leader without anyone calling
//! `initialize`, and a member added later receives the store as a raft snapshot (openraft
//! treats that first entry as purged, so it builds one on start).
//!
//! What does not carry over: the old cluster's raft log, vote and membership, its alarms (a
//! `NOSPACE` was about the old disks) and its auth tokens (a new token key, the same on every
//! member restored from the same backup). Given a root
//! password, the restored store's `root` user takes it (and auth is bootstrapped with it when
//! the old store never had one), so the new cluster's credentials open the old store.

use crate::auth::{AuthOp, AuthState};
use crate::db::{self, cf, SM_CFS};
use crate::mvcc::sm_key;
use crate::state_machine::{read_header, read_record, verify_backup, SnapshotSummary, BATCH_BYTES};
use crate::types::{LogId, Member};
use openraft::{Membership, StoredMembership};
use rocksdb::WriteBatch;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read};
use std::path::Path;

/// Builds `data_dir` (which must not exist) for a member of the new cluster `members` from
/// the backup at `backup` (`Maintenance.Snapshot`'s file, as `etcdctl snapshot save` writes
/// it). The backup is verified whole first (its SHA-256 and every record); nothing is left
/// at `data_dir` unless the restore completes. `root_password_hash` (from
/// [`crate::auth::hash_password`]) becomes the `root` user's password.
pub fn restore_backup(
    backup: &Path,
    data_dir: &Path,
    members: &BTreeMap<u64, Member>,
    root_password_hash: Option<&str>,
) -> std::io::Result<SnapshotSummary> {
    let verified = verify(backup)?;
    restore_verified(backup, &verified, data_dir, members, root_password_hash)?;
    Ok(verified.summary)
}

/// A backup checked whole by [`verify`].
#[derive(Debug, Clone, Copy)]
pub struct Verified {
    pub summary: SnapshotSummary,
    digest: [u8; 32],
}

/// Checks the backup at `backup` whole (its SHA-256 and every record), once for however many
/// members are then restored from it ([`restore_verified`]).
pub fn verify(backup: &Path) -> std::io::Result<Verified> {
    let (summary, digest) =
        verify_backup(backup).map_err(|e| std::io::Error::other(format!("{}: {e}", backup.display())))?;
    Ok(Verified { summary, digest })
}

/// [`restore_backup`] for a backup [`verify`] has checked.
pub fn restore_verified(
    backup: &Path,
    verified: &Verified,
    data_dir: &Path,
    members: &BTreeMap<u64, Member>,
    root_password_hash: Option<&str>,
) -> std::io::Result<()> {
    let err = |e: String| std::io::Error::other(e);
    if members.is_empty() {
        return Err(err("a restored cluster needs at least one member".into()));
    }
    if data_dir.exists() {
        return Err(err(format!(
            "{} already exists: a restore builds a new data directory and never overwrites one",
            data_dir.display()
        )));
    }
    let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let building = tempfile::Builder::new().prefix(".restoring-").tempdir_in(parent)?;
    // tempdir is created 0700: the store holds credentials and every Secret.
    load(backup, &verified.digest, &building.path().join("db"), members, root_password_hash)?;
    std::fs::rename(building.keep(), data_dir)?;
    Ok(())
}

/// The state-machine keys of the old cluster that a restore leaves behind.
fn left_behind(key: &[u8]) -> bool {
    [sm_key::APPLIED, sm_key::APPLIED_PART, sm_key::MEMBERSHIP, sm_key::ALARMS].contains(&key)
}

fn load(
    backup: &Path,
    digest: &[u8; 32],
    db_path: &Path,
    members: &BTreeMap<u64, Member>,
    root_password_hash: Option<&str>,
) -> std::io::Result<()> {
    let err = std::io::Error::other;
    let body = std::fs::metadata(backup)?.len() - 32;
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(backup)?).take(body);
    read_header(&mut r)?;
    let db = db::open(db_path).map_err(err)?;
    let handles: Vec<_> = SM_CFS.iter().map(|n| cf(&db, n)).collect();
    let sm = cf(&db, db::CF_SM);
    let mut batch = WriteBatch::default();
    let mut auth = AuthState::default();
    let mut max_member_id = 0u64;
    while let Some((i, k, v)) = read_record(&mut r)? {
        if SM_CFS[i] == db::CF_SM {
            if left_behind(&k) {
                continue;
            }
            if k == sm_key::AUTH {
                auth = bincode::deserialize(&v)
                    .map_err(|e| std::io::Error::other(format!("the backup's auth state: {e}")))?;
                continue;
            }
            if k == sm_key::MAX_MEMBER_ID {
                max_member_id = v.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
                continue;
            }
        }
        batch.put_cf(handles[i], k, v);
        if batch.size_in_bytes() > BATCH_BYTES {
            db.write(std::mem::take(&mut batch)).map_err(err)?;
        }
    }
    // The new cluster: its first log entry made `members` the membership, and is applied.
    let first = LogId::default();
    let voters: BTreeSet<u64> = members.keys().copied().collect();
    let membership = StoredMembership::new(Some(first), Membership::new(vec![voters], members.clone()));
    batch.put_cf(sm, sm_key::APPLIED, bin(&Some(first))?);
    batch.put_cf(sm, sm_key::MEMBERSHIP, bin(&membership)?);
    let max_member_id = max_member_id.max(members.keys().copied().max().unwrap_or(0));
    batch.put_cf(sm, sm_key::MAX_MEMBER_ID, max_member_id.to_be_bytes());
    batch.put_cf(sm, sm_key::AUTH, bin(&restored_auth(auth, digest, root_password_hash)?)?);
    db.write(batch).map_err(err)?;
    db.flush_wal(true).map_err(err)?;
    db.flush().map_err(err)?;
    Ok(())
}

/// The backup's users and roles under a new token key, `root` with the new password. The key
/// is derived from the old one and the backup's digest: tokens of the old cluster are not
/// taken, and every member restored from the same backup takes the same tokens.
fn restored_auth(old: AuthState, digest: &[u8; 32], root_password_hash: Option<&str>) -> std::io::Result<AuthState> {
    use sha2::{Digest, Sha256};
    let token_key = Sha256::new()
        .chain_update(b"skiff restored token key\0")
        .chain_update(&old.token_key)
        .chain_update(digest)
        .finalize()
        .to_vec();
    let mut next = AuthState { token_key: token_key.clone(), ..old };
    if let Some(hash) = root_password_hash {
        let op = if next.users.contains_key(crate::auth::ROOT) {
            AuthOp::UserChangePassword { name: crate::auth::ROOT.into(), password: hash.into() }
        } else {
            AuthOp::Bootstrap { root_password: hash.into(), token_key }
        };
        next = next.apply(&op).map_err(|e| std::io::Error::other(format!("setting the root password: {e}")))?;
    }
    Ok(next)
}

fn bin<T: serde::Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    bincode::serialize(value).map_err(std::io::Error::other)
}
