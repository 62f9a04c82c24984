//! Typed access to the Skiff API for tools (the CLI, tests): the client configuration file that
//! `skiff up` writes, and a client that fails over across every master on connection errors and
//! `Unavailable`, with a deadline per request so nothing hangs.
//!
//! Config file (JSON, like a kubeconfig):
//! `{"clusters":[{"name","endpoints":[..]}],"users":[{"name","token"|"clientCertificate"+"clientKey"}],
//!   "contexts":[{"name","cluster","user","namespace"}],"currentContext":"..","ca":".."}`
//!
//! [`informer`]: typed caches fed by list + watch; [`queue`]: the keyed work queue controllers
//! run from; [`jsonpath`]: kubectl's `-o jsonpath=` templates.

pub mod api;
pub mod informer;
pub use skiff_proto::jsonpath;
pub mod queue;

use serde::Deserialize;
use serde_json::Value;
use skiff_proto::api::cluster_info_client::ClusterInfoClient;
use skiff_proto::api::node_metrics_client::NodeMetricsClient;
use skiff_proto::api::objects_client::ObjectsClient;
use skiff_proto::api::pod_exec_client::PodExecClient;
use skiff_proto::api::pod_logs_client::PodLogsClient;
use skiff_proto::api::pods_client::PodsClient;
use skiff_proto::api::{
    Binding, BindingTarget, DeleteRequest, Eviction, ExecInput, ExecOutput, ObjectMetaRef, PodLogChunk, PodLogRequest,
    RawListRequest, RawRequest, RawWatchEvent, RawWatchRequest,
};
use skiff_proto::etcdserverpb::cluster_client::ClusterClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::{MemberListRequest, StatusRequest, StatusResponse};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("client config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("no client config: pass --config, set SKIFF_CONFIG, or run in a directory with .skiff/client.json")]
    NotFound,
}

#[derive(Debug, Clone, Deserialize)]
struct FileCluster {
    name: String,
    endpoints: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileUser {
    name: String,
    #[serde(default)]
    token: String,
    /// A client certificate and key (PEM) instead of a token: CN the user, O its groups.
    #[serde(default)]
    client_certificate: Option<PathBuf>,
    #[serde(default)]
    client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
struct FileContext {
    name: String,
    cluster: String,
    user: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    clusters: Vec<FileCluster>,
    #[serde(default)]
    users: Vec<FileUser>,
    #[serde(default)]
    contexts: Vec<FileContext>,
    #[serde(default)]
    current_context: String,
    #[serde(default)]
    ca: Option<PathBuf>,
}

/// What a client needs: the masters, credentials and defaults of the current context.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoints: Vec<String>,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM) presented over TLS, for users without a token.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub namespace: String,
    pub timeout: Duration,
}

impl ClientConfig {
    /// `explicit`, else `$SKIFF_CONFIG`, else `./.skiff/client.json`.
    pub fn discover(explicit: Option<&Path>) -> Result<ClientConfig, ConfigError> {
        Self::load(&Self::path(explicit)?)
    }

    /// Which config file [`discover`](Self::discover) reads.
    pub fn path(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
        Ok(match explicit {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os("SKIFF_CONFIG") {
                Some(p) => PathBuf::from(p),
                None => {
                    let local = PathBuf::from(".skiff/client.json");
                    if !local.exists() {
                        return Err(ConfigError::NotFound);
                    }
                    local
                }
            },
        })
    }

    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let file: ConfigFile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let context =
            file.contexts.iter().find(|c| c.name == file.current_context).or_else(|| file.contexts.first()).cloned();
        let cluster = match &context {
            Some(c) => file.clusters.iter().find(|k| k.name == c.cluster),
            None => file.clusters.first(),
        }
        .ok_or_else(|| invalid("no cluster for the current context".into()))?;
        let user = context.as_ref().and_then(|c| file.users.iter().find(|u| u.name == c.user));
        let token = user.map(|u| u.token.clone()).filter(|t| !t.is_empty());
        let client_cert = match user.map(|u| (&u.client_certificate, &u.client_key)) {
            Some((Some(cert), Some(key))) => Some((cert.clone(), key.clone())),
            Some((None, None)) | None => None,
            Some(_) => return Err(invalid("a user's clientCertificate and clientKey go together".into())),
        };
        Ok(ClientConfig {
            endpoints: cluster.endpoints.clone(),
            token,
            ca: file.ca.clone(),
            client_cert,
            namespace: context.map(|c| c.namespace).filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into()),
            timeout: Duration::from_secs(30),
        })
    }
}

