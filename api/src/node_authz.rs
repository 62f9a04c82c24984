//! The read side of Kubernetes' Node authorizer: a node daemon reads a Secret, ConfigMap,
//! PersistentVolumeClaim or PersistentVolume only when a pod bound to it uses that object,
//! and may not list or watch those kinds at all. (Its write side, node restriction, is in
//! [`crate::auth::node_restriction`].)
//!
//! Skiff's node daemons also run the cluster's ingress controller, so a node may read a
//! Secret that an Ingress names for TLS in the Secret's namespace, as an ingress controller's
//! own account could in Kubernetes.

use skiff_proto::api::{Ingress, Pod};
use std::collections::BTreeSet;

/// Kinds whose reads by nodes are limited to what their pods use.
pub const GUARDED: &[&str] = &["secrets", "configmaps", "persistentvolumeclaims", "persistentvolumes"];

/// What the pods bound to one node use, as (namespace, name) per kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct References {
    pub secrets: BTreeSet<(String, String)>,
    pub configmaps: BTreeSet<(String, String)>,
    pub claims: BTreeSet<(String, String)>,
}

impl References {
    /// The references of `pods` (the pods bound to the node).
    pub fn of<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> References {
        let mut r = References::default();
        for pod in pods {
            let ns = pod.metadata.as_ref().map(|m| m.namespace.clone()).unwrap_or_default();
            let Some(spec) = &pod.spec else { continue };
            let at = |name: &str| (ns.clone(), name.to_string());
            for v in &spec.volumes {
                if let Some(s) = &v.secret {
                    r.secrets.insert(at(&s.secret_name));
                }
                if let Some(c) = &v.config_map {
                    r.configmaps.insert(at(&c.name));
                }
                if let Some(c) = &v.persistent_volume_claim {
                    r.claims.insert(at(&c.claim_name));
                }
                for source in v.projected.iter().flat_map(|p| &p.sources) {
                    if let Some(s) = &source.secret {
                        r.secrets.insert(at(&s.name));
                    }
                    if let Some(c) = &source.config_map {
                        r.configmaps.insert(at(&c.name));
                    }
                }
            }
            // The registry credentials its images are pulled with.
            for s in &spec.image_pull_secrets {
                r.secrets.insert(at(&s.name));
            }
            for env in spec.init_containers.iter().chain(&spec.containers).flat_map(|c| &c.env) {
                let Some(from) = &env.value_from else { continue };
                if let Some(s) = &from.secret_key_ref {
                    r.secrets.insert(at(&s.name));
                }
                if let Some(c) = &from.config_map_key_ref {
                    r.configmaps.insert(at(&c.name));
                }
            }
            for from in spec.init_containers.iter().chain(&spec.containers).flat_map(|c| &c.env_from) {
                if let Some(s) = &from.secret_ref {
                    r.secrets.insert(at(&s.name));
                }
                if let Some(c) = &from.config_map_ref {
                    r.configmaps.insert(at(&c.name));
                }
            }
        }
        r
    }
}

/// Whether some Ingress in `namespace` names Secret `name` for TLS.
pub fn ingress_tls_uses<'a>(ingresses: impl IntoIterator<Item = &'a Ingress>, namespace: &str, name: &str) -> bool {
    ingresses.into_iter().any(|i| {
        i.metadata.as_ref().is_some_and(|m| m.namespace == namespace)
            && i.spec.iter().flat_map(|s| &s.tls).any(|t| t.secret_name == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_come_from_volumes_and_environment_in_the_pods_namespace() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "volumes": [{"name": "a", "secret": {"secretName": "tls"}}, {"name": "b", "configMap": {"name": "conf"}},
                            {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                            {"name": "d", "projected": {"sources": [{"secret": {"name": "proj-pw"}}, {"configMap": {"name": "proj-conf"}}]}}],
                "imagePullSecrets": [{"name": "regcred"}],
                "initContainers": [{"name": "i", "image": "x", "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "init-pw", "key": "k"}}}]}],
                "containers": [{"name": "c", "image": "x", "env": [{"name": "F", "valueFrom": {"configMapKeyRef": {"name": "env-conf", "key": "k"}}}],
                                "envFrom": [{"configMapRef": {"name": "all-conf"}}, {"prefix": "DB_", "secretRef": {"name": "db"}}]}]
            }
        }))
        .unwrap();
        let r = References::of(&[pod]);
        let set = |names: &[&str]| names.iter().map(|n| ("shop".to_string(), n.to_string())).collect::<BTreeSet<_>>();
        assert_eq!(r.secrets, set(&["db", "init-pw", "proj-pw", "regcred", "tls"]));
        assert_eq!(r.configmaps, set(&["all-conf", "conf", "env-conf", "proj-conf"]));
        assert_eq!(r.claims, set(&["data"]));
        let ingress: Ingress = serde_json::from_value(json!({"metadata": {"name": "i", "namespace": "shop"},
            "spec": {"tls": [{"hosts": ["a.test"], "secretName": "site-cert"}]}}))
        .unwrap();
        assert!(ingress_tls_uses(std::slice::from_ref(&ingress), "shop", "site-cert"));
        assert!(!ingress_tls_uses(std::slice::from_ref(&ingress), "other", "site-cert"), "namespaced");
    }
}
