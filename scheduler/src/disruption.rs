//! The disruption controller: keeps each PodDisruptionBudget's status — how many of its pods
//! are healthy, how many must be, how many may be evicted now — as Kubernetes' does. The
//! eviction subresource spends `disruptionsAllowed` and records the pod in `disruptedPods`;
//! this controller drops those entries once the pod is going or two minutes have passed.
//! Keyed by budget: a budget's own changes, its pods' changes, and its pods' controllers'
//! scale changes queue it.

use crate::controller::{self, before_and_after, Cache, Command, Object, Reconciler};
use crate::deployment::resolve;
use crate::objects::{controller_ref, deleting, ready};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{
    Condition, Deployment, Pod, PodDisruptionBudget, PodDisruptionBudgetStatus, ReplicaSet, ReplicationController,
    StatefulSet,
};
use skiff_proto::serde_util::IntOrString;
use skiff_proto::time::{now_secs, parse_rfc3339, rfc3339};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// How long an eviction's entry in `disruptedPods` holds a pod out of the healthy count when
/// the pod does not go (Kubernetes' `DeletionTimeout`).
pub const DELETION_TIMEOUT_SECS: i64 = 120;

/// The scale of a pod's controller: its uid (so each controller counts once) and replicas.
type Scale = (String, i64);

pub struct Disruption {
    pub budgets: Store<PodDisruptionBudget>,
    pub pods: Store<Pod>,
    pub deployments: Store<Deployment>,
    pub replica_sets: Store<ReplicaSet>,
    pub replication_controllers: Store<ReplicationController>,
    pub stateful_sets: Store<StatefulSet>,
}

impl Disruption {
    /// The replicas of the controller behind `pod` (a ReplicaSet's Deployment when it has one),
    /// `Ok(None)` for a pod with no controller, an error for a controller with no scale.
    fn scale_of(&self, pod: &Pod) -> Result<Option<Scale>, String> {
        let Some(meta) = pod.metadata.as_ref() else { return Ok(None) };
        let Some(owner) = controller_ref(meta) else { return Ok(None) };
        let key = ObjectKey::new(&meta.namespace, &owner.name);
        let of = |uid: &str, replicas: Option<i32>| Some((uid.to_string(), replicas.unwrap_or(1) as i64));
        let found = match owner.kind.as_str() {
            "ReplicaSet" => self.replica_sets.get(&key).and_then(|rs| {
                let rs_meta = rs.metadata.as_ref()?;
                match controller_ref(rs_meta).filter(|o| o.kind == "Deployment") {
                    Some(d) => self
                        .deployments
                        .get(&ObjectKey::new(&meta.namespace, &d.name))
                        .and_then(|d| of(&d.metadata.as_ref()?.uid, d.spec.as_ref()?.replicas)),
                    None => of(&rs_meta.uid, rs.spec.as_ref()?.replicas),
                }
            }),
            "ReplicationController" => self
                .replication_controllers
                .get(&key)
                .and_then(|rc| of(&rc.metadata.as_ref()?.uid, rc.spec.as_ref()?.replicas)),
            "StatefulSet" => {
                self.stateful_sets.get(&key).and_then(|s| of(&s.metadata.as_ref()?.uid, s.spec.as_ref()?.replicas))
            }
            "Deployment" => {
                self.deployments.get(&key).and_then(|d| of(&d.metadata.as_ref()?.uid, d.spec.as_ref()?.replicas))
            }
            _ => None,
        };
        found.map(Some).ok_or_else(|| format!("found no controllers for pod {:?}", meta.name))
    }

    /// The pods `budget` selects (none without a selector).
    fn pods_of(&self, budget: &PodDisruptionBudget) -> Vec<Arc<Pod>> {
        let Some(selector) = budget.spec.as_ref().and_then(|s| s.selector.as_ref()) else { return Vec::new() };
        let ns = budget.metadata.as_ref().map_or("", |m| m.namespace.as_str());
        self.pods
            .list_namespace(ns)
            .into_iter()
            .filter(|p| p.metadata.as_ref().is_some_and(|m| selector.matches(&m.labels)))
            .collect()
    }

    /// The budgets in `ns` that select a pod with `labels`.
    fn budgets_selecting(&self, ns: &str, labels: &BTreeMap<String, String>) -> Vec<ObjectKey> {
        self.budgets
            .list_namespace(ns)
            .into_iter()
            .filter(|b| b.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| s.matches(labels)))
            .filter_map(|b| b.metadata.as_ref().map(ObjectKey::of))
            .collect()
    }

    /// Every budget in the namespace of a changed object (before and after).
    fn budgets_beside<K: Resource>(&self, change: &Change<K>) -> Vec<ObjectKey> {
        let mut namespaces: Vec<&str> =
            before_and_after(change).into_iter().filter_map(|o| Some(o.meta()?.namespace.as_str())).collect();
        namespaces.dedup();
        let budgets = namespaces.into_iter().flat_map(|ns| self.budgets.list_namespace(ns));
        budgets.filter_map(|b| b.metadata.as_ref().map(ObjectKey::of)).collect()
    }
}

