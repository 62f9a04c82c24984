//! The Endpoints controller, run from informers: a keyed reconcile per Service instead of a
//! pass over every Service, Endpoints and pod every 100 ms.
//!
//! Triggers: a Service's own changes and its Endpoints' queue its key; a pod's change queues
//! every Service of its namespace whose selector matches the pod before or after the change.
//! `reconcile(key)` compares [`crate::endpoints::desired`] over the cached Service and its
//! namespace's cached pods with the cached Endpoints and writes the difference through the
//! fenced client. The informers run on every master, so a new leader starts with warm caches;
//! on taking leadership (and every [`RESYNC`] as a safety net) every key is queued once.

use crate::controller::{ignore_races, own_key};
use crate::endpoints::desired;
use serde_json::{json, Value};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_client::Client;
use skiff_proto::api::{Endpoints, Pod, Service};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

/// How often every key is queued even without a change.
pub const RESYNC: Duration = Duration::from_secs(60);

/// The caches the controller reads.
#[derive(Clone, Default)]
pub struct Caches {
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    pub pods: Store<Pod>,
}

impl Caches {
    /// The controller's view of the process's shared informers.
    pub fn of(informers: &crate::informers::Informers) -> Caches {
        Caches {
            services: informers.services.clone(),
            endpoints: informers.endpoints.clone(),
            pods: informers.pods.clone(),
        }
    }

    async fn synced(&self) {
        self.services.synced().await;
        self.endpoints.synced().await;
        self.pods.synced().await;
    }

    fn every_key(&self) -> BTreeSet<ObjectKey> {
        let keys = |metas: Vec<Option<ObjectKey>>| metas.into_iter().flatten().collect::<BTreeSet<_>>();
        let mut all = keys(self.services.list().iter().map(|s| s.meta().map(ObjectKey::of)).collect());
        all.extend(keys(self.endpoints.list().iter().map(|e| e.meta().map(ObjectKey::of)).collect()));
        all
    }

    /// The Services of `pod`'s namespace whose selector matches it.
    fn services_of(&self, pod: &Pod) -> Vec<ObjectKey> {
        let Some(meta) = pod.meta() else { return Vec::new() };
        self.services
            .list_namespace(&meta.namespace)
            .iter()
            .filter(|s| {
                let selector = s.spec.as_ref().map(|spec| &spec.selector);
                selector.is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| meta.labels.get(k) == Some(v)))
            })
            .filter_map(|s| s.meta().map(ObjectKey::of))
            .collect()
    }
}

fn value<T: serde::Serialize>(obj: &T) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

/// Runs the controller until `stop`: triggers always (so the queue is current), reconciles
/// only while `leader_term` names a term, each write fenced to it.
pub async fn run(
    client: Client,
    caches: Caches,
    leader_term: Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let (mut services, mut endpoints, mut pods) =
        (caches.services.subscribe(), caches.endpoints.subscribe(), caches.pods.subscribe());
    let worker = {
        let (queue, caches, leader_term) = (queue.clone(), caches.clone(), leader_term.clone());
        tokio::spawn(async move {
            while let Some(key) = queue.next().await {
                if let Some(term) = leader_term() {
                    match reconcile(&client.fenced(term), &caches, &key).await {
                        Ok(()) => queue.forget(&key),
                        Err(e) => {
                            tracing::debug!("endpoints {key}: {}", e.message());
                            queue.retry(key.clone());
                        }
                    }
                }
                queue.done(&key);
            }
        })
    };
    let mut led = false;
    let mut resync = tokio::time::interval(Duration::from_millis(250));
    let mut last_full = tokio::time::Instant::now();
    caches.synced().await;
    loop {
        tokio::select! {
            c = services.recv() => match c {
                Ok(c) => own_key(&c).into_iter().for_each(|k| queue.add(k)),
                Err(RecvError::Lagged(_)) => caches.every_key().into_iter().for_each(|k| queue.add(k)),
                Err(RecvError::Closed) => break,
            },
            c = endpoints.recv() => match c {
                Ok(c) => own_key(&c).into_iter().for_each(|k| queue.add(k)),
                Err(RecvError::Lagged(_)) => caches.every_key().into_iter().for_each(|k| queue.add(k)),
                Err(RecvError::Closed) => break,
            },
            c = pods.recv() => match c {
                Ok(Change::Applied { old, new }) => {
                    old.iter().chain([&new]).flat_map(|p| caches.services_of(p)).for_each(|k| queue.add(k));
                }
                Ok(Change::Deleted(old)) => caches.services_of(&old).into_iter().for_each(|k| queue.add(k)),
                Err(RecvError::Lagged(_)) => caches.every_key().into_iter().for_each(|k| queue.add(k)),
                Err(RecvError::Closed) => break,
            },
            // Leadership is looked at often (cheap); every key is queued when it is taken
            // and every RESYNC.
            _ = resync.tick() => {
                let leads = leader_term().is_some();
                if (leads && !led) || last_full.elapsed() >= RESYNC {
                    last_full = tokio::time::Instant::now();
                    caches.every_key().into_iter().for_each(|k| queue.add(k));
                }
                led = leads;
            }
            _ = stop.changed() => break,
        }
    }
    queue.close();
    let _ = worker.await;
}

