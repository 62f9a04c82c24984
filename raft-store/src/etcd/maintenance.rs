//! `etcdserverpb.Maintenance`: Status and HashKV (what `etcdctl endpoint status` and
//! consistency checks use), plus the alarm, defragment and snapshot calls etcd tools expect.

use super::{status, Caller};
use crate::error::StoreError;
use crate::master::{reply_result, Master};
use crate::types::{Op, Reply};
use crate::{alarm, db};
use sha2::{Digest, Sha256};
use skiff_proto::etcdserverpb::alarm_request::AlarmAction;
use skiff_proto::etcdserverpb::maintenance_server::Maintenance;
use skiff_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// Bytes of snapshot per message, as etcd sends them.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// The etcd API version Skiff speaks; etcd clients read it from `Status`.
pub const ETCD_API_VERSION: &str = "3.4.0";

pub struct MaintenanceService {
    pub master: Arc<Master>,
}

impl MaintenanceService {
    fn header(&self) -> Option<skiff_proto::etcdserverpb::ResponseHeader> {
        Some(self.master.header(self.master.sm.mvcc.current_revision()))
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// etcd's alarm calls: GET lists (all, or one type), ACTIVATE and DEACTIVATE go through
    /// the log and answer with the alarm they changed (`etcdctl alarm disarm` lists, then
    /// deactivates each).
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let req = req.into_inner();
        let activate = match req.action() {
            AlarmAction::Get => {
                let alarms = self.master.sm.alarms.current().list(req.alarm());
                return Ok(Response::new(AlarmResponse { header: self.header(), alarms }));
            }
            AlarmAction::Activate => true,
            AlarmAction::Deactivate => false,
        };
        let op = Op::Alarm { activate, member: req.member_id, alarm: req.alarm };
        let (rev, reply) = reply_result(self.master.propose(op).await.map_err(status)?).map_err(status)?;
        let Reply::Alarm(changed) = reply else {
            return Err(status(StoreError::Internal(format!("unexpected reply {reply:?}"))));
        };
        let alarms = changed.into_iter().map(|(member_id, alarm)| AlarmMember { member_id, alarm }).collect();
        Ok(Response::new(AlarmResponse { header: Some(self.master.header(rev)), alarms }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let m = self.master.raft.metrics().borrow().clone();
        let size = self.master.db_size() as i64;
        // As etcd: each active alarm, in the text form `etcdctl endpoint status` prints.
        let errors = (self.master.sm.alarms.current().list(AlarmType::None).iter())
            .map(|a| format!("memberID:{} alarm:{}", a.member_id, alarm::name(a.alarm)))
            .collect();
        Ok(Response::new(StatusResponse {
            header: self.header(),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: size,
            is_learner: !m.membership_config.voter_ids().any(|v| v == self.master.id()),
        }))
    }

    async fn defragment(&self, req: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let db = self.master.sm.db().clone();
        tokio::task::spawn_blocking(move || {
            for name in db::SM_CFS {
                db.compact_range_cf(db::cf(&db, name), None::<&[u8]>, None::<&[u8]>);
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(DefragmentResponse { header: self.header() }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let (hash, _, rev) = self.master.sm.mvcc.hash_kv(0).map_err(status)?;
        Ok(Response::new(HashResponse { header: Some(self.master.header(rev)), hash }))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let (hash, compact_revision, rev) = self.master.sm.mvcc.hash_kv(req.into_inner().revision).map_err(status)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.master.header(rev)),
            hash,
            compact_revision,
            hash_revision: rev,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// Root only: this member's whole store as one consistent snapshot (Skiff's snapshot file,
    /// the format raft sends to followers), then the SHA-256 of those bytes as the last 32, as
    /// etcd appends one to its bbolt file — `etcdctl snapshot save` writes it all to a file,
    /// and `skiff snapshot status` checks it.
    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let sm = self.master.sm.clone();
        let (file, revision) = crate::blocking(move || sm.export_snapshot())
            .map_err(|e| status(StoreError::Internal(format!("snapshot: {e}"))))?;
        let size = file.metadata().map_err(|e| Status::internal(e.to_string()))?.len();
        let header = self.master.header(revision);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut reader = std::io::BufReader::new(file);
            let mut hash = Sha256::new();
            let mut remaining = size + 32;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK];
            while remaining > 32 {
                let want = SNAPSHOT_CHUNK.min((remaining - 32) as usize);
                let blob = match reader.read_exact(&mut buf[..want]) {
                    Ok(()) => buf[..want].to_vec(),
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(format!("reading the snapshot: {e}"))));
                        return;
                    }
                };
                hash.update(&blob);
                remaining -= want as u64;
                let msg = SnapshotResponse { header: Some(header), remaining_bytes: remaining, blob };
                if tx.blocking_send(Ok(msg)).is_err() {
                    return; // the client went away
                }
            }
            let digest = hash.finalize().to_vec();
            let _ = tx.blocking_send(Ok(SnapshotResponse { header: Some(header), remaining_bytes: 0, blob: digest }));
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn move_leader(&self, req: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        Err(status(StoreError::Unimplemented(
            "etcdserver: move-leader is not supported (openraft 0.9 has no leadership transfer)".into(),
        )))
    }
}
