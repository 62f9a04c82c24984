//! What every component asks of a pod, on the proto type.

use crate::api::Pod;

impl Pod {
    /// Its Ready condition is True.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
    }
}
