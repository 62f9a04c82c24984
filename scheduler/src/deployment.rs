//! The Deployment controller: one ReplicaSet per pod-template revision, rolled between with
//! RollingUpdate (maxSurge / maxUnavailable, readiness-gated) or Recreate.
//!
//! `plan` is pure (DESIGN.md rule 6): from the Deployment, its namespace's ReplicaSets and
//! pods it returns the ReplicaSet to create, the replica counts to set, the old ReplicaSets to
//! delete past `revisionHistoryLimit`, and the status. Each round takes one step; the next
//! round sees the pods that step made, so readiness paces the rollout.
//!
//! As Kubernetes: ReplicaSets are named `<deployment>-<pod-template-hash>` and carry the hash
//! as a label (also in their selector), revisions live in the
//! `deployment.kubernetes.io/revision` annotation, and rolling back means putting an old
//! template back — its ReplicaSet becomes the newest revision again.

use crate::controller::{self, before_and_after, own_key, Command, Note, Object, Reconciler};
use crate::objects::json::selector_matches;
use crate::objects::json::{controller_uid, ready, terminating};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use skiff_client::informer::{controller_of, Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{Deployment, ObjectMeta, Pod, ReplicaSet};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
pub const HASH_LABEL: &str = "pod-template-hash";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// A ReplicaSet to create for the current template.
    pub create: Option<Value>,
    /// ReplicaSets to update (spec.replicas and annotations changed), as full objects.
    pub update: Vec<Value>,
    /// Old ReplicaSets (names) beyond revisionHistoryLimit, scaled to zero and without pods.
    pub delete: Vec<String>,
    /// The revision the Deployment's own annotation should carry.
    pub revision: String,
    pub status: Value,
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

/// `maxSurge` / `maxUnavailable`: an int, or a percentage of `desired` (surge rounds up,
/// unavailable rounds down, as Kubernetes does).
pub fn resolve(v: Option<&Value>, default: &str, desired: i64, round_up: bool) -> i64 {
    let v = v.cloned().unwrap_or(json!(default));
    if let Some(n) = v.as_i64() {
        return n.max(0);
    }
    let s = v.as_str().unwrap_or(default);
    match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(p) if round_up => (desired * p + 99) / 100,
        Some(p) => desired * p / 100,
        None => s.parse().unwrap_or(0),
    }
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn replicas(rs: &Value) -> i64 {
    rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

/// What to do for deployment `d`, given its namespace's ReplicaSets and pods.
pub fn plan(d: &Value, sets: &[Value], pods: &[Value]) -> Plan {
    let uid = d["metadata"]["uid"].as_str().unwrap_or_default();
    let name = d["metadata"]["name"].as_str().unwrap_or_default();
    let desired = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
    let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    let mut owned: Vec<Value> = sets.iter().filter(|rs| controller_uid(rs) == Some(uid)).cloned().collect();
    owned.sort_by_key(revision);
    let pods_of = |rs: &Value| -> Vec<&Value> {
        let rs_uid = rs["metadata"]["uid"].as_str().unwrap_or_default();
        pods.iter().filter(|p| !terminating(p) && controller_uid(p) == Some(rs_uid)).collect()
    };
    let max_revision = owned.iter().map(revision).max().unwrap_or(0);
    let mut p = Plan::default();

    // The ReplicaSet of the current template, made or found; an old one brought back (a
    // rollback) becomes the newest revision.
    let current = owned.iter().position(|rs| labels(rs).get(HASH_LABEL) == Some(&hash));
    let paused = d.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
    let mut new_rs = match current {
        Some(i) => {
            let mut rs = owned.remove(i);
            let mut changed = false;
            if revision(&rs) < max_revision {
                rs["metadata"]["annotations"][REVISION] = json!((max_revision + 1).to_string());
                changed = true;
            }
            // As Kubernetes: the current ReplicaSet carries the Deployment's latest change cause
            // (an `edit --record` or `scale --record` that changed no template still shows).
            let cause = &d["metadata"]["annotations"][CHANGE_CAUSE];
            if cause.is_string() && rs["metadata"]["annotations"][CHANGE_CAUSE] != *cause {
                rs["metadata"]["annotations"][CHANGE_CAUSE] = cause.clone();
                changed = true;
            }
            if changed {
                p.update.push(rs.clone());
            }
            Some(rs)
        }
        None if paused => None,
        None => {
            let mut t = template.clone();
            t["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            selector["matchLabels"][HASH_LABEL] = json!(hash);
            let mut annotations = json!({ REVISION: (max_revision + 1).to_string() });
            if let Some(cause) = d["metadata"]["annotations"][CHANGE_CAUSE].as_str() {
                annotations[CHANGE_CAUSE] = json!(cause);
            }
            Some(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": format!("{name}-{hash}"), "namespace": d["metadata"]["namespace"],
                    "labels": t["metadata"]["labels"], "annotations": annotations,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid,
                                         "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": {"replicas": 0, "selector": selector, "template": t},
            }))
        }
    };
    let is_new = current.is_none() && new_rs.is_some();

    // Replica counts.
    let mut counts: Vec<i64> = owned.iter().map(replicas).collect();
    let ready_of = |rs: &Value| pods_of(rs).iter().filter(|p| ready(p)).count() as i64;
    let mut new_count = new_rs.as_ref().map_or(0, replicas);
    let recreate = d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
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
            let ru = d.pointer("/spec/strategy/rollingUpdate");
            let surge = resolve(ru.and_then(|r| r.get("maxSurge")), "25%", desired, true);
            let mut unavailable = resolve(ru.and_then(|r| r.get("maxUnavailable")), "25%", desired, false);
            if surge == 0 && unavailable == 0 {
                unavailable = 1;
            }
            // Up: the new ReplicaSet grows into the surge room. A ReplicaSet counts as the
            // larger of its size and its live pods: a scale-down its controller has not carried
            // out yet (a leader that died between the two writes) still occupies the room.
            let occupied = |rs: &Value, size: i64| size.max(pods_of(rs).len() as i64);
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
            updated["spec"]["replicas"] = json!(counts[i]);
            p.update.push(updated);
        }
    }
    if let Some(new) = new_rs.as_mut() {
        if is_new {
            new["spec"]["replicas"] = json!(new_count);
            p.create = Some(new.clone());
        } else if new_count != replicas(new) {
            new["spec"]["replicas"] = json!(new_count);
            match p.update.iter_mut().find(|u| u["metadata"]["name"] == new["metadata"]["name"]) {
                Some(u) => *u = new.clone(),
                None => p.update.push(new.clone()),
            }
        }
        p.revision = new["metadata"]["annotations"][REVISION].as_str().unwrap_or_default().to_string();
    }

    // History: old ReplicaSets at zero with no pods, beyond the limit, oldest first.
    let limit = d.pointer("/spec/revisionHistoryLimit").and_then(Value::as_i64).unwrap_or(10).max(0) as usize;
    let idle: Vec<&Value> = owned
        .iter()
        .enumerate()
        .filter(|(i, rs)| counts[*i] == 0 && pods_of(rs).is_empty())
        .map(|(_, rs)| rs)
        .collect();
    if idle.len() > limit {
        p.delete = idle[..idle.len() - limit]
            .iter()
            .map(|rs| rs["metadata"]["name"].as_str().unwrap_or_default().into())
            .collect();
    }

    // Status from the pods.
    let selector = d.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
    let mine: Vec<&Value> = pods
        .iter()
        .filter(|p| !terminating(p) && selector_matches(&selector, &labels(p)))
        .filter(|p| {
            let owner = controller_uid(p).unwrap_or_default();
            owned.iter().chain(new_rs.iter()).any(|rs| rs["metadata"]["uid"] == owner)
        })
        .collect();
    let updated = new_rs.as_ref().filter(|_| !is_new).map_or(0, |rs| pods_of(rs).len() as i64);
    let ready_n = mine.iter().filter(|p| ready(p)).count() as i64;
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let max_unavailable =
        if recreate { desired } else { resolve(ru.and_then(|r| r.get("maxUnavailable")), "25%", desired, false) };
    let available_ok = ready_n >= desired - max_unavailable;
    let complete = updated == desired && ready_n == desired && mine.len() as i64 == desired;
    let now = skiff_proto::time::now_rfc3339();
    let cond = |kind: &str, ok: bool, reason: &str, message: String| {
        json!({"type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message,
               "lastUpdateTime": now, "lastTransitionTime": now})
    };
    let new_name = new_rs.as_ref().and_then(|rs| rs["metadata"]["name"].as_str()).unwrap_or_default().to_string();
    p.status = json!({
        "observedGeneration": d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": mine.len(),
        "updatedReplicas": updated,
        "readyReplicas": ready_n,
        "availableReplicas": ready_n,
        "unavailableReplicas": (desired - ready_n).max(0),
        "conditions": [
            cond("Available", available_ok,
                 if available_ok { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                 if available_ok { "Deployment has minimum availability.".into() } else { "Deployment does not have minimum availability.".into() }),
            cond("Progressing", true,
                 if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                 if complete { format!("ReplicaSet \"{new_name}\" has successfully progressed.") }
                 else { format!("ReplicaSet \"{new_name}\" is progressing.") }),
        ],
    });
    p
}

