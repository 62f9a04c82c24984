//! `etcdserverpb.Lease`. Grants and revokes go through raft; keep-alives and time-to-live are
//! answered by the leader, whose clock decides expiry (and proposes the revoke).

use super::{status, Caller};
use crate::master::{reply_result, ForwardReply, Forwarded, Master};
use crate::types::{Op, Reply};
use futures::Stream;
use skiff_proto::etcdserverpb::lease_server::Lease;
use skiff_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// etcd's `MaxLeaseTTL`.
const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// etcd's minimum TTL: leases shorter than an election could expire during a failover.
const MIN_LEASE_TTL: i64 = 2;

/// A lease id for a grant that names none: positive and random, as etcd's.
pub(crate) fn new_lease_id() -> i64 {
    (rand::random::<u64>() >> 1).max(1) as i64
}

pub struct LeaseService {
    pub master: Arc<Master>,
}

async fn lease_ttl(master: &Master, op: Forwarded) -> Result<(i64, i64), Status> {
    match master.execute(op).await.map_err(status)? {
        ForwardReply::LeaseTtl { remaining, granted } => Ok((remaining, granted)),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        Caller::of(&self.master, &req)?;
        let req = req.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        let ttl = req.ttl.max(MIN_LEASE_TTL);
        let id = if req.id != 0 { req.id } else { new_lease_id() };
        let (revision, reply) =
            reply_result(self.master.propose(Op::LeaseGrant { id, ttl }).await.map_err(status)?).map_err(status)?;
        let Reply::LeaseGranted { id, ttl } = reply else {
            return Err(Status::internal("unexpected lease grant reply"));
        };
        Ok(Response::new(LeaseGrantResponse {
            header: Some(self.master.header(revision)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = Caller::of(&self.master, &req)?;
        let id = req.into_inner().id;
        // Revoking deletes the lease's keys: the caller must be allowed to delete each (etcd).
        for key in self.master.sm.mvcc.lease_keys(id) {
            caller.write(&key, &[])?;
        }
        let (revision, _) =
            reply_result(self.master.propose(Op::LeaseRevoke { id }).await.map_err(status)?).map_err(status)?;
        Ok(Response::new(LeaseRevokeResponse { header: Some(self.master.header(revision)) }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        Caller::of(&self.master, &req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let master = self.master.clone();
        tokio::spawn(async move {
            while let Ok(Some(ka)) = inbound.message().await {
                let reply = lease_ttl(&master, Forwarded::LeaseKeepAlive { id: ka.id }).await.map(|(ttl, _)| {
                    LeaseKeepAliveResponse {
                        header: Some(master.header(master.sm.mvcc.current_revision())),
                        id: ka.id,
                        ttl,
                    }
                });
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Caller::of(&self.master, &req)?;
        let req = req.into_inner();
        let (ttl, granted) = lease_ttl(&self.master, Forwarded::LeaseTimeToLive { id: req.id }).await?;
        let keys = if req.keys && ttl >= 0 { self.master.sm.mvcc.lease_keys(req.id) } else { Vec::new() };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: Some(self.master.header(self.master.sm.mvcc.current_revision())),
            id: req.id,
            ttl,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(&self, req: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        Caller::of(&self.master, &req)?;
        self.master.read_barrier().await.map_err(status)?;
        let leases = self.master.sm.mvcc.leases().into_iter().map(|(id, _)| LeaseStatus { id }).collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.master.header(self.master.sm.mvcc.current_revision())),
            leases,
        }))
    }
}
