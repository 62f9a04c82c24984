//! The built-in ingress controller: an HTTP(S) reverse proxy (hyper, rustls) in every node
//! daemon, on the node's address, for the Ingress objects of its classes: those whose
//! IngressClass names Skiff's controller, and those naming no class while the default class
//! is Skiff's (see `skiff_proto::ingress_class`; the API creates the default class `skiff`).
//!
//! - Rules by host (exact or `*.suffix`), then path: `Exact`, `Prefix` (by path element) and
//!   `ImplementationSpecific` (a string prefix, as nginx); the longest path wins. An Ingress's
//!   `defaultBackend` takes what no rule does.
//! - Backends are Services by port number or name; requests go straight to a ready endpoint
//!   (round robin), as ingress-nginx does. A backend with no Service or no ready endpoint
//!   answers 503 and leaves a Warning event on the Ingress.
//! - The common nginx annotations: `use-regex` (paths are case-insensitive regexes anchored at
//!   the start), `rewrite-target` (implies regexes; `$1`… are the path's groups) and
//!   `ssl-redirect` (on by default for a host with TLS: plain HTTP gets a 308 to https).
//! - TLS from the Secrets named in `tls`, chosen by SNI.
//!
//! The routing table is rebuilt from the node's informer caches ([`crate::informers`]) when one
//! of the kinds it reads changes (and every `REFRESH`, which re-reads the TLS Secrets) and
//! swapped in whole: changes apply to the next request, without a restart or a dropped
//! connection. `Table::build` and `Table::route` are pure.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use regex::Regex;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_rustls::rustls;

/// How often the table is rebuilt without being woken by a change: the TLS Secrets are read
/// then (a node may not watch Secrets).
const REFRESH: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Plain(String),
    Regex(String),
}

/// A Service port a route sends to.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    /// The port's number, or its name.
    pub port: Value,
}

#[derive(Clone, Debug)]
struct Route {
    /// (namespace, name) of the Ingress.
    ingress: (String, String),
    host: String,
    path: PathMatch,
    regex: Option<Regex>,
    rewrite: Option<String>,
    ssl_redirect: bool,
    backend: Backend,
}

/// A TLS certificate and key (PEM) for some hosts.
#[derive(Clone, Debug, PartialEq)]
pub struct Tls {
    pub hosts: Vec<String>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Where requests go: routes in match order, default backends, certificates.
#[derive(Clone, Debug, Default)]
pub struct Table {
    routes: Vec<Route>,
    defaults: Vec<((String, String), Backend)>,
    pub tls: Vec<Tls>,
    services: Vec<Value>,
    endpoints: Vec<Value>,
}

/// Where a request was routed.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Send to `backend` with this path (and query).
    Proxy {
        ingress: (String, String),
        backend: Backend,
        path: String,
    },
    /// Redirect plain HTTP to https.
    Redirect(String),
    NotFound,
}

fn annotation<'a>(ing: &'a Value, name: &str) -> Option<&'a str> {
    ing["metadata"]["annotations"][format!("nginx.ingress.kubernetes.io/{name}")].as_str()
}

fn backend_of(ns: &str, b: &Value) -> Option<Backend> {
    let svc = &b["service"];
    let name = svc["name"].as_str()?;
    let port =
        if svc["port"]["number"].is_number() { svc["port"]["number"].clone() } else { svc["port"]["name"].clone() };
    Some(Backend { namespace: ns.into(), service: name.into(), port })
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        // A wildcard covers exactly one more label, as Kubernetes defines it.
        Some(suffix) => host.split_once('.').is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => pattern.is_empty() || pattern == host,
    }
}

