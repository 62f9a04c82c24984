//! The leader's I/O shell for the controllers not yet keyed: while this master is the raft
//! leader, each round reads the master's informer caches ([`crate::informers`]), runs every
//! controller's plan and executes it. Level-triggered: a round recomputes everything from
//! caches current to the store's revision at its start, so a lost round or a new leader
//! changes nothing in the outcome. Pods are placed by [`crate::scheduling`], not here.
//!
//! A round runs when a cached kind changes, and at least every `interval` for the controllers
//! that act on time (node lifecycle, the pod GC quarantine). It issues no list: the caches are
//! fed by one watch per kind. Keyed reconcilers per object ([`crate::controller`]: the
//! workload controllers and Endpoints) replace them one controller at a time (issue 15).
//!
//! This module holds the loop, the round and what the passes share; the passes themselves are
//! in `cluster` (node lifecycle, garbage collection, service accounts, volumes, load
//! balancers).

mod cluster;

use crate::informers::Listed;
use crate::nodelifecycle::marked_unreachable;
use serde_json::{json, Value};
use skiff_client::Client;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tonic::{Code, Status};

/// An object's resourceVersion as a number (0 if it has none).
fn revision_of(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()).unwrap_or(0)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[derive(Clone)]
pub struct Runner {
    pub client: Client,
    /// The raft term of this master's leadership while it leads (checked every round); each
    /// round's writes are fenced to it (DESIGN.md rule 4), so a round that outlives the
    /// leadership it read under changes nothing.
    pub leader_term: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    pub interval: Duration,
    /// How long a node's Lease may go unrenewed before the node counts as unreachable.
    pub node_grace: Duration,
    /// How long pods without a toleration stay on an unreachable node.
    pub pod_eviction_timeout: Duration,
    /// What the rounds read: the master's informers.
    pub lister: std::sync::Arc<crate::informers::Lister>,
}

/// What the leader's rounds remember from one to the next.
#[derive(Default)]
struct RoundState {
    /// When a node was last marked unreachable (the node eviction rate).
    last_taint: Option<std::time::Instant>,
    /// Since when each node that pods are bound to has been missing (the pod GC quarantine).
    missing_nodes: HashMap<String, std::time::Instant>,
    /// When the service-account controller last looked.
    accounts_checked: Option<std::time::Instant>,
    /// When the node lifecycle controller last looked at every node.
    nodes_checked: Option<std::time::Instant>,
    /// The pods' positions in their list by node, and the list they index.
    pods_by_node: Option<(Listed, HashMap<String, Vec<usize>>)>,
    /// When every controller last ran (none yet under this leadership).
    last_full: Option<std::time::Instant>,
    /// Until when the next full round waits (as long as the last one took).
    rest_until: Option<tokio::time::Instant>,
    /// Whether a controller failed in the last round (the next one runs them all).
    failed: bool,
}

/// How often every controller runs even when nothing changed: a safety net, not how changes
/// are noticed (a full round over 40,000 pods costs about half a second of a core).
pub const RESYNC: Duration = Duration::from_secs(60);

/// The least time between marking two nodes unreachable: Kubernetes' default
/// `--node-eviction-rate` of 0.1 nodes per second, so a network blip that silences many nodes at
/// once does not empty them all in the same moment.
pub const NODE_TAINT_INTERVAL: Duration = Duration::from_secs(10);

/// The longest time between two looks of the node lifecycle controller at every node while
/// nothing changes: Kubernetes' `--node-monitor-period`. With a short grace period (tests) it
/// looks every eighth of the grace period, as Kubernetes' defaults do (5 s of 40 s).
pub const NODE_MONITOR_PERIOD: Duration = Duration::from_secs(5);

/// How often the service-account controller looks: namespaces get their `default` account in
/// the write that creates them, so it only mends older namespaces and deleted accounts.
pub const SERVICE_ACCOUNT_INTERVAL: Duration = Duration::from_secs(10);

/// How long a node must have been missing before the pods bound to it are collected (Kubernetes'
/// pod GC quarantine).
const POD_GC_QUARANTINE: Duration = Duration::from_secs(40);

