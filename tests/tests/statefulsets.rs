//! StatefulSets on a real node: ordered start with stable names and a claim per ordinal,
//! scale-down from the top.

use serde_json::Value;
use skiff_tests::{wait_for, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn names(c: &Cluster, resource: &str, label: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(&c.ctl_ok(&["get", resource, "-l", label, "-o", "json"])).unwrap();
    let mut n: Vec<String> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
        .collect();
    n.sort();
    n
}

fn started(c: &Cluster, pod: &str) -> String {
    let p = c.get_json("pods", pod).unwrap();
    p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_statefulset_scales_up_in_order_and_down_from_the_top() {
    let c = Cluster::with_nodes(3, 1, &[]);
    // Three hostPath volumes for the claims the StatefulSet's template asks for.
    let disks = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let path = disks.path().join(format!("pv{i}"));
        c.apply_yaml(&format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv{i}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  hostPath: {{path: \"{}\"}}\n",
            path.display()
        ));
    }
    let sts = |replicas: u32| {
        format!(
            r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  replicas: {replicas}
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: db
        image: "busybox:test"
        command: [sh, -c, "hostname > /data/who; sleep 1; touch /tmp/ready; exec sleep 3600"]
        readinessProbe: {{exec: {{command: [cat, /tmp/ready]}}, periodSeconds: 1}}
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
"#
        )
    };
    c.apply_yaml(&sts(0));
    // phase: 0 → 3, one at a time, in order
    c.apply_yaml(&sts(3));
    let mut seen: Vec<usize> = Vec::new();
    wait_for(T, "db-0, db-1, db-2 ready", || {
        let now = names(&c, "pods", "app=db");
        if seen.last() != Some(&now.len()) {
            seen.push(now.len());
        }
        let s = c.get_json("statefulsets", "db")?;
        (now == ["db-0", "db-1", "db-2"] && s["status"]["readyReplicas"] == 3).then_some(())
    });
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "pods appeared one at a time: {seen:?}");
    assert!(started(&c, "db-0") <= started(&c, "db-1") && started(&c, "db-1") <= started(&c, "db-2"));
    let db1 = c.get_json("pods", "db-1").unwrap();
    assert_eq!(db1["spec"]["hostname"], "db-1");
    // phase: each ordinal has its own claim, bound to its own volume, holding what it wrote
    assert_eq!(names(&c, "persistentvolumeclaims", "app=db"), ["data-db-0", "data-db-1", "data-db-2"]);
    let mut written: Vec<String> = (0..3)
        .filter_map(|i| std::fs::read_to_string(disks.path().join(format!("pv{i}/who"))).ok())
        .map(|s| s.trim().to_string())
        .collect();
    written.sort();
    assert_eq!(written, ["db-0", "db-1", "db-2"]);
    let claim = c.get_json("persistentvolumeclaims", "data-db-1").unwrap();
    assert_eq!(claim["status"]["phase"], "Bound", "{claim}");

    // phase: 3 → 1 removes db-2, then db-1
    c.apply_yaml(&sts(1));
    wait_for(T, "only db-0 left", || (names(&c, "pods", "app=db") == ["db-0"]).then_some(()));
    assert_eq!(names(&c, "persistentvolumeclaims", "app=db").len(), 3, "claims outlive their pods");
}
