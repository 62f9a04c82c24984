//! Jobs and CronJobs on a real node: completions with parallelism, the backoff limit, and a
//! cron schedule creating a Job at the next minute.

use serde_json::Value;
use skiff_tests::{wait_for, Cluster};
use std::time::Duration;

fn condition(obj: &Value, kind: &str) -> Option<Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind && c["status"] == "True").cloned()
}

#[test]
fn jobs_complete_or_give_up_and_cron_jobs_start_them_on_schedule() {
    let c = Cluster::with_nodes(3, 1, &[]);
    c.apply_yaml(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: five}
spec:
  completions: 5
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: "busybox:test", command: [sh, -c, "echo worked"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: doomed}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: "busybox:test", command: [sh, -c, "exit 1"]}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: work, image: "busybox:test", command: [sh, -c, "echo tick"]}]
"#,
    );
    // phase: five completions, two at a time
    let five = wait_for(Duration::from_secs(90), "job five Complete", || {
        let j = c.get_json("jobs", "five")?;
        condition(&j, "Complete").map(|_| j)
    });
    assert_eq!(five["status"]["succeeded"], 5);
    let pods = c.ctl_ok(&["get", "pods", "-l", "job-name=five", "-o", "json"]);
    let pods: Value = serde_json::from_str(&pods).unwrap();
    // Exactly five succeeded pods (a pod that failed to start under load is retried within the
    // backoff limit, as Kubernetes does, and stays listed as Failed).
    let phases: Vec<&str> =
        pods["items"].as_array().unwrap().iter().filter_map(|p| p["status"]["phase"].as_str()).collect();
    assert_eq!(phases.iter().filter(|p| **p == "Succeeded").count(), 5, "{phases:?}");
    assert_eq!(
        five["status"]["failed"].as_i64().unwrap_or(0),
        phases.iter().filter(|p| **p == "Failed").count() as i64
    );

    // phase: a failing job stops after backoffLimit + 1 failed pods
    let doomed = wait_for(Duration::from_secs(60), "job doomed Failed", || {
        let j = c.get_json("jobs", "doomed")?;
        condition(&j, "Failed").map(|_| j)
    });
    assert_eq!(condition(&doomed, "Failed").unwrap()["reason"], "BackoffLimitExceeded");
    assert_eq!(doomed["status"]["failed"], 2);

    // phase: the cron job starts a Job at the next minute, named by its scheduled time
    let job = wait_for(Duration::from_secs(90), "a Job from the cron job", || {
        let out = c.ctl_ok(&["get", "jobs", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"]
            .as_array()?
            .iter()
            .find(|j| j["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("tick-")))
            .cloned()
    });
    let minutes: i64 = job["metadata"]["name"].as_str().unwrap().trim_start_matches("tick-").parse().unwrap();
    let cj = wait_for(Duration::from_secs(30), "lastScheduleTime", || {
        let cj = c.get_json("cronjobs", "tick")?;
        cj["status"]["lastScheduleTime"].as_str().map(String::from)
    });
    assert_eq!(skiff_proto::time::parse_rfc3339(&cj), Some(minutes * 60));
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(60), "the cron job's Job to complete", || {
        let j = c.get_json("jobs", &name)?;
        condition(&j, "Complete").map(|_| ())
    });
}

/// Jobs of CronJob `cj` that have not finished.
fn active_jobs(c: &Cluster, cj: &str) -> (usize, usize) {
    let out = c.ctl_ok(&["get", "jobs", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mine: Vec<&Value> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(&format!("{cj}-"))))
        .collect();
    let active = mine.iter().filter(|j| condition(j, "Complete").is_none() && condition(j, "Failed").is_none()).count();
    (mine.len(), active)
}

#[test]
fn a_minute_cron_job_with_forbid_never_overlaps_on_a_fast_test_clock() {
    // The CronJob controller's clock runs 30× fast: "* * * * *" fires every 2 s.
    let c = Cluster::with_nodes(3, 1, &["--cron-clock-speed", "30"]);
    let cron = |name: &str, policy: &str| {
        format!(
            r#"
apiVersion: batch/v1
kind: CronJob
metadata: {{name: {name}}}
spec:
  schedule: "* * * * *"
  concurrencyPolicy: {policy}
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 0
          containers: [{{name: work, image: "busybox:test", command: [sleep, "6"]}}]
"#
        )
    };
    // Each run lasts 6 s, three schedule periods: Forbid must skip, Allow overlaps.
    c.apply_yaml(&(cron("forbid", "Forbid") + "---" + &cron("allow", "Allow")));
    let (mut forbid_max, mut allow_max) = (0, 0);
    wait_for(Duration::from_secs(120), "two Forbid runs one after the other, and Allow overlapping", || {
        let (forbid_total, forbid_active) = active_jobs(&c, "forbid");
        let (_, allow_active) = active_jobs(&c, "allow");
        forbid_max = forbid_max.max(forbid_active);
        allow_max = allow_max.max(allow_active);
        assert!(forbid_max <= 1, "Forbid ran {forbid_max} jobs at once");
        (forbid_total >= 2 && allow_max >= 2).then_some(())
    });
}
