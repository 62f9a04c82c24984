//! The eviction subresource: a pod is deleted only if its PodDisruptionBudget allows one more
//! disruption, as Kubernetes' eviction REST handler decides it.

use super::*;
use skiff_proto::api::{Pod, PodDisruptionBudget};

/// Kubernetes' limit on evictions the disruption controller has not yet seen through.
const MAX_DISRUPTED_PODS: usize = 2000;

/// Kubernetes' message for an eviction a budget refuses for now.
pub const VIOLATES_BUDGET: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// What a budget says to evicting `pod`.
#[derive(Debug)]
pub enum Verdict {
    /// Delete it; the budget is not touched (no budget, a pod that is not running, an
    /// unhealthy pod the policy lets go).
    Delete,
    /// Delete it after recording the disruption in the budget's status.
    Disrupt,
    Refuse(ApiError),
}

/// Kubernetes' rules: pods that are not running ignore budgets; more than one budget is an
/// error; a pod that is not Ready goes if the policy is AlwaysAllow or the budget is already met;
/// otherwise the budget must be current and allow a disruption.
pub fn verdict(pod: &Pod, budgets: &[&PodDisruptionBudget]) -> Verdict {
    let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
    let deleting = pod.metadata.as_ref().is_some_and(|m| !m.deletion_timestamp.is_empty());
    if matches!(phase, "Succeeded" | "Failed" | "Pending") || deleting {
        return Verdict::Delete;
    }
    let budget = match budgets {
        [] => return Verdict::Delete,
        [one] => one,
        _ => {
            return Verdict::Refuse(ApiError::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
                    .into(),
            ))
        }
    };
    let name = budget.metadata.as_ref().map_or("", |m| m.name.as_str());
    let generation = budget.metadata.as_ref().map_or(0, |m| m.generation);
    let status = budget.status.clone().unwrap_or_default();
    let policy = budget.spec.as_ref().map_or("", |s| s.unhealthy_pod_eviction_policy.as_str());
    if !pod.is_ready()
        && (policy == "AlwaysAllow" || (status.current_healthy >= status.desired_healthy && status.desired_healthy > 0))
    {
        return Verdict::Delete;
    }
    let refuse = |cause: String| {
        Verdict::Refuse(ApiError::TooManyRequests {
            message: VIOLATES_BUDGET.into(),
            causes: vec![("DisruptionBudget".into(), cause)],
        })
    };
    if status.observed_generation < generation {
        return refuse(format!("The disruption budget {name} is still being processed by the server."));
    }
    if status.disruptions_allowed < 0 {
        return Verdict::Refuse(ApiError::Forbidden("pdb disruptions allowed is negative".into()));
    }
    if status.disrupted_pods.len() > MAX_DISRUPTED_PODS {
        return Verdict::Refuse(ApiError::Forbidden(
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller".into(),
        ));
    }
    if status.disruptions_allowed == 0 {
        return refuse(format!(
            "The disruption budget {name} needs {} healthy pods and has {} currently",
            status.desired_healthy, status.current_healthy
        ));
    }
    Verdict::Disrupt
}

impl Registry {
    /// Evicts a pod: deletes it with `grace_period_seconds` if its disruption budget allows,
    /// first taking one disruption from the budget (a write guarded by the budget's
    /// resourceVersion, so two evictions never spend the same one).
    pub async fn evict(&self, ns: &str, name: &str, grace_period_seconds: Option<i64>) -> ApiResult<Value> {
        let pods = kinds::by_resource("pods")?;
        let budgets = kinds::by_resource("poddisruptionbudgets")?;
        let delete = DeleteOptions { grace_period_seconds, ..Default::default() };
        let mut attempt = 0;
        loop {
            let pod: Pod = typed(&self.get(pods, ns, name).await?)?;
            let labels = pod.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default();
            let all: Vec<PodDisruptionBudget> = self.list(budgets, ns, &ListOptions::default()).await?.typed()?;
            let matching: Vec<&PodDisruptionBudget> = all
                .iter()
                .filter(|b| b.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| s.matches(&labels)))
                .collect();
            match verdict(&pod, &matching) {
                Verdict::Delete => return self.delete(pods, ns, name, &delete).await,
                Verdict::Refuse(e) => return Err(e),
                Verdict::Disrupt => {}
            }
            let mut budget = matching[0].clone();
            let status = budget.status.get_or_insert_with(Default::default);
            status.disruptions_allowed -= 1;
            status.disrupted_pods.insert(name.to_string(), skiff_proto::time::now_rfc3339());
            let budget = serde_json::to_value(&budget).map_err(|e| ApiError::Internal(e.to_string()))?;
            match self.update(budgets, budget, UpdateScope::Status).await {
                Ok(_) => return self.delete(pods, ns, name, &delete).await,
                // Another eviction spent a disruption first: decide again on the new status.
                Err(ApiError::Conflict { .. }) if attempt < 5 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{Condition, ObjectMeta, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus, PodStatus};

    fn pod(phase: &str, is_ready: bool) -> Pod {
        let ready = Condition {
            r#type: "Ready".into(),
            status: if is_ready { "True" } else { "False" }.into(),
            ..Default::default()
        };
        Pod {
            status: Some(PodStatus { phase: phase.into(), conditions: vec![ready], ..Default::default() }),
            ..Default::default()
        }
    }

    fn budget(allowed: i32, healthy: i32, desired: i32, policy: &str) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: Some(ObjectMeta { name: "web".into(), generation: 1, ..Default::default() }),
            spec: Some(PodDisruptionBudgetSpec { unhealthy_pod_eviction_policy: policy.into(), ..Default::default() }),
            status: Some(PodDisruptionBudgetStatus {
                observed_generation: 1,
                disruptions_allowed: allowed,
                current_healthy: healthy,
                desired_healthy: desired,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn refusal(v: Verdict) -> String {
        match v {
            Verdict::Refuse(e) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_budget_decides_an_eviction_as_kubernetes_does() {
        let running = pod("Running", true);
        assert!(matches!(verdict(&running, &[]), Verdict::Delete), "no budget");
        assert!(matches!(verdict(&running, &[&budget(1, 3, 2, "")]), Verdict::Disrupt));
        assert_eq!(
            refusal(verdict(&running, &[&budget(0, 2, 2, "")])),
            "Cannot evict pod as it would violate the pod's disruption budget. \
             The disruption budget web needs 2 healthy pods and has 2 currently"
        );
        assert!(refusal(verdict(&running, &[&budget(1, 3, 2, ""), &budget(1, 3, 2, "")]))
            .contains("more than one PodDisruptionBudget"));
        let mut stale = budget(1, 3, 2, "");
        stale.metadata.as_mut().unwrap().generation = 2;
        assert!(refusal(verdict(&running, &[&stale])).contains("is still being processed by the server"));
        // Pods that are not running ignore the budget.
        for phase in ["Pending", "Succeeded", "Failed"] {
            assert!(matches!(verdict(&pod(phase, false), &[&budget(0, 2, 2, "")]), Verdict::Delete), "{phase}");
        }
        // An unready pod: goes when the budget is met (IfHealthyBudget) or always (AlwaysAllow).
        let unready = pod("Running", false);
        assert!(matches!(verdict(&unready, &[&budget(0, 2, 2, "IfHealthyBudget")]), Verdict::Delete));
        assert!(matches!(verdict(&unready, &[&budget(0, 1, 2, "IfHealthyBudget")]), Verdict::Refuse(_)));
        assert!(matches!(verdict(&unready, &[&budget(0, 1, 2, "AlwaysAllow")]), Verdict::Delete));
    }
}
