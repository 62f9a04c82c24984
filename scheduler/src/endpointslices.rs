//! The EndpointSlice controllers: beside each Service's Endpoints, EndpointSlices
//! (discovery.k8s.io/v1) with the same addresses — a slice per set of resolved ports, at most
//! 100 endpoints each, labelled `kubernetes.io/service-name` — which the nodes' service proxy
//! reads. For a Service with a selector they come from its pods (Kubernetes'
//! endpointslice-controller); for one without, from the Endpoints its user wrote (Kubernetes'
//! endpointslicemirroring-controller). Slice names are the Service's name and a hash of their
//! ports, so a reconcile knows which slice each endpoint belongs in without reading them all.
//!
//! [`slices_for`] is pure: a Service and its subsets in, the slices out. [`EndpointSlices`] is
//! keyed by Service: the Service, its Endpoints, its slices and the pods it selects queue it.

use crate::controller::{self, before_and_after, own_key, Cache, Command, Object, Reconciler};
use crate::endpoints::{desired, services_of_change};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{
    EndpointAddress, EndpointConditions, EndpointSlice, EndpointSubset, Endpoints, ObjectMeta, OwnerReference, Pod,
    Service, SliceEndpoint, SlicePort,
};
use skiff_proto::discovery::{fnv64, SERVICE_NAME};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The label naming the controller that keeps a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const FROM_PODS: &str = "endpointslice-controller.k8s.io";
const MIRRORED: &str = "endpointslicemirroring-controller.k8s.io";
/// Kubernetes' `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS: usize = 100;

/// One endpoint of a slice from an Endpoints address.
fn endpoint(a: &EndpointAddress, ready: bool) -> SliceEndpoint {
    SliceEndpoint {
        addresses: vec![a.ip.clone()],
        conditions: Some(EndpointConditions { ready: Some(ready), serving: Some(ready), terminating: Some(false) }),
        hostname: a.hostname.clone(),
        target_ref: a.target_ref.clone(),
        node_name: a.node_name.clone(),
        ..Default::default()
    }
}

/// The slices `subsets` make for `svc` (`mirrored`: from the Endpoints its user wrote, owned by
/// them). A Service whose pods give no endpoint still gets one empty slice, as in Kubernetes.
pub fn slices_for(svc: &Service, subsets: &[EndpointSubset], mirrored: bool) -> Vec<EndpointSlice> {
    let meta = svc.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.clone();
    labels.insert(SERVICE_NAME.into(), meta.name.clone());
    labels.insert(MANAGED_BY.into(), if mirrored { MIRRORED } else { FROM_PODS }.into());
    // Slices from pods are the Service's; mirrored ones carry no owner (the controller deletes
    // them with the Service).
    let owners: Vec<OwnerReference> = (!mirrored)
        .then(|| OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
        .into_iter()
        .collect();
    let slice = |suffix: String, ports: Vec<SlicePort>, endpoints: Vec<SliceEndpoint>| EndpointSlice {
        api_version: "discovery.k8s.io/v1".into(),
        kind: "EndpointSlice".into(),
        metadata: Some(ObjectMeta {
            name: format!("{}-{suffix}", meta.name),
            namespace: meta.namespace.clone(),
            labels: labels.clone(),
            owner_references: owners.clone(),
            ..Default::default()
        }),
        address_type: "IPv4".into(),
        endpoints,
        ports,
    };
    let mut out = Vec::new();
    for subset in subsets {
        let ports: Vec<SlicePort> = subset
            .ports
            .iter()
            .map(|p| SlicePort {
                name: p.name.clone(),
                protocol: if p.protocol.is_empty() { "TCP".into() } else { p.protocol.clone() },
                port: Some(p.port),
                ..Default::default()
            })
            .collect();
        let key: Vec<String> = ports.iter().map(|p| format!("{}/{}/{:?}", p.name, p.protocol, p.port)).collect();
        let hash = format!("{:08x}", fnv64(&key.join(",")) & 0xffff_ffff);
        let endpoints: Vec<SliceEndpoint> = (subset.addresses.iter().map(|a| endpoint(a, true)))
            .chain(subset.not_ready_addresses.iter().map(|a| endpoint(a, false)))
            .collect();
        for (i, chunk) in endpoints.chunks(MAX_ENDPOINTS).enumerate() {
            let suffix = if i == 0 { hash.clone() } else { format!("{hash}-{i}") };
            out.push(slice(suffix, ports.clone(), chunk.to_vec()));
        }
    }
    if out.is_empty() && !mirrored {
        out.push(slice("empty".into(), Vec::new(), Vec::new()));
    }
    out
}

/// The EndpointSlice controllers over the master's caches.
pub struct EndpointSlices {
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    pub slices: Store<EndpointSlice>,
    pub pods: Store<Pod>,
}

impl EndpointSlices {
    /// The slices this controller keeps for the Service `key`.
    fn kept(&self, key: &ObjectKey) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .list_namespace(&key.namespace)
            .into_iter()
            .filter(|s| {
                let managed_by = s.metadata.as_ref().and_then(|m| m.labels.get(MANAGED_BY)).map(String::as_str);
                s.service() == Some((key.namespace.as_str(), key.name.as_str()))
                    && matches!(managed_by, Some(FROM_PODS | MIRRORED))
            })
            .collect()
    }
}

