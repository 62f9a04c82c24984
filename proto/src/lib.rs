//! Skiff's wire schema.
//!
//! - [`etcdserverpb`] and [`mvccpb`]: etcd's v3 API, field-for-field, so that
//!   `etcdctl` and etcd client libraries talk to a Skiff master unchanged.
//! - [`peer`]: master-to-master traffic (raft RPCs, forwarded writes, read index).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//!
//! Everything here is generated at build time by protox + tonic-build; no system
//! `protoc` is needed.
#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod peer {
    tonic::include_proto!("skiff.peer");
}

/// Encoded `FileDescriptorSet` of every `.proto` in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
