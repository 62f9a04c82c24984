//! A cluster across machines — network namespaces with their own addresses on a bridge the
//! test makes, nothing on loopback: a master machine started with `skiff up
//! --advertise-address`, two more masters joined with `skiff join --control-plane`, three node
//! machines joined with `skiff join` and a token, their pod ranges from the masters' node IPAM,
//! and the VXLAN pod network between them. The test's own namespace is the workstation outside
//! the cluster: the CLI and the NodePort clients run there.

use skiff_tests::machines::LanCluster;
use skiff_tests::{wait_for, wait_for_showing};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);
/// No other test's pods use it (and each machine's routes are its own anyway).
const CLUSTER_CIDR: &str = "10.247.0.0/16";
const NODE_PORT: u16 = 30180;
/// How long a machine may go silent before the masters call it unreachable, and how long its
/// pods stay there then (short, so a dead machine's pods are replaced within the test).
const NODE_GRACE: Duration = Duration::from_secs(8);
const EVICTION: Duration = Duration::from_secs(4);

#[test]
fn pods_on_different_machines_reach_each_other_and_services_answer_on_every_machine() {
    skiff_tests::require_root();
    // phase: the first machine starts the cluster on its own address; three machines join
    // with a token, and the masters give each a pod range
    let (grace, eviction) = (NODE_GRACE.as_secs().to_string(), EVICTION.as_secs().to_string());
    let mut m = LanCluster::start(
        3,
        3,
        1,
        &["--cluster-cidr", CLUSTER_CIDR, "--node-grace-seconds", &grace, "--pod-eviction-seconds", &eviction],
        &["--cluster-cidr", CLUSTER_CIDR, "--backoff-base-ms", "1000", "--lease-interval-seconds", "2"],
        &skiff_tests::tools_image(),
        "tools:test",
    );
    let (c, lan, nodes) = (&m.cluster, &m.lan, &m.nodes);
    let logs = || m.node_logs();
    let ranges = m.wait_ready(T, true);
    let distinct: BTreeSet<&String> = ranges.values().collect();
    assert_eq!(distinct.len(), 3, "{ranges:?}");
    assert!(ranges.values().all(|r| r.starts_with("10.247.") && r.ends_with("/24")), "{ranges:?}");

    // phase: a Deployment spreads over the three machines; its Service on a node port
    c.apply_yaml(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: echo
        image: tools:test
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www & exec socat UDP-RECVFROM:9090,fork SYSTEM:"echo udp-$(hostname) from \$SOCAT_PEERADDR"']
---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  type: NodePort
  selector: {{app: echo}}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: {NODE_PORT}}}
  - {{name: udp, port: 9090, targetPort: 9090, protocol: UDP}}
