//! Label and field selectors as `?labelSelector=` / `--selector` take them: parsed, and when
//! they parse, matched against an object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::selector::{labels_of, FieldSelector, LabelSelector};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let obj = serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "tier": "front"}},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running"}
    });
    if let Ok(labels) = LabelSelector::parse(text) {
        let _ = labels.matches(&labels_of(&obj));
    }
    if let Ok(fields) = FieldSelector::parse(text) {
        let _ = fields.matches(&obj);
    }
});
