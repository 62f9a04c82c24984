//! The CronJob controller: a Job per scheduled time of a five-field cron schedule (UTC),
//! honouring `suspend`, `concurrencyPolicy` (Allow, Forbid, Replace), `startingDeadlineSeconds`
//! and the successful/failed job history limits. Jobs are named `<cronjob>-<minutes since the
//! epoch of the scheduled time>` as Kubernetes names them, so a retried reconcile never makes
//! two.
//!
//! [`plan`] is pure: the CronJob, its Jobs and the time in. [`CronJobs`] is the keyed
//! controller: a CronJob's key is queued by its own changes, by its Jobs', and at its next
//! scheduled time.

use crate::controller::{self, own_key, Cache, Command, Note, Object, Reconciler};
use crate::job::finished;
use crate::objects::{controller_ref, deleting};
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{CronJob, CronJobStatus, Job, ObjectMeta, ObjectReference, OwnerReference};
use skiff_proto::time::now_secs;
use std::sync::Arc;
use std::time::Duration;

/// One cron field: the values it allows.
fn field(spec: &str, lo: i64, hi: i64, names: &[&str]) -> Result<Vec<i64>, String> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<i64>().map_err(|_| format!("bad step in {part:?}"))?),
            None => (part, 1),
        };
        if step < 1 {
            return Err(format!("bad step in {part:?}"));
        }
        let value = |v: &str| -> Result<i64, String> {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
                return Ok(i as i64 + lo);
            }
            v.parse::<i64>().map_err(|_| format!("{v:?} is not a number"))
        };
        let (a, b) = match range {
            "*" | "?" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if part.contains('/') => (value(r)?, hi),
                None => (value(r)?, value(r)?),
            },
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{part:?} is out of range {lo}-{hi}"));
        }
        out.extend((a..=b).step_by(step as usize));
    }
    Ok(out)
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    minutes: Vec<i64>,
    hours: Vec<i64>,
    days: Vec<i64>,
    months: Vec<i64>,
    weekdays: Vec<i64>,
    any_day: bool,
    any_weekday: bool,
}

impl Schedule {
    /// `m h dom mon dow`, or the macros `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = match spec.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s => s,
        };
        let f: Vec<&str> = spec.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!("expected 5 fields (minute hour day-of-month month day-of-week), got {}", f.len()));
        }
        const MONTHS: &[&str] = &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        Ok(Schedule {
            minutes: field(f[0], 0, 59, &[])?,
            hours: field(f[1], 0, 23, &[])?,
            days: field(f[2], 1, 31, &[])?,
            months: field(f[3], 1, 12, MONTHS)?,
            // Day of week 7 is Sunday too.
            weekdays: field(f[4], 0, 7, DAYS)?.into_iter().map(|d| d % 7).collect(),
            any_day: f[2] == "*" || f[2] == "?",
            any_weekday: f[4] == "*" || f[4] == "?",
        })
    }

    /// Whether the minute starting at `secs` is scheduled (cron's rule: when both day fields
    /// are restricted, either may match).
    pub fn matches(&self, secs: i64) -> bool {
        let c = skiff_proto::time::civil(secs);
        let dom = self.days.contains(&c.day);
        let dow = self.weekdays.contains(&c.weekday);
        let day = match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        };
        self.minutes.contains(&c.minute) && self.hours.contains(&c.hour) && self.months.contains(&c.month) && day
    }

    /// The first scheduled minute after `now`, looking ahead at most a day.
    pub fn next(&self, now: i64) -> Option<i64> {
        let first = now - now.rem_euclid(60) + 60;
        (0..1440).map(|i| first + i * 60).find(|t| self.matches(*t))
    }

    /// The latest scheduled minute in (`after`, `now`], looking back at most a day.
    pub fn latest(&self, after: i64, now: i64) -> Option<i64> {
        let mut t = now - now.rem_euclid(60);
        let floor = after.max(now - 86_400);
        while t > floor {
            if self.matches(t) {
                return Some(t);
            }
            t -= 60;
        }
        None
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create: Option<Job>,
    /// Job names to delete (replaced or beyond the history limits).
    pub delete: Vec<String>,
    pub status: CronJobStatus,
}

