//! etcd's alarms: a member that runs short of disk raises `NOSPACE`, and while any such alarm
//! is active the whole cluster refuses what would grow the store — puts, transactions that put,
//! lease grants — with etcd's "database space exceeded" (`ResourceExhausted`). Reads, deletes,
//! compaction and the alarm calls themselves still go through, so an operator can make room and
//! then disarm (`etcdctl alarm disarm`), as with etcd.
//!
//! Alarms are state-machine state (`sm_key::ALARMS`), raised and cleared through the log, so
//! every master refuses the same entries. Each master watches its own disk
//! ([`Master::run_disk_monitor`](crate::master::Master::run_disk_monitor)) and raises the alarm
//! while the free space on its data directory's filesystem is below its reserve, or the store
//! is larger than its quota, leaving room for the log entries that refuse writes and for the
//! disarm. Like etcd, nothing disarms an alarm by itself.

use crate::types::{ApplyError, Op};
use prost::Message;
use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::{request_op, AlarmMember, AlarmType, TxnRequest};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// The active alarms: (member id, `AlarmType` as its protobuf number).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarms(BTreeSet<(u64, i32)>);

impl Alarms {
    pub fn nospace(&self) -> bool {
        self.0.iter().any(|(_, a)| *a == AlarmType::Nospace as i32)
    }

    pub fn has(&self, member: u64, alarm: AlarmType) -> bool {
        self.0.contains(&(member, alarm as i32))
    }

    /// The alarms of one type (`None` type: all), as the API lists them.
    pub fn list(&self, of: AlarmType) -> Vec<AlarmMember> {
        self.0
            .iter()
            .filter(|(_, a)| of == AlarmType::None || *a == of as i32)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// The state after raising (`activate`) or clearing an alarm, and the alarm that changed
    /// (etcd answers with it; nothing when there was nothing to clear, or a `NONE` to raise).
    pub fn apply(&self, activate: bool, member: u64, alarm: i32) -> Result<(Alarms, Option<AlarmMember>), ApplyError> {
        let kind = AlarmType::try_from(alarm)
            .map_err(|_| ApplyError::Invalid(format!("etcdserver: unknown alarm type {alarm}")))?;
        let mut next = self.clone();
        let changed = AlarmMember { member_id: member, alarm };
        if activate {
            if kind == AlarmType::None {
                return Ok((next, None));
            }
            next.0.insert((member, alarm));
            Ok((next, Some(changed)))
        } else if next.0.remove(&(member, alarm)) {
            Ok((next, Some(changed)))
        } else {
            Ok((next, None))
        }
    }
}

/// What a master applies and answers with: the alarms as applied here.
#[derive(Debug, Default)]
pub struct AlarmStore {
    state: RwLock<Arc<Alarms>>,
    /// `state.nospace()`, read on every proposal without the lock.
    nospace: AtomicBool,
}

impl AlarmStore {
    pub fn current(&self) -> Arc<Alarms> {
        self.state.read().expect("alarm lock").clone()
    }

    pub fn set(&self, alarms: Alarms) {
        self.nospace.store(alarms.nospace(), Ordering::SeqCst);
        *self.state.write().expect("alarm lock") = Arc::new(alarms);
    }

    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::SeqCst)
    }
}

/// The name etcd prints for an alarm type.
pub fn name(alarm: i32) -> &'static str {
    AlarmType::try_from(alarm).map(|a| a.as_str_name()).unwrap_or("UNKNOWN")
}

/// Whether `op` would grow the store, and so is refused while a `NOSPACE` alarm is active
/// (etcd's capped applier: puts, transactions with a put anywhere in them, lease grants).
pub fn grows_store(op: &Op) -> bool {
    match op {
        Op::Put(_) | Op::LeaseGrant { .. } => true,
        // A transaction that does not decode is refused as malformed when applied.
        Op::Txn(b) => TxnRequest::decode(b.as_slice()).is_ok_and(|t| txn_puts(&t)),
        Op::Batch(reqs) => reqs.iter().any(|r| grows_store(&r.op)),
        _ => false,
    }
}

pub fn txn_puts(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(request_op::Request::RequestPut(_)) => true,
        Some(request_op::Request::RequestTxn(inner)) => txn_puts(inner),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp};

    const NOSPACE: i32 = AlarmType::Nospace as i32;

    #[test]
    fn raising_and_clearing_answer_with_what_changed() {
        let none = Alarms::default();
        let (one, raised) = none.apply(true, 3, NOSPACE).unwrap();
        assert_eq!(raised, Some(AlarmMember { member_id: 3, alarm: NOSPACE }));
        assert!(one.nospace() && one.has(3, AlarmType::Nospace) && !one.has(2, AlarmType::Nospace));
        assert_eq!(one.list(AlarmType::None).len(), 1);
        assert_eq!(one.list(AlarmType::Corrupt), vec![]);
        let (same, _) = one.apply(true, 3, NOSPACE).unwrap();
        assert_eq!(same, one, "raising twice keeps one alarm");
        let (cleared, gone) = one.apply(false, 3, NOSPACE).unwrap();
        assert_eq!(gone, Some(AlarmMember { member_id: 3, alarm: NOSPACE }));
        assert!(!cleared.nospace());
        assert_eq!(cleared.apply(false, 3, NOSPACE).unwrap().1, None, "nothing to clear");
        assert_eq!(none.apply(true, 3, AlarmType::None as i32).unwrap(), (Alarms::default(), None));
        let err = none.apply(true, 3, 42).unwrap_err();
        assert!(err.to_string().contains("unknown alarm type 42"), "{err}");
    }

    #[test]
    fn only_what_grows_the_store_is_capped() {
        let put = RequestOp { request: Some(request_op::Request::RequestPut(PutRequest::default())) };
        let del = RequestOp { request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest::default())) };
        let txn = |success: Vec<RequestOp>, failure: Vec<RequestOp>| {
            Op::Txn(TxnRequest { compare: vec![], success, failure }.encode_to_vec())
        };
        assert!(grows_store(&Op::Put(vec![])));
        assert!(grows_store(&Op::LeaseGrant { id: 1, ttl: 5 }));
        assert!(grows_store(&txn(vec![del.clone()], vec![put.clone()])), "a put in either branch");
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success: vec![put],
                failure: vec![],
            })),
        };
        assert!(grows_store(&txn(vec![nested], vec![])), "a put in a nested transaction");
        assert!(!grows_store(&txn(vec![del.clone()], vec![del])));
        assert!(!grows_store(&Op::DeleteRange(vec![])));
        assert!(!grows_store(&Op::Compact { revision: 3 }));
        assert!(!grows_store(&Op::LeaseRevoke { id: 1 }));
        assert!(!grows_store(&Op::Alarm { activate: false, member: 1, alarm: NOSPACE }));
    }
}
