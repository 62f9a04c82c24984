//! The store's metrics, under etcd's names (etcd's `/metrics` reference), registered in the
//! master process's [`skiff_proto::metrics::Metrics`]:
//!
//! - `etcd_server_has_leader`, `etcd_server_is_leader`: 1 or 0, as this member sees it.
//! - `etcd_server_leader_changes_seen_total`: leaders this member has seen take over.
//! - `etcd_disk_wal_fsync_duration_seconds`: the synced raft log appends (Skiff's WAL).
//! - `etcd_disk_backend_commit_duration_seconds`: the state machine's RocksDB writes.
//! - `etcd_mvcc_db_total_size_in_bytes`: the store's size on disk and in memtables.
//! - `etcd_debugging_mvcc_current_revision`: the store revision applied here.
//! - `grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}`: etcd API
//!   calls answered (go-grpc-prometheus' name, as etcd serves it), counted by [`grpc_layer`].

use crate::master::Master;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::{Arc, Weak};

/// Registers the store's metrics of `master` in its process registry and starts counting
/// leader changes (until the master is dropped).
pub(crate) fn register(master: &Arc<Master>) {
    let metrics = &master.metrics;
    let (has_leader, is_leader, size, revision) =
        (Gauge::<i64>::default(), Gauge::<i64>::default(), Gauge::<i64>::default(), Gauge::<i64>::default());
    metrics.register("etcd_server_has_leader", "Whether a leader exists (1) or not (0)", has_leader.clone());
    metrics.register("etcd_server_is_leader", "Whether this member is the leader (1) or not (0)", is_leader.clone());
    let changes = Counter::<u64>::default();
    metrics.register("etcd_server_leader_changes_seen", "Leader changes seen by this member", changes.clone());
    metrics.register(
        "etcd_disk_wal_fsync_duration_seconds",
        "Latency of the synced raft log appends",
        master.log_fsync_seconds.clone(),
    );
    metrics.register(
        "etcd_disk_backend_commit_duration_seconds",
        "Latency of the state machine's writes to the backend",
        master.sm.commit_seconds.clone(),
    );
    metrics.register("etcd_mvcc_db_total_size_in_bytes", "The store's size on disk and in memory", size.clone());
    metrics.register("etcd_debugging_mvcc_current_revision", "The store revision applied here", revision.clone());
    metrics.register("grpc_server_handled", "etcd API calls answered, by method and code", master.grpc_handled.clone());
    let weak: Weak<Master> = Arc::downgrade(master);
    metrics.on_scrape(move || {
        let Some(master) = weak.upgrade() else { return };
        has_leader.set(i64::from(master.leader().is_some()));
        is_leader.set(i64::from(master.is_leader()));
        size.set(master.db_size() as i64);
        revision.set(master.sm.mvcc.current_revision());
    });
    let mut leadership = master.raft.metrics();
    tokio::spawn(async move {
        let mut seen = leadership.borrow().current_leader;
        while leadership.changed().await.is_ok() {
            let now = leadership.borrow().current_leader;
            if now.is_some() && now != seen {
                changes.inc();
            }
            if now.is_some() {
                seen = now;
            }
        }
    });
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// A layer for the client listener that counts the etcd API's answered calls into
/// `handled` (other services' calls are left to their own metrics).
pub fn grpc_layer(handled: Family<GrpcLabels, Counter>) -> skiff_proto::metrics::ObserveLayer {
    skiff_proto::metrics::ObserveLayer(Arc::new(move |path, _, code, _| {
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else { return };
        if !["etcdserverpb.", "v3lockpb.", "v3electionpb."].iter().any(|p| service.starts_with(p)) {
            return;
        }
        let labels = GrpcLabels {
            grpc_type: grpc_type(service, method),
            grpc_code: code_name(code),
            grpc_service: service.to_string(),
            grpc_method: method.to_string(),
        };
        handled.get_or_create(&labels).inc();
    }))
}

/// The etcd API's streaming methods (etcd labels them `bidi_stream` / `server_stream`).
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") | ("v3electionpb.Election", "Observe") => "server_stream",
        _ => "unary",
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}
