//! The StatefulSet controller: pods `<name>-0 … <name>-(N-1)` with stable names, created in
//! order — each Running and Ready before the next (OrderedReady; Parallel creates them all) —
//! and removed from the highest ordinal down, one at a time; a PVC per ordinal from each
//! volumeClaimTemplate (`<template>-<name>-<ordinal>`), kept when pods go; a new template rolled
//! from the highest ordinal down, one pod at a time, once every pod is ready.
//!
//! [`plan`] is pure: the StatefulSet, its pods and its namespace's PVCs in; what to create
//! and delete and the status out. [`StatefulSets`] is the keyed controller: a StatefulSet's
//! key is queued by its own changes and its pods'.

use crate::controller::{self, own_key, Cache, Command, Note, Object, Reconciler};
use crate::deployment::template_hash;
use crate::objects::{controller_ref, deleting, phase};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{
    ObjectMeta, OwnerReference, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, StatefulSet,
    StatefulSetStatus, Volume,
};
use std::sync::Arc;

pub const REVISION_LABEL: &str = "controller-revision-hash";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create_claims: Vec<PersistentVolumeClaim>,
    pub create: Vec<Pod>,
    pub delete: Vec<String>,
    pub status: StatefulSetStatus,
}

/// Running and Ready: the next ordinal may come.
fn ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && crate::objects::ready(pod)
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.as_ref().is_some_and(deleting)
}

fn name_of(pod: &Pod) -> &str {
    pod.metadata.as_ref().map_or("", |m| m.name.as_str())
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata.as_ref()?.labels.get(REVISION_LABEL).map(String::as_str)
}

/// The ordinal of `<set>-<n>`.
fn ordinal(set: &str, pod: &Pod) -> Option<usize> {
    name_of(pod).strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// The claim a volumeClaimTemplate makes for ordinal `i`.
fn claim_name(template: &PersistentVolumeClaim, set: &str, i: usize) -> String {
    let name = template.metadata.as_ref().map(|m| m.name.as_str()).filter(|n| !n.is_empty()).unwrap_or("data");
    format!("{name}-{set}-{i}")
}

/// The hash of a StatefulSet's pod template (the pods' [`REVISION_LABEL`]).
pub fn revision(sts: &StatefulSet) -> String {
    let template = sts.spec.as_ref().and_then(|s| s.template.as_ref());
    template_hash(&template.map_or(serde_json::json!({}), |t| serde_json::to_value(t).unwrap_or_default()))
}

/// Pod `i` of the set, from its template.
fn pod_for(sts: &StatefulSet, meta: &ObjectMeta, revision: &str, i: usize) -> Pod {
    let spec = sts.spec.clone().unwrap_or_default();
    let template = spec.template.unwrap_or_default();
    let name = format!("{}-{i}", meta.name);
    let mut pod_meta = template.metadata.unwrap_or_default();
    pod_meta.name = name.clone();
    pod_meta.generate_name.clear();
    pod_meta.namespace = meta.namespace.clone();
    pod_meta.labels.insert(REVISION_LABEL.into(), revision.into());
    pod_meta.labels.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
    pod_meta.owner_references = vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }];
    let mut pod_spec = template.spec.unwrap_or_default();
    pod_spec.hostname = name;
    if !spec.service_name.is_empty() {
        pod_spec.subdomain = spec.service_name.clone();
    }
    for t in &spec.volume_claim_templates {
        pod_spec.volumes.push(Volume {
            name: t.metadata.as_ref().map(|m| m.name.clone()).filter(|n| !n.is_empty()).unwrap_or("data".into()),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(t, &meta.name, i),
                read_only: false,
            }),
            ..Default::default()
        });
    }
    Pod { api_version: "v1".into(), kind: "Pod".into(), metadata: Some(pod_meta), spec: Some(pod_spec), status: None }
}