/// How many pods the budget expects and how many of them must be healthy (Kubernetes'
/// `getExpectedPodCount`): an int `minAvailable` counts the pods; a percentage, or any
/// `maxUnavailable`, counts the replicas their controllers want.
fn expected_and_desired(
    budget: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
    scale_of: &dyn Fn(&Pod) -> Result<Option<Scale>, String>,
) -> Result<(i64, i64), String> {
    let spec = budget.spec.clone().unwrap_or_default();
    let scale = || -> Result<i64, String> {
        let mut controllers = HashMap::new();
        for pod in pods {
            if let Some((uid, replicas)) = scale_of(pod)? {
                controllers.insert(uid, replicas);
            }
        }
        Ok(controllers.values().sum())
    };
    Ok(match (IntOrString::from_value(&spec.max_unavailable), IntOrString::from_value(&spec.min_available)) {
        (Some(max), _) => {
            let expected = scale()?;
            (expected, (expected - resolve(Some(max), "0", expected, true)).max(0))
        }
        (None, Some(IntOrString::Int(n))) => (pods.len() as i64, n),
        (None, Some(min)) => {
            let expected = scale()?;
            (expected, resolve(Some(min), "0", expected, true))
        }
        (None, None) => (0, 0),
    })
}

/// The budget's status at `now` over its pods.
pub fn status_of(
    budget: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
    scale_of: &dyn Fn(&Pod) -> Result<Option<Scale>, String>,
    now: i64,
) -> PodDisruptionBudgetStatus {
    let old = budget.status.clone().unwrap_or_default();
    let generation = budget.metadata.as_ref().map_or(0, |m| m.generation);
    // Evictions granted lately, for pods still here and not yet going.
    let disrupted: BTreeMap<String, String> = pods
        .iter()
        .filter_map(|p| p.metadata.as_ref())
        .filter(|m| !deleting(m))
        .filter_map(|m| Some((m.name.clone(), old.disrupted_pods.get(&m.name)?.clone())))
        .filter(|(_, at)| parse_rfc3339(at).is_some_and(|t| t + DELETION_TIMEOUT_SECS > now))
        .collect();
    let healthy = pods
        .iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| !deleting(m) && !disrupted.contains_key(&m.name)))
        .filter(|p| ready(p))
        .count() as i64;
    let (expected, desired, allowed, failure) = match expected_and_desired(budget, pods, scale_of) {
        Ok((expected, desired)) => {
            let allowed = if expected <= 0 { 0 } else { (healthy - desired).max(0) };
            (expected, desired, allowed, None)
        }
        // As Kubernetes' fail-safe: nothing may be evicted while the budget cannot be computed.
        Err(why) => (0, 0, 0, Some(why)),
    };
    let (status, reason, message) = match (&failure, allowed) {
        (Some(why), _) => ("False", "SyncFailed", why.clone()),
        (None, 0) => ("False", "InsufficientPods", String::new()),
        (None, _) => ("True", "SufficientPods", String::new()),
    };
    let previous = old.conditions.iter().find(|c| c.r#type == "DisruptionAllowed");
    let since = match previous {
        Some(c) if c.status == status && c.reason == reason => c.last_transition_time.clone(),
        _ => rfc3339(now),
    };
    PodDisruptionBudgetStatus {
        observed_generation: generation,
        disrupted_pods: disrupted,
        disruptions_allowed: allowed as i32,
        current_healthy: healthy as i32,
        desired_healthy: desired as i32,
        expected_pods: expected as i32,
        conditions: vec![Condition {
            r#type: "DisruptionAllowed".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: generation,
            ..Default::default()
        }],
    }
}

