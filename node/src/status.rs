//! Pure pod logic: what to do next with each container (start, restart after back-off, wait)
//! and the pod status Kubernetes users read (phase, conditions, per-container states), both
//! computed from what the containers' instance directories say. No I/O here.

use crate::shim::Exited;
use serde_json::{json, Value};
use std::time::Duration;

/// What one container's instances say, newest last.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// Runs so far (0: never started); restartCount is `runs - 1`.
    pub runs: u32,
    pub running: Option<String>,
    /// The latest run's exit, if it has exited.
    pub exited: Option<Exited>,
    /// The run before the latest, if any exited.
    pub previous: Option<Exited>,
    /// Why it is not running yet (ErrImagePull, CreateContainerConfigError…).
    pub waiting: Option<(String, String)>,
    pub ready: bool,
    pub container_id: String,
    /// Host pid of the running run's init, and that run's directory (for the probers).
    pub pid: Option<i32>,
    pub run_dir: Option<std::path::PathBuf>,
    /// An init container with `restartPolicy: Always`: a sidecar, running beside the app
    /// containers.
    pub sidecar: bool,
    /// Running and past its startup probe and postStart hook (the next init container may
    /// start after a sidecar once it is).
    pub started: bool,
}

/// The next step for one container.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Start,
    /// Exited and will be restarted once the back-off has passed.
    BackOff(Duration),
    Wait,
    /// Done: exited and the restart policy says it stays so.
    Done,
}

/// Kubernetes' container restart back-off: `base`, doubling per restart, capped at `max`.
pub fn back_off(restarts: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32 << restarts.saturating_sub(1).min(16)).min(max)
}

pub fn restarts(policy: &str, exit_code: i32, init: bool) -> bool {
    match policy {
        "Never" => false,
        // Init containers are retried under Always as under OnFailure: until they succeed.
        "OnFailure" => exit_code != 0,
        _ if init => exit_code != 0,
        _ => true,
    }
}

/// What to do with a container, given the seconds since its latest exit.
pub fn step(o: &Observed, policy: &str, init: bool, since_exit: Duration, base: Duration, max: Duration) -> Step {
    if o.runs == 0 {
        return Step::Start;
    }
    let Some(e) = &o.exited else { return Step::Wait };
    if !restarts(policy, e.exit_code, init) {
        return Step::Done;
    }
    let delay = back_off(o.runs, base, max);
    if since_exit >= delay {
        Step::Start
    } else {
        Step::BackOff(delay - since_exit)
    }
}

fn terminated(e: &Exited, container_id: &str) -> Value {
    json!({"terminated": {
        "exitCode": e.exit_code, "signal": e.signal, "reason": e.reason, "message": e.message,
        "startedAt": e.started_at, "finishedAt": e.finished_at, "containerID": container_id,
    }})
}

/// One entry of `containerStatuses` / `initContainerStatuses`.
pub fn container_status(o: &Observed, step: &Step, pod_name: &str, default_waiting: &str) -> Value {
    let (state, last) = match (&o.running, &o.exited, step) {
        (Some(started), _, _) => (json!({"running": {"startedAt": started}}), o.previous.as_ref()),
        (None, Some(e), Step::BackOff(d)) => (
            json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": format!("back-off {}s restarting failed container={} pod={pod_name}", d.as_secs().max(1), o.name)}}),
            Some(e),
        ),
        (None, Some(e), _) => (terminated(e, &o.container_id), o.previous.as_ref()),
        (None, None, _) => {
            let (reason, message) = o.waiting.clone().unwrap_or((default_waiting.to_string(), String::new()));
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            (json!({ "waiting": w }), o.previous.as_ref())
        }
    };
    let mut s = json!({
        "name": o.name, "state": state, "ready": o.ready && o.running.is_some(),
        "restartCount": o.runs.saturating_sub(1), "image": o.image, "imageID": o.image_id,
        "started": o.running.is_some(),
    });
    if !o.container_id.is_empty() {
        s["containerID"] = json!(o.container_id);
    }
    if let Some(e) = last {
        s["lastState"] = terminated(e, "");
    }
    s
}

fn condition(kind: &str, ok: bool, reason: &str) -> Value {
    let mut c = json!({"type": kind, "status": if ok { "True" } else { "False" }});
    if !ok && !reason.is_empty() {
        c["reason"] = json!(reason);
    }
    c
}

