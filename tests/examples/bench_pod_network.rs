//! The pod network benchmark: TCP throughput (iperf3, 10 s) and round-trip latency (sockperf
//! ping-pong, 10 s) between two machines of a [`LanCluster`] — host to host, pod to pod on one
//! machine, and pod to pod across machines over the VXLAN overlay and over host-gw routes —
//! printed side by side, from one run on one machine.
//!
//!   cargo build -p skiff-cli && sudo cargo run --release -p skiff-tests --example bench_pod_network
//!
//! The machines are network namespaces joined by veth links to one bridge (as in the tests),
//! so "the wire" is the kernel's veth and bridge path: the figures compare the costs the pod
//! network adds (encapsulation, an extra bridge and veth, iptables) to that path, not a NIC.

use skiff_tests::machines::LanCluster;
use skiff_tests::wait_for;
use std::time::Duration;

const SECONDS: u32 = 10;
const T: Duration = Duration::from_secs(120);

/// One figure pair: Gbit/s, and sockperf's round-trip latency in µs (avg, p50, p99).
#[derive(Debug, Default)]
struct Figures {
    gbits: f64,
    rtt_avg: f64,
    rtt_p50: f64,
    rtt_p99: f64,
}

/// Parses iperf3's JSON (`-J`): the receiver's bits per second.
fn iperf3_gbits(json: &str) -> Option<f64> {
    let start = json.find('{')?;
    let v: serde_json::Value = serde_json::from_str(&json[start..]).ok()?;
    Some(v["end"]["sum_received"]["bits_per_second"].as_f64()? / 1e9)
}

/// Parses sockperf's summary: `avg-latency=…`, `percentile 50.000 = …`, `percentile 99.000 = …`
/// (sockperf reports half the round trip; doubled here).
fn sockperf(text: &str) -> Option<(f64, f64, f64)> {
    let after = |needle: &str| -> Option<f64> {
        let rest = &text[text.find(needle)? + needle.len()..];
        let number: String =
            rest.trim_start_matches([' ', '=']).chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        number.parse().ok()
    };
    Some((after("avg-latency=")? * 2.0, after("percentile 50.000")? * 2.0, after("percentile 99.000")? * 2.0))
}

/// Runs a program on machine `i` and returns its stdout.
fn on_machine(m: &LanCluster, i: usize, program: &str, args: &[&str]) -> String {
    let out = m.lan.run(i, program, args);
    assert!(out.status.success(), "{program} {args:?} on machine {i}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Host to host: servers on machine 1, clients on machine 2.
fn host_to_host(m: &LanCluster) -> Figures {
    let server = m.lan.machines[1].ip.to_string();
    let quiet = |c: &mut std::process::Command| c.stdout(std::process::Stdio::null()).spawn();
    let mut iperf = quiet(m.lan.command(1, "iperf3").args(["-s", "-1"])).expect("iperf3");
    let mut sock = quiet(m.lan.command(1, "sockperf").args(["sr", "--tcp", "-p", "11111"])).expect("sockperf");
    std::thread::sleep(Duration::from_millis(500));
    let secs = SECONDS.to_string();
    let gbits = iperf3_gbits(&on_machine(m, 2, "iperf3", &["-c", &server, "-t", &secs, "-J"])).expect("iperf3 JSON");
    let text = on_machine(m, 2, "sockperf", &["pp", "--tcp", "-i", &server, "-p", "11111", "-t", &secs]);
    let (rtt_avg, rtt_p50, rtt_p99) = sockperf(&text).expect("sockperf summary");
    let _ = iperf.kill();
    let _ = sock.kill();
    let _ = (iperf.wait(), sock.wait());
    Figures { gbits, rtt_avg, rtt_p50, rtt_p99 }
}

fn pod(name: &str, node: &str, script: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "tools:test", "command": ["sh", "-c", script]}],
        },
    })
    .to_string()
}

/// Pod to pod: a server pod on machine-1, a client pod on `client_node`.
fn pod_to_pod(m: &LanCluster, tag: &str, client_node: &str) -> Figures {
    let c = &m.cluster;
    let server = format!("server-{tag}");
    c.apply_yaml(&pod(&server, "machine-1", "iperf3 -s & exec sockperf sr --tcp -p 11111"));
    let ip = wait_for(T, "the server pod Running", || {
        let p = c.get_json("pods", &server)?;
        (p["status"]["phase"] == "Running").then(|| p["status"]["podIP"].as_str().unwrap_or_default().to_string())
    });
    let client = format!("client-{tag}");
    let script = format!(
        "sleep 1; iperf3 -c {ip} -t {SECONDS} -J; echo SOCKPERF; sockperf pp --tcp -i {ip} -p 11111 -t {SECONDS}; echo DONE"
    );
    c.apply_yaml(&pod(&client, client_node, &script));
    let log = wait_for(Duration::from_secs(u64::from(SECONDS) * 2 + 120), "the client pod's figures", || {
        let out = c.ctl(&["logs", &client]);
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        log.contains("DONE").then_some(log)
    });
    let (iperf, sock) = log.split_once("SOCKPERF").expect("both parts");
    let gbits = iperf3_gbits(iperf).unwrap_or_else(|| panic!("iperf3 JSON in {iperf}"));
    let (rtt_avg, rtt_p50, rtt_p99) = sockperf(sock).unwrap_or_else(|| panic!("sockperf summary in {sock}"));
    c.ctl_ok(&["delete", "pod", &server, &client]);
    Figures { gbits, rtt_avg, rtt_p50, rtt_p99 }
}

fn row(name: &str, f: &Figures, base: &Figures) {
    println!(
        "{name:<34} {:>8.2} {:>7.2}x {:>9.1} {:>9.1} {:>9.1}",
        f.gbits,
        f.gbits / base.gbits,
        f.rtt_avg,
        f.rtt_p50,
        f.rtt_p99
    );
}

fn main() {
    let image = skiff_tests::tools_image();
    let mut results = Vec::new();
    let mut base = None;
    for backend in ["vxlan", "host-gw"] {
        let m = LanCluster::start(
            1,
            2,
            0,
            &["--cluster-cidr", "10.248.0.0/16"],
            &["--cluster-cidr", "10.248.0.0/16", "--pod-network", backend],
            &image,
            "tools:test",
        );
        m.wait_ready(T, backend == "vxlan");
        if base.is_none() {
            base = Some(host_to_host(&m));
            results.push(("same machine, pod to pod".to_string(), pod_to_pod(&m, "local", "machine-1")));
        }
        results.push((format!("across machines, {backend}"), pod_to_pod(&m, "remote", "machine-2")));
    }
    let base = base.expect("measured");
    println!("\npod network, TCP: iperf3 {SECONDS} s (Gbit/s, × host to host), sockperf ping-pong {SECONDS} s (round trip µs)");
    println!("{:<34} {:>8} {:>8} {:>9} {:>9} {:>9}", "path", "Gbit/s", "ratio", "rtt avg", "rtt p50", "rtt p99");
    row("host to host (veth + bridge)", &base, &base);
    for (name, f) in &results {
        row(name, f, &base);
    }
}
