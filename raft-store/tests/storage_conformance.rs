//! openraft's storage conformance suite against the RocksDB log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use skiff_raft_store::log_store::LogStore;
use skiff_raft_store::state_machine::StateMachine;
use skiff_raft_store::types::{StorageError, TypeConfig};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let db = skiff_raft_store::db::open(&dir.path().join("db")).expect("open rocksdb");
        let sm = StateMachine::open(db.clone(), &dir.path().join("snapshots")).expect("open state machine");
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn rocksdb_storage_passes_openraft_suite() {
    Suite::test_all(RocksBuilder).expect("storage conformance");
}
