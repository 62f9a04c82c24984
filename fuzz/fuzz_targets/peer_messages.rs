//! The payloads masters send each other (bincode, `raft-store/src/network.rs`): raft's
//! AppendEntries, Vote and InstallSnapshot requests and forwarded client operations, decoded
//! as the peer service decodes them. A malformed payload must be an error, not a panic or an
//! allocation of whatever length it claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use skiff_proto::peer::Payload;
use skiff_raft_store::master::Forwarded;
use skiff_raft_store::network::decode;
use skiff_raft_store::types::TypeConfig;

fuzz_target!(|data: &[u8]| {
    let payload = Payload { data: data.to_vec() };
    let _ = decode::<AppendEntriesRequest<TypeConfig>>(&payload);
    let _ = decode::<VoteRequest<u64>>(&payload);
    let _ = decode::<InstallSnapshotRequest<TypeConfig>>(&payload);
    let _ = decode::<Forwarded>(&payload);
});
