//! `skiff certificate approve | deny NAME…` (kubectl certificate): an administrator's decision
//! on CertificateSigningRequests the certificate controller leaves alone (a user's client
//! certificate, a serving request it cannot check). Recorded as a condition, as Kubernetes
//! does; the signer issues approved requests of its signers.

use crate::ctl::{runtime, Conn, Failure, Outcome};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum CertificateCommand {
    /// Approve certificate signing requests.
    Approve(DecideArgs),
    /// Deny certificate signing requests.
    Deny(DecideArgs),
}

#[derive(Args, Debug)]
pub struct DecideArgs {
    #[arg(required = true)]
    names: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

pub fn run(cmd: CertificateCommand) -> Outcome {
    let (args, kind, verb, reason, message) = match &cmd {
        CertificateCommand::Approve(a) => {
            (a, "Approved", "approved", "KubectlApprove", "This CSR was approved by skiff certificate approve.")
        }
        CertificateCommand::Deny(a) => {
            (a, "Denied", "denied", "KubectlDeny", "This CSR was denied by skiff certificate deny.")
        }
    };
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    for name in &args.names {
        rt.block_on(async {
            let mut csr = client.get("certificatesigningrequests", "", name).await?;
            let conditions = csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
            if let Some(c) = conditions.iter().find(|c| c["type"] == "Approved" || c["type"] == "Denied") {
                if c["type"] == kind {
                    println!("certificatesigningrequest.certificates.k8s.io/{name} {verb}");
                    return Ok(());
                }
                return Err(Failure::Local(format!(
                    "certificatesigningrequest {name} is already {}",
                    c["type"].as_str().unwrap_or_default().to_lowercase()
                )));
            }
            let now = skiff_proto::time::now_rfc3339();
            let mut conditions = conditions;
            conditions.push(json!({
                "type": kind, "status": "True", "reason": reason, "message": message,
                "lastUpdateTime": now, "lastTransitionTime": now,
            }));
            csr["status"]["conditions"] = json!(conditions);
            client.update_status("certificatesigningrequests", &csr).await?;
            println!("certificatesigningrequest.certificates.k8s.io/{name} {verb}");
            Ok::<(), Failure>(())
        })?;
    }
    Ok(())
}
