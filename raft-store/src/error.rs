//! The store's error type, and the one table that maps it to gRPC codes (DESIGN.md rule 7).
//!
//! Messages follow etcd's wording where etcd has one (`etcdserver: ...`), because etcd client
//! libraries match on them to pick their typed errors.

use crate::types::ApplyError;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// No leader is known, or none answered, before the request's deadline.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request may or may not have been applied (no quorum before the deadline).
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The connection to the leader broke mid-request: the outcome is unknown.
    #[error("etcdserver: request interrupted, it may or may not have been applied: {0}")]
    Interrupted(String),
    /// The leader this master forwarded to lost its place before answering: the outcome is
    /// unknown, and the client can retry at once instead of waiting out its deadline.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// A leader-only operation reached a member that is not (or no longer) leader.
    #[error("etcdserver: not leader (leader is {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("etcdserver: request is too large ({size} bytes, limit {limit})")]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("etcdserver: member not found")]
    MemberNotFound { id: u64 },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    /// This master is shutting down or its raft core has stopped.
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        let code = match &e {
            StoreError::Apply(a) => match a {
                ApplyError::Compacted { .. } | ApplyError::FutureRevision { .. } => Code::OutOfRange,
                ApplyError::LeaseNotFound { .. } => Code::NotFound,
                ApplyError::LeaseExists { .. } => Code::FailedPrecondition,
                ApplyError::KeyNotFound | ApplyError::DuplicateKey | ApplyError::Invalid(_) => Code::InvalidArgument,
                ApplyError::Fenced { .. } => Code::FailedPrecondition,
                ApplyError::NoSpace => Code::ResourceExhausted,
                ApplyError::Auth(a) => a.code(),
            },
            StoreError::NoLeader
            | StoreError::Timeout
            | StoreError::Interrupted(_)
            | StoreError::LeaderChanged
            | StoreError::NotLeader { .. }
            | StoreError::Stopped => Code::Unavailable,
            StoreError::TooLarge { .. } => Code::ResourceExhausted,
            StoreError::InvalidArgument(_) => Code::InvalidArgument,
            StoreError::MemberNotFound { .. } => Code::NotFound,
            StoreError::FailedPrecondition(_) => Code::FailedPrecondition,
            StoreError::Unimplemented(_) => Code::Unimplemented,
            StoreError::Internal(_) => Code::Internal,
        };
        let outcome = match &e {
            StoreError::NoLeader | StoreError::NotLeader { .. } | StoreError::Stopped => {
                Some(skiff_proto::OUTCOME_NOT_APPLIED)
            }
            StoreError::Timeout | StoreError::Interrupted(_) | StoreError::LeaderChanged => {
                Some(skiff_proto::OUTCOME_UNKNOWN)
            }
            _ => None,
        };
        let mut status = Status::new(code, e.to_string());
        if let Some(outcome) = outcome {
            status.metadata_mut().insert(skiff_proto::OUTCOME_HEADER, MetadataValue::from_static(outcome));
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(e: StoreError) -> (Code, Option<String>) {
        let s = Status::from(e);
        (s.code(), s.metadata().get(skiff_proto::OUTCOME_HEADER).map(|v| v.to_str().unwrap().to_string()))
    }

    #[test]
    fn unavailable_says_whether_the_write_may_have_been_applied() {
        let not_applied = Some(skiff_proto::OUTCOME_NOT_APPLIED.to_string());
        let unknown = Some(skiff_proto::OUTCOME_UNKNOWN.to_string());
        assert_eq!(outcome(StoreError::NoLeader), (Code::Unavailable, not_applied.clone()));
        assert_eq!(outcome(StoreError::NotLeader { leader: Some(2) }), (Code::Unavailable, not_applied.clone()));
        assert_eq!(outcome(StoreError::Stopped), (Code::Unavailable, not_applied));
        assert_eq!(outcome(StoreError::Timeout), (Code::Unavailable, unknown.clone()));
        assert_eq!(outcome(StoreError::LeaderChanged), (Code::Unavailable, unknown.clone()));
        assert_eq!(outcome(StoreError::Interrupted("reset".into())), (Code::Unavailable, unknown));
        assert_eq!(outcome(StoreError::Internal("x".into())), (Code::Internal, None));
    }
}
