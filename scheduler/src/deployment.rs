//! The Deployment controller: one ReplicaSet per pod-template revision, rolled between with
//! RollingUpdate (maxSurge / maxUnavailable, readiness-gated) or Recreate.
//!
//! `plan` is pure (DESIGN.md rule 6): from the Deployment, its ReplicaSets and their pods it
//! returns the ReplicaSet to create, the replica counts to set, the old ReplicaSets to delete
//! past `revisionHistoryLimit`, and the status. Each reconcile takes one step; the next sees
//! the pods that step made, so readiness paces the rollout.
//!
//! As Kubernetes: ReplicaSets are named `<deployment>-<pod-template-hash>` and carry the hash
//! as a label (also in their selector), revisions live in the
//! `deployment.kubernetes.io/revision` annotation, and rolling back means putting an old
//! template back — its ReplicaSet becomes the newest revision again.

use crate::controller::{self, before_and_after, own_key, Cache, Command, Note, Object, Reconciler};
use crate::objects::{controller_ref, ready, selector_matches, terminating};
use serde_json::{json, Value};
use skiff_client::informer::{controller_of, Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{
    Condition, Deployment, DeploymentStatus, ObjectMeta, OwnerReference, Pod, PodTemplateSpec, ReplicaSet,
    ReplicaSetSpec,
};
use skiff_proto::serde_util::IntOrString;
use std::sync::Arc;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
pub const HASH_LABEL: &str = "pod-template-hash";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// A ReplicaSet to create for the current template.
    pub create: Option<ReplicaSet>,
    /// ReplicaSets to update (spec.replicas and annotations changed), as full objects.
    pub update: Vec<ReplicaSet>,
    /// Old ReplicaSets (names) beyond revisionHistoryLimit, scaled to zero and without pods.
    pub delete: Vec<String>,
    /// The revision the Deployment's own annotation should carry.
    pub revision: String,
    pub status: DeploymentStatus,
}

/// Kubernetes' pod-template hash: FNV-1a (32 bit) of the template, in its safe alphabet.
pub fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in template.to_string().bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = h as u64;
    let mut out = String::new();
    while n > 0 || out.is_empty() {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
    }
    out
}

/// [`template_hash`] of a typed template, as its JSON (what pods made before carry).
pub fn hash_of_template(template: Option<&PodTemplateSpec>) -> String {
    template_hash(&template.map_or(json!({}), |t| serde_json::to_value(t).unwrap_or_default()))
}

/// `maxSurge` / `maxUnavailable`: an int, or a percentage of `desired` (surge rounds up,
/// unavailable rounds down, as Kubernetes does).
pub fn resolve(v: Option<IntOrString>, default: &str, desired: i64, round_up: bool) -> i64 {
    let s = match v {
        Some(IntOrString::Int(n)) => return n.max(0),
        Some(IntOrString::Str(s)) => s,
        None => default.to_string(),
    };
    match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(p) if round_up => (desired * p + 99) / 100,
        Some(p) => desired * p / 100,
        None => s.parse().unwrap_or(0),
    }
}

fn meta(rs: &ReplicaSet) -> &ObjectMeta {
    static NONE: std::sync::OnceLock<ObjectMeta> = std::sync::OnceLock::new();
    rs.metadata.as_ref().unwrap_or_else(|| NONE.get_or_init(ObjectMeta::default))
}

fn revision(rs: &ReplicaSet) -> i64 {
    meta(rs).annotations.get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn replicas(rs: &ReplicaSet) -> i64 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) as i64
}

fn set_replicas(rs: &mut ReplicaSet, n: i64) {
    rs.spec.get_or_insert_with(Default::default).replicas = Some(n as i32);
}

fn controlled_by(obj: Option<&ObjectMeta>, uid: &str) -> bool {
    obj.and_then(controller_ref).is_some_and(|r| r.uid == uid)
}

