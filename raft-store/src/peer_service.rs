//! The peer listener's gRPC service: raft RPCs from other masters, and leader-only work that
//! followers forward on their clients' behalf.

use crate::error::StoreError;
use crate::master::{ForwardReply, Forwarded, Master};
use crate::network::{decode, encode};
use crate::peer_tls::{member_of, CLUSTER_ID_HEADER};
use crate::types::TypeConfig;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use skiff_proto::peer::peer_server::Peer;
use skiff_proto::peer::{Empty, Payload, ReadIndexReply};
use std::sync::Arc;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

pub struct PeerService {
    pub master: Arc<Master>,
}

fn bad_payload(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("malformed peer payload: {e}"))
}

impl PeerService {
    /// Admits a peer RPC: it names this cluster, and (with peer TLS) its certificate names a
    /// member of the cluster's membership — or any member, while this master knows none yet.
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let cluster = req.metadata().get(CLUSTER_ID_HEADER).and_then(|v| v.to_str().ok());
        if cluster != Some(self.master.cluster_id.to_string().as_str()) {
            return Err(Status::permission_denied(format!(
                "peer request for cluster {cluster:?}; this is cluster {}",
                self.master.cluster_id
            )));
        }
        if self.master.config.peer_tls.is_none() {
            return Ok(());
        }
        let member = member_of(req)
            .ok_or_else(|| Status::unauthenticated("peer certificate names no member (CN member-<id>)"))?;
        let metrics = self.master.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let known = membership.nodes().next().is_some();
        if known && membership.get_node(&member).is_none() {
            return Err(Status::permission_denied(format!("member {member} is not in this cluster's membership")));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_payload)?;
        let resp = self.master.raft.append_entries(rpc).await;
        if resp.as_ref().is_ok_and(|r| !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.master.election.contact();
        }
        Ok(Response::new(encode(&resp)))
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&req)?;
        let rpc: VoteRequest<u64> = decode(req.get_ref()).map_err(bad_payload)?;
        let resp = self.master.raft.vote(rpc).await;
        if resp.as_ref().is_ok_and(|r| r.vote_granted) {
            self.master.election.contact();
        }
        Ok(Response::new(encode(&resp)))
    }

    async fn install_snapshot(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_payload)?;
        let vote = rpc.vote;
        let resp = self.master.raft.install_snapshot(rpc).await;
        // Accepted when the reply carries the sender's vote (a higher one refuses it).
        if resp.as_ref().is_ok_and(|r| r.vote == vote) {
            self.master.election.contact();
        }
        Ok(Response::new(encode(&resp)))
    }

    async fn forward(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&req)?;
        let deadline = Instant::now() + self.master.config.request_timeout();
        let op: Forwarded = decode(req.get_ref()).map_err(bad_payload)?;
        let result: Result<ForwardReply, StoreError> = match self.master.check_accepting() {
            Ok(()) => self.master.execute_local(op, deadline).await,
            Err(_) => Err(StoreError::NotLeader { leader: None }),
        };
        Ok(Response::new(encode(&result)))
    }

    async fn read_index(&self, req: Request<Empty>) -> Result<Response<ReadIndexReply>, Status> {
        self.admit(&req)?;
        match self.master.reads.index().await {
            Ok(index) => Ok(Response::new(ReadIndexReply { index })),
            Err(e) => Err(Status::unavailable(format!("not leader: {e}"))),
        }
    }
}
