//! Skiff's wire schema.
//!
//! - [`etcdserverpb`], [`mvccpb`] and [`authpb`]: etcd's v3 API, field-for-field, so that `etcdctl` and
//!   etcd client libraries talk to a Skiff master unchanged.
//! - [`v3lockpb`] and [`v3electionpb`]: etcd's lock and election services.
//! - [`peer`]: master-to-master traffic (raft RPCs, forwarded writes, read index).
//! - [`api`]: Kubernetes-shaped resources and one gRPC service per kind. The same Rust types
//!   read and write Kubernetes JSON/YAML through serde (field names from the proto JSON names,
//!   defaults omitted, unknown fields refused), so gRPC JSON (grpcurl) and manifests agree.
//! - [`cert`]: who a verified client certificate names (CN, O), for every TLS listener.
//! - [`metrics`]: a process's Prometheus registry, shared by its parts.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//!
//! Everything here is generated at build time by protox + tonic-build; no system `protoc` is
//! needed.

pub mod autoscaling;
pub mod cert;
pub mod discovery;
pub mod env;
pub mod ingress_class;
pub mod jsonpath;
pub mod metrics;
pub mod pki;
pub mod pod;
pub mod quantity;
pub mod selector;
pub mod serde_util;
pub mod time;

#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

#[allow(clippy::all, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

#[allow(clippy::all, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

#[allow(clippy::all, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

#[allow(clippy::all, missing_docs)]
pub mod peer {
    tonic::include_proto!("skiff.peer");
}

#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("skiff.api");

    /// One kind of resource the API serves.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct KindInfo {
        pub kind: &'static str,
        /// Plural lower-case resource name (`pods`).
        pub resource: &'static str,
        /// `v1`, `apps/v1`, …
        pub api_version: &'static str,
        pub namespaced: bool,
        /// Comma-separated kubectl short names.
        pub short_names: &'static str,
        /// Comma-separated subresources (`status`, `scale`).
        pub subresources: &'static str,
        /// Defined by a CustomResourceDefinition: stored under `/registry/<group>/<resource>/`,
        /// checked by its schema rather than a compiled type.
        pub custom: bool,
    }

    include!(concat!(env!("OUT_DIR"), "/kinds.rs"));
}

/// Encoded `FileDescriptorSet` of every `.proto` in this crate.
/// The request header that fences a controller's writes to the raft term of its leadership
/// (DESIGN.md rule 4): sent by `skiff_client::Client::fenced`, honoured by the masters.
pub const FENCE_HEADER: &str = "skiff-fence-term";

/// The request header naming one create across its client's retries (8–128 characters of
/// `[A-Za-z0-9._-]`): the masters answer a retry whose first attempt was committed with the
/// object it made, instead of making a second one or refusing it as AlreadyExists.
pub const REQUEST_ID_HEADER: &str = "skiff-request-id";

/// The status metadata key that says, on an `Unavailable` error, whether the request was
/// certainly not applied ([`OUTCOME_NOT_APPLIED`]: no leader, not the leader, shutting down) or
/// may have been ([`OUTCOME_UNKNOWN`]: timed out, interrupted, the leader changed mid-request).
/// etcd answers both with the same code; a Skiff client decides from this whether a write that
/// is not idempotent may be tried again.
pub const OUTCOME_HEADER: &str = "skiff-outcome";
pub const OUTCOME_NOT_APPLIED: &str = "not-applied";
pub const OUTCOME_UNKNOWN: &str = "unknown";

pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Encoded `FileDescriptorSet` of `proto/k8s/wire.proto`: the part of Kubernetes' protobuf
/// encoding that the REST API reads (kubectl's typed clients send it).
pub const K8S_WIRE_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/k8s_wire.bin"));