/// Adds the bearer token to every call, for a fenced client the leadership term its writes
/// are fenced to, and for one create the request id its retries share.
#[derive(Clone)]
pub struct Auth {
    token: Option<MetadataValue<Ascii>>,
    fence: Option<MetadataValue<Ascii>>,
    request_id: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.token {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = &self.fence {
            req.metadata_mut().insert(skiff_proto::FENCE_HEADER, v.clone());
        }
        if let Some(v) = &self.request_id {
            req.metadata_mut().insert(skiff_proto::REQUEST_ID_HEADER, v.clone());
        }
        Ok(req)
    }
}

pub type Objects = ObjectsClient<InterceptedService<Channel, Auth>>;

/// A client over every master of a cluster. A clone shares the connections (tonic channels
/// are handles), which master answered last, so what one call learns about a dead master
/// spares the others (a create's own clone included), and the masters
/// [`sync_endpoints`](Client::sync_endpoints) learned.
#[derive(Clone)]
pub struct Client {
    /// As configured: `config.endpoints` are the masters named in the config file.
    pub config: ClientConfig,
    /// Swapped whole by a sync; a call takes the snapshot it started with.
    masters: Arc<std::sync::RwLock<Arc<Masters>>>,
    /// Makes channels to masters learned later (`None`: a client over one in-process channel).
    connector: Option<Arc<Connector>>,
    auth: Auth,
    /// The endpoint that answered last; failover moves on from it.
    current: Arc<AtomicUsize>,
}

/// The masters a client fails over across: the configured ones, then those it learned.
struct Masters {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
}

/// How a client connects to a master: its TLS and per-request deadline.
struct Connector {
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
}

impl Connector {
    /// A lazily connecting channel to master `e` (`host:port`).
    fn channel(&self, e: &str) -> Result<Channel, Status> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{e}"))
            .map_err(|err| Status::invalid_argument(format!("endpoint {e}: {err}")))?
            .connect_timeout(Duration::from_secs(2))
            // A master that stops answering (paused, its host gone) without closing the
            // connection is noticed by its missing PING acks, and the channel reconnects — to
            // a refusal that failover moves past — instead of waiting on it forever.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .timeout(self.timeout);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|err| Status::invalid_argument(err.to_string()))?;
        }
        Ok(endpoint.connect_lazy())
    }
}

/// How often an idle connection to a master is pinged, and how long a ping may go unanswered
/// before the connection counts as dead.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the masters said a failed write may have been applied (timed out, interrupted, the
/// leader changed under it) rather than certainly not (no leader, not the leader): the
/// `skiff-outcome` status metadata, not the message.
pub fn outcome_unknown(s: &Status) -> bool {
    s.metadata().get(skiff_proto::OUTCOME_HEADER).is_some_and(|v| v == skiff_proto::OUTCOME_UNKNOWN)
}

