//! `skiff snapshot status FILE`: what a backup holds, checked end to end — the file
//! `Maintenance.Snapshot` streams (`etcdctl snapshot save` writes it), whose last 32 bytes are
//! the SHA-256 of the rest, as etcd appends one to its snapshots.

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
    }
}
