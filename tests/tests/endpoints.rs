//! The Endpoints controller against pods running on a real node: a Service's Endpoints list
//! its pods' IPs, ready or not, with named target ports resolved, and follow the pods.

use serde_json::Value;
use skiff_tests::{wait_for, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn ips(ep: &Value, field: &str) -> Vec<String> {
    let mut v: Vec<String> = ep["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s[field].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["ip"].as_str().map(String::from))
        .collect();
    v.sort();
    v
}

#[test]
fn endpoints_follow_the_pods_a_service_selects() {
    let c = Cluster::with_nodes(3, 1, &[]);
    let pod = |name: &str, ready_cmd: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: app
    image: "busybox:test"
    command: [sh, -c, "{ready_cmd}; exec sleep 3600"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{exec: {{command: [cat, /tmp/ready]}}, periodSeconds: 1}}
"#
        )
    };
    c.apply_yaml(&pod("web-1", "touch /tmp/ready"));
    c.apply_yaml(&pod("web-2", "true"));
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#,
    );
    let ip_of = |name: &str| {
        wait_for(T, &format!("{name} to have an IP"), || {
            c.get_json("pods", name)?["status"]["podIP"].as_str().filter(|s| !s.is_empty()).map(String::from)
        })
    };
    let (ip1, ip2) = (ip_of("web-1"), ip_of("web-2"));
    // phase: web-1 is ready, web-2 is not
    let ep = wait_for(T, "endpoints with one ready and one not-ready address", || {
        let ep = c.get_json("endpoints", "web")?;
        (ips(&ep, "addresses") == [ip1.clone()] && ips(&ep, "notReadyAddresses") == [ip2.clone()]).then_some(ep)
    });
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080, "the named targetPort resolved: {ep}");
    // phase: a pod goes, its address goes
    c.ctl_ok(&["delete", "pod", "web-1"]);
    wait_for(T, "web-1's address gone", || {
        let ep = c.get_json("endpoints", "web")?;
        (ips(&ep, "addresses").is_empty() && ips(&ep, "notReadyAddresses") == [ip2.clone()]).then_some(())
    });
    // phase: the Service goes, its Endpoints go
    c.ctl_ok(&["delete", "service", "web"]);
    wait_for(T, "the Endpoints gone with the Service", || c.get_json("endpoints", "web").is_none().then_some(()));
}
