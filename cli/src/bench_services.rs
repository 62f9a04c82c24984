//! `skiff bench-services`: the service data path and the proxy's programming time.
//!
//! 1. Programming, in a network namespace of its own (`unshare --net`, so the machine's rules
//!    are untouched): the proxy's rules for N services × M endpoints written from nothing,
//!    then one endpoint changed — as the proxy does it (only the chains that changed) and, side
//!    by side, a full rewrite.
//! 2. Requests per second and latency with Debian's `wrk` against busybox httpd in one pod,
//!    on a fresh `skiff up --nodes 2` cluster: from a pod on the other node straight to the pod
//!    IP and through the ClusterIP; from the machine straight to the pod IP and through the
//!    node's ingress controller. Ratios to the direct path in the same run.

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchServicesArgs {
    /// Seconds of load per path. Short on purpose: busybox httpd closes every connection, so
    /// each request is a new connection from one address to one pod port, and about 28,000
    /// ephemeral ports in TIME_WAIT (60 s) is the ceiling of every path measured from the
    /// machine (the ingress's backend side included).
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// wrk connections. busybox httpd listens with a backlog of 9: well above that its
    /// accept queue overflows (SYNs dropped, 1 s retransmits) on every path.
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Services for the programming measurement.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Endpoint changes timed.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Only the programming measurement, in the current network namespace (how the bench
    /// runs it inside `unshare --net`).
    #[arg(long, hide = true)]
    rules_here: bool,
    /// Skip the data path measurement.
    #[arg(long)]
    rules_only: bool,
    /// The OCI layout to use (default: built with scripts/build-test-image).
    #[arg(long)]
    image: Option<PathBuf>,
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn objects(
    services: usize,
    endpoints: usize,
    changed: usize,
) -> (Vec<Value>, Vec<std::sync::Arc<skiff_proto::api::EndpointSlice>>) {
    use skiff_proto::api::{EndpointSlice, SliceEndpoint, SlicePort};
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for i in 0..services {
        let name = format!("svc-{i}");
        svcs.push(json!({"metadata": {"name": name, "namespace": "bench"},
            "spec": {"type": "ClusterIP", "clusterIP": format!("10.96.{}.{}", i / 250, 1 + i % 250),
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}));
        let endpoints: Vec<SliceEndpoint> = (0..endpoints)
            .map(|j| {
                // The changed service's first endpoint moves to a new address each change.
                let last = if i == 0 && j == 0 { 200 + changed % 50 } else { j + 2 };
                SliceEndpoint { addresses: vec![format!("10.244.{}.{}", i % 250, last)], ..Default::default() }
            })
            .collect();
        let labels = [("kubernetes.io/service-name".to_string(), name.clone())].into();
        slices.push(std::sync::Arc::new(EndpointSlice {
            metadata: Some(skiff_proto::api::ObjectMeta {
                name: format!("{name}-bench"),
                namespace: "bench".into(),
                labels,
                ..Default::default()
            }),
            address_type: "IPv4".into(),
            endpoints,
            ports: vec![SlicePort {
                name: "http".into(),
                port: Some(8080),
                protocol: "TCP".into(),
                ..Default::default()
            }],
            ..Default::default()
        }));
    }
    (svcs, slices)
}

/// The programming measurement, in this process's network namespace.
fn rules_here(args: &BenchServicesArgs) -> anyhow::Result<()> {
    use skiff_node::proxy;
    let cfg = proxy::ProxyConfig {
        bridge: "skbench0".into(),
        node_ip: "127.0.0.2".into(),
        cluster_cidr: "10.244.0.0/16".into(),
        service_cidr: "10.96.0.0/16".into(),
        pod_cidr: "10.244.0.0/24".into(),
    };
    let (svcs, eps) = objects(args.services, args.endpoints, 0);
    let start = Instant::now();
    let mut current = proxy::rules(&cfg, &svcs, &eps);
    let computed = start.elapsed();
    let start = Instant::now();
    proxy::apply(&cfg, &current, None).context("programming the rules")?;
    let full = start.elapsed();
    let (mut diff, mut rewrite) = (Vec::new(), Vec::new());
    for change in 1..=args.changes {
        let (svcs, eps) = objects(args.services, args.endpoints, change);
        let start = Instant::now();
        let next = proxy::rules(&cfg, &svcs, &eps);
        proxy::apply(&cfg, &next, Some(&current)).context("applying a change")?;
        diff.push(start.elapsed());
        // The same change as a full rewrite (the proxy's way before it diffed), for comparison.
        let (svcs, eps) = objects(args.services, args.endpoints, change + 1000);
        let start = Instant::now();
        let next = proxy::rules(&cfg, &svcs, &eps);
        proxy::apply(&cfg, &next, None).context("rewriting")?;
        rewrite.push(start.elapsed());
        current = next;
    }
    diff.sort();
    rewrite.sort();
    println!(
        "programming {} services x {} endpoints ({} rules): rules computed in {:.1} ms, written from nothing in {:.1} ms",
        args.services,
        args.endpoints,
        current.1.len(),
        computed.as_secs_f64() * 1000.0,
        full.as_secs_f64() * 1000.0
    );
    println!("{:<44} {:>9} {:>9} {:>9}", "one endpoint changed", "p50 ms", "p99 ms", "max ms");
    for (what, d) in [("as the proxy does it (changed chains only)", &diff), ("full rewrite", &rewrite)] {
        println!("{what:<44} {:>9.1} {:>9.1} {:>9.1}", percentile(d, 0.5), percentile(d, 0.99), percentile(d, 1.0));
    }
    Ok(())
}

/// wrk's figures: requests per second and the 50th/99th percentile latency in ms.
struct Load {
    rps: f64,
    p50: f64,
    p99: f64,
}

fn wrk_ms(text: &str) -> Option<f64> {
    let (num, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

fn wrk(netns: Option<&Path>, url: &str, host: Option<&str>, args: &BenchServicesArgs) -> anyhow::Result<Load> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("wrk");
            c
        }
        None => Command::new("wrk"),
    };
    cmd.args(["-t", "2", "-c", &args.connections.to_string(), "-d", &format!("{}s", args.duration), "--latency"]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd.arg(url).stdin(Stdio::null()).output().context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()));
    let rps = field("Requests/sec:").and_then(|v| v.parse().ok()).with_context(|| format!("wrk output: {text}"))?;
    let p50 = field("50%").and_then(|v| wrk_ms(&v)).with_context(|| format!("wrk output: {text}"))?;
    let p99 = field("99%").and_then(|v| wrk_ms(&v)).with_context(|| format!("wrk output: {text}"))?;
    if text.contains("Non-2xx or 3xx responses") || text.contains("Socket errors") {
        eprintln!("bench-services: wrk {url} saw errors:\n{text}");
    }
    Ok(Load { rps, p50, p99 })
}

fn skiff(exe: &Path, dir: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(exe)
        .env("SKIFF_CONFIG", dir.join("client.json"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("skiff {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      nodeName: node-1
      containers:
      - name: httpd
        image: busybox:test
        command: [sh, -c, 'mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: echo}
spec:
  rules:
  - host: echo.bench
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 0
  containers: [{name: idle, image: busybox:test, command: [sleep, "100000"]}]
"#;

fn data_path(args: &BenchServicesArgs, work: &Path, layout: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = work.join("cluster");
    let port = skiff_chaos::net::free_loopback_ports(1)?[0];
    let up = Command::new(&exe)
        .args(["up", "--masters", "1", "--nodes", "2", "--dir"])
        .arg(&dir)
        .arg("--import-image")
        .arg(layout)
        .arg(format!("--node-arg=--ingress-http-port={port}"))
        .arg("--node-arg=--ingress-https-port=0")
        .stdout(Stdio::null())
        .status()?;
    if !up.success() {
        bail!("skiff up failed");
    }
    let result = measure_paths(args, &exe, &dir, port);
    let _ =
        Command::new(&exe).args(["down", "--purge", "--grace", "5", "--dir"]).arg(&dir).stdout(Stdio::null()).status();
    result
}

fn measure_paths(args: &BenchServicesArgs, exe: &Path, dir: &Path, ingress_port: u16) -> anyhow::Result<()> {
    skiff(exe, dir, &["apply", "-f", "-"], Some(WORKLOAD))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (pod_ip, client_uid) = loop {
        let pods: Value = serde_json::from_str(&skiff(exe, dir, &["get", "pods", "-o", "json"], None)?)?;
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let ready = |p: &Value| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        };
        let echo = items.iter().find(|p| p["metadata"]["labels"]["app"] == "echo" && ready(p));
        let client = items.iter().find(|p| p["metadata"]["name"] == "client" && p["status"]["phase"] == "Running");
        let endpoints = skiff(exe, dir, &["get", "endpoints", "echo", "-o", "json"], None).unwrap_or_default();
        if let (Some(e), Some(c)) = (echo, client) {
            if endpoints.contains("\"addresses\"") {
                break (
                    e["status"]["podIP"].as_str().unwrap_or_default().to_string(),
                    c["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the echo pod and the client did not come up in 120 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let svc: Value = serde_json::from_str(&skiff(exe, dir, &["get", "service", "echo", "-o", "json"], None)?)?;
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default().to_string();
    let cluster: Value = serde_json::from_slice(&std::fs::read(dir.join("cluster.json"))?)?;
    let node2 = cluster["nodes"].as_array().and_then(|n| n.iter().find(|n| n["name"] == "node-2")).context("node-2")?;
    let node1_ip = cluster["nodes"][0]["node_ip"].as_str().unwrap_or("127.0.0.2").to_string();
    let netns = PathBuf::from(node2["root"].as_str().unwrap_or_default()).join("ns").join(&client_uid).join("net");
    // Give the ingress its table before loading it.
    std::thread::sleep(Duration::from_secs(1));
    let runs = [
        ("pod -> pod IP (direct)", Some(netns.as_path()), format!("http://{pod_ip}:8080/"), None),
        ("pod -> ClusterIP", Some(netns.as_path()), format!("http://{cluster_ip}/"), None),
        ("machine -> pod IP (direct)", None, format!("http://{pod_ip}:8080/"), None),
        ("machine -> ingress", None, format!("http://{node1_ip}:{ingress_port}/"), Some("echo.bench")),
    ];
    let mut results = Vec::new();
    for (i, (what, ns, url, host)) in runs.iter().enumerate() {
        if i == 3 {
            // Both runs from the machine open their own sockets to the pod from the node's
            // gateway address; a run's tens of thousands of TIME_WAIT sockets would slow the
            // next one's connects, so they are let expire (60 s) first.
            eprintln!("bench-services: waiting 65 s for the previous run's TIME_WAIT sockets to expire");
            std::thread::sleep(Duration::from_secs(65));
        }
        results.push((*what, wrk(*ns, url, *host, args)?));
    }
    println!("\nwrk -t2 -c{} -d{}s against busybox httpd in one pod (node-1)", args.connections, args.duration);
    println!(
        "{:<30} {:>10} {:>9} {:>9} {:>12} {:>12}",
        "path", "req/s", "p50 ms", "p99 ms", "req/s ratio", "p99 ratio"
    );
    for (i, (what, load)) in results.iter().enumerate() {
        let base = &results[i - i % 2].1;
        println!(
            "{what:<30} {:>10.0} {:>9.2} {:>9.2} {:>12.2} {:>12.2}",
            load.rps,
            load.p50,
            load.p99,
            load.rps / base.rps,
            load.p99 / base.p99
        );
    }
    Ok(())
}

pub fn run(args: BenchServicesArgs) -> anyhow::Result<()> {
    if args.rules_here {
        return rules_here(&args);
    }
    let exe = std::env::current_exe()?;
    let status = Command::new("unshare")
        .arg("--net")
        .arg(&exe)
        .args(["bench-services", "--rules-here"])
        .args(["--services", &args.services.to_string(), "--endpoints", &args.endpoints.to_string()])
        .args(["--changes", &args.changes.to_string()])
        .status()
        .context("unshare --net (util-linux)")?;
    if !status.success() {
        bail!("the programming measurement failed");
    }
    if args.rules_only {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let layout = match &args.image {
        Some(p) => p.clone(),
        None => crate::bench_node::build_image(work.path())?,
    };
    data_path(&args, work.path(), &layout)
}