/// The key of the Service a slice belongs to.
fn service_of(slice: &EndpointSlice) -> Option<ObjectKey> {
    slice.service().map(|(ns, name)| ObjectKey::new(ns, name))
}

impl Reconciler for EndpointSlices {
    const NAME: &'static str = "endpointslice controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        let mut keys = self.services.keys();
        keys.extend(self.slices.list().iter().filter_map(|s| service_of(s)));
        keys.sort();
        keys.dedup();
        keys
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.services, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.endpoints, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.slices, queue, self, |_, c: &Change<EndpointSlice>| {
                let mut keys: Vec<ObjectKey> = before_and_after(c).into_iter().filter_map(service_of).collect();
                keys.dedup();
                keys
            }),
            controller::on_changes(&self.pods, queue, self, |me: &Self, c| services_of_change(&me.services, c)),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.services, &self.endpoints, &self.slices, &self.pods]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let wanted = match self.services.get(key) {
            None => Vec::new(),
            Some(svc) if svc.spec.as_ref().is_some_and(|s| !s.selector.is_empty()) => {
                let pods = self.pods.list_namespace(&key.namespace);
                slices_for(&svc, &desired(&svc, pods.iter().map(|p| &**p)), false)
            }
            // Without a selector its Endpoints are its user's: mirrored.
            Some(svc) => self.endpoints.get(key).map(|e| slices_for(&svc, &e.subsets, true)).unwrap_or_default(),
        };
        let mut kept: BTreeMap<String, Arc<EndpointSlice>> =
            self.kept(key).into_iter().filter_map(|s| Some((s.metadata.as_ref()?.name.clone(), s))).collect();
        let mut commands = Vec::new();
        for mut slice in wanted {
            let name = slice.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            match kept.remove(&name) {
                None => commands.push(Command::Create { object: Object::EndpointSlice(slice), note: None }),
                Some(current) => {
                    let meta = current.metadata.clone().unwrap_or_default();
                    let same = current.endpoints == slice.endpoints
                        && current.ports == slice.ports
                        && slice.metadata.as_ref().is_some_and(|m| m.labels == meta.labels);
                    if !same {
                        let labels = slice.metadata.take().map(|m| m.labels).unwrap_or_default();
                        slice.metadata = Some(ObjectMeta { labels, ..meta });
                        commands.push(Command::Update { object: Object::EndpointSlice(slice), note: None });
                    }
                }
            }
        }
        commands.extend(kept.into_keys().map(|name| Command::Delete {
            resource: EndpointSlice::RESOURCE,
            key: ObjectKey::new(&key.namespace, &name),
            note: None,
        }));
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_subset_becomes_slices_of_at_most_a_hundred_with_ready_conditions() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        let address = |i: usize| EndpointAddress { ip: format!("10.0.{}.{}", i / 200, i % 200), ..Default::default() };
        let subset = EndpointSubset {
            addresses: (0..150).map(address).collect(),
            not_ready_addresses: vec![address(199)],
            ports: vec![skiff_proto::api::EndpointPort { name: "http".into(), port: 8080, protocol: String::new() }],
        };
        let slices = slices_for(&svc, &[subset], false);
        assert_eq!(slices.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>(), [100, 51]);
        let first = &slices[0];
        let meta = first.metadata.as_ref().unwrap();
        assert_eq!(meta.labels.get(SERVICE_NAME).map(String::as_str), Some("web"));
        assert_eq!(meta.labels.get(MANAGED_BY).map(String::as_str), Some(FROM_PODS));
        assert_eq!(meta.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(meta.owner_references[0].uid, "svc-uid");
        assert!(slices[1].metadata.as_ref().unwrap().name.ends_with("-1"));
        assert_eq!(first.ports[0].port, Some(8080));
        assert_eq!(first.ports[0].protocol, "TCP");
        let last = slices[1].endpoints.last().unwrap();
        assert_eq!(last.conditions.as_ref().unwrap().ready, Some(false));
        assert_eq!(first.endpoints[0].conditions.as_ref().unwrap().ready, Some(true));
        // No endpoints: one empty slice; mirrored Endpoints without subsets: none.
        assert_eq!(slices_for(&svc, &[], false).len(), 1);
        assert_eq!(slices_for(&svc, &[], true).len(), 0);
    }
}
