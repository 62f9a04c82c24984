//! `skiff bench-rest`: the Kubernetes REST API beside the gRPC API on the same 3-master
//! cluster in one run — pod get, create and list at 1 and 64 clients, each client with a
//! connection of its own over TLS as `admin` (client certificate). REST is JSON over HTTP/2,
//! as kubectl and client-go speak it; gRPC is the generated Pods service.

use crate::bench::{skiff_system, start_api_cluster};
use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use skiff_proto::api::pods_client::PodsClient;
use skiff_proto::api::{GetRequest, ListRequest, ObjectMeta};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchRestArgs {
    /// Concurrent clients per measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Pods in the namespace the list reads.
    #[arg(long, default_value_t = 1000)]
    list_pods: usize,
}

use crate::bench_api::pod_in as pod;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Get,
    Create,
    List,
}

/// One client of either protocol.
enum Caller {
    Grpc(PodsClient<tonic::transport::Channel>),
    Rest { http: reqwest::Client, base: String },
}

impl Caller {
    /// One call; `n` makes create names unique.
    async fn call(&mut self, op: Op, tag: &str, n: usize) -> anyhow::Result<()> {
        match self {
            Caller::Grpc(c) => {
                match op {
                    Op::Get => {
                        c.get(GetRequest { namespace: "bench".into(), name: "target".into() }).await?;
                    }
                    Op::Create => {
                        c.create(pod("bench", format!("{tag}-{n}"))).await?;
                    }
                    Op::List => {
                        c.list(ListRequest { namespace: "list".into(), ..Default::default() }).await?;
                    }
                }
                Ok(())
            }
            Caller::Rest { http, base } => {
                let response = match op {
                    Op::Get => http.get(format!("{base}/api/v1/namespaces/bench/pods/target")).send().await?,
                    Op::Create => {
                        let body = serde_json::to_vec(&pod("bench", format!("{tag}-{n}")))?;
                        http.post(format!("{base}/api/v1/namespaces/bench/pods"))
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await?
                    }
                    Op::List => http.get(format!("{base}/api/v1/namespaces/list/pods")).send().await?,
                };
                let status = response.status();
                // The whole body is read, as a client decoding it would.
                let body = response.bytes().await?;
                anyhow::ensure!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&body));
                Ok(())
            }
        }
    }
}

/// How to make callers of each protocol.
struct Callers {
    dial: crate::bench::Dial,
    ca: reqwest::Certificate,
    identity: reqwest::Identity,
}

impl Callers {
    async fn make(&self, rest: bool, endpoint: &str) -> anyhow::Result<Caller> {
        if !rest {
            let channel = self.dial.channel(endpoint).await?;
            return Ok(Caller::Grpc(PodsClient::new(channel).max_decoding_message_size(256 << 20)));
        }
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .http2_prior_knowledge()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Caller::Rest { http, base: format!("https://{endpoint}") })
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

/// Runs `op` from `clients` callers for `secs`; returns calls per second, p50 and p99 (ms).
async fn measure(
    callers: &Callers,
    endpoints: &[String],
    rest: bool,
    op: Op,
    clients: usize,
    secs: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let tag = format!("{}-{op:?}-{clients}", if rest { "rest" } else { "grpc" }).to_lowercase();
    for c in 0..clients {
        let mut caller = callers.make(rest, &endpoints[c % endpoints.len()]).await?;
        let (stop, failed, tag) = (stop.clone(), failed.clone(), format!("{tag}-{c}"));
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match caller.call(op, &tag, n).await {
                    Ok(()) => h.record(t0.elapsed().as_micros().max(1) as u64).ok(),
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("{tag}: {e:#}");
                        }
                        None
                    }
                };
                n += 1;
            }
            h
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = hist();
    for t in tasks {
        all.add(t.await?)?;
    }
    let failed = failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} {op:?} calls failed");
    anyhow::ensure!(!all.is_empty(), "no {op:?} call completed in {secs} s");
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok((all.len() as f64 / started.elapsed().as_secs_f64(), ms(0.5), ms(0.99)))
}

pub fn run(args: BenchRestArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("skiff-bench-rest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut sys = skiff_system(&dir)?;
    let (ca, cert, key) = sys.admin.clone().context("the benchmark cluster has an admin certificate")?;
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let callers = Callers {
        dial: sys.dial.clone(),
        ca: reqwest::Certificate::from_pem(&read(&ca)?)?,
        identity: reqwest::Identity::from_pem(&[read(&cert)?, read(&key)?].concat())?,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let endpoints = start_api_cluster(&mut sys).await?;
        // The objects read: one pod to get, and a namespace of `list_pods` pods to list.
        let mut setup = PodsClient::new(callers.dial.channel(&endpoints[0]).await?);
        let mut namespaces =
            skiff_proto::api::namespaces_client::NamespacesClient::new(callers.dial.channel(&endpoints[0]).await?);
        for name in ["bench", "list"] {
            let ns = skiff_proto::api::Namespace {
                metadata: Some(ObjectMeta { name: name.into(), ..Default::default() }),
                ..Default::default()
            };
            namespaces.create(ns).await?;
        }
        setup.create(pod("bench", "target".into())).await?;
        for n in 0..args.list_pods {
            setup.create(pod("list", format!("fill-{n}"))).await?;
        }
        println!(
            "machine: {} cores; 3 masters on loopback, TLS, client certificate; {} s per cell; clients spread over all masters",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            args.seconds
        );
        println!("{:<28} {:>7} {:>6} {:>10} {:>9} {:>9}", "operation", "clients", "api", "calls/s", "p50 ms", "p99 ms");
        for (op, what) in [(Op::Get, "get pod".to_string()), (Op::Create, "create pod".into()), (Op::List, format!("list {} pods", args.list_pods))] {
            for &c in &args.clients {
                let mut rates = Vec::new();
                for rest in [false, true] {
                    let (rate, p50, p99) = measure(&callers, &endpoints, rest, op, c, args.seconds).await?;
                    println!(
                        "{:<28} {:>7} {:>6} {:>10.0} {:>9.2} {:>9.2}",
                        what,
                        c,
                        if rest { "REST" } else { "gRPC" },
                        rate,
                        p50,
                        p99
                    );
                    rates.push(rate);
                }
                println!("{:<28} {:>7} {:>6} {:>9.2}x", "", "", "gRPC/REST", rates[0] / rates[1]);
            }
        }
        anyhow::Ok(())
    });
    drop(sys);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
