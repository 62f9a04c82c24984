//! The API server's metrics, kept with `prometheus-client` and served in Prometheus' text
//! format by `skiff.api.ApiMetrics` to the `system:masters` and `system:monitoring` groups
//! (Kubernetes grants its `/metrics` to the latter).
//!
//! - `skiff_apiserver_lists_total{resource, selector}`: list calls served, by resource and by
//!   which selectors narrowed them (`none`, `labels`, `fields`, `both`) — how a test sees that
//!   nothing re-lists the world while nothing changes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use skiff_proto::api::api_metrics_server::ApiMetrics;
use skiff_proto::api::{ApiMetricsRequest, ApiMetricsText};
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabels {
    resource: String,
    selector: String,
}

pub struct Metrics {
    registry: Registry,
    lists: Family<ListLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let lists = Family::<ListLabels, Counter>::default();
        registry.register("skiff_apiserver_lists", "List calls served, by resource and selectors", lists.clone());
        Metrics { registry, lists }
    }
}

impl Metrics {
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

    /// Everything, in Prometheus' text format.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The groups whose members may read the metrics.
const READERS: [&str; 2] = ["system:masters", "system:monitoring"];

pub struct MetricsService {
    pub api: Arc<crate::service::Api>,
}

#[tonic::async_trait]
impl ApiMetrics for MetricsService {
    async fn get(&self, req: Request<ApiMetricsRequest>) -> Result<Response<ApiMetricsText>, Status> {
        let user = self.api.authenticate(&req).await?;
        if !user.groups.iter().any(|g| READERS.contains(&g.as_str())) {
            return Err(Status::permission_denied(format!(
                "user {:?} may not read the API server's metrics: that takes membership of {}",
                user.name,
                READERS.join(" or ")
            )));
        }
        Ok(Response::new(ApiMetricsText { text: self.api.registry.metrics.text() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_counted_by_resource_and_selector() {
        let m = Metrics::default();
        m.listed("pods", "", "");
        m.listed("pods", "", "");
        m.listed("pods", "", "spec.nodeName=a");
        let text = m.text();
        assert!(text.contains(r#"skiff_apiserver_lists_total{resource="pods",selector="none"} 2"#), "{text}");
        assert!(text.contains(r#"skiff_apiserver_lists_total{resource="pods",selector="fields"} 1"#), "{text}");
    }
}
