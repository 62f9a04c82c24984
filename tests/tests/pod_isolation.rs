//! Pods cannot reach what listens on their host's loopback (kube-proxy's localnet rule, the
//! CVE-2020-8558 pattern) and run without CAP_NET_RAW. The attacker is a network namespace the
//! test plugs into the node's bridge with a pod address — what a pod with NET_RAW, or a
//! neighbour on the segment, can do: send packets for 127.0.0.1 to the host's bridge address.

use skiff_tests::{wait_for, Cluster};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace on `bridge` at `addr/24` whose loopback range is routed to `gateway`.
struct Attacker {
    ns: String,
    host_end: String,
}

impl Attacker {
    fn plug(bridge: &str, addr: &str, gateway: &str) -> Attacker {
        let tag = std::process::id() % 100_000;
        let a = Attacker { ns: format!("skatk{tag}"), host_end: format!("skatk{tag}h") };
        let peer = format!("skatk{tag}p");
        run(&["ip", "netns", "add", &a.ns]);
        run(&["ip", "link", "add", &a.host_end, "type", "veth", "peer", "name", &peer]);
        run(&["ip", "link", "set", &a.host_end, "master", bridge, "up"]);
        run(&["ip", "link", "set", &peer, "netns", &a.ns]);
        let inside = |args: &[&str]| run(&[&["ip", "netns", "exec", &a.ns][..], args].concat());
        inside(&["ip", "addr", "add", &format!("{addr}/24"), "dev", &peer]);
        inside(&["ip", "link", "set", &peer, "up"]);
        // Send 127.0.0.1 out of the namespace, to the host: `lo` stays down in a new namespace,
        // so there is no local route for it here, and loopback addresses may go on the wire.
        for conf in ["all", peer.as_str()] {
            inside(&["sysctl", "-qw", &format!("net.ipv4.conf.{conf}.route_localnet=1")]);
        }
        inside(&["ip", "route", "add", "127.0.0.1/32", "via", gateway, "dev", &peer]);
        a
    }

    /// Whether a TCP connection from the namespace to `host:port` completes within 3 s.
    fn connects(&self, host: &str, port: u16) -> bool {
        let probe = format!("exec 3<>/dev/tcp/{host}/{port}");
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "timeout", "3", "bash", "-c", &probe])
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_end]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The localnet DROP rule, taken out for the length of one check and put back on drop.
struct RuleLifted(Vec<String>);

impl Drop for RuleLifted {
    fn drop(&mut self) {
        let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
        let _ = Command::new("iptables").args(["-w", "5", "-I", "SKIFF-FIREWALL", "1"]).args(&args).status();
    }
}

fn localnet_rule() -> Vec<String> {
    let listing = run(&["iptables", "-w", "5", "-S", "SKIFF-FIREWALL"]);
    let line = listing
        .lines()
        .find(|l| l.contains("block incoming localnet connections"))
        .unwrap_or_else(|| panic!("the node installed no localnet rule:\n{listing}"));
    let words: Vec<String> = shell_words(line.trim_start_matches("-A SKIFF-FIREWALL "));
    words
}

/// Splits an `iptables -S` line into arguments (the comment is quoted).
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn caps(c: &Cluster, pod: &str) -> (u64, u64) {
    let logs = wait_for(Duration::from_secs(60), &format!("{pod}'s capability lines"), || {
        let out = c.ctl(&["logs", pod]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("CapBnd").then_some(text)
    });
    let field = |name: &str| {
        let line = logs.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {logs}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    (field("CapEff:"), field("CapBnd:"))
}

const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
const CAP_NET_RAW: u64 = 1 << 13;

#[test]
fn pods_run_without_net_raw_and_nothing_off_the_host_reaches_its_loopback() {
    let c = Cluster::with_nodes(1, 1, &[]);

    // phase: a pod's capabilities are containerd's defaults without NET_RAW; a pod that asks
    // for NET_RAW gets it (the check reads what the kernel gave the process)
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: plain}
spec:
  containers: [{name: c, image: "busybox:test", command: [sh, -c, "grep Cap /proc/self/status; exec sleep 3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: pinger}
spec:
  containers:
  - name: c
    image: "busybox:test"
    command: [sh, -c, "grep Cap /proc/self/status; exec sleep 3600"]
    securityContext: {capabilities: {add: [NET_RAW]}}
"#,
    );
    let (eff, bnd) = caps(&c, "plain");
    assert_eq!(eff & CAP_NET_RAW, 0, "NET_RAW in the effective set {eff:x}");
    assert_eq!(bnd & CAP_NET_RAW, 0, "NET_RAW in the bounding set {bnd:x}");
    assert_ne!(eff & CAP_NET_BIND_SERVICE, 0, "the default set is there: {eff:x}");
    let (eff, _) = caps(&c, "pinger");
    assert_ne!(eff & CAP_NET_RAW, 0, "a pod that adds NET_RAW has it: {eff:x}");

    // phase: from the node's bridge, the host answers on its bridge address but not on its
    // loopback — a master's client port stays out of reach
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.dir.path().join("cluster.json")).unwrap()).unwrap();
    let node = &v["nodes"][0];
    let (bridge, cidr) = (node["bridge"].as_str().unwrap(), node["pod_cidr"].as_str().unwrap());
    let base = cidr.rsplit_once('.').unwrap().0;
    let (gateway, attacker_ip) = (format!("{base}.1"), format!("{base}.250"));
    // The vulnerable setting the rule guards: on whenever a hostPort or a NodePort on a loopback
    // address is in use.
    std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1").unwrap();
    let attacker = Attacker::plug(bridge, &attacker_ip, &gateway);
    let on_bridge = TcpListener::bind((gateway.as_str(), 0)).unwrap();
    let bridge_port = on_bridge.local_addr().unwrap().port();
    assert!(attacker.connects(&gateway, bridge_port), "the namespace reaches the host's bridge address");
    let master_port: u16 = c.masters[0].etcd.rsplit_once(':').unwrap().1.parse().unwrap();

    // Without the rule the attack works: this is what the test guards against.
    let rule = localnet_rule();
    {
        let mut delete = vec!["-w", "5", "-D", "SKIFF-FIREWALL"];
        delete.extend(rule.iter().map(String::as_str));
        let _lifted = RuleLifted(rule.clone());
        run(&[&["iptables"][..], &delete].concat());
        // Copies left on this host by earlier runs (before node daemons added it under a lock).
        while Command::new("iptables").args(&delete).stderr(std::process::Stdio::null()).status().unwrap().success() {}
        assert!(
            attacker.connects("127.0.0.1", master_port),
            "without the rule the namespace must reach the master on 127.0.0.1 (else this test proves nothing)"
        );
    }
    assert_eq!(localnet_rule(), rule, "the rule is back");
    assert!(
        !attacker.connects("127.0.0.1", master_port),
        "a master's port on 127.0.0.1 answered a packet from the bridge"
    );
}
