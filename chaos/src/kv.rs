//! The key-value register workload: clients, each bound to one master, doing linearizable
//! gets, puts, compare-and-set transactions and deletes on a small key set through the etcd v3
//! API, recording every invocation and completion.
//!
//! A write whose reply never came (timeout, connection lost, leader changed) is recorded as
//! [`Outcome::Unknown`]: it may or may not have taken effect. A failed read changed nothing and
//! is left out.

use crate::linearizability::{Event, Op, Outcome, Value};
use crate::watch::Received;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::request_op::Request as TxnOp;
use skiff_proto::etcdserverpb::{Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The prefix of every key the workload touches (and the watchers watch).
pub const PREFIX: &str = "chaos/";

pub fn key(i: usize) -> String {
    format!("{PREFIX}k{i}")
}

/// A write the cluster acknowledged, with the revision it reported: it must be in the history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Acked {
    pub revision: i64,
    pub key: String,
    pub client: u32,
}

/// What one client did.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub events: Vec<Event>,
    /// Parallel to `events`: the header revision of the reply (0 when there was none).
    pub revisions: Vec<i64>,
    pub acked: Vec<Acked>,
    /// Replies whose header revision was lower than one this client had already seen.
    pub revision_regressions: Vec<String>,
    /// Writes refused with "database space exceeded": certainly not applied.
    pub refused_for_space: u64,
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// How a client runs: its key set, its seed, and its pace (`rate` operations per second, 0 for
/// as fast as replies come).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub keys: usize,
    pub seed: u64,
    pub rate: u32,
}

/// Runs one client until `stop` turns true; `t0` is the history's time origin.
pub async fn client(
    id: u32,
    channel: Channel,
    pace: Pace,
    t0: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> ClientLog {
    let Pace { keys, seed, rate } = pace;
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut next = tokio::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(id) << 32));
    let mut kv = KvClient::new(channel);
    let mut log = ClientLog::default();
    let mut last_seen: HashMap<String, Value> = HashMap::new();
    let mut seq = 0u64;
    let mut max_revision = 0i64;
    let now = || t0.elapsed().as_micros() as u64;
    while !*stop.borrow() {
        if let Some(every) = interval {
            // Paced, without bursts to catch up after a slow reply.
            next = (next + every).max(tokio::time::Instant::now());
            tokio::time::sleep_until(next).await;
        }
        let k = key(rng.gen_range(0..keys));
        seq += 1;
        let value = format!("{id}-{seq}");
        let op = match rng.gen_range(0..10) {
            0..=3 => Op::Get,
            4..=6 => Op::Put(value.clone()),
            7 | 8 => Op::Cas { expected: last_seen.get(&k).cloned().flatten(), new: value.clone() },
            _ => Op::Delete,
        };
        let invoke = now();
        // (outcome, header revision, whether the op wrote a new revision)
        let result: Result<(Outcome, i64, bool), tonic::Status> = match &op {
            Op::Get => kv.range(RangeRequest { key: k.clone().into(), ..Default::default() }).await.map(|r| {
                let r = r.into_inner();
                let v = r.kvs.first().map(|kv| text(&kv.value));
                (Outcome::Read(v), r.header.map_or(0, |h| h.revision), false)
            }),
            Op::Put(v) => kv
                .put(PutRequest { key: k.clone().into(), value: v.clone().into(), ..Default::default() })
                .await
                .map(|r| (Outcome::Done, r.into_inner().header.map_or(0, |h| h.revision), true)),
            Op::Delete => {
                kv.delete_range(DeleteRangeRequest { key: k.clone().into(), ..Default::default() }).await.map(|r| {
                    let r = r.into_inner();
                    (Outcome::Done, r.header.map_or(0, |h| h.revision), r.deleted > 0)
                })
            }
            Op::Cas { expected, new } => {
                let compare = match expected {
                    Some(e) => Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Value as i32,
                        key: k.clone().into(),
                        target_union: Some(TargetUnion::Value(e.clone().into())),
                        ..Default::default()
                    },
                    None => Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Version as i32,
                        key: k.clone().into(),
                        target_union: Some(TargetUnion::Version(0)),
                        ..Default::default()
                    },
                };
                let put = PutRequest { key: k.clone().into(), value: new.clone().into(), ..Default::default() };
                kv.txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![RequestOp { request: Some(TxnOp::RequestPut(put)) }],
                    failure: vec![],
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    (Outcome::Swapped(r.succeeded), r.header.map_or(0, |h| h.revision), r.succeeded)
                })
            }
        };
        let complete = now();
        match result {
            Ok((outcome, revision, wrote)) => {
                if revision < max_revision {
                    log.revision_regressions.push(format!(
                        "client {id}: {op:?} on {k} at {complete} µs replied revision {revision} after {max_revision}"
                    ));
                }
                max_revision = max_revision.max(revision);
                if wrote {
                    log.acked.push(Acked { revision, key: k.clone(), client: id });
                }
                match (&op, &outcome) {
                    (Op::Get, Outcome::Read(v)) => {
                        last_seen.insert(k.clone(), v.clone());
                    }
                    (Op::Put(v), _) | (Op::Cas { new: v, .. }, Outcome::Swapped(true)) => {
                        last_seen.insert(k.clone(), Some(v.clone()));
                    }
                    (Op::Delete, _) => {
                        last_seen.insert(k.clone(), None);
                    }
                    _ => {}
                }
                log.events.push(Event { client: id, key: k, op, outcome, invoke, complete });
                log.revisions.push(revision);
            }
            Err(e) => {
                if e.code() == tonic::Code::ResourceExhausted {
                    // The store refused to grow (NOSPACE, a `disk-full` fault): certainly not
                    // applied, so, like a failed read, not part of the history.
                    log.refused_for_space += 1;
                } else if op != Op::Get {
                    log.events.push(Event { client: id, key: k, op, outcome: Outcome::Unknown, invoke, complete });
                    log.revisions.push(0);
                }
                // A master that is down or cut off answers nothing useful for a while.
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..150))).await;
            }
        }
    }
    log
}

