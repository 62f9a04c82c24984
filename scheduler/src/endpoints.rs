//! The Endpoints controller: for each Service with a selector, an Endpoints object of the same
//! name listing its pods' IPs — ready ones under `addresses`, the rest under
//! `notReadyAddresses` — with each service port's `targetPort` resolved (a number, or a
//! container port's name, which may differ between pods: pods are grouped into subsets by the
//! ports they resolve to, as Kubernetes does).
//!
//! [`desired`] is pure: the Service and its namespace's pods in, the Endpoints `subsets` out.
//! [`EndpointsController`] is keyed by Service: its own changes and its Endpoints' queue it,
//! and a pod's change queues every Service of its namespace whose selector matches the pod
//! before or after the change. Endpoints left by a deleted Service are deleted.

use crate::controller::{self, before_and_after, own_key, Cache, Command, Object, Reconciler};
use crate::objects::{deleting, node_name, phase, ready};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectMeta, ObjectReference, Pod, Service, ServicePort,
};
use skiff_proto::serde_util::IntOrString;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The container port a service port reaches on `pod`, or None if a named port is missing.
fn target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match IntOrString::from_value(&port.target_port) {
        Some(IntOrString::Int(n)) => Some(n as i32),
        None => Some(port.port),
        Some(IntOrString::Str(name)) if name.is_empty() => Some(port.port),
        Some(IntOrString::Str(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name == name)
            .map(|p| p.container_port),
    }
}

fn pod_ip(pod: &Pod) -> &str {
    pod.status.as_ref().map_or("", |s| s.pod_ip.as_str())
}

/// Whether `labels` carry every pair of a Service's `selector` (an empty one selects nothing).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The `subsets` the Service's Endpoints should hold.
pub fn desired<'a>(svc: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.selector.is_empty() {
        return Vec::new();
    }
    // Resolved ports (name, port, protocol) → (ready addresses, not-ready addresses).
    type Resolved = (String, i32, String);
    let mut groups: BTreeMap<Vec<Resolved>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> = BTreeMap::new();
    let mut live: Vec<&Pod> = pods
        .into_iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| !deleting(m) && selects(&spec.selector, &m.labels)))
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed") && !pod_ip(p).is_empty())
        .collect();
    live.sort_by(|a, b| pod_ip(a).cmp(pod_ip(b)));
    for pod in live {
        let resolved: Option<Vec<Resolved>> = spec
            .ports
            .iter()
            .map(|sp| {
                let protocol = if sp.protocol.is_empty() { "TCP" } else { sp.protocol.as_str() };
                target_port(sp, pod).map(|n| (sp.name.clone(), n, protocol.to_string()))
            })
            .collect();
        let Some(resolved) = resolved else { continue };
        let meta = pod.metadata.clone().unwrap_or_default();
        let address = EndpointAddress {
            ip: pod_ip(pod).into(),
            node_name: node_name(pod).into(),
            target_ref: Some(ObjectReference {
                kind: "Pod".into(),
                namespace: meta.namespace,
                name: meta.name,
                uid: meta.uid,
                ..Default::default()
            }),
            ..Default::default()
        };
        let entry = groups.entry(resolved).or_default();
        if ready(pod) {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (addresses, not_ready_addresses))| EndpointSubset {
            addresses,
            not_ready_addresses,
            ports: ports.into_iter().map(|(name, port, protocol)| EndpointPort { name, port, protocol }).collect(),
        })
        .collect()
}

/// The Endpoints controller over the master's caches.
pub struct EndpointsController {
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    pub pods: Store<Pod>,
}

/// The Services whose selector matches a changed pod, before or after the change.
pub fn services_of_change(services: &Store<Service>, change: &Change<Pod>) -> Vec<ObjectKey> {
    let mut keys: Vec<ObjectKey> =
        before_and_after(change).into_iter().flat_map(|p| services_selecting(services, p)).collect();
    keys.dedup();
    keys
}

/// The Services of `pod`'s namespace whose selector matches it.
pub fn services_selecting(services: &Store<Service>, pod: &Pod) -> Vec<ObjectKey> {
    let Some(meta) = pod.meta() else { return Vec::new() };
    services
        .list_namespace(&meta.namespace)
        .iter()
        .filter(|s| s.spec.as_ref().is_some_and(|spec| selects(&spec.selector, &meta.labels)))
        .filter_map(|s| s.meta().map(ObjectKey::of))
        .collect()
}

