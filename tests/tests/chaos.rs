//! `skiff chaos` as a user runs it: real masters in network namespaces, real faults, and the
//! checkers' verdicts — green on this build, red on a deliberately broken one.

use serde_json::Value;
use skiff_tests::{require_root, skiff_bin};
use std::process::{Command, Output};

/// One chaos run at a time: each starts 3–5 masters and a dozen clients, and on a 2-core machine
/// several at once would measure the machine's overload rather than the cluster.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn chaos(dir: &std::path::Path, args: &[&str]) -> (Output, Value) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(skiff_bin())
        .arg("chaos")
        .arg("--artifacts")
        .arg(dir)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run skiff chaos");
    let report = std::fs::read_to_string(dir.join("report.json")).unwrap_or_else(|e| {
        panic!(
            "no report.json ({e}); skiff chaos said:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, serde_json::from_str(&report).expect("report.json is JSON"))
}

/// The floors a run of about `seconds` of faults must clear (passed as flags, so each test says
/// what it counts on): the checks fail below them, and the report echoes them back.
fn floors(seconds: u64) -> Vec<String> {
    let n = |per_second: u64| (per_second * seconds).to_string();
    [
        ("--min-ops-per-key", n(2)),
        ("--min-acked-writes", n(5)),
        ("--min-watch-events", n(5)),
        ("--min-pod-events", "10".into()),
        ("--min-rollouts", "1".into()),
        ("--max-unknown-share", "0.25".into()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect()
}

/// `floors(seconds)` as the report's `floors` object shows them.
fn assert_floors(report: &Value, seconds: u64, stdout: &str) {
    let f = &report["floors"];
    assert_eq!(
        (f["ops_per_key"].as_u64(), f["acked_writes"].as_u64(), f["watch_events"].as_u64()),
        (Some(2 * seconds), Some(5 * seconds), Some(5 * seconds)),
        "the run did not take the test's floors: {stdout}"
    );
    for name in [
        "linearizability",
        "acknowledged writes",
        "unknown writes",
        "revision monotonicity",
        "committed history (reads)",
    ] {
        assert_eq!(check(report, name)["passed"], true, "{name} below its floor or failed: {stdout}");
    }
}

fn with_floors<'a>(args: &[&'a str], floors: &'a [String]) -> Vec<&'a str> {
    args.iter().copied().chain(floors.iter().map(String::as_str)).collect()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name:?} check in {report:#}"))
}

#[test]
fn kills_pauses_partitions_and_full_disks_lose_nothing_acknowledged() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // Seed 120's schedule for 45 s on 3 masters kills, pauses and isolates the leader, and
    // fills a master's disk below its reserve and to the last byte (the chaos crate's unit
    // tests pin that down).
    let floors = floors(45);
    let faults = "kill,pause,partition,disk-full";
    let args = ["--masters", "3", "--duration", "45s", "--faults", faults, "--seed", "120"];
    let (out, report) = chaos(dir.path(), &with_floors(&args, &floors));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report["passed"], true, "{stdout}");
    assert_floors(&report, 45, &stdout);
    for kind in ["kill", "pause", "partition", "disk-full"] {
        let n = report["faults"].as_array().unwrap().iter().filter(|f| f["kind"] == kind).count();
        assert!(n >= 1, "no {kind} fault was injected:\n{stdout}");
    }
    // A disk below its reserve raised the NOSPACE alarm (and writes were refused for it); one
    // filled to the last byte stopped its master, which came back on its own log.
    let disks: Vec<&str> = (report["faults"].as_array().unwrap().iter())
        .filter(|f| f["kind"] == "disk-full")
        .map(|f| f["description"].as_str().unwrap())
        .collect();
    assert!(disks.iter().any(|d| d.contains("NOSPACE, master")), "no NOSPACE alarm was raised: {disks:#?}");
    assert!(disks.iter().any(|d| d.contains("stopped")), "no full disk stopped its master: {disks:#?}");
    let refused = check(&report, "unknown writes")["detail"].as_str().unwrap().to_string();
    assert!(refused.contains("database space exceeded"), "no write was refused for space: {refused}");
    let ok: u64 = report["operations"].as_object().unwrap().values().map(|c| c["ok"].as_u64().unwrap()).sum();
    assert!(ok > 1000, "only {ok} operations completed:\n{stdout}");
    assert!(
        report["failover_ms"].as_array().unwrap().iter().any(|f| f.is_u64()),
        "no failover was measured:\n{stdout}"
    );
    for name in [
        "linearizability",
        "revision monotonicity",
        "acknowledged writes",
        "hashkv",
        "deployments converge",
        "rollout surge",
        // The masters ran with the store's auth, TLS and peer mTLS on: a caller without
        // credentials was refused by both APIs.
        "credentials required",
    ] {
        assert_eq!(check(&report, name)["passed"], true, "{name}: {stdout}");
    }
    // The surge bound was checked on pods that rollouts really came and went through.
    let surge: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("surge.json")).unwrap()).unwrap();
    assert!(surge["events"].as_u64().unwrap() >= 10, "too few pod events to judge the surge bound: {surge}");
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    // The artifacts: the history as recorded, the schedule, the fault timeline and master logs.
    for f in ["history.jsonl", "checked.jsonl", "schedule.json", "faults.json", "master-1.log", "report.txt"] {
        assert!(dir.path().join(f).exists(), "{f} missing from the artifacts");
    }
}

