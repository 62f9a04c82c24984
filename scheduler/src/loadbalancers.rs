//! The status of LoadBalancer Services and of the Ingresses Skiff's ingress controller serves.
//! With no cloud, every ready node serves them on its address (as k3s's service load balancer
//! does), so `status.loadBalancer.ingress` lists the ready nodes' InternalIPs. Keyed by the
//! Service or Ingress: its own changes queue it, and a node change that alters the ready
//! addresses queues them all.

use crate::controller::{self, own_key, Cache, Command, Object, Reconciler};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{
    Ingress, IngressClass, IngressStatus, LoadBalancerIngress, LoadBalancerStatus, Node, Service, ServiceStatus,
};
use std::sync::Arc;

/// The node's InternalIPs while it is Ready.
fn ready_ips(node: &Node) -> Vec<&str> {
    let Some(status) = node.status.as_ref() else { return Vec::new() };
    if !status.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True") {
        return Vec::new();
    }
    status.addresses.iter().filter(|a| a.r#type == "InternalIP").map(|a| a.address.as_str()).collect()
}

/// What a load balancer served by every ready node reports.
pub fn served_by<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> LoadBalancerStatus {
    let mut ips: Vec<&str> = nodes.into_iter().flat_map(ready_ips).collect();
    ips.sort_unstable();
    ips.dedup();
    LoadBalancerStatus {
        ingress: ips.into_iter().map(|ip| LoadBalancerIngress { ip: ip.into(), ..Default::default() }).collect(),
    }
}

/// Whether a node change alters the ready addresses.
fn addresses_changed(change: &Change<Node>) -> bool {
    match change {
        Change::Applied { old: Some(old), new } => ready_ips(old) != ready_ips(new),
        Change::Applied { old: None, new } => !ready_ips(new).is_empty(),
        Change::Deleted(old) => !ready_ips(old).is_empty(),
    }
}

/// Queues every key `me` owns when a node change alters the ready addresses.
fn on_address_changes<R: Reconciler>(
    nodes: &Store<Node>,
    queue: &WorkQueue<ObjectKey>,
    me: &Arc<R>,
) -> tokio::task::JoinHandle<()> {
    controller::on_changes(
        nodes,
        queue,
        me,
        |me: &R, c: &Change<Node>| {
            if addresses_changed(c) {
                me.every_key()
            } else {
                Vec::new()
            }
        },
    )
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| s.r#type == "LoadBalancer")
}

/// The LoadBalancer Services' status.
pub struct ServiceLoadBalancers {
    pub services: Store<Service>,
    pub nodes: Store<Node>,
}

impl Reconciler for ServiceLoadBalancers {
    const NAME: &'static str = "service load balancer status";

    fn every_key(&self) -> Vec<ObjectKey> {
        let services = self.services.list();
        services.iter().filter(|s| is_load_balancer(s)).filter_map(|s| s.meta().map(ObjectKey::of)).collect()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.services, queue, self, |_, c| own_key(c)),
            on_address_changes(&self.nodes, queue, self),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.services, &self.nodes]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(svc) = self.services.get(key).filter(|s| is_load_balancer(s)) else { return Vec::new() };
        let status = ServiceStatus { load_balancer: Some(served_by(self.nodes.list().iter().map(|n| &**n))) };
        if svc.status.as_ref() == Some(&status) {
            return Vec::new();
        }
        let updated = Service { status: Some(status), ..(*svc).clone() };
        vec![Command::UpdateStatus { object: Object::Service(updated), note: None }]
    }
}

/// The status of the Ingresses Skiff serves.
pub struct IngressStatuses {
    pub ingresses: Store<Ingress>,
    pub classes: Store<IngressClass>,
    pub nodes: Store<Node>,
}

impl Reconciler for IngressStatuses {
    const NAME: &'static str = "ingress status";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.ingresses.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.ingresses, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.classes, queue, self, |me: &Self, _| me.every_key()),
            on_address_changes(&self.nodes, queue, self),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.ingresses, &self.classes, &self.nodes]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(ing) = self.ingresses.get(key) else { return Vec::new() };
        let classes = self.classes.list();
        if !skiff_proto::ingress_class::serves(&ing, classes.iter().map(|c| &**c)) {
            return Vec::new();
        }
        let status = IngressStatus { load_balancer: Some(served_by(self.nodes.list().iter().map(|n| &**n))) };
        if ing.status.as_ref() == Some(&status) {
            return Vec::new();
        }
        let updated = Ingress { status: Some(status), ..(*ing).clone() };
        vec![Command::UpdateStatus { object: Object::Ingress(updated), note: None }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(ip: &str, ready: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": ip},
            "status": {"conditions": [{"type": "Ready", "status": ready}],
                       "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": "n"}]}}))
        .unwrap()
    }

    #[test]
    fn a_load_balancer_lists_the_ready_nodes_addresses_once_each_in_order() {
        let nodes = [
            node("127.0.0.3", "True"),
            node("127.0.0.2", "True"),
            node("127.0.0.4", "Unknown"),
            node("127.0.0.2", "True"),
        ];
        let ips: Vec<String> = served_by(&nodes).ingress.into_iter().map(|i| i.ip).collect();
        assert_eq!(ips, ["127.0.0.2", "127.0.0.3"]);
    }

    #[test]
    fn only_a_change_of_ready_addresses_queues_the_balancers() {
        let up = Arc::new(node("127.0.0.2", "True"));
        let applied = |old: &Arc<Node>, new: Node| Change::Applied { old: Some(old.clone()), new: Arc::new(new) };
        let mut beat = (*up).clone();
        beat.status.as_mut().unwrap().conditions[0].last_heartbeat_time = "2026-12-05T00:00:00Z".into();
        assert!(!addresses_changed(&applied(&up, beat)), "a heartbeat changes nothing");
        assert!(addresses_changed(&applied(&up, node("127.0.0.2", "Unknown"))), "a node that stops being ready");
        assert!(addresses_changed(&Change::Deleted(up.clone())));
        assert!(!addresses_changed(&Change::Applied { old: None, new: Arc::new(node("127.0.0.5", "False")) }));
    }
}
