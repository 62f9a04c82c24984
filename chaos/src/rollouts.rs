//! The rolling-update bound, checked at every revision while the faults run: the steady
//! Deployment (never scaled, only rolled, its pods deleted) must never have more live pods than
//! `replicas + maxSurge`, whichever master leads and however often leadership moves.
//!
//! A watch on the Deployment's pods replays each change in revision order, so the count is
//! exact at every revision, not sampled. The watch moves to the next master when its stream
//! breaks or stays silent, resuming after the last revision it saw; if that revision was
//! compacted it starts over from a fresh list.

use serde_json::Value;
use skiff_proto::api::objects_client::ObjectsClient;
use skiff_proto::api::RawWatchRequest;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Channel;

/// A stream that says nothing for this long is dropped for the next master's.
const SILENCE: Duration = Duration::from_secs(6);

/// What the surge watch saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SurgeLog {
    pub deployment: String,
    pub bound: usize,
    /// Pod events replayed.
    pub events: u64,
    /// The most live pods seen at any revision.
    pub most: usize,
    pub reconnects: u64,
    /// Revisions at which the bound was broken (the first few, with the live pods).
    pub violations: Vec<String>,
    /// How many revisions broke the bound in all.
    pub broken: u64,
}

/// Counts a Deployment's live pods across watch events and notes each revision past `bound`.
#[derive(Debug)]
pub struct SurgeTracker {
    bound: usize,
    /// Pod name → whether it counts (not being deleted, not finished).
    pods: BTreeMap<String, bool>,
    pub log: SurgeLog,
}

/// A pod counts until it is being deleted or has finished (what the ReplicaSet controller
/// counts as a replica).
fn live(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

impl SurgeTracker {
    pub fn new(deployment: &str, bound: usize) -> SurgeTracker {
        SurgeTracker {
            bound,
            pods: BTreeMap::new(),
            log: SurgeLog { deployment: deployment.into(), bound, ..Default::default() },
        }
    }

    /// Starting over from a fresh list: what was known may have changed unseen.
    pub fn reset(&mut self) {
        self.pods.clear();
    }

    /// Applies one watch event (`ADDED`, `MODIFIED`, `DELETED`) and checks the bound.
    pub fn apply(&mut self, kind: &str, pod: &Value) {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        match kind {
            "ADDED" | "MODIFIED" => {
                self.pods.insert(name, live(pod));
            }
            "DELETED" => {
                self.pods.remove(&name);
            }
            _ => return,
        }
        self.log.events += 1;
        let count = self.pods.values().filter(|l| **l).count();
        self.log.most = self.log.most.max(count);
        if count > self.bound {
            self.log.broken += 1;
            if self.log.violations.len() < 5 {
                let names: Vec<&str> = self.pods.iter().filter(|(_, l)| **l).map(|(n, _)| n.as_str()).collect();
                self.log.violations.push(format!(
                    "revision {}: {count} live pods, bound {} — {}",
                    pod["metadata"]["resourceVersion"].as_str().unwrap_or("?"),
                    self.bound,
                    names.join(", ")
                ));
            }
        }
    }
}

/// Watches the pods labelled `app=<deployment>` through `channels` in turn until `stop`.
pub async fn watch(
    channels: Vec<Channel>,
    namespace: &str,
    deployment: &str,
    bound: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> SurgeLog {
    let mut t = SurgeTracker::new(deployment, bound);
    let mut resume = String::new();
    let mut attempt = 0usize;
    while !*stop.borrow() {
        if attempt > 0 {
            t.log.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let channel = channels[attempt % channels.len()].clone();
        attempt += 1;
        let req = RawWatchRequest {
            resource: "pods".into(),
            namespace: namespace.into(),
            label_selector: format!("app={deployment}"),
            resource_version: resume.clone(),
            ..Default::default()
        };
        // Opening is raced with `stop` too: a leaderless master may never answer the call.
        let mut stopped = stop.clone();
        let mut client = ObjectsClient::new(channel);
        let opened = tokio::select! {
            r = client.watch(req) => r,
            _ = stopped.changed() => break,
        };
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            // Unreachable or leaderless masters: try the next one from the same revision.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Unknown
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                ) =>
            {
                continue
            }
            // Anything else (the revision was compacted): start over from a list.
            Err(_) => {
                resume.clear();
                t.reset();
                continue;
            }
        };
        if resume.is_empty() {
            t.reset();
        }
        loop {
            let mut stopped = stop.clone();
            let msg = tokio::select! {
                m = tokio::time::timeout(SILENCE, stream.message()) => m,
                _ = stopped.changed() => break,
            };
            let Ok(Ok(Some(ev))) = msg else { break };
            let Ok(pod) = serde_json::from_str::<Value>(&ev.json) else { continue };
            // The largest revision seen: a fresh watch lists its pods in no revision order, and
            // resuming from an earlier one would replay older states over newer ones.
            let rv = pod["metadata"]["resourceVersion"].as_str().and_then(|r| r.parse::<u64>().ok());
            if let Some(rv) = rv.filter(|rv| resume.parse::<u64>().map_or(true, |r| *rv > r)) {
                resume = rv.to_string();
            }
            t.apply(&ev.r#type, &pod);
        }
    }
    t.log
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, rv: u64) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": rv.to_string()}, "status": {"phase": "Running"}})
    }

    fn terminating(name: &str, rv: u64) -> Value {
        let mut p = pod(name, rv);
        p["metadata"]["deletionTimestamp"] = json!("2026-11-23T00:00:00Z");
        p
    }

    #[test]
    fn a_rollout_within_its_surge_passes_and_one_pod_too_many_is_named() {
        let mut t = SurgeTracker::new("web", 4);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            t.apply("ADDED", &pod(name, i as u64 + 1));
        }
        // Surge one, retire one, surge again: never more than 4 live.
        t.apply("ADDED", &pod("d", 4));
        t.apply("MODIFIED", &terminating("a", 5));
        t.apply("ADDED", &pod("e", 6));
        t.apply("DELETED", &terminating("a", 7));
        let mut failed = pod("b", 8);
        failed["status"]["phase"] = json!("Failed");
        t.apply("MODIFIED", &failed);
        t.apply("ADDED", &pod("f", 9));
        assert!(t.log.violations.is_empty(), "{:?}", t.log.violations);
        assert_eq!(t.log.most, 4);

        // A second controller's duplicate: five live pods at revision 10.
        t.apply("ADDED", &pod("g", 10));
        assert_eq!(t.log.broken, 1);
        assert!(t.log.violations[0].starts_with("revision 10: 5 live pods, bound 4"), "{:?}", t.log.violations);
        assert!(t.log.violations[0].contains("g"), "{:?}", t.log.violations);
    }

    #[test]
    fn bookmarks_and_errors_change_no_count() {
        let mut t = SurgeTracker::new("web", 1);
        t.apply("ADDED", &pod("a", 1));
        t.apply("BOOKMARK", &json!({"metadata": {"resourceVersion": "5"}}));
        t.apply("ERROR", &json!({"code": 410}));
        assert_eq!((t.log.events, t.log.most, t.log.broken), (1, 1, 0));
    }
}
