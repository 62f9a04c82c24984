//! Label selectors on the proto types, evaluated as Kubernetes does.

use crate::api::LabelSelector;
use std::collections::BTreeMap;

impl LabelSelector {
    /// `matchLabels` and `matchExpressions` together (an empty selector matches everything; an
    /// unknown operator matches nothing).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let has = |v: &String| e.values.contains(v);
                match e.operator.as_str() {
                    "In" => labels.get(&e.key).is_some_and(has),
                    "NotIn" => labels.get(&e.key).is_none_or(|v| !has(v)),
                    "Exists" => labels.contains_key(&e.key),
                    "DoesNotExist" => !labels.contains_key(&e.key),
                    _ => false,
                }
            })
    }
}