impl Runner {
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) {
        self.rounds(stop).await
    }

    /// A round whenever a cached kind changed, and at least every `interval` for the
    /// controllers that act on time (leases, cron schedules, deadlines, the pod GC quarantine).
    async fn rounds(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut state = RoundState::default();
        let changes = self.lister.changes();
        loop {
            let changed = tokio::select! {
                () = changes.next() => true,
                _ = tokio::time::sleep(self.interval) => false,
                _ = stop.changed() => return,
            };
            let Some(term) = (self.leader_term)() else {
                state.last_full = None;
                continue;
            };
            // Everything written before the round, this leader's own writes included.
            if let Err(e) = self.lister.current().await {
                tracing::debug!("controller round: {}", e.message());
                state.failed = true;
                continue;
            }
            let full = changed || state.failed || state.last_full.is_none_or(|t| t.elapsed() >= RESYNC);
            if full {
                // Rounds over many objects are not cheap: back to back, they would take a whole
                // core from the API and the scheduler while objects keep changing. A full round
                // waits after the last one for as long as that one took (at most half a core).
                if let Some(rest) = state.rest_until.filter(|t| *t > tokio::time::Instant::now()) {
                    tokio::time::sleep_until(rest).await;
                }
                state.last_full = Some(std::time::Instant::now());
            }
            let started = tokio::time::Instant::now();
            self.fenced(term).round(&mut state, full).await;
            if full {
                state.rest_until = Some(tokio::time::Instant::now() + started.elapsed());
            }
        }
    }

    /// This runner for one leadership: every write it makes is fenced to `term`.
    fn fenced(&self, term: u64) -> Runner {
        Runner { client: self.client.fenced(term), ..self.clone() }
    }

    /// A conflict or a vanished object only means the next round will look again.
    fn ignore_races(&self, r: Result<(), Status>) -> Result<(), Status> {
        match r {
            Err(e) if matches!(e.code(), Code::Aborted | Code::NotFound | Code::AlreadyExists) => Ok(()),
            other => other,
        }
    }

    /// One round: the controllers that act on time every round; the rest only when `full`
    /// (something changed, an earlier round failed, or [`RESYNC`] passed).
    async fn round(&self, state: &mut RoundState, full: bool) {
        let mut failed = false;
        let mut note = |what: &str, r: Result<(), Status>| {
            if let Err(e) = r {
                tracing::debug!("{what}: {e}");
                failed = true;
            }
        };
        // Leases are renewed all the time and trigger no round: whether one went stale is a
        // matter of time, looked at every node-monitor period (and whenever anything changed).
        let monitor_period = (self.node_grace / 8).min(NODE_MONITOR_PERIOD).max(self.interval);
        if full || state.nodes_checked.is_none_or(|t| t.elapsed() >= monitor_period) {
            state.nodes_checked = Some(std::time::Instant::now());
            let r = self.node_lifecycle(&mut state.last_taint, &mut state.pods_by_node).await;
            note("node lifecycle controller", r);
        }
        // Pods on a deleted node are collected after a quarantine: a timer while one is missing.
        if full || !state.missing_nodes.is_empty() {
            note("garbage collector", self.collect_garbage(&mut state.missing_nodes).await);
        }
        if state.accounts_checked.is_none_or(|t| t.elapsed() >= SERVICE_ACCOUNT_INTERVAL) {
            state.accounts_checked = Some(std::time::Instant::now());
            note("service account controller", self.service_accounts().await);
        }
        if full {
            note("load balancer status", self.load_balancers().await);
            note("volume binder", self.bind_volumes().await);
        }
        state.failed = failed;
    }

    /// Records an Event about an object; failures are logged, not fatal.
    async fn event(&self, obj: &Value, object_kind: &str, kind: &str, reason: &str, message: &str) {
        // Only the node lifecycle controller records events here (about nodes and evictions).
        self.client.event(obj, object_kind, "node-controller", kind, reason, message).await;
    }
}
