//! The node's exec server: `skiff.api.PodExec`, which masters relay `skiff exec` to. A command
//! runs in a running container's namespaces and cgroup through `skiff tenant DIR -- CMD…`, a
//! helper process of its own (libcontainer forks, which must not happen in the daemon's
//! runtime, DESIGN rule 8); the helper's stdin, stdout and stderr are the streams, and its exit
//! code is the command's. Who may call is [`Callers`], as for logs.

use crate::instance::InstanceState;
use crate::logs::Callers;
use skiff_proto::api::pod_exec_server::PodExec;
use skiff_proto::api::{ExecExit, ExecInput, ExecOutput};
use std::path::PathBuf;
use std::pin::Pin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub struct ExecServer {
    pub root: PathBuf,
    pub callers: Callers,
    /// The `skiff` binary, whose `tenant` subcommand runs the command.
    pub helper: PathBuf,
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, Status>> + Send>>;

/// What `skiff tenant` exits with when it could not start the command (its message is in the
/// error file): a shell's "cannot execute".
pub const NOT_STARTED: i32 = 126;

#[tonic::async_trait]
impl PodExec for ExecServer {
    type ExecStream = OutputStream;

    async fn exec(&self, req: Request<Streaming<ExecInput>>) -> Result<Response<OutputStream>, Status> {
        // The caller is judged on the request without its stream (which is not Sync).
        let (metadata, extensions, mut input) = req.into_parts();
        let start = input
            .message()
            .await?
            .and_then(|m| m.start)
            .ok_or_else(|| Status::invalid_argument("an exec starts with what to run (start)"))?;
        let caller = Request::from_parts(metadata, extensions, ());
        self.callers.authorize(&caller, "pods", &start.namespace, &start.name).await?;
        if start.command.is_empty() {
            return Err(Status::invalid_argument("you must specify at least one command for the container"));
        }
        let ns = if start.namespace.is_empty() { "default" } else { start.namespace.as_str() };
        let (container, runs) = crate::logs::container_runs(&self.root, ns, &start.name, &start.container)?;
        let run = runs.last().filter(|r| matches!(r.state(), InstanceState::Running(_))).ok_or_else(|| {
            Status::failed_precondition(format!("container {container:?} in pod {:?} is not running", start.name))
        })?;
        let errors = tempfile_path(&run.dir);
        let mut child = tokio::process::Command::new(&self.helper)
            .arg("tenant")
            .arg(&run.dir)
            .arg("--error-file")
            .arg(&errors)
            .arg("--")
            .args(&start.command)
            .stdin(if start.stdin { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Status::internal(format!("starting the exec helper: {e}")))?;
        let command = start.command.clone();
        let mut stdin = child.stdin.take();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                if let (Some(pipe), false) = (stdin.as_mut(), msg.stdin.is_empty()) {
                    if pipe.write_all(&msg.stdin).await.is_err() {
                        stdin = None;
                    }
                }
                if msg.close_stdin {
                    stdin = None;
                }
            }
        });
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let out =
            pump(child.stdout.take().expect("piped"), tx.clone(), |b| ExecOutput { stdout: b, ..Default::default() });
        let err =
            pump(child.stderr.take().expect("piped"), tx.clone(), |b| ExecOutput { stderr: b, ..Default::default() });
        tokio::spawn(async move {
            // The helper is killed if the caller goes away first (kill_on_drop).
            let status = tokio::select! {
                s = child.wait() => s,
                _ = tx.closed() => return,
            };
            let _ = tokio::join!(out, err);
            let code = status.ok().and_then(|s| s.code()).unwrap_or(NOT_STARTED);
            let error = match code {
                NOT_STARTED => runtime_error(&command[0], &std::fs::read_to_string(&errors).unwrap_or_default()),
                _ => String::new(),
            };
            let _ = std::fs::remove_file(&errors);
            let _ = tx.send(Ok(ExecOutput { exit: Some(ExecExit { code, error }), ..Default::default() })).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Why a command could not start, as runc words it to kubectl users (`OCI runtime exec failed:
/// exec failed: unable to start container process: exec: "nosuch": executable file not found
/// in $PATH: unknown`), from libcontainer's report.
fn runtime_error(program: &str, said: &str) -> String {
    let why = if said.contains("not found in $PATH") || said.contains("No such file") {
        format!("exec: {program:?}: executable file not found in $PATH")
    } else if said.contains("Permission denied") || said.contains("does not have correct permissions") {
        format!("exec: {program:?}: permission denied")
    } else {
        said.trim().to_string()
    };
    format!("OCI runtime exec failed: exec failed: unable to start container process: {why}: unknown")
}

/// Where one exec's helper writes why it could not start the command.
fn tempfile_path(dir: &std::path::Path) -> PathBuf {
    dir.join(format!("exec-{:016x}.err", rand::random::<u64>()))
}

/// Sends what `pipe` gives, chunk by chunk, until it ends or the receiver is gone.
fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    tx: tokio::sync::mpsc::Sender<Result<ExecOutput, Status>>,
    wrap: fn(Vec<u8>) -> ExecOutput,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(Ok(wrap(buf[..n].to_vec()))).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}