impl Table {
    /// The table for the Ingresses Skiff serves given the cluster's IngressClasses (`classes`),
    /// with the Secrets their TLS sections name and the Services and Endpoints behind them.
    pub fn build(
        ingresses: &[Value],
        classes: &[Value],
        secrets: &[Value],
        services: Vec<Value>,
        endpoints: Vec<Value>,
    ) -> Table {
        let mut t = Table { services, endpoints, ..Table::default() };
        for ing in ingresses.iter().filter(|i| skiff_proto::ingress_class::served(i, classes)) {
            let ns = ing["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            let id = (ns.clone(), ing["metadata"]["name"].as_str().unwrap_or_default().to_string());
            let rewrite = annotation(ing, "rewrite-target").map(String::from);
            let regex = rewrite.is_some() || annotation(ing, "use-regex") == Some("true");
            let mut tls_hosts = BTreeSet::new();
            for tls in ing["spec"]["tls"].as_array().into_iter().flatten() {
                let hosts: Vec<String> = tls["hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|h| h.as_str().map(String::from))
                    .collect();
                tls_hosts.extend(hosts.iter().cloned());
                let secret = secrets
                    .iter()
                    .find(|s| s["metadata"]["namespace"] == ns.as_str() && s["metadata"]["name"] == tls["secretName"]);
                let decode = |k: &str| {
                    use base64::Engine;
                    secret
                        .and_then(|s| s["data"][k].as_str())
                        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                };
                if let (Some(cert), Some(key)) = (decode("tls.crt"), decode("tls.key")) {
                    t.tls.push(Tls { hosts, cert, key });
                }
            }
            let redirect_default = annotation(ing, "ssl-redirect").is_none_or(|v| v == "true");
            if let Some(b) = backend_of(&ns, &ing["spec"]["defaultBackend"]) {
                t.defaults.push((id.clone(), b));
            }
            for rule in ing["spec"]["rules"].as_array().into_iter().flatten() {
                let host = rule["host"].as_str().unwrap_or_default().to_string();
                for p in rule["http"]["paths"].as_array().into_iter().flatten() {
                    let Some(backend) = backend_of(&ns, &p["backend"]) else { continue };
                    let path = p["path"].as_str().unwrap_or("/").to_string();
                    let (path, compiled) = if regex {
                        let re = Regex::new(&format!("(?i)^{path}")).ok();
                        (PathMatch::Regex(path), re)
                    } else {
                        match p["pathType"].as_str().unwrap_or("ImplementationSpecific") {
                            "Exact" => (PathMatch::Exact(path), None),
                            "Prefix" => (PathMatch::Prefix(path), None),
                            _ => (PathMatch::Plain(path), None),
                        }
                    };
                    if matches!(path, PathMatch::Regex(_)) && compiled.is_none() {
                        continue;
                    }
                    t.routes.push(Route {
                        ingress: id.clone(),
                        ssl_redirect: redirect_default && tls_hosts.contains(&host),
                        host: host.clone(),
                        path,
                        regex: compiled,
                        rewrite: rewrite.clone(),
                        backend,
                    });
                }
            }
        }
        // Exact hosts, then wildcards, then any host; longer paths first; Exact before others.
        let host_rank = |r: &Route| {
            if r.host.is_empty() {
                2
            } else if r.host.starts_with("*.") {
                1
            } else {
                0
            }
        };
        let text = |r: &Route| match &r.path {
            PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Plain(p) | PathMatch::Regex(p) => p.len(),
        };
        t.routes.sort_by_key(|r| (host_rank(r), std::cmp::Reverse(text(r)), !matches!(r.path, PathMatch::Exact(_))));
        t
    }

    /// Where a request for `host` and `path_and_query` goes; `https` says how it came.
    pub fn route(&self, host: &str, path_and_query: &str, https: bool) -> Decision {
        let host =
            host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(host, |(h, _)| h);
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        for r in self.routes.iter().filter(|r| host_matches(&r.host, host)) {
            let rewritten = match (&r.path, &r.regex) {
                (PathMatch::Exact(p), _) if path == p => Some(path.to_string()),
                (PathMatch::Prefix(p), _) => {
                    let p = p.trim_end_matches('/');
                    (p.is_empty() || path == p || path.starts_with(&format!("{p}/"))).then(|| path.to_string())
                }
                (PathMatch::Plain(p), _) if path.starts_with(p.as_str()) => Some(path.to_string()),
                (PathMatch::Regex(_), Some(re)) => re.captures(path).map(|caps| match &r.rewrite {
                    Some(target) => {
                        let mut out = String::new();
                        caps.expand(target, &mut out);
                        if out.is_empty() || !out.starts_with('/') {
                            out.insert(0, '/');
                        }
                        out
                    }
                    None => path.to_string(),
                }),
                _ => None,
            };
            if let Some(mut p) = rewritten {
                if r.ssl_redirect && !https {
                    return Decision::Redirect(format!("https://{host}{path_and_query}"));
                }
                if let Some(q) = query {
                    p = format!("{p}?{q}");
                }
                return Decision::Proxy { ingress: r.ingress.clone(), backend: r.backend.clone(), path: p };
            }
        }
        match self.defaults.first() {
            Some((ingress, backend)) => {
                Decision::Proxy { ingress: ingress.clone(), backend: backend.clone(), path: path_and_query.into() }
            }
            None => Decision::NotFound,
        }
    }

    /// The ready endpoints (`ip:port`) of a backend, or why there are none.
    pub fn endpoints_of(&self, b: &Backend) -> Result<Vec<String>, String> {
        let svc = self
            .services
            .iter()
            .find(|s| s["metadata"]["namespace"] == b.namespace.as_str() && s["metadata"]["name"] == b.service.as_str())
            .ok_or_else(|| format!("service {}/{} not found", b.namespace, b.service))?;
        let port = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"] == b.port || (b.port.is_string() && p["name"] == b.port))
            .ok_or_else(|| format!("service {}/{} has no port {}", b.namespace, b.service, b.port))?;
        let name = port["name"].as_str().unwrap_or_default();
        let mut out: Vec<String> = self
            .endpoints
            .iter()
            .filter(|e| {
                e["metadata"]["namespace"] == b.namespace.as_str() && e["metadata"]["name"] == b.service.as_str()
            })
            .flat_map(|e| crate::proxy::ready_endpoints(e, name))
            .map(|(ip, port)| format!("{ip}:{port}"))
            .collect();
        if out.is_empty() {
            return Err(format!("service {}/{} has no ready endpoints", b.namespace, b.service));
        }
        out.sort();
        Ok(out)
    }
}

/// What the listeners share: the table, the round-robin counter, the problems already told.
pub struct Proxy {
    pub table: RwLock<Arc<Table>>,
    next: AtomicUsize,
    reported: Mutex<BTreeSet<(String, String, String)>>,
    client: skiff_client::Client,
    http: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Incoming>,
    certs: RwLock<HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
    node: String,
}

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

impl Proxy {
    pub fn new(client: skiff_client::Client, node: String) -> Arc<Proxy> {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Arc::new(Proxy {
            table: RwLock::new(Arc::new(Table::default())),
            next: AtomicUsize::new(0),
            reported: Mutex::new(BTreeSet::new()),
            client,
            http,
            certs: RwLock::new(HashMap::new()),
            node,
        })
    }

    /// A Warning event on the Ingress, once per problem.
    async fn warn(&self, ingress: &(String, String), reason: &str, message: String) {
        let key = (ingress.0.clone(), ingress.1.clone(), message.clone());
        if !self.reported.lock().expect("reported lock").insert(key) {
            return;
        }
        let now = skiff_proto::time::now_rfc3339();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{}.", ingress.1), "namespace": ingress.0},
            "involvedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "namespace": ingress.0, "name": ingress.1},
            "reason": reason, "message": message, "type": "Warning", "count": 1,
            "source": {"component": "skiff-ingress", "host": self.node},
            "firstTimestamp": now, "lastTimestamp": now,
        });
        if let Err(e) = self.client.create("events", &ingress.0, &event).await {
            tracing::debug!("ingress event: {e}");
        }
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>, peer: SocketAddr, https: bool) -> Response<Body> {
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(String::from)
            .or_else(|| req.uri().host().map(String::from))
            .unwrap_or_default();
        let pq = req.uri().path_and_query().map_or("/".to_string(), |p| p.to_string());
        let table = self.table.read().expect("table lock").clone();
        let (ingress, backend, path) = match table.route(&host, &pq, https) {
            Decision::NotFound => return text(StatusCode::NOT_FOUND, "404 Not Found: no ingress rule matches\n"),
            Decision::Redirect(to) => {
                let mut r = text(StatusCode::PERMANENT_REDIRECT, "");
                r.headers_mut().insert(hyper::header::LOCATION, to.parse().expect("a valid location"));
                return r;
            }
            Decision::Proxy { ingress, backend, path } => (ingress, backend, path),
        };
        let targets = match table.endpoints_of(&backend) {
            Ok(t) => t,
            Err(why) => {
                self.warn(&ingress, "BackendUnavailable", why.clone()).await;
                return text(StatusCode::SERVICE_UNAVAILABLE, &format!("503 Service Unavailable: {why}\n"));
            }
        };
        let target = &targets[self.next.fetch_add(1, Ordering::Relaxed) % targets.len()];
        let Ok(uri) = format!("http://{target}{path}").parse::<hyper::Uri>() else {
            return text(StatusCode::BAD_REQUEST, "400 Bad Request: unusable path\n");
        };
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        for (name, value) in [
            ("x-forwarded-for", forwarded_for),
            ("x-real-ip", peer.ip().to_string()),
            ("x-forwarded-host", host.clone()),
            ("x-forwarded-proto", if https { "https" } else { "http" }.to_string()),
        ] {
            if let Ok(v) = value.parse() {
                headers.insert(name, v);
            }
        }
        match self.http.request(req).await {
            Ok(resp) => resp.map(|b| b.boxed()),
            Err(e) => {
                self.warn(&ingress, "BackendError", format!("{target}: {e}")).await;
                text(StatusCode::BAD_GATEWAY, &format!("502 Bad Gateway: {target}: {e}\n"))
            }
        }
    }

