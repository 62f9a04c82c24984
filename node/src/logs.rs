//! The node's log server: `skiff.api.PodLogs` over its container log files, which masters
//! proxy `skiff logs` to. Who may call it is [`Callers`]: with TLS (every `skiff up` cluster)
//! only the masters, by their kubelet-client certificate; the masters have authorized the
//! user already, and no user's token ever reaches a node. Without TLS (an `--insecure`
//! cluster) authorization is delegated, as the kubelet's webhook mode does: the caller's
//! forwarded bearer token must be allowed to `get` the object through the API.
//!
//! Files are the shims' CRI-format logs, `<time> stdout|stderr F <line>`, one per container
//! run (`--previous` is the run before the latest), rotated once to `container.log.1`.

use crate::instance;
use serde_json::Value;
use skiff_proto::api::pod_logs_server::PodLogs;
use skiff_proto::api::{PodLogChunk, PodLogRequest};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct LogServer {
    pub root: PathBuf,
    pub callers: Callers,
}

/// The common name of the masters' client certificate for node servers (Kubernetes' API
/// server presents one to kubelets).
pub const MASTER_CLIENT_CN: &str = "system:kube-apiserver";

/// Who the node's server answers.
#[derive(Clone)]
pub enum Callers {
    /// The server speaks TLS and requires a client certificate from the cluster CA: only the
    /// masters' (CN [`MASTER_CLIENT_CN`]) is answered.
    Masters,
    /// Plaintext (an `--insecure` cluster): the caller's forwarded token, checked against the
    /// masters' API (their endpoints and CA from this client configuration).
    Delegated(skiff_client::ClientConfig),
}

impl Callers {
    /// Authorizes a request to read `resource` `ns/name`.
    pub async fn authorize<T>(&self, req: &Request<T>, resource: &str, ns: &str, name: &str) -> Result<(), Status> {
        match self {
            Callers::Masters => {
                let cn = skiff_proto::cert::client_subject(req)
                    .map(|s| s.common_name)
                    .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
                if cn != MASTER_CLIENT_CN {
                    return Err(Status::permission_denied(format!(
                        "{cn:?} may not call this node; only the masters ({MASTER_CLIENT_CN})"
                    )));
                }
                Ok(())
            }
            Callers::Delegated(masters) => authorize_delegated(masters, req.metadata(), resource, ns, name).await,
        }
    }
}

/// One CRI log line: (time, stream, text).
pub fn parse_line(line: &str) -> Option<(&str, &str, &str)> {
    let mut f = line.splitn(4, ' ');
    let (time, stream, _tag, text) = (f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
    Some((time, stream, text))
}

/// The lines a request asks for, from the full text of a run's log.
pub fn select(text: &str, tail: Option<i64>, since: Option<i64>, now: i64, timestamps: bool) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter_map(parse_line)
        .filter(|(time, _, _)| {
            since.is_none_or(|s| skiff_proto::time::parse_rfc3339(time).is_some_and(|t| t >= now - s))
        })
        .map(|(time, _, text)| if timestamps { format!("{time} {text}") } else { text.to_string() })
        .collect();
    if let Some(n) = tail {
        let n = n.max(0) as usize;
        lines.drain(..lines.len().saturating_sub(n));
    }
    lines
}

fn find_pod(root: &Path, ns: &str, name: &str) -> Option<(PathBuf, Value)> {
    std::fs::read_dir(root.join("pods")).ok()?.flatten().find_map(|e| {
        let pod: Value = serde_json::from_slice(&std::fs::read(e.path().join("pod.json")).ok()?).ok()?;
        let m = &pod["metadata"];
        (m["name"] == name && m["namespace"].as_str().unwrap_or("default") == ns).then(|| (e.path(), pod))
    })
}

fn container_names(pod: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<PodLogChunk, Status>> + Send>>;

/// The container of pod `ns/name` a request names (`container`; may be empty when the pod
/// has one app container) and its runs on this node, oldest first.
pub(crate) fn container_runs(
    root: &Path,
    ns: &str,
    name: &str,
    container: &str,
) -> Result<(String, Vec<instance::Instance>), Status> {
    let (dir, pod) = find_pod(root, ns, name)
        .ok_or_else(|| Status::not_found(format!("pod \"{name}\" has no containers on this node yet")))?;
    let names = container_names(&pod);
    let app: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let container = match (container, app.as_slice()) {
        ("", [only]) => only.clone(),
        ("", _) => {
            return Err(Status::invalid_argument(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )))
        }
        (c, _) if names.iter().any(|n| n == c) => c.to_string(),
        (c, _) => return Err(Status::invalid_argument(format!("container {c} is not valid for pod {name}"))),
    };
    let runs = instance::instances(&dir, &container);
    Ok((container, runs))
}

/// Delegated authorization: the caller's bearer token must be allowed to `get` the object
/// through the masters' API.
async fn authorize_delegated(
    masters: &skiff_client::ClientConfig,
    md: &tonic::metadata::MetadataMap,
    resource: &str,
    ns: &str,
    name: &str,
) -> Result<(), Status> {
    let token = md
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
    let mut config = masters.clone();
    config.token = Some(token.to_string());
    let client = skiff_client::Client::new(config)?;
    client.get(resource, ns, name).await.map(|_| ())
}