"#
    ));
    // pod name → (node, ip)
    let echo = wait_for_showing(T, "three echo pods Running, one per machine", logs, || {
        let pods: serde_json::Value =
            serde_json::from_str(&c.ctl_ok(&["get", "pods", "-l", "app=echo", "-o", "json"])).ok()?;
        let running: BTreeMap<String, (String, String)> = pods["items"]
            .as_array()?
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    (p["spec"]["nodeName"].as_str()?.to_string(), p["status"]["podIP"].as_str()?.to_string()),
                ))
            })
            .collect();
        let machines: BTreeSet<&String> = running.values().map(|(n, _)| n).collect();
        (running.len() == 3 && machines.len() == 3).then_some(running)
    });
    for (pod, (node, ip)) in &echo {
        let range = &ranges[node];
        let prefix = range.trim_end_matches("0/24");
        assert!(ip.starts_with(prefix), "{pod} on {node} has {ip}, outside its range {range}");
    }
    let cluster_ip = c.get_json("services", "echo").unwrap()["spec"]["clusterIP"].as_str().unwrap().to_string();

    // phase: a pod on machine 1 reaches the others by pod IP (TCP and UDP, its own address
    // seen by the server), by cluster IP and by name
    let targets: Vec<&String> = echo.values().map(|(_, ip)| ip).collect();
    let script = format!(
        r#"for round in $(seq 1 600); do
  for ip in {ips}; do
    echo "tcp $ip $(timeout 3 wget -q -O - http://$ip:8080/ 2>&1)"
    echo "udp $ip $(echo ping | socat -T 3 - UDP:$ip:9090 2>&1)"
  done
  echo "cluster-ip $(timeout 3 wget -q -O - http://{cluster_ip}/ 2>&1)"
  echo "name $(timeout 3 wget -q -O - http://echo/ 2>&1)"
  echo "name-udp $(echo ping | socat -T 3 - UDP:echo.default.svc.cluster.local:9090 2>&1)"
  sleep 1
done"#,
        ips = targets.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
    );
    let client = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "machine-1"},
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "client", "image": "tools:test", "command": ["sh", "-c", script]}],
        },
    });
    c.apply_yaml(&client.to_string());
    let client_ip = wait_for(T, "the client pod Running", || {
        let pod = c.get_json("pods", "client")?;
        (pod["status"]["phase"] == "Running").then(|| pod["status"]["podIP"].as_str().unwrap_or_default().to_string())
    });
    let remote: Vec<(&String, &String)> =
        echo.iter().filter(|(_, (node, _))| node != "machine-1").map(|(pod, (_, ip))| (pod, ip)).collect();
    assert_eq!(remote.len(), 2);
    // Read through the master on machine 0 from the node server on machine 1.
    let client_log = || String::from_utf8_lossy(&c.ctl(&["logs", "client", "--tail", "40"]).stdout).into_owned();
    wait_for_showing(T, "the client to reach both remote pods and the Service every way", client_log, || {
        let out = c.ctl(&["logs", "client"]);
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        let has = |line: &str| log.lines().any(|l| l == line);
        let by_pod_ip = remote
            .iter()
            .all(|(pod, ip)| has(&format!("tcp {ip} {pod}")) && has(&format!("udp {ip} udp-{pod} from {client_ip}")));
        // Through the Service, some answer came from a pod on another machine.
        let via = |kind: &str, answer: &dyn Fn(&str) -> String| {
            remote.iter().any(|(pod, _)| log.lines().any(|l| l.starts_with(&format!("{kind} {}", answer(pod)))))
        };
        let services = via("cluster-ip", &|p| p.to_string())
            && via("name", &|p| p.to_string())
            && via("name-udp", &|p| format!("udp-{p}"));
        (by_pod_ip && services).then_some(())
    });

    // phase: the node port answers on every machine's address, from pods on the others too
    for n in nodes {
        let addr = format!("{}:{NODE_PORT}", lan.machines[n.index].ip);
        let answered = std::cell::RefCell::new(BTreeSet::new());
        let what = format!("node port on {} answered by a pod elsewhere", n.name);
        wait_for_showing(
            T,
            &what,
            || format!("answered by {:?}", answered.borrow()),
            || {
                if let Ok((200, _, body)) = skiff_tests::http_request(&addr, &addr, "/") {
                    answered.borrow_mut().insert(body.trim().to_string());
                }
                let elsewhere = |pod: &String| echo.get(pod).is_some_and(|(node, _)| *node != n.name);
                answered.borrow().iter().any(elsewhere).then_some(())
            },
        );
    }

    // phase: the masters read each machine's usage through its node server
    let table = wait_for(T, "skiff top nodes to list the three machines", || {
        let out = c.ctl(&["top", "nodes"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        nodes.iter().all(|n| text.lines().any(|l| l.split_whitespace().next() == Some(n.name.as_str()))).then_some(text)
    });
    assert!(table.lines().next().unwrap_or_default().contains("CPU"), "{table}");

    // phase: machine 3 dies (its processes killed, its cable pulled). Its pod comes back on
    // another machine within the grace and the toleration, and the node port on machine 1
    // answers throughout from the live pods: a request fails only while the dead pod is still
    // an endpoint (it may be sent there), never once the Endpoints have dropped it (and the
    // proxy has had a moment to follow).
    let dead = &nodes[2];
    let (dead_pod, dead_ip) =
        echo.iter().find(|(_, (node, _))| *node == dead.name).map(|(pod, (_, ip))| (pod.clone(), ip.clone())).unwrap();
    lan.kill_machine(dead.index);
    let killed = std::time::Instant::now();
    let addr = format!("{}:{NODE_PORT}", lan.machines[nodes[0].index].ip);
    let (mut answers, mut failures, mut failures_after_drop) = (0, 0, Vec::new());
    let mut dropped: Option<std::time::Instant> = None;
    let what = "the dead machine's pod replaced and out of the endpoints";
    let replaced = wait_for_showing(NODE_GRACE + EVICTION + T, what, logs, || {
        if dropped.is_none() {
            let endpoints = c.ctl_ok(&["get", "endpoints", "echo", "-o", "json"]);
            if !endpoints.contains(&format!("\"{dead_ip}\"")) {
                dropped = Some(std::time::Instant::now());
            }
        }
        match skiff_tests::http_request(&addr, &addr, "/") {
            Ok((200, _, body)) => {
                assert_ne!(body.trim(), dead_pod, "the dead pod answered");
                answers += 1;
            }
            other => {
                failures += 1;
                if dropped.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
                    failures_after_drop.push(format!("{other:?}"));
                }
            }
        }
        let pods: serde_json::Value =
            serde_json::from_str(&c.ctl_ok(&["get", "pods", "-l", "app=echo", "-o", "json"])).ok()?;
        let live: Vec<(String, String)> = pods["items"]
            .as_array()?
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| Some((p["metadata"]["name"].as_str()?.into(), p["spec"]["nodeName"].as_str()?.into())))
            .collect();
        let elsewhere = live.iter().filter(|(_, node)| *node != dead.name).count();
        (elsewhere == 3 && dropped.is_some()).then(|| live.into_iter().find(|(pod, _)| !echo.contains_key(pod)))?
    });
    let took = killed.elapsed();
    assert!(took < NODE_GRACE + EVICTION + Duration::from_secs(45), "replaced after {took:?}: {replaced:?}");
    assert!(answers > 0, "no request was answered while machine 3 was replaced");
    assert!(
        failures_after_drop.is_empty(),
        "requests failed after the dead pod left the endpoints: {failures_after_drop:?}"
    );
    eprintln!("machine 3 replaced after {took:?}: {answers} answers, {failures} requests sent to the dead pod");

    // phase: the first master's machine dies — the one the cluster was started on and every
    // machine joined through. The other two carry on: writes go through, the nodes stay Ready.
    let first = m.voters();
    assert_eq!(first.len(), 3, "three voting masters: {first:?}");
    m.lan.kill_machine(0);
    let c = &m.cluster;
    wait_for(T, "a write through the remaining masters", || {
        let out = c.ctl(&["create", "configmap", "after-master-loss", "--from-literal=k=v"]);
        (out.status.success() || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists")).then_some(())
    });
    let members = m.cluster.etcdctl_ok(&m.endpoints(), &["member", "list", "-w", "json"]);
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    let dead = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "master-1")
        .and_then(|x| x["ID"].as_u64())
        .unwrap_or_else(|| panic!("no master-1 in {members}"));
    // phase: the operator removes the dead member and a spare machine joins in its place, with
    // the keys uploaded from a master that joined (machine 1): three voters again
    m.cluster.etcdctl_ok(&m.endpoints(), &["member", "remove", &format!("{dead:x}")]);
    let (from, config) = (m.masters[0].index, m.masters[0].dir.join("config.json"));
    let spare = m.lan.machines.len() - 1;
    m.join_master(from, &config, spare);
    let voters = m.voters();
    assert_eq!(voters.len(), 3, "{voters:?}");
    assert!(!voters.contains(&"master-1".to_string()), "{voters:?}");
    // The replacement serves the API itself: its own admin config, with only its address.
    let replacement = m.masters.last().unwrap();
    let own = replacement.dir.join("client.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&own).unwrap()).unwrap();
    v["clusters"][0]["endpoints"] = serde_json::json!([format!("{}:2379", m.lan.machines[spare].ip)]);
    std::fs::write(&own, v.to_string()).unwrap();
    let out = Command::new(skiff_tests::skiff_bin())
        .args(["get", "configmap", "after-master-loss", "--config"])
        .arg(&own)
        .output()
        .unwrap();
    assert!(out.status.success(), "the replacement master answers: {}", String::from_utf8_lossy(&out.stderr));
    // …and to kubectl, with the kubeconfig its join wrote (its own address the current context)
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(replacement.dir.join("kubeconfig"))
        .args(["get", "configmap", "after-master-loss", "-o", "name"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configmap/after-master-loss\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes = &m.nodes;
    wait_for(T, "the live machines Ready through the remaining masters", || {
        nodes[..2]
            .iter()
            .all(|n| {
                let node = m.cluster.get_json("nodes", &n.name);
                node.and_then(|node| {
                    node["status"]["conditions"]
                        .as_array()
                        .map(|cs| cs.iter().any(|k| k["type"] == "Ready" && k["status"] == "True"))
                }) == Some(true)
            })
            .then_some(())
    });
    // The live machines' usage through the remaining masters; the dead one is <unknown>.
    let table = m.cluster.ctl_ok(&["top", "nodes"]);
    let row = |name: &str| table.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_default();
    for n in &nodes[..2] {
        assert!(row(&n.name).ends_with('%'), "{} in skiff top through the remaining masters:\n{table}", n.name);
    }
    assert!(row(&nodes[2].name).contains("<unknown>"), "{table}");
}
