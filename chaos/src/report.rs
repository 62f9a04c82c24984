//! A run's report: what was done, what was injected, how long failovers took, and each
//! checker's verdict. Printed for people and written as JSON next to the history.

use crate::linearizability::{Event, Op, Outcome};
use crate::nemesis::FaultRecord;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// What was checked, or what failed (with the minimal failing sub-history if there is one).
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OpCounts {
    pub ok: u64,
    /// Writes whose outcome is unknown (no reply).
    pub unknown: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub masters: usize,
    pub duration_s: f64,
    pub seed: u64,
    pub faults_requested: Vec<String>,
    pub operations: BTreeMap<String, OpCounts>,
    pub faults: Vec<FaultRecord>,
    /// Per leader-losing fault: milliseconds from the fault to the next acknowledged write that
    /// was invoked after it (`None`: no write was acknowledged before the fault was undone and
    /// the run ended).
    pub failover_ms: Vec<Option<u64>>,
    pub checks: Vec<Check>,
    /// What the run had to have done for its checks to pass.
    pub floors: crate::checks::Floors,
    pub passed: bool,
    pub artifacts: String,
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Get => "get",
        Op::Put(_) => "put",
        Op::Delete => "delete",
        Op::Cas { .. } => "cas",
    }
}

pub fn count_ops(events: &[Event]) -> BTreeMap<String, OpCounts> {
    let mut out: BTreeMap<String, OpCounts> = BTreeMap::new();
    for e in events {
        let c = out.entry(op_name(&e.op).into()).or_default();
        if e.outcome == Outcome::Unknown {
            c.unknown += 1;
        } else {
            c.ok += 1;
        }
    }
    out
}

/// A write that certainly took effect.
fn acknowledged_write(e: &Event) -> bool {
    matches!((&e.op, &e.outcome), (Op::Put(_) | Op::Delete, Outcome::Done) | (Op::Cas { .. }, Outcome::Swapped(true)))
}

/// For each fault that took the leader away: time from the fault to the first acknowledged
/// write invoked after it.
pub fn failovers(faults: &[FaultRecord], events: &[Event]) -> Vec<Option<u64>> {
    faults
        .iter()
        .filter(|f| f.leader_affected)
        .map(|f| {
            events
                .iter()
                .filter(|e| acknowledged_write(e) && e.invoke >= f.start_us)
                .map(|e| e.complete)
                .min()
                .map(|done| (done - f.start_us) / 1000)
        })
        .collect()
}

/// min / p50 / p99 / max of the measured failovers, in milliseconds.
pub fn summary(ms: &[Option<u64>]) -> Option<[u64; 4]> {
    let mut v: Vec<u64> = ms.iter().flatten().copied().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Some([v[0], at(0.5), at(0.99), v[v.len() - 1]])
}

impl Report {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "skiff chaos: {} masters, {:.0} s, faults {}, seed {}",
            self.masters,
            self.duration_s,
            self.faults_requested.join(","),
            self.seed
        );
        let total: u64 = self.operations.values().map(|c| c.ok + c.unknown).sum();
        let ops: Vec<String> =
            self.operations.iter().map(|(k, c)| format!("{k} {} ok / {} unknown", c.ok, c.unknown)).collect();
        let _ = writeln!(s, "operations: {total} ({})", ops.join(", "));
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for f in &self.faults {
            *kinds.entry(f.kind.name().to_string()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "faults: {} ({})", self.faults.len(), kinds.join(", "));
        let unmeasured = self.failover_ms.iter().filter(|f| f.is_none()).count();
        match summary(&self.failover_ms) {
            Some([min, p50, p99, max]) => {
                let _ = writeln!(
                    s,
                    "failover (leader lost → next acknowledged write): n={} min {min} ms, p50 {p50} ms, p99 {p99} ms, max {max} ms{}",
                    self.failover_ms.len() - unmeasured,
                    if unmeasured > 0 { format!(" ({unmeasured} without a write before the run ended)") } else { String::new() }
                );
            }
            None => {
                let _ = writeln!(s, "failover: no leader-losing fault measured");
            }
        }
        let _ = writeln!(s, "checks:");
        for c in &self.checks {
            let _ = writeln!(s, "  {:<24} {}  {}", c.name, if c.passed { "ok  " } else { "FAIL" }, c.detail);
        }
        let _ = writeln!(s, "verdict: {}", if self.passed { "PASS" } else { "FAIL" });
        let _ = writeln!(s, "artifacts: {}", self.artifacts);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::FaultKind;

    fn ev(op: Op, outcome: Outcome, invoke: u64, complete: u64) -> Event {
        Event { client: 1, key: "k".into(), op, outcome, invoke, complete }
    }

    #[test]
    fn failover_is_measured_to_the_first_acknowledged_write_invoked_after_the_fault() {
        let fault = FaultRecord {
            kind: FaultKind::Kill,
            description: String::new(),
            start_us: 10_000,
            end_us: 20_000,
            leader_before: Some(1),
            leader_affected: true,
        };
        let events = [
            // Invoked before the fault: does not count even though it completes after.
            ev(Op::Put("a".into()), Outcome::Done, 9_000, 10_500),
            ev(Op::Get, Outcome::Read(None), 10_100, 10_200),
            ev(Op::Put("b".into()), Outcome::Unknown, 10_100, u64::MAX),
            ev(Op::Put("c".into()), Outcome::Done, 11_000, 900_000),
            ev(Op::Cas { expected: None, new: "d".into() }, Outcome::Swapped(true), 12_000, 700_000),
        ];
        assert_eq!(failovers(std::slice::from_ref(&fault), &events), vec![Some(690)]);
        let unaffected = FaultRecord { leader_affected: false, ..fault };
        assert!(failovers(&[unaffected], &events).is_empty());
    }

    #[test]
    fn summary_takes_percentiles_over_measured_failovers() {
        let ms: Vec<Option<u64>> = (1..=100).map(Some).chain([None]).collect();
        assert_eq!(summary(&ms), Some([1, 50, 99, 100]));
        assert_eq!(summary(&[None]), None);
    }
}