/// Brings `key`'s Endpoints to what its Service and pods say.
async fn reconcile(client: &Client, caches: &Caches, key: &ObjectKey) -> Result<(), Status> {
    let current = caches.endpoints.get(key);
    let Some(svc) = caches.services.get(key) else {
        // Endpoints left by a deleted Service.
        if current.is_some() {
            ignore_races(client.delete("endpoints", &key.namespace, &key.name).await)?;
        }
        return Ok(());
    };
    let svc = value(&*svc);
    if svc["spec"]["selector"].as_object().is_none_or(|s| s.is_empty()) {
        return Ok(());
    }
    let pods: Vec<Value> = caches.pods.list_namespace(&key.namespace).iter().map(|p| value(&**p)).collect();
    let subsets = desired(&svc, &pods);
    match current.map(|c| value(&*c)) {
        Some(current)
            if current["subsets"].as_array().cloned().unwrap_or_default()
                == subsets.as_array().cloned().unwrap_or_default() =>
        {
            Ok(())
        }
        Some(mut updated) => {
            updated["subsets"] = subsets;
            ignore_races(client.update("endpoints", &updated).await).map(|_| ())
        }
        None => {
            let mut obj = json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": key.name, "namespace": key.namespace}, "subsets": subsets});
            if svc["metadata"]["labels"].is_object() {
                obj["metadata"]["labels"] = svc["metadata"]["labels"].clone();
            }
            ignore_races(client.create("endpoints", &key.namespace, &obj).await).map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{ObjectMeta, ServiceSpec};

    fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            namespace: ns.into(),
            name: name.into(),
            resource_version: "1".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        })
    }

    fn service(ns: &str, name: &str, selector: &[(&str, &str)]) -> Service {
        let selector = selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Service {
            metadata: meta(ns, name, &[]),
            spec: Some(ServiceSpec { selector, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_change_queues_the_services_of_its_namespace_that_select_it() {
        let caches = Caches::default();
        caches.services.replace(
            vec![
                service("a", "web", &[("app", "web")]),
                service("a", "web-canary", &[("app", "web"), ("track", "canary")]),
                service("a", "db", &[("app", "db")]),
                service("a", "external", &[]),
                service("b", "web", &[("app", "web")]),
            ],
            "1".into(),
        );
        let pod = Pod { metadata: meta("a", "web-1", &[("app", "web")]), ..Default::default() };
        assert_eq!(caches.services_of(&pod), [ObjectKey::new("a", "web")]);
        let canary = Pod { metadata: meta("a", "web-2", &[("app", "web"), ("track", "canary")]), ..Default::default() };
        assert_eq!(caches.services_of(&canary), [ObjectKey::new("a", "web"), ObjectKey::new("a", "web-canary")]);
    }
}