/// The ReplicaSet a Deployment makes for its current template.
fn new_replica_set(d: &Deployment, meta: &ObjectMeta, hash: &str, max_revision: i64) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template.unwrap_or_default();
    template.metadata.get_or_insert_with(Default::default).labels.insert(HASH_LABEL.into(), hash.into());
    let mut selector = spec.selector.unwrap_or_default();
    selector.match_labels.insert(HASH_LABEL.into(), hash.into());
    let mut annotations = std::collections::BTreeMap::from([(REVISION.to_string(), (max_revision + 1).to_string())]);
    if let Some(cause) = meta.annotations.get(CHANGE_CAUSE) {
        annotations.insert(CHANGE_CAUSE.into(), cause.clone());
    }
    ReplicaSet {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        metadata: Some(ObjectMeta {
            name: format!("{}-{hash}", meta.name),
            namespace: meta.namespace.clone(),
            labels: template.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default(),
            annotations,
            owner_references: vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: meta.name.clone(),
                uid: meta.uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }],
            ..Default::default()
        }),
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            selector: Some(selector),
            template: Some(template),
            ..Default::default()
        }),
        status: None,
    }
}

/// What to do for deployment `d`, given its ReplicaSets and their pods (others are left out).
pub fn plan(d: &Deployment, sets: &[&ReplicaSet], pods: &[&Pod]) -> Plan {
    let d_meta = d.metadata.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let uid = d_meta.uid.as_str();
    let desired = spec.replicas.unwrap_or(1).max(0) as i64;
    let hash = hash_of_template(spec.template.as_ref());
    let mut owned: Vec<ReplicaSet> =
        sets.iter().filter(|rs| controlled_by(rs.metadata.as_ref(), uid)).map(|rs| (*rs).clone()).collect();
    owned.sort_by_key(revision);
    let pods_of = |rs: &ReplicaSet| -> Vec<&Pod> {
        let rs_uid = meta(rs).uid.as_str();
        pods.iter().copied().filter(|p| !terminating(p) && controlled_by(p.metadata.as_ref(), rs_uid)).collect()
    };
    let max_revision = owned.iter().map(revision).max().unwrap_or(0);
    let mut p = Plan::default();

    // The ReplicaSet of the current template, made or found; an old one brought back (a
    // rollback) becomes the newest revision.
    let current = owned.iter().position(|rs| meta(rs).labels.get(HASH_LABEL) == Some(&hash));
    let paused = spec.paused;
    let mut new_rs = match current {
        Some(i) => {
            let mut rs = owned.remove(i);
            let mut changed = false;
            let annotations = &mut rs.metadata.get_or_insert_with(Default::default).annotations;
            if annotations.get(REVISION).and_then(|r| r.parse::<i64>().ok()).unwrap_or(0) < max_revision {
                annotations.insert(REVISION.into(), (max_revision + 1).to_string());
                changed = true;
            }
            // As Kubernetes: the current ReplicaSet carries the Deployment's latest change cause
            // (an `edit --record` or `scale --record` that changed no template still shows).
            if let Some(cause) = d_meta.annotations.get(CHANGE_CAUSE) {
                if annotations.get(CHANGE_CAUSE) != Some(cause) {
                    annotations.insert(CHANGE_CAUSE.into(), cause.clone());
                    changed = true;
                }
            }
            if changed {
                p.update.push(rs.clone());
            }
            Some(rs)
        }
        None if paused => None,
        None => Some(new_replica_set(d, &d_meta, &hash, max_revision)),
    };
    let is_new = current.is_none() && new_rs.is_some();

    // Replica counts.
    let mut counts: Vec<i64> = owned.iter().map(replicas).collect();
    let ready_of = |rs: &ReplicaSet| pods_of(rs).iter().filter(|p| ready(p)).count() as i64;
    let mut new_count = new_rs.as_ref().map_or(0, replicas);
    let strategy = spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.r#type == "Recreate";
    let rolling = strategy.rolling_update.unwrap_or_default();
    let max_surge = IntOrString::from_value(&rolling.max_surge);
    let max_unavailable = IntOrString::from_value(&rolling.max_unavailable);
    let old_active: i64 = counts.iter().sum();
    if let Some(new) = &new_rs {
        let old_pods_left = owned.iter().any(|rs| !pods_of(rs).is_empty());
        if old_active == 0 && !old_pods_left {
            // Nothing to roll from: scaling touches only the current ReplicaSet.
            new_count = desired;
        } else if recreate {
            // Old pods first; the new ReplicaSet waits until they are gone.
            counts.iter_mut().for_each(|c| *c = 0);
        } else if paused {
            if old_active == 0 {
                new_count = desired;
            }
        } else {
            // Old ReplicaSets already cut to zero whose pods are still live (their controller
            // has not deleted them yet — a leader died between the two writes, say) still
            // occupy the surge room: the rolling rules below count them.
            let surge = resolve(max_surge, "25%", desired, true);
            let mut unavailable = resolve(max_unavailable.clone(), "25%", desired, false);
            if surge == 0 && unavailable == 0 {
                unavailable = 1;
            }
            // Up: the new ReplicaSet grows into the surge room. A ReplicaSet counts as the
            // larger of its size and its live pods: a scale-down its controller has not carried
            // out yet (a leader that died between the two writes) still occupies the room.
            let occupied = |rs: &ReplicaSet, size: i64| size.max(pods_of(rs).len() as i64);
            let total =
                owned.iter().zip(&counts).map(|(rs, c)| occupied(rs, *c)).sum::<i64>() + occupied(new, new_count);
            if total < desired + surge {
                new_count = (new_count + desired + surge - total).min(desired);
            }
            // Down: old ReplicaSets shrink, oldest first, while enough pods stay available.
            let new_unavailable = (new_count - ready_of(new)).max(0);
            let all = old_active + new_count;
            let mut room = all - (desired - unavailable) - new_unavailable;
            // Not-ready old pods can go without costing availability.
            for (i, rs) in owned.iter().enumerate() {
                let unready = (counts[i] - ready_of(rs)).max(0);
                let cut = unready.min(counts[i]);
                counts[i] -= cut;
            }
            let all_after_unready: i64 = counts.iter().sum::<i64>() + new_count;
            room = room.min(all_after_unready - (desired - unavailable) - new_unavailable);
            for c in counts.iter_mut() {
                if room <= 0 {
                    break;
                }
                let cut = (*c).min(room);
                *c -= cut;
                room -= cut;
            }
        }
    }
    for (i, rs) in owned.iter().enumerate() {
        if counts[i] != replicas(rs) {
            let mut updated = rs.clone();
            set_replicas(&mut updated, counts[i]);
            p.update.push(updated);
        }
    }
    if let Some(new) = new_rs.as_mut() {
        if is_new {
            set_replicas(new, new_count);
            p.create = Some(new.clone());
        } else if new_count != replicas(new) {
            set_replicas(new, new_count);
            match p.update.iter_mut().find(|u| meta(u).name == meta(new).name) {
                Some(u) => *u = new.clone(),
                None => p.update.push(new.clone()),
            }
        }
        p.revision = meta(new).annotations.get(REVISION).cloned().unwrap_or_default();
    }

    // History: old ReplicaSets at zero with no pods, beyond the limit, oldest first.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let idle: Vec<&ReplicaSet> = owned
        .iter()
        .enumerate()
        .filter(|(i, rs)| counts[*i] == 0 && pods_of(rs).is_empty())
        .map(|(_, rs)| rs)
        .collect();
    if idle.len() > limit {
        p.delete = idle[..idle.len() - limit].iter().map(|rs| meta(rs).name.clone()).collect();
    }

    // Status from the pods.
    let selector = spec.selector.clone().unwrap_or_default();
    let mine: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| !terminating(p) && p.metadata.as_ref().is_some_and(|m| selector_matches(&selector, &m.labels)))
        .filter(|p| {
            let owner = p.metadata.as_ref().and_then(controller_ref).map_or("", |r| r.uid.as_str());
            owned.iter().chain(new_rs.iter()).any(|rs| meta(rs).uid == owner)
        })
        .collect();
    let updated = new_rs.as_ref().filter(|_| !is_new).map_or(0, |rs| pods_of(rs).len() as i64);
    let ready_n = mine.iter().filter(|p| ready(p)).count() as i64;
    let max_unavailable = if recreate { desired } else { resolve(max_unavailable, "25%", desired, false) };
    let available_ok = ready_n >= desired - max_unavailable;
    let complete = updated == desired && ready_n == desired && mine.len() as i64 == desired;
    let now = skiff_proto::time::now_rfc3339();
    let cond = |kind: &str, ok: bool, reason: &str, message: String| Condition {
        r#type: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_update_time: now.clone(),
        last_transition_time: now.clone(),
        ..Default::default()
    };
    let new_name = new_rs.as_ref().map(|rs| meta(rs).name.clone()).unwrap_or_default();
    let (available_reason, available_message) = if available_ok {
        ("MinimumReplicasAvailable", "Deployment has minimum availability.")
    } else {
        ("MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
    };
    let (progress_reason, progress_message) = if complete {
        ("NewReplicaSetAvailable", format!("ReplicaSet \"{new_name}\" has successfully progressed."))
    } else {
        ("ReplicaSetUpdated", format!("ReplicaSet \"{new_name}\" is progressing."))
    };
    p.status = DeploymentStatus {
        observed_generation: d_meta.generation.max(1),
        replicas: mine.len() as i32,
        updated_replicas: updated as i32,
        ready_replicas: ready_n as i32,
        available_replicas: ready_n as i32,
        unavailable_replicas: (desired - ready_n).max(0) as i32,
        conditions: vec![
            cond("Available", available_ok, available_reason, available_message.into()),
            cond("Progressing", true, progress_reason, progress_message),
        ],
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
    };
    p
}

