//! `skiff bench`: the store benchmark. Starts a 3-master Skiff cluster and a 3-member etcd
//! cluster (Debian's `etcd`) on loopback in the same run, drives both with the same gRPC client
//! code, and prints throughput and latency side by side, then failover times (SIGKILL of the
//! leader until the next acknowledged write). With `--tls` both systems serve their client
//! and peer ports over TLS with certificates from a CA made for the run.

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent client counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    /// Value size in bytes for puts.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Seconds per (workload, client count, system).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Leader kills for the failover measurement (0 to skip).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Systems to run: skiff, etcd, or both.
    #[arg(long, value_delimiter = ',', default_value = "skiff,etcd")]
    systems: Vec<String>,
    /// The etcd server binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Working directory (a fresh temporary one by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// TLS on both systems' client and peer ports (etcd: --cert-file and --peer-cert-file with
    /// peer client-certificate auth; Skiff: --client-cert and its peer mutual TLS).
    #[arg(long)]
    tls: bool,
}

/// Certificates for a TLS run: a CA, a server certificate for 127.0.0.1 (both systems' client
/// ports and etcd's peers), and each Skiff member's peer certificate.
pub(crate) struct BenchPki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    skiff_peers: Vec<skiff_raft_store::peer_tls::PeerTls>,
    ca_pem: Vec<u8>,
    /// The API benchmarks' identity: CN `admin`, O `system:masters`.
    admin: skiff_proto::pki::Issued,
    /// The store's root password (0600), which turns the store's auth on.
    root_password: PathBuf,
}

impl BenchPki {
    fn generate(dir: &Path) -> anyhow::Result<BenchPki> {
        use skiff_proto::pki::{Ca, Subject, Usage};
        use skiff_raft_store::peer_tls::{member_common_name, member_name};
        std::fs::create_dir_all(dir)?;
        let ca_path = dir.join("ca.crt");
        let ca = Ca::create(&ca_path, "skiff-bench-ca")?;
        let both = [Usage::ServerAuth, Usage::ClientAuth];
        let server =
            Subject { common_name: "skiff-bench-server", sans: &["127.0.0.1", "localhost"], ..Default::default() };
        let server = ca.issue(&dir.join("server"), &server, &both)?;
        let (server_cert, server_key) = (server.cert, server.key);
        let mut skiff_peers = Vec::new();
        for id in 1..=3u64 {
            let (cn, dns) = (member_common_name(id), member_name(id));
            let peer = Subject { common_name: &cn, sans: &[&dns], ..Default::default() };
            let issued = ca.issue(&dir.join(format!("peer-{id}")), &peer, &both)?;
            skiff_peers.push(skiff_raft_store::peer_tls::PeerTls {
                cert: issued.cert,
                key: issued.key,
                ca: ca_path.clone(),
            });
        }
        let admin = Subject { common_name: "admin", organization: Some("system:masters"), ..Default::default() };
        let admin = ca.issue(&dir.join("admin"), &admin, &[Usage::ClientAuth])?;
        let root_password = dir.join("root.password");
        let password: String = (0..32).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect();
        crate::up::write_private(&root_password, password.as_bytes())?;
        Ok(BenchPki {
            ca: ca_path,
            server_cert,
            server_key,
            skiff_peers,
            ca_pem: ca.pem().into_bytes(),
            admin,
            root_password,
        })
    }
}

/// One member process of a benchmarked cluster, restartable with the same arguments.
pub(crate) struct Proc {
    args: Vec<String>,
    program: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub(crate) endpoint: String,
    /// The member id the system reports in Status.leader (learned at start).
    member_id: u64,
}