fn name_of(job: &Job) -> &str {
    job.metadata.as_ref().map_or("", |m| m.name.as_str())
}

/// The Job for the time `at` scheduled, from the CronJob's template.
fn job_for(cj: &CronJob, meta: &ObjectMeta, at: i64) -> Job {
    let template = cj.spec.as_ref().and_then(|s| s.job_template.clone()).unwrap_or_default();
    let mut job_meta = ObjectMeta {
        name: format!("{}-{}", meta.name, at / 60),
        namespace: meta.namespace.clone(),
        labels: template.metadata.map(|m| m.labels).unwrap_or_default(),
        ..Default::default()
    };
    job_meta
        .annotations
        .insert("batch.kubernetes.io/cronjob-scheduled-timestamp".into(), skiff_proto::time::rfc3339(at));
    job_meta.owner_references = vec![OwnerReference {
        api_version: "batch/v1".into(),
        kind: "CronJob".into(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }];
    Job {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        metadata: Some(job_meta),
        spec: template.spec,
        status: None,
    }
}

/// What to do for `cj` given the Jobs it controls (others are left out), at `now`.
pub fn plan<'a>(cj: &CronJob, jobs: impl IntoIterator<Item = &'a Job>, now: i64) -> Result<Plan, String> {
    let meta = cj.metadata.clone().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let old = cj.status.clone().unwrap_or_default();
    let schedule = Schedule::parse(&spec.schedule)?;
    let mut mine: Vec<&Job> = jobs
        .into_iter()
        .filter(|j| j.metadata.as_ref().and_then(controller_ref).is_some_and(|r| r.uid == meta.uid))
        .collect();
    mine.sort_by(|a, b| {
        let created = |j: &Job| j.metadata.as_ref().map(|m| m.creation_timestamp.clone()).unwrap_or_default();
        created(a).cmp(&created(b))
    });
    let active: Vec<&Job> = mine.iter().copied().filter(|j| finished(j.status.as_ref()).is_none()).collect();
    let mut p = Plan::default();
    let last = [&old.last_schedule_time, &meta.creation_timestamp]
        .into_iter()
        .find(|t| !t.is_empty())
        .and_then(|t| skiff_proto::time::parse_rfc3339(t))
        .unwrap_or(now);
    let mut last_schedule = old.last_schedule_time.clone();
    if let Some(at) = schedule.latest(last, now).filter(|_| spec.suspend != Some(true)) {
        let too_late = spec.starting_deadline_seconds.is_some_and(|d| now - at > d);
        let job = job_for(cj, &meta, at);
        let exists = mine.iter().any(|j| name_of(j) == name_of(&job));
        let policy = if spec.concurrency_policy.is_empty() { "Allow" } else { spec.concurrency_policy.as_str() };
        let forbidden = policy == "Forbid" && !active.is_empty();
        if !too_late && !exists && !forbidden {
            if policy == "Replace" {
                p.delete.extend(active.iter().map(|j| name_of(j).to_string()));
            }
            p.create = Some(job);
            last_schedule = skiff_proto::time::rfc3339(at);
        }
    }
    // History limits, oldest first.
    let limits = [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ];
    for (kind, keep) in limits {
        let done: Vec<&Job> = mine.iter().copied().filter(|j| finished(j.status.as_ref()) == Some(kind)).collect();
        let keep = keep.max(0) as usize;
        if done.len() > keep {
            p.delete.extend(done[..done.len() - keep].iter().map(|j| name_of(j).to_string()));
        }
    }
    let active = active.iter().filter(|j| !p.delete.iter().any(|d| d == name_of(j)));
    let last_successful = mine
        .iter()
        .rev()
        .find(|j| finished(j.status.as_ref()) == Some("Complete"))
        .and_then(|j| j.status.as_ref())
        .map(|s| s.completion_time.clone())
        .filter(|t| !t.is_empty())
        .unwrap_or(old.last_successful_time);
    p.status = CronJobStatus {
        active: active
            .filter_map(|j| j.metadata.as_ref())
            .map(|m| ObjectReference {
                kind: "Job".into(),
                api_version: "batch/v1".into(),
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
                ..Default::default()
            })
            .collect(),
        last_schedule_time: last_schedule,
        last_successful_time: last_successful,
    };
    Ok(p)
}

