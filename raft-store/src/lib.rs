//! Skiff's replicated store: the single source of truth for cluster state (DESIGN.md rule 1).
//!
//! openraft 0.9 (storage-v2) replicates a log of [`types::Request`]s; RocksDB holds the log and
//! the state machine; the state machine is an MVCC key-value store with etcd's data model;
//! each master serves etcd's v3 gRPC API, so etcd tools and client libraries work unchanged.
//!
//! Modules:
//! - [`types`]: openraft type config, the log's commands and replies.
//! - [`alarm`]: etcd's alarms; `NOSPACE` caps the store while a master is short of disk.
//! - [`auth`]: the store's users, roles and key-range permissions (etcd's auth), and tokens.
//! - [`db`]: the RocksDB instance and its column families (layout documented there).
//! - [`log_store`]: raft log and vote, fsynced before openraft hears they are written.
//! - [`mvcc`]: revisions, ranges, transactions, compaction, leases.
//! - [`state_machine`]: applying entries; building, streaming and installing snapshots.
//! - [`restore`]: a new cluster's data directory from a backup.
//! - [`watch_hub`]: fan-out of applied events; [`watch_feed`]: one watcher's ordered feed.
//! - [`network`] / [`peer_service`]: raft and forwarding between masters over gRPC;
//!   [`peer_tls`]: their mutual TLS and the checks on who a peer is.
//! - [`fence`]: the `skiff-fence-term` header that fences controllers' writes to a term.
//! - [`master`]: one master; any-master semantics (forwarding, read index, lease clock).
//! - [`metrics`]: the store's Prometheus metrics, under etcd's names.
//! - [`etcd`]: the etcd v3 services; [`server`]: both listeners.
//! - [`error`]: the error enum and its gRPC code table.
//!
//! Invariants: a write is acknowledged only after a quorum has fsynced it; a state-machine
//! entry applies whole or not at all; reads are linearizable unless the client asks for
//! serializable; watch streams are ordered, gap-free and duplicate-free.

pub mod alarm;
pub mod auth;
pub mod db;
pub mod election;
pub mod error;
pub mod etcd;
pub mod fence;
pub mod group_commit;
pub mod local;
pub mod log_store;
pub mod master;
pub mod metrics;
pub mod mvcc;
pub mod network;
pub mod peer_service;
pub mod peer_tls;
pub mod read_index;
pub mod restore;
pub mod server;
pub mod state_machine;
pub mod types;
pub mod watch_feed;
pub mod watch_hub;

pub use error::StoreError;
pub use master::{Master, MasterConfig};
pub use server::serve;
pub use types::Member;

/// Runs synchronous store work (a RocksDB scan) from async code without holding up the
/// runtime's other tasks — raft's heartbeats and votes above all: on a multi-thread runtime
/// the worker first hands its queue to another thread (tokio's `block_in_place`); elsewhere
/// (a unit test's current-thread runtime, a plain thread) it just runs. Without it, two long
/// scans on this 2-core machine's two workers starved raft until the masters lost their
/// leader (the 2026-12-06 soak).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Testing only: arms the failpoints the `FAILPOINTS` environment variable names (see
/// [`log_store`]); keep the returned guard for the life of the process. A build without the
/// `failpoints` feature refuses the variable rather than run as if the faults were injected.
pub fn arm_failpoints() -> Result<Option<fail::FailScenario<'static>>, String> {
    if std::env::var_os("FAILPOINTS").is_none() {
        return Ok(None);
    }
    if !fail::has_failpoints() {
        return Err("FAILPOINTS is set, but this skiff was built without failpoints \
                    (cargo build --features skiff-cli/failpoints, as scripts/test does)"
            .into());
    }
    tracing::warn!("testing failpoints armed: {}", std::env::var("FAILPOINTS").unwrap_or_default());
    Ok(Some(fail::FailScenario::setup()))
}