#[test]
fn a_build_that_reads_local_state_is_caught() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = chaos(
        dir.path(),
        &["--masters", "3", "--duration", "15s", "--faults", "partition", "--seed", "5", "--unsafe-local-reads"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the broken build passed:\n{stdout}");
    assert_eq!(report["passed"], false);
    let lin = check(&report, "linearizability");
    assert_eq!(lin["passed"], false, "{stdout}");
    // The report pins the violation to operations, not just a verdict.
    assert!(lin["detail"].as_str().unwrap().contains("Get → Read("), "{stdout}");
    assert!(stdout.contains("verdict: FAIL"), "{stdout}");
}

/// Master 1's watches drop one event in 100 (a testing switch): the watcher on it is judged
/// against the history read back revision by revision, not against another watch, and fails.
#[test]
fn a_build_whose_watch_drops_events_is_caught() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--masters", "3", "--duration", "15s", "--faults", "pause", "--seed", "5"];
    let (out, report) = chaos(dir.path(), &[&args[..], &["--testing-drop-watch-events", "100"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the broken watch passed:\n{stdout}");
    let broken = check(&report, "watch on master 1");
    assert_eq!(broken["passed"], false, "{stdout}");
    assert!(broken["detail"].as_str().unwrap().contains("Missing"), "{stdout}");
    // The read path is not broken: the masters agree on what was committed, and the watchers
    // on the sound masters received all of it.
    assert_eq!(check(&report, "committed history (reads)")["passed"], true, "{stdout}");
    for name in ["watch on master 2", "watch on master 3", "acknowledged writes"] {
        assert_eq!(check(&report, name)["passed"], true, "{name}: {stdout}");
    }
}

/// With the workloads off every checker has nothing to judge, and says so rather than passing.
#[test]
fn a_run_without_its_workload_fails_its_floors() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let floors = floors(5);
    let args = ["--masters", "3", "--duration", "5s", "--faults", "pause", "--seed", "5"];
    let off = ["--clients-per-master", "0", "--deployments", "0"];
    let (out, report) = chaos(dir.path(), &with_floors(&[&args[..], &off[..]].concat(), &floors));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "an empty run passed:\n{stdout}");
    assert_eq!(report["passed"], false);
    for name in
        ["linearizability", "acknowledged writes", "unknown writes", "revision monotonicity", "watch on master 1"]
    {
        let c = check(&report, name);
        assert_eq!(c["passed"], false, "{name} passed on nothing: {stdout}");
    }
    let lin = check(&report, "linearizability")["detail"].as_str().unwrap().to_string();
    assert!(lin.contains("too little to judge") && lin.contains("chaos/k0 (0)"), "{lin}");
    assert!(stdout.contains("verdict: FAIL"), "{stdout}");
}

/// A directory that holds a run is refused: its masters would resume that run's store.
#[test]
fn a_used_artifacts_directory_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("report.json"), "{}").unwrap();
    let out = Command::new(skiff_bin())
        .args(["chaos", "--duration", "5s", "--artifacts"])
        .arg(dir.path())
        .output()
        .expect("run skiff chaos");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a used directory");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert_eq!(std::fs::read_to_string(dir.path().join("report.json")).unwrap(), "{}", "the old run was touched");
}

