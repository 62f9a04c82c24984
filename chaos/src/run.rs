//! One chaos run: start the masters, run the workload and the watchers while the nemesis
//! injects its schedule, heal everything, then judge what was recorded.

use crate::apps::{self, AppsLog};
use crate::checks::{self, Floors};
use crate::cluster::{ChaosCluster, MasterOptions};
use crate::kv::{self, Acked, ClientLog, PREFIX};
use crate::linearizability::{self, Event};
use crate::nemesis::{self, FaultKind};
use crate::oracle;
use crate::report::{self, count_ops, Check, Report};
use crate::rollouts;
use crate::watchers::{self, END_KEY};
use anyhow::{bail, Context};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Options {
    /// The `skiff` binary the masters run.
    pub skiff: PathBuf,
    pub masters: usize,
    pub duration: Duration,
    pub faults: Vec<FaultKind>,
    pub seed: u64,
    /// Where the history, the fault timeline, the report and the masters' logs go.
    pub artifacts: PathBuf,
    pub keys: usize,
    pub clients_per_master: usize,
    /// Operations per second per client (0: as fast as replies come).
    pub rate: u32,
    /// Deployments the API workload scales, rolls and deletes pods of (0: no API workload).
    pub deployments: usize,
    /// Share of kills, pauses and lossy links aimed at the leader.
    pub leader_share: f64,
    /// Every request's deadline; a write without a reply by then is "unknown".
    pub op_timeout: Duration,
    /// Run deliberately broken masters (reads skip the read-index check) to prove the checker.
    pub unsafe_local_reads: bool,
    /// Testing only: the first master's watches drop every Nth event, to prove the oracle.
    pub drop_watch_events: Option<u64>,
    /// Node daemons that run the API workload's pods (`None`: pods stay unscheduled).
    pub nodes: Option<crate::nodes::NodeOptions>,
    /// The leader's node grace period and pod eviction timeout, in seconds.
    pub node_grace_seconds: u64,
    pub pod_eviction_seconds: u64,
    /// The least the run must have done for its checks to pass.
    pub floors: Floors,
}

/// Each master's tmpfs in a run with disk faults: room for RocksDB's preallocated log files
/// (about 70 MiB each) and a run's data, with a fifth of it the NOSPACE reserve.
const DISK_BYTES: u64 = 320 << 20;