/// What to do for `sts` given the pods it controls (others are left out) and the names of its
/// namespace's claims.
pub fn plan<'a>(sts: &StatefulSet, pods: impl IntoIterator<Item = &'a Pod>, claims: &[&str]) -> Plan {
    let meta = sts.metadata.clone().unwrap_or_default();
    let spec = sts.spec.clone().unwrap_or_default();
    let name = meta.name.as_str();
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    let revision = revision(sts);
    let parallel = spec.pod_management_policy == "Parallel";
    let mut p = Plan::default();
    let mut mine: Vec<(usize, &Pod)> = pods
        .into_iter()
        .filter(|p| p.metadata.as_ref().and_then(controller_ref).is_some_and(|r| r.uid == meta.uid))
        .filter_map(|p| ordinal(name, p).map(|o| (o, p)))
        .collect();
    mine.sort_by_key(|(o, _)| *o);
    let at = |i: usize| mine.iter().find(|(o, _)| *o == i).map(|(_, p)| *p);
    let any_terminating = mine.iter().any(|(_, p)| terminating(p));

    // Claims for every wanted ordinal, before its pod.
    let labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).map(|m| m.labels.clone()).unwrap_or_default();
    for i in 0..replicas {
        for t in &spec.volume_claim_templates {
            let claim = claim_name(t, name, i);
            if !claims.contains(&claim.as_str()) {
                p.create_claims.push(PersistentVolumeClaim {
                    api_version: "v1".into(),
                    kind: "PersistentVolumeClaim".into(),
                    metadata: Some(ObjectMeta {
                        name: claim,
                        namespace: meta.namespace.clone(),
                        labels: labels.clone(),
                        ..Default::default()
                    }),
                    spec: t.spec.clone(),
                    status: None,
                });
            }
        }
    }

    // Scale up, in order.
    for i in 0..replicas {
        match at(i) {
            Some(pod) if ready(pod) || parallel => continue,
            Some(_) => break,
            None => {
                if any_terminating && !parallel {
                    break;
                }
                p.create.push(pod_for(sts, &meta, &revision, i));
                if !parallel {
                    break;
                }
            }
        }
    }

    // Scale down, from the top, one at a time (all at once when Parallel).
    let extra: Vec<&Pod> = mine.iter().filter(|(o, p)| *o >= replicas && !terminating(p)).map(|(_, p)| *p).collect();
    if let Some(top) = extra.last() {
        if parallel {
            p.delete.extend(extra.iter().map(|p| name_of(p).to_string()));
        } else if !any_terminating {
            p.delete.push(name_of(top).to_string());
        }
    }

    // Rolling update, from the top, when every pod is there and ready.
    let all_ready = (0..replicas).all(|i| at(i).is_some_and(ready));
    let on_delete = spec.update_strategy.as_ref().is_some_and(|s| s.r#type == "OnDelete");
    if !on_delete && all_ready && !any_terminating && p.delete.is_empty() && p.create.is_empty() {
        if let Some(old) = (0..replicas).rev().filter_map(at).find(|p| revision_of(p) != Some(revision.as_str())) {
            p.delete.push(name_of(old).to_string());
        }
    }

    let live: Vec<&Pod> = mine.iter().map(|(_, p)| *p).filter(|p| !terminating(p)).collect();
    let updated = live.iter().filter(|p| revision_of(p) == Some(revision.as_str())).count() as i32;
    let ready_n = live.iter().filter(|p| ready(p)).count() as i32;
    let old = sts.status.clone().unwrap_or_default();
    p.status = StatefulSetStatus {
        observed_generation: meta.generation.max(1),
        replicas: live.len() as i32,
        ready_replicas: ready_n,
        current_replicas: live.len() as i32 - updated,
        updated_replicas: updated,
        available_replicas: ready_n,
        update_revision: format!("{name}-{revision}"),
        current_revision: old.current_revision,
        conditions: old.conditions,
    };
    p
}

/// The StatefulSet controller over the master's caches.
pub struct StatefulSets {
    pub sets: Store<StatefulSet>,
    pub pods: Store<Pod>,
    pub claims: Store<PersistentVolumeClaim>,
}

