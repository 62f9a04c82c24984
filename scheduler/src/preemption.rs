//! Preemption, as Kubernetes' DefaultPreemption plugin decides it (without PodDisruptionBudgets
//! in the choice): a pod that fits nowhere, with `preemptionPolicy` other than `Never`, may
//! have lower-priority pods removed from one node to make room. On each node every pod of
//! lower priority is a candidate; if the pod fits with all of them gone, candidates are given
//! back from the highest priority down while it still fits; the rest are the victims. The node
//! chosen is the one whose victims' highest priority is lowest, then whose priorities sum
//! lowest, then with the fewest victims, then by name.

use crate::placement::fits;
use crate::snapshot::{NodeInfo, PlacedPod, Usage};
use skiff_proto::api::Pod;
use std::sync::Arc;

/// Where to make room, and whom to remove.
#[derive(Debug, Clone, PartialEq)]
pub struct Preemption {
    pub node: String,
    pub victims: Vec<Arc<PlacedPod>>,
}

pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Whether `pod` may preempt at all.
pub fn may_preempt(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) != Some("Never")
}

/// The victims on one node that let `pod` fit there (`None`: removing lower-priority pods
/// does not make it fit). `placed` are the usages of the pods counted on the node.
pub fn victims_on(pod: &Pod, node: &NodeInfo, placed: &[Usage]) -> Option<Vec<Arc<PlacedPod>>> {
    let mine = priority(pod);
    let mut candidates: Vec<&Usage> = placed.iter().filter(|u| u.pod.priority < mine && !u.pod.deleting).collect();
    if candidates.is_empty() {
        return None;
    }
    let mut room = node.clone();
    candidates.iter().for_each(|u| room.remove(u));
    if !fits(pod, &room) {
        return None;
    }
    // Highest priority first gets its place back, if the pod still fits.
    candidates.sort_by_key(|u| (std::cmp::Reverse(u.pod.priority), u.pod.name.clone()));
    let mut victims = Vec::new();
    for usage in candidates {
        room.add(usage);
        if !fits(pod, &room) {
            room.remove(usage);
            victims.push(usage.pod.clone());
        }
    }
    Some(victims)
}

/// The best node to preempt on, over `nodes` with each node's placed usages.
pub fn choose<'a>(pod: &Pod, nodes: impl IntoIterator<Item = (&'a NodeInfo, Vec<Usage>)>) -> Option<Preemption> {
    if !may_preempt(pod) {
        return None;
    }
    nodes
        .into_iter()
        .filter_map(|(node, placed)| {
            let victims = victims_on(pod, node, &placed)?;
            Some(Preemption { node: node.name().to_string(), victims })
        })
        .min_by_key(|p| {
            let top = p.victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
            let sum: i64 = p.victims.iter().map(|v| v.priority as i64).sum();
            (top, sum, p.victims.len(), p.node.clone())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{Container, Node, NodeStatus, ObjectMeta, PodSpec, ResourceRequirements};

    fn node(name: &str, cpu: &str) -> NodeInfo {
        let mut info = NodeInfo::of(Node {
            metadata: Some(ObjectMeta { name: name.into(), ..Default::default() }),
            status: Some(NodeStatus {
                allocatable: [("cpu", cpu), ("memory", "8Gi"), ("pods", "110")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                conditions: vec![skiff_proto::api::Condition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        info.requested = Default::default();
        info
    }

    fn pod(name: &str, cpu: &str, priority: i32) -> Pod {
        Pod {
            metadata: Some(ObjectMeta { name: name.into(), uid: format!("{name}-uid"), ..Default::default() }),
            spec: Some(PodSpec {
                priority: Some(priority),
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: [("cpu".to_string(), cpu.to_string())].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn placed(info: &mut NodeInfo, pods: &[Pod]) -> Vec<Usage> {
        pods.iter()
            .map(|p| {
                let u = Usage::of(p);
                info.add(&u);
                u
            })
            .collect()
    }

    fn names(p: &Preemption) -> Vec<&str> {
        p.victims.iter().map(|v| v.name.as_str()).collect()
    }

    #[test]
    fn the_fewest_lowest_priority_pods_make_room() {
        let high = pod("high", "1", 1000);
        let mut a = node("a", "2");
        let on_a = placed(&mut a, &[pod("low-1", "1", 10), pod("low-2", "1", 10)]);
        assert!(!fits(&high, &a));
        let p = choose(&high, [(&a, on_a.clone())]).expect("room by preemption");
        assert_eq!((p.node.as_str(), names(&p).len()), ("a", 1), "one low pod is enough: {p:?}");
        // Node b's victim has a lower priority than any on a: b is chosen.
        let mut b = node("b", "1");
        let on_b = placed(&mut b, &[pod("lowest", "1", 1)]);
        let p = choose(&high, [(&a, on_a.clone()), (&b, on_b)]).unwrap();
        assert_eq!((p.node.as_str(), names(&p)), ("b", vec!["lowest"]));
        // Pods of equal or higher priority are never victims; Never does not preempt.
        assert!(choose(&pod("peer", "1", 10), [(&a, on_a.clone())]).is_none());
        let mut polite = high.clone();
        polite.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert!(choose(&polite, [(&a, on_a)]).is_none());
    }

    #[test]
    fn pods_already_going_are_not_chosen_again() {
        let mut a = node("a", "1");
        let mut going = pod("going", "1", 1);
        going.metadata.as_mut().unwrap().deletion_timestamp = "2026-01-01T00:00:00Z".into();
        let on_a = placed(&mut a, &[going]);
        assert!(choose(&pod("high", "1", 1000), [(&a, on_a)]).is_none());
    }
}
