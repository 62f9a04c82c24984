//! `skiff.api.PodExec` on the masters: authorizes `create pods/exec` (as Kubernetes), finds the
//! node running the pod, and relays the caller's streams to the node daemon and back (over the
//! same authenticated master→node channel as logs: the node answers only the masters).

use crate::service::Api;
use skiff_proto::api::pod_exec_client::PodExecClient;
use skiff_proto::api::pod_exec_server::PodExec;
use skiff_proto::api::{ExecInput, ExecOutput, ExecStart};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub struct PodExecService {
    pub api: Arc<Api>,
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, Status>> + Send>>;

#[tonic::async_trait]
impl PodExec for PodExecService {
    type ExecStream = OutputStream;

    async fn exec(&self, req: Request<Streaming<ExecInput>>) -> Result<Response<OutputStream>, Status> {
        // The caller is judged on the request without its stream (which is not Sync).
        let (metadata, extensions, mut input) = req.into_parts();
        let caller = Request::from_parts(metadata, extensions, ());
        let user = self.api.authenticate(&caller).await?;
        let start = input
            .message()
            .await?
            .and_then(|m| m.start)
            .ok_or_else(|| Status::invalid_argument("an exec starts with what to run (start)"))?;
        let from = caller.metadata().clone();
        let rest = input.map_while(Result::ok);
        let output = relay(&self.api, &user, start, &from, rest).await?;
        Ok(Response::new(Box::pin(output)))
    }
}

/// Authorizes `create pods/exec` for `user`, then opens the exec on the pod's node: `start`,
/// followed by `rest` (stdin, its end, resizes), relayed as they come.
pub(crate) async fn relay(
    api: &Api,
    user: &crate::auth::User,
    mut start: ExecStart,
    from: &tonic::metadata::MetadataMap,
    rest: impl Stream<Item = ExecInput> + Send + 'static,
) -> Result<Streaming<ExecOutput>, Status> {
    if start.namespace.is_empty() {
        start.namespace = "default".into();
    }
    if start.tty {
        return Err(Status::invalid_argument("a terminal (tty) is not served yet: run the command without one"));
    }
    let (pod, node) = crate::logs::scheduled_pod(api, user, "create", "exec", &start.namespace, &start.name).await?;
    let phase = pod.pointer("/status/phase").and_then(|v| v.as_str()).unwrap_or("Pending");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(Status::failed_precondition(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    // A node that does not answer is the server's failure, not a reason for the client to try
    // the exec on another master (its stdin may have been read): Kubernetes' "error dialing
    // backend", at once.
    let unreachable = |e: Status| match e.code() {
        tonic::Code::Unavailable => Status::internal(format!("error dialing backend: {}", e.message())),
        _ => e,
    };
    let channel = crate::logs::node_channel(api, &node).await.map_err(unreachable)?;
    let first = ExecInput { start: Some(start), ..Default::default() };
    let input = tokio_stream::once(first).chain(rest);
    let req = crate::logs::forward(api, from, input);
    Ok(PodExecClient::new(channel).exec(req).await.map_err(unreachable)?.into_inner())
}
