//! The openraft type configuration and the commands that travel through the log.

use serde::{Deserialize, Serialize};
use std::fmt;

openraft::declare_raft_types!(
    /// Skiff's raft types: commands are [`Request`], replies [`Response`], members [`Member`],
    /// snapshots are files on disk streamed in chunks.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The raft handle of one master.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id (term, leader, index).
pub type LogId = openraft::LogId<u64>;
/// Errors storage returns to openraft.
pub type StorageError = openraft::StorageError<u64>;

/// What the cluster knows about one master: where peers reach it and where clients do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// host:port of the peer (raft) listener.
    pub peer_addr: String,
    /// host:port of the client listener; empty until the member has announced it.
    pub client_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(peer={}, client={})", self.name, self.peer_addr, self.client_addr)
    }
}

/// One raft log command.
///
/// `fence_term` implements DESIGN.md rule 4: a controller's write carries the term in which its
/// leadership began, and the state machine refuses it when the entry was committed in any other
/// term. User writes leave it empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub fence_term: Option<u64>,
    pub op: Op,
}

impl Request {
    pub fn new(op: Op) -> Self {
        Request { fence_term: None, op }
    }
}

/// The state-machine operations. KV payloads are etcd's own protobuf encodings so the state
/// machine applies exactly what the client sent. They are serialized as byte strings
/// (`serde_bytes`: one copy, where a `Vec<u8>` as a sequence costs a call per byte — 100 ms
/// for a 1 MiB value in a debug build, longer than a heartbeat); bincode writes both forms
/// identically, so logs written before read the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// Encoded `etcdserverpb::PutRequest`.
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Encoded `etcdserverpb::DeleteRangeRequest`.
    DeleteRange(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Encoded `etcdserverpb::TxnRequest`.
    Txn(#[serde(with = "serde_bytes")] Vec<u8>),
    Compact {
        revision: i64,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revoke (or expire: the leader decides expiry and proposes this).
    LeaseRevoke {
        id: i64,
    },
    /// Reserve a never-used member id for a member about to be added.
    AllocateMemberId,
    /// A change to the store's users, roles and permissions.
    Auth(crate::auth::AuthOp),
    /// Raise or clear a member's alarm ([`crate::alarm`]); `alarm` is etcd's `AlarmType`.
    Alarm {
        activate: bool,
        member: u64,
        alarm: i32,
    },
    /// Writes that queued on the leader while earlier ones were committing, proposed as one
    /// entry (group commit, [`crate::group_commit`]). Each applies as if it were an entry of
    /// its own — its own revision, fence check and refusal — and replies in
    /// [`Reply::Batch`], in order. Never nested.
    Batch(Vec<Request>),
}

impl Op {
    /// Roughly the bytes this op takes in a log entry.
    pub fn size(&self) -> usize {
        match self {
            Op::Put(b) | Op::DeleteRange(b) | Op::Txn(b) => b.len(),
            Op::Batch(reqs) => reqs.iter().map(|r| r.op.size()).sum(),
            _ => 64,
        }
    }
}

/// A state machine's reply to one log entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// The store revision after the entry was applied.
    pub revision: i64,
    pub result: Result<Reply, ApplyError>,
}

impl Response {
    pub fn ok(revision: i64, reply: Reply) -> Self {
        Response { revision, result: Ok(reply) }
    }
}

/// A successful reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Membership and blank entries.
    Empty,
    /// An encoded etcd response (`PutResponse`, `DeleteRangeResponse` or `TxnResponse`),
    /// header left for the API layer to fill.
    Encoded(#[serde(with = "serde_bytes")] Vec<u8>),
    LeaseGranted {
        id: i64,
        ttl: i64,
    },
    MemberId(u64),
    /// The alarm an `Op::Alarm` raised or cleared: (member, type); none if nothing changed.
    Alarm(Option<(u64, i32)>),
    /// An `Op::Batch`'s replies, one per request in order.
    Batch(Vec<Response>),
}

/// Why the state machine refused a command. Deterministic: every replica refuses the same
/// entry the same way, and a refused entry changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { requested: i64, compacted: i64 },
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision { requested: i64, current: i64 },
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound { id: i64 },
    #[error("etcdserver: lease already exists")]
    LeaseExists { id: i64 },
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("fenced: a controller write of leadership term {expected} reached term {actual}; that leadership is over")]
    Fenced { expected: u64, actual: u64 },
    #[error("{0}")]
    Invalid(String),
    /// A `NOSPACE` alarm is active ([`crate::alarm`]): nothing that grows the store applies.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Op` as it was serialized before its payloads became byte strings.
    #[derive(Serialize)]
    enum SequenceOp {
        Put(Vec<u8>),
    }

    #[test]
    fn byte_string_payloads_encode_as_the_logs_written_before_them() {
        let value = b"some etcd PutRequest bytes".to_vec();
        let now = bincode::serialize(&Op::Put(value.clone())).unwrap();
        assert_eq!(now, bincode::serialize(&SequenceOp::Put(value.clone())).unwrap());
        match bincode::deserialize::<Op>(&now).unwrap() {
            Op::Put(back) => assert_eq!(back, value),
            other => panic!("decoded as {other:?}"),
        }
    }
}
