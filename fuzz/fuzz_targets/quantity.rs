//! Resource quantities (`100m`, `1.5Gi`, `2e3`) as requests, limits and quotas carry them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_proto::quantity::{format_quantity, parse_quantity};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(milli) = parse_quantity(text) {
        for resource in ["cpu", "memory", "pods"] {
            let _ = format_quantity(milli, resource);
        }
    }
});
