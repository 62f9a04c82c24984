//! What the controller that writes EndpointSlices and the service proxy that reads them agree
//! on, on the proto type.

use crate::api::EndpointSlice;

/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

impl EndpointSlice {
    /// The namespace and name of the Service it belongs to (its `kubernetes.io/service-name`).
    pub fn service(&self) -> Option<(&str, &str)> {
        let meta = self.metadata.as_ref()?;
        Some((meta.namespace.as_str(), meta.labels.get(SERVICE_NAME)?.as_str()))
    }
}

/// 64-bit FNV-1a of `text`: short names that stay the same from run to run (iptables chains,
/// slices) for longer keys.
pub fn fnv64(text: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(text.as_bytes());
    h.finish()
}
