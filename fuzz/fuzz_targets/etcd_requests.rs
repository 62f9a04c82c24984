//! etcd v3 requests as the gRPC layer hands them over: decoded from protobuf, then checked as
//! the store checks a request before proposing it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use skiff_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

fuzz_target!(|data: &[u8]| {
    let _ = RangeRequest::decode(data);
    let _ = PutRequest::decode(data);
    let _ = DeleteRangeRequest::decode(data);
    if let Ok(txn) = TxnRequest::decode(data) {
        let _ = skiff_raft_store::mvcc::validate_txn(&txn);
    }
});
