//! etcd's lock and election services (`v3lockpb.Lock`, `v3electionpb.Election`), served as
//! etcd serves them: over the store's own keys, leases and watches, with the recipes of etcd's
//! `clientv3/concurrency` package run on the master for the caller, under the caller's
//! permissions.
//!
//! - **Lock** `name`: the caller's key `name/<lease hex>` is created with its lease; the lock
//!   is held once no key under `name/` was created before it — a waiter watches only the key
//!   created just before its own, so a release wakes one waiter. Unlock deletes the key; the
//!   lease's expiry does too.
//! - **Election** `name`: the same queue under `name/`; the candidate whose key was created
//!   first leads, and its key's value is what it proclaims. Leader answers that key, Observe
//!   streams each leader's value as it changes, Resign deletes the key if it still leads.
//!
//! A request without a lease (`lease: 0`) gets one of 60 seconds that nobody keeps alive, as
//! etcd's servers do. A caller that goes away while waiting leaves no key behind.

use super::{status, Caller};
use crate::master::{reply_result, Master};
use crate::mvcc::{prefix_end, validate_txn, KeyRange};
use crate::types::{Op, Reply};
use crate::watch_feed::{self, Feed, FeedSpec};
use prost::Message;
use skiff_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use skiff_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse,
};
use skiff_proto::mvccpb::{event::EventType, KeyValue};
use skiff_proto::v3electionpb::election_server::Election;
use skiff_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use skiff_proto::v3lockpb::lock_server::Lock;
use skiff_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The TTL of the lease a request without one gets (etcd's session default).
const SESSION_TTL: i64 = 60;

/// The store as one caller sees it.
struct Session {
    master: Arc<Master>,
    caller: Caller,
}

fn put(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    RequestOp { request: Some(request_op::Request::RequestPut(put)) }
}

fn get(req: RangeRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(req)) }
}

fn delete(key: &[u8]) -> RequestOp {
    let delete = DeleteRangeRequest { key: key.to_vec(), ..Default::default() };
    RequestOp { request: Some(request_op::Request::RequestDeleteRange(delete)) }
}

fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
    }
}

/// The key under `prefix` created first (`first`) or last, among those created at or before
/// `max_create` (0: any).
fn by_creation(prefix: &[u8], first: bool, max_create: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if first { SortOrder::Ascend } else { SortOrder::Descend } as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision: max_create,
        ..Default::default()
    }
}

fn range_of(resp: &TxnResponse, i: usize) -> Option<&RangeResponse> {
    match resp.responses.get(i)?.response.as_ref()? {
        response_op::Response::ResponseRange(r) => Some(r),
        _ => None,
    }
}

fn key_hex(prefix: &[u8], lease: i64) -> Vec<u8> {
    [prefix, format!("{lease:x}").as_bytes()].concat()
}

impl Session {
    fn of<T>(master: &Arc<Master>, req: &Request<T>) -> Result<Session, Status> {
        Ok(Session { master: master.clone(), caller: Caller::of(master, req)? })
    }

    /// A write transaction, checked and authorized as `KV.Txn` checks one.
    async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, Status> {
        validate_txn(&txn).map_err(status)?;
        self.caller.txn(&txn)?;
        let (revision, mut resp): (i64, TxnResponse) =
            super::kv::propose_encoded(&self.master, Op::Txn(txn.encode_to_vec())).await?;
        resp.header = Some(self.master.header(revision));
        Ok(resp)
    }