impl Proc {
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

pub(crate) struct System {
    name: &'static str,
    pub(crate) procs: Vec<Proc>,
    /// How clients reach its client ports.
    pub(crate) dial: Dial,
    /// The API benchmarks' client configuration files: CA, certificate, key.
    pub(crate) admin: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl System {
    /// A channel to one of this system's client ports.
    async fn channel(&self, addr: &str) -> anyhow::Result<Channel> {
        self.dial.channel(addr).await
    }
}

/// How to reach a system's client ports: plaintext, or TLS verified against a CA (PEM) and
/// presenting a client certificate when there is one.
#[derive(Clone, Default)]
pub(crate) struct Dial {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Dial {
    pub(crate) async fn channel(&self, addr: &str) -> anyhow::Result<Channel> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        if let Some(ca) = &self.ca {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint.connect().await?)
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill9();
        }
    }
}

/// Three masters as `skiff up` runs them, for the API benchmarks: TLS on every port, the
/// store's auth on, and clients authenticated by certificate (the benchmark as `admin`).
pub(crate) fn skiff_system(dir: &Path) -> anyhow::Result<System> {
    let pki = BenchPki::generate(&dir.join("pki"))?;
    let mut sys = skiff_system_with(dir, Some(&pki), true)?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    sys.dial.identity = Some((read(&pki.admin.cert)?, read(&pki.admin.key)?));
    sys.admin = Some((pki.ca.clone(), pki.admin.cert.clone(), pki.admin.key.clone()));
    Ok(sys)
}

/// Three Skiff masters in `dir`; with `pki`, TLS on their client and peer ports, and with
/// `client_auth` also client certificates required and the store's auth on (the store
/// benchmark runs without, as etcd does there).
fn skiff_system_with(dir: &Path, pki: Option<&BenchPki>, client_auth: bool) -> anyhow::Result<System> {
    let ports = skiff_chaos::net::free_loopback_ports(6)?;
    let cluster: Vec<String> =
        (0..3).map(|i| format!("{}=127.0.0.1:{}/127.0.0.1:{}", i + 1, ports[2 * i], ports[2 * i + 1])).collect();
    let exe = std::env::current_exe()?;
    let procs = (0..3)
        .map(|i| Proc {
            program: exe.clone(),
            args: vec![
                "master".into(),
                "--id".into(),
                (i + 1).to_string(),
                "--data-dir".into(),
                dir.join(format!("skiff-{}", i + 1)).to_string_lossy().into(),
                "--peer-addr".into(),
                format!("127.0.0.1:{}", ports[2 * i]),
                "--client-addr".into(),
                format!("127.0.0.1:{}", ports[2 * i + 1]),
                "--initial-cluster".into(),
                cluster.join(","),
            ]
            .into_iter()
            .chain(pki.into_iter().flat_map(|pki| {
                let peer = &pki.skiff_peers[i];
                [
                    ("--client-cert", &pki.server_cert),
                    ("--client-key", &pki.server_key),
                    ("--peer-cert", &peer.cert),
                    ("--peer-key", &peer.key),
                    ("--peer-ca", &peer.ca),
                ]
                .map(|(flag, path)| [flag.to_string(), path.to_string_lossy().into_owned()])
                .into_iter()
                .flatten()
            }))
            .chain(pki.filter(|_| client_auth).into_iter().flat_map(|pki| {
                [("--client-ca", &pki.ca), ("--root-password-file", &pki.root_password)]
                    .map(|(flag, path)| [flag.to_string(), path.to_string_lossy().into_owned()])
                    .into_iter()
                    .flatten()
            }))
            .collect(),
            log: dir.join(format!("skiff-{}.log", i + 1)),
            child: None,
            endpoint: format!("127.0.0.1:{}", ports[2 * i + 1]),
            member_id: 0,
        })
        .collect();
    let dial = Dial { ca: pki.map(|p| p.ca_pem.clone()), identity: None };
    Ok(System { name: "skiff", procs, dial, admin: None })
}

fn etcd_system(dir: &Path, bin: &Path, pki: Option<&BenchPki>) -> anyhow::Result<System> {
    let ports = skiff_chaos::net::free_loopback_ports(6)?;
    let scheme = if pki.is_some() { "https" } else { "http" };
    let cluster: Vec<String> = (0..3).map(|i| format!("e{}={scheme}://127.0.0.1:{}", i + 1, ports[2 * i])).collect();
    let tls: Vec<String> = match pki {
        None => Vec::new(),
        Some(p) => vec![
            format!("--cert-file={}", p.server_cert.display()),
            format!("--key-file={}", p.server_key.display()),
            format!("--peer-cert-file={}", p.server_cert.display()),
            format!("--peer-key-file={}", p.server_key.display()),
            format!("--peer-trusted-ca-file={}", p.ca.display()),
            "--peer-client-cert-auth".into(),
        ],
    };
    let procs = (0..3)
        .map(|i| {
            let peer = format!("{scheme}://127.0.0.1:{}", ports[2 * i]);
            let client = format!("{scheme}://127.0.0.1:{}", ports[2 * i + 1]);
            Proc {
                program: bin.to_path_buf(),
                args: [
                    vec![
                        format!("--name=e{}", i + 1),
                        format!("--data-dir={}", dir.join(format!("etcd-{}", i + 1)).display()),
                        format!("--listen-peer-urls={peer}"),
                        format!("--initial-advertise-peer-urls={peer}"),
                        format!("--listen-client-urls={client}"),
                        format!("--advertise-client-urls={client}"),
                        format!("--initial-cluster={}", cluster.join(",")),
                        "--initial-cluster-state=new".into(),
                        "--initial-cluster-token=skiff-bench".into(),
                    ],
                    tls.clone(),
                ]
                .concat(),
                log: dir.join(format!("etcd-{}.log", i + 1)),
                child: None,
                endpoint: format!("127.0.0.1:{}", ports[2 * i + 1]),
                member_id: 0,
            }
        })
        .collect();
    let dial = Dial { ca: pki.map(|p| p.ca_pem.clone()), identity: None };
    Ok(System { name: "etcd", procs, dial, admin: None })
}

/// Starts the masters of `sys`, waits for a leader and for the API's system namespaces (the
/// leader's first act); returns the client endpoints.
pub(crate) async fn start_api_cluster(sys: &mut System) -> anyhow::Result<Vec<String>> {
    use skiff_proto::api::namespaces_client::NamespacesClient;
    for p in &mut sys.procs {
        p.start()?;
    }
    wait_leader(sys, Duration::from_secs(60)).await?;
    let endpoints: Vec<String> = sys.procs.iter().map(|p| p.endpoint.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ns = NamespacesClient::new(sys.channel(&endpoints[0]).await?);
        let req = skiff_proto::api::GetRequest { name: "default".into(), ..Default::default() };
        if ns.get(req).await.is_ok() {
            return Ok(endpoints);
        }
        if Instant::now() > deadline {
            bail!("the API did not bootstrap its namespaces within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every live member answers Status and they agree on a leader; returns its member id.
pub(crate) async fn wait_leader(sys: &mut System, timeout: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut leaders = Vec::new();
        let dial = sys.dial.clone();
        for p in sys.procs.iter_mut().filter(|p| p.child.is_some()) {
            let Ok(ch) = dial.channel(&p.endpoint).await else { break };
            let Ok(st) = MaintenanceClient::new(ch).status(StatusRequest {}).await else { break };
            let st = st.into_inner();
            p.member_id = st.header.map_or(0, |h| h.member_id);
            leaders.push(st.leader);
        }
        let live = sys.procs.iter().filter(|p| p.child.is_some()).count();
        if leaders.len() == live && leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            return Ok(leaders[0]);
        }
        if Instant::now() > deadline {
            bail!("{}: no agreed leader within {timeout:?} (saw {leaders:?})", sys.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The share of one core the current leader's process used over `window` (user + system
/// time from `/proc/PID/stat`), with the leader's member id.
pub(crate) async fn leader_cpu(sys: &mut System, window: Duration) -> anyhow::Result<(u64, f64)> {
    let leader = wait_leader(sys, Duration::from_secs(30)).await?;
    let pid = sys
        .procs
        .iter()
        .find(|p| p.member_id == leader)
        .and_then(|p| p.child.as_ref())
        .map(|c| c.id())
        .context("the leader is one of ours")?;
    let process = procfs::process::Process::new(pid as i32)?;
    let ticks = |p: &procfs::process::Process| -> anyhow::Result<u64> {
        let stat = p.stat()?;
        Ok(stat.utime + stat.stime)
    };
    let (start, t0) = (ticks(&process)?, Instant::now());
    tokio::time::sleep(window).await;
    let used = (ticks(&process)? - start) as f64 / procfs::ticks_per_second() as f64;
    Ok((leader, used / t0.elapsed().as_secs_f64() * 100.0))
}

#[derive(Clone, Copy, Debug)]
enum Workload {
    Put,
    RangeLinearizable,
    RangeSerializable,
}

struct Figures {
    ops: u64,
    secs: f64,
    hist: Histogram<u64>,
    errors: u64,
}

async fn drive(
    sys: &System,
    workload: Workload,
    clients: usize,
    value_size: usize,
    secs: u64,
) -> anyhow::Result<Figures> {
    let conns = clients.clamp(1, 16);
    let endpoints: Vec<&str> = sys.procs.iter().map(|p| p.endpoint.as_str()).collect();
    let mut channels = Vec::new();
    for i in 0..conns {
        channels.push(sys.channel(endpoints[i % endpoints.len()]).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let value = vec![b'v'; value_size];
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = KvClient::new(channels[c % conns].clone());
        let stop = stop.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let (mut errors, mut n) = (0u64, c as u64 * 7919);
            while !stop.load(Ordering::Relaxed) {
                n = n.wrapping_add(1);
                let key = format!("bench/{}", n % 10_000).into_bytes();
                let t = Instant::now();
                let ok = match workload {
                    Workload::Put => {
                        kv.put(PutRequest { key, value: value.clone(), ..Default::default() }).await.is_ok()
                    }
                    Workload::RangeLinearizable | Workload::RangeSerializable => kv
                        .range(RangeRequest {
                            key,
                            serializable: matches!(workload, Workload::RangeSerializable),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                };
                if ok {
                    hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                } else {
                    errors += 1;
                }
            }
            (hist, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        hist.add(h)?;
        errors += e;
    }
    Ok(Figures { ops: hist.len(), secs: started.elapsed().as_secs_f64(), hist, errors })
}

/// SIGKILL the leader, time until a write is acknowledged by a survivor, restart, repeat.
async fn failover(sys: &mut System, kills: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for round in 0..kills {
        let leader = wait_leader(sys, Duration::from_secs(60)).await?;
        let idx = sys.procs.iter().position(|p| p.member_id == leader).context("leader is one of ours")?;
        let survivors: Vec<String> =
            sys.procs.iter().enumerate().filter(|(i, _)| *i != idx).map(|(_, p)| p.endpoint.clone()).collect();
        let mut clients = Vec::new();
        for s in &survivors {
            clients.push(KvClient::new(sys.channel(s).await?));
        }
        let killed_at = Instant::now();
        sys.procs[idx].kill9();
        let mut attempt = 0usize;
        loop {
            let n = clients.len();
            let kv = &mut clients[attempt % n];
            attempt += 1;
            let req = PutRequest {
                key: format!("failover/{round}").into_bytes(),
                value: b"x".to_vec(),
                ..Default::default()
            };
            if tokio::time::timeout(Duration::from_millis(1500), kv.put(req)).await.is_ok_and(|r| r.is_ok()) {
                break;
            }
            if killed_at.elapsed() > Duration::from_secs(30) {
                bail!("{}: no write acknowledged 30s after killing the leader", sys.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        times.push(killed_at.elapsed());
        sys.procs[idx].start()?;
        wait_leader(sys, Duration::from_secs(60)).await?;
    }
    Ok(times)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("skiff-bench-{}", std::process::id()));
            tmp.clone()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let pki = if args.tls { Some(BenchPki::generate(&dir.join("pki"))?) } else { None };
    let mut systems = Vec::new();
    for name in &args.systems {
        systems.push(match name.as_str() {
            "skiff" => skiff_system_with(&dir, pki.as_ref(), false)?,
            "etcd" => etcd_system(&dir, &args.etcd_bin, pki.as_ref())?,
            other => bail!("--systems: unknown system {other:?} (skiff or etcd)"),
        });
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        for sys in &mut systems {
            for p in &mut sys.procs {
                p.start()?;
            }
            wait_leader(sys, Duration::from_secs(60)).await?;
        }
        println!(
            "machine: {} cores, value {} B, {} s per cell; clients spread over all 3 members; {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            args.value_size,
            args.seconds,
            if args.tls { "TLS on client and peer ports" } else { "plaintext" }
        );
        println!(
            "{:<22} {:>7} {:>6} {:>10} {:>9} {:>9} {:>7}",
            "workload", "clients", "system", "ops/s", "p50 ms", "p99 ms", "errors"
        );
        for workload in [Workload::Put, Workload::RangeLinearizable, Workload::RangeSerializable] {
            for &clients in &args.clients {
                for sys in &systems {
                    let f = drive(sys, workload, clients, args.value_size, args.seconds).await?;
                    let name = match workload {
                        Workload::Put => format!("put {}B", args.value_size),
                        Workload::RangeLinearizable => "get (linearizable)".into(),
                        Workload::RangeSerializable => "get (serializable)".into(),
                    };
                    println!(
                        "{:<22} {:>7} {:>6} {:>10.0} {:>9.2} {:>9.2} {:>7}",
                        name,
                        clients,
                        sys.name,
                        f.ops as f64 / f.secs,
                        f.hist.value_at_quantile(0.5) as f64 / 1000.0,
                        f.hist.value_at_quantile(0.99) as f64 / 1000.0,
                        f.errors
                    );
                }
            }
        }
        if args.kills > 0 {
            println!("\nfailover: SIGKILL of the leader until the next acknowledged write, {} kills", args.kills);
            println!("{:<6} {:>9} {:>9} {:>9} {:>9}", "system", "min ms", "p50 ms", "p99 ms", "max ms");
            for sys in &mut systems {
                let mut t = failover(sys, args.kills).await?;
                t.sort();
                println!(
                    "{:<6} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
                    sys.name,
                    pct(&t, 0.0),
                    pct(&t, 0.5),
                    pct(&t, 0.99),
                    pct(&t, 1.0)
                );
            }
        }
        anyhow::Ok(())
    })?;
    drop(systems);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