impl Reconciler for EndpointsController {
    const NAME: &'static str = "endpoints controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        let mut keys = self.services.keys();
        keys.extend(self.endpoints.keys());
        keys.sort();
        keys.dedup();
        keys
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.services, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.endpoints, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.pods, queue, self, |me: &Self, c| services_of_change(&me.services, c)),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.services, &self.endpoints, &self.pods]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let current = self.endpoints.get(key);
        let Some(svc) = self.services.get(key) else {
            // Endpoints left by a deleted Service.
            return current
                .map(|_| Command::Delete { resource: Endpoints::RESOURCE, key: key.clone(), note: None })
                .into_iter()
                .collect();
        };
        if svc.spec.as_ref().is_none_or(|s| s.selector.is_empty()) {
            return Vec::new(); // its Endpoints are the user's
        }
        let pods = self.pods.list_namespace(&key.namespace);
        let subsets = desired(&svc, pods.iter().map(|p| &**p));
        let object = match current {
            Some(current) if current.subsets == subsets => return Vec::new(),
            Some(current) => {
                return vec![Command::Update {
                    object: Object::Endpoints(Endpoints { subsets, ..(*current).clone() }),
                    note: None,
                }]
            }
            None => Endpoints {
                api_version: "v1".into(),
                kind: "Endpoints".into(),
                metadata: Some(ObjectMeta {
                    name: key.name.clone(),
                    namespace: key.namespace.clone(),
                    labels: svc.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default(),
                    ..Default::default()
                }),
                subsets,
            },
        };
        vec![Command::Create { object: Object::Endpoints(object), note: None }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn pod(name: &str, ip: &str, is_ready: bool, http_port: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"), "labels": {"app": "web"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": http_port}]}]},
               "status": {"phase": "Running", "podIP": ip,
                          "conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports_resolved_per_pod() {
        let svc: Service = typed(
            json!({"spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}),
        );
        let mut other = pod("c", "10.0.0.3", true, 8080);
        other["metadata"]["labels"]["app"] = json!("db");
        let pods: Vec<Pod> = [
            pod("a", "10.0.0.1", true, 8080),
            pod("b", "10.0.0.2", false, 8080),
            pod("d", "10.0.0.4", true, 9090),
            other,
        ]
        .into_iter()
        .map(typed)
        .collect();
        let subsets = desired(&svc, &pods);
        assert_eq!(subsets.len(), 2, "two resolved port sets: {subsets:?}");
        let s8080 = subsets.iter().find(|s| s.ports[0].port == 8080).unwrap();
        assert_eq!(s8080.addresses[0].ip, "10.0.0.1");
        assert_eq!(s8080.not_ready_addresses[0].ip, "10.0.0.2");
        assert_eq!((s8080.ports[0].name.as_str(), s8080.ports[0].protocol.as_str()), ("web", "TCP"));
        assert_eq!(s8080.addresses[0].target_ref.as_ref().unwrap().name, "a");
        assert_eq!(s8080.addresses[0].node_name, "n1");
    }

    #[test]
    fn services_without_a_selector_are_left_alone() {
        let svc: Service = typed(json!({"spec": {"ports": [{"port": 80}]}}));
        let pods = [typed::<Pod>(pod("a", "10.0.0.1", true, 8080))];
        assert_eq!(desired(&svc, &pods), []);
    }

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
            spec: Some(skiff_proto::api::ServiceSpec { selector, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_change_queues_the_services_of_its_namespace_that_select_it() {
        let c = EndpointsController { services: Store::new(), endpoints: Store::new(), pods: Store::new() };
        c.services.replace(
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
        assert_eq!(services_selecting(&c.services, &pod), [ObjectKey::new("a", "web")]);
        let canary = Pod { metadata: meta("a", "web-2", &[("app", "web"), ("track", "canary")]), ..Default::default() };
        assert_eq!(
            services_selecting(&c.services, &canary),
            [ObjectKey::new("a", "web"), ObjectKey::new("a", "web-canary")]
        );
    }

    #[test]
    fn reconcile_writes_endpoints_once_and_deletes_them_with_their_service() {
        let c = EndpointsController { services: Store::new(), endpoints: Store::new(), pods: Store::new() };
        let key = ObjectKey::new("default", "web");
        let mut svc = service("default", "web", &[("app", "web")]);
        svc.spec.as_mut().unwrap().ports = vec![ServicePort { port: 80, ..Default::default() }];
        c.services.replace(vec![svc.clone()], "1".into());
        c.pods.replace(vec![typed(pod("a", "10.0.0.1", true, 8080))], "1".into());
        let commands = c.reconcile(&key);
        let [Command::Create { object: Object::Endpoints(created), .. }] = commands.as_slice() else {
            panic!("{commands:?}")
        };
        assert_eq!(created.subsets[0].ports[0].port, 80, "no targetPort: the service port");
        let mut stored = created.clone();
        stored.metadata.as_mut().unwrap().resource_version = "2".into();
        c.endpoints.replace(vec![stored], "2".into());
        assert_eq!(c.reconcile(&key), [], "nothing changed");
        c.services.replace(vec![], "3".into());
        assert!(matches!(c.reconcile(&key).as_slice(), [Command::Delete { .. }]), "its Service is gone");
    }
}