/// Whether `new` says something `old` does not: a count, or a condition's type or reason
/// (not the times it carries, which are always now).
fn status_changed(old: Option<&DeploymentStatus>, new: &DeploymentStatus) -> bool {
    let Some(old) = old else { return true };
    let counts = |s: &DeploymentStatus| {
        (
            s.replicas,
            s.updated_replicas,
            s.ready_replicas,
            s.available_replicas,
            s.unavailable_replicas,
            s.observed_generation,
        )
    };
    let conditions =
        |s: &DeploymentStatus| s.conditions.iter().map(|c| (c.r#type.clone(), c.reason.clone())).collect::<Vec<_>>();
    counts(old) != counts(new) || conditions(old) != conditions(new)
}

/// The Deployment controller over the master's caches: a Deployment's key is queued by its own
/// changes, its ReplicaSets' and their pods'.
pub struct Deployments {
    pub deployments: Store<Deployment>,
    pub sets: Store<ReplicaSet>,
    pub pods: Store<Pod>,
}

impl Deployments {
    /// The Deployment that controls the ReplicaSet at `rs`, if any.
    fn deployment_of_set(&self, rs: &ReplicaSet) -> Option<ObjectKey> {
        rs.metadata.as_ref().and_then(|m| controller_of(m, "Deployment"))
    }

    /// The Deployment that controls `pod` through its ReplicaSet.
    fn deployment_of_pod(&self, pod: &Pod) -> Option<ObjectKey> {
        let rs = controller_of(pod.metadata.as_ref()?, "ReplicaSet")?;
        self.deployment_of_set(&*self.sets.get(&rs)?)
    }

    fn commands(&self, d: &Deployment, meta: &ObjectMeta) -> Vec<Command> {
        let sets = self.sets.owned_by(&meta.uid);
        let pods: Vec<Arc<Pod>> =
            sets.iter().filter_map(|rs| rs.meta()).flat_map(|m| self.pods.owned_by(&m.uid)).collect();
        let sets: Vec<&ReplicaSet> = sets.iter().map(|rs| &**rs).collect();
        let pods: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
        let plan = plan(d, &sets, &pods);
        let note = |message: String| Some(Note::normal("Deployment", "apps/v1", meta, "ScalingReplicaSet", message));
        let mut commands = Vec::new();
        if let Some(rs) = plan.create {
            let message = format!("Scaled up replica set {{name}} to {}", replicas(&rs));
            commands.push(Command::Create { object: Object::ReplicaSet(rs), note: note(message) });
        }
        for rs in plan.update {
            let message = format!("Scaled replica set {} to {}", self::meta(&rs).name, replicas(&rs));
            commands.push(Command::Update { object: Object::ReplicaSet(rs), note: note(message) });
        }
        for name in &plan.delete {
            commands.push(Command::Delete {
                resource: ReplicaSet::RESOURCE,
                key: ObjectKey::new(&meta.namespace, name),
                note: None,
            });
        }
        // The Deployment's own revision annotation; its status follows in the reconcile its
        // update queues (the status write needs the resourceVersion the update makes).
        if !plan.revision.is_empty() && meta.annotations.get(REVISION) != Some(&plan.revision) {
            let mut updated = d.clone();
            if let Some(m) = updated.metadata.as_mut() {
                m.annotations.insert(REVISION.into(), plan.revision.clone());
            }
            commands.push(Command::Update { object: Object::Deployment(updated), note: None });
            return commands;
        }
        if status_changed(d.status.as_ref(), &plan.status) {
            let mut updated = d.clone();
            updated.status = Some(plan.status);
            commands.push(Command::UpdateStatus { object: Object::Deployment(updated), note: None });
        }
        commands
    }
}

impl Reconciler for Deployments {
    const NAME: &'static str = "deployment controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.deployments.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.deployments, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.sets, queue, self, |me: &Self, c: &Change<ReplicaSet>| {
                before_and_after(c).into_iter().filter_map(|rs| me.deployment_of_set(rs)).collect()
            }),
            controller::on_changes(&self.pods, queue, self, |me: &Self, c: &Change<Pod>| {
                before_and_after(c).into_iter().filter_map(|p| me.deployment_of_pod(p)).collect()
            }),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.deployments, &self.sets, &self.pods]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(d) = self.deployments.get(key) else { return Vec::new() };
        match d.metadata.as_ref() {
            Some(meta) if !crate::objects::deleting(meta) => self.commands(&d, meta),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_json<T: serde::Serialize>(obj: &T) -> Value {
        serde_json::to_value(obj).unwrap()
    }

    /// The plan, as JSON: what the tests below read.
    struct PlanJson {
        create: Option<Value>,
        update: Vec<Value>,
        delete: Vec<String>,
        revision: String,
    }

    /// [`super::plan`] over JSON fixtures.
    fn plan(d: &Value, sets: &[Value], pods: &[Value]) -> PlanJson {
        let sets: Vec<ReplicaSet> = sets.iter().map(|s| typed(s.clone())).collect();
        let pods: Vec<Pod> = pods.iter().map(|p| typed(p.clone())).collect();
        let p = super::plan(&typed(d.clone()), &sets.iter().collect::<Vec<_>>(), &pods.iter().collect::<Vec<_>>());
        PlanJson {
            create: p.create.as_ref().map(to_json),
            update: p.update.iter().map(to_json).collect(),
            delete: p.delete,
            revision: p.revision,
        }
    }

    fn deployment(replicas: i64, image: &str, strategy: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "strategy": strategy,
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    fn rs_of(d: &Value, replicas: i64, rev: i64, uid: &str) -> Value {
        let mut rs = plan(d, &[], &[]).create.unwrap();
        rs["metadata"]["uid"] = json!(uid);
        rs["spec"]["replicas"] = json!(replicas);
        rs["metadata"]["annotations"][REVISION] = json!(rev.to_string());
        rs
    }

    fn pods(rs: &Value, n: usize, ready_n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                json!({"metadata": {"name": format!("{}-{i}", rs["metadata"]["name"].as_str().unwrap()),
                        "labels": rs["spec"]["template"]["metadata"]["labels"],
                        "ownerReferences": [{"uid": rs["metadata"]["uid"], "controller": true}]},
                       "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if i < ready_n { "True" } else { "False" }}]}})
            })
            .collect()
    }

    #[test]
    fn hashes_are_stable_and_safe() {
        let t = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}});
        assert_eq!(template_hash(&t), template_hash(&t.clone()));
        assert_ne!(template_hash(&t), template_hash(&json!({"spec": {"containers": [{"name": "c", "image": "b"}]}})));
        assert!(template_hash(&t).chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn surge_and_unavailable_resolve_like_kubernetes() {
        assert_eq!(resolve(None, "25%", 10, true), 3);
        assert_eq!(resolve(None, "25%", 10, false), 2);
        assert_eq!(resolve(Some(IntOrString::Int(2)), "25%", 10, true), 2);
        assert_eq!(resolve(Some(IntOrString::Str("50%".into())), "25%", 3, true), 2);
    }

    #[test]
    fn a_new_deployment_gets_one_replicaset_at_full_size() {
        let d = deployment(3, "a", json!({}));
        let p = plan(&d, &[], &[]);
        let rs = p.create.unwrap();
        assert_eq!(rs["spec"]["replicas"], 3);
        assert!(rs["metadata"]["name"].as_str().unwrap().starts_with("web-"));
        assert_eq!(rs["metadata"]["annotations"][REVISION], "1");
        assert_eq!(rs["spec"]["selector"]["matchLabels"][HASH_LABEL], rs["metadata"]["labels"][HASH_LABEL]);
        assert_eq!(p.revision, "1");
    }

    #[test]
    fn a_rolling_update_surges_then_shrinks_old_as_new_pods_become_ready() {
        let old_d =
            deployment(4, "a", json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}));
        let old = rs_of(&old_d, 4, 1, "old-uid");
        let mut d = old_d.clone();
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
        let old_pods = pods(&old, 4, 4);
        // Step 1: a new ReplicaSet with one surge pod; nobody old may go (maxUnavailable 0).
        let p = plan(&d, std::slice::from_ref(&old), &old_pods);
        let new = p.create.clone().unwrap();
        assert_eq!(new["spec"]["replicas"], 1);
        assert_eq!(new["metadata"]["annotations"][REVISION], "2");
        assert!(p.update.is_empty(), "{:?}", p.update);
        // Step 2: the new pod is not ready: still nothing old goes.
        let mut new = new;
        new["metadata"]["uid"] = json!("new-uid");
        let mut all = old_pods.clone();
        all.extend(pods(&new, 1, 0));
        let p = plan(&d, &[old.clone(), new.clone()], &all);
        assert!(p.update.is_empty(), "{:?}", p.update);
        // Step 3: it is ready: one old pod may go, and the new one may not grow yet (surge full).
        let mut all = old_pods.clone();
        all.extend(pods(&new, 1, 1));
        let p = plan(&d, &[old.clone(), new.clone()], &all);
        let old_update = p.update.iter().find(|u| u["metadata"]["uid"] == "old-uid").unwrap();
        assert_eq!(old_update["spec"]["replicas"], 3);
        assert!(p.update.iter().all(|u| u["metadata"]["uid"] != "new-uid"));
    }

    #[test]
    fn old_pods_a_scale_down_has_not_removed_yet_leave_no_room_to_surge() {
        let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
        let old_d = deployment(5, "a", strategy);
        let mut d = old_d.clone();
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
        // The old ReplicaSet was cut to 4 but still runs 5 pods; the new one runs its 1.
        let old = rs_of(&old_d, 4, 1, "old-uid");
        let mut new = rs_of(&d, 1, 2, "new-uid");
        new["metadata"]["annotations"][REVISION] = json!("2");
        let mut all = pods(&old, 5, 5);
        all.extend(pods(&new, 1, 1));
        let p = plan(&d, &[old.clone(), new.clone()], &all);
        assert!(p.update.iter().all(|u| u["metadata"]["uid"] != "new-uid"), "grew into occupied room: {:?}", p.update);
        // Once the old pod is gone, the room is there.
        let mut all = pods(&old, 4, 4);
        all.extend(pods(&new, 1, 1));
        let p = plan(&d, &[old, new], &all);
        let grown = p.update.iter().find(|u| u["metadata"]["uid"] == "new-uid").expect("the new ReplicaSet grows");
        assert_eq!(grown["spec"]["replicas"], 2);
    }

    #[test]
    fn old_replicasets_cut_to_zero_with_live_pods_still_bound_the_surge() {
        // maxUnavailable 100 %: old ReplicaSets go to zero at once, before their pods are gone.
        let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "100%"}});
        let old_d = deployment(3, "a", strategy);
        let mut d = old_d.clone();
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
        let old = rs_of(&old_d, 0, 1, "old-uid");
        let old_pods = pods(&old, 2, 0);
        // A new ReplicaSet is made with only the room the 2 live old pods leave (4 - 2).
        let p = plan(&d, std::slice::from_ref(&old), &old_pods);
        assert_eq!(p.create.as_ref().expect("a new ReplicaSet")["spec"]["replicas"], 2, "{:?}", p.create);
        // An existing one at 1 grows to 2, not to the full 3.
        let new = rs_of(&d, 1, 2, "new-uid");
        let p = plan(&d, &[old.clone(), new.clone()], &old_pods);
        let grown = p.update.iter().find(|u| u["metadata"]["uid"] == "new-uid").expect("the new ReplicaSet grows");
        assert_eq!(grown["spec"]["replicas"], 2);
        // Once the old pods are gone it takes the full count.
        let p = plan(&d, &[old, new], &[]);
        let grown = p.update.iter().find(|u| u["metadata"]["uid"] == "new-uid").expect("the new ReplicaSet grows");
        assert_eq!(grown["spec"]["replicas"], 3);
    }

    #[test]
    fn recreate_stops_old_pods_before_starting_new_ones() {
        let old_d = deployment(2, "a", json!({"type": "Recreate"}));
        let old = rs_of(&old_d, 2, 1, "old-uid");
        let mut d = old_d.clone();
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
        let p = plan(&d, std::slice::from_ref(&old), &pods(&old, 2, 2));
        assert_eq!(p.create.as_ref().unwrap()["spec"]["replicas"], 0);
        assert_eq!(p.update[0]["spec"]["replicas"], 0);
        // Old scaled to zero but its pods still exist: the new one waits.
        let mut old0 = old.clone();
        old0["spec"]["replicas"] = json!(0);
        let mut new = p.create.unwrap();
        new["metadata"]["uid"] = json!("new-uid");
        let p = plan(&d, &[old0.clone(), new.clone()], &pods(&old, 2, 2));
        assert!(p.update.is_empty(), "{:?}", p.update);
        // Old pods gone: the new one scales up.
        let p = plan(&d, &[old0, new], &[]);
        assert_eq!(p.update[0]["spec"]["replicas"], 2);
    }

    #[test]
    fn rolling_back_makes_the_old_replicaset_the_newest_revision_and_history_is_bounded() {
        let a = deployment(2, "a", json!({}));
        let mut d = a.clone();
        d["spec"]["revisionHistoryLimit"] = json!(0);
        let rs_a = rs_of(&a, 0, 1, "a-uid");
        let mut b = a.clone();
        b["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
        let rs_b = rs_of(&b, 0, 2, "b-uid");
        let mut c = a.clone();
        c["spec"]["template"]["spec"]["containers"][0]["image"] = json!("c");
        let rs_c = rs_of(&c, 2, 3, "c-uid");
        // Back to template a: its ReplicaSet is revision 4 now.
        let p = plan(&d, &[rs_a.clone(), rs_b.clone(), rs_c.clone()], &pods(&rs_c, 2, 2));
        let back = p.update.iter().find(|u| u["metadata"]["uid"] == "a-uid").unwrap();
        assert_eq!(back["metadata"]["annotations"][REVISION], "4");
        assert_eq!(p.revision, "4");
        assert!(p.create.is_none());
        // With a limit of 0, the idle b goes (c still has pods).
        assert_eq!(p.delete, vec![rs_b["metadata"]["name"].as_str().unwrap().to_string()]);
    }

    #[test]
    fn scaling_without_a_template_change_resizes_only_the_current_replicaset() {
        let d = deployment(5, "a", json!({}));
        let current = rs_of(&d, 3, 1, "cur");
        let p = plan(&d, std::slice::from_ref(&current), &pods(&current, 3, 3));
        assert!(p.create.is_none());
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0]["spec"]["replicas"], 5);
        assert_eq!(p.update[0]["metadata"]["annotations"][REVISION], "1");
    }

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn with_rv<T: serde::de::DeserializeOwned>(mut v: Value, rv: &str) -> T {
        v["metadata"]["resourceVersion"] = json!(rv);
        typed(v)
    }

    #[test]
    fn reconcile_creates_the_first_replicaset_and_records_its_revision_then_the_status() {
        let c = Deployments { deployments: Store::new(), sets: Store::new(), pods: Store::new() };
        let key = ObjectKey::new("default", "web");
        let d = deployment(2, "a", json!({}));
        c.deployments.replace(vec![with_rv(d.clone(), "1")], "1".into());
        let commands = c.reconcile(&key);
        let [Command::Create { object: Object::ReplicaSet(rs), note: Some(note) }, Command::Update { object: Object::Deployment(updated), .. }] =
            commands.as_slice()
        else {
            panic!("{commands:?}")
        };
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!((note.reason, note.message.as_str()), ("ScalingReplicaSet", "Scaled up replica set {name} to 2"));
        assert_eq!(updated.metadata.as_ref().unwrap().annotations[REVISION], "1", "no status before the revision");
        c.sets.replace(vec![with_rv(rs_of(&d, 2, 1, "rs-uid"), "2")], "2".into());

        // Then the status, once; then nothing.
        let mut annotated = d.clone();
        annotated["metadata"]["annotations"][REVISION] = json!("1");
        c.deployments.replace(vec![with_rv(annotated.clone(), "3")], "3".into());
        let commands = c.reconcile(&key);
        let [Command::UpdateStatus { object: Object::Deployment(updated), .. }] = commands.as_slice() else {
            panic!("{commands:?}")
        };
        let mut settled = to_json(updated);
        settled["metadata"]["resourceVersion"] = json!("4");
        c.deployments.replace(vec![typed(settled)], "4".into());
        assert_eq!(c.reconcile(&key), []);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_change_queues_the_deployment_that_owns_its_replicaset() {
        let c = Arc::new(Deployments { deployments: Store::new(), sets: Store::new(), pods: Store::new() });
        let d = deployment(1, "a", json!({}));
        let rs = rs_of(&d, 1, 1, "rs-uid");
        c.sets.replace(vec![with_rv(rs.clone(), "1")], "1".into());
        let queue = WorkQueue::new();
        let triggers = c.triggers(&queue);
        let mut pod = pods(&rs, 1, 1).remove(0);
        pod["metadata"]["namespace"] = json!("default");
        pod["metadata"]["ownerReferences"][0]["kind"] = json!("ReplicaSet");
        pod["metadata"]["ownerReferences"][0]["name"] = rs["metadata"]["name"].clone();
        c.pods.apply(skiff_client::informer::WatchEvent::Added(with_rv(pod, "2")));
        let key = tokio::time::timeout(std::time::Duration::from_secs(1), queue.next()).await.ok().flatten();
        assert_eq!(key, Some(ObjectKey::new("default", "web")));
        triggers.iter().for_each(|t| t.abort());
    }
}
