//! The node daemon (`skiff node`): registers its Node, renews its Lease, runs the pods bound
//! to it as Linux containers through youki's libcontainer, and reports their status.
//!
//! - [`agent`]: the level-triggered pod loop (sandbox, init then app containers, restarts with
//!   back-off, graceful deletion, status);
//! - [`status`]: the pure part of it (next step per container, phase, conditions);
//! - [`shim`]: the per-container helper process, the only place libcontainer runs (it forks;
//!   the daemon is a multi-threaded tokio process), which owns the container's stdio and exit;
//! - [`instance`]: one container run's directory, from which the daemon re-adopts containers
//!   after its own restart;
//! - [`logs`]: the `PodLogs` server masters proxy `skiff logs` to;
//! - [`probe`]: startup, liveness and readiness probes, one prober task per container run;
//! - [`bundle`]: pod container → OCI runtime spec; [`image`]: the local OCI image store;
//!   [`registry`]: pulls from (and pushes to) OCI distribution registries;
//! - [`sandbox`]: the pod's shared network/IPC/UTS namespaces and its veth on the node bridge;
//! - [`hostport`]: `hostPort` as iptables DNAT rules in a chain of the node's own;
//! - [`stats`]: cgroup-based usage of the node and its pods (`skiff top`);
//! - [`heartbeat`]: Node registration, Lease renewal, node conditions;
//! - [`informers`]: the caches of Services, Endpoints, Ingresses, IngressClasses, Nodes, pods,
//!   Namespaces and NetworkPolicies the proxy, the DNS, the ingress, the pod network and the
//!   policies read (the pod loop has its own, of the pods bound here);
//! - [`podnet`]: routes to the pod ranges of other machines (VXLAN or host-gw);
//! - [`netpol`]: NetworkPolicy for the node's pods, in the filter table.
//!
//! Invariant: the daemon changes the cluster only through the API, and only its own Node, its
//! Lease, and the pods bound to it.

pub mod agent;
pub mod bundle;
pub mod dns;
pub mod error;
pub mod exec;
pub mod heartbeat;
pub mod hostport;
pub mod image;
pub mod informers;
pub mod ingress;
pub mod instance;
pub mod logs;
pub mod netpol;
pub mod podnet;
pub mod probe;
pub mod proxy;
pub mod registry;
pub mod sandbox;
pub mod shim;
pub mod stats;
pub mod status;

pub use error::NodeError;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `skiff node` is told by its flags.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    /// State: image store, pod directories, libcontainer state, namespace pins.
    pub root: PathBuf,
    /// The node's address (status.hostIP, the Node's InternalIP).
    pub node_ip: String,
    pub labels: BTreeMap<String, String>,
    /// Taints as Node JSON (`{"key","value","effect"}`).
    pub taints: Vec<Value>,
    pub pod_cidr: String,
    pub bridge: String,
    /// Every node's pod ranges together; pods reach nothing outside it.
    pub cluster_cidr: String,
    /// How pods reach pods on other machines.
    pub pod_network: podnet::Backend,
    /// The MTU of pods' interfaces, when the pod network sets one (set at start).
    pub pod_mtu: Option<u32>,
    /// The Services' cluster IP range (as the masters' `--service-cluster-ip-range`).
    pub service_cidr: String,
    /// The DNS domain of the cluster (`cluster.local`).
    pub cluster_domain: String,
    /// Ports of the ingress controller on the node's address (0: not served).
    pub ingress_http_port: u16,
    pub ingress_https_port: u16,
    pub lease_interval: Duration,
    pub sync_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub max_pods: u32,
    pub pids_limit: i64,
    pub log_max_bytes: u64,
    /// The binary that runs `shim` (this `skiff` executable).
    pub shim_exe: PathBuf,
    /// Where the log server listens (its port is published in the Node's daemonEndpoints).
    pub listen: String,
    /// The port it got (set once bound).
    pub log_port: u16,
    /// Registries (`host:port`) pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// A directory of static pod manifests (mirrored into the API as `<name>-<node>`).
    pub pod_manifest_path: Option<PathBuf>,
    /// TLS of the node's server (logs, metrics): its serving certificate and the CA whose
    /// client certificates it accepts (the masters'). Without it the server is plaintext and
    /// checks callers' forwarded tokens — for `--insecure` clusters only.
    pub server_tls: Option<ServerTls>,
}

