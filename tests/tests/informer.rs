//! Informers against a real cluster: a field-selected pod informer (as a node daemon's will
//! be) lists, then follows creates and deletes through the typed per-kind watch, and its store
//! agrees with a fresh list at the end — the list/watch path the controllers move to.

use skiff_client::informer::{self, ApiSource, ObjectKey, Resource, Store};
use skiff_client::{Client, ClientConfig};
use skiff_proto::api::Pod;
use skiff_tests::{runtime, Cluster};
use std::time::{Duration, Instant};

fn pod(name: &str, node: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:test"}]}})
}

async fn until(store: &Store<Pod>, what: &str, f: impl Fn(&Store<Pod>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f(store) {
        let seen: Vec<String> = store.list().iter().map(|p| ObjectKey::of(p.meta().unwrap()).to_string()).collect();
        assert!(Instant::now() < deadline, "{what}: the store holds {seen:?} at {}", store.resource_version());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_field_selected_informer_follows_its_pods_through_the_typed_watch() {
    let c = Cluster::up(1, &[]);
    let config = ClientConfig::load(&c.dir.path().join("client.json")).unwrap();
    runtime().block_on(async {
        let client = Client::new(config).unwrap();
        client.create("pods", "default", &pod("before", "n1")).await.unwrap();
        client.create("pods", "default", &pod("elsewhere", "n2")).await.unwrap();
        let store: Store<Pod> = Store::new();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let source = ApiSource::new(client.clone()).fields("spec.nodeName=n1");
        let task = tokio::spawn(informer::run(store.clone(), source, stop));
        until(&store, "the first list", |s| s.is_synced() && s.len() == 1).await;
        assert!(store.get(&ObjectKey::new("default", "before")).is_some());

        client.create("pods", "default", &pod("after", "n1")).await.unwrap();
        client.create("pods", "default", &pod("other", "n2")).await.unwrap();
        until(&store, "the watched create", |s| s.get(&ObjectKey::new("default", "after")).is_some()).await;
        client.delete_with("pods", "default", "before", Some(0), "").await.unwrap();
        until(&store, "the watched delete", |s| s.get(&ObjectKey::new("default", "before")).is_none()).await;

        // What the store holds is what a list says now.
        let list = client.list("pods", "default", "", "spec.nodeName=n1").await.unwrap();
        let listed: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        until(&store, "agreement with a list", |s| {
            let mut held: Vec<String> = s.list().iter().map(|p| p.meta().unwrap().name.clone()).collect();
            held.sort();
            held == listed
        })
        .await;
        assert_eq!(listed, ["after"]);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    });
}