/// Whether a failed call may be tried on another master: the master was unreachable or not
/// able to serve (no leader, shutting down), or the outcome is unknown. Retrying an unknown
/// outcome is safe for reads, for creates (each carries a request id, see
/// [`Client::for_one_create`]) and for writes guarded by a resourceVersion (a replay of an
/// applied one is a conflict, not a second change).
fn retryable(s: &Status) -> bool {
    s.code() == Code::Unavailable || (s.code() == Code::Unknown && s.message().contains("transport"))
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, Status> {
        if config.endpoints.is_empty() {
            return Err(Status::invalid_argument("the client config names no endpoints"));
        }
        let read = |what: &str, p: &Path| {
            std::fs::read(p).map_err(|e| Status::invalid_argument(format!("{what} {}: {e}", p.display())))
        };
        let tls = match &config.ca {
            Some(ca) => {
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA", ca)?));
                if let Some((cert, key)) = &config.client_cert {
                    tls = tls.identity(tonic::transport::Identity::from_pem(
                        read("client certificate", cert)?,
                        read("client key", key)?,
                    ));
                }
                Some(tls)
            }
            None => None,
        };
        let connector = Connector { tls, timeout: config.timeout };
        let channels = config.endpoints.iter().map(|e| connector.channel(e)).collect::<Result<Vec<_>, _>>()?;
        let masters = Masters { endpoints: config.endpoints.clone(), channels };
        let token = config
            .token
            .as_ref()
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| Status::invalid_argument("the token is not ASCII"))?;
        let auth = Auth { token, fence: None, request_id: None };
        Ok(Client {
            config,
            masters: Arc::new(std::sync::RwLock::new(Arc::new(masters))),
            connector: Some(Arc::new(connector)),
            auth,
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A client over one `channel` already made (a master's in-process connections), calling
    /// with `token`; `name` stands for its endpoint in messages.
    pub fn over_channel(name: &str, channel: Channel, token: &str, timeout: Duration) -> Result<Client, Status> {
        let config = ClientConfig {
            endpoints: vec![name.to_string()],
            token: Some(token.to_string()),
            ca: None,
            client_cert: None,
            namespace: "default".into(),
            timeout,
        };
        let token =
            format!("Bearer {token}").parse().map_err(|_| Status::invalid_argument("the token is not ASCII"))?;
        let auth = Auth { token: Some(token), fence: None, request_id: None };
        let masters = Masters { endpoints: config.endpoints.clone(), channels: vec![channel] };
        Ok(Client {
            config,
            masters: Arc::new(std::sync::RwLock::new(Arc::new(masters))),
            connector: None,
            auth,
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// This client with every write fenced to the leadership of raft term `term` (DESIGN.md
    /// rule 4): the master refuses the write unless it is the leader of that very term, so a
    /// controller that lost its leadership mid-round cannot act on what it read before.
    pub fn fenced(&self, term: u64) -> Client {
        let mut c = self.clone();
        c.auth.fence = Some(MetadataValue::from(term));
        c
    }

    /// This client for one create: its calls carry a fresh request id, the same on every
    /// attempt, so a retry after a reply was lost gets the object the first attempt made rather
    /// than a second object (`generateName`) or AlreadyExists.
    pub fn for_one_create(&self) -> Client {
        let mut c = self.clone();
        let id = format!("{:032x}", rand::random::<u128>());
        c.auth.request_id = Some(MetadataValue::try_from(id).expect("hex is ASCII"));
        c
    }

    /// The masters calls fail over across now: the configured ones and those learned since.
    fn masters(&self) -> Arc<Masters> {
        Arc::clone(&self.masters.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every master this client knows: the configured ones, then those
    /// [`sync_endpoints`](Self::sync_endpoints) learned.
    pub fn endpoints(&self) -> Vec<String> {
        self.masters().endpoints.clone()
    }

    /// The endpoint the next call starts with: the master that answered last.
    pub fn current_endpoint(&self) -> String {
        let m = self.masters();
        m.endpoints[self.current.load(Ordering::Relaxed) % m.endpoints.len()].clone()
    }

    /// Learns the cluster's masters, as etcd's clientv3 `Sync` does: asks whichever master
    /// answers for the voting members' client addresses (the public `ClusterInfo`), and fails
    /// over across the configured masters plus those from then on — so a long-running client
    /// (a node daemon) keeps reaching the cluster after every master it was configured with
    /// has been replaced. Masters learned earlier that have left the membership are dropped;
    /// the configured ones always stay. Returns whether the set changed.
    pub async fn sync_endpoints(&self) -> Result<bool, Status> {
        let Some(connector) = &self.connector else { return Ok(false) };
        let servers = self
            .with_failover(|channel, auth| async move {
                let req = skiff_proto::api::ClusterInfoRequest {};
                Ok(ClusterInfoClient::with_interceptor(channel, auth).get(req).await?.into_inner().servers)
            })
            .await?;
        let mut wanted = self.config.endpoints.clone();
        for s in servers {
            let addr = s.split_once("://").map_or(s.as_str(), |(_, a)| a).trim_end_matches('/').to_string();
            if !addr.is_empty() && !wanted.contains(&addr) {
                wanted.push(addr);
            }
        }
        let mut masters = self.masters.write().unwrap_or_else(|e| e.into_inner());
        if masters.endpoints == wanted {
            return Ok(false);
        }
        let mut channels = Vec::with_capacity(wanted.len());
        for e in &wanted {
            match masters.endpoints.iter().position(|known| known == e) {
                Some(i) => channels.push(masters.channels[i].clone()),
                None => channels.push(connector.channel(e)?),
            }
        }
        // The next call still starts with the master that answered last.
        let current = masters.endpoints.get(self.current.load(Ordering::Relaxed) % masters.endpoints.len()).cloned();
        let start = current.and_then(|c| wanted.iter().position(|e| *e == c)).unwrap_or(0);
        *masters = Arc::new(Masters { endpoints: wanted, channels });
        self.current.store(start, Ordering::Relaxed);
        Ok(true)
    }

    /// Starts the next call with the next master: for a caller whose own deadline ran out on
    /// the master that answered last (a paused or cut-off master hangs rather than refuses).
    pub fn skip_current(&self) {
        let n = self.masters().channels.len();
        let _ = self.current.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |i| Some((i + 1) % n));
    }

    /// Runs `f` against masters in turn until one answers, trying each at most twice. `f` gets a
    /// channel and the credentials, and builds whichever service client it needs.
    pub async fn with_failover<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(Channel, Auth) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let masters = self.masters();
        let channels = &masters.channels;
        let n = channels.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..2 * n {
            let i = (start + attempt) % n;
            match f(channels[i].clone(), self.auth.clone()).await {
                // No answer in time: the outcome is unknown, so the call is not repeated, but
                // the next one starts with the next master rather than the one that hung.
                Err(s) if s.code() == Code::DeadlineExceeded || s.code() == Code::Cancelled => {
                    self.current.store((i + 1) % n, Ordering::Relaxed);
                    return Err(s);
                }
                Err(s) if retryable(&s) => {
                    last = Some(s);
                    if attempt + 1 >= n {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                other => {
                    self.current.store(i, Ordering::Relaxed);
                    return other;
                }
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no master answered")))
    }

    /// One call through failover; `f` returns the JSON body, parsed here.
    async fn json<Req, F, Fut>(&self, req: Req, f: F) -> Result<Value, Status>
    where
        Req: Clone,
        F: Fn(Objects, Req) -> Fut,
        Fut: std::future::Future<Output = Result<String, Status>>,
    {
        let body = self
            .with_failover(|channel, auth| {
                let client = ObjectsClient::with_interceptor(channel, auth)
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(64 << 20);
                f(client, req.clone())
            })
            .await?;
        serde_json::from_str(&body).map_err(|e| Status::internal(format!("server sent invalid JSON: {e}")))
    }

    fn raw(resource: &str, namespace: &str, name: &str, obj: Option<&Value>) -> RawRequest {
        RawRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            json: obj.map(Value::to_string).unwrap_or_default(),
            ..Default::default()
        }
    }

    pub async fn create(&self, resource: &str, namespace: &str, obj: &Value) -> Result<Value, Status> {
        let req = Self::raw(resource, namespace, "", Some(obj));
        self.for_one_create().json(req, |mut c, r| async move { Ok(c.create(r).await?.into_inner().json) }).await
    }

    pub async fn get(&self, resource: &str, namespace: &str, name: &str) -> Result<Value, Status> {
        let req = Self::raw(resource, namespace, name, None);
        self.json(req, |mut c, r| async move { Ok(c.get(r).await?.into_inner().json) }).await
    }

    pub async fn list(&self, resource: &str, namespace: &str, labels: &str, fields: &str) -> Result<Value, Status> {
        let req = RawListRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            label_selector: labels.into(),
            field_selector: fields.into(),
            ..Default::default()
        };
        self.json(req, |mut c, r| async move { Ok(c.list(r).await?.into_inner().json) }).await
    }

    pub async fn update(&self, resource: &str, obj: &Value) -> Result<Value, Status> {
        let req = Self::raw(resource, "", "", Some(obj));
        self.json(req, |mut c, r| async move { Ok(c.update(r).await?.into_inner().json) }).await
    }

    pub async fn delete(&self, resource: &str, namespace: &str, name: &str) -> Result<Value, Status> {
        self.delete_with(resource, namespace, name, None, "").await
    }

    /// Delete with a grace period (pods; 0 = at once) and a propagation policy (`Background`,
    /// `Foreground`, `Orphan`; empty = the server's default).
    pub async fn delete_with(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        grace_period_seconds: Option<i64>,
        propagation_policy: &str,
    ) -> Result<Value, Status> {
        let mut req = Self::raw(resource, namespace, name, None);
        req.grace_period_seconds = grace_period_seconds;
        req.propagation_policy = propagation_policy.into();
        self.json(req, |mut c, r| async move { Ok(c.delete(r).await?.into_inner().json) }).await
    }

    /// The pods binding subresource: assigns `name` to `node` (a pod already bound is Aborted).
    pub async fn bind(&self, namespace: &str, name: &str, node: &str) -> Result<(), Status> {
        let req = Binding {
            metadata: Some(ObjectMetaRef { name: name.into(), namespace: namespace.into(), ..Default::default() }),
            target: Some(BindingTarget { kind: "Node".into(), name: node.into() }),
        };
        self.with_failover(|channel, auth| {
            let req = req.clone();
            async move { PodsClient::with_interceptor(channel, auth).bind(req).await.map(|_| ()) }
        })
        .await
    }

    /// The pods eviction subresource: deletes `name` if its PodDisruptionBudget allows (a
    /// budget that does not allow it yet is ResourceExhausted, Kubernetes' 429: retry later).
    pub async fn evict(&self, namespace: &str, name: &str) -> Result<(), Status> {
        let req = Eviction {
            metadata: Some(ObjectMetaRef { name: name.into(), namespace: namespace.into(), ..Default::default() }),
            grace_period_seconds: None,
        };
        self.with_failover(|channel, auth| {
            let req = req.clone();
            async move { PodsClient::with_interceptor(channel, auth).evict(req).await.map(|_| ()) }
        })
        .await
    }

    /// Deletes a pod with an explicit grace period (0: now, as the node does once its
    /// containers have stopped).
    pub async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        grace_period_seconds: Option<i64>,
    ) -> Result<(), Status> {
        let req = DeleteRequest {
            namespace: namespace.into(),
            name: name.into(),
            grace_period_seconds,
            ..Default::default()
        };
        self.with_failover(|channel, auth| {
            let req = req.clone();
            async move { PodsClient::with_interceptor(channel, auth).delete(req).await.map(|_| ()) }
        })
        .await
    }

    /// A token for the service account a pod runs as, bound to that pod.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod_name: &str,
        pod_uid: &str,
    ) -> Result<String, Status> {
        let req = skiff_proto::api::ServiceAccountTokenRequest {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod_name: pod_name.into(),
            pod_uid: pod_uid.into(),
        };
        self.with_failover(|channel, auth| {
            let req = req.clone();
            async move {
                use skiff_proto::api::service_account_tokens_client::ServiceAccountTokensClient;
                Ok(ServiceAccountTokensClient::with_interceptor(channel, auth).create(req).await?.into_inner().token)
            }
        })
        .await
    }

    /// A container's log as a stream of chunks (`follow` keeps it open while the container runs).
    pub async fn logs(&self, req: PodLogRequest) -> Result<tonic::Streaming<PodLogChunk>, Status> {
        self.with_failover(|channel, auth| {
            let req = req.clone();
            async move { Ok(PodLogsClient::with_interceptor(channel, auth).get(req).await?.into_inner()) }
        })
        .await
    }

    /// Runs a command in a pod's container: `input` is the start, then stdin, its end and
    /// resizes; the answer is its output and, last, its exit. Not retried on another master
    /// (stdin may have been consumed): a master that does not answer fails the exec.
    pub async fn exec(
        &self,
        input: impl futures::Stream<Item = ExecInput> + Send + 'static,
    ) -> Result<tonic::Streaming<ExecOutput>, Status> {
        let input = std::sync::Mutex::new(Some(input));
        self.with_failover(|channel, auth| {
            let input = input.lock().unwrap_or_else(|p| p.into_inner()).take();
            async move {
                let input = input.ok_or_else(|| Status::unavailable("the exec's master did not answer"))?;
                Ok(PodExecClient::with_interceptor(channel, auth).exec(input).await?.into_inner())
            }
        })
        .await
    }

    /// Changes to objects of `resource` after `resource_version` (empty: the current objects as
    /// ADDED, then changes), through the kind-agnostic Objects service.
    pub async fn watch(
        &self,
        resource: &str,
        namespace: &str,
        labels: &str,
        fields: &str,
        resource_version: &str,
    ) -> Result<tonic::Streaming<RawWatchEvent>, Status> {
        let req = RawWatchRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            label_selector: labels.into(),
            field_selector: fields.into(),
            resource_version: resource_version.into(),
        };
        self.with_failover(|channel, auth| {
            let req = req.clone();
            async move {
                Ok(ObjectsClient::with_interceptor(channel, auth)
                    .max_decoding_message_size(64 << 20)
                    .watch(req)
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Every known master's own report (role, term, leader, applied index), or why it did
    /// not answer — one call per master, no failover: the point is to see each of them.
    pub async fn master_statuses(&self) -> Vec<(String, Result<StatusResponse, Status>)> {
        let mut out = Vec::new();
        let masters = self.masters();
        for (endpoint, channel) in masters.endpoints.iter().zip(&masters.channels) {
            let mut m = MaintenanceClient::with_interceptor(channel.clone(), self.auth.clone());
            let r = tokio::time::timeout(Duration::from_secs(3), m.status(StatusRequest {}))
                .await
                .map_err(|_| Status::deadline_exceeded("no answer within 3 s"))
                .and_then(|r| r.map(|r| r.into_inner()));
            out.push((endpoint.clone(), r));
        }
        out
    }

    /// The API server's metrics in Prometheus' text format, from the master that answers.
    pub async fn api_metrics(&self) -> Result<String, Status> {
        use skiff_proto::api::api_metrics_client::ApiMetricsClient;
        self.with_failover(|channel, auth| async move {
            let req = skiff_proto::api::ApiMetricsRequest {};
            Ok(ApiMetricsClient::with_interceptor(channel, auth).get(req).await?.into_inner().text)
        })
        .await
    }

    /// The store's members (id, name, addresses), from whichever master answers.
    pub async fn members(&self) -> Result<Vec<skiff_proto::etcdserverpb::Member>, Status> {
        self.with_failover(|channel, auth| async move {
            Ok(ClusterClient::with_interceptor(channel, auth)
                .member_list(MemberListRequest { linearizable: false })
                .await?
                .into_inner()
                .members)
        })
        .await
    }

    /// A node's resource usage and its pods' (what `skiff top` shows).
    pub async fn node_usage(&self, node: &str) -> Result<skiff_proto::api::NodeUsage, Status> {
        let req = skiff_proto::api::NodeUsageRequest { node: node.into() };
        self.with_failover(|channel, auth| {
            let req = req.clone();
            async move { Ok(NodeMetricsClient::with_interceptor(channel, auth).usage(req).await?.into_inner()) }
        })
        .await
    }

    /// Records an Event about `obj` (a `kind` object) from `component`; failures are logged,
    /// never fatal: events are best-effort, as in Kubernetes.
    pub async fn event(&self, obj: &Value, kind: &str, component: &str, event_type: &str, reason: &str, message: &str) {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let regarding = skiff_proto::api::ObjectReference {
            kind: kind.into(),
            api_version: text(&obj["apiVersion"]),
            namespace: obj["metadata"]["namespace"].as_str().unwrap_or("default").into(),
            name: text(&obj["metadata"]["name"]),
            uid: text(&obj["metadata"]["uid"]),
            ..Default::default()
        };
        self.record_event(regarding, component, event_type, reason, message).await;
    }

    /// Records an Event about `regarding` from `component` (Normal or Warning `event_type`);
    /// failures are logged, never fatal.
    pub async fn record_event(
        &self,
        regarding: skiff_proto::api::ObjectReference,
        component: &str,
        event_type: &str,
        reason: &str,
        message: &str,
    ) {
        use skiff_proto::api::{Event, EventSource, ObjectMeta};
        let now = skiff_proto::time::now_rfc3339();
        let event = Event {
            metadata: Some(ObjectMeta {
                generate_name: format!("{}.", regarding.name),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            }),
            reason: reason.into(),
            message: message.into(),
            source: Some(EventSource { component: component.into(), ..Default::default() }),
            reporting_component: component.into(),
            first_timestamp: now.clone(),
            last_timestamp: now,
            count: 1,
            r#type: event_type.into(),
            involved_object: Some(regarding),
            ..Default::default()
        };
        if let Err(e) = api::Api::<Event>::new(self.clone()).create(&event).await {
            let regarding = event.involved_object.unwrap_or_default();
            tracing::debug!("event for {} {}/{}: {e}", regarding.kind, regarding.namespace, regarding.name);
        }
    }

    /// Replaces an object's status (the status subresource), guarded by its resourceVersion;
    /// returns the stored object. For the kinds whose status a component reports.
    pub async fn update_status(&self, resource: &str, obj: &Value) -> Result<Value, Status> {
        async fn typed<K: informer::Resource + serde::Serialize + serde::de::DeserializeOwned>(
            client: &Client,
            obj: &Value,
        ) -> Result<Value, Status> {
            let typed: K = serde_json::from_value(obj.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let stored = K::update_status(client, typed).await?;
            serde_json::to_value(stored).map_err(|e| Status::internal(e.to_string()))
        }
        macro_rules! by_resource {
            ($kind:ident, $list:ident, $event:ident, $module:ident, $client:ident, $resource:literal, status: yes) => {
                if resource == $resource {
                    return typed::<skiff_proto::api::$kind>(self, obj).await;
                }
            };
            ($($other:tt)*) => {};
        }
        skiff_proto::for_each_kind_client!(by_resource);
        Err(Status::invalid_argument(format!("{resource} have no status subresource")))
    }
}
