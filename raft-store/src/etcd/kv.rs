//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use super::{status, Caller};
use crate::error::StoreError;
use crate::master::{reply_result, Master};
use crate::mvcc::validate_txn;
use crate::types::{Op, Reply};
use prost::Message;
use skiff_proto::etcdserverpb::kv_server::Kv;
use skiff_proto::etcdserverpb::{
    request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct KvService {
    pub master: Arc<Master>,
}

fn empty_key() -> Status {
    status(StoreError::InvalidArgument("etcdserver: key is not provided".into()))
}

impl KvService {
    fn check_size(&self, size: usize) -> Result<(), Status> {
        let limit = self.master.config.max_request_bytes;
        if size > limit {
            return Err(status(StoreError::TooLarge { size, limit }));
        }
        Ok(())
    }

    async fn write<M: Message + Default>(&self, op: Op) -> Result<(i64, M), Status> {
        propose_encoded(&self.master, op).await
    }
}

/// Proposes `op` and decodes the etcd response the state machine produced, with the store
/// revision after it.
pub(crate) async fn propose_encoded<M: Message + Default>(master: &Master, op: Op) -> Result<(i64, M), Status> {
    let (revision, reply) = reply_result(master.propose(op).await.map_err(status)?).map_err(status)?;
    match reply {
        Reply::Encoded(b) => Ok((revision, M::decode(b.as_slice()).map_err(|e| Status::internal(e.to_string()))?)),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}

fn is_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(request_op::Request::RequestRange(_)) => true,
        Some(request_op::Request::RequestTxn(t)) => is_read_only(t),
        _ => false,
    })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let caller = Caller::of(&self.master, &req)?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        caller.read(&req.key, &req.range_end)?;
        if !req.serializable {
            self.master.read_barrier().await.map_err(status)?;
        }
        let mvcc = &self.master.sm.mvcc;
        // A point read of a current value is one lookup; anything else may scan.
        let point = req.range_end.is_empty() && req.revision <= 0;
        let mut resp = if point { mvcc.range(&req) } else { crate::blocking(|| mvcc.range(&req)) }.map_err(status)?;
        resp.header = Some(self.master.header(resp.header.map_or(0, |h| h.revision)));
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = Caller::of(&self.master, &req)?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        caller.write(&req.key, &[])?;
        if req.prev_kv {
            caller.read(&req.key, &[])?;
        }
        self.check_size(req.encoded_len())?;
        let (revision, mut resp): (i64, PutResponse) = self.write(Op::Put(req.encode_to_vec())).await?;
        resp.header = Some(self.master.header(revision));
        Ok(Response::new(resp))
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = Caller::of(&self.master, &req)?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        caller.write(&req.key, &req.range_end)?;
        if req.prev_kv {
            caller.read(&req.key, &req.range_end)?;
        }
        self.check_size(req.encoded_len())?;
        let (revision, mut resp): (i64, DeleteRangeResponse) = self.write(Op::DeleteRange(req.encode_to_vec())).await?;
        resp.header = Some(self.master.header(revision));
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = Caller::of(&self.master, &req)?;
        let req = req.into_inner();
        self.check_size(req.encoded_len())?;
        validate_txn(&req).map_err(status)?;
        caller.txn(&req)?;
        if is_read_only(&req) {
            self.master.read_barrier().await.map_err(status)?;
            let mvcc = &self.master.sm.mvcc;
            let mut resp = crate::blocking(|| mvcc.writer().txn(&req)).map_err(status)?;
            resp.header = Some(self.master.header(mvcc.current_revision()));
            return Ok(Response::new(resp));
        }
        let (revision, mut resp): (i64, TxnResponse) = self.write(Op::Txn(req.encode_to_vec())).await?;
        resp.header = Some(self.master.header(revision));
        Ok(Response::new(resp))
    }

    /// Root only: compaction takes history away from every user of the store.
    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let req = req.into_inner();
        let (revision, _) =
            reply_result(self.master.propose(Op::Compact { revision: req.revision }).await.map_err(status)?)
                .map_err(status)?;
        Ok(Response::new(CompactionResponse { header: Some(self.master.header(revision)) }))
    }
}