/// Settles writes whose reply never came, using the committed history (each PUT's key, value
/// and revision, as a fresh watch read it after the faults): a put or compare-and-set whose
/// unique value was committed did happen — no later than the first reply of any operation that
/// reported that revision or a later one — and one whose value never appeared did not, so it is
/// dropped. Unknown deletes stay unknown (their events carry no value to match).
///
/// Without this every unknown write stays open until the end of the history, and the search's
/// state space doubles with each one. Returns (settled as happened, dropped).
pub fn settle_unknowns(
    events: &mut Vec<Event>,
    revisions: &[i64],
    committed: &[Received],
    values: &[Option<String>],
) -> (usize, usize) {
    let puts: HashMap<(&str, &str), i64> =
        committed.iter().zip(values).filter_map(|(c, v)| Some(((c.key.as_str(), v.as_deref()?), c.revision))).collect();
    // The earliest reply carrying each revision or a later one.
    let mut by_revision: BTreeMap<i64, u64> = BTreeMap::new();
    for (e, &r) in events.iter().zip(revisions) {
        if e.outcome != Outcome::Unknown && r > 0 {
            let c = by_revision.entry(r).or_insert(u64::MAX);
            *c = (*c).min(e.complete);
        }
    }
    let mut earliest = u64::MAX;
    let mut suffix_min: Vec<(i64, u64)> = Vec::new();
    for (&r, &c) in by_revision.iter().rev() {
        earliest = earliest.min(c);
        suffix_min.push((r, earliest));
    }
    suffix_min.reverse();
    let seen_by = |r: i64| -> u64 {
        let i = suffix_min.partition_point(|(rev, _)| *rev < r);
        suffix_min.get(i).map_or(u64::MAX, |(_, c)| *c)
    };
    let (mut happened, mut dropped) = (0, 0);
    let mut kept = Vec::with_capacity(events.len());
    for mut e in std::mem::take(events) {
        if e.outcome == Outcome::Unknown {
            let written = match &e.op {
                Op::Put(v) | Op::Cas { new: v, .. } => Some(puts.get(&(e.key.as_str(), v.as_str())).copied()),
                _ => None,
            };
            match written {
                Some(Some(r)) => {
                    e.outcome = if matches!(e.op, Op::Put(_)) { Outcome::Done } else { Outcome::Swapped(true) };
                    e.complete = seen_by(r).max(e.invoke);
                    happened += 1;
                }
                Some(None) => {
                    dropped += 1;
                    continue;
                }
                None => {}
            }
        }
        kept.push(e);
    }
    *events = kept;
    (happened, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, outcome: Outcome, invoke: u64, complete: u64) -> Event {
        Event { client: 1, key: "k".into(), op, outcome, invoke, complete }
    }

    #[test]
    fn unknown_writes_are_settled_by_what_was_committed() {
        let mut events = vec![
            ev(Op::Put("a".into()), Outcome::Unknown, 0, 5),
            ev(Op::Put("b".into()), Outcome::Unknown, 1, 5),
            ev(Op::Cas { expected: None, new: "c".into() }, Outcome::Unknown, 2, 5),
            ev(Op::Delete, Outcome::Unknown, 3, 5),
            ev(Op::Get, Outcome::Read(Some("a".into())), 10, 20),
            ev(Op::Get, Outcome::Read(Some("c".into())), 30, 40),
        ];
        let revisions = [0, 0, 0, 0, 7, 9];
        let committed = [Received { revision: 7, key: "k".into() }, Received { revision: 8, key: "k".into() }];
        let values = [Some("a".to_string()), Some("c".to_string())];
        assert_eq!(settle_unknowns(&mut events, &revisions, &committed, &values), (2, 1));
        // "a" happened by the time a reply showed revision 7; "c" (revision 8) by the first
        // reply at 8 or later; "b" never happened; the delete stays unknown.
        assert_eq!(events[0].outcome, Outcome::Done);
        assert_eq!(events[0].complete, 20);
        assert_eq!(events[1].outcome, Outcome::Swapped(true));
        assert_eq!(events[1].complete, 40);
        assert_eq!(events[2].op, Op::Delete);
        assert_eq!(events[2].outcome, Outcome::Unknown);
        assert_eq!(events.len(), 5);
        assert!(crate::linearizability::check(&events).is_ok());
    }
}
