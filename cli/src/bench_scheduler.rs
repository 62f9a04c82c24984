//! `skiff bench-scheduler`: the scheduler and controllers on a 3-master cluster — registered
//! fake nodes (Node objects, no daemons), a burst of pending pods, how fast the leader binds
//! them and each pod's time from acknowledged create to bind; then how long the ReplicaSet
//! controller takes to create one big ReplicaSet's pods. No Kubernetes scheduler can be
//! installed here to run beside it, so the figures are read against Kubernetes' published ones.

use crate::bench::{skiff_system, start_api_cluster};
use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use skiff_client::{Client, ClientConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchSchedulerArgs {
    /// Fake nodes to register.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pending pods to create in one burst.
    #[arg(long, default_value_t = 30_000)]
    pods: usize,
    /// Replicas of the ReplicaSet whose pod creation is timed (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    rs_pods: usize,
    /// Concurrent clients creating objects.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Give up waiting for binds after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Pods created before any node that no node will ever select: the leader's CPU is
    /// measured with them pending and no nodes, and they stay pending through the run.
    #[arg(long, default_value_t = 3000)]
    pending: usize,
    /// Seconds over which the leader's CPU at rest is measured (0 skips it).
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
}

fn node(i: usize) -> Value {
    let name = format!("bench-node-{i}");
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            // No heartbeat: no daemon will renew it, and the node lifecycle controller leaves a
            // node that never had one alone (as one registered by hand) instead of tainting
            // these one by one while the figures are taken.
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
        }
    })
}

fn pod(ns: &str, i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-pod-{i}"), "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
    })
}

