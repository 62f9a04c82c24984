//! The PersistentVolume binder: a pending PersistentVolumeClaim binds to the smallest available
//! PersistentVolume that satisfies it (storageClassName, access modes, capacity) — or to the one
//! it names in `volumeName` — and both record the binding (`pv.spec.claimRef`,
//! `pvc.spec.volumeName`, phases Bound). A claim with no match stays Pending until one appears;
//! a volume whose claim is gone becomes Released.
//!
//! [`plan`] is pure: claims and volumes in, the writes out. A binding takes several looks,
//! each from the caches the last one's writes changed: the volume records the claim first,
//! then the claim names the volume (so a claim is only ever bound to a volume that records
//! it), then the phases. [`VolumeBinder`] reconciles every claim and volume under one key,
//! queued by any change of either: two claims must never be given one volume.

use crate::controller::{self, Cache, Command, Object, Reconciler};
use crate::objects::deleting;
use skiff_client::informer::{ObjectKey, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeStatus,
};
use skiff_proto::quantity::parse_quantity;
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Volumes with a new claimRef (spec).
    pub volumes: Vec<PersistentVolume>,
    /// Claims with a new volumeName (spec).
    pub claims: Vec<PersistentVolumeClaim>,
    /// Volumes with a new phase (status).
    pub volume_statuses: Vec<PersistentVolume>,
    /// Claims now Bound (status).
    pub claim_statuses: Vec<PersistentVolumeClaim>,
}

fn size(quantities: &std::collections::BTreeMap<String, String>) -> i128 {
    quantities.get("storage").and_then(|q| parse_quantity(q)).unwrap_or(0)
}

fn fits(claim: &PersistentVolumeClaim, pv: &PersistentVolume) -> bool {
    let (want, have) = (claim.spec.clone().unwrap_or_default(), pv.spec.clone().unwrap_or_default());
    let want_size = want.resources.as_ref().map_or(0, |r| size(&r.requests));
    want.storage_class_name.unwrap_or_default() == have.storage_class_name
        && want.access_modes.iter().all(|m| have.access_modes.contains(m))
        && size(&have.capacity) >= want_size
}

fn name(pv: &PersistentVolume) -> &str {
    pv.metadata.as_ref().map_or("", |m| m.name.as_str())
}

fn claim_ref(pv: &PersistentVolume) -> Option<&ObjectReference> {
    pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
}

/// Whether `pv` records `claim`.
fn refers(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let meta = claim.metadata.clone().unwrap_or_default();
    claim_ref(pv).is_some_and(|r| r.name == meta.name && r.namespace == meta.namespace)
}

fn phase(pv: &PersistentVolume) -> &str {
    pv.status.as_ref().map_or("", |s| s.phase.as_str())
}

fn with_phase(pv: &PersistentVolume, phase: &str) -> PersistentVolume {
    PersistentVolume {
        status: Some(PersistentVolumeStatus { phase: phase.into(), ..Default::default() }),
        ..pv.clone()
    }
}

