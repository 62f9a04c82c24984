//! `skiff.api.PodLogs` and `skiff.api.NodeMetrics` on the masters: authorizes `get pods/log`,
//! finds the node running the pod, and relays the node daemon's log stream. The master dials
//! the node over TLS, verifies the node's serving certificate against the cluster CA (for the
//! address the Node's status names) and presents its own client certificate: a user's token
//! never leaves the masters, so a Node status pointing elsewhere collects nothing. Only an
//! `--insecure` cluster relays in plaintext, forwarding the caller's token for the node to
//! check.

use crate::auth::Attributes;
use crate::error::ApiError;
use crate::kinds;
use crate::service::Api;
use skiff_proto::api::node_metrics_client::NodeMetricsClient;
use skiff_proto::api::node_metrics_server::NodeMetrics;
use skiff_proto::api::pod_logs_client::PodLogsClient;
use skiff_proto::api::pod_logs_server::PodLogs;
use skiff_proto::api::{NodeUsage, NodeUsageRequest, PodLogChunk, PodLogRequest};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// A channel to a node daemon's server (its InternalIP and published port).
pub(crate) async fn node_channel(api: &Api, node_name: &str) -> Result<tonic::transport::Channel, Status> {
    let node = api.registry.get(kinds::by_resource("nodes")?, "", node_name).await?;
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(|p| p.as_u64()).unwrap_or(0);
    let address = node
        .pointer("/status/addresses")
        .and_then(|a| a.as_array())
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .unwrap_or_default()
        .to_string();
    if port == 0 || address.is_empty() {
        return Err(Status::unavailable(format!("node {node_name} does not publish an endpoint")));
    }
    let scheme = if api.node_client.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}:{port}"))
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(3));
    if let Some(tls) = &api.node_client {
        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    endpoint.connect().await.map_err(|e| Status::unavailable(format!("node {node_name} at {address}:{port}: {e:?}")))
}

/// A request relayed to a node: over TLS it carries nothing of the caller's (the node knows
/// the master by its certificate); only an `--insecure` cluster forwards the caller's token.
pub(crate) fn forward<T>(api: &Api, from: &tonic::metadata::MetadataMap, body: T) -> Request<T> {
    let mut req = Request::new(body);
    if api.node_client.is_none() {
        if let Some(auth) = from.get("authorization") {
            req.metadata_mut().insert("authorization", auth.clone());
        }
    }
    req
}

/// The latest usage sample of one node, asked of its daemon (the caller already authorized).
pub(crate) async fn node_usage(
    api: &Api,
    node: &str,
    from: &tonic::metadata::MetadataMap,
) -> Result<NodeUsage, Status> {
    let channel = node_channel(api, node).await?;
    let r = NodeUsageRequest { node: node.to_string() };
    Ok(NodeMetricsClient::new(channel).usage(forward(api, from, r)).await?.into_inner())
}

/// `skiff.api.NodeMetrics` on the masters: authorizes `get nodes/metrics` and relays to the
/// node's own metrics.
pub struct NodeMetricsService {
    pub api: Arc<Api>,
}

#[tonic::async_trait]
impl NodeMetrics for NodeMetricsService {
    async fn usage(&self, req: Request<NodeUsageRequest>) -> Result<Response<NodeUsage>, Status> {
        let user = self.api.authenticate(&req).await?;
        let node = req.get_ref().node.clone();
        let nodes = kinds::by_resource("nodes")?;
        let a = Attributes { verb: "get", info: nodes, subresource: "metrics", namespace: "", name: &node };
        self.api.authorize(&user, &a, None, None).await?;
        Ok(Response::new(node_usage(&self.api, &node, req.metadata()).await?))
    }
}

pub struct PodLogsService {
    pub api: Arc<Api>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<PodLogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl PodLogs for PodLogsService {
    type GetStream = ChunkStream;

    async fn get(&self, req: Request<PodLogRequest>) -> Result<Response<ChunkStream>, Status> {
        let user = self.api.authenticate(&req).await?;
        let stream = open(&self.api, &user, req.get_ref().clone(), req.metadata()).await?;
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Authorizes `get pods/log` for `user` and opens the log stream on the pod's node.
async fn open(
    api: &Api,
    user: &crate::auth::User,
    mut r: PodLogRequest,
    from: &tonic::metadata::MetadataMap,
) -> Result<tonic::Streaming<PodLogChunk>, Status> {
    if r.namespace.is_empty() {
        r.namespace = "default".into();
    }
    let (_, node) = scheduled_pod(api, user, "get", "log", &r.namespace, &r.name).await?;
    let channel = node_channel(api, &node).await?;
    Ok(PodLogsClient::new(channel).get(forward(api, from, r)).await?.into_inner())
}

/// Authorizes `verb` on the pod subresource `sub` (`get pods/log`, `create pods/exec`) for
/// `user`, and reads the pod: it and the node it is bound to; a pod not bound yet is refused.
pub(crate) async fn scheduled_pod(
    api: &Api,
    user: &crate::auth::User,
    verb: &str,
    sub: &str,
    ns: &str,
    name: &str,
) -> Result<(serde_json::Value, String), Status> {
    let pods = kinds::by_resource("pods")?;
    let a = Attributes { verb, info: pods, subresource: sub, namespace: ns, name };
    api.authorize(user, &a, None, None).await?;
    let pod = api.registry.get(pods, ns, name).await?;
    let node = pod.pointer("/spec/nodeName").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    if node.is_empty() {
        return Err(Status::failed_precondition(format!("pod \"{name}\" is not scheduled to a node yet")));
    }
    Ok((pod, node))
}

/// `GET …/pods/{name}/log` over REST: the log as plain text, streamed while `follow`.
pub async fn rest_log(
    api: &Api,
    user: &crate::auth::User,
    headers: &http::HeaderMap,
    ns: &str,
    name: &str,
    query: &std::collections::HashMap<String, String>,
) -> crate::ApiResult<http::Response<axum::body::Body>> {
    let flag = |k: &str| query.get(k).is_some_and(|v| v == "true" || v == "1");
    let int = |k: &str| -> crate::ApiResult<Option<i64>> {
        query
            .get(k)
            .filter(|v| !v.is_empty())
            .map(|v| v.parse().map_err(|_| ApiError::BadRequest(format!("{k}: {v:?} is not an integer"))))
            .transpose()
    };
    let r = PodLogRequest {
        namespace: ns.to_string(),
        name: name.to_string(),
        container: query.get("container").cloned().unwrap_or_default(),
        follow: flag("follow"),
        tail_lines: int("tailLines")?,
        since_seconds: int("sinceSeconds")?,
        previous: flag("previous"),
        timestamps: flag("timestamps"),
    };
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let stream = open(api, user, r, &metadata).await.map_err(|s| match s.code() {
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => ApiError::BadRequest(s.message().to_string()),
        tonic::Code::NotFound => ApiError::NotFound { resource: "pods".into(), name: name.to_string() },
        tonic::Code::PermissionDenied => ApiError::Forbidden(s.message().to_string()),
        tonic::Code::Unauthenticated => ApiError::Unauthenticated(s.message().to_string()),
        _ => ApiError::Internal(s.message().to_string()),
    })?;
    let body = tokio_stream::StreamExt::map(stream, |chunk| {
        chunk.map(|c| prost::bytes::Bytes::from(c.data)).map_err(|s| std::io::Error::other(s.message().to_string()))
    });
    let mut response = http::Response::new(axum::body::Body::from_stream(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    Ok(response)
}
