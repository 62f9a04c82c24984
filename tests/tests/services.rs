//! Services: cluster IPs and node ports allocated once cluster-wide (even when created at the
//! same time through different masters), bad requests refused by field; and on real nodes,
//! pods reaching a Deployment through its Service by cluster IP and by DNS name, NodePort and
//! LoadBalancer on each node's address, ExternalName and headless answers from cluster DNS.

use serde_json::Value;
use skiff_tests::{wait_for, wait_for_showing, Cluster};
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// A client config that talks to master `id` only.
fn config_for(c: &Cluster, id: u64) -> std::path::PathBuf {
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(c.dir.path().join("client.json")).unwrap()).unwrap();
    cfg["clusters"][0]["endpoints"] = serde_json::json!([c.master(id).api]);
    let path = c.dir.path().join(format!("client-{id}.json"));
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

/// `skiff create -f -` of `yaml` through the client config `config`.
fn create_via(config: &std::path::Path, yaml: &str) -> std::process::Output {
    let mut child = Command::new(skiff_tests::skiff_bin())
        .env("SKIFF_CONFIG", config)
        .args(["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn create_err(c: &Cluster, yaml: &str) -> String {
    let out = create_via(&c.dir.path().join("client.json"), yaml);
    assert!(!out.status.success(), "should have been refused: {yaml}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn services(c: &Cluster) -> Vec<Value> {
    let v: Value = serde_json::from_str(&c.ctl_ok(&["get", "services", "-o", "json"])).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn addresses_are_allocated_once_kept_released_and_bad_requests_refused() {
    let c = Cluster::up(3, &[]);
    // 24 NodePort services created at once, 8 through each master.
    let configs: Vec<_> = (1..=3).map(|id| config_for(&c, id)).collect();
    std::thread::scope(|s| {
        for (m, config) in configs.iter().enumerate() {
            for i in 0..8 {
                s.spawn(move || {
                    let yaml = format!(
                        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{m}-{i}}}\nspec:\n  type: NodePort\n  selector: {{app: x}}\n  ports: [{{port: 80}}]\n"
                    );
                    let out = create_via(config, &yaml);
                    assert!(out.status.success(), "s{m}-{i}: {}", String::from_utf8_lossy(&out.stderr));
                });
            }
        }
    });
    let all = services(&c);
    let ips: BTreeSet<String> = all.iter().map(|s| s["spec"]["clusterIP"].as_str().unwrap().to_string()).collect();
    let ports: BTreeSet<i64> = all.iter().map(|s| s["spec"]["ports"][0]["nodePort"].as_i64().unwrap()).collect();
    assert_eq!((all.len(), ips.len(), ports.len()), (24, 24, 24), "{ips:?} {ports:?}");
    assert!(ips.iter().all(|ip| ip.starts_with("10.96.")), "{ips:?}");
    assert!(ports.iter().all(|p| (30000..=32767).contains(p)), "{ports:?}");

    // An address asked for by number is honoured, then refused to the next one by field.
    c.apply_yaml("apiVersion: v1\nkind: Service\nmetadata: {name: fixed}\nspec:\n  type: NodePort\n  clusterIP: 10.96.100.100\n  selector: {app: x}\n  ports: [{port: 80, nodePort: 30999}]\n");
    let fixed = c.get_json("services", "fixed").unwrap();
    assert_eq!(
        (fixed["spec"]["clusterIP"].as_str(), fixed["spec"]["ports"][0]["nodePort"].as_i64()),
        (Some("10.96.100.100"), Some(30999))
    );
    let bad = [
        (
            "spec:\n  clusterIP: 10.96.100.100\n  ports: [{port: 80}]",
            "spec.clusterIP: Invalid value: \"10.96.100.100\": provided IP is already allocated",
        ),
        (
            "spec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 30999}]",
            "spec.ports[0].nodePort: Invalid value: 30999: provided port is already allocated",
        ),
        (
            "spec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 40000}]",
            "spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range",
        ),
        (
            "spec:\n  ports: [{port: 80, nodePort: 30500}]",
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
        ),
        (
            "spec:\n  clusterIP: 10.97.0.1\n  ports: [{port: 80}]",
            "spec.clusterIP: Invalid value: \"10.97.0.1\": provided IP is not in the valid range",
        ),
        ("spec:\n  ports: [{name: a, port: 80}, {port: 81}]", "spec.ports[1].name: Required value"),
    ];
    for (spec, want) in bad {
        let err = create_err(&c, &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\n{spec}\n"));
        assert!(err.contains("Service \"bad\" is invalid") && err.contains(want), "{spec}\nwanted {want}\ngot {err}");
        assert!(c.get_json("services", "bad").is_none(), "a refused service was stored: {spec}");
    }
    assert_eq!(services(&c).len(), 25, "refusals changed nothing");

    // An update keeps the addresses; changing the cluster IP is refused.
    c.ctl_ok(&["label", "service", "fixed", "tier=web"]);
    let after = c.get_json("services", "fixed").unwrap();
    assert_eq!(after["spec"], fixed["spec"]);
    let mut changed = after.clone();
    changed["spec"]["clusterIP"] = "10.96.100.101".into();
    changed["spec"]["clusterIPs"] = serde_json::json!(["10.96.100.101"]);
    let path = c.dir.path().join("changed.json");
    std::fs::write(&path, changed.to_string()).unwrap();
    let out = c.ctl(&["replace", "-f", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.clusterIP: Invalid value: \"10.96.100.101\": field is immutable"),
        "{err}"
    );

    // Deleting gives both back: a new service may take them.
    c.ctl_ok(&["delete", "service", "fixed"]);
    c.apply_yaml("apiVersion: v1\nkind: Service\nmetadata: {name: again}\nspec:\n  type: NodePort\n  clusterIP: 10.96.100.100\n  ports: [{port: 80, nodePort: 30999}]\n");
}

/// An HTTP GET of `/` on `addr` (host:port): the body of a 200, or what went wrong.
fn http_get(addr: &str) -> Result<String, String> {
    match skiff_tests::http_request(addr, addr, "/")? {
        (200, _, body) => Ok(body),
        (code, head, _) => Err(format!("{addr}: {code}: {head}")),
    }
}

const BACKENDS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: httpd
        image: busybox:test
        # Serves its own name; on SIGTERM keeps serving 3 s more (a graceful shutdown), so a
        # request in flight while the proxy drops it still gets an answer.
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www & trap "sleep 3; exit 0" TERM; while true; do sleep 1; done']
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 8081, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: db.example.org
---
apiVersion: v1
kind: Service
metadata: {name: hairpin}
spec:
  selector: {app: hairpin}
  ports: [{port: 80, targetPort: 8080}]
---
# A pod that reaches itself through its own service (named apart from it: a pod's own name
# resolves to itself through /etc/hosts).
apiVersion: v1
kind: Pod
metadata: {name: hairpin-pod, labels: {app: hairpin}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: both
    image: busybox:test
    command: [sh, -c, 'mkdir -p /www && echo itself > /www/index.html && httpd -f -p 8080 -h /www & while true; do if r=$(timeout 3 wget -q -O - http://hairpin/ 2>&1); then echo "ok $r"; else echo "fail $r"; fi; sleep 0.5; done']
"#;

/// The client: waits in an init container until the `late` service resolves, then prints
/// what DNS says of the headless and ExternalName services and asks `web` by four names in a
/// loop, one line per request.
fn client_pod(cluster_ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 0
  dnsConfig: {{options: [{{name: edns0}}, {{name: ndots, value: "5"}}]}}
  hostAliases: [{{ip: 192.0.2.7, hostnames: [db.corp, db]}}]
  initContainers:
  - name: wait-for-late
    image: busybox:test
    command: [sh, -c, 'until nslookup late.$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace).svc.cluster.local; do sleep 1; done']
  containers:
  - name: loop
    image: busybox:test
    command:
    - sh
    - -c
    - |
      echo "HEADLESS $(nslookup -type=a web-headless 2>&1 | tr '\n' ' ')"
      echo "EXT $(nslookup -type=cname ext 2>&1 | tr '\n' ' ')"
      echo "RESOLV $(grep options /etc/resolv.conf)"
      echo "HOSTS $(grep db.corp /etc/hosts | tr '\t' ' ')"
      for i in 1 2 3 4 5 6 7 8; do echo "STICKY $(timeout 3 wget -q -O - http://web-sticky/ 2>&1)"; done
      while true; do
        for n in web web.default web.default.svc.cluster.local {cluster_ip}; do
          if r=$(timeout 3 wget -q -O - http://$n/ 2>&1); then echo "ok $n $r"; else echo "fail $n $r"; fi
        done
        sleep 0.1
      done
"#
    )
}

fn pods(c: &Cluster, selector: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&c.ctl_ok(&["get", "pods", "-l", selector, "-o", "json"])).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn ready(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null() && skiff_tests::ready(p)
}

#[test]
fn pods_reach_a_deployment_through_its_service_by_ip_and_name_and_nodes_serve_node_ports() {
    let c = Cluster::with_nodes(1, 2, &[]);
    c.apply_yaml(BACKENDS);
    let web = wait_for(T, "three ready web pods on both nodes", || {
        let p = pods(&c, "app=web");
        let nodes: BTreeSet<&str> =
            p.iter().filter(|p| ready(p)).filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
        (p.iter().filter(|p| ready(p)).count() == 3 && nodes.len() == 2).then_some(p)
    });
    let names: BTreeSet<String> = web.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
    let cluster_ip = c.get_json("services", "web").unwrap()["spec"]["clusterIP"].as_str().unwrap().to_string();

    // The client waits on a service that does not exist yet.
    c.apply_yaml(&client_pod(&cluster_ip));
    wait_for(T, "the init container's lookup of `late` to fail (NXDOMAIN)", || {
        let out = c.ctl(&["logs", "client", "-c", "wait-for-late"]);
        String::from_utf8_lossy(&out.stdout).contains("NXDOMAIN").then_some(())
    });
    let client = c.get_json("pods", "client").unwrap();
    assert_eq!(client["status"]["phase"], "Pending", "the init container waits for `late`: {client}");
    c.apply_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec:\n  selector: {app: none}\n  ports: [{port: 1}]\n",
    );
    wait_for(T, "the client running once `late` resolves", || {
        (c.get_json("pods", "client")?["status"]["phase"] == "Running").then_some(())
    });

    // Every name and the IP answer, from every backend.
    let logs = |c: &Cluster| c.ctl_ok(&["logs", "client"]);
    wait_for(T, "requests by each name answered by all three backends", || {
        let text = logs(&c);
        let ok: Vec<&str> = text.lines().filter(|l| l.starts_with("ok ")).collect();
        let by_name = |n: &str| ok.iter().any(|l| l.split(' ').nth(1) == Some(n));
        let seen: BTreeSet<String> = ok.iter().filter_map(|l| l.split(' ').nth(2)).map(String::from).collect();
        let all_names =
            ["web", "web.default", "web.default.svc.cluster.local", cluster_ip.as_str()].iter().all(|n| by_name(n));
        (all_names && seen == names).then_some(())
    });
    let text = logs(&c);
    let headless = text.lines().find(|l| l.starts_with("HEADLESS")).unwrap_or_default();
    for p in &web {
        let ip = p["status"]["podIP"].as_str().unwrap();
        assert!(headless.contains(ip), "the headless service resolves to every pod IP: {headless}");
    }
    let ext = text.lines().find(|l| l.starts_with("EXT")).unwrap_or_default();
    assert!(ext.contains("db.example.org"), "ExternalName answers with its CNAME: {ext}");
    // dnsConfig merged into resolv.conf; hostAliases in /etc/hosts.
    let resolv = text.lines().find(|l| l.starts_with("RESOLV")).unwrap_or_default();
    assert_eq!(resolv, "RESOLV options ndots:5 edns0", "dnsConfig's options merged in");
    let hosts = text.lines().find(|l| l.starts_with("HOSTS")).unwrap_or_default();
    assert_eq!(hosts, "HOSTS 192.0.2.7 db.corp db", "hostAliases in /etc/hosts");
    let sticky: BTreeSet<&str> = text.lines().filter_map(|l| l.strip_prefix("STICKY ")).collect();
    assert!(
        sticky.len() == 1 && sticky.iter().all(|s| s.starts_with("web-")),
        "ClientIP affinity pins one backend: {sticky:?}"
    );
    wait_for(T, "the hairpin pod reaching itself through its service", || {
        c.ctl_ok(&["logs", "hairpin-pod"]).lines().any(|l| l == "ok itself").then_some(())
    });

    // Nothing for the pod and service ranges is sent off the machine: a pod address not on one
    // of its bridges is unreachable, the service range goes to a bridge without ports.
    let route = |ip: &str| {
        let out = std::process::Command::new("ip").args(["route", "get", ip]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let dev_of = |route: &str| route.split_whitespace().skip_while(|w| *w != "dev").nth(1).map(String::from);
    // (Other clusters on this machine may own some /24s: those go to their own bridges.)
    for x in [0, 77, 250] {
        let pod_route = route(&format!("10.244.{x}.9"));
        let on_own_bridge = dev_of(&pod_route).is_some_and(|dev| {
            let out =
                std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &dev]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("inet 10.244.{x}.1/24"))
        });
        assert!(
            pod_route.contains("unreachable") || pod_route.contains("No route to host") || on_own_bridge,
            "{pod_route}"
        );
    }
    assert!(route("10.96.250.9").contains("dev skiffsvc0"), "{}", route("10.96.250.9"));
    let ports = std::fs::read_dir("/sys/class/net/skiffsvc0/brif").unwrap().count();
    assert_eq!(ports, 0, "the service range's bridge has no ports");
    // And the machine itself reaches a cluster IP.
    let body = wait_for(Duration::from_secs(10), "the machine reaching the ClusterIP", || {
        http_get(&format!("{cluster_ip}:80")).ok()
    });
    assert!(body.starts_with("web-"), "{body}");

    // The proxy reads EndpointSlices: the Service's pods in one slice of its port; a Service
    // without a selector is reached through the slice mirrored from the Endpoints its user wrote.
    let pod_ips: BTreeSet<String> =
        web.iter().map(|p| p["status"]["podIP"].as_str().unwrap_or_default().to_string()).collect();
    let slices: Value = serde_json::from_str(&c.ctl_ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "json",
    ]))
    .unwrap();
    let items = slices["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{slices}");
    let addresses: BTreeSet<String> = items[0]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["addresses"][0].as_str().map(String::from))
        .collect();
    assert_eq!(addresses, pod_ips, "{slices}");
    assert_eq!(items[0]["ports"][0]["port"], 8080, "{slices}");
    assert_eq!(
        items[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    let table = c.ctl_ok(&["get", "endpointslices"]);
    assert!(table.starts_with("NAME") && table.contains("ADDRESSTYPE") && table.contains("IPv4"), "{table}");
    let one = pod_ips.iter().next().unwrap();
    c.apply_yaml(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: manual}}\nspec:\n  ports: [{{port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: v1\nkind: Endpoints\nmetadata: {{name: manual}}\nsubsets: [{{addresses: [{{ip: {one}}}], ports: [{{port: 8080}}]}}]\n"
    ));
    let manual_ip = c.get_json("services", "manual").unwrap()["spec"]["clusterIP"].as_str().unwrap().to_string();
    let body = wait_for(T, "the machine reaching the selectorless service's mirrored endpoint", || {
        http_get(&format!("{manual_ip}:80")).ok()
    });
    assert!(body.starts_with("web-"), "{body}");
    let mirrored = c.ctl_ok(&["get", "endpointslices", "-l", "kubernetes.io/service-name=manual", "-o", "json"]);
    assert!(mirrored.contains("endpointslicemirroring-controller.k8s.io"), "{mirrored}");

    // The gateway's MAC is pinned: a new pod's veth joining the bridge must not change it
    // under the other pods' neighbour caches (their DNS queries would vanish until revalidated).
    let client_ip = c.get_json("pods", "client").unwrap()["status"]["podIP"].as_str().unwrap().to_string();
    let client_route = route(&client_ip);
    let bridge = dev_of(&client_route).unwrap();
    let assign = std::fs::read_to_string(format!("/sys/class/net/{bridge}/addr_assign_type")).unwrap();
    assert_eq!(assign.trim(), "3", "{bridge}'s address is set, not inherited from its ports");

    // A backend goes: out of rotation before its replacement is ready, no request fails.
    let before = logs(&c).lines().count();
    let victim = web[0]["metadata"]["name"].as_str().unwrap().to_string();
    c.ctl_ok(&["delete", "pod", &victim]);
    wait_for(T, "a replacement web pod ready and requests flowing", || {
        let p = pods(&c, "app=web");
        let fresh = p.iter().any(|p| ready(p) && !names.contains(p["metadata"]["name"].as_str().unwrap_or_default()));
        (fresh && logs(&c).lines().count() > before + 40).then_some(())
    });
    let text = logs(&c);
    let after: Vec<&str> = text.lines().skip(before).collect();
    let failed: Vec<&&str> = after.iter().filter(|l| l.starts_with("fail")).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed after {victim} was deleted: {failed:?}",
        failed.len(),
        after.len()
    );

    // NodePort and LoadBalancer on every node's address.
    let np = c.get_json("services", "web-np").unwrap()["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    let lb = wait_for(T, "the load balancer's ingress listing both nodes", || {
        let s = c.get_json("services", "web-lb")?;
        let ingress = s["status"]["loadBalancer"]["ingress"].as_array()?.clone();
        (ingress.len() == 2).then_some(ingress)
    });
    let node_ips: Vec<String> = c
        .nodes()
        .iter()
        .map(|(name, _, _)| {
            let n = c.get_json("nodes", name).unwrap();
            n["status"]["addresses"][0]["address"].as_str().unwrap().to_string()
        })
        .collect();
    for ip in &node_ips {
        assert!(lb.iter().any(|i| i["ip"] == ip.as_str()), "{ip} in {lb:?}");
        for addr in [format!("{ip}:{np}"), format!("{ip}:8081")] {
            let body = wait_for(Duration::from_secs(10), &format!("GET http://{addr}/"), || http_get(&addr).ok());
            assert!(body.starts_with("web-"), "{addr}: {body}");
        }
    }

    // NetworkPolicy, on both nodes: the web pods (one beside the client on node-2, bridged;
    // the others on node-1, routed) refuse the client until it carries the label the policy
    // lets in on the named port; then the client's own egress policy stops it again.
    c.apply_yaml(WEB_POLICY);
    let table = c.ctl_ok(&["get", "netpol"]);
    assert!(table.contains("POD-SELECTOR") && table.contains("app=web"), "{table}");
    // The request lines after the first `mark` lines (the shell also logs `Terminated` when a
    // request times out).
    let after = |mark: usize| -> Vec<String> {
        let text = logs(&c);
        let lines = text.lines().skip(mark);
        lines.filter(|l| l.starts_with("ok ") || l.starts_with("fail ")).map(String::from).collect()
    };
    // One round asks by four names; a refused request fails after its 3 s timeout.
    let all_refused = |mark: usize, why: &str| {
        wait_for_showing(
            T,
            why,
            || format!("{:?}", after(mark)),
            || {
                let lines = after(mark);
                (lines.len() >= 4 && lines[lines.len() - 4..].iter().all(|l| l.starts_with("fail "))).then_some(())
            },
        )
    };
    all_refused(logs(&c).lines().count(), "every request of the unlabelled client refused");
    c.ctl_ok(&["label", "pod", "client", "access=true"]);
    let mark = logs(&c).lines().count();
    let seen_since = |mark: usize| format!("{:?}", after(mark));
    wait_for_showing(
        T,
        "the labelled client answered by every web pod again",
        || seen_since(mark),
        || {
            let ready_names: BTreeSet<String> = pods(&c, "app=web")
                .iter()
                .filter(|p| ready(p))
                .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
                .collect();
            let seen: BTreeSet<String> = after(mark)
                .iter()
                .filter(|l| l.starts_with("ok "))
                .filter_map(|l| l.split(' ').nth(2).map(String::from))
                .collect();
            (ready_names.len() == 3 && seen == ready_names).then_some(())
        },
    );
    c.apply_yaml(CLIENT_EGRESS_POLICY);
    all_refused(logs(&c).lines().count(), "every request refused by the client's egress policy");

    // Daemons killed with their policies in force leave their chains; the reset of
    // `skiff down --purge` removes them, so the next pods given these addresses are not judged
    // by them.
    let cluster: Value =
        serde_json::from_str(&std::fs::read_to_string(c.dir.path().join("cluster.json")).unwrap()).unwrap();
    let bridges: Vec<String> =
        cluster["nodes"].as_array().unwrap().iter().map(|n| n["bridge"].as_str().unwrap().to_string()).collect();
    let policy_chains = || {
        let out = std::process::Command::new("iptables").args(["-w", "5", "-S"]).output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let ours: Vec<String> = listing
            .lines()
            .filter(|l| l.starts_with("-N ") && bridges.iter().any(|b| l.ends_with(&format!("SKIFF-NP-{b}"))))
            .map(String::from)
            .collect();
        let per_pod = listing.lines().filter(|l| l.starts_with("-N SKN")).count();
        (ours, per_pod)
    };
    for (_, pid, _) in c.nodes() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    let (before, per_pod) = policy_chains();
    assert!(before.len() == 2 && per_pod >= 2, "both nodes' policy chains in force: {before:?}, {per_pod} per pod");
    let d = c.dir.path().to_str().unwrap().to_string();
    let down =
        std::process::Command::new(skiff_tests::skiff_bin()).args(["down", "--dir", &d, "--purge"]).output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let (after, per_pod_after) = policy_chains();
    assert!(after.is_empty(), "the reset left {after:?}");
    assert!(per_pod_after + 2 <= per_pod, "the reset left per-pod chains: {per_pod} before, {per_pod_after} after");
}

/// Ingress to the web pods only from pods labelled `access: "true"`, on their `http` port.
const WEB_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow-access}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {access: "true"}}}]
    ports: [{port: http}]
"#;

/// Egress from the labelled pods only to pods that do not exist.
const CLIENT_EGRESS_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress}
spec:
  podSelector: {matchLabels: {access: "true"}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: nothing}}}]
"#;
