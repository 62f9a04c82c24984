//! etcd's v3 gRPC services over a [`Master`](crate::master::Master). Handlers are adapters:
//! validate, call the master or the MVCC store, map the error (see `error.rs`), respond.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use crate::error::StoreError;
use tonic::Status;

fn status(e: impl Into<StoreError>) -> Status {
    e.into().into()
}
