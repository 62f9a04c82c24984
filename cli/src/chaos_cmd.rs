//! `skiff chaos`: one chaos run (see the `skiff-chaos` crate) — masters in network namespaces,
//! a seeded fault schedule, a recorded history and the checkers' verdicts. Needs root.

use anyhow::{bail, Context};
use clap::Args;
use skiff_chaos::checks::Floors;
use skiff_chaos::nemesis::FaultKind;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Masters in the cluster under test (3 or 5 for the partition shapes to mean something).
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// How long faults are injected (e.g. 60s, 30m).
    #[arg(long, default_value = "60s", value_parser = crate::ctl::parse_duration)]
    duration: std::time::Duration,
    /// Comma-separated faults: kill, pause, partition, lossy, slow, churn (masters); node-kill,
    /// node-pause, machine-loss (node daemons, with --nodes).
    #[arg(long, default_value = "kill,pause,partition", value_delimiter = ',')]
    faults: Vec<FaultKind>,
    /// Seed of the fault schedule (default: the clock); the same seed gives the same schedule.
    #[arg(long)]
    seed: Option<u64>,
    /// Directory for the history, fault timeline, report and master logs
    /// (default: ./skiff-chaos-SEED).
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Keys the register workload uses.
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// Register workload clients per master (0: none — the floors then fail the run, which is
    /// how to see that they would).
    #[arg(long, default_value_t = 2)]
    clients_per_master: usize,
    /// Operations per second per client (0: as fast as replies come). Long soaks pace the
    /// clients so the history stays checkable.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Share (0–1) of kills, pauses, lossy and slow links aimed at the leader; the rest hit a follower
    /// or any master.
    #[arg(long, default_value_t = skiff_chaos::nemesis::LEADER_SHARE)]
    leader_share: f64,
    /// Deployments the API workload scales, rolls and deletes pods of (0: none).
    #[arg(long, default_value_t = 3)]
    deployments: usize,
    /// Deadline of each workload request in milliseconds.
    #[arg(long, default_value_t = 2000)]
    op_timeout_ms: u64,
    /// Testing only: run masters that serve reads from local state without the read-index
    /// check — a deliberately broken build the checkers must catch.
    #[arg(long)]
    unsafe_local_reads: bool,
    /// Testing only: master 1's watches drop every Nth event they would deliver — a
    /// deliberately broken watch path the read-path oracle must catch.
    #[arg(long, hide = true)]
    testing_drop_watch_events: Option<u64>,
    /// Node daemons running the API workload's pods as real containers (0: pods stay
    /// unscheduled). Needs --image.
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// An OCI image layout the nodes import and the pods run (`scripts/build-test-image DIR`).
    #[arg(long)]
    image: Option<PathBuf>,
    /// How often node daemons renew their Lease.
    #[arg(long, default_value_t = 1)]
    node_lease_seconds: u64,
    /// The leader's node grace period: an unrenewed Lease this old marks the node unreachable
    /// (Kubernetes: 40 s; short here so a run sees it).
    #[arg(long, default_value_t = 5)]
    node_grace_seconds: u64,
    /// How long pods stay on an unreachable node before they are evicted (Kubernetes: 300 s).
    #[arg(long, default_value_t = 5)]
    pod_eviction_seconds: u64,
    /// Floor: completed operations on every workload key, or the linearizability check fails.
    #[arg(long, default_value_t = Floors::default().ops_per_key)]
    min_ops_per_key: u64,
    /// Floor: writes acknowledged (and replies carrying a revision).
    #[arg(long, default_value_t = Floors::default().acked_writes)]
    min_acked_writes: u64,
    /// Floor: events each master's watcher received.
    #[arg(long, default_value_t = Floors::default().watch_events)]
    min_watch_events: u64,
    /// Floor: pod events the rollout surge check replayed (with --deployments).
    #[arg(long, default_value_t = Floors::default().pod_events)]
    min_pod_events: u64,
    /// Floor: rollouts the API workload started (with --deployments).
    #[arg(long, default_value_t = Floors::default().rollouts)]
    min_rollouts: u64,
    /// The largest share (0–1) of writes that may end without a reply.
    #[arg(long, default_value_t = Floors::default().max_unknown_share)]
    max_unknown_share: f64,
}

pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    if args.keys == 0 {
        bail!("--keys must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.max_unknown_share) {
        bail!("--max-unknown-share must be between 0 and 1, not {}", args.max_unknown_share);
    }
    if !(0.0..=1.0).contains(&args.leader_share) {
        bail!("--leader-share must be between 0 and 1, not {}", args.leader_share);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    });
    let nodes = match (args.nodes, args.image) {
        (0, _) => None,
        (_, None) => bail!("--nodes needs --image: an OCI image layout for the pods (scripts/build-test-image DIR)"),
        (count, Some(image)) => {
            if count > skiff_chaos::net::MAX_MACHINES {
                bail!(
                    "--nodes {count}: each node runs on a machine of its own, at most {}",
                    skiff_chaos::net::MAX_MACHINES
                );
            }
            if !image.join("index.json").is_file() {
                bail!("--image {}: not an OCI image layout (no index.json)", image.display());
            }
            if args.node_lease_seconds == 0 || args.node_lease_seconds >= args.node_grace_seconds {
                bail!(
                    "--node-lease-seconds must be at least 1 and below --node-grace-seconds ({})",
                    args.node_grace_seconds
                );
            }
            Some(skiff_chaos::nodes::NodeOptions { count, image, lease_interval_seconds: args.node_lease_seconds })
        }
    };
    let artifacts = args.artifacts.unwrap_or_else(|| PathBuf::from(format!("skiff-chaos-{seed}")));
    let opts = skiff_chaos::run::Options {
        skiff: std::env::current_exe().context("locating the skiff binary")?,
        masters: args.masters,
        duration: args.duration,
        faults: args.faults,
        seed,
        artifacts,
        keys: args.keys,
        clients_per_master: args.clients_per_master,
        rate: args.rate,
        deployments: args.deployments,
        leader_share: args.leader_share,
        op_timeout: std::time::Duration::from_millis(args.op_timeout_ms),
        unsafe_local_reads: args.unsafe_local_reads,
        drop_watch_events: args.testing_drop_watch_events,
        nodes,
        node_grace_seconds: args.node_grace_seconds,
        pod_eviction_seconds: args.pod_eviction_seconds,
        floors: Floors {
            ops_per_key: args.min_ops_per_key,
            acked_writes: args.min_acked_writes,
            watch_events: args.min_watch_events,
            pod_events: args.min_pod_events,
            rollouts: args.min_rollouts,
            max_unknown_share: args.max_unknown_share,
        },
    };
    let rt = tokio::runtime::Runtime::new()?;
    // Interrupted, the run is dropped: its masters are killed and its namespaces removed.
    let report = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = skiff_chaos::run::run(&opts) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    });
    // A checker still running on a blocking thread is abandoned, not waited for.
    rt.shutdown_background();
    let report = report?;
    print!("{}", report.render());
    if !report.passed {
        bail!("chaos run failed its checks (seed {seed}); see {}", opts.artifacts.display());
    }
    Ok(())
}