pub fn plan(claims: &[&PersistentVolumeClaim], volumes: &[&PersistentVolume]) -> Plan {
    let mut p = Plan::default();
    let mut taken: Vec<&str> = Vec::new();
    for &c in claims.iter().filter(|c| !c.metadata.as_ref().is_some_and(deleting)) {
        let meta = c.metadata.clone().unwrap_or_default();
        let named = c.spec.as_ref().map(|s| s.volume_name.as_str()).filter(|v| !v.is_empty());
        let pv = match named {
            Some(v) => volumes.iter().copied().find(|pv| name(pv) == v),
            None => {
                // Already claimed for this claim (a half-done binding), else the smallest fit.
                volumes.iter().copied().find(|pv| refers(pv, c)).or_else(|| {
                    let mut free: Vec<&PersistentVolume> = volumes
                        .iter()
                        .copied()
                        .filter(|pv| claim_ref(pv).is_none() && !taken.contains(&name(pv)) && fits(c, pv))
                        .collect();
                    free.sort_by_key(|pv| pv.spec.as_ref().map_or(0, |s| size(&s.capacity)));
                    free.first().copied()
                })
            }
        };
        let Some(pv) = pv else { continue };
        taken.push(name(pv));
        if claim_ref(pv).is_none() {
            let mut v = pv.clone();
            v.spec.get_or_insert_with(Default::default).claim_ref = Some(ObjectReference {
                kind: "PersistentVolumeClaim".into(),
                api_version: "v1".into(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
                uid: meta.uid.clone(),
                ..Default::default()
            });
            p.volumes.push(v);
            continue;
        }
        if !refers(pv, c) {
            continue; // named a volume bound to another claim: stays Pending
        }
        if phase(pv) != "Bound" {
            p.volume_statuses.push(with_phase(pv, "Bound"));
        }
        if named.is_none() {
            let mut claim = c.clone();
            claim.spec.get_or_insert_with(Default::default).volume_name = name(pv).into();
            p.claims.push(claim);
        } else if c.status.as_ref().is_none_or(|s| s.phase != "Bound") {
            let spec = pv.spec.clone().unwrap_or_default();
            let status = PersistentVolumeClaimStatus {
                phase: "Bound".into(),
                access_modes: spec.access_modes,
                capacity: spec.capacity,
            };
            p.claim_statuses.push(PersistentVolumeClaim { status: Some(status), ..c.clone() });
        }
    }
    for &pv in volumes.iter().filter(|pv| !taken.contains(&name(pv))) {
        let bound_to_gone = claim_ref(pv).is_some() && !claims.iter().any(|c| refers(pv, c));
        if bound_to_gone && phase(pv) != "Released" {
            p.volume_statuses.push(with_phase(pv, "Released"));
        } else if claim_ref(pv).is_none() && phase(pv) != "Available" {
            p.volume_statuses.push(with_phase(pv, "Available"));
        }
    }
    p
}

/// The binder over the master's caches, under one key ([`VolumeBinder::KEY`]).
pub struct VolumeBinder {
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
}

impl VolumeBinder {
    fn key() -> ObjectKey {
        ObjectKey::new("", "persistent-volume-binder")
    }
}

impl Reconciler for VolumeBinder {
    const NAME: &'static str = "volume binder";

    fn every_key(&self) -> Vec<ObjectKey> {
        vec![VolumeBinder::key()]
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.claims, queue, self, |_, _| vec![VolumeBinder::key()]),
            controller::on_changes(&self.volumes, queue, self, |_, _| vec![VolumeBinder::key()]),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.claims, &self.volumes]
    }

    fn reconcile(&self, _: &ObjectKey) -> Vec<Command> {
        let (claims, volumes) = (self.claims.list(), self.volumes.list());
        let claims: Vec<&PersistentVolumeClaim> = claims.iter().map(|c| &**c).collect();
        let volumes: Vec<&PersistentVolume> = volumes.iter().map(|v| &**v).collect();
        let plan = plan(&claims, &volumes);
        let update = |object| Command::Update { object, note: None };
        let status = |object| Command::UpdateStatus { object, note: None };
        (plan.volumes.into_iter().map(|v| update(Object::PersistentVolume(v))))
            .chain(plan.claims.into_iter().map(|c| update(Object::PersistentVolumeClaim(c))))
            .chain(plan.volume_statuses.into_iter().map(|v| status(Object::PersistentVolume(v))))
            .chain(plan.claim_statuses.into_iter().map(|c| status(Object::PersistentVolumeClaim(c))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(name: &str, size: &str) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"]}, "status": {"phase": "Available"}})).unwrap()
    }

    fn pvc(name: &str, size: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid")},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}))
        .unwrap()
    }

    /// Plans and applies the plan's writes until nothing changes; the final claims and volumes.
    fn settle(
        mut claims: Vec<PersistentVolumeClaim>,
        mut volumes: Vec<PersistentVolume>,
    ) -> (Vec<PersistentVolumeClaim>, Vec<PersistentVolume>) {
        for _ in 0..10 {
            let p = plan(&claims.iter().collect::<Vec<_>>(), &volumes.iter().collect::<Vec<_>>());
            if p == Plan::default() {
                return (claims, volumes);
            }
            for written in p.volumes.into_iter().chain(p.volume_statuses) {
                let at = volumes.iter().position(|v| name(v) == name(&written)).unwrap();
                volumes[at] = written;
            }
            for written in p.claims.into_iter().chain(p.claim_statuses) {
                let key = |c: &PersistentVolumeClaim| c.metadata.as_ref().unwrap().name.clone();
                let at = claims.iter().position(|c| key(c) == key(&written)).unwrap();
                claims[at] = written;
            }
        }
        panic!("the binder does not settle");
    }

    #[test]
    fn a_claim_binds_to_the_smallest_volume_that_fits_volume_first() {
        let (c, big, small, right) = (pvc("c", "2Gi"), pv("big", "10Gi"), pv("small", "1Gi"), pv("right", "5Gi"));
        let p = plan(&[&c], &[&big, &small, &right]);
        assert_eq!(p.volumes.len(), 1);
        assert_eq!(claim_ref(&p.volumes[0]).unwrap().name, "c");
        assert!(p.claims.is_empty(), "the claim names the volume once the volume records it");
        let (claims, volumes) = settle(vec![c], vec![big, small, right]);
        assert_eq!(claims[0].spec.as_ref().unwrap().volume_name, "right");
        assert_eq!(claims[0].status.as_ref().unwrap().phase, "Bound");
        assert_eq!(claims[0].status.as_ref().unwrap().capacity["storage"], "5Gi");
        let phases: Vec<&str> = volumes.iter().map(phase).collect();
        assert_eq!(phases, ["Available", "Available", "Bound"]);
    }

    #[test]
    fn claims_without_a_match_wait_and_two_claims_never_share_a_volume() {
        let (claims, volumes) = settle(vec![pvc("a", "1Gi"), pvc("b", "1Gi")], vec![pv("only", "1Gi")]);
        let bound: Vec<&str> =
            claims.iter().map(|c| c.spec.as_ref().unwrap().volume_name.as_str()).filter(|v| !v.is_empty()).collect();
        assert_eq!(bound, ["only"]);
        assert_eq!(phase(&volumes[0]), "Bound");
        let p = plan(&[&pvc("huge", "100Gi")], &[&pv("only", "1Gi")]);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_volume_whose_claim_is_gone_is_released() {
        let mut v = pv("v", "1Gi");
        v.spec.as_mut().unwrap().claim_ref =
            Some(ObjectReference { namespace: "default".into(), name: "gone".into(), ..Default::default() });
        v.status.as_mut().unwrap().phase = "Bound".into();
        let p = plan(&[], &[&v]);
        assert_eq!(p.volume_statuses.iter().map(phase).collect::<Vec<_>>(), ["Released"]);
    }
}