/// PEM files of the node server's TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl NodeConfig {
    /// What the service proxy needs of this node.
    pub fn proxy_config(&self) -> proxy::ProxyConfig {
        proxy::ProxyConfig {
            bridge: self.bridge.clone(),
            node_ip: self.node_ip.clone(),
            cluster_cidr: self.cluster_cidr.clone(),
            service_cidr: self.service_cidr.clone(),
            pod_cidr: self.pod_cidr.clone(),
        }
    }
}

/// Parses `--register-with-taints key=value:Effect,key:Effect`.
pub fn parse_taints(spec: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for t in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (kv, effect) = t.rsplit_once(':').ok_or_else(|| format!("taint {t:?}: expected key[=value]:Effect"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!("taint {t:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"));
        }
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if key.is_empty() {
            return Err(format!("taint {t:?}: the key is empty"));
        }
        out.push(serde_json::json!({"key": key, "value": value, "effect": effect}));
    }
    Ok(out)
}

/// Registers the node and runs the heartbeat and the pod loop until `shutdown` resolves.
/// Containers keep running after it returns: a restarted daemon re-adopts them.
pub async fn run(
    client: skiff_client::Client,
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut config = config;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding the log server to {}", config.listen))?;
    config.log_port = listener.local_addr()?.port();
    let callers = match &config.server_tls {
        Some(_) => logs::Callers::Masters,
        None => logs::Callers::Delegated(client.config.clone()),
    };
    let logs = logs::LogServer { root: config.root.clone(), callers: callers.clone() };
    let exec =
        exec::ExecServer { root: config.root.clone(), callers: callers.clone(), helper: config.shim_exe.clone() };
    let sampler = stats::Sampler::new(config.root.clone(), config.name.clone(), callers.clone());
    let metrics = std::sync::Arc::new(skiff_proto::metrics::Metrics::default());
    let sampling = tokio::spawn(sampler.clone().run(Duration::from_secs(5)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match heartbeat::register(&client, &config).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("node {}: registering: {e}; retrying", config.name);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context(format!("registering node {}", config.name)),
        }
    }
    tracing::info!("node {} registered", config.name);
    if config.pod_cidr.is_empty() {
        // Registered not ready until then (as the kubelet before its network is).
        tracing::info!("node {}: waiting for the masters to allocate its pod range", config.name);
        config.pod_cidr = heartbeat::pod_range(&client, &config).await?;
        heartbeat::register(&client, &config).await.context("reporting the node ready")?;
    } else {
        heartbeat::pod_range(&client, &config).await?;
    }
    tracing::info!("node {}: pod range {}", config.name, config.pod_cidr);
    let pod_network = podnet::set_up(config.pod_network, &config.node_ip, &config.pod_cidr)
        .with_context(|| format!("setting up the {} pod network", config.pod_network.name()))?;
    if let Some(setup) = &pod_network {
        config.pod_mtu = Some(setup.mtu);
        podnet::publish(&client, &config.name, config.pod_network, setup)
            .await
            .context("publishing the node's pod network")?;
    }
    let agent = agent::Agent::new(client.clone(), config.clone(), &metrics).context("setting up the node")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let proxy_config = config.proxy_config();
    // Idempotent, so retried: iptables changes racing another node's on this machine can fail.
    let mut attempt = 0;
    while let Err(e) = proxy::install(&proxy_config) {
        attempt += 1;
        if attempt == 5 {
            return Err(e).context("installing the service proxy's rules");
        }
        tracing::warn!("node {}: installing the service proxy's rules: {e}; retrying", config.name);
        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
    }
    let policy_config = netpol::Config { bridge: config.bridge.clone(), node: config.name.clone() };
    netpol::install(&policy_config).context("installing the network policies' chains")?;
    let records = dns::Shared::default();
    let gateway = sandbox::PodNetwork::parse(&config.bridge, &config.pod_cidr).map_err(anyhow::Error::msg)?.gateway();
    let dns_addr = std::net::SocketAddr::new(gateway.into(), 53);
    // One informer per kind for the proxy, the DNS records and the ingress.
    let caches = informers::Caches::start(&client, &stop_rx);
    let proxying = tokio::spawn(proxy::run(caches.clone(), proxy_config.clone(), records.clone(), stop_rx.clone()));
    let policing = tokio::spawn(netpol::run(caches.clone(), policy_config.clone(), stop_rx.clone()));
    let ingress = ingress::Proxy::new(client.clone(), config.name.clone());
    let routing = pod_network.is_some().then(|| {
        tokio::spawn(podnet::run(caches.nodes.clone(), config.pod_network, config.name.clone(), stop_rx.clone()))
    });
    let following = tokio::spawn(ingress::follow(ingress.clone(), caches, stop_rx.clone()));
    // Cluster DNS and the ingress serve on a runtime of their own: the node's pod work runs
    // commands (ip, iptables, mount) and reads files on its runtime's threads, and a lookup or
    // a request must not wait behind that.
    let serving_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("serving")
        .enable_all()
        .build()
        .context("starting the DNS and ingress runtime")?;
    let dns = serving_rt.spawn({
        let (records, domain) = (records.clone(), config.cluster_domain.clone());
        async move {
            if let Err(e) = dns::serve(dns_addr, records, domain).await {
                tracing::error!("cluster DNS on {dns_addr}: {e}");
            }
        }
    });
    let serving = serving_rt.spawn({
        let ip: std::net::IpAddr = config.node_ip.parse().context("--node-ip")?;
        let port = |p: u16| (p != 0).then(|| std::net::SocketAddr::new(ip, p));
        let (http, https) = (port(config.ingress_http_port), port(config.ingress_https_port));
        async move {
            if let Err(e) = ingress::serve(ingress, http, https).await {
                tracing::error!("ingress controller on {http:?}/{https:?}: {e}");
            }
        }
    });
    let beat = tokio::spawn(heartbeat::run(client.clone(), config.clone(), stop_rx.clone()));
    let syncing = tokio::spawn(sync_masters(client.clone(), config.name.clone(), MASTER_SYNC_INTERVAL));
    let pods = tokio::spawn(agent.run(stop_rx.clone()));
    let mut server_stop = stop_rx;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.server_tls {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("node server TLS: {}", p.display()));
        let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        let ca = tonic::transport::Certificate::from_pem(read(&tls.client_ca)?);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity).client_ca_root(ca))?;
    }
    let node = config.name.clone();
    let routes = tonic::service::Routes::new(skiff_proto::api::pod_logs_server::PodLogsServer::new(logs))
        .add_service(skiff_proto::api::node_metrics_server::NodeMetricsServer::new(sampler.clone()))
        .add_service(skiff_proto::api::pod_exec_server::PodExecServer::new(exec))
        .into_axum_router()
        .route(
            "/metrics",
            axum::routing::get(move |req: http::Request<axum::body::Body>| {
                stats::serve_metrics(callers.clone(), node.clone(), metrics.clone(), req)
            }),
        );
    let server = tokio::spawn(
        builder.accept_http1(true).add_routes(tonic::service::Routes::from(routes)).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = server_stop.changed().await;
            },
        ),
    );
    shutdown.await;
    let _ = stop_tx.send(true);
    sampling.abort();
    syncing.abort();
    dns.abort();
    serving.abort();
    serving_rt.shutdown_background();
    let _ = tokio::join!(beat, pods, server, proxying, policing, following);
    if let Some(routing) = routing {
        let _ = routing.await;
    }
    proxy::uninstall(&proxy_config);
    netpol::uninstall(&policy_config);
    Ok(())
}

