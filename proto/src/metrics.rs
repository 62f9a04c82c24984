//! One process's Prometheus metrics: every part of a master (store, API, controllers,
//! scheduler) or of a node daemon registers its metrics here, and `/metrics` serves them all
//! in one text exposition (OpenMetrics, as `prometheus-client` encodes it). Names follow
//! etcd's and Kubernetes' where one exists, so their dashboards and alerts read Skiff.

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};
use std::sync::Mutex;

/// The content type of [`Metrics::text`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Refresh = Box<dyn Fn() + Send + Sync>;

/// A process's registry, shared by its parts.
#[derive(Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Run before each exposition, for gauges read from state rather than kept (sizes, leader).
    refreshers: Mutex<Vec<Refresh>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Adds `metric` (a counter's name without `_total`: the encoding appends it).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().expect("metrics lock").register(name, help, metric);
    }

    /// Runs `refresh` before every exposition (to set gauges from the state they describe).
    pub fn on_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.refreshers.lock().expect("metrics lock").push(Box::new(refresh));
    }

    /// Everything registered, in the text format.
    pub fn text(&self) -> String {
        for refresh in self.refreshers.lock().expect("metrics lock").iter() {
            refresh();
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().expect("metrics lock"));
        out
    }
}

/// etcd's latency buckets (its disk histograms): 1 ms doubling to about 8 s.
pub fn disk_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Kubernetes' request and scheduling latency buckets: 5 ms to 60 s.
pub fn request_seconds() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

/// The answer to `GET /metrics`: the exposition, or the refusal (401, 403) and why.
pub fn http_answer(exposition: Result<String, tonic::Status>) -> http::Response<String> {
    let (code, content_type, body) = match exposition {
        Ok(text) => (http::StatusCode::OK, CONTENT_TYPE, text),
        Err(status) => {
            let code = match status.code() {
                tonic::Code::Unauthenticated => http::StatusCode::UNAUTHORIZED,
                tonic::Code::PermissionDenied => http::StatusCode::FORBIDDEN,
                _ => http::StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, "text/plain; charset=utf-8", format!("{}\n", status.message()))
        }
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// An HTTP request's head as a gRPC request (its headers as metadata, the connection's TLS
/// details in its extensions), for the authentication a gRPC service does.
pub fn as_grpc_request<B>(req: http::Request<B>) -> tonic::Request<()> {
    let (parts, _) = req.into_parts();
    tonic::Request::from_parts(tonic::metadata::MetadataMap::from_headers(parts.headers), parts.extensions, ())
}

/// Seconds since `start`, for a histogram.
pub fn since(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// What a [`ObserveLayer`] is told of each gRPC call: its path, what the call said it acted
/// on ([`note_target`]), the code in its response head (tonic answers a unary call's error in
/// its head; a head without one is `OK`) and the time to that head.
pub type Observer = std::sync::Arc<dyn Fn(&str, Option<&str>, tonic::Code, std::time::Duration) + Send + Sync>;

tokio::task_local! {
    static TARGET: std::cell::RefCell<Option<String>>;
}

/// Within a call an [`ObserveLayer`] observes: names what the call acts on (a resource, as
/// `deployments` or `pods/status`), for calls whose path does not say (a generic service).
pub fn note_target(target: &str) {
    let _ = TARGET.try_with(|t| *t.borrow_mut() = Some(target.to_string()));
}

/// A tower layer for a gRPC server that reports each call to an [`Observer`].
#[derive(Clone)]
pub struct ObserveLayer(pub Observer);

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, observer: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    observer: Observer,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let observer = self.observer.clone();
        let start = std::time::Instant::now();
        let call = self.inner.call(req);
        Box::pin(TARGET.scope(std::cell::RefCell::new(None), async move {
            let response = call.await?;
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from);
            let target = TARGET.with(|t| t.borrow_mut().take());
            observer(&path, target.as_deref(), code, start.elapsed());
            Ok(response)
        }))
    }
}
