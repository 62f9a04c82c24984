//! The committed history rebuilt through the read path, independent of the watch path it
//! judges: on each master, a fresh client reads the workload's key range at every revision
//! from the run's start to its end marker (serializable Range at `revision = N`, answered from
//! that master's own store), and each revision's events are the difference from the one
//! before — a key whose `mod_revision` is N was put at N, a key gone since N-1 was deleted at N.
//! The masters' histories must agree, and every watcher must have received exactly this one.

use crate::report::Check;
use crate::watch::Received;
use anyhow::{bail, Context};
use futures::StreamExt;
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::RangeRequest;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Ranges in flight at once per master.
const CONCURRENT_READS: usize = 32;

/// One master's committed history of the range, in revision order (within a revision, by key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadHistory {
    pub master: u64,
    pub events: Vec<Received>,
    /// Parallel to `events`: the value put (`None` for a delete).
    pub values: Vec<Option<String>>,
    /// Revisions read, and how long reading them took.
    pub revisions: i64,
    pub took: Duration,
}

/// The range's keys at `revision`: key → (mod_revision, value). Retries until `deadline` (a
/// master still applying the end marker answers "future revision").
async fn state_at(
    channel: Channel,
    prefix: &str,
    revision: i64,
    deadline: Instant,
) -> anyhow::Result<BTreeMap<String, (i64, String)>> {
    if revision < 1 {
        return Ok(BTreeMap::new());
    }
    let req = RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: skiff_raft_store::mvcc::prefix_end(prefix.as_bytes()),
        revision,
        serializable: true,
        ..Default::default()
    };
    loop {
        match KvClient::new(channel.clone()).range(req.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.more {
                    bail!("the range at revision {revision} did not come whole");
                }
                return Ok(r
                    .kvs
                    .into_iter()
                    .map(|kv| {
                        let key = String::from_utf8_lossy(&kv.key).into_owned();
                        (key, (kv.mod_revision, String::from_utf8_lossy(&kv.value).into_owned()))
                    })
                    .collect());
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(revision, error = %e.message(), "oracle read; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("reading revision {revision}: {}", e.message()),
        }
    }
}

/// The events of `(start - 1, end]` under `prefix` as master `master` reads them through
/// `channel`.
pub async fn read_history(
    master: u64,
    channel: Channel,
    prefix: &str,
    start: i64,
    end: i64,
    deadline: Instant,
) -> anyhow::Result<ReadHistory> {
    let mut states = futures::stream::iter(start - 1..=end)
        .map(|n| {
            let channel = channel.clone();
            async move { state_at(channel, prefix, n, deadline).await.map(|s| (n, s)) }
        })
        .buffered(CONCURRENT_READS);
    let t0 = Instant::now();
    let revisions = end - start + 1;
    let mut history = ReadHistory { master, events: Vec::new(), values: Vec::new(), revisions, took: Duration::ZERO };
    let mut before: Option<BTreeMap<String, (i64, String)>> = None;
    while let Some(read) = states.next().await {
        let (n, now) = read.with_context(|| format!("master {master}"))?;
        if let Some(before) = &before {
            let mut changed: BTreeMap<&str, Option<String>> = BTreeMap::new();
            for (key, (modified, value)) in &now {
                if *modified == n {
                    changed.insert(key, Some(value.clone()));
                } else if before.get(key).map(|(m, _)| *m) != Some(*modified) {
                    bail!("master {master}: {key} at revision {n} was last modified at {modified}, which revision {} did not show", n - 1);
                }
            }
            for key in before.keys().filter(|k| !now.contains_key(*k)) {
                changed.insert(key, None);
            }
            for (key, value) in changed {
                history.events.push(Received { revision: n, key: key.to_string() });
                history.values.push(value);
            }
        }
        before = Some(now);
    }
    history.took = t0.elapsed();
    Ok(history)
}

/// The masters' read histories agree event for event.
pub fn agreement(histories: &[ReadHistory]) -> Check {
    let name = "committed history (reads)".to_string();
    let Some(first) = histories.first() else {
        return Check { name, passed: false, detail: "no master's history was read".into() };
    };
    let differing: Vec<String> = histories
        .iter()
        .filter(|h| h.events != first.events || h.values != first.values)
        .map(|h| {
            let at = h
                .events
                .iter()
                .zip(&first.events)
                .position(|(a, b)| a != b)
                .unwrap_or(h.events.len().min(first.events.len()));
            format!(
                "master {} differs from master {} at event {at} ({} vs {} events)",
                h.master,
                first.master,
                h.events.len(),
                first.events.len()
            )
        })
        .collect();
    Check {
        name,
        passed: differing.is_empty() && !first.events.is_empty(),
        detail: if differing.is_empty() {
            format!(
                "{} masters read the same {} events at each of {} revisions from {} to {} (slowest read {:.1} s)",
                histories.len(),
                first.events.len(),
                first.revisions,
                first.events.first().map_or(0, |e| e.revision),
                first.events.last().map_or(0, |e| e.revision),
                histories.iter().map(|h| h.took.as_secs_f64()).fold(0.0, f64::max)
            )
        } else {
            differing.join("; ")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(master: u64, events: &[(i64, &str, Option<&str>)]) -> ReadHistory {
        ReadHistory {
            master,
            events: events
                .iter()
                .map(|(revision, key, _)| Received { revision: *revision, key: key.to_string() })
                .collect(),
            values: events.iter().map(|(_, _, v)| v.map(String::from)).collect(),
            revisions: 2,
            took: Duration::ZERO,
        }
    }

    #[test]
    fn masters_must_agree_and_have_read_something() {
        let a = history(1, &[(5, "k", Some("1")), (6, "k", None)]);
        assert!(agreement(&[a.clone(), history(2, &[(5, "k", Some("1")), (6, "k", None)])]).passed);
        let other = agreement(&[a.clone(), history(2, &[(5, "k", Some("1")), (6, "k", Some("2"))])]);
        assert!(!other.passed, "{}", other.detail);
        let shorter = agreement(&[a, history(2, &[(5, "k", Some("1"))])]);
        assert!(!shorter.passed && shorter.detail.contains("2 differs"), "{}", shorter.detail);
        assert!(!agreement(&[]).passed);
        assert!(!agreement(&[history(1, &[])]).passed, "an empty history checked nothing");
    }
}