    /// A linearizable read.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        self.caller.read(&req.key, &req.range_end)?;
        self.master.read_barrier().await.map_err(status)?;
        let mvcc = &self.master.sm.mvcc;
        let resp = crate::blocking(|| mvcc.range(&req)).map_err(status)?;
        Ok(resp)
    }

    /// `lease`, or a new lease of [`SESSION_TTL`] seconds when it is 0.
    async fn lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let op = Op::LeaseGrant { id: super::lease::new_lease_id(), ttl: SESSION_TTL };
        match reply_result(self.master.propose(op).await.map_err(status)?).map_err(status)? {
            (_, Reply::LeaseGranted { id, .. }) => Ok(id),
            _ => Err(Status::internal("unexpected lease grant reply")),
        }
    }

    /// Joins the queue under `prefix` with key `key` (value `value`, lease `lease`); returns
    /// the revision the key was created at and its value before (None if it is new).
    async fn enqueue(
        &self,
        prefix: &[u8],
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<(i64, Option<KeyValue>), Status> {
        let mine = RangeRequest { key: key.to_vec(), ..Default::default() };
        let txn = TxnRequest {
            compare: vec![created_at(key, 0)],
            success: vec![put(key, value, lease)],
            failure: vec![get(mine)],
        };
        self.caller.read(prefix, &prefix_end(prefix))?;
        let resp = self.txn(txn).await?;
        if resp.succeeded {
            return Ok((resp.header.map_or(0, |h| h.revision), None));
        }
        let kv = range_of(&resp, 0).and_then(|r| r.kvs.first()).cloned();
        let kv = kv.ok_or_else(|| Status::internal("the queued key vanished"))?;
        Ok((kv.create_revision, Some(kv)))
    }

    /// Waits until the key `queued` holds, created at `rev` under `prefix`, is first in its
    /// queue and still there (its lease may expire meanwhile: then `expired`); returns the
    /// store revision it was seen first at. The key is removed if the wait does not end so.
    async fn await_turn(&self, queued: Queued, prefix: &[u8], rev: i64, expired: &str) -> Result<i64, Status> {
        self.wait_deletes(prefix, rev - 1).await?;
        let key = queued.key.clone().unwrap_or_default();
        let mine = self.range(RangeRequest { key, ..Default::default() }).await?;
        if mine.kvs.first().is_none_or(|kv| kv.create_revision != rev) {
            return Err(Status::unknown(expired.to_string()));
        }
        queued.keep();
        Ok(mine.header.map_or(0, |h| h.revision))
    }

    /// Waits until no key under `prefix` created at or before `max_create` remains (each
    /// waiter watches only the one created just before it).
    async fn wait_deletes(&self, prefix: &[u8], max_create: i64) -> Result<(), Status> {
        loop {
            let ahead = self.range(by_creation(prefix, false, max_create)).await?;
            let Some(kv) = ahead.kvs.first() else { return Ok(()) };
            let revision = ahead.header.map_or(0, |h| h.revision);
            self.wait_delete(&kv.key, revision).await?;
        }
    }

    /// Waits until `key` is deleted after `revision`.
    async fn wait_delete(&self, key: &[u8], revision: i64) -> Result<(), Status> {
        let spec = FeedSpec {
            range: KeyRange::new(key, &[]),
            start_revision: revision + 1,
            prev_kv: false,
            no_put: true,
            no_delete: false,
        };
        let mut feed = watch_feed::start(self.master.sm.clone(), spec);
        loop {
            match feed.rx.recv().await {
                Some(Feed::Events { events, .. }) if events.iter().any(|e| e.r#type == EventType::Delete as i32) => {
                    return Ok(())
                }
                Some(Feed::Events { .. }) => {}
                // History was compacted past it: look again from now.
                Some(Feed::Compacted { .. }) => return Ok(()),
                None => return Err(Status::unavailable("etcdserver: the master is shutting down")),
            }
        }
    }
}

/// Deletes a queued key unless [`Queued::keep`] was called: a caller that goes away while it
/// waits must not keep its place (etcd's Mutex unlocks, Campaign resigns).
struct Queued {
    master: Arc<Master>,
    key: Option<Vec<u8>>,
}

impl Queued {
    fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let master = self.master.clone();
            tokio::spawn(async move {
                let delete = DeleteRangeRequest { key, ..Default::default() };
                if let Err(e) = master.propose(Op::DeleteRange(delete.encode_to_vec())).await {
                    tracing::warn!("removing an abandoned lock or campaign key: {e}");
                }
            });
        }
    }
}

pub struct LockService {
    pub master: Arc<Master>,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let s = Session::of(&self.master, &req)?;
        let req = req.into_inner();
        let lease = s.lease(req.lease).await?;
        let prefix = [req.name.as_slice(), b"/"].concat();
        let key = key_hex(&prefix, lease);
        let (rev, _) = s.enqueue(&prefix, &key, b"", lease).await?;
        let queued = Queued { master: self.master.clone(), key: Some(key.clone()) };
        let revision = s.await_turn(queued, &prefix, rev, "mutex: session is expired").await?;
        Ok(Response::new(LockResponse { header: Some(self.master.header(revision)), key }))
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let s = Session::of(&self.master, &req)?;
        let key = req.into_inner().key;
        let resp = s.txn(TxnRequest { compare: vec![], success: vec![delete(&key)], failure: vec![] }).await?;
        Ok(Response::new(UnlockResponse { header: resp.header }))
    }
}

pub struct ElectionService {
    pub master: Arc<Master>,
}

// etcd 3.4 answers these with code Unknown and the concurrency package's words.
fn no_leader() -> Status {
    Status::unknown("election: no leader")
}

fn not_leader() -> Status {
    Status::unknown("election: not leader")
}

type ObserveStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<LeaderResponse, Status>> + Send>>;

