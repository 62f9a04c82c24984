//! A linearizability checker for a key-value register history (Wing & Gong's search with
//! memoization, as in Lowe's and Porcupine's checkers), applied per key: a history is
//! linearizable iff each key's sub-history is (linearizability is compositional).
//!
//! Operations whose outcome is unknown (the client timed out) may have taken effect at any
//! point after their invocation, or never: the search may place them anywhere later or drop
//! them, as Jepsen's `:info` operations.

use std::collections::{BTreeMap, HashSet};

/// A register value; `None` is "absent".
pub type Value = Option<String>;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Op {
    Put(String),
    Get,
    Delete,
    /// Compare-and-set: if the value equals `expected`, set `new`.
    Cas {
        expected: Value,
        new: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Outcome {
    /// A Get's observed value.
    Read(Value),
    /// A Cas that reported whether it succeeded.
    Swapped(bool),
    /// A Put or Delete that was acknowledged.
    Done,
    /// Timed out or failed ambiguously: may or may not have taken effect.
    Unknown,
}

/// One invocation and its completion, with wall-clock times (any monotonic unit).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    pub client: u32,
    pub key: String,
    pub op: Op,
    pub outcome: Outcome,
    pub invoke: u64,
    /// Completion time; unknown outcomes complete "never" (`u64::MAX`).
    pub complete: u64,
}

/// Applies `op` to `state`; returns the new state and whether `outcome` is consistent with it.
fn step(state: &Value, op: &Op, outcome: &Outcome) -> Option<Value> {
    match (op, outcome) {
        (Op::Get, Outcome::Read(v)) => (v == state).then(|| state.clone()),
        (Op::Put(v), Outcome::Done | Outcome::Unknown) => Some(Some(v.clone())),
        (Op::Delete, Outcome::Done | Outcome::Unknown) => Some(None),
        (Op::Cas { expected, new }, Outcome::Swapped(true)) => (expected == state).then(|| Some(new.clone())),
        (Op::Cas { expected, .. }, Outcome::Swapped(false)) => (expected != state).then(|| state.clone()),
        (Op::Cas { expected, new }, Outcome::Unknown) => {
            Some(if expected == state { Some(new.clone()) } else { state.clone() })
        }
        _ => None,
    }
}

/// How many search states one key may take before the checker gives up on it (and fails the
/// check as undecided rather than pass what it could not confirm).
pub const STATE_BUDGET: usize = 2_000_000;

/// And how many out-of-order indices those states may hold in all (about 8 bytes each), so a
/// pathological key costs at most a few hundred MB before it is reported undecided.
pub const STORED_BUDGET: usize = 50_000_000;

/// Where the search for one key got stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stuck {
    /// The most operations any partial linearization placed.
    placed: usize,
    /// The register's value there.
    state: Value,
    /// The operations that could have gone next there, none consistent with the value.
    blocked: Vec<usize>,
    /// The state budget ran out before the search finished.
    exhausted: bool,
}

/// A set of linearized operations: every index below `below`, plus `extra` (sorted, each above
/// `below`). Operations finish roughly in invocation order, so `extra` stays as small as the
/// history's concurrency and a state costs little to store, however long the history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Done {
    below: usize,
    extra: Vec<usize>,
}

impl Done {
    fn contains(&self, i: usize) -> bool {
        i < self.below || self.extra.binary_search(&i).is_ok()
    }

    fn with(&self, i: usize) -> Done {
        let mut d = self.clone();
        if let Err(at) = d.extra.binary_search(&i) {
            d.extra.insert(at, i);
        }
        let run = d.extra.iter().enumerate().take_while(|(k, &x)| x == d.below + k).count();
        d.extra.drain(..run);
        d.below += run;
        d
    }

    fn len(&self) -> usize {
        self.below + self.extra.len()
    }
}

/// Whether one key's events, sorted by invocation and starting from `initial`, have a
/// linearization.
fn check_key(events: &[Event], initial: &Value) -> Result<(), Stuck> {
    let known = events.iter().filter(|e| e.outcome != Outcome::Unknown).count();
    let mut seen: HashSet<(Done, Value)> = HashSet::new();
    // Depth-first search; each frame: what is linearized, the value, how many known ops done.
    let mut stack: Vec<(Done, Value, usize)> = vec![(Done { below: 0, extra: Vec::new() }, initial.clone(), 0)];
    let mut stuck = Stuck { placed: 0, state: initial.clone(), blocked: Vec::new(), exhausted: false };
    // Indices held in remembered states' `extra`, against STORED_BUDGET.
    let mut stored = 0usize;
    while let Some((done, state, known_done)) = stack.pop() {
        // Every remaining operation is an unknown one that may simply never have happened.
        if known_done == known {
            return Ok(());
        }
        if seen.len() >= STATE_BUDGET || stored >= STORED_BUDGET {
            stuck.exhausted = true;
            return Err(stuck);
        }
        if !seen.insert((done.clone(), state.clone())) {
            continue;
        }
        stored += done.extra.len();
        // Candidates: operations invoked before every remaining operation's completion. Sorted
        // by invocation, the scan can stop at the first one invoked after that horizon: any
        // later one completes later still.
        let mut horizon = u64::MAX;
        let mut candidates = Vec::new();
        for (i, e) in events.iter().enumerate().skip(done.below) {
            if e.invoke > horizon {
                break;
            }
            if done.contains(i) {
                continue;
            }
            horizon = horizon.min(e.complete);
            candidates.push(i);
        }
        if done.len() >= stuck.placed {
            stuck = Stuck { placed: done.len(), state: state.clone(), blocked: candidates.clone(), exhausted: false };
        }
        // Pushed latest-invoked first so the earliest-invoked candidate is tried first: deferring
        // an early operation would keep every later one in `extra` and make each state as big
        // as the history.
        for i in candidates.into_iter().rev() {
            let unknown = events[i].outcome == Outcome::Unknown;
            let k = known_done + usize::from(!unknown);
            if let Some(next) = step(&state, &events[i].op, &events[i].outcome) {
                stack.push((done.with(i), next, k));
            }
            if unknown {
                // Or it never took effect.
                stack.push((done.with(i), state.clone(), k));
            }
        }
    }
    Err(stuck)
}

