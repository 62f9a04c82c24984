//! `skiff bench-api`: the API server's figures on a 3-master cluster — pod creates per second
//! and their latency at 1 and 64 clients, listing 10,000 pods, and a watch fan-out of 1,000
//! watchers receiving 1,000 changes. No Kubernetes API server can be installed here to run
//! beside it, so the figures are read against Kubernetes' published SLOs.

use crate::bench::{skiff_system, start_api_cluster, Dial};
use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use skiff_proto::api::config_maps_client::ConfigMapsClient;
use skiff_proto::api::namespaces_client::NamespacesClient;
use skiff_proto::api::pods_client::PodsClient;
use skiff_proto::api::{ConfigMap, Container, ListRequest, Namespace, ObjectMeta, Pod, PodSpec, WatchRequest};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchApiArgs {
    /// Concurrent clients for the create measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Seconds per create measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Paced create rate (creates per second) for the latency-at-rate measurement.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Pods in the namespace for the list measurement.
    #[arg(long, default_value_t = 10_000)]
    list_pods: usize,
    /// Lists to time.
    #[arg(long, default_value_t = 20)]
    lists: usize,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    #[arg(long, default_value_t = 1000)]
    changes: usize,
}

fn pod(name: String) -> Pod {
    pod_in("default", name)
}