#[test]
fn five_masters_survive_bridge_partitions_kills_lossy_and_slow_links() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let floors = floors(40);
    let args = ["--masters", "5", "--duration", "40s", "--faults", "partition,kill,lossy,slow", "--seed", "7"];
    let (out, report) = chaos(dir.path(), &with_floors(&args, &floors));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report["passed"], true, "{stdout}");
    assert_floors(&report, 40, &stdout);
    for kind in ["partition", "kill", "lossy", "slow"] {
        assert!(report["faults"].as_array().unwrap().iter().any(|f| f["kind"] == kind), "no {kind} fault:\n{stdout}");
    }
    assert_eq!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"].as_str().unwrap().starts_with("watch on"))
            .count(),
        5
    );
}

#[test]
fn replacing_members_under_load_loses_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let floors = floors(25);
    let args = ["--masters", "3", "--duration", "25s", "--faults", "churn", "--seed", "4"];
    let (out, report) = chaos(dir.path(), &with_floors(&args, &floors));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_floors(&report, 25, &stdout);
    let replaced = report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["description"].as_str().unwrap().contains("with a fresh member"))
        .count();
    assert!(replaced >= 2, "fewer than two members were replaced:\n{stdout}");
    // The fresh members hold the whole history: equal hashes, and the watchers on their
    // namespaces resumed against them without a gap.
    assert_eq!(check(&report, "hashkv")["passed"], true, "{stdout}");
    assert_eq!(report["passed"], true, "{stdout}");
}

#[test]
fn node_daemons_killed_silenced_and_machines_lost_leave_every_deployment_running() {
    const SEED: &str = "277";
    const SECONDS: u64 = 55;
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let image = skiff_tests::test_image();
    // Seed 277's schedule (pinned by the chaos crate's unit tests) kills the leader, partitions
    // the masters, kills a node daemon, silences one for longer than the grace period plus the
    // eviction timeout, and loses a node machine briefly and once for as long.
    let floors = floors(SECONDS);
    let seconds = format!("{SECONDS}s");
    let args = [
        "--masters",
        "3",
        "--nodes",
        "2",
        "--image",
        image.to_str().unwrap(),
        "--duration",
        &seconds,
        "--faults",
        "kill,partition,node-kill,node-pause,machine-loss",
        "--seed",
        SEED,
    ];
    let (out, report) = chaos(dir.path(), &with_floors(&args, &floors));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report["passed"], true, "{stdout}");
    assert_floors(&report, SECONDS, &stdout);
    let faults = report["faults"].as_array().unwrap();
    assert!(faults.iter().any(|f| f["kind"] == "node-kill"), "no node daemon was killed:\n{stdout}");
    // The leader noticed the silence and the lost machine: the node went unknown and its pods
    // were evicted.
    let seen_unreachable = |prefix: &str| {
        faults
            .iter()
            .filter_map(|f| f["description"].as_str())
            .any(|d| d.starts_with(prefix) && d.contains("Ready=Unknown") && !d.contains(", 0 of its"))
    };
    assert!(
        seen_unreachable("pause node daemon"),
        "no node pause was seen as unreachable with pods evicted:\n{faults:#?}"
    );
    assert!(
        seen_unreachable("lose chaos-node-"),
        "no lost machine was seen as unreachable with pods evicted:\n{faults:#?}"
    );
    // A lost machine's containers died with it (a daemon kill leaves them running).
    let lost = faults.iter().filter_map(|f| f["description"].as_str()).find(|d| d.starts_with("lose chaos-node-"));
    assert!(lost.is_some_and(|d| !d.contains("(cable pulled, 0 processes")), "{faults:#?}");
    assert_eq!(check(&report, "rollout surge")["passed"], true, "{stdout}");
    let converge = check(&report, "deployments converge");
    assert!(converge["detail"].as_str().unwrap().contains("Running and Ready on 2 nodes"), "{stdout}");
    // The nodes were reset at the end and their machines removed: no namespace of theirs and no
    // container of theirs is left (only this test runs chaos with nodes, so any node machine
    // namespace, `skc<tag>-n<k>`, would be this run's).
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let machines: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with("skc") && l.split_whitespace().next().is_some_and(|n| n.contains("-n")))
        .map(String::from)
        .collect();
    assert!(machines.is_empty(), "node machines left behind: {machines:?}");
    let root = dir.path().to_str().unwrap().to_string();
    let shims: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(" shim ") && c.contains(&root))
        .collect();
    assert!(shims.is_empty(), "container shims left running: {shims:?}");
}
