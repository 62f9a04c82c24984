//! An object as a client sends it — JSON, or YAML as `skiff apply` reads it — decoded,
//! normalised through each kind's typed schema, defaulted and validated, as the registry
//! prepares a create. Bad input must come back as an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::kinds::KINDS;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed: Vec<serde_json::Value> =
        [serde_json::from_str(text).ok(), serde_yaml::from_str::<serde_json::Value>(text).ok()]
            .into_iter()
            .flatten()
            .collect();
    for value in parsed {
        for info in KINDS {
            let Some(Ok(mut obj)) = skiff_proto::api::normalize_json(info.kind, value.clone()) else { continue };
            skiff_api::defaults::apply(info, &mut obj);
            let _ = skiff_api::validation::validate(info, &obj);
        }
    }
});
