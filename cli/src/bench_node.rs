//! `skiff bench-node`: the node daemon's figures, side by side with what it is compared to.
//!
//! 1. Container create + start + wait + delete of the same busybox bundle (`true`), as
//!    processes, interleaved: `skiff shim` (libcontainer; what the node daemon runs per
//!    container), Debian's `crun run` and `runc run`.
//! 2. Pod start latency, bind → Running with the image present: pods created already bound
//!    (`spec.nodeName`) at a steady rate on a fresh `skiff up --nodes 1` cluster, timed from
//!    the create's answer to the watch event that shows them Running; and the daemon's RSS.

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use skiff_proto::api::pods_client::PodsClient;
use skiff_proto::api::WatchRequest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchNodeArgs {
    /// Runs per runtime for the create/start/delete comparison.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Pods for the start-latency measurement.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods created per second.
    #[arg(long, default_value_t = 10)]
    rate: u64,
    /// The OCI layout to use (default: built with scripts/build-test-image).
    #[arg(long)]
    image: Option<PathBuf>,
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    format!("{:.1}", h.value_at_quantile(q) as f64 / 1000.0)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

pub(crate) fn build_image(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join("layout");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image");
    let status = Command::new(script).arg(&out).arg("busybox:test").stdout(Stdio::null()).status()?;
    if !status.success() {
        bail!("scripts/build-test-image failed");
    }
    Ok(out)
}

/// One create+start+wait+delete through `runtime`; returns its wall time.
fn run_once(runtime: &str, bundle: &Path, id: &str) -> anyhow::Result<Duration> {
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let status = match runtime {
        "skiff-shim" => {
            for f in ["exit.json", "started.json", "container.log"] {
                let _ = std::fs::remove_file(bundle.join(f));
            }
            let spec = skiff_node::shim::ShimSpec {
                id: id.to_string(),
                state_root: bundle.join("state"),
                memory_cgroup: None,
                log_max_bytes: 0,
            };
            skiff_node::shim::write_atomic(&bundle.join("shim.json"), &spec)?;
            Command::new(exe).arg("shim").arg(bundle).stdin(Stdio::null()).stdout(Stdio::null()).status()?
        }
        rt => {
            let out = Command::new(rt).args(["run", "--bundle"]).arg(bundle).arg(id).stdin(Stdio::null()).output()?;
            if !out.status.success() {
                bail!("{rt} run failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
            }
            out.status
        }
    };
    let took = start.elapsed();
    if !status.success() {
        bail!("{runtime} run failed: {status}");
    }
    if runtime == "skiff-shim" {
        let exit: skiff_node::shim::Exited =
            skiff_node::shim::read(&bundle.join("exit.json")).context("skiff shim wrote no exit.json")?;
        if exit.exit_code != 0 {
            bail!("skiff shim: container exited {}: {}", exit.exit_code, exit.message);
        }
    }
    Ok(took)
}

fn runtimes(args: &BenchNodeArgs, work: &Path, layout: &Path) -> anyhow::Result<()> {
    let store = skiff_node::image::ImageStore::open(work.join("store"))?;
    let image = store.import_layout(layout, "busybox:test")?;
    let (_, rootfs) = store.resolve("busybox:test").context("imported image")?;
    let container =
        skiff_proto::api::Container { name: "bench".into(), command: vec!["true".into()], ..Default::default() };
    let available: Vec<&str> = ["skiff-shim", "crun", "runc"]
        .into_iter()
        .filter(|r| *r == "skiff-shim" || Command::new(r).arg("--version").output().is_ok_and(|o| o.status.success()))
        .collect();
    let mut bundles = HashMap::new();
    for rt in &available {
        let bundle = work.join(format!("bundle-{rt}"));
        std::fs::create_dir_all(&bundle)?;
        let ctx = skiff_node::bundle::PodContext {
            cgroups_path: format!("/skiff-bench/{rt}"),
            pids_limit: 1024,
            ..Default::default()
        };
        let mut spec = skiff_node::bundle::spec(&container, &image, &rootfs, &[], "bench", &[], &ctx)
            .map_err(|e| anyhow::anyhow!(e))?;
        // Shared read-only rootfs: every run starts from the same tree.
        spec["root"]["readonly"] = json!(true);
        std::fs::write(bundle.join("config.json"), spec.to_string())?;
        bundles.insert(*rt, bundle);
    }
    // A warm-up run each; a runtime that cannot run here is reported, not fatal.
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut working = Vec::new();
    for rt in &available {
        match run_once(rt, &bundles[rt], &format!("bench-{rt}-warmup")) {
            Ok(_) => working.push(*rt),
            Err(e) => failed.push((rt.to_string(), e.to_string())),
        }
    }
    let available = working;
    let mut results: HashMap<&str, Histogram<u64>> = available.iter().map(|r| (*r, hist())).collect();
    // Interleaved, so drift hits every runtime alike.
    for i in 0..args.runs {
        for rt in &available {
            let took = run_once(rt, &bundles[rt], &format!("bench-{rt}-{i}"))?;
            results.get_mut(rt).unwrap().record(took.as_micros() as u64)?;
        }
    }
    println!("\ncontainer create+start+wait+delete of busybox `true`, {} runs each (ms)", args.runs);
    println!("{:<12} {:>8} {:>8} {:>8}", "runtime", "p50", "p99", "mean");
    for rt in &available {
        let h = &results[rt];
        println!("{:<12} {:>8} {:>8} {:>8.1}", rt, ms(h, 0.5), ms(h, 0.99), h.mean() / 1000.0);
    }
    for (rt, e) in &failed {
        println!("{rt:<12} cannot run here: {e}");
    }
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

fn pod_start(args: &BenchNodeArgs, work: &Path, layout: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = work.join("cluster");
    let up = Command::new(&exe)
        .args(["up", "--masters", "3", "--nodes", "1", "--dir"])
        .arg(&dir)
        .arg("--import-image")
        .arg(layout)
        .stdout(Stdio::null())
        .status()?;
    if !up.success() {
        bail!("skiff up failed");
    }
    let result = measure_pods(args, &dir);
    let _ =
        Command::new(&exe).args(["down", "--purge", "--grace", "5", "--dir"]).arg(&dir).stdout(Stdio::null()).status();
    result
}

fn measure_pods(args: &BenchNodeArgs, dir: &Path) -> anyhow::Result<()> {
    let cluster: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("cluster.json"))?)?;
    let node_pid = cluster["nodes"][0]["pid"].as_u64().unwrap_or(0) as u32;
    let config = skiff_client::ClientConfig::load(&dir.join("client.json"))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = skiff_client::Client::new(config).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let mut watch = client
            .with_failover(|channel, auth| async move {
                let req = WatchRequest { namespace: "default".into(), ..Default::default() };
                Ok(PodsClient::with_interceptor(channel, auth).watch(req).await?.into_inner())
            })
            .await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        tokio::spawn(async move {
            while let Ok(Some(ev)) = watch.message().await {
                let Some(pod) = ev.object else { continue };
                let running = pod.status.as_ref().is_some_and(|s| s.phase == "Running");
                if running {
                    let name = pod.metadata.map(|m| m.name).unwrap_or_default();
                    if tx.send((name, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        });
        let mut created: HashMap<String, Instant> = HashMap::new();
        let mut running: HashMap<String, Instant> = HashMap::new();
        let mut rss_at_50 = 0;
        let interval = Duration::from_micros(1_000_000 / args.rate.max(1));
        for i in 0..args.pods {
            let name = format!("bench-{i}");
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "c", "image": "busybox:test", "imagePullPolicy": "Never",
                                         "command": ["sleep", "3600"]}]},
            });
            let next = Instant::now() + interval;
            client.create("pods", "default", &pod).await?;
            created.insert(name, Instant::now());
            while let Ok((n, at)) = rx.try_recv() {
                running.entry(n).or_insert(at);
            }
            if running.len() >= 50 && rss_at_50 == 0 {
                rss_at_50 = rss_kib(node_pid);
            }
            tokio::time::sleep_until(next.into()).await;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while running.len() < args.pods && Instant::now() < deadline {
            if let Ok(Some((n, at))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                running.entry(n).or_insert(at);
            }
        }
        if running.len() < args.pods {
            bail!("only {} of {} pods Running within 120 s", running.len(), args.pods);
        }
        if rss_at_50 == 0 {
            rss_at_50 = rss_kib(node_pid);
        }
        let rss_all = rss_kib(node_pid);
        let mut h = hist();
        for (name, t0) in &created {
            let t1 = running[name];
            h.record(t1.saturating_duration_since(*t0).as_micros().max(1) as u64)?;
        }
        println!("\npod start latency, bind -> Running (image present), {} pods at {}/s (ms)", args.pods, args.rate);
        println!("{:<8} {:>8} {:>8} {:>8}", "p50", "p90", "p99", "max");
        println!(
            "{:<8} {:>8} {:>8} {:>8}",
            ms(&h, 0.5),
            ms(&h, 0.9),
            ms(&h, 0.99),
            format!("{:.1}", h.max() as f64 / 1000.0)
        );
        println!(
            "\nnode daemon RSS: {:.1} MiB with 50 pods, {:.1} MiB with {}",
            rss_at_50 as f64 / 1024.0,
            rss_all as f64 / 1024.0,
            args.pods
        );
        Ok(())
    })
}

pub fn run(args: BenchNodeArgs) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("bench-node runs containers: run it as root");
    }
    let work = tempfile::Builder::new().prefix("skiff-bench-node-").tempdir()?;
    let layout = match &args.image {
        Some(p) => p.clone(),
        None => build_image(work.path())?,
    };
    runtimes(&args, work.path(), &layout)?;
    pod_start(&args, work.path(), &layout)
}