/// Phase and conditions from the init and app containers' observations and steps. Sidecars
/// count as initialized once started, count towards readiness, and keep a pod whose app
/// containers have finished Running until they have stopped too.
pub fn phase_and_conditions(init: &[(Observed, Step)], app: &[(Observed, Step)]) -> (String, Vec<Value>) {
    type Observations<'a> = Vec<&'a (Observed, Step)>;
    let (sidecars, regular): (Observations, Observations) = init.iter().partition(|(o, _)| o.sidecar);
    let init_failed =
        regular.iter().any(|(o, s)| *s == Step::Done && o.exited.as_ref().is_some_and(|e| e.exit_code != 0));
    // Once the app containers have run, the pod stays initialized whatever a sidecar does.
    let initialized = app.iter().any(|(o, _)| o.runs > 0)
        || (regular.iter().all(|(o, _)| o.exited.as_ref().is_some_and(|e| e.exit_code == 0))
            && sidecars.iter().all(|(o, _)| o.started));
    let all_started = app.iter().all(|(o, _)| o.runs > 0);
    // Running, or exited and about to be restarted (a first start still creating is Pending).
    let any_active = app.iter().any(|(o, s)| {
        o.running.is_some() || (o.exited.is_some() && *s != Step::Done) || (o.runs > 1 && o.exited.is_none())
    });
    let all_done = app.iter().all(|(_, s)| *s == Step::Done);
    let sidecar_running = sidecars.iter().any(|(o, _)| o.running.is_some());
    let phase = if init_failed {
        "Failed"
    } else if !initialized || !all_started {
        "Pending"
    } else if all_done && sidecar_running {
        "Running"
    } else if all_done {
        if app.iter().all(|(o, _)| o.exited.as_ref().is_some_and(|e| e.exit_code == 0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if any_active {
        "Running"
    } else {
        "Pending"
    };
    let ready = initialized && app.iter().chain(sidecars.iter().copied()).all(|(o, _)| o.running.is_some() && o.ready);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let not_ready_reason = if terminal { "PodCompleted" } else { "ContainersNotReady" };
    let conditions = vec![
        condition("PodScheduled", true, ""),
        condition("Initialized", initialized, "ContainersNotInitialized"),
        condition("ContainersReady", ready, not_ready_reason),
        condition("Ready", ready, not_ready_reason),
    ];
    (phase.to_string(), conditions)
}

/// The conditions the node writes.
const OWNED: [&str; 4] = ["PodScheduled", "Initialized", "ContainersReady", "Ready"];

/// Keeps the conditions others wrote (`old`: the pod's stored conditions), and holds Ready
/// back while a readiness gate's condition is missing or not True, in the kubelet's words.
pub fn with_others(conditions: &mut Vec<Value>, old: &Value, gates: &[skiff_proto::api::PodReadinessGate]) {
    let others: Vec<Value> =
        old.as_array().into_iter().flatten().filter(|c| !OWNED.iter().any(|o| c["type"] == *o)).cloned().collect();
    let mut unready = Vec::new();
    for gate in gates {
        match others.iter().find(|c| c["type"] == gate.condition_type.as_str()) {
            None => unready.push(format!(
                "corresponding condition of pod readiness gate {:?} does not exist.",
                gate.condition_type
            )),
            Some(c) if c["status"] != "True" => unready.push(format!(
                "the status of pod readiness gate {:?} is not \"True\", but {}",
                gate.condition_type,
                c["status"].as_str().unwrap_or_default()
            )),
            Some(_) => {}
        }
    }
    if let Some(ready) = conditions.iter_mut().find(|c| c["type"] == "Ready" && c["status"] == "True") {
        if !unready.is_empty() {
            *ready = json!({"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady", "message": unready.join(", ")});
        }
    }
    conditions.extend(others);
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn exited(code: i32) -> Observed {
        Observed {
            name: "c".into(),
            runs: 1,
            exited: Some(Exited { exit_code: code, reason: "Error".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let b = |n| back_off(n, 10 * S, 300 * S).as_secs();
        assert_eq!([b(1), b(2), b(3), b(6), b(40)], [10, 20, 40, 300, 300]);
    }

    #[test]
    fn restart_policy_decides_what_happens_after_an_exit() {
        let o = exited(1);
        assert_eq!(step(&o, "Always", false, 3 * S, 10 * S, 300 * S), Step::BackOff(7 * S));
        assert_eq!(step(&o, "Always", false, 10 * S, 10 * S, 300 * S), Step::Start);
        assert_eq!(step(&o, "Never", false, 99 * S, 10 * S, 300 * S), Step::Done);
        assert_eq!(step(&exited(0), "OnFailure", false, 99 * S, 10 * S, 300 * S), Step::Done);
        assert_eq!(step(&exited(0), "Always", true, 99 * S, 10 * S, 300 * S), Step::Done, "init succeeded");
        assert_eq!(step(&Observed::default(), "Always", false, S, S, S), Step::Start);
    }

    #[test]
    fn a_crashing_container_shows_crash_loop_back_off_with_its_last_exit() {
        let o = exited(1);
        let s = container_status(&o, &Step::BackOff(5 * S), "web", "ContainerCreating");
        assert_eq!(s["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(s["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(s["restartCount"], 0);
    }

    #[test]
    fn phases_follow_the_containers() {
        let running = Observed { runs: 1, running: Some("t".into()), ready: true, ..Default::default() };
        let (p, c) = phase_and_conditions(&[], &[(running.clone(), Step::Wait)]);
        assert_eq!(p, "Running");
        assert_eq!(c[3]["status"], "True");
        let (p, _) = phase_and_conditions(&[(exited(1), Step::BackOff(S))], &[(Observed::default(), Step::Wait)]);
        assert_eq!(p, "Pending", "init retrying");
        let (p, _) = phase_and_conditions(&[], &[(exited(0), Step::Done)]);
        assert_eq!(p, "Succeeded");
        let (p, c) = phase_and_conditions(&[], &[(exited(0), Step::Done), (exited(2), Step::Done)]);
        assert_eq!(p, "Failed");
        assert_eq!(c[3]["reason"], "PodCompleted");
        let (p, _) = phase_and_conditions(&[(exited(1), Step::Done)], &[(Observed::default(), Step::Wait)]);
        assert_eq!(p, "Failed", "init failed under Never");
    }

    #[test]
    fn sidecars_initialize_once_started_count_for_readiness_and_hold_a_finished_pod() {
        let sidecar = |started: bool, ready: bool| Observed {
            runs: 1,
            running: Some("t".into()),
            sidecar: true,
            started,
            ready,
            ..Default::default()
        };
        let app_running = Observed { runs: 1, running: Some("t".into()), ready: true, ..Default::default() };
        // Not yet started: the pod is still initializing.
        let (p, c) = phase_and_conditions(&[(sidecar(false, false), Step::Wait)], &[(Observed::default(), Step::Wait)]);
        assert_eq!((p.as_str(), &c[1]["status"]), ("Pending", &json!("False")));
        // Started: initialized; Ready only while the sidecar is ready too.
        let (p, c) = phase_and_conditions(&[(sidecar(true, false), Step::Wait)], &[(app_running.clone(), Step::Wait)]);
        assert_eq!((p.as_str(), &c[1]["status"], &c[3]["status"]), ("Running", &json!("True"), &json!("False")));
        let (_, c) = phase_and_conditions(&[(sidecar(true, true), Step::Wait)], &[(app_running, Step::Wait)]);
        assert_eq!(c[3]["status"], "True");
        // The app finished: Running until the sidecar has stopped, then Succeeded.
        let (p, _) = phase_and_conditions(&[(sidecar(true, true), Step::Wait)], &[(exited(0), Step::Done)]);
        assert_eq!(p, "Running");
        let stopped = Observed { sidecar: true, ..exited(143) };
        let (p, _) = phase_and_conditions(&[(stopped, Step::Done)], &[(exited(0), Step::Done)]);
        assert_eq!(p, "Succeeded", "a sidecar's exit does not fail the pod");
    }

    #[test]
    fn readiness_gates_hold_ready_and_others_conditions_are_kept() {
        let gates: Vec<skiff_proto::api::PodReadinessGate> =
            serde_json::from_value(json!([{"conditionType": "a.io/x"}, {"conditionType": "a.io/y"}])).unwrap();
        let ours = || vec![condition("ContainersReady", true, ""), condition("Ready", true, "")];
        let old = json!([{"type": "Ready", "status": "False"}, {"type": "a.io/x", "status": "False"}]);
        let mut conditions = ours();
        with_others(&mut conditions, &old, &gates);
        assert_eq!(conditions[1]["reason"], "ReadinessGatesNotReady");
        assert_eq!(
            conditions[1]["message"],
            "the status of pod readiness gate \"a.io/x\" is not \"True\", but False, corresponding condition of pod \
             readiness gate \"a.io/y\" does not exist."
        );
        assert_eq!(conditions.len(), 3, "the gate's condition is kept, the old Ready replaced: {conditions:?}");
        let old = json!([{"type": "a.io/x", "status": "True"}, {"type": "a.io/y", "status": "True"}]);
        let mut conditions = ours();
        with_others(&mut conditions, &old, &gates);
        assert_eq!(conditions[1]["status"], "True");
    }
}