impl ElectionService {
    /// Puts `value` on the leader key if it still leads.
    async fn proclaim_as(s: &Session, leader: &LeaderKey, value: &[u8]) -> Result<TxnResponse, Status> {
        let txn = TxnRequest {
            compare: vec![created_at(&leader.key, leader.rev)],
            success: vec![put(&leader.key, value, leader.lease)],
            failure: vec![],
        };
        let resp = s.txn(txn).await?;
        if !resp.succeeded {
            return Err(not_leader());
        }
        Ok(resp)
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let s = Session::of(&self.master, &req)?;
        let req = req.into_inner();
        let lease = s.lease(req.lease).await?;
        let prefix = [req.name.as_slice(), b"/"].concat();
        let key = key_hex(&prefix, lease);
        let (rev, existing) = s.enqueue(&prefix, &key, &req.value, lease).await?;
        let queued = Queued { master: self.master.clone(), key: Some(key.clone()) };
        let leader = LeaderKey { name: req.name.clone(), key: key.clone(), rev, lease };
        if existing.is_some_and(|kv| kv.value != req.value) {
            Self::proclaim_as(&s, &leader, &req.value).await?;
        }
        let revision = s.await_turn(queued, &prefix, rev, "election: session is expired").await?;
        let header = Some(self.master.header(revision));
        Ok(Response::new(CampaignResponse { header, leader: Some(leader) }))
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let s = Session::of(&self.master, &req)?;
        let req = req.into_inner();
        let leader = req.leader.ok_or_else(not_leader)?;
        let resp = Self::proclaim_as(&s, &leader, &req.value).await?;
        Ok(Response::new(ProclaimResponse { header: resp.header }))
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let s = Session::of(&self.master, &req)?;
        let prefix = [req.into_inner().name.as_slice(), b"/"].concat();
        let resp = s.range(by_creation(&prefix, true, 0)).await?;
        let kv = resp.kvs.first().cloned().ok_or_else(no_leader)?;
        let header = Some(self.master.header(resp.header.map_or(0, |h| h.revision)));
        Ok(Response::new(LeaderResponse { header, kv: Some(kv) }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let s = Session::of(&self.master, &req)?;
        let prefix = [req.into_inner().name.as_slice(), b"/"].concat();
        s.caller.read(&prefix, &prefix_end(&prefix))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            if let Err(e) = observe(&s, &prefix, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let s = Session::of(&self.master, &req)?;
        let leader = req.into_inner().leader.ok_or_else(not_leader)?;
        let txn = TxnRequest {
            compare: vec![created_at(&leader.key, leader.rev)],
            success: vec![delete(&leader.key)],
            failure: vec![],
        };
        let resp = s.txn(txn).await?;
        Ok(Response::new(ResignResponse { header: resp.header }))
    }
}

/// Sends each leader's value under `prefix` as it changes, until the receiver goes away.
async fn observe(
    s: &Session,
    prefix: &[u8],
    tx: &tokio::sync::mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), Status> {
    let feed_from = |range: KeyRange, revision: i64| {
        let spec = FeedSpec { range, start_revision: revision + 1, prev_kv: false, no_put: false, no_delete: false };
        watch_feed::start(s.master.sm.clone(), spec)
    };
    let mut last_sent: Option<(Vec<u8>, i64)> = None;
    loop {
        let resp = s.range(by_creation(prefix, true, 0)).await?;
        let revision = resp.header.map_or(0, |h| h.revision);
        let Some(leader) = resp.kvs.first().cloned() else {
            // Nobody leads: wait for a candidate's key.
            let mut feed = feed_from(KeyRange::new(prefix, &prefix_end(prefix)), revision);
            loop {
                tokio::select! {
                    msg = feed.rx.recv() => match msg {
                        Some(Feed::Events { events, .. }) if events.iter().any(|e| e.r#type == EventType::Put as i32) => {
                            break
                        }
                        Some(_) => {}
                        None => return Ok(()),
                    },
                    _ = tx.closed() => return Ok(()),
                }
            }
            continue;
        };
        let send = |kv: KeyValue, revision: i64| {
            let header = Some(s.master.header(revision));
            tx.send(Ok(LeaderResponse { header, kv: Some(kv) }))
        };
        if last_sent.as_ref() != Some(&(leader.key.clone(), leader.mod_revision)) {
            last_sent = Some((leader.key.clone(), leader.mod_revision));
            if send(leader.clone(), revision).await.is_err() {
                return Ok(());
            }
        }
        // Follow this leader's key: each new value, until it is deleted.
        let mut feed = feed_from(KeyRange::new(&leader.key, &[]), revision);
        'leading: loop {
            tokio::select! {
                msg = feed.rx.recv() => match msg {
                    Some(Feed::Events { events, revision }) => {
                        for e in events {
                            if e.r#type == EventType::Delete as i32 {
                                break 'leading;
                            }
                            if let Some(kv) = e.kv {
                                last_sent = Some((kv.key.clone(), kv.mod_revision));
                                if send(kv, revision).await.is_err() {
                                    return Ok(());
                                }
                            }
                        }
                    }
                    Some(Feed::Compacted { .. }) => break 'leading,
                    None => return Ok(()),
                },
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}