    /// Loads the table's certificates into the SNI resolver.
    fn load_certs(&self, table: &Table) {
        let mut map = HashMap::new();
        for tls in &table.tls {
            let certs: Vec<_> = rustls_pemfile::certs(&mut tls.cert.as_slice()).filter_map(Result::ok).collect();
            let Some(key) = rustls_pemfile::private_key(&mut tls.key.as_slice()).ok().flatten() else { continue };
            let Ok(signing) = rustls::crypto::ring::sign::any_supported_type(&key) else { continue };
            let certified = Arc::new(rustls::sign::CertifiedKey::new(certs, signing));
            for h in &tls.hosts {
                map.insert(h.clone(), certified.clone());
            }
        }
        *self.certs.write().expect("certs lock") = map;
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("node", &self.node).finish()
    }
}

impl rustls::server::ResolvesServerCert for Proxy {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let certs = self.certs.read().expect("certs lock");
        let name = hello.server_name()?;
        certs.get(name).cloned().or_else(|| {
            let (_, rest) = name.split_once('.')?;
            certs.get(&format!("*.{rest}")).cloned()
        })
    }
}

/// Rebuilds the table from the node's caches on every change to the kinds it reads (and every
/// `REFRESH`, when the TLS Secrets it names are read again) until `stop`.
pub async fn follow(proxy: Arc<Proxy>, caches: crate::informers::Caches, mut stop: tokio::sync::watch::Receiver<bool>) {
    use crate::informers::{values, wake_on_changes};
    let changed = Arc::new(tokio::sync::Notify::new());
    let watches = [
        wake_on_changes(&caches.ingresses, &changed),
        wake_on_changes(&caches.ingress_classes, &changed),
        wake_on_changes(&caches.services, &changed),
        wake_on_changes(&caches.endpoints, &changed),
    ];
    let synced = async {
        caches.ingresses.synced().await;
        caches.ingress_classes.synced().await;
        caches.services.synced().await;
        caches.endpoints.synced().await;
    };
    tokio::select! {
        () = synced => {}
        _ = stop.changed() => return,
    }
    loop {
        let listed = async {
            let ingresses = values(&caches.ingresses);
            let classes = values(&caches.ingress_classes);
            // Only the Secrets Ingresses name for TLS, one by one: a node may read no others
            // (the Node authorizer), and a Secret's change shows at the next refresh.
            let mut secrets = Vec::new();
            for (ns, name) in tls_secrets(&ingresses) {
                match proxy.client.get("secrets", &ns, &name).await {
                    Ok(secret) => secrets.push(secret),
                    Err(e) if e.code() == tonic::Code::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let (services, endpoints) = (values(&caches.services), values(&caches.endpoints));
            Ok::<_, tonic::Status>(Table::build(&ingresses, &classes, &secrets, services, endpoints))
        };
        match listed.await {
            Ok(table) => {
                let certs_changed = certs_changed(&proxy, &table);
                if certs_changed {
                    proxy.load_certs(&table);
                }
                *proxy.table.write().expect("table lock") = Arc::new(table);
            }
            Err(e) => tracing::debug!("ingress: listing: {}", e.message()),
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = changed.notified() => {}
            _ = stop.changed() => break,
        }
    }
    watches.iter().for_each(|w| w.abort());
}

/// (namespace, name) of every Secret the Ingresses name for TLS.
fn tls_secrets(ingresses: &[Value]) -> std::collections::BTreeSet<(String, String)> {
    ingresses
        .iter()
        .flat_map(|i| {
            let ns = i["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            i["spec"]["tls"].as_array().into_iter().flatten().filter_map(move |t| {
                Some((ns.clone(), t["secretName"].as_str().filter(|s| !s.is_empty())?.to_string()))
            })
        })
        .collect()
}

fn certs_changed(proxy: &Proxy, table: &Table) -> bool {
    proxy.table.read().expect("table lock").tls != table.tls
}

/// Serves plain HTTP on `http` and HTTPS on `https` (None: not served) until the task ends.
pub async fn serve(proxy: Arc<Proxy>, http: Option<SocketAddr>, https: Option<SocketAddr>) -> std::io::Result<()> {
    let mut tasks = Vec::new();
    if let Some(addr) = http {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tasks.push(tokio::spawn(accept(proxy.clone(), listener, None)));
    }
    if let Some(addr) = https {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(proxy.clone());
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tasks.push(tokio::spawn(accept(proxy.clone(), listener, Some(acceptor))));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn accept(proxy: Arc<Proxy>, listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (proxy, tls) = (proxy.clone(), tls.clone());
        tokio::spawn(async move {
            let https = tls.is_some();
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, peer, https).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let _ = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => http.serve_connection(hyper_util::rt::TokioIo::new(s), service).with_upgrades().await,
                    Err(_) => return,
                },
                None => http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).with_upgrades().await,
            };
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(annotations: Value, spec: Value) -> Value {
        json!({"metadata": {"name": "ing", "namespace": "default", "annotations": annotations}, "spec": spec})
    }

    fn paths(paths: Value) -> Value {
        json!({"rules": [{"http": {"paths": paths}}]})
    }

    fn to(svc: &str) -> Value {
        json!({"service": {"name": svc, "port": {"number": 80}}})
    }

    fn proxied(d: Decision) -> (String, String) {
        match d {
            Decision::Proxy { backend, path, .. } => (backend.service, path),
            other => panic!("not proxied: {other:?}"),
        }
    }

    #[test]
    fn prefix_exact_and_longest_match() {
        let t = Table::build(
            &[ingress(
                json!({}),
                paths(json!([
                    {"path": "/", "pathType": "Prefix", "backend": to("root")},
                    {"path": "/api", "pathType": "Prefix", "backend": to("api")},
                    {"path": "/api/v1", "pathType": "Exact", "backend": to("v1")},
                ])),
            )],
            &[],
            &[],
            vec![],
            vec![],
        );
        assert_eq!(proxied(t.route("x", "/api/v1", false)).0, "v1");
        assert_eq!(proxied(t.route("x", "/api/v1/x?q=1", false)), ("api".into(), "/api/v1/x?q=1".into()));
        assert_eq!(proxied(t.route("x", "/apis", false)).0, "root", "Prefix matches by path element");
    }

    #[test]
    fn rewrite_target_with_capture_groups_and_hosts() {
        let t = Table::build(
            &[ingress(
                json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}),
                json!({"rules": [
                    {"http": {"paths": [
                        {"path": "/hello-world-one(/|$)(.*)", "pathType": "ImplementationSpecific", "backend": to("one")},
                        {"path": "/hello-world-two(/|$)(.*)", "pathType": "ImplementationSpecific", "backend": to("two")}]}},
                    {"host": "foo.example", "http": {"paths": [{"path": "/foo(/|$)(.*)", "pathType": "ImplementationSpecific", "backend": to("foo")}]}},
                ]}),
            )],
            &[],
            &[],
            vec![],
            vec![],
        );
        assert_eq!(proxied(t.route("x", "/hello-world-one/a/b?c=d", false)), ("one".into(), "/a/b?c=d".into()));
        assert_eq!(proxied(t.route("x", "/hello-world-two", false)), ("two".into(), "/".into()));
        assert_eq!(proxied(t.route("foo.example:8080", "/foo/z", false)), ("foo".into(), "/z".into()));
        assert_eq!(t.route("x", "/elsewhere", false), Decision::NotFound);
    }

    #[test]
    fn tls_hosts_redirect_plain_http_unless_told_not_to_and_other_classes_are_ignored() {
        let tls = json!({"tls": [{"hosts": ["secure.example"], "secretName": "s"}],
                         "rules": [{"host": "secure.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": to("web")}]}}]});
        let t = Table::build(&[ingress(json!({}), tls.clone())], &[], &[], vec![], vec![]);
        assert_eq!(t.route("secure.example", "/a", false), Decision::Redirect("https://secure.example/a".into()));
        assert_eq!(proxied(t.route("secure.example", "/a", true)).0, "web");
        let t = Table::build(
            &[ingress(json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"}), tls)],
            &[],
            &[],
            vec![],
            vec![],
        );
        assert_eq!(proxied(t.route("secure.example", "/a", false)).0, "web");
        let mut other = ingress(json!({}), paths(json!([{"path": "/", "pathType": "Prefix", "backend": to("x")}])));
        other["spec"]["ingressClassName"] = json!("nginx");
        assert_eq!(Table::build(&[other], &[], &[], vec![], vec![]).route("h", "/", false), Decision::NotFound);
    }

    #[test]
    fn endpoints_by_port_name_or_number_and_missing_services_say_why() {
        let svc = json!({"metadata": {"name": "web", "namespace": "default"},
                         "spec": {"ports": [{"name": "http", "port": 80}]}});
        let ep = json!({"metadata": {"name": "web", "namespace": "default"},
                        "subsets": [{"addresses": [{"ip": "10.244.1.2"}], "ports": [{"name": "http", "port": 8080}]}]});
        let t = Table::build(&[], &[], &[], vec![svc], vec![ep]);
        let b = |port: Value, service: &str| Backend { namespace: "default".into(), service: service.into(), port };
        assert_eq!(t.endpoints_of(&b(json!(80), "web")), Ok(vec!["10.244.1.2:8080".to_string()]));
        assert_eq!(t.endpoints_of(&b(json!("http"), "web")), Ok(vec!["10.244.1.2:8080".to_string()]));
        assert_eq!(t.endpoints_of(&b(json!(80), "gone")), Err("service default/gone not found".to_string()));
    }
}
