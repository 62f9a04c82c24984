//! The API server's metrics, kept with `prometheus-client` in the master process's registry
//! (`Master::metrics`, [`skiff_proto::metrics`]) under Kubernetes' names, and served whole —
//! the store's, controllers' and scheduler's too — by `GET /metrics` on the client listener
//! and by `skiff.api.ApiMetrics`, to the `system:masters` and `system:monitoring` groups
//! (Kubernetes grants its `/metrics` to the latter).
//!
//! - `apiserver_request_total{verb, resource, subresource, code}` and
//!   `apiserver_request_duration_seconds{verb, resource, subresource}`: API calls by
//!   Kubernetes' verb (`GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `DELETE`) and the HTTP
//!   code Kubernetes answers with; a watch's duration is the time to its first response.
//! - `apiserver_watch_events_total{group, version, kind}`: events sent to watchers.
//! - `skiff_apiserver_lists_total{resource, selector}`: list calls served, by resource and by
//!   which selectors narrowed them (`none`, `labels`, `fields`, `both`) — how a test sees that
//!   nothing re-lists the world while nothing changes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use skiff_proto::api::api_metrics_server::ApiMetrics;
use skiff_proto::api::{ApiMetricsRequest, ApiMetricsText};
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabels {
    resource: String,
    selector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    verb: &'static str,
    resource: String,
    subresource: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    verb: &'static str,
    resource: String,
    subresource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    group: String,
    version: String,
    kind: String,
}

type Latencies = Family<LatencyLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    process: Arc<skiff_proto::metrics::Metrics>,
    lists: Family<ListLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    latencies: Latencies,
    watch_events: Family<WatchLabels, Counter>,
}

impl Metrics {
    /// The API's metrics, registered in the process's `registry`.
    pub fn new(process: Arc<skiff_proto::metrics::Metrics>) -> Self {
        let m = Metrics {
            process,
            lists: Family::default(),
            requests: Family::default(),
            latencies: Family::new_with_constructor(skiff_proto::metrics::request_seconds),
            watch_events: Family::default(),
        };
        m.process.register("skiff_apiserver_lists", "List calls served, by resource and selectors", m.lists.clone());
        m.process.register(
            "apiserver_request",
            "API requests by verb, resource, subresource and HTTP code",
            m.requests.clone(),
        );
        m.process.register(
            "apiserver_request_duration_seconds",
            "API request latency by verb, resource and subresource",
            m.latencies.clone(),
        );
        m.process.register("apiserver_watch_events", "Events sent to watchers, by kind", m.watch_events.clone());
        m
    }

    /// Counts one list of `resource`.
    pub fn listed(&self, resource: &str, label_selector: &str, field_selector: &str) {
        let selector = match (label_selector.is_empty(), field_selector.is_empty()) {
            (true, true) => "none",
            (false, true) => "labels",
            (true, false) => "fields",
            (false, false) => "both",
        };
        self.lists.get_or_create(&ListLabels { resource: resource.into(), selector: selector.into() }).inc();
    }

    /// Counts one event sent to a watcher of objects of `api_version` and `kind`.
    pub fn watch_event(&self, api_version: &str, kind: &str) {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.watch_events
            .get_or_create(&WatchLabels { group: group.into(), version: version.into(), kind: kind.into() })
            .inc();
    }

    /// Counts one answered call of the API at `path` (`/skiff.api.Pods/Get`) that authorized
    /// itself on `target` (`pods`, `deployments/scale`; see `Api::authorize`).
    pub fn request(&self, path: &str, target: Option<&str>, code: tonic::Code, took: std::time::Duration) {
        let Some((service, method)) = path.strip_prefix("/skiff.api.").and_then(|p| p.split_once('/')) else {
            return;
        };
        let (verb, method_subresource) = verb_of(method);
        let (resource, subresource) = match target.map(|t| t.split_once('/').unwrap_or((t, ""))) {
            Some((resource, subresource)) => (
                resource.to_string(),
                if subresource.is_empty() { method_subresource } else { subresource_of(subresource) },
            ),
            // Refused before it said (unauthenticated): the service names the resource.
            None => (service.trim_end_matches("Service").to_lowercase(), method_subresource),
        };
        let latency = LatencyLabels { verb, resource: resource.clone(), subresource };
        self.latencies.get_or_create(&latency).observe(took.as_secs_f64());
        let code = http_code(code, verb);
        self.requests.get_or_create(&RequestLabels { verb, resource, subresource, code }).inc();
    }

    /// Counts one REST call: Kubernetes' `verb` on `resource` (and `subresource`), answered
    /// with the HTTP `code`.
    pub fn rest_request(
        &self,
        verb: &'static str,
        resource: &str,
        subresource: &str,
        code: u16,
        took: std::time::Duration,
    ) {
        let subresource = if subresource.is_empty() { "" } else { subresource_of(subresource) };
        let latency = LatencyLabels { verb, resource: resource.to_string(), subresource };
        self.latencies.get_or_create(&latency).observe(took.as_secs_f64());
        self.requests.get_or_create(&RequestLabels { verb, resource: resource.to_string(), subresource, code }).inc();
    }

    /// Everything the process registered, in the text format.
    pub fn text(&self) -> String {
        self.process.text()
    }
}

