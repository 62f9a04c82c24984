//! The PersistentVolume binder: a pending PersistentVolumeClaim binds to the smallest available
//! PersistentVolume that satisfies it (storageClassName, access modes, capacity) — or to the one
//! it names in `volumeName` — and both record the binding (`pv.spec.claimRef`,
//! `pvc.spec.volumeName`, phases Bound). A claim with no match stays Pending until one appears;
//! a volume whose claim is gone becomes Released.
//!
//! `plan` is pure: claims and volumes in, the objects to write out.

use serde_json::{json, Value};
use skiff_proto::quantity::parse_quantity;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Volumes with a new claimRef (spec) to write.
    pub volumes: Vec<Value>,
    /// Claims with a new volumeName (spec) to write.
    pub claims: Vec<Value>,
    /// Volume statuses to set: (volume name, phase).
    pub volume_phases: Vec<(String, String)>,
    /// Claim statuses to set: (namespace, name, volume) → Bound.
    pub bound_claims: Vec<(String, String, String)>,
}

fn modes(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|m| m.as_str().map(String::from)).collect()
}

fn fits(claim: &Value, pv: &Value) -> bool {
    let class = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let want_class = class(&claim["spec"]["storageClassName"]);
    let want_modes = modes(&claim["spec"]["accessModes"]);
    let have_modes = modes(&pv["spec"]["accessModes"]);
    let want = claim["spec"]["resources"]["requests"]["storage"].as_str().and_then(parse_quantity).unwrap_or(0);
    let have = pv["spec"]["capacity"]["storage"].as_str().and_then(parse_quantity).unwrap_or(0);
    class(&pv["spec"]["storageClassName"]) == want_class
        && want_modes.iter().all(|m| have_modes.contains(m))
        && have >= want
}

fn claim_ref(claim: &Value) -> Value {
    json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": claim["metadata"]["namespace"],
           "name": claim["metadata"]["name"], "uid": claim["metadata"]["uid"]})
}

pub fn plan(claims: &[Value], volumes: &[Value]) -> Plan {
    let mut p = Plan::default();
    let mut taken: Vec<String> = Vec::new();
    let refers = |pv: &Value, c: &Value| {
        pv["spec"]["claimRef"]["name"] == c["metadata"]["name"]
            && pv["spec"]["claimRef"]["namespace"] == c["metadata"]["namespace"]
    };
    for c in claims.iter().filter(|c| c["metadata"]["deletionTimestamp"].is_null()) {
        let ns = c["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = c["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let named = c["spec"]["volumeName"].as_str().filter(|v| !v.is_empty());
        let pv = match named {
            Some(v) => volumes.iter().find(|pv| pv["metadata"]["name"] == v),
            None => {
                // Already claimed for this claim (a half-done binding), else the smallest fit.
                volumes.iter().find(|pv| refers(pv, c)).or_else(|| {
                    let mut free: Vec<&Value> = volumes
                        .iter()
                        .filter(|pv| {
                            pv["spec"]["claimRef"].is_null()
                                && !taken.contains(&pv["metadata"]["name"].as_str().unwrap_or_default().to_string())
                        })
                        .filter(|pv| fits(c, pv))
                        .collect();
                    free.sort_by_key(|pv| {
                        pv["spec"]["capacity"]["storage"].as_str().and_then(parse_quantity).unwrap_or(0)
                    });
                    free.first().copied()
                })
            }
        };
        let Some(pv) = pv else { continue };
        let pv_name = pv["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if !pv["spec"]["claimRef"].is_null() && !refers(pv, c) {
            continue; // named a volume bound to another claim: stays Pending
        }
        taken.push(pv_name.clone());
        if pv["spec"]["claimRef"].is_null() {
            let mut v = pv.clone();
            v["spec"]["claimRef"] = claim_ref(c);
            p.volumes.push(v);
        }
        if pv["status"]["phase"] != "Bound" {
            p.volume_phases.push((pv_name.clone(), "Bound".into()));
        }
        if named.is_none() {
            let mut claim = c.clone();
            claim["spec"]["volumeName"] = json!(pv_name);
            p.claims.push(claim);
        }
        if c["status"]["phase"] != "Bound" {
            p.bound_claims.push((ns, name, pv_name));
        }
    }
    for pv in volumes {
        let bound_to_gone = !pv["spec"]["claimRef"].is_null() && !claims.iter().any(|c| refers(pv, c));
        if bound_to_gone && pv["status"]["phase"] != "Released" {
            p.volume_phases.push((pv["metadata"]["name"].as_str().unwrap_or_default().to_string(), "Released".into()));
        } else if pv["spec"]["claimRef"].is_null() && pv["status"]["phase"] != "Available" {
            p.volume_phases.push((pv["metadata"]["name"].as_str().unwrap_or_default().to_string(), "Available".into()));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, size: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"]}, "status": {"phase": "Available"}})
    }

    fn pvc(name: &str, size: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid")},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}})
    }

    #[test]
    fn a_claim_binds_to_the_smallest_volume_that_fits() {
        let p = plan(&[pvc("c", "2Gi")], &[pv("big", "10Gi"), pv("small", "1Gi"), pv("right", "5Gi")]);
        assert_eq!(p.claims[0]["spec"]["volumeName"], "right");
        assert_eq!(p.volumes[0]["spec"]["claimRef"]["name"], "c");
        assert_eq!(p.bound_claims, [("default".into(), "c".into(), "right".into())]);
    }

    #[test]
    fn claims_without_a_match_wait_and_two_claims_never_share_a_volume() {
        let p = plan(&[pvc("a", "1Gi"), pvc("b", "1Gi")], &[pv("only", "1Gi")]);
        assert_eq!(p.claims.len(), 1);
        let p = plan(&[pvc("huge", "100Gi")], &[pv("only", "1Gi")]);
        assert!(p.claims.is_empty() && p.bound_claims.is_empty());
    }

    #[test]
    fn a_volume_whose_claim_is_gone_is_released() {
        let mut v = pv("v", "1Gi");
        v["spec"]["claimRef"] = json!({"namespace": "default", "name": "gone"});
        v["status"]["phase"] = json!("Bound");
        assert_eq!(plan(&[], &[v]).volume_phases, [("v".to_string(), "Released".to_string())]);
    }
}
