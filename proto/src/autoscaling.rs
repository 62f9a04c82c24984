//! The autoscaling/v2 behaviour Kubernetes applies where an autoscaler names none: the API
//! fills it into a given `behavior`, the controller uses it when there is none.

use crate::api::{HpaScalingPolicy, HpaScalingRules};

fn policy(kind: &str, value: i32) -> HpaScalingPolicy {
    HpaScalingPolicy { r#type: kind.into(), value, period_seconds: 15 }
}

impl HpaScalingRules {
    /// Up at once (no window), by the larger of 4 pods or 100% per 15 s.
    pub fn default_scale_up() -> HpaScalingRules {
        HpaScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: "Max".into(),
            policies: vec![policy("Pods", 4), policy("Percent", 100)],
            ..Default::default()
        }
    }

    /// Down by up to 100% per 15 s; the window is left to the controller (5 minutes).
    pub fn default_scale_down() -> HpaScalingRules {
        HpaScalingRules { select_policy: "Max".into(), policies: vec![policy("Percent", 100)], ..Default::default() }
    }
}
