//! `metrics.k8s.io/v1beta1`, what `kubectl top` reads: NodeMetrics and PodMetrics from the
//! node daemons' cgroup samples (each daemon's NodeMetrics service), gathered by the master
//! that answers. Node figures need `get nodes/metrics` (as `skiff top` does); pod figures need
//! `list pods` in the namespace. A node that does not answer in time is left out, as
//! metrics-server leaves out nodes it could not scrape.

use crate::auth::{Attributes, User};
use crate::error::{ApiError, ApiResult};
use crate::kinds;
use crate::registry::ListOptions;
use crate::service::Api;
use serde_json::{json, Value};
use skiff_proto::api::{NodeUsage, PodUsage};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";

/// How long a node has to answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

fn cpu(millicores: i64) -> String {
    format!("{millicores}m")
}

fn memory(bytes: i64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn window(u: &NodeUsage) -> String {
    format!("{}s", u.window_seconds.max(1))
}

/// The latest samples of `nodes`, asked of each concurrently.
async fn usages(api: &Api, nodes: BTreeSet<String>, from: &tonic::metadata::MetadataMap) -> Vec<NodeUsage> {
    let asks = nodes.into_iter().map(|node| async move {
        tokio::time::timeout(NODE_TIMEOUT, crate::logs::node_usage(api, &node, from)).await.ok()?.ok()
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

fn node_metrics(u: &NodeUsage) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": {"name": u.node, "creationTimestamp": u.timestamp},
        "timestamp": u.timestamp,
        "window": window(u),
        "usage": {"cpu": cpu(u.cpu_millicores), "memory": memory(u.memory_bytes)},
    })
}

fn pod_metrics(node: &NodeUsage, p: &PodUsage, labels: &Value) -> Value {
    let containers: Vec<Value> = p
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "usage": {"cpu": cpu(c.cpu_millicores), "memory": memory(c.memory_bytes)}}))
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": labels, "creationTimestamp": node.timestamp},
        "timestamp": node.timestamp,
        "window": window(node),
        "containers": containers,
    })
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": GROUP_VERSION, "metadata": {}, "items": items})
}

/// `GET /apis/metrics.k8s.io/v1beta1/…`: `nodes[/{name}]`, `pods`,
/// `namespaces/{ns}/pods[/{name}]`; `labelSelector` filters by the node's or pod's labels.
pub async fn serve(
    api: &Api,
    user: &User,
    from: &tonic::metadata::MetadataMap,
    rest: &[&str],
    label_selector: &str,
) -> ApiResult<Value> {
    let opts = ListOptions { label_selector: label_selector.to_string(), ..Default::default() };
    match rest {
        ["nodes"] | ["nodes", _] => {
            let name = rest.get(1).copied().unwrap_or_default();
            let nodes = kinds::by_resource("nodes")?;
            let a = Attributes { verb: "get", info: nodes, subresource: "metrics", namespace: "", name };
            api.authorize(user, &a, None, None).await?;
            let wanted: BTreeSet<String> = if name.is_empty() {
                let page = api.registry.list(nodes, "", &opts).await?;
                page.items.iter().map(|n| crate::object::name(&n.object).to_string()).collect()
            } else {
                api.registry.get(nodes, "", name).await?;
                BTreeSet::from([name.to_string()])
            };
            let items: Vec<Value> = usages(api, wanted, from).await.iter().map(node_metrics).collect();
            if name.is_empty() {
                return Ok(list("NodeMetrics", items));
            }
            items
                .into_iter()
                .next()
                .ok_or_else(|| ApiError::NotFound { resource: "nodes.metrics.k8s.io".into(), name: name.into() })
        }
        ["pods"] | ["namespaces", _, "pods"] | ["namespaces", _, "pods", _] => {
            let ns = if rest.len() > 1 { rest[1] } else { "" };
            let name = rest.get(3).copied().unwrap_or_default();
            let pods = kinds::by_resource("pods")?;
            let a = Attributes { verb: "list", info: pods, subresource: "", namespace: ns, name: "" };
            api.authorize(user, &a, None, None).await?;
            let page = api.registry.list(pods, ns, &opts).await?;
            // The pods asked about, by namespace and name, with their labels; and their nodes.
            let mut wanted: BTreeMap<(String, String), Value> = BTreeMap::new();
            let mut nodes = BTreeSet::new();
            for item in &page.items {
                let pod = &item.object;
                if !name.is_empty() && crate::object::name(pod) != name {
                    continue;
                }
                let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
                if !node.is_empty() {
                    nodes.insert(node.to_string());
                }
                let key = (crate::object::namespace(pod).to_string(), crate::object::name(pod).to_string());
                wanted.insert(key, pod.pointer("/metadata/labels").cloned().unwrap_or(json!({})));
            }
            let mut items = Vec::new();
            for node in usages(api, nodes, from).await {
                for p in &node.pods {
                    if let Some(labels) = wanted.get(&(p.namespace.clone(), p.name.clone())) {
                        items.push(pod_metrics(&node, p, labels));
                    }
                }
            }
            if name.is_empty() {
                return Ok(list("PodMetrics", items));
            }
            items
                .into_iter()
                .next()
                .ok_or_else(|| ApiError::NotFound { resource: "pods.metrics.k8s.io".into(), name: name.into() })
        }
        _ => Err(ApiError::NotFoundPath(rest.join("/"))),
    }
}