/// How often a node daemon asks the masters who the masters are.
pub const MASTER_SYNC_INTERVAL: Duration = Duration::from_secs(60);

/// Keeps the client's masters in step with the cluster's membership (at once, then every
/// `interval`): a node configured with masters that are all replaced one by one over its life
/// still reaches the cluster through the ones that joined since.
async fn sync_masters(client: skiff_client::Client, node: String, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        match client.sync_endpoints().await {
            Ok(true) => tracing::info!("node {node}: masters now {}", client.endpoints().join(", ")),
            Ok(false) => {}
            Err(e) => tracing::warn!("node {node}: asking the masters for the masters: {}", e.message()),
        }
    }
}

/// Runs blocking work (commands, mounts, file trees) from async code without stalling the
/// runtime's other tasks: on a multi-thread runtime the worker first hands its queue to the
/// others (elsewhere, e.g. a unit test's current-thread runtime, it just runs).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// cgroup directories of a pod (`skiff/<node>/pod<uid>`) under every mounted controller.
pub fn pod_cgroups(node: &str, uid: &str) -> Vec<PathBuf> {
    let rel = format!("skiff/{node}/pod{uid}");
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|c| c.path().join(&rel))
        .filter(|p| p.is_dir())
        .collect()
}

/// Removes a pod's (by now empty) cgroup directories; the containers' own are removed by their
/// shims.
pub fn remove_pod_cgroups(node: &str, uid: &str) {
    for dir in pod_cgroups(node, uid) {
        // Leftover container directories first (a shim killed before its cleanup).
        for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if child.path().is_dir() {
                let _ = std::fs::remove_dir(child.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// `skiff node --reset`: kills every container of this node, waits for their shims to
/// record the exits, and removes overlays, sandboxes, cgroups, pod directories, the node's
/// iptables chains and the bridge.
pub fn reset(config: &NodeConfig) {
    let pods = config.root.join("pods");
    let uids: Vec<String> = std::fs::read_dir(&pods)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for uid in &uids {
        for i in instance::all_instances(&pods.join(uid)) {
            i.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && uids.iter().any(|u| {
            instance::all_instances(&pods.join(u))
                .iter()
                .any(|i| matches!(i.state(), instance::InstanceState::Running(_)))
        })
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for uid in &uids {
        for i in instance::all_instances(&pods.join(uid)) {
            i.release();
        }
        hostport::unpublish(&config.bridge, uid);
        sandbox::Sandbox::new(&config.root.join("ns"), uid).destroy();
        remove_pod_cgroups(&config.name, uid);
        let _ = std::fs::remove_dir_all(pods.join(uid));
    }
    for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(controller.path().join("skiff").join(&config.name));
    }
    hostport::remove_chain(&config.bridge);
    proxy::uninstall(&config.proxy_config());
    // A killed daemon's policy rules would drop traffic to the next pods given its addresses.
    netpol::uninstall(&netpol::Config { bridge: config.bridge.clone(), node: config.name.clone() });
    sandbox::delete_bridge(&config.bridge);
    let _ = nix::mount::umount2(&config.root.join("ns"), nix::mount::MntFlags::MNT_DETACH);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_like_the_kubelet_flag() {
        let t = parse_taints("gpu=yes:NoSchedule, dedicated:NoExecute").unwrap();
        assert_eq!(t[0], serde_json::json!({"key": "gpu", "value": "yes", "effect": "NoSchedule"}));
        assert_eq!(t[1]["key"], "dedicated");
        assert!(parse_taints("gpu=yes").unwrap_err().contains("Effect"));
        assert!(parse_taints("a:Sometimes").unwrap_err().contains("NoSchedule"));
    }
}