/// Puts `key` through whichever master accepts it first, retrying until `deadline`.
async fn put_anywhere(cluster: &ChaosCluster, key: &str, deadline: Instant) -> anyhow::Result<i64> {
    let mut last = String::new();
    while Instant::now() < deadline {
        for i in 0..cluster.len() {
            let mut kv = KvClient::new(cluster.channel(i));
            match kv.put(PutRequest { key: key.into(), value: b"x".to_vec(), ..Default::default() }).await {
                Ok(r) => return Ok(r.into_inner().header.map_or(0, |h| h.revision)),
                Err(e) => last = format!("master {}: {}", cluster.masters[i].id, e.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no master accepted a write of {key}: {last}")
}

/// Each workload key's value at `revision` (the run's start), read through whichever master
/// answers: the linearizability search starts every key there instead of assuming it absent.
async fn values_at(
    cluster: &ChaosCluster,
    keys: &[String],
    revision: i64,
    deadline: Instant,
) -> anyhow::Result<BTreeMap<String, linearizability::Value>> {
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut values = BTreeMap::new();
        let mut failed = false;
        for (i, key) in keys.iter().enumerate() {
            let mut kv = KvClient::new(cluster.channel(i % cluster.len()));
            let range = RangeRequest { key: key.clone().into_bytes(), revision, ..Default::default() };
            match kv.range(range).await {
                Ok(r) => {
                    let value = r.into_inner().kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    values.insert(key.clone(), value);
                }
                Err(e) => {
                    last = format!("{key}: {}", e.message());
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            return Ok(values);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("could not read the workload's keys at revision {revision}: {last}")
}

/// Waits until every master answers HashKV at `revision` with the same hash.
async fn hashes_agree(cluster: &ChaosCluster, revision: i64) -> Check {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = BTreeMap::new();
    while Instant::now() < deadline {
        seen.clear();
        for i in 0..cluster.len() {
            let mut m = MaintenanceClient::new(cluster.channel(i));
            let h = m
                .hash_kv(HashKvRequest { revision })
                .await
                .map(|r| r.into_inner().hash)
                .map_err(|e| e.message().to_string());
            seen.insert(cluster.masters[i].id, h);
        }
        let hashes: HashSet<&u32> = seen.values().filter_map(|h| h.as_ref().ok()).collect();
        if hashes.len() == 1 && seen.values().all(|h| h.is_ok()) {
            return Check {
                name: "hashkv".into(),
                passed: true,
                detail: format!(
                    "every master hashes revision {revision} to {:08x}",
                    hashes.iter().next().copied().copied().unwrap_or(0)
                ),
            };
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Check { name: "hashkv".into(), passed: false, detail: format!("masters disagree at revision {revision}: {seen:?}") }
}

/// Proves the run's masters were not open: a caller that verifies the server but presents no
/// credentials is refused by the store (etcd's "user name is empty") and by the API.
async fn credentials_required(cluster: &ChaosCluster, i: usize) -> Check {
    use skiff_proto::api::objects_client::ObjectsClient;
    use skiff_proto::api::RawListRequest;
    use skiff_proto::etcdserverpb::RangeRequest;
    let name = "credentials required".to_string();
    let endpoint = match cluster.pki.anonymous_endpoint() {
        Ok(e) => e.timeout(Duration::from_secs(5)),
        Err(e) => return Check { name, passed: false, detail: format!("no anonymous client: {e:#}") },
    };
    let channel = cluster.net.channel_to(i, endpoint);
    let range = RangeRequest { key: PREFIX.into(), range_end: b"\0".to_vec(), ..Default::default() };
    let store = KvClient::new(channel.clone()).range(range).await;
    let list = RawListRequest { resource: "secrets".into(), ..Default::default() };
    let api = ObjectsClient::new(channel).list(list).await;
    fn refused<T>(r: &Result<T, tonic::Status>, code: tonic::Code) -> Result<String, String> {
        match r {
            Err(s) if s.code() == code => Ok(s.message().to_string()),
            Err(s) => Err(format!("{:?} {}", s.code(), s.message())),
            Ok(_) => Err("answered".to_string()),
        }
    }
    match (refused(&store, tonic::Code::InvalidArgument), refused(&api, tonic::Code::Unauthenticated)) {
        (Ok(store), Ok(api)) => Check {
            name,
            passed: true,
            detail: format!(
                "without credentials master {} refused the store ({store}) and the API ({api})",
                cluster.masters[i].id
            ),
        },
        (store, api) => Check {
            name,
            passed: false,
            detail: format!("master {} without credentials: store {store:?}, API {api:?}", cluster.masters[i].id),
        },
    }
}

/// One JSON object per line.
fn write_jsonl(path: PathBuf, events: &[Event]) -> anyhow::Result<()> {
    let lines: Vec<String> = events.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
    std::fs::write(&path, lines.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))
}

fn write_json(path: PathBuf, value: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(&path, serde_json::to_string_pretty(value)?).with_context(|| format!("writing {}", path.display()))
}

/// Runs the whole experiment. `Err` means the harness itself could not run (no root, a master
/// would not start); a run whose checks fail is an `Ok` report with `passed == false`.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    // A previous run's directory holds its masters' data: started on it, they would resume that
    // store and append to its logs, and its keys' values would meet a checker that assumes a
    // fresh start.
    let occupied = std::fs::read_dir(&opts.artifacts).map(|mut d| d.next().is_some()).unwrap_or(false);
    if occupied {
        bail!(
            "{} is not empty (a previous run's data and logs?); remove it or pass --artifacts with a new directory",
            opts.artifacts.display()
        );
    }
    std::fs::create_dir_all(&opts.artifacts).with_context(|| format!("creating {}", opts.artifacts.display()))?;
    let with_nodes = opts.nodes.as_ref().is_some_and(|n| n.count > 0);
    if let Some(kind) = opts.faults.iter().find(|f| f.on_nodes() && !with_nodes) {
        bail!("the fault {} needs node daemons (--nodes N --image LAYOUT)", kind.name());
    }
    if with_nodes && opts.deployments == 0 {
        bail!("node daemons run the API workload's pods: --nodes needs --deployments of at least 1");
    }
    let schedule = nemesis::plan_with(opts.seed, opts.duration, &opts.faults, opts.masters, opts.leader_share);
    write_json(opts.artifacts.join("schedule.json"), &schedule)?;
    let master_options = MasterOptions {
        unsafe_local_reads: opts.unsafe_local_reads,
        drop_watch_events: opts.drop_watch_events,
        disk_bytes: opts.faults.contains(&FaultKind::DiskFull).then_some(DISK_BYTES),
        node_grace_seconds: opts.node_grace_seconds,
        pod_eviction_seconds: opts.pod_eviction_seconds,
    };
    let mut cluster = ChaosCluster::start(&opts.skiff, opts.masters, &opts.artifacts, master_options)?;

    // phase: the cluster is up when a write is acknowledged; the start marker fixes the
    // watchers' start revision.
    let start = put_anywhere(&cluster, &format!("{PREFIX}start"), Instant::now() + Duration::from_secs(60)).await?;
    let keys: Vec<String> = (0..opts.keys).map(kv::key).collect();
    let initial = values_at(&cluster, &keys, start, Instant::now() + Duration::from_secs(60)).await?;

    // With nodes, the workload changes a Deployment every 1–3 s per client rather than every
    // 0.1–0.3 s: each change starts and stops real containers on a small machine.
    let mut app_pace = 100..300;
    let mut image = "busybox:unscheduled".to_string();
    if let Some(nodes) = opts.nodes.as_ref().filter(|_| with_nodes) {
        cluster.start_nodes(&opts.artifacts, nodes)?;
        image = cluster.nodes.image.clone();
        app_pace = 1000..3000;
    }
    if opts.deployments > 0 {
        let channel = cluster.net.channel(0, Duration::from_secs(5));
        apps::setup(channel, opts.deployments, &image, Instant::now() + Duration::from_secs(60)).await?;
    }

    // phase: workload and watchers while the nemesis runs its schedule
    let t0 = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (give_up_tx, give_up_rx) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for c in 0..opts.masters * opts.clients_per_master {
        let i = c % opts.masters;
        let channel = cluster.net.channel(i, opts.op_timeout);
        let pace = kv::Pace { keys: opts.keys, seed: opts.seed, rate: opts.rate };
        clients.push(tokio::spawn(kv::client(c as u32 + 1, channel, pace, t0, stop_rx.clone())));
    }
    let mut app_tasks = Vec::new();
    let app_clients = if opts.deployments > 0 { opts.masters } else { 0 };
    for i in 0..app_clients {
        let channel = cluster.net.channel(i, opts.op_timeout);
        let seed = opts.seed + i as u64;
        app_tasks.push(tokio::spawn(apps::run(channel, opts.deployments, seed, app_pace.clone(), stop_rx.clone())));
    }
    // The steady Deployment's surge bound, at every revision, through whichever master answers.
    let surge_task = (opts.deployments > 0).then(|| {
        let channels = (0..opts.masters).map(|i| cluster.net.channel(i, Duration::from_secs(24 * 3600))).collect();
        let bound = (apps::STEADY_REPLICAS + apps::MAX_SURGE) as usize;
        tokio::spawn(async move { rollouts::watch(channels, apps::NAMESPACE, &apps::name(0), bound, stop_rx).await })
    });
    let mut watch_tasks = Vec::new();
    for i in 0..opts.masters {
        // Watch streams stay open for the whole run: no per-request deadline.
        let channel = cluster.net.channel(i, Duration::from_secs(24 * 3600));
        watch_tasks.push(tokio::spawn(watchers::watcher(
            cluster.masters[i].id,
            channel,
            PREFIX,
            start,
            give_up_rx.clone(),
        )));
    }
    let faults = nemesis::execute(&mut cluster, &schedule, t0).await;
    tokio::time::sleep_until((t0 + opts.duration).into()).await;

    // phase: stop faults and workload, let the cluster settle, mark the end
    cluster.net.heal()?;
    for i in 0..cluster.len() {
        cluster.resume(i);
        cluster.restart(i)?;
    }
    cluster.nodes.heal()?;
    let faults = faults?;
    let _ = stop_tx.send(true);
    // Every task ends within a few request deadlines of the stop (an API client makes up to six
    // calls a step); one that does not is a harness bug, reported rather than waited on.
    let ended_by = Instant::now() + opts.op_timeout * 8 + Duration::from_secs(30);
    let logs: Vec<ClientLog> = join_by(clients, ended_by, "kv client").await?;
    let mut apps_log = AppsLog::default();
    for l in join_by(app_tasks, ended_by, "API client").await? {
        apps_log.scales += l.scales;
        apps_log.rollouts += l.rollouts;
        apps_log.pod_deletes += l.pod_deletes;
        apps_log.failed += l.failed;
    }
    let surge = join_by(surge_task.into_iter().collect(), ended_by, "surge watcher").await?.pop();
    let elapsed = t0.elapsed();
    let end = match put_anywhere(&cluster, END_KEY, Instant::now() + Duration::from_secs(RECOVERY_SECONDS)).await {
        Ok(end) => end,
        // The faults are healed and every master runs: a cluster that takes no write now has
        // lost its liveness, which is a verdict, not a harness error.
        Err(e) => {
            for t in watch_tasks {
                t.abort();
            }
            let mut events: Vec<Event> = logs.iter().flat_map(|l| l.events.iter().cloned()).collect();
            events.sort_by_key(|e| e.invoke);
            write_jsonl(opts.artifacts.join("history.jsonl"), &events)?;
            let check = Check {
                name: "cluster recovers".into(),
                passed: false,
                detail: format!(
                    "{RECOVERY_SECONDS} s after the faults were healed and every master restarted, no master took a write: {e:#}"
                ),
            };
            cluster.nodes.stop_all();
            cluster.stop_all();
            return finish(opts, elapsed, count_ops(&events), &events, faults, vec![check]);
        }
    };
    let leader = cluster.leader().await.unwrap_or(0);
    // The committed history through the read path, on every master, by fresh clients.
    let deadline = Instant::now() + Duration::from_secs(300);
    let histories = futures::future::try_join_all((0..cluster.len()).map(|i| {
        let channel = cluster.net.channel(i, Duration::from_secs(10));
        oracle::read_history(cluster.masters[i].id, channel, PREFIX, start, end, deadline)
    }))
    .await?;
    let history = &histories[leader].events;
    // Every watcher must reach the end marker; after 30 s the stragglers are told to stop and
    // are judged on what they have.
    let giver = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let _ = give_up_tx.send(true);
    });
    let watch_logs = join_by(watch_tasks, Instant::now() + Duration::from_secs(60), "watcher").await?;
    giver.abort();

    // phase: judge
    let mut events: Vec<Event> = logs.iter().flat_map(|l| l.events.iter().cloned()).collect();
    let revisions: Vec<i64> = logs.iter().flat_map(|l| l.revisions.iter().copied()).collect();
    let recorded = count_ops(&events);
    // Judged on the writes as recorded, before the committed history settles any.
    let mut unknown = checks::unknown_writes(&events, opts.floors.max_unknown_share);
    // Written before judging, so a check that fails hard still leaves the history behind.
    write_jsonl(opts.artifacts.join("history.jsonl"), &events)?;
    let (settled, dropped) = kv::settle_unknowns(&mut events, &revisions, history, &histories[leader].values);
    events.sort_by_key(|e| e.invoke);
    let acked: Vec<Acked> = logs.iter().flat_map(|l| l.acked.iter().cloned()).collect();
    let mut checks = vec![oracle::agreement(&histories)];
    let floors = &opts.floors;
    let ops_per_key = floors.ops_per_key;
    let (mut lin, events) =
        tokio::task::spawn_blocking(move || (checks::linearizability(&events, &initial, &keys, ops_per_key), events))
            .await?;
    lin.detail +=
        &format!(" (of the unknown writes, the committed history shows {settled} happened and {dropped} did not)");
    checks.push(lin);
    let refused: u64 = logs.iter().map(|l| l.refused_for_space).sum();
    if refused > 0 {
        unknown.detail +=
            &format!("; {refused} writes refused with \"database space exceeded\" (not applied, not in the history)");
    }
    checks.push(unknown);
    let regressions: Vec<&String> = logs.iter().flat_map(|l| &l.revision_regressions).collect();
    let replies = revisions.iter().filter(|r| **r > 0).count();
    checks.push(checks::revision_monotonicity(&regressions, replies, floors.acked_writes));
    checks.push(checks::acknowledged_writes(&acked, history, floors.acked_writes));
    checks.extend(checks::watches(&watch_logs, history, floors.watch_events));
    checks.push(hashes_agree(&cluster, end).await);
    checks.push(credentials_required(&cluster, leader).await);
    if let Some(surge) = &surge {
        write_json(opts.artifacts.join("surge.json"), surge)?;
        checks.push(checks::surge(surge, floors.pod_events));
    }
    if opts.deployments > 0 {
        let channel = cluster.net.channel(leader, Duration::from_secs(5));
        checks.push(match apps::converge(channel, Duration::from_secs(60), with_nodes).await {
            Ok(took) => Check {
                name: "deployments converge".into(),
                passed: apps_log.rollouts >= floors.rollouts,
                detail: format!(
                    "{} deployments at their spec{} {:.1} s after the faults stopped ({} scales, {} rollouts against a floor of {}, {} pod deletions, {} calls failed under faults)",
                    opts.deployments,
                    if with_nodes { format!(", every pod Running and Ready on {} nodes,", cluster.nodes.len()) } else { String::new() },
                    took.as_secs_f64(),
                    apps_log.scales,
                    apps_log.rollouts,
                    floors.rollouts,
                    apps_log.pod_deletes,
                    apps_log.failed
                ),
            },
            Err(problems) => Check {
                name: "deployments converge".into(),
                passed: false,
                detail: format!("not converged 60 s after the faults stopped: {}", problems.join("; ")),
            },
        });
    }
    cluster.nodes.stop_all();
    cluster.stop_all();
    // As checked (unknown writes settled); history.jsonl above is as the clients recorded it.
    write_jsonl(opts.artifacts.join("checked.jsonl"), &events)?;
    finish(opts, elapsed, recorded, &events, faults, checks)
}

/// How long the healed cluster has to take the end marker before the run fails for liveness.
const RECOVERY_SECONDS: u64 = 60;

/// The report on `checks`, written beside the run's other artifacts.
fn finish(
    opts: &Options,
    elapsed: Duration,
    operations: BTreeMap<String, report::OpCounts>,
    events: &[Event],
    faults: Vec<nemesis::FaultRecord>,
    checks: Vec<Check>,
) -> anyhow::Result<Report> {
    let report = Report {
        masters: opts.masters,
        duration_s: elapsed.as_secs_f64(),
        seed: opts.seed,
        faults_requested: opts.faults.iter().map(|f| f.name().to_string()).collect(),
        operations,
        failover_ms: report::failovers(&faults, events),
        faults,
        passed: checks.iter().all(|c| c.passed),
        checks,
        floors: opts.floors.clone(),
        artifacts: opts.artifacts.display().to_string(),
    };
    write_json(opts.artifacts.join("faults.json"), &report.faults)?;
    write_json(opts.artifacts.join("report.json"), &report)?;
    std::fs::write(opts.artifacts.join("report.txt"), report.render())?;
    Ok(report)
}

/// Awaits `tasks` in turn until `deadline`; a task still running then is a harness bug: every
/// task left is aborted and the error names the first.
async fn join_by<T>(tasks: Vec<tokio::task::JoinHandle<T>>, deadline: Instant, what: &str) -> anyhow::Result<Vec<T>> {
    let n = tasks.len();
    let mut done = Vec::with_capacity(n);
    let mut tasks = tasks.into_iter().enumerate();
    while let Some((i, mut t)) = tasks.next() {
        match tokio::time::timeout_at(deadline.into(), &mut t).await {
            Ok(r) => done.push(r?),
            Err(_) => {
                t.abort();
                tasks.for_each(|(_, t)| t.abort());
                bail!("{what} {} of {n} was still running at its deadline after the faults stopped", i + 1);
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_past_its_deadline_fails_the_join_by_name_and_is_aborted() {
        let quick = tokio::spawn(async { 1 });
        let (_keep, never) = tokio::sync::oneshot::channel::<()>();
        let stuck = tokio::spawn(async move {
            let _ = never.await;
            2
        });
        let abort = stuck.abort_handle();
        let err = join_by(vec![quick, stuck], Instant::now() + Duration::from_millis(200), "kv client")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("kv client 2 of 2 was still running"), "{err}");
        // Aborting is asynchronous: poll for it with a deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !abort.is_finished() {
            assert!(Instant::now() < deadline, "the stuck task was not aborted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let done = join_by(vec![tokio::spawn(async { 3 })], Instant::now() + Duration::from_secs(5), "watcher").await;
        assert_eq!(done.unwrap(), vec![3]);
    }
}
