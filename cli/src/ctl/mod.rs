//! The kubectl-style verbs: `get`, `apply`, `create`, `delete`, `api-resources`. They talk to
//! any master through `skiff-client` (failover, deadlines) and print what kubectl prints.
//!
//! This module holds the connection flags and the error report every verb shares; the verbs
//! are in `listing` (get), `manifests` (apply, create, delete), `pod_logs`, `pod_exec`,
//! `metadata` (label, annotate, scale) and `status` (componentstatuses, version).

pub(crate) mod listing;
mod manifests;
mod metadata;
mod pod_exec;
mod pod_logs;
mod status;

pub use listing::*;
pub use manifests::*;
pub use metadata::*;
pub use pod_exec::*;
pub use pod_logs::*;
pub use status::*;

use clap::Args;
use serde_json::Value;
use skiff_api::kinds::{self, KindInfo, KINDS};
use skiff_client::{Client, ClientConfig};
use std::io::Read;
use std::path::PathBuf;
use tonic::Code;

/// Flags every API verb takes.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Client config (default: $SKIFF_CONFIG, then ./.skiff/client.json).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Deadline for each request, e.g. 30s.
    #[arg(long, global = true, default_value = "30s")]
    request_timeout: String,
    /// Record the command line in the object's kubernetes.io/change-cause annotation (shown by
    /// `rollout history`).
    #[arg(long, global = true)]
    record: bool,
}

pub(crate) const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

impl Conn {
    /// With `--record`: the command line as the object's change cause.
    pub(crate) fn record_into(&self, obj: &mut Value) {
        if self.record {
            let line: Vec<String> =
                std::env::args().map(|a| if a.contains(' ') { format!("{a:?}") } else { a }).collect();
            let mut line = line.join(" ");
            if let Some(rest) = line.split_once(' ').map(|(_, r)| r.to_string()) {
                line = format!("skiff {rest}");
            }
            obj["metadata"]["annotations"][CHANGE_CAUSE] = Value::String(line);
        }
    }

    /// The client config these flags name.
    pub(crate) fn config(&self) -> Result<ClientConfig, skiff_client::ConfigError> {
        ClientConfig::discover(self.config.as_deref())
    }

    pub(crate) fn client(&self) -> Result<Client, Failure> {
        let mut cfg = ClientConfig::discover(self.config.as_deref()).map_err(|e| Failure::Local(e.to_string()))?;
        cfg.timeout = parse_duration(&self.request_timeout).map_err(Failure::Local)?;
        if let Some(ns) = &self.namespace {
            cfg.namespace = ns.clone();
        }
        Client::new(cfg).map_err(|s| Failure::Local(s.message().to_string()))
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = n.parse().map_err(|_| format!("invalid duration {s:?} (use e.g. 30s, 2m)"))?;
    Ok(std::time::Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("invalid duration {s:?} (use e.g. 30s, 2m)")),
    }))
}

/// How a verb failed: kubectl prints client-side problems as `error: …` and server answers as
/// `Error from server (Reason): …`; both exit 1.
#[derive(Debug)]
pub enum Failure {
    Local(String),
    Server(tonic::Status),
    /// Already printed (a verb that goes on past a failed object): exit 1 without more.
    Reported,
    /// Exit with this code, without more (`exec`: the command's own exit code).
    Exit(i32),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Server(s)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Local(m) => write!(f, "error: {m}"),
            Failure::Reported | Failure::Exit(_) => Ok(()),
            Failure::Server(s) => {
                let reason = match s.code() {
                    Code::NotFound => "NotFound",
                    Code::AlreadyExists => "AlreadyExists",
                    Code::Aborted => "Conflict",
                    Code::InvalidArgument => {
                        if s.message().contains(" is invalid: ") {
                            "Invalid"
                        } else {
                            "BadRequest"
                        }
                    }
                    Code::PermissionDenied | Code::ResourceExhausted => "Forbidden",
                    Code::Unauthenticated => "Unauthorized",
                    Code::Unavailable | Code::DeadlineExceeded => "ServiceUnavailable",
                    Code::OutOfRange => "Expired",
                    _ => "InternalError",
                };
                write!(f, "Error from server ({reason}): {}", s.message())
            }
        }
    }
}

pub type Outcome = Result<(), Failure>;

/// `TYPE NAME` or `TYPE/NAME` as verbs on one object take them: the kind and the name.
pub(crate) fn object_arg(target: &[String]) -> Result<(&'static KindInfo, &str), Failure> {
    let (kind, name) = match target {
        [one] => one.split_once('/').ok_or_else(|| Failure::Local("use TYPE NAME or TYPE/NAME".into()))?,
        [k, n] => (k.as_str(), n.as_str()),
        _ => return Err(Failure::Local("use TYPE NAME or TYPE/NAME".into())),
    };
    Ok((kind_arg(kind)?, name))
}

pub(crate) fn kind_arg(name: &str) -> Result<&'static KindInfo, Failure> {
    kinds::lookup(name).ok_or_else(|| Failure::Local(format!("the server doesn't have a resource type {name:?}")))
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}
