//! `skiff snapshot status FILE`: what a backup holds, checked end to end — the file
//! `Maintenance.Snapshot` streams (`etcdctl snapshot save` writes it), whose last 32 bytes are
//! the SHA-256 of the rest, as etcd appends one to its snapshots. `skiff snapshot restore FILE
//! --data-dir D --initial-cluster …`: a new cluster member's data directory from one
//! (`etcdutl snapshot restore`).

use crate::ctl::{print_table, Failure, Outcome};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Check a snapshot file (its SHA-256 and every record) and print its hash, revision,
    /// keys and size (etcdctl snapshot status).
    Status {
        file: PathBuf,
        /// Output format: table or json.
        #[arg(short = 'w', long = "write-out", default_value = "table")]
        write_out: String,
    },
    /// Build a new cluster member's data directory from a snapshot file (etcdutl snapshot
    /// restore): run it with the same file and --initial-cluster for every founding member,
    /// then start each with `skiff master --data-dir D --id N …`. The restored store keeps the
    /// snapshot's keys, revision, leases, users and roles; raft starts afresh.
    Restore {
        file: PathBuf,
        /// The directory to create (it must not exist), as `skiff master --data-dir`.
        #[arg(long)]
        data_dir: PathBuf,
        /// The new cluster's members, `ID=PEER_ADDR/CLIENT_ADDR` comma-separated, as `skiff
        /// master --initial-cluster`.
        #[arg(long)]
        initial_cluster: String,
        /// A file holding the password the store's `root` user gets (the snapshot's other
        /// users keep theirs). Without it root keeps the snapshot's password.
        #[arg(long)]
        root_password_file: Option<PathBuf>,
    },
}

pub fn run(cmd: SnapshotCommand) -> Outcome {
    match cmd {
        SnapshotCommand::Status { file, write_out } => {
            let (summary, digest) = skiff_raft_store::state_machine::verify_backup(&file)
                .map_err(|e| Failure::Local(format!("snapshot {}: {e}", file.display())))?;
            let size = std::fs::metadata(&file).map_err(|e| Failure::Local(e.to_string()))?.len();
            let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            match write_out.as_str() {
                "table" => print_table(&[
                    vec!["SHA-256".into(), "REVISION".into(), "TOTAL KEYS".into(), "TOTAL SIZE".into()],
                    vec![hash, summary.revision.to_string(), summary.keys.to_string(), size.to_string()],
                ]),
                "json" => println!(
                    "{}",
                    serde_json::json!({"sha256": hash, "revision": summary.revision, "totalKey": summary.keys, "totalSize": size})
                ),
                other => return Err(Failure::Local(format!("--write-out: unknown format {other:?} (table or json)"))),
            }
            Ok(())
        }
        SnapshotCommand::Restore { file, data_dir, initial_cluster, root_password_file } => {
            let local = |e: anyhow::Error| Failure::Local(format!("{e:#}"));
            let members = crate::master_cmd::parse_initial_cluster(&initial_cluster).map_err(local)?;
            let root = root_password_file.as_deref().map(crate::master_cmd::root_password_hash).transpose();
            let root = root.map_err(local)?;
            let summary = skiff_raft_store::restore::restore_backup(&file, &data_dir, &members, root.as_deref())
                .map_err(|e| Failure::Local(format!("restoring {}: {e}", file.display())))?;
            println!(
                "restored {} keys at revision {} into {} (members {})",
                summary.keys,
                summary.revision,
                data_dir.display(),
                members.keys().map(u64::to_string).collect::<Vec<_>>().join(", ")
            );
            Ok(())
        }
    }
}
