//! The checkers' verdicts as report lines. Each says how much it checked and fails below the
//! run's [`Floors`]: a check that looked at nothing has not passed, however clean its nothing.

use crate::kv::Acked;
use crate::linearizability::{self, Event, Op, Outcome};
use crate::report::Check;
use crate::rollouts::SurgeLog;
use crate::watch::{self, Received};
use crate::watchers::WatchLog;
use std::collections::{BTreeMap, HashSet};

/// The least a run must have done for its checks to mean something.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Floors {
    /// Completed (not unknown) operations on every workload key.
    pub ops_per_key: u64,
    /// Writes the cluster acknowledged.
    pub acked_writes: u64,
    /// Events each watcher received.
    pub watch_events: u64,
    /// Pod events the surge check replayed (runs with Deployments).
    pub pod_events: u64,
    /// Rollouts the API workload started (runs with Deployments).
    pub rollouts: u64,
    /// The largest share of writes that may end without a reply.
    pub max_unknown_share: f64,
}

impl Default for Floors {
    /// What the shortest run in the test suite (15 s, 3 masters, 6 clients) clears with room
    /// to spare on a 2-core machine.
    fn default() -> Self {
        Floors {
            ops_per_key: 20,
            acked_writes: 100,
            watch_events: 100,
            pod_events: 10,
            rollouts: 1,
            max_unknown_share: 0.25,
        }
    }
}

/// Linearizability of the register history, per key from its value in `initial` (absent if
/// not there); every one of `keys` must have at least `floor` completed operations.
pub fn linearizability(
    events: &[Event],
    initial: &BTreeMap<String, linearizability::Value>,
    keys: &[String],
    floor: u64,
) -> Check {
    let name = "linearizability".to_string();
    let mut completed: BTreeMap<&str, u64> = keys.iter().map(|k| (k.as_str(), 0)).collect();
    for e in events.iter().filter(|e| e.outcome != Outcome::Unknown) {
        *completed.entry(e.key.as_str()).or_default() += 1;
    }
    let thin: Vec<String> = completed.iter().filter(|(_, n)| **n < floor).map(|(k, n)| format!("{k} ({n})")).collect();
    if completed.is_empty() || !thin.is_empty() {
        let detail = format!(
            "too little to judge: {} operations; keys below the floor of {floor} completed operations: {}",
            events.len(),
            if completed.is_empty() { "no keys at all".to_string() } else { thin.join(", ") }
        );
        return Check { name, passed: false, detail };
    }
    let fewest = completed.values().min().copied().unwrap_or(0);
    match linearizability::check_from(events, initial) {
        Ok(()) => Check {
            name,
            passed: true,
            detail: format!(
                "{} operations on {} keys have a linearization (at least {fewest} completed per key)",
                events.len(),
                completed.len()
            ),
        },
        Err(violations) => {
            let mut detail = format!("{} of {} keys have no linearization", violations.len(), completed.len());
            for v in violations.iter().take(3) {
                if v.undecided {
                    detail.push_str(&format!("\n    key {}: undecided, the search exceeded its state budget", v.key));
                    continue;
                }
                match &v.state_before {
                    None => detail.push_str(&format!("\n    key {} — minimal failing sub-history:", v.key)),
                    Some(state) => detail.push_str(&format!(
                        "\n    key {} — after the longest linearizable prefix the value is {state:?}, and none of these can go next:",
                        v.key
                    )),
                }
                for e in &v.minimal {
                    let complete = if e.complete == u64::MAX { "never".into() } else { format!("{} µs", e.complete) };
                    detail.push_str(&format!(
                        "\n      client {} {:?} → {:?}  [{} µs .. {complete}]",
                        e.client, e.op, e.outcome, e.invoke
                    ));
                }
            }
            Check { name, passed: false, detail }
        }
    }
}

/// The share of writes (puts, deletes, compare-and-sets) that never got a reply: a run where
/// most writes ended unknown checked little, whatever the search says.
pub fn unknown_writes(events: &[Event], max_share: f64) -> Check {
    let writes: Vec<&Event> = events.iter().filter(|e| !matches!(e.op, Op::Get)).collect();
    let unknown = writes.iter().filter(|e| e.outcome == Outcome::Unknown).count();
    let share = if writes.is_empty() { 1.0 } else { unknown as f64 / writes.len() as f64 };
    Check {
        name: "unknown writes".into(),
        passed: !writes.is_empty() && share <= max_share,
        detail: format!(
            "{unknown} of {} writes ended without a reply ({:.1} %, at most {:.1} % allowed)",
            writes.len(),
            share * 100.0,
            max_share * 100.0
        ),
    }
}