impl Reconciler for StatefulSets {
    const NAME: &'static str = "statefulset controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.sets.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.sets, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.pods, queue, self, |_, c: &Change<Pod>| {
                controller::controllers_of(c, "StatefulSet")
            }),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.sets, &self.pods, &self.claims]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(sts) = self.sets.get(key) else { return Vec::new() };
        let Some(meta) = sts.metadata.as_ref().filter(|m| !deleting(m)) else { return Vec::new() };
        let pods = self.pods.owned_by(&meta.uid);
        let claims = self.claims.list_namespace(&meta.namespace);
        let claim_names: Vec<&str> = claims.iter().filter_map(|c| c.meta()).map(|m| m.name.as_str()).collect();
        let plan = plan(&sts, pods.iter().map(|p| &**p), &claim_names);
        let note = |reason, message: String| Some(Note::normal("StatefulSet", "apps/v1", meta, reason, message));
        let set = &meta.name;
        // Claims, then pods (a pod's claims exist before it), then deletes: each its own
        // command, in order (the executor batches consecutive creates of one kind).
        let mut commands: Vec<Command> = plan
            .create_claims
            .into_iter()
            .map(|claim| Command::Create { object: Object::PersistentVolumeClaim(claim), note: None })
            .collect();
        commands.extend(plan.create.into_iter().map(|pod| Command::Create {
            object: Object::Pod(pod),
            note: note("SuccessfulCreate", format!("create Pod {{name}} in StatefulSet {set} successful")),
        }));
        commands.extend(plan.delete.into_iter().map(|name| Command::Delete {
            resource: Pod::RESOURCE,
            key: ObjectKey::new(&meta.namespace, &name),
            note: note("SuccessfulDelete", format!("delete Pod {{name}} in StatefulSet {set} successful")),
        }));
        if sts.status.as_ref() != Some(&plan.status) {
            let mut updated = (*sts).clone();
            updated.status = Some(plan.status);
            commands.push(Command::UpdateStatus { object: Object::StatefulSet(updated), note: None });
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sts(replicas: i64) -> StatefulSet {
        serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "default", "uid": "s-uid"},
               "spec": {"replicas": replicas, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
                        "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}}))
        .unwrap()
    }

    fn pod(s: &StatefulSet, i: usize, is_ready: bool) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": format!("db-{i}"), "labels": {"app": "db", REVISION_LABEL: revision(s)},
                            "ownerReferences": [{"uid": "s-uid", "controller": true}]},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}]}}))
        .unwrap()
    }

    #[test]
    fn pods_come_up_one_at_a_time_in_order_with_their_claims() {
        let s = sts(3);
        let p = plan(&s, &[], &[]);
        assert_eq!(p.create.len(), 1);
        assert_eq!(name_of(&p.create[0]), "db-0");
        let spec = p.create[0].spec.as_ref().unwrap();
        assert_eq!((spec.hostname.as_str(), spec.subdomain.as_str()), ("db-0", "db"));
        assert_eq!(spec.volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name, "data-db-0");
        assert_eq!(p.create_claims.len(), 3);
        assert_eq!(plan(&s, &[], &["data-db-0", "data-db-1"]).create_claims.len(), 1, "existing claims are kept");
        // db-0 not ready yet: nothing more.
        assert!(plan(&s, &[pod(&s, 0, false)], &[]).create.is_empty());
        let p = plan(&s, &[pod(&s, 0, true)], &[]);
        assert_eq!(name_of(&p.create[0]), "db-1");
    }

    #[test]
    fn scaling_down_removes_the_highest_ordinal_first_one_at_a_time() {
        let s = sts(1);
        let pods = [pod(&s, 0, true), pod(&s, 1, true), pod(&s, 2, true)];
        assert_eq!(plan(&s, &pods, &[]).delete, ["db-2"]);
    }

    #[test]
    fn a_new_template_replaces_pods_from_the_top() {
        let old = sts(2);
        let mut new = old.clone();
        new.spec.as_mut().unwrap().template.as_mut().unwrap().spec.as_mut().unwrap().containers[0].image = "y".into();
        let p = plan(&new, &[pod(&old, 0, true), pod(&old, 1, true)], &[]);
        assert_eq!(p.delete, ["db-1"]);
        // db-1 back with the new template but not ready: db-0 waits.
        let p = plan(&new, &[pod(&old, 0, true), pod(&new, 1, false)], &[]);
        assert!(p.delete.is_empty());
        assert_eq!((p.status.updated_replicas, p.status.current_replicas), (1, 1));
    }

    #[test]
    fn the_revision_is_the_hash_of_the_template_as_json() {
        // Pods made before the controller was typed carry this hash: it must not change.
        let s = sts(1);
        let template = serde_json::to_value(s.spec.as_ref().unwrap().template.as_ref().unwrap()).unwrap();
        assert_eq!(revision(&s), template_hash(&template));
    }
}
