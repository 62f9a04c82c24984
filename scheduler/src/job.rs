//! The Job controller: runs pods until `completions` of them succeed, `parallelism` at a
//! time, giving up after `backoffLimit` failed pods or `activeDeadlineSeconds`; pods are
//! `<job>-<random>` labelled `job-name` and `controller-uid` as Kubernetes labels them.
//!
//! [`plan`] is pure: the Job, its pods and the time in; pods to create and delete and the
//! status out. [`Jobs`] is the keyed controller: a Job's key is queued by its own changes, by
//! its pods', and when its active deadline comes.

use crate::controller::{self, own_key, Cache, Command, Note, Object, Reconciler};
use crate::objects::{controller_ref, deleting, phase, ready};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{Condition, Job, JobStatus, ObjectMeta, OwnerReference, Pod};
use skiff_proto::time::now_secs;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Pods to create (the API fills the generated name suffix).
    pub create: Vec<Pod>,
    /// Names of active pods to delete (the Job failed).
    pub delete: Vec<String>,
    pub status: JobStatus,
}

/// Whether a Job's status says it finished: `Complete` or `Failed`.
pub fn finished(status: Option<&JobStatus>) -> Option<&'static str> {
    let holds =
        |kind: &str| status.is_some_and(|s| s.conditions.iter().any(|c| c.r#type == kind && c.status == "True"));
    if holds("Complete") {
        Some("Complete")
    } else if holds("Failed") {
        Some("Failed")
    } else {
        None
    }
}

/// When the Job's active deadline passes (seconds since the epoch), if it has one and started.
fn deadline(job: &Job) -> Option<i64> {
    let seconds = job.spec.as_ref()?.active_deadline_seconds?;
    let started = skiff_proto::time::parse_rfc3339(&job.status.as_ref()?.start_time)?;
    Some(started + seconds)
}

/// The pod a Job runs, from its template.
fn pod_for(meta: &ObjectMeta, template: Option<&skiff_proto::api::PodTemplateSpec>) -> Pod {
    let template = template.cloned().unwrap_or_default();
    let mut pod_meta = template.metadata.unwrap_or_default();
    pod_meta.name.clear();
    pod_meta.generate_name = format!("{}-", meta.name);
    pod_meta.namespace = meta.namespace.clone();
    for (label, value) in [("job-name", &meta.name), ("controller-uid", &meta.uid)] {
        pod_meta.labels.insert(label.into(), value.clone());
        pod_meta.labels.insert(format!("batch.kubernetes.io/{label}"), value.clone());
    }
    pod_meta.owner_references = vec![OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }];
    Pod { api_version: "v1".into(), kind: "Pod".into(), metadata: Some(pod_meta), spec: template.spec, status: None }
}

/// What to do for `job` given the pods it controls (others are left out), at `now`.
pub fn plan<'a>(job: &Job, pods: impl IntoIterator<Item = &'a Pod>, now: i64) -> Plan {
    let meta = job.metadata.clone().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let completions = spec.completions.unwrap_or(1).max(0);
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6).max(0);
    let mine: Vec<&Pod> = pods
        .into_iter()
        .filter(|p| p.metadata.as_ref().and_then(controller_ref).is_some_and(|r| r.uid == meta.uid))
        .collect();
    let count = |wanted: &str| mine.iter().filter(|p| phase(p) == wanted).count() as i32;
    let (succeeded, failed) = (count("Succeeded"), count("Failed"));
    let active: Vec<&Pod> = mine
        .iter()
        .copied()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed") && !p.metadata.as_ref().is_some_and(deleting))
        .collect();
    let old = job.status.clone().unwrap_or_default();
    let t = skiff_proto::time::rfc3339(now);
    let start_time = if old.start_time.is_empty() { t.clone() } else { old.start_time.clone() };
    let started = skiff_proto::time::parse_rfc3339(&start_time).unwrap_or(now);
    let deadline_passed = spec.active_deadline_seconds.is_some_and(|d| now - started >= d);
    let names = |pods: &[&Pod]| pods.iter().filter_map(|p| p.metadata.as_ref().map(|m| m.name.clone())).collect();
    let mut p = Plan::default();
    let mut conditions = old.conditions.clone();
    let mut completion_time = old.completion_time.clone();
    match finished(job.status.as_ref()) {
        None if succeeded >= completions => {
            conditions.push(Condition {
                r#type: "Complete".into(),
                status: "True".into(),
                last_transition_time: t.clone(),
                last_probe_time: t.clone(),
                ..Default::default()
            });
            completion_time = t;
        }
        None if failed > backoff_limit || deadline_passed => {
            let (reason, message) = if deadline_passed {
                ("DeadlineExceeded", "Job was active longer than specified deadline")
            } else {
                ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            };
            conditions.push(Condition {
                r#type: "Failed".into(),
                status: "True".into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: t.clone(),
                last_probe_time: t,
                ..Default::default()
            });
            p.delete = names(&active);
        }
        None => {
            let want = parallelism.min(completions - succeeded) - active.len() as i32;
            p.create = vec![pod_for(&meta, spec.template.as_ref()); want.max(0) as usize];
        }
        Some("Failed") => p.delete = names(&active),
        Some(_) => {}
    }
    p.status = JobStatus {
        conditions,
        start_time,
        completion_time,
        active: active.len() as i32 + p.create.len() as i32 - p.delete.len() as i32,
        succeeded,
        failed,
        ready: Some(active.iter().filter(|p| ready(p)).count() as i32),
    };
    p
}

/// The Job controller over the master's caches.
pub struct Jobs {
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
}