/// Kubernetes' verb and subresource of an API method.
fn verb_of(method: &str) -> (&'static str, &'static str) {
    match method {
        "Create" => ("POST", ""),
        "Get" => ("GET", ""),
        "List" => ("LIST", ""),
        "Watch" => ("WATCH", ""),
        "Update" => ("PUT", ""),
        "Patch" => ("PATCH", ""),
        "Delete" => ("DELETE", ""),
        "UpdateStatus" => ("PUT", "status"),
        "GetScale" => ("GET", "scale"),
        "UpdateScale" => ("PUT", "scale"),
        "Bind" => ("POST", "binding"),
        "Evict" => ("POST", "eviction"),
        _ => ("CONNECT", ""),
    }
}

/// A subresource's name as a label (one of a fixed few, so labels stay bounded).
fn subresource_of(name: &str) -> &'static str {
    match name {
        "status" => "status",
        "scale" => "scale",
        "binding" => "binding",
        "eviction" => "eviction",
        "log" => "log",
        "metrics" => "metrics",
        "approval" => "approval",
        _ => "other",
    }
}

/// The HTTP status Kubernetes answers with where Skiff answers `code`.
fn http_code(code: tonic::Code, verb: &str) -> u16 {
    use tonic::Code::*;
    match code {
        Ok if verb == "POST" => 201,
        Ok => 200,
        InvalidArgument => 422,
        NotFound => 404,
        AlreadyExists | Aborted => 409,
        PermissionDenied => 403,
        Unauthenticated => 401,
        ResourceExhausted => 429,
        OutOfRange => 410,
        FailedPrecondition => 400,
        Unimplemented => 405,
        DeadlineExceeded => 504,
        Unavailable => 503,
        Cancelled => 499,
        _ => 500,
    }
}

/// The groups whose members may read the metrics.
const READERS: [&str; 2] = ["system:masters", "system:monitoring"];

/// `GET /metrics`: the process's metrics to a reader ([`READERS`]) who authenticates as for
/// the API (a bearer token or a client certificate).
pub async fn serve(api: Arc<crate::service::Api>, req: http::Request<axum::body::Body>) -> http::Response<String> {
    let req = skiff_proto::metrics::as_grpc_request(req);
    skiff_proto::metrics::http_answer(reader(&api, &req).await.map(|()| api.registry.metrics.text()))
}

/// Whether the caller of `req` may read the metrics.
async fn reader<T>(api: &crate::service::Api, req: &Request<T>) -> Result<(), Status> {
    let user = api.authenticate(req).await?;
    if !user.groups.iter().any(|g| READERS.contains(&g.as_str())) {
        return Err(Status::permission_denied(format!(
            "user {:?} may not read the metrics: that takes membership of {}",
            user.name,
            READERS.join(" or ")
        )));
    }
    Ok(())
}

pub struct MetricsService {
    pub api: Arc<crate::service::Api>,
}

#[tonic::async_trait]
impl ApiMetrics for MetricsService {
    async fn get(&self, req: Request<ApiMetricsRequest>) -> Result<Response<ApiMetricsText>, Status> {
        reader(&self.api, &req).await?;
        Ok(Response::new(ApiMetricsText { text: self.api.registry.metrics.text() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_counted_by_resource_and_selector() {
        let m = Metrics::new(Arc::default());
        m.listed("pods", "", "");
        m.listed("pods", "", "");
        m.listed("pods", "", "spec.nodeName=a");
        let text = m.text();
        assert!(text.contains(r#"skiff_apiserver_lists_total{resource="pods",selector="none"} 2"#), "{text}");
        assert!(text.contains(r#"skiff_apiserver_lists_total{resource="pods",selector="fields"} 1"#), "{text}");
    }

    #[test]
    fn requests_are_counted_by_verb_resource_and_http_code() {
        let m = Metrics::new(Arc::default());
        let ms = std::time::Duration::from_millis(3);
        m.request("/skiff.api.Pods/Create", Some("pods"), tonic::Code::Ok, ms);
        m.request("/skiff.api.Deployments/UpdateScale", None, tonic::Code::Aborted, ms);
        m.request("/skiff.api.EndpointsService/Get", None, tonic::Code::Unauthenticated, ms);
        m.request("/skiff.api.Objects/Create", Some("deployments"), tonic::Code::Ok, ms);
        m.request("/etcdserverpb.KV/Range", None, tonic::Code::Ok, ms);
        let text = m.text();
        let created = r#"apiserver_request_total{verb="POST",resource="pods",subresource="",code="201"} 1"#;
        assert!(text.contains(created), "{text}");
        let conflict = r#"apiserver_request_total{verb="PUT",resource="deployments",subresource="scale",code="409"} 1"#;
        assert!(text.contains(conflict), "{text}");
        let refused = r#"apiserver_request_total{verb="GET",resource="endpoints",subresource="",code="401"} 1"#;
        assert!(text.contains(refused), "a call refused before it named its resource: {text}");
        let raw = r#"apiserver_request_total{verb="POST",resource="deployments",subresource="",code="201"} 1"#;
        assert!(text.contains(raw), "a generic service's call counts as the resource it named: {text}");
        assert!(!text.contains("KV"), "the etcd API is the store's to count: {text}");
        let latency =
            r#"apiserver_request_duration_seconds_bucket{le="0.005",verb="POST",resource="pods",subresource=""} 1"#;
        assert!(text.contains(latency), "{text}");
    }
}
