//! `skiff.api.PodLogs` on the masters: authorizes `get pods/log`, finds the node running the
//! pod, and relays the node daemon's log stream (forwarding the caller's credentials, which the
//! node checks back against the API).

use crate::auth::Attributes;
use crate::error::ApiError;
use crate::kinds;
use crate::service::Api;
use skiff_proto::api::pod_logs_client::PodLogsClient;
use skiff_proto::api::pod_logs_server::PodLogs;
use skiff_proto::api::{PodLogChunk, PodLogRequest};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct PodLogsService {
    pub api: Arc<Api>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<PodLogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl PodLogs for PodLogsService {
    type GetStream = ChunkStream;

    async fn get(&self, req: Request<PodLogRequest>) -> Result<Response<ChunkStream>, Status> {
        let user = self.api.authenticate(req.metadata())?;
        let mut r = req.get_ref().clone();
        if r.namespace.is_empty() {
            r.namespace = "default".into();
        }
        let pods = kinds::by_resource("pods")?;
        let a = Attributes { verb: "get", info: pods, subresource: "log", namespace: &r.namespace, name: &r.name };
        self.api.authorize(&user, &a, None).await?;
        let pod = self.api.registry.get(pods, &r.namespace, &r.name).await?;
        let node_name = pod.pointer("/spec/nodeName").and_then(|v| v.as_str()).unwrap_or_default();
        if node_name.is_empty() {
            return Err(Status::failed_precondition(format!("pod \"{}\" is not scheduled to a node yet", r.name)));
        }
        let node = self.api.registry.get(kinds::by_resource("nodes")?, "", node_name).await?;
        let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(|p| p.as_u64()).unwrap_or(0);
        let address = node
            .pointer("/status/addresses")
            .and_then(|a| a.as_array())
            .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
            .and_then(|x| x["address"].as_str())
            .unwrap_or_default()
            .to_string();
        if port == 0 || address.is_empty() {
            return Err(Status::unavailable(format!("node {node_name} does not publish a log endpoint")));
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}:{port}"))
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(3));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("node {node_name} log server {address}:{port}: {e}")))?;
        let mut forwarded = Request::new(r);
        if let Some(auth) = req.metadata().get("authorization") {
            forwarded.metadata_mut().insert("authorization", auth.clone());
        }
        let stream = PodLogsClient::new(channel).get(forwarded).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}
