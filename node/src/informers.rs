//! The daemon's caches of cluster-wide kinds: one informer per kind, shared by the service
//! proxy, the cluster DNS, the ingress controller, the pod network and the network policies. They learn of changes from one list and
//! then one watch per kind, never from periodic lists; readers get the objects as JSON (the
//! proxy's and the ingress's tables are built from JSON) and a wake-up when any kind they
//! read changed.

use serde_json::Value;
use skiff_client::informer::{self, ApiSource, Resource, Store};
use skiff_client::Client;
use skiff_proto::api::{EndpointSlice, Endpoints, Ingress, IngressClass, Namespace, NetworkPolicy, Node, Pod, Service};
use std::sync::Arc;
use tokio::sync::Notify;

/// The caches. Clones share them.
#[derive(Clone, Default)]
pub struct Caches {
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub ingresses: Store<Ingress>,
    pub ingress_classes: Store<IngressClass>,
    pub nodes: Store<Node>,
    /// Every pod of the cluster, its namespaces and the network policies over them.
    pub pods: Store<Pod>,
    pub namespaces: Store<Namespace>,
    pub network_policies: Store<NetworkPolicy>,
}

impl Caches {
    /// Starts an informer per kind through `client`, until `stop`.
    pub fn start(client: &Client, stop: &tokio::sync::watch::Receiver<bool>) -> Caches {
        let caches = Caches::default();
        let source = || ApiSource::new(client.clone());
        tokio::spawn(informer::run(caches.services.clone(), source(), stop.clone()));
        tokio::spawn(informer::run(caches.endpoints.clone(), source(), stop.clone()));
        tokio::spawn(informer::run(caches.endpoint_slices.clone(), source(), stop.clone()));
        tokio::spawn(informer::run(caches.ingresses.clone(), source(), stop.clone()));
        tokio::spawn(informer::run(caches.ingress_classes.clone(), source(), stop.clone()));
        tokio::spawn(informer::run(caches.nodes.clone(), source(), stop.clone()));
        tokio::spawn(informer::run(caches.pods.clone(), source(), stop.clone()));
        tokio::spawn(informer::run(caches.namespaces.clone(), source(), stop.clone()));
        tokio::spawn(informer::run(caches.network_policies.clone(), source(), stop.clone()));
        caches
    }
}

/// Every cached object of a kind, as JSON.
pub fn values<K: Resource + serde::Serialize>(store: &Store<K>) -> Vec<Value> {
    store.list().iter().filter_map(|o| serde_json::to_value(&**o).ok()).collect()
}

/// Wakes `notify` on every change to `store` (see `Store::on_changes`).
pub fn wake_on_changes<K: Resource>(store: &Store<K>, notify: &Arc<Notify>) -> tokio::task::JoinHandle<()> {
    let notify = notify.clone();
    store.on_changes(move || notify.notify_one())
}
