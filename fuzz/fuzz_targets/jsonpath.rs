//! kubectl's `-o jsonpath=` templates as `skiff get` renders them: the first line is the
//! template, the rest a JSON document (a fixed Pod-shaped one when it does not parse).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (template, doc) = text.split_once('\n').unwrap_or((text, ""));
    let doc: Value = serde_json::from_str(doc).unwrap_or_else(|_| {
        json!({
            "metadata": {"name": "web-0", "labels": {"app": "web"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Scheduled", "status": "False"}]},
            "items": [{"a": 1}, {"a": [1, 2, {"b": null}]}, "s", 2.5],
        })
    });
    let _ = skiff_client::jsonpath::render_template(template, &doc);
});