impl Reconciler for Jobs {
    const NAME: &'static str = "job controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.jobs.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.jobs, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.pods, queue, self, |_, c: &Change<Pod>| controller::controllers_of(c, "Job")),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.jobs, &self.pods]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(job) = self.jobs.get(key) else { return Vec::new() };
        let Some(meta) = job.metadata.as_ref().filter(|m| !deleting(m)) else { return Vec::new() };
        let pods = self.pods.owned_by(&meta.uid);
        let plan = plan(&job, pods.iter().map(|p| &**p), now_secs());
        let note = |reason, message: &str| Some(Note::normal("Job", "batch/v1", meta, reason, message.into()));
        let mut commands: Vec<Command> = plan
            .delete
            .into_iter()
            .map(|name| Command::Delete {
                resource: Pod::RESOURCE,
                key: ObjectKey::new(&meta.namespace, &name),
                note: note("SuccessfulDelete", "Deleted pod: {name}"),
            })
            .collect();
        commands.extend(plan.create.into_iter().map(|pod| Command::Create {
            object: Object::Pod(pod),
            note: note("SuccessfulCreate", "Created pod: {name}"),
        }));
        if job.status.as_ref() != Some(&plan.status) {
            let note = match (finished(job.status.as_ref()), finished(Some(&plan.status))) {
                (None, Some("Complete")) => note("Completed", "Job completed"),
                (None, Some(_)) => plan.status.conditions.last().map(|c| {
                    let reason =
                        if c.reason == "DeadlineExceeded" { "DeadlineExceeded" } else { "BackoffLimitExceeded" };
                    Note::warning("Job", "batch/v1", meta, reason, c.message.clone())
                }),
                _ => None,
            };
            let mut updated = (*job).clone();
            updated.status = Some(plan.status);
            commands.push(Command::UpdateStatus { object: Object::Job(updated), note });
        }
        commands
    }

    /// A running Job with an active deadline is looked at again when it passes.
    fn requeue_after(&self, key: &ObjectKey) -> Option<Duration> {
        let job = self.jobs.get(key)?;
        if finished(job.status.as_ref()).is_some() {
            return None;
        }
        let left = deadline(&job)? - now_secs();
        Some(Duration::from_secs(left.max(0) as u64 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{Container, JobSpec, PodSpec, PodStatus, PodTemplateSpec};

    fn job(completions: i32, parallelism: i32, backoff: i32) -> Job {
        Job {
            metadata: Some(ObjectMeta {
                name: "pi".into(),
                namespace: "default".into(),
                uid: "j-uid".into(),
                ..Default::default()
            }),
            spec: Some(JobSpec {
                completions: Some(completions),
                parallelism: Some(parallelism),
                backoff_limit: Some(backoff),
                template: Some(PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        restart_policy: "Never".into(),
                        containers: vec![Container { name: "c".into(), image: "x".into(), ..Default::default() }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(n: usize, phase: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: format!("pi-{n}"),
                owner_references: vec![OwnerReference {
                    uid: "j-uid".into(),
                    controller: Some(true),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus { phase: phase.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let p = plan(&job(3, 2, 6), &[], 1000);
        assert_eq!(p.create.len(), 2);
        let created = p.create[0].metadata.as_ref().unwrap();
        assert_eq!((created.labels["job-name"].as_str(), created.generate_name.as_str()), ("pi", "pi-"));
        assert_eq!(created.owner_references[0].uid, "j-uid");
        assert_eq!(p.status.start_time, skiff_proto::time::rfc3339(1000));
        let p = plan(&job(3, 2, 6), &[pod(0, "Succeeded"), pod(1, "Running")], 1000);
        assert_eq!(p.create.len(), 1, "one more to reach 3 with 2 at a time");
        let p = plan(&job(3, 2, 6), &[pod(0, "Succeeded"), pod(1, "Succeeded"), pod(2, "Succeeded")], 1000);
        assert!(p.create.is_empty());
        assert_eq!(p.status.conditions[0].r#type, "Complete");
        assert_eq!(finished(Some(&p.status)), Some("Complete"));
        assert_eq!(p.status.succeeded, 3);
    }

    #[test]
    fn gives_up_after_the_backoff_limit() {
        let pods = [pod(0, "Failed"), pod(1, "Failed"), pod(2, "Running")];
        let p = plan(&job(1, 1, 1), &pods, 1000);
        assert_eq!(p.status.conditions[0].reason, "BackoffLimitExceeded");
        assert_eq!(p.delete, ["pi-2"]);
        assert!(p.create.is_empty());
        // Failed pods within the limit are replaced.
        let p = plan(&job(1, 1, 3), &[pod(0, "Failed")], 1000);
        assert_eq!(p.create.len(), 1);
    }

    #[test]
    fn an_active_deadline_fails_the_job_and_is_when_it_is_looked_at_again() {
        let mut j = job(1, 1, 6);
        j.spec.as_mut().unwrap().active_deadline_seconds = Some(10);
        j.status = Some(JobStatus { start_time: skiff_proto::time::rfc3339(1000), ..Default::default() });
        assert_eq!(deadline(&j), Some(1010));
        assert!(plan(&j, &[pod(0, "Running")], 1009).delete.is_empty());
        let p = plan(&j, &[pod(0, "Running")], 1011);
        assert_eq!(p.status.conditions[0].reason, "DeadlineExceeded");
        assert_eq!(p.delete, ["pi-0"]);
    }

    #[test]
    fn a_plan_of_an_unchanged_job_changes_nothing() {
        let pods = [pod(0, "Running")];
        let mut j = job(1, 1, 6);
        j.status = Some(plan(&j, &pods, 1000).status);
        let again = plan(&j, &pods, 2000);
        assert!(again.create.is_empty() && again.delete.is_empty());
        assert_eq!(j.status.as_ref(), Some(&again.status), "no status write while nothing changes");
    }
}
