//! The control plane watches instead of polling (issue 15), measured on a running cluster of
//! three masters: a scale-up is acted on as soon as it is acknowledged, and while nothing
//! changes no master lists pods — counted by the API servers' own list counter, which the test
//! first shows does count. Authorization reads RBAC objects once per change, not per request.

use skiff_client::{Client, ClientConfig};
use skiff_tests::{runtime, Cluster};
use std::time::{Duration, Instant};

/// Sum of `skiff_apiserver_lists_total` for `resource` over the masters, whatever the
/// selectors.
async fn pod_lists(masters: &[Client], resource: &str) -> u64 {
    let mut total = 0;
    for m in masters {
        let text = m.api_metrics().await.expect("metrics");
        let prefix = format!("skiff_apiserver_lists_total{{resource=\"{resource}\",");
        total += text
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).expect("a counter value"))
            .sum::<u64>();
    }
    total
}

#[test]
fn a_scale_up_is_acted_on_at_once_and_nothing_lists_pods_while_idle() {
    let c = Cluster::up(3, &[]);
    let config = ClientConfig::load(&c.dir.path().join("client.json")).unwrap();
    runtime().block_on(async {
        let client = Client::new(config.clone()).unwrap();
        let masters: Vec<Client> = c
            .masters
            .iter()
            .map(|m| Client::new(ClientConfig { endpoints: vec![m.api.clone()], ..config.clone() }).unwrap())
            .collect();

        // phase: a ReplicaSet of 1 (no nodes: its pods stay pending, the scheduler has work)
        let rs = serde_json::json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox:test"}]}}}});
        client.create("replicasets", "default", &rs).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let listed = loop {
            let pods = client.list("pods", "default", "app=web", "").await.unwrap();
            let n = pods["items"].as_array().map_or(0, Vec::len);
            if n == 1 {
                break pods;
            }
            assert!(Instant::now() < deadline, "the ReplicaSet's first pod: {n} pods after 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        // phase: scale 1 -> 3, timed from the acknowledgement to the pods' ADDED events
        let rv = listed["metadata"]["resourceVersion"].as_str().expect("a list's resourceVersion");
        let mut watch = client.watch("pods", "default", "app=web", "", rv).await.unwrap();
        // Read-modify-write as a user's client does it: the controller writes the status
        // meanwhile, so a conflict means read again.
        let acked = loop {
            let mut current = client.get("replicasets", "default", "web").await.unwrap();
            current["spec"]["replicas"] = 3.into();
            match client.update("replicasets", &current).await {
                Ok(_) => break Instant::now(),
                Err(e) if e.code() == tonic::Code::Aborted => continue,
                Err(e) => panic!("scaling the ReplicaSet: {e}"),
            }
        };
        let mut added = Vec::new();
        while added.len() < 2 {
            let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
                .await
                .unwrap_or_else(|_| panic!("pods after the scale-up: only {added:?} within 10 s"))
                .expect("a watch event")
                .expect("the watch ended");
            if event.r#type == "ADDED" {
                let pod: serde_json::Value = serde_json::from_str(&event.json).unwrap();
                added.push((pod["metadata"]["name"].as_str().unwrap_or_default().to_string(), acked.elapsed()));
            }
        }
        let slowest = added.iter().map(|(_, t)| *t).max().unwrap();
        println!("scale-up 1 -> 3: pods created {added:?} after the acknowledgement");
        assert!(slowest <= Duration::from_millis(200), "the scaled-up pods came {added:?} after the acknowledgement");
        drop(watch);

        // phase: the counter counts — one list of pods is one more
        let settle = Instant::now() + Duration::from_secs(10);
        let mut before = pod_lists(&masters, "pods").await;
        loop {
            // Wait out any informer (re)start still listing.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = pod_lists(&masters, "pods").await;
            if now == before || Instant::now() > settle {
                before = now;
                break;
            }
            before = now;
        }
        client.list("pods", "default", "", "").await.unwrap();
        let counted = pod_lists(&masters, "pods").await;
        assert_eq!(counted, before + 1, "one list of pods, counted once over the masters");

        // phase: 10 s of nothing changing: no master lists pods
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = pod_lists(&masters, "pods").await;
        assert_eq!(after, counted, "pods were listed {} times in 10 s of idleness", after - counted);

        // phase: authorization reads the RBAC objects once per change, not four lists a request,
        // and a grant or a revocation holds for the very next request
        c.add_user("reader-token", "reader", &[]);
        let reader = Client::new(ClientConfig {
            endpoints: vec![c.masters[0].api.clone()],
            token: Some("reader-token".into()),
            client_cert: None,
            ..config.clone()
        })
        .unwrap();
        let role = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]});
        client.create("clusterroles", "", &role).await.unwrap();
        let binding = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "reader-pod-reader"},
            "subjects": [{"kind": "User", "name": "reader"}],
            "roleRef": {"kind": "ClusterRole", "name": "pod-reader", "apiGroup": "rbac.authorization.k8s.io"}});
        client.create("clusterrolebindings", "", &binding).await.unwrap();
        // Only while the masters re-read the token file is the reader unknown; never forbidden.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match reader.list("pods", "default", "", "").await {
                Ok(_) => break,
                Err(e) if e.code() == tonic::Code::Unauthenticated && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("the reader, granted pod-reader a moment ago: {e}"),
            }
        }
        let before = pod_lists(&masters, "clusterrolebindings").await;
        for _ in 0..20 {
            reader.list("pods", "default", "", "").await.expect("the reader lists pods");
        }
        let after = pod_lists(&masters, "clusterrolebindings").await;
        assert_eq!(
            after,
            before,
            "20 requests of a user bound by RBAC listed ClusterRoleBindings {} times",
            after - before
        );
        client.delete("clusterrolebindings", "", "reader-pod-reader").await.unwrap();
        match reader.list("pods", "default", "", "").await {
            Err(e) if e.code() == tonic::Code::PermissionDenied => {}
            other => panic!("the request after the binding's deletion: {other:?}"),
        }
    });
}