/// The Deployment controller over the master's caches: a Deployment's key is queued by its own
/// changes, its ReplicaSets' and their pods'. Its plan still reads JSON: the reconcile converts
/// at that boundary (the Deployment, its own ReplicaSets and their pods without their specs)
/// and turns the plan back into typed commands.
pub struct Deployments {
    pub deployments: Store<Deployment>,
    pub sets: Store<ReplicaSet>,
    pub pods: Store<Pod>,
}

fn to_json<T: serde::Serialize>(obj: &T) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
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
        let pods: Vec<Value> = sets
            .iter()
            .filter_map(|rs| rs.meta())
            .flat_map(|m| self.pods.owned_by(&m.uid))
            .map(|p| to_json(&Pod { spec: None, ..(*p).clone() }))
            .collect();
        let sets: Vec<Value> = sets.iter().map(|rs| to_json(&**rs)).collect();
        let d_json = to_json(d);
        let plan = plan(&d_json, &sets, &pods);
        let typed = |v: &Value| serde_json::from_value::<ReplicaSet>(v.clone());
        let note = |message: String| Some(Note::normal("Deployment", "apps/v1", meta, "ScalingReplicaSet", message));
        let mut commands = Vec::new();
        if let Some(rs) = &plan.create {
            match typed(rs) {
                Ok(rs_typed) => {
                    let message = format!("Scaled up replica set {{name}} to {}", replicas(rs));
                    commands.push(Command::Create { object: Object::ReplicaSet(rs_typed), note: note(message) });
                }
                Err(e) => tracing::warn!("deployment {}/{}: new replica set: {e}", meta.namespace, meta.name),
            }
        }
        for rs in &plan.update {
            if let Ok(rs_typed) = typed(rs) {
                let name = rs["metadata"]["name"].as_str().unwrap_or_default();
                let message = format!("Scaled replica set {name} to {}", replicas(rs));
                commands.push(Command::Update { object: Object::ReplicaSet(rs_typed), note: note(message) });
            }
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
        let status = &d_json["status"];
        let conditions = |s: &Value| {
            s["conditions"]
                .as_array()
                .map(|c| c.iter().map(|c| (c["type"].clone(), c["reason"].clone())).collect::<Vec<_>>())
        };
        let keys = [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
            "observedGeneration",
        ];
        let changed = keys.iter().any(|k| status[*k].as_i64().unwrap_or(0) != plan.status[*k].as_i64().unwrap_or(0))
            || conditions(status) != conditions(&plan.status);
        if changed {
            match serde_json::from_value(plan.status.clone()) {
                Ok(status) => {
                    let mut updated = d.clone();
                    updated.status = Some(status);
                    commands.push(Command::UpdateStatus { object: Object::Deployment(updated), note: None });
                }
                Err(e) => tracing::warn!("deployment {}/{}: status: {e}", meta.namespace, meta.name),
            }
        }
        commands
    }
}

impl Reconciler for Deployments {
    const NAME: &'static str = "deployment controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.deployments.list().iter().filter_map(|d| d.meta().map(ObjectKey::of)).collect()
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

    fn synced(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            self.deployments.synced().await;
            self.sets.synced().await;
            self.pods.synced().await;
        })
    }

    fn caught_up(&self, revision: i64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.deployments.caught_up(revision).await;
            self.sets.caught_up(revision).await;
            self.pods.caught_up(revision).await;
        })
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
        assert_eq!(resolve(Some(&json!(2)), "25%", 10, true), 2);
        assert_eq!(resolve(Some(&json!("50%")), "25%", 3, true), 2);
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
