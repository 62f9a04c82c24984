//! `/metrics` as Prometheus scrapes it: `curl` of every master's client port and of a node's
//! server after a workload, parsed with a Prometheus text-format parser; the figures are
//! plausible for what ran (a leader, synced log writes, the Deployment's requests, its pods
//! scheduled and started), and nobody reads them without the right credentials.

use prometheus_parse::{Scrape, Value as Sample};
use skiff_tests::{wait_for, Cluster};
use std::process::Command;
use std::time::Duration;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: measured}
spec:
  replicas: 2
  selector: {matchLabels: {app: measured}}
  template:
    metadata: {labels: {app: measured}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - {name: app, image: "busybox:test", command: [sleep, "3600"]}
"#;

/// `curl ARGS URL`: (HTTP status, body).
fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn parse(body: &str) -> Scrape {
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap_or_else(|e| panic!("{e}:\n{body}"))
}

/// The values of the samples named `name` whose labels include every pair of `labels`.
fn values(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            Sample::Histogram(_) | Sample::Summary(_) => f64::NAN,
        })
        .collect()
}

/// The sum of those values over `scrapes`; there must be some.
fn sum_of(scrapes: &[&Scrape], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrapes.iter().flat_map(|s| values(s, name, labels)).collect();
    let samples: usize = scrapes.iter().map(|s| s.samples.len()).sum();
    assert!(!found.is_empty(), "no sample {name}{labels:?} among {samples} samples");
    found.iter().sum()
}

fn sum(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    sum_of(&[scrape], name, labels)
}

#[test]
fn masters_and_nodes_serve_prometheus_metrics_to_their_readers_only() {
    let c = Cluster::with_nodes(3, 1, &[]);
    let ca = c.ca().expect("a TLS cluster");
    let ca = ca.to_str().unwrap();
    let pki = c.dir.path().join("pki");
    let bearer = format!("Authorization: Bearer {}", c.admin_token());
    c.etcdctl_ok(&c.masters[0].etcd, &["put", "measured", "1"]);
    c.apply_yaml(DEPLOYMENT);
    wait_for(Duration::from_secs(90), "the Deployment's 2 pods running", || {
        let d = c.get_json("deployments", "measured")?;
        (d["status"]["availableReplicas"].as_i64() == Some(2)).then_some(())
    });

    // phase: every master, as the admin (group system:masters)
    let scrapes: Vec<Scrape> = c
        .masters
        .iter()
        .map(|m| {
            let (code, body) = curl(&["--cacert", ca, "-H", &bearer], &format!("https://{}/metrics", m.api));
            assert_eq!(code, 200, "{}: {body}", m.name);
            parse(&body)
        })
        .collect();
    let all: Vec<&Scrape> = scrapes.iter().collect();
    let total = |name: &str, labels: &[(&str, &str)]| sum_of(&all, name, labels);
    for (m, s) in c.masters.iter().zip(&scrapes) {
        assert_eq!(sum(s, "etcd_server_has_leader", &[]), 1.0, "{} sees a leader", m.name);
        assert!(sum(s, "etcd_server_leader_changes_seen_total", &[]) >= 1.0, "{}", m.name);
        assert!(sum(s, "etcd_disk_wal_fsync_duration_seconds_count", &[]) > 0.0, "{}: synced appends", m.name);
        assert!(sum(s, "etcd_disk_backend_commit_duration_seconds_count", &[]) > 0.0, "{}", m.name);
        assert!(sum(s, "etcd_mvcc_db_total_size_in_bytes", &[]) > 4096.0, "{}", m.name);
        assert!(sum(s, "etcd_debugging_mvcc_current_revision", &[]) > 1.0, "{}", m.name);
    }
    assert_eq!(total("etcd_server_is_leader", &[]), 1.0, "exactly one leader");
    let etcdctl_put = [("grpc_service", "etcdserverpb.KV"), ("grpc_method", "Put"), ("grpc_code", "OK")];
    assert!(total("grpc_server_handled_total", &etcdctl_put) >= 1.0);
    let created = [("verb", "POST"), ("resource", "deployments"), ("code", "201")];
    assert_eq!(total("apiserver_request_total", &created), 1.0, "the one Deployment created");
    let pods = [("verb", "POST"), ("resource", "pods"), ("code", "201")];
    assert!(total("apiserver_request_total", &pods) >= 2.0, "the ReplicaSet's pods");
    assert!(total("apiserver_request_duration_seconds_count", &[("verb", "POST")]) >= 3.0);
    assert!(total("apiserver_watch_events_total", &[("kind", "Pod")]) >= 2.0);
    let replicaset = [("name", "replicaset")];
    assert!(total("workqueue_adds_total", &replicaset) >= 1.0);
    assert!(total("workqueue_queue_duration_seconds_count", &replicaset) >= 1.0);
    assert!(total("workqueue_depth", &replicaset) >= 0.0, "a depth for the ReplicaSet controller's queue");
    assert!(total("scheduler_schedule_attempts_total", &[("result", "scheduled")]) >= 2.0);
    assert!(total("scheduler_pod_scheduling_duration_seconds_count", &[]) >= 2.0);

    // phase: nobody else reads them
    let url = format!("https://{}/metrics", c.masters[0].api);
    let (code, body) = curl(&["--cacert", ca], &url);
    assert_eq!(code, 401, "{body}");
    c.add_user("plain-user-token", "plain", &["developers"]);
    let (code, body) = wait_for(Duration::from_secs(10), "the masters to read the new token", || {
        let got = curl(&["--cacert", ca, "-H", "Authorization: Bearer plain-user-token"], &url);
        (got.0 != 401).then_some(got)
    });
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("system:monitoring"), "{body}");

    // phase: the node's server, as the masters reach it (their client certificate)
    let node = c.get_json("nodes", "node-1").expect("node-1");
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().expect("its server's port");
    let ip = node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .expect("an InternalIP")
        .to_string();
    let url = format!("https://{ip}:{port}/metrics");
    let cert = |name: &str| {
        let (crt, key) = (pki.join(format!("{name}.crt")), pki.join(format!("{name}.key")));
        vec!["--cacert".to_string(), ca.to_string(), "--cert".into(), s(&crt), "--key".into(), s(&key)]
    };
    let args = cert("kubelet-client");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, body) = curl(&args, &url);
    assert_eq!(code, 200, "{body}");
    let scrape = parse(&body);
    assert_eq!(sum(&scrape, "kubelet_running_pods", &[]), 2.0);
    assert!(sum(&scrape, "kubelet_pod_start_duration_seconds_count", &[]) >= 2.0);
    let admin = cert("admin");
    let admin: Vec<&str> = admin.iter().map(String::as_str).collect();
    let (code, body) = curl(&admin, &url);
    assert_eq!(code, 403, "only the masters' certificate: {body}");
}

fn s(p: &std::path::Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}