/// The time the CronJob controller schedules by: real time, or (testing only) real time sped up
/// `speed` times from when the clock was made, so tests see minute schedules fire in seconds.
#[derive(Debug, Clone, Copy)]
pub struct CronClock {
    start: i64,
    speed: i64,
}

impl CronClock {
    pub fn new(speed: u32) -> CronClock {
        CronClock { start: now_secs(), speed: i64::from(speed.max(1)) }
    }

    pub fn now(&self) -> i64 {
        self.start + (now_secs() - self.start) * self.speed
    }

    /// How long in real time until this clock shows `at`.
    fn until(&self, at: i64) -> Duration {
        let left = (at - self.now()).max(0) as f64 / self.speed as f64;
        Duration::from_secs_f64(left)
    }
}

/// The CronJob controller over the master's caches.
pub struct CronJobs {
    pub cron_jobs: Store<CronJob>,
    pub jobs: Store<Job>,
    pub clock: CronClock,
}

impl Reconciler for CronJobs {
    const NAME: &'static str = "cronjob controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.cron_jobs.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.cron_jobs, queue, self, |_, c| own_key(c)),
            controller::on_changes(&self.jobs, queue, self, |_, c: &Change<Job>| {
                controller::controllers_of(c, "CronJob")
            }),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.cron_jobs, &self.jobs]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(cj) = self.cron_jobs.get(key) else { return Vec::new() };
        let Some(meta) = cj.metadata.as_ref().filter(|m| !deleting(m)) else { return Vec::new() };
        let jobs = self.jobs.owned_by(&meta.uid);
        let plan = match plan(&cj, jobs.iter().map(|j| &**j), self.clock.now()) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::debug!("cronjob {key}: {e}");
                return Vec::new();
            }
        };
        let note = |reason, message: &str| Some(Note::normal("CronJob", "batch/v1", meta, reason, message.into()));
        let mut commands: Vec<Command> = plan
            .delete
            .into_iter()
            .map(|name| Command::Delete {
                resource: Job::RESOURCE,
                key: ObjectKey::new(&meta.namespace, &name),
                note: note("SuccessfulDelete", "Deleted job {name}"),
            })
            .collect();
        if let Some(job) = plan.create {
            commands.push(Command::Create {
                object: Object::Job(job),
                note: note("SuccessfulCreate", "Created job {name}"),
            });
        }
        if cj.status.as_ref() != Some(&plan.status) {
            let mut updated = (*cj).clone();
            updated.status = Some(plan.status);
            commands.push(Command::UpdateStatus { object: Object::CronJob(updated), note: None });
        }
        commands
    }

    /// A CronJob is looked at again at its next scheduled minute (or in a day, if none comes
    /// sooner).
    fn requeue_after(&self, key: &ObjectKey) -> Option<Duration> {
        let cj = self.cron_jobs.get(key)?;
        let schedule = Schedule::parse(&cj.spec.as_ref()?.schedule).ok()?;
        let now = self.clock.now();
        Some(self.clock.until(schedule.next(now).unwrap_or(now + 86_400)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn at(ts: &str) -> i64 {
        skiff_proto::time::parse_rfc3339(ts).unwrap()
    }

    #[test]
    fn schedules_parse_and_match_like_cron() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        assert!(s.matches(at("2026-11-23T09:45:00Z")), "a Monday");
        assert!(!s.matches(at("2026-11-22T09:45:00Z")), "a Sunday");
        assert!(!s.matches(at("2026-11-23T09:50:00Z")));
        assert!(Schedule::parse("@hourly").unwrap().matches(at("2026-11-22T13:00:00Z")));
        assert!(Schedule::parse("0 0 1 * 0").unwrap().matches(at("2026-11-22T00:00:00Z")), "either day field");
        assert!(Schedule::parse("* * * *").unwrap_err().contains("5 fields"));
        assert!(Schedule::parse("61 * * * *").unwrap_err().contains("out of range"));
        assert!(Schedule::parse("0 0 * * 7").unwrap().matches(at("2026-11-22T00:00:00Z")), "7 is Sunday");
        assert_eq!(
            Schedule::parse("*/5 * * * *").unwrap().latest(at("2026-11-22T10:00:00Z"), at("2026-11-22T10:12:30Z")),
            Some(at("2026-11-22T10:10:00Z"))
        );
    }

    fn cj(policy: &str) -> CronJob {
        typed(
            json!({"metadata": {"name": "tick", "namespace": "default", "uid": "cj-uid", "creationTimestamp": "2026-11-22T10:00:00Z"},
               "spec": {"schedule": "*/5 * * * *", "concurrencyPolicy": policy,
                        "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}}),
        )
    }

    fn job(name: &str, done: Option<&str>, created: &str) -> Job {
        let conditions = done.map(|k| json!([{"type": k, "status": "True"}])).unwrap_or(json!([]));
        typed(
            json!({"metadata": {"name": name, "creationTimestamp": created, "ownerReferences": [{"uid": "cj-uid", "controller": true}]},
               "status": {"conditions": conditions}}),
        )
    }

    #[test]
    fn makes_one_job_per_scheduled_time_named_by_it() {
        let now = at("2026-11-22T10:06:00Z");
        let p = plan(&cj("Allow"), &[], now).unwrap();
        let j = p.create.unwrap();
        assert_eq!(name_of(&j), format!("tick-{}", at("2026-11-22T10:05:00Z") / 60));
        assert_eq!(j.metadata.unwrap().owner_references[0].uid, "cj-uid");
        assert_eq!(p.status.last_schedule_time, "2026-11-22T10:05:00Z");
        // The same minute again (a retried reconcile): nothing new.
        let mut c = cj("Allow");
        c.status = Some(p.status.clone());
        let again = plan(&c, &[], now).unwrap();
        assert!(again.create.is_none());
        assert_eq!(again.status, p.status, "no status write while nothing changes");
        // Looked at again at the next scheduled minute.
        let schedule = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(schedule.next(now), Some(at("2026-11-22T10:10:00Z")));
        assert_eq!(schedule.next(at("2026-11-22T10:10:00Z")), Some(at("2026-11-22T10:15:00Z")));
    }

    #[test]
    fn concurrency_policies_and_history_limits() {
        let now = at("2026-11-22T10:06:00Z");
        let running = job("tick-1", None, "2026-11-22T10:00:00Z");
        assert!(plan(&cj("Forbid"), std::slice::from_ref(&running), now).unwrap().create.is_none());
        let p = plan(&cj("Replace"), std::slice::from_ref(&running), now).unwrap();
        assert!(p.create.is_some());
        assert_eq!(p.delete, ["tick-1"]);
        let done: Vec<Job> =
            (0..5).map(|i| job(&format!("ok-{i}"), Some("Complete"), &format!("2026-11-22T09:0{i}:00Z"))).collect();
        let p = plan(&cj("Allow"), &done, now).unwrap();
        assert_eq!(p.delete, ["ok-0", "ok-1"], "3 successful jobs are kept");
    }
}
