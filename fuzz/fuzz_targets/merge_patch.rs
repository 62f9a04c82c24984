//! A JSON merge patch (RFC 7386) applied to an object, as `Patch` and `skiff apply` do: the
//! input is two JSON documents, target and patch, one per line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (target, patch) = text.split_once('\n').unwrap_or((text, "{}"));
    let (Ok(mut target), Ok(patch)) =
        (serde_json::from_str::<serde_json::Value>(target), serde_json::from_str::<serde_json::Value>(patch))
    else {
        return;
    };
    skiff_api::object::merge_patch(&mut target, &patch);
    // Applying the same patch again changes nothing (merge patches are idempotent).
    let once = target.clone();
    skiff_api::object::merge_patch(&mut target, &patch);
    assert_eq!(once, target, "a merge patch applied twice changed the object again");
});