/// Every client saw header revisions only grow, over at least `floor` replies with one.
pub fn revision_monotonicity(regressions: &[&String], replies: usize, floor: u64) -> Check {
    let name = "revision monotonicity".to_string();
    if (replies as u64) < floor {
        let detail = format!("too little to judge: {replies} replies carried a revision, floor {floor}");
        return Check { name, passed: false, detail };
    }
    Check {
        name,
        passed: regressions.is_empty(),
        detail: if regressions.is_empty() {
            format!("every client saw revisions only grow over {replies} replies")
        } else {
            format!("{} regressions, first: {}", regressions.len(), regressions[0])
        },
    }
}

/// Every acknowledged write is in the committed history; at least `floor` were acknowledged.
pub fn acknowledged_writes(acked: &[Acked], history: &[Received], floor: u64) -> Check {
    let name = "acknowledged writes".to_string();
    if (acked.len() as u64) < floor {
        let detail = format!("too little to judge: {} writes acknowledged, floor {floor}", acked.len());
        return Check { name, passed: false, detail };
    }
    let committed: HashSet<(i64, &str)> = history.iter().map(|r| (r.revision, r.key.as_str())).collect();
    let lost: Vec<&Acked> = acked.iter().filter(|a| !committed.contains(&(a.revision, a.key.as_str()))).collect();
    Check {
        name,
        passed: lost.is_empty(),
        detail: if lost.is_empty() {
            format!("all {} acknowledged writes are in the committed history", acked.len())
        } else {
            format!(
                "{} acknowledged writes are missing from the history, first: {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            )
        },
    }
}

/// Each watcher received the committed history in order, without gap or duplicate, at least
/// `floor` events of it.
pub fn watches(logs: &[WatchLog], history: &[Received], floor: u64) -> Vec<Check> {
    logs.iter()
        .map(|w| {
            let name = format!("watch on master {}", w.master);
            let mut problems: Vec<String> = w.bookmark_regressions.clone();
            if (w.received.len() as u64) < floor {
                problems.push(format!("too little to judge: {} events received, floor {floor}", w.received.len()));
            }
            if !w.finished {
                problems.push(format!(
                    "never received the end marker (last revision {:?})",
                    w.received.last().map(|r| r.revision)
                ));
            }
            if let Err(v) = watch::check(&w.received, history) {
                problems.extend(v.iter().take(5).map(|v| format!("{v:?}")));
            }
            Check {
                name,
                passed: problems.is_empty(),
                detail: if problems.is_empty() {
                    format!("{} events in order, no gap or duplicate, {} reconnects", w.received.len(), w.reconnects)
                } else {
                    problems.join("; ")
                },
            }
        })
        .collect()
}

/// The steady Deployment never had more live pods than its surge bound, over at least `floor`
/// pod events.
pub fn surge(log: &SurgeLog, floor: u64) -> Check {
    let name = "rollout surge".to_string();
    if log.events < floor {
        let detail = format!("too little to judge: {} pod events of {}, floor {floor}", log.events, log.deployment);
        return Check { name, passed: false, detail };
    }
    Check {
        name,
        passed: log.violations.is_empty(),
        detail: if log.violations.is_empty() {
            format!(
                "deployment {} never had more than {} live pods (bound {}) over {} pod events, {} watch reconnects",
                log.deployment, log.most, log.bound, log.events, log.reconnects
            )
        } else {
            format!("{} revisions past the bound; first: {}", log.broken, log.violations.join("; "))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(client: u32, key: &str, op: Op, outcome: Outcome, at: u64) -> Event {
        Event { client, key: key.into(), op, outcome, invoke: at, complete: at + 1 }
    }

    /// `n` alternating puts and reads of `key`, linearizable.
    fn register(key: &str, n: u64) -> Vec<Event> {
        (0..n)
            .map(|i| {
                let at = i * 10;
                if i % 2 == 0 {
                    ev(1, key, Op::Put(i.to_string()), Outcome::Done, at)
                } else {
                    ev(1, key, Op::Get, Outcome::Read(Some((i - 1).to_string())), at)
                }
            })
            .collect()
    }

    fn none() -> BTreeMap<String, linearizability::Value> {
        BTreeMap::new()
    }

    fn received(n: i64) -> Vec<Received> {
        (1..=n).map(|revision| Received { revision, key: "chaos/k0".into() }).collect()
    }

    fn acked(n: i64) -> Vec<Acked> {
        (1..=n).map(|revision| Acked { revision, key: "chaos/k0".into(), client: 1 }).collect()
    }

    #[test]
    fn linearizability_fails_on_an_empty_history_and_on_a_key_below_the_floor() {
        let keys = ["chaos/k0".to_string(), "chaos/k1".into()];
        let empty = linearizability(&[], &none(), &keys, 1);
        assert!(!empty.passed && empty.detail.contains("chaos/k0 (0)"), "{}", empty.detail);
        assert!(!linearizability(&[], &none(), &[], 0).passed, "no keys at all is nothing checked");

        let mut events = register("chaos/k0", 30);
        events.extend(register("chaos/k1", 5));
        let thin = linearizability(&events, &none(), &keys, 20);
        assert!(!thin.passed && thin.detail.contains("chaos/k1 (5)"), "{}", thin.detail);
        let enough = linearizability(&events, &none(), &keys, 5);
        assert!(enough.passed, "{}", enough.detail);
        // Unknown outcomes are not completed operations.
        let unknown: Vec<Event> =
            (0..30).map(|i| ev(1, "chaos/k0", Op::Put(i.to_string()), Outcome::Unknown, i * 10)).collect();
        assert!(!linearizability(&unknown, &none(), &keys[..1], 1).passed);
    }

    #[test]
    fn linearizability_above_the_floor_still_catches_a_stale_read() {
        let mut events = register("chaos/k0", 30);
        events.push(ev(2, "chaos/k0", Op::Get, Outcome::Read(Some("0".into())), 1000));
        let check = linearizability(&events, &none(), &["chaos/k0".to_string()], 20);
        assert!(!check.passed && check.detail.contains("no linearization"), "{}", check.detail);
    }

    #[test]
    fn unknown_writes_fail_when_nothing_was_written_or_too_many_had_no_reply() {
        assert!(!unknown_writes(&[], 1.0).passed, "no writes at all");
        let reads = [ev(1, "k", Op::Get, Outcome::Read(None), 0)];
        assert!(!unknown_writes(&reads, 1.0).passed, "reads only");
        let mut events: Vec<Event> = (0..3).map(|i| ev(1, "k", Op::Delete, Outcome::Done, i)).collect();
        events.push(ev(1, "k", Op::Put("x".into()), Outcome::Unknown, 9));
        assert!(unknown_writes(&events, 0.25).passed);
        let check = unknown_writes(&events, 0.2);
        assert!(!check.passed && check.detail.starts_with("1 of 4 writes"), "{}", check.detail);
    }

    #[test]
    fn revision_monotonicity_fails_below_the_floor() {
        assert!(!revision_monotonicity(&[], 0, 1).passed);
        assert!(!revision_monotonicity(&[], 99, 100).passed);
        assert!(revision_monotonicity(&[], 100, 100).passed);
        let regression = "client 1: 7 after 9".to_string();
        assert!(!revision_monotonicity(&[&regression], 100, 100).passed);
    }

    #[test]
    fn acknowledged_writes_fail_below_the_floor_and_when_one_is_missing() {
        assert!(!acknowledged_writes(&[], &[], 1).passed);
        let thin = acknowledged_writes(&acked(5), &received(5), 10);
        assert!(!thin.passed && thin.detail.contains("5 writes acknowledged"), "{}", thin.detail);
        assert!(acknowledged_writes(&acked(10), &received(10), 10).passed);
        assert!(!acknowledged_writes(&acked(10), &received(9), 10).passed);
    }

    fn log(received: Vec<Received>) -> WatchLog {
        WatchLog {
            master: 1,
            values: vec![None; received.len()],
            received,
            reconnects: 0,
            bookmark_regressions: Vec::new(),
            finished: true,
        }
    }

    #[test]
    fn a_watch_fails_below_the_floor() {
        let history = received(10);
        let empty = &watches(&[log(Vec::new())], &history, 1)[0];
        assert!(!empty.passed && empty.detail.contains("0 events received"), "{}", empty.detail);
        assert!(!watches(&[log(received(10))], &history, 11)[0].passed);
        assert!(watches(&[log(received(10))], &history, 10)[0].passed);
    }

    #[test]
    fn surge_fails_below_the_floor() {
        let mut log = SurgeLog {
            deployment: "app-0".into(),
            bound: 4,
            events: 0,
            most: 0,
            reconnects: 0,
            violations: Vec::new(),
            broken: 0,
        };
        assert!(!surge(&log, 1).passed);
        log.events = 9;
        assert!(!surge(&log, 10).passed);
        log.events = 10;
        assert!(surge(&log, 10).passed);
    }
}
