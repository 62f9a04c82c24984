//! The CronJob controller: a Job per scheduled time of a five-field cron schedule (UTC),
//! honouring `suspend`, `concurrencyPolicy` (Allow, Forbid, Replace), `startingDeadlineSeconds`
//! and the successful/failed job history limits. Jobs are named `<cronjob>-<minutes since the
//! epoch of the scheduled time>` as Kubernetes names them, so a retried round never makes two.

use crate::job::finished;
use crate::objects::json::controller_uid;
use serde_json::{json, Value};

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
    pub create: Option<Value>,
    /// Job names to delete (replaced or beyond the history limits).
    pub delete: Vec<String>,
    pub status: Value,
}

pub fn plan(cj: &Value, jobs: &[Value], now: i64) -> Result<Plan, String> {
    let uid = cj["metadata"]["uid"].as_str().unwrap_or_default();
    let name = cj["metadata"]["name"].as_str().unwrap_or("cronjob");
    let spec = &cj["spec"];
    let schedule = Schedule::parse(spec["schedule"].as_str().unwrap_or_default())?;
    let mut mine: Vec<&Value> = jobs.iter().filter(|j| controller_uid(j) == Some(uid)).collect();
    mine.sort_by_key(|j| j["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_string());
    let active: Vec<&&Value> = mine.iter().filter(|j| finished(j).is_none()).collect();
    let mut p = Plan::default();
    let last = cj["status"]["lastScheduleTime"]
        .as_str()
        .or(cj["metadata"]["creationTimestamp"].as_str())
        .and_then(skiff_proto::time::parse_rfc3339)
        .unwrap_or(now);
    let mut last_schedule = cj["status"]["lastScheduleTime"].clone();
    let suspended = spec["suspend"].as_bool().unwrap_or(false);
    if let Some(at) = schedule.latest(last, now).filter(|_| !suspended) {
        let too_late = spec["startingDeadlineSeconds"].as_i64().is_some_and(|d| now - at > d);
        let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
        let job_name = format!("{name}-{}", at / 60);
        let exists = mine.iter().any(|j| j["metadata"]["name"] == job_name.as_str());
        let forbidden = policy == "Forbid" && !active.is_empty();
        if !too_late && !exists && !forbidden {
            if policy == "Replace" {
                p.delete.extend(active.iter().map(|j| j["metadata"]["name"].as_str().unwrap_or_default().to_string()));
            }
            let template = &spec["jobTemplate"];
            let mut labels = template["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            p.create = Some(json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {
                    "name": job_name, "namespace": cj["metadata"]["namespace"], "labels": labels,
                    "annotations": {"batch.kubernetes.io/cronjob-scheduled-timestamp": skiff_proto::time::rfc3339(at)},
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": name, "uid": uid,
                                         "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": template["spec"],
            }));
            last_schedule = json!(skiff_proto::time::rfc3339(at));
        }
    }
    // History limits, oldest first.
    for (kind, default, key) in [("Complete", 3, "successfulJobsHistoryLimit"), ("Failed", 1, "failedJobsHistoryLimit")]
    {
        let done: Vec<&&Value> = mine.iter().filter(|j| finished(j) == Some(kind)).collect();
        let keep = spec[key].as_i64().unwrap_or(default).max(0) as usize;
        if done.len() > keep {
            p.delete.extend(
                done[..done.len() - keep]
                    .iter()
                    .map(|j| j["metadata"]["name"].as_str().unwrap_or_default().to_string()),
            );
        }
    }
    let active_refs: Vec<Value> = active
        .iter()
        .filter(|j| !p.delete.iter().any(|d| j["metadata"]["name"] == d.as_str()))
        .map(|j| json!({"kind": "Job", "apiVersion": "batch/v1", "name": j["metadata"]["name"], "namespace": j["metadata"]["namespace"], "uid": j["metadata"]["uid"]}))
        .collect();
    let mut status = json!({"active": active_refs});
    if !last_schedule.is_null() {
        status["lastScheduleTime"] = last_schedule;
    }
    if let Some(t) =
        mine.iter().rev().find(|j| finished(j) == Some("Complete")).and_then(|j| j["status"]["completionTime"].as_str())
    {
        status["lastSuccessfulTime"] = json!(t);
    }
    p.status = status;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn cj(policy: &str) -> Value {
        json!({"metadata": {"name": "tick", "namespace": "default", "uid": "cj-uid", "creationTimestamp": "2026-11-22T10:00:00Z"},
               "spec": {"schedule": "*/5 * * * *", "concurrencyPolicy": policy,
                        "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}})
    }

    fn job(name: &str, done: Option<&str>, created: &str) -> Value {
        let conditions = done.map(|k| json!([{"type": k, "status": "True"}])).unwrap_or(json!([]));
        json!({"metadata": {"name": name, "creationTimestamp": created, "ownerReferences": [{"uid": "cj-uid", "controller": true}]},
               "status": {"conditions": conditions}})
    }

    #[test]
    fn makes_one_job_per_scheduled_time_named_by_it() {
        let now = at("2026-11-22T10:06:00Z");
        let p = plan(&cj("Allow"), &[], now).unwrap();
        let j = p.create.unwrap();
        assert_eq!(j["metadata"]["name"], format!("tick-{}", at("2026-11-22T10:05:00Z") / 60));
        assert_eq!(p.status["lastScheduleTime"], "2026-11-22T10:05:00Z");
        // The same minute again (a retried round): nothing new.
        let mut c = cj("Allow");
        c["status"]["lastScheduleTime"] = json!("2026-11-22T10:05:00Z");
        assert!(plan(&c, &[], now).unwrap().create.is_none());
    }

    #[test]
    fn concurrency_policies_and_history_limits() {
        let now = at("2026-11-22T10:06:00Z");
        let running = job("tick-1", None, "2026-11-22T10:00:00Z");
        assert!(plan(&cj("Forbid"), std::slice::from_ref(&running), now).unwrap().create.is_none());
        let p = plan(&cj("Replace"), std::slice::from_ref(&running), now).unwrap();
        assert!(p.create.is_some());
        assert_eq!(p.delete, ["tick-1"]);
        let done: Vec<Value> =
            (0..5).map(|i| job(&format!("ok-{i}"), Some("Complete"), &format!("2026-11-22T09:0{i}:00Z"))).collect();
        let p = plan(&cj("Allow"), &done, now).unwrap();
        assert_eq!(p.delete, ["ok-0", "ok-1"], "3 successful jobs are kept");
    }
}
