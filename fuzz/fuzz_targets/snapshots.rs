//! A raft snapshot file as a peer streams it: read and checked whole before anything is
//! installed. Malformed input must be an error, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = skiff_raft_store::state_machine::verify_snapshot(data);
});