impl Reconciler for Disruption {
    const NAME: &'static str = "disruption controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.budgets.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.budgets, queue, self, |_, c| controller::own_key(c)),
            controller::on_changes(&self.pods, queue, self, |d, c: &Change<Pod>| {
                let mut keys: Vec<ObjectKey> = before_and_after(c)
                    .into_iter()
                    .filter_map(|p| p.metadata.as_ref())
                    .flat_map(|m| d.budgets_selecting(&m.namespace, &m.labels))
                    .collect();
                keys.sort();
                keys.dedup();
                keys
            }),
            // A controller's replicas are what percentages and maxUnavailable count against.
            controller::on_changes(&self.deployments, queue, self, Disruption::budgets_beside),
            controller::on_changes(&self.replica_sets, queue, self, Disruption::budgets_beside),
            controller::on_changes(&self.replication_controllers, queue, self, Disruption::budgets_beside),
            controller::on_changes(&self.stateful_sets, queue, self, Disruption::budgets_beside),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![
            &self.budgets,
            &self.pods,
            &self.deployments,
            &self.replica_sets,
            &self.replication_controllers,
            &self.stateful_sets,
        ]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(budget) = self.budgets.get(key) else { return Vec::new() };
        let pods = self.pods_of(&budget);
        let status = status_of(&budget, &pods, &|p| self.scale_of(p), now_secs());
        if budget.status.as_ref() == Some(&status) {
            return Vec::new();
        }
        let mut updated = (*budget).clone();
        updated.status = Some(status);
        vec![Command::UpdateStatus { object: Object::PodDisruptionBudget(updated), note: None }]
    }

    /// Back when the oldest recorded eviction expires, to count its pod again.
    fn requeue_after(&self, key: &ObjectKey) -> Option<Duration> {
        let budget = self.budgets.get(key)?;
        let oldest = budget.status.as_ref()?.disrupted_pods.values().filter_map(|t| parse_rfc3339(t)).min()?;
        Some(Duration::from_secs((oldest + DELETION_TIMEOUT_SECS - now_secs()).clamp(1, DELETION_TIMEOUT_SECS) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{ObjectMeta, PodDisruptionBudgetSpec, PodStatus};

    fn pod(name: &str, is_ready: bool, going: bool) -> Arc<Pod> {
        let ready = Condition {
            r#type: "Ready".into(),
            status: if is_ready { "True" } else { "False" }.into(),
            ..Default::default()
        };
        Arc::new(Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                deletion_timestamp: if going { rfc3339(1) } else { String::new() },
                ..Default::default()
            }),
            status: Some(PodStatus { phase: "Running".into(), conditions: vec![ready], ..Default::default() }),
            ..Default::default()
        })
    }

    fn budget(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: Some(ObjectMeta { name: "web".into(), generation: 3, ..Default::default() }),
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min.and_then(|m| m.to_value()),
                max_unavailable: max.and_then(|m| m.to_value()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn one_controller(replicas: i64) -> impl Fn(&Pod) -> Result<Option<Scale>, String> {
        move |_| Ok(Some(("rs-uid".to_string(), replicas)))
    }

    #[test]
    fn budgets_count_healthy_pods_against_what_they_need_as_kubernetes_does() {
        let pods = vec![pod("a", true, false), pod("b", true, false), pod("c", false, false), pod("d", true, true)];
        // minAvailable 2 as an int: the pods are the expected count; a, b healthy (c unready, d going).
        let s = status_of(&budget(Some(IntOrString::Int(2)), None), &pods, &one_controller(5), 100);
        assert_eq!((s.expected_pods, s.desired_healthy, s.current_healthy, s.disruptions_allowed), (4, 2, 2, 0));
        assert_eq!(s.observed_generation, 3);
        assert_eq!((s.conditions[0].status.as_str(), s.conditions[0].reason.as_str()), ("False", "InsufficientPods"));
        // maxUnavailable 1 of a controller wanting 3: 2 must be healthy.
        let s = status_of(&budget(None, Some(IntOrString::Int(1))), &pods, &one_controller(3), 100);
        assert_eq!((s.expected_pods, s.desired_healthy, s.disruptions_allowed), (3, 2, 0));
        // minAvailable 50% of 3 rounds up to 2; of 2 replicas it is 1, so one may go.
        let half = budget(Some(IntOrString::Str("50%".into())), None);
        assert_eq!(status_of(&half, &pods, &one_controller(3), 100).desired_healthy, 2);
        let s = status_of(&half, &pods, &one_controller(2), 100);
        assert_eq!((s.desired_healthy, s.disruptions_allowed), (1, 1));
        assert_eq!((s.conditions[0].status.as_str(), s.conditions[0].reason.as_str()), ("True", "SufficientPods"));
        // A pod whose controller has no scale: nothing may be evicted.
        let s = status_of(&half, &pods, &|_| Err("found no controllers for pod \"a\"".into()), 100);
        assert_eq!((s.disruptions_allowed, s.conditions[0].reason.as_str()), (0, "SyncFailed"));
    }

    #[test]
    fn a_recent_eviction_holds_its_pod_out_of_the_healthy_count_for_two_minutes() {
        let pods = vec![pod("a", true, false), pod("b", true, false), pod("c", true, false)];
        let mut b = budget(Some(IntOrString::Int(1)), None);
        let evicted_at = 1_000;
        let disrupted = [("a", evicted_at), ("gone", evicted_at)];
        b.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: disrupted.iter().map(|(n, t)| (n.to_string(), rfc3339(*t))).collect(),
            ..Default::default()
        });
        let s = status_of(&b, &pods, &one_controller(3), evicted_at + 60);
        assert_eq!(s.disrupted_pods.keys().collect::<Vec<_>>(), ["a"], "the entry of a pod that is gone is dropped");
        assert_eq!((s.current_healthy, s.disruptions_allowed), (2, 1));
        let s = status_of(&b, &pods, &one_controller(3), evicted_at + DELETION_TIMEOUT_SECS);
        assert!(s.disrupted_pods.is_empty(), "expired");
        assert_eq!(s.current_healthy, 3);
    }
}