/// Runs `make(i)` for i in 0..n over `clients` concurrent tasks; returns each i's ack time.
async fn create_all(
    client: &Client,
    resource: &'static str,
    ns: &'static str,
    n: usize,
    clients: usize,
    make: fn(usize) -> Value,
    status: bool,
) -> anyhow::Result<Vec<Instant>> {
    let acks = Arc::new(Mutex::new(vec![Instant::now(); n]));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let (client, acks, next) = (client.clone(), acks.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let obj = make(i);
                let mut created =
                    client.create(resource, ns, &obj).await.with_context(|| format!("creating {resource} {i}"))?;
                if status {
                    created["status"] = obj["status"].clone();
                    client
                        .update_status(resource, &created)
                        .await
                        .with_context(|| format!("status of {resource} {i}"))?;
                }
                acks.lock().expect("not poisoned")[i] = Instant::now();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let acks = acks.lock().expect("not poisoned").clone();
    Ok(acks)
}

fn pod_in_default(i: usize) -> Value {
    pod("default", i)
}

fn never_scheduled(i: usize) -> Value {
    let mut p = pod("bench-pending", i);
    p["spec"]["nodeSelector"] = json!({"bench": "no-such-node"});
    p
}

/// Prints the leader's CPU at rest over `seconds`.
async fn idle_cpu(sys: &mut crate::bench::System, what: &str, seconds: u64) -> anyhow::Result<()> {
    if seconds == 0 {
        return Ok(());
    }
    let (leader, percent) = crate::bench::leader_cpu(sys, Duration::from_secs(seconds)).await?;
    println!(
        "{:<44} {percent:>9.1} % of a core (member {leader}, over {seconds} s)",
        format!("leader CPU at rest: {what}")
    );
    Ok(())
}

/// Waits until `n` pods of `namespace` have `PodScheduled=False`.
async fn wait_unschedulable(client: &Client, namespace: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = client.list("pods", namespace, "", "").await?;
        let reported = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "False"))
            })
            .count();
        if reported >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {reported} of {n} pending pods reported unschedulable within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn run(args: BenchSchedulerArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("skiff-bench-scheduler-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut sys = skiff_system(&dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let endpoints = start_api_cluster(&mut sys).await?;
        let (ca, cert, key) = sys.admin.clone().context("the API benchmark's cluster has an admin identity")?;
        let config = ClientConfig {
            endpoints,
            token: None,
            ca: Some(ca),
            client_cert: Some((cert, key)),
            namespace: "default".into(),
            timeout: Duration::from_secs(30),
        };
        let client = Client::new(config).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        println!(
            "machine: {} cores; 3 masters on loopback (the leader schedules); {} fake nodes, {} pods",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            args.nodes,
            args.pods
        );

        // phase: pods no node will select, and no nodes: the leader at rest
        if args.pending > 0 {
            client.create("namespaces", "", &json!({"metadata": {"name": "bench-pending"}})).await?;
            let t = Instant::now();
            create_all(&client, "pods", "bench-pending", args.pending, args.clients, never_scheduled, false).await?;
            wait_unschedulable(&client, "bench-pending", args.pending, Duration::from_secs(args.timeout)).await?;
            println!(
                "{:<44} {:>9.1} s",
                format!("{} pods created and reported unschedulable", args.pending),
                t.elapsed().as_secs_f64()
            );
            idle_cpu(&mut sys, &format!("{} pending pods, no nodes", args.pending), args.idle_seconds).await?;
        }

        // phase: register the nodes
        let t = Instant::now();
        create_all(&client, "nodes", "", args.nodes, args.clients, node, true).await?;
        println!("{:<44} {:>9.1} s", format!("register {} nodes", args.nodes), t.elapsed().as_secs_f64());

        // phase: a watch records when each pod is first seen bound
        let list = client.list("pods", "default", "", "").await?;
        let version = list["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
        let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let mut stream = client.watch("pods", "default", "", "", &version).await?;
        let seen = bound.clone();
        let watcher = tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                let Ok(obj) = serde_json::from_str::<Value>(&ev.json) else { continue };
                if obj["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    seen.lock().expect("not poisoned").entry(name).or_insert_with(Instant::now);
                }
            }
        });

        // phase: the burst of pending pods
        let t0 = Instant::now();
        let acks = create_all(&client, "pods", "default", args.pods, args.clients, pod_in_default, false).await?;
        let created_in = t0.elapsed();
        println!(
            "{:<44} {:>9.1} s  ({:.0} pods/s)",
            format!("create {} pods", args.pods),
            created_in.as_secs_f64(),
            args.pods as f64 / created_in.as_secs_f64()
        );
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        let mut last_report = Instant::now();
        loop {
            let n = bound.lock().expect("not poisoned").len();
            if n >= args.pods {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {n} of {} pods bound within {} s", args.pods, args.timeout);
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!("… {n} of {} pods bound after {:.0} s", args.pods, t0.elapsed().as_secs_f64());
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        watcher.abort();
        let bound = bound.lock().expect("not poisoned").clone();
        let last_bind = bound.values().max().copied().unwrap_or(t0);
        let first_bind = bound.values().min().copied().unwrap_or(t0);
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        for (i, ack) in acks.iter().enumerate() {
            if let Some(b) = bound.get(&format!("bench-pod-{i}")) {
                h.record(b.saturating_duration_since(*ack).as_micros().max(1) as u64)?;
            }
        }
        let span = last_bind.duration_since(t0).as_secs_f64();
        println!(
            "{:<44} {:>9.1} s  ({:.0} pods/s from the first create; {:.0} pods/s from the first bind)",
            format!("all {} pods bound", args.pods),
            span,
            args.pods as f64 / span,
            args.pods as f64 / last_bind.duration_since(first_bind).as_secs_f64().max(0.001)
        );
        println!(
            "{:<44} p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            "create acknowledged → bound",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );

        // phase: one ReplicaSet's pods, created by the controller
        if args.rs_pods > 0 {
            client.create("namespaces", "", &json!({"metadata": {"name": "bench-rs"}})).await?;
            let list = client.list("pods", "bench-rs", "", "").await?;
            let version = list["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
            let mut stream = client.watch("pods", "bench-rs", "", "", &version).await?;
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "big", "namespace": "bench-rs"},
                "spec": {"replicas": args.rs_pods, "selector": {"matchLabels": {"app": "big"}},
                         "template": {"metadata": {"labels": {"app": "big"}},
                                      "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}
            });
            let t = Instant::now();
            client.create("replicasets", "bench-rs", &rs).await?;
            let (mut added, mut bound) = (0, std::collections::HashSet::new());
            let mut all_added = None;
            let deadline = Instant::now() + Duration::from_secs(args.timeout);
            while bound.len() < args.rs_pods {
                let ev = tokio::time::timeout_at(deadline.into(), stream.message()).await.map_err(|_| {
                    anyhow::anyhow!(
                        "only {added} of {} ReplicaSet pods created and {} bound within {} s",
                        args.rs_pods,
                        bound.len(),
                        args.timeout
                    )
                })??;
                let Some(ev) = ev else { bail!("the watch ended after {added} pods") };
                if ev.r#type == "ADDED" {
                    added += 1;
                    if added == args.rs_pods {
                        all_added = Some(t.elapsed());
                    }
                }
                let Ok(obj) = serde_json::from_str::<Value>(&ev.json) else { continue };
                if obj["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                    bound.insert(obj["metadata"]["name"].as_str().unwrap_or_default().to_string());
                }
            }
            let created = all_added.unwrap_or_else(|| t.elapsed());
            println!(
                "{:<44} {:>9.1} s  ({:.0} pods/s)",
                format!("ReplicaSet of {} replicas: pods created", args.rs_pods),
                created.as_secs_f64(),
                args.rs_pods as f64 / created.as_secs_f64()
            );
            println!(
                "{:<44} {:>9.1} s",
                format!("ReplicaSet of {} replicas: all bound", args.rs_pods),
                t.elapsed().as_secs_f64()
            );
        }

        // phase: everything placed, nothing changing
        let placed = args.pods + args.rs_pods;
        idle_cpu(
            &mut sys,
            &format!("{placed} pods on {} nodes, {} pending", args.nodes, args.pending),
            args.idle_seconds,
        )
        .await?;
        Ok(())
    });
    drop(sys);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