pub(crate) fn pod_in(namespace: &str, name: String) -> Pod {
    Pod {
        metadata: Some(ObjectMeta { name, namespace: namespace.into(), ..Default::default() }),
        spec: Some(PodSpec {
            containers: vec![Container { name: "c".into(), image: "busybox:1.36".into(), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Creates pods from `clients` tasks for `secs` (or until `total` pods exist); returns the
/// latency histogram, the count created and the elapsed seconds.
async fn create_pods(
    dial: &Dial,
    endpoints: &[String],
    namespace: &str,
    clients: usize,
    secs: Option<u64>,
    total: Option<usize>,
    tag: &str,
) -> anyhow::Result<(Histogram<u64>, u64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = PodsClient::new(dial.channel(&endpoints[c % endpoints.len()]).await?);
        let (stop, made, tag, ns) = (stop.clone(), made.clone(), tag.to_string(), namespace.to_string());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                if total.is_some_and(|t| made.fetch_add(1, Ordering::Relaxed) >= t) {
                    break;
                }
                let t0 = Instant::now();
                if client.create(pod_in(&ns, format!("{tag}-{c}-{n}"))).await.is_ok() {
                    h.record(t0.elapsed().as_micros().max(1) as u64).ok();
                }
                n += 1;
            }
            h
        }));
    }
    let started = Instant::now();
    if let Some(secs) = secs {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut all = hist();
    for t in tasks {
        all.add(t.await?)?;
    }
    Ok((all.clone(), all.len(), started.elapsed().as_secs_f64()))
}

pub fn run(args: BenchApiArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("skiff-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut sys = skiff_system(&dir)?;
    let dial = sys.dial.clone();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let endpoints = start_api_cluster(&mut sys).await?;
        println!("machine: {} cores; 3 masters on loopback; clients spread over all masters", std::thread::available_parallelism().map_or(0, |n| n.get()));
        println!("{:<34} {:>10} {:>9} {:>9}", "measurement", "rate /s", "p50 ms", "p99 ms");
        for &c in &args.clients {
            let (h, n, secs) = create_pods(&dial, &endpoints, "default", c, Some(args.seconds), None, &format!("c{c}")).await?;
            println!("{:<34} {:>10.0} {:>9.2} {:>9.2}", format!("pod create, {c} client(s)"), n as f64 / secs, ms(&h, 0.5), ms(&h, 0.99));
        }
        // Latency at a fixed offered load: one create issued every 1/rate s, whatever the replies.
        {
            let mut clients = Vec::new();
            for e in &endpoints {
                clients.push(PodsClient::new(dial.channel(e).await?));
            }
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = Vec::new();
            let t0 = Instant::now();
            for n in 0..(args.rate * args.seconds) as usize {
                tick.tick().await;
                let mut client = clients[n % clients.len()].clone();
                inflight.push(tokio::spawn(async move {
                    let t = Instant::now();
                    client.create(pod(format!("paced-{n}"))).await.ok().map(|_| t.elapsed())
                }));
            }
            let mut h = hist();
            let mut errors = 0;
            for t in inflight {
                match t.await? {
                    Some(d) => h.record(d.as_micros().max(1) as u64)?,
                    None => errors += 1,
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "{:<34} {:>10.0} {:>9.2} {:>9.2}",
                format!("pod create, paced at {}/s", args.rate),
                h.len() as f64 / secs,
                ms(&h, 0.5),
                ms(&h, 0.99)
            );
            if errors > 0 {
                println!("  ({errors} paced creates failed)");
            }
        }
        // The list runs over exactly `list_pods` pods in a namespace of their own.
        let mut ns = NamespacesClient::new(dial.channel(&endpoints[0]).await?);
        ns.create(Namespace { metadata: Some(ObjectMeta { name: "list".into(), ..Default::default() }), ..Default::default() }).await?;
        create_pods(&dial, &endpoints, "list", 64, None, Some(args.list_pods), "fill").await?;
        let mut h = hist();
        let mut items = 0;
        // A list is a read: one refused as Unavailable (a leader change, "etcdserver: leader
        // changed") is safe to try again on the next master; it is counted, not fatal.
        let mut unavailable = Vec::new();
        let mut i = 0;
        while h.len() < args.lists as u64 {
            let mut pods = PodsClient::new(dial.channel(&endpoints[i % endpoints.len()]).await?).max_decoding_message_size(512 << 20);
            i += 1;
            let t0 = Instant::now();
            match pods.list(ListRequest { namespace: "list".into(), ..Default::default() }).await {
                Ok(list) => {
                    h.record(t0.elapsed().as_micros() as u64)?;
                    items = list.into_inner().items.len();
                }
                Err(e) if e.code() == tonic::Code::Unavailable && unavailable.len() < 20 => unavailable.push(e.message().to_string()),
                Err(e) => return Err(e.into()),
            }
        }
        println!("{:<34} {:>10} {:>9.2} {:>9.2}", format!("list {items} pods (linearizable)"), "", ms(&h, 0.5), ms(&h, 0.99));
        if !unavailable.is_empty() {
            println!("  ({} lists refused as unavailable and tried again; first: {})", unavailable.len(), unavailable[0]);
        }
        // The same pods read in pages of 500 (limit + continue, as kubectl and informers do):
        // each page should cost the same, whatever is left of the range after it.
        let mut pods = PodsClient::new(dial.channel(&endpoints[0]).await?).max_decoding_message_size(512 << 20);
        let (mut pages, mut read) = (Vec::<Duration>::new(), 0);
        let mut token = String::new();
        let walk = Instant::now();
        loop {
            let t0 = Instant::now();
            let req = ListRequest { namespace: "list".into(), limit: 500, r#continue: token.clone(), ..Default::default() };
            let page = pods.list(req).await?.into_inner();
            pages.push(t0.elapsed());
            read += page.items.len();
            token = page.metadata.map(|m| m.r#continue).unwrap_or_default();
            if token.is_empty() {
                break;
            }
        }
        println!(
            "{:<34} {:>10} {:>9.2} {:>9.2}",
            format!("list {read} pods in {} pages of 500", pages.len()),
            "",
            walk.elapsed().as_secs_f64() * 1e3 / pages.len() as f64,
            pages.iter().max().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
        println!(
            "  (columns: mean and slowest page; first page {:.2} ms, last {:.2} ms, whole walk {:.1} ms)",
            pages.first().copied().unwrap_or_default().as_secs_f64() * 1e3,
            pages.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            walk.elapsed().as_secs_f64() * 1e3
        );

        // Watch fan-out: `watchers` streams on one namespace, then `changes` creates.
        let mut ns = NamespacesClient::new(dial.channel(&endpoints[0]).await?);
        ns.create(Namespace { metadata: Some(ObjectMeta { name: "fanout".into(), ..Default::default() }), ..Default::default() }).await?;
        let sent: Arc<Vec<OnceLock<Instant>>> = Arc::new((0..args.changes).map(|_| OnceLock::new()).collect());
        let ready = Arc::new(AtomicUsize::new(0));
        let mut channels = Vec::new();
        for i in 0..48 {
            channels.push(dial.channel(&endpoints[i % endpoints.len()]).await?);
        }
        let mut watchers = Vec::new();
        for w in 0..args.watchers {
            let mut client = ConfigMapsClient::new(channels[w % channels.len()].clone());
            let (sent, ready, changes) = (sent.clone(), ready.clone(), args.changes);
            watchers.push(tokio::spawn(async move {
                let mut h = hist();
                let req = WatchRequest { namespace: "fanout".into(), resource_version: "0".into(), ..Default::default() };
                let mut stream = client.watch(req).await.context("open watch")?.into_inner();
                ready.fetch_add(1, Ordering::SeqCst);
                let mut got = 0;
                while got < changes {
                    let Some(ev) = tokio::time::timeout(Duration::from_secs(120), stream.message()).await.context("watch stalled")?? else { break };
                    let name = ev.object.and_then(|o| o.metadata).map(|m| m.name).unwrap_or_default();
                    if let Some(i) = name.strip_prefix("cm-").and_then(|i| i.parse::<usize>().ok()) {
                        if let Some(t) = sent.get(i).and_then(|s| s.get()) {
                            h.record(t.elapsed().as_micros().max(1) as u64).ok();
                        }
                        got += 1;
                    }
                }
                anyhow::Ok((h, got))
            }));
        }
        while ready.load(Ordering::SeqCst) < args.watchers {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut writer = ConfigMapsClient::new(dial.channel(&endpoints[0]).await?);
        let t0 = Instant::now();
        for i in 0..args.changes {
            sent[i].set(Instant::now()).ok();
            let cm = ConfigMap { metadata: Some(ObjectMeta { name: format!("cm-{i}"), namespace: "fanout".into(), ..Default::default() }), ..Default::default() };
            writer.create(cm).await?;
        }
        let write_secs = t0.elapsed().as_secs_f64();
        let mut lag = hist();
        let mut delivered = 0;
        for w in watchers {
            let (h, got) = w.await??;
            lag.add(h)?;
            delivered += got;
        }
        let total = t0.elapsed().as_secs_f64();
        println!(
            "{:<34} {:>10.0} {:>9.2} {:>9.2}",
            format!("watch: {} watchers x {} changes", args.watchers, args.changes),
            delivered as f64 / total,
            ms(&lag, 0.5),
            ms(&lag, 0.99)
        );
        println!("  (rate = events delivered per second; lag from issuing each write to its delivery; {} of {} delivered; writes took {write_secs:.1} s)", delivered, args.watchers * args.changes);
        anyhow::Ok(())
    });
    drop(sys);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