/// A key whose history has no linearization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// A failing sub-history: for short histories a minimal one (removing any one event makes
    /// the rest linearizable); for long ones, the operations the search could not place next
    /// after its longest linearizable prefix, with the value the register held there.
    pub minimal: Vec<Event>,
    /// For long histories: the value before `minimal` (the stuck point's state).
    pub state_before: Option<Value>,
    /// The search ran out of its state budget: not disproven, but not confirmed either.
    pub undecided: bool,
}

/// Key histories up to this long are minimised (each step re-runs the search).
const MINIMISE_UP_TO: usize = 200;

/// Checks a whole history whose keys all start absent; `Err` names each violating key with a
/// failing sub-history.
pub fn check(history: &[Event]) -> Result<(), Vec<Violation>> {
    check_from(history, &BTreeMap::new())
}

/// [`check`] with each key starting at its value in `initial` (absent if not there).
pub fn check_from(history: &[Event], initial: &BTreeMap<String, Value>) -> Result<(), Vec<Violation>> {
    let mut by_key: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for e in history {
        let mut e = e.clone();
        if e.outcome == Outcome::Unknown {
            e.complete = u64::MAX;
        }
        by_key.entry(e.key.clone()).or_default().push(e);
    }
    let mut violations = Vec::new();
    for (key, mut events) in by_key {
        events.sort_by_key(|e| e.invoke);
        let start = initial.get(&key).cloned().unwrap_or(None);
        let stuck = match check_key(&events, &start) {
            Ok(()) => continue,
            Err(s) => s,
        };
        if stuck.exhausted {
            violations.push(Violation { key, minimal: Vec::new(), state_before: None, undecided: true });
            continue;
        }
        if events.len() > MINIMISE_UP_TO {
            let minimal = stuck.blocked.iter().map(|&i| events[i].clone()).collect();
            violations.push(Violation { key, minimal, state_before: Some(stuck.state), undecided: false });
            continue;
        }
        // Greedy minimisation: drop events while the remainder still fails.
        let mut i = 0;
        while i < events.len() {
            let mut fewer = events.clone();
            fewer.remove(i);
            if check_key(&fewer, &start).is_err() {
                events = fewer;
            } else {
                i += 1;
            }
        }
        violations.push(Violation { key, minimal: events, state_before: None, undecided: false });
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(client: u32, op: Op, outcome: Outcome, invoke: u64, complete: u64) -> Event {
        Event { client, key: "k".into(), op, outcome, invoke, complete }
    }
    fn put(v: &str) -> Op {
        Op::Put(v.into())
    }
    fn read(v: Option<&str>) -> Outcome {
        Outcome::Read(v.map(String::from))
    }

    #[test]
    fn concurrent_operations_may_linearize_either_way() {
        // A read overlapping a write may see the old or the new value.
        for seen in [None, Some("1")] {
            let h = [ev(1, put("1"), Outcome::Done, 0, 10), ev(2, Op::Get, read(seen), 5, 8)];
            assert!(check(&h).is_ok(), "{seen:?}");
        }
    }

    #[test]
    fn a_stale_read_is_rejected() {
        let h = [
            ev(1, put("1"), Outcome::Done, 0, 1),
            ev(1, put("2"), Outcome::Done, 2, 3),
            ev(2, Op::Get, read(Some("1")), 4, 5),
        ];
        let v = check(&h).unwrap_err();
        assert_eq!(v[0].key, "k");
        let minimal = &v[0].minimal;
        assert!(minimal.iter().any(|e| e.op == Op::Get), "the stale read is part of it: {minimal:?}");
        assert!(check(minimal).is_err(), "the minimal sub-history still fails");
        for i in 0..minimal.len() {
            let mut fewer = minimal.clone();
            fewer.remove(i);
            assert!(check(&fewer).is_ok(), "and dropping any event makes it pass: {fewer:?}");
        }
    }

    /// A key that held a previous run's value: `Cas { expected: None }` failing is correct
    /// when the key starts present, and wrong when it starts absent.
    #[test]
    fn keys_start_at_their_initial_value() {
        let cas = Op::Cas { expected: None, new: "a".into() };
        let h = [ev(1, cas, Outcome::Swapped(false), 0, 1), ev(2, Op::Get, read(Some("old")), 2, 3)];
        assert!(check(&h).is_err(), "from absent, the failed swap and the read are impossible");
        let initial = BTreeMap::from([("k".to_string(), Some("old".to_string()))]);
        assert!(check_from(&h, &initial).is_ok());
    }

    #[test]
    fn a_lost_write_is_rejected() {
        let h = [ev(1, put("a"), Outcome::Done, 0, 1), ev(2, Op::Get, read(None), 2, 3)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn two_successful_cas_from_the_same_value_are_rejected() {
        let cas = |new: &str| Op::Cas { expected: Some("0".into()), new: new.into() };
        let h = [
            ev(1, put("0"), Outcome::Done, 0, 1),
            ev(2, cas("a"), Outcome::Swapped(true), 2, 10),
            ev(3, cas("b"), Outcome::Swapped(true), 3, 11),
        ];
        assert!(check(&h).is_err());
        let ok = [
            ev(1, put("0"), Outcome::Done, 0, 1),
            ev(2, cas("a"), Outcome::Swapped(true), 2, 10),
            ev(3, cas("b"), Outcome::Swapped(false), 3, 11),
            ev(4, Op::Get, read(Some("a")), 12, 13),
        ];
        assert!(check(&ok).is_ok());
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        for seen in [None, Some("x")] {
            let h = [ev(1, put("x"), Outcome::Unknown, 0, 0), ev(2, Op::Get, read(seen), 5, 6)];
            assert!(check(&h).is_ok(), "{seen:?}");
        }
        // But it cannot take effect before it was invoked.
        let h = [ev(2, Op::Get, read(Some("x")), 0, 1), ev(1, put("x"), Outcome::Unknown, 5, 0)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = vec![ev(1, put("1"), Outcome::Done, 0, 1)];
        let mut other = ev(2, Op::Get, read(None), 2, 3);
        other.key = "other".into();
        h.push(other);
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_stale_read_in_a_long_history_is_pinned_to_where_the_search_stuck() {
        let mut h = Vec::new();
        for i in 0..150u64 {
            h.push(ev(1, put(&i.to_string()), Outcome::Done, i * 10, i * 10 + 4));
            h.push(ev(2, Op::Get, read(Some(&i.to_string())), i * 10 + 5, i * 10 + 9));
        }
        // At 100 the reader sees the value from two writes back.
        h[201] = ev(2, Op::Get, read(Some("98")), 1005, 1009);
        let v = check(&h).unwrap_err();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].state_before, Some(Some("100".into())), "{v:?}");
        assert!(v[0].minimal.iter().any(|e| e.outcome == read(Some("98"))), "{v:?}");
        assert!(!v[0].undecided);
    }

    #[test]
    fn long_concurrent_histories_stay_cheap() {
        // 4 writers and 4 readers overlapping for 50,000 operations on one key.
        let mut h = Vec::new();
        for i in 0..6_250u64 {
            for w in 0..4u32 {
                h.push(ev(w, put(&format!("{i}-{w}")), Outcome::Done, i * 100 + u64::from(w), i * 100 + 50));
            }
            for r in 0..4u32 {
                let t = i * 100 + 60 + u64::from(r);
                h.push(ev(10 + r, Op::Get, read(Some(&format!("{i}-3"))), t, t + 30));
            }
        }
        let started = std::time::Instant::now();
        assert!(check(&h).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
    }

    #[test]
    fn a_write_that_completes_late_does_not_make_every_state_big() {
        // A write whose reply never came but which the history shows happened early: it stays
        // pending to the end while 40,000 operations complete after it.
        let mut h = vec![ev(9, put("early"), Outcome::Done, 0, u64::MAX - 1)];
        for i in 0..20_000u64 {
            h.push(ev(1, put(&i.to_string()), Outcome::Done, 10 + i * 10, 10 + i * 10 + 4));
            h.push(ev(2, Op::Get, read(Some(&i.to_string())), 10 + i * 10 + 5, 10 + i * 10 + 9));
        }
        let started = std::time::Instant::now();
        assert!(check(&h).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
    }

    #[test]
    fn larger_histories_stay_tractable() {
        // 3 clients x 40 sequential ops each, overlapping: memoization keeps this fast.
        let mut h = Vec::new();
        for i in 0..40u64 {
            h.push(ev(1, put(&i.to_string()), Outcome::Done, i * 10, i * 10 + 6));
            h.push(ev(2, Op::Get, read(Some(&i.to_string())), i * 10 + 7, i * 10 + 9));
            h.push(ev(
                3,
                Op::Get,
                Outcome::Read(if i == 0 { None } else { Some((i - 1).to_string()) }),
                i * 10,
                i * 10 + 3,
            ));
        }
        assert!(check(&h).is_ok());
    }
}