impl LogServer {
    async fn authorize(&self, req: &Request<PodLogRequest>) -> Result<(), Status> {
        let r = req.get_ref();
        self.callers.authorize(req, "pods", &r.namespace, &r.name).await
    }

    /// The log file of the run a request names.
    fn run_log(&self, r: &PodLogRequest) -> Result<(instance::Instance, Vec<PathBuf>), Status> {
        let ns = if r.namespace.is_empty() { "default" } else { r.namespace.as_str() };
        let (container, runs) = container_runs(&self.root, ns, &r.name, &r.container)?;
        let run = if r.previous {
            runs.len().checked_sub(2).map(|i| runs[i].clone()).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "previous terminated container \"{container}\" in pod \"{}\" not found",
                    r.name
                ))
            })?
        } else {
            runs.last().cloned().ok_or_else(|| {
                Status::invalid_argument(format!(
                    "container \"{container}\" in pod \"{}\" is waiting to start: ContainerCreating",
                    r.name
                ))
            })?
        };
        let log = run.log();
        let files = vec![log.with_extension("log.1"), log];
        Ok((run, files))
    }
}

#[tonic::async_trait]
impl PodLogs for LogServer {
    type GetStream = ChunkStream;

    async fn get(&self, req: Request<PodLogRequest>) -> Result<Response<ChunkStream>, Status> {
        self.authorize(&req).await?;
        let r = req.into_inner();
        let (run, files) = self.run_log(&r)?;
        let mut text = String::new();
        for f in &files {
            text += &tokio::fs::read_to_string(f).await.unwrap_or_default();
        }
        let now = skiff_proto::time::now_secs();
        let first: Vec<String> = select(&text, r.tail_lines, r.since_seconds, now, r.timestamps);
        let mut initial = first.join("\n");
        if !first.is_empty() {
            initial.push('\n');
        }
        let log = files[1].clone();
        let offset = tokio::fs::metadata(&log).await.map(|m| m.len()).unwrap_or(0);
        let stream = async_stream(initial, r.follow, run, log, offset, r.timestamps);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The initial text, then (with follow) each line appended while the run lives.
fn async_stream(
    initial: String,
    follow: bool,
    run: instance::Instance,
    log: PathBuf,
    offset: u64,
    timestamps: bool,
) -> impl Stream<Item = Result<PodLogChunk, Status>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<PodLogChunk, Status>>(16);
    tokio::spawn(async move {
        if !initial.is_empty() && tx.send(Ok(PodLogChunk { data: initial.into_bytes() })).await.is_err() {
            return;
        }
        if !follow {
            return;
        }
        let Ok(mut file) = tokio::fs::File::open(&log).await else { return };
        if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            return;
        }
        let mut reader = tokio::io::BufReader::new(file);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) => {
                    // At the end: done once the run has exited and everything is read.
                    if run.dir.join("exit.json").exists() {
                        let mut rest = String::new();
                        while reader.read_line(&mut rest).await.unwrap_or(0) > 0 {}
                        if let Some(data) = render(&rest, timestamps) {
                            let _ = tx.send(Ok(PodLogChunk { data })).await;
                        }
                        return;
                    }
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(_) if line.ends_with('\n') => {
                    if let Some(data) = render(&line, timestamps) {
                        if tx.send(Ok(PodLogChunk { data })).await.is_err() {
                            return;
                        }
                    }
                }
                // A partial line: wait for the rest.
                Ok(_) => {
                    let mut rest = String::new();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = reader.read_line(&mut rest).await;
                    line.push_str(&rest);
                    if let Some(data) = render(&line, timestamps) {
                        if tx.send(Ok(PodLogChunk { data })).await.is_err() {
                            return;
                        }
                    }
                }
                Err(_) => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn render(text: &str, timestamps: bool) -> Option<Vec<u8>> {
    let out: String = text
        .lines()
        .filter_map(parse_line)
        .map(|(time, _, line)| if timestamps { format!("{time} {line}\n") } else { format!("{line}\n") })
        .collect();
    (!out.is_empty()).then(|| out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-11-22T10:00:00.1Z stdout F one\n2026-11-22T10:00:05.2Z stderr F two\n2026-11-22T10:00:09.3Z stdout F three\n";

    #[test]
    fn tail_since_and_timestamps_select_like_kubectl() {
        let now = skiff_proto::time::parse_rfc3339("2026-11-22T10:00:10Z").unwrap();
        assert_eq!(select(LOG, None, None, now, false), ["one", "two", "three"]);
        assert_eq!(select(LOG, Some(2), None, now, false), ["two", "three"]);
        assert_eq!(select(LOG, Some(0), None, now, false), Vec::<String>::new());
        assert_eq!(select(LOG, None, Some(6), now, false), ["two", "three"]);
        assert_eq!(select(LOG, Some(1), None, now, true), ["2026-11-22T10:00:09.3Z three"]);
    }
}
