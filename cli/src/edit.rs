//! `skiff edit`: the object as YAML in `$EDITOR`, sent back as an update when the editor exits.
//! As kubectl: no change cancels; invalid YAML or a refused update (a conflict, a validation
//! error) keeps the edited copy in a file and says where.

use crate::ctl::{display_name, object_arg, runtime, Conn, Failure, Outcome};
use clap::Args;
use serde_json::Value;
use std::process::Command;

#[derive(Args, Debug)]
pub struct EditArgs {
    /// `TYPE/NAME` or `TYPE NAME`.
    #[arg(required = true, num_args = 1..=2)]
    target: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

const HEADER: &str = "# Please edit the object below. Lines beginning with a '#' will be ignored,\n\
# and an empty file will abort the edit. If an error occurs while saving this file will be\n\
# reopened with the relevant failures.\n#\n";

/// The editor command: `$SKIFF_EDITOR`, `$KUBE_EDITOR`, `$EDITOR`, then `vi` (run by `sh -c`,
/// so it may carry arguments).
fn editor() -> String {
    ["SKIFF_EDITOR", "KUBE_EDITOR", "EDITOR"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| "vi".into())
}

pub fn edit(args: EditArgs) -> Outcome {
    let (info, name) = object_arg(&args.target)?;
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let ns = if info.namespaced { client.config.namespace.clone() } else { String::new() };
    let live = rt.block_on(client.get(info.resource, &ns, name))?;
    let yaml = serde_yaml::to_string(&live).map_err(|e| Failure::Local(e.to_string()))?;
    let dir = tempfile::Builder::new().prefix("skiff-edit-").tempdir().map_err(|e| Failure::Local(e.to_string()))?;
    let file = dir.path().join(format!("{}-{name}.yaml", info.resource));
    std::fs::write(&file, format!("{HEADER}{yaml}")).map_err(|e| Failure::Local(e.to_string()))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{} \"$1\"", editor()))
        .arg("sh")
        .arg(&file)
        .status()
        .map_err(|e| Failure::Local(format!("running the editor: {e}")))?;
    if !status.success() {
        return Err(Failure::Local(format!("the editor exited with {status}; nothing was changed")));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| Failure::Local(e.to_string()))?;
    let body: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    if body.trim().is_empty() {
        println!("Edit cancelled, no changes made.");
        return Ok(());
    }
    // Anything refused from here on keeps the edited copy for the user.
    let kept = || -> String {
        let saved =
            std::env::temp_dir().join(format!("skiff-edit-{}-{name}-{}.yaml", info.resource, std::process::id()));
        match std::fs::copy(&file, &saved) {
            Ok(_) => format!("\nA copy of your changes has been stored to {:?}", saved.display().to_string()),
            Err(_) => String::new(),
        }
    };
    let mut edited: Value = serde_yaml::from_str(&body)
        .map_err(|e| Failure::Local(format!("the edited file is not valid YAML: {e}{}", kept())))?;
    if edited == live {
        println!("Edit cancelled, no changes made.");
        return Ok(());
    }
    args.conn.record_into(&mut edited);
    match rt.block_on(client.update(info.resource, &edited)) {
        Ok(obj) => {
            println!("{} edited", display_name(info, &obj));
            Ok(())
        }
        Err(e) => Err(Failure::Server(tonic::Status::new(e.code(), format!("{}{}", e.message(), kept())))),
    }
}
