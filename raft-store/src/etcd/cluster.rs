//! `etcdserverpb.Cluster`: membership as raft sees it. Member ids are allocated through the
//! log and never reused; a member is added as a learner (and promoted unless asked to stay
//! one), and is known by its peer address until it starts and announces its client address.

use super::{status, Caller};
use crate::error::StoreError;
use crate::master::{reply_result, Forwarded, Master};
use crate::types::{Member as RaftMember, Op, Reply};
use skiff_proto::etcdserverpb::cluster_server::Cluster;
use skiff_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ClusterService {
    pub master: Arc<Master>,
}

/// `addr` as a URL: `https` when that port speaks TLS. Every master of a cluster is set up
/// alike (`skiff up`, the chaos harness), so this master's own settings say.
fn url(addr: &str, tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    if addr.is_empty() {
        Vec::new()
    } else {
        vec![format!("{scheme}://{addr}")]
    }
}

fn peer_addr(urls: &[String]) -> Result<String, Status> {
    let first =
        urls.first().ok_or_else(|| status(StoreError::InvalidArgument("etcdserver: peerURLs is empty".into())))?;
    let addr = first.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
    if addr.is_empty() || !addr.contains(':') {
        return Err(status(StoreError::InvalidArgument(format!("peerURLs: {first:?} is not host:port"))));
    }
    Ok(addr.to_string())
}

impl ClusterService {
    fn peer_tls(&self) -> bool {
        self.master.config.peer_tls.is_some()
    }

    fn members(&self) -> Vec<Member> {
        let m = self.master.raft.metrics().borrow().membership_config.clone();
        let voters: Vec<u64> = m.voter_ids().collect();
        m.membership()
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                name: n.name.clone(),
                peer_ur_ls: url(&n.peer_addr, self.peer_tls()),
                client_ur_ls: url(&n.client_addr, self.master.config.client_tls.is_some()),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    fn header(&self) -> Option<skiff_proto::etcdserverpb::ResponseHeader> {
        Some(self.master.header(self.master.sm.mvcc.current_revision()))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let req = req.into_inner();
        let addr = peer_addr(&req.peer_ur_ls)?;
        if self.members().iter().any(|m| m.peer_ur_ls.iter().any(|u| u.ends_with(&addr))) {
            return Err(status(StoreError::FailedPrecondition("etcdserver: Peer URLs already exists".into())));
        }
        let (_, reply) =
            reply_result(self.master.propose(Op::AllocateMemberId).await.map_err(status)?).map_err(status)?;
        let Reply::MemberId(id) = reply else {
            return Err(Status::internal("unexpected member id reply"));
        };
        let member = RaftMember { name: String::new(), peer_addr: addr, client_addr: String::new() };
        self.master
            .execute(Forwarded::AddMember { id, member: member.clone(), learner: req.is_learner })
            .await
            .map_err(status)?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: url(&member.peer_addr, self.peer_tls()),
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.members(),
        }))
    }

    async fn member_remove(&self, req: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let id = req.into_inner().id;
        self.master.execute(Forwarded::RemoveMember { id }).await.map_err(status)?;
        Ok(Response::new(MemberRemoveResponse { header: self.header(), members: self.members() }))
    }

    async fn member_update(&self, req: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let req = req.into_inner();
        let addr = peer_addr(&req.peer_ur_ls)?;
        let m = self.master.raft.metrics().borrow().membership_config.clone();
        let mut member = m
            .membership()
            .get_node(&req.id)
            .cloned()
            .ok_or_else(|| status(StoreError::MemberNotFound { id: req.id }))?;
        member.peer_addr = addr;
        self.master.execute(Forwarded::SetMember { id: req.id, member }).await.map_err(status)?;
        Ok(Response::new(MemberUpdateResponse { header: self.header(), members: self.members() }))
    }

    async fn member_list(&self, req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.master.read_barrier().await.map_err(status)?;
        }
        Ok(Response::new(MemberListResponse { header: self.header(), members: self.members() }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let id = req.into_inner().id;
        self.master.execute(Forwarded::Promote { id }).await.map_err(status)?;
        Ok(Response::new(MemberPromoteResponse { header: self.header(), members: self.members() }))
    }
}
