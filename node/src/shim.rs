//! The per-container helper process (`skiff shim DIR`): the only place libcontainer runs.
//!
//! libcontainer forks and changes directories, which must not happen inside the daemon's
//! multi-threaded tokio runtime, and a container must outlive a daemon restart. So the daemon
//! execs one shim per container instance, in its own session. The shim creates and starts the
//! container from the bundle in `DIR`, owns its stdout and stderr (written to `DIR/container.log`
//! in the CRI format, `<RFC 3339 time> stdout|stderr F <line>`), reaps it, and records what
//! happened in files the daemon reads — so a restarted daemon needs nothing but the directory:
//!
//! - `DIR/started.json` — `{"pid": …, "startedAt": …}` once the process runs;
//! - `DIR/exit.json` — `{"exitCode", "signal", "reason", "message", "startedAt", "finishedAt"}`
//!   when it has exited or could not start (written last, atomically).

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the daemon tells the shim, in `DIR/shim.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimSpec {
    /// libcontainer container id (unique on the machine).
    pub id: String,
    /// libcontainer's state root for this node.
    pub state_root: PathBuf,
    /// cgroup v1 memory controller directory of the container, to tell an OOM kill apart.
    pub memory_cgroup: Option<PathBuf>,
    /// Log size at which `container.log` is rotated to `container.log.1`.
    pub log_max_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    pub pid: i32,
    pub started_at: String,
    /// The shim's own pid (0 in files written before it was recorded): while the shim lives,
    /// a container whose process is gone is being reaped, not lost.
    #[serde(default)]
    pub shim_pid: i32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Exited {
    pub exit_code: i32,
    pub signal: i32,
    /// Kubernetes' reasons: `Completed`, `Error`, `OOMKilled`, `StartError`.
    pub reason: String,
    pub message: String,
    pub started_at: String,
    pub finished_at: String,
}

pub fn write_atomic(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec(value).map_err(std::io::Error::other)?)?;
    fs::rename(&tmp, path)
}

pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Entry point of `skiff shim DIR`. Returns the process exit code.
pub fn main(dir: &Path) -> i32 {
    // Its own session: a signal to the daemon's process group never reaches the container.
    let _ = nix::unistd::setsid();
    let spec: ShimSpec = match read(&dir.join("shim.json")) {
        Some(s) => s,
        None => {
            eprintln!("shim: {}/shim.json is missing or invalid", dir.display());
            return 2;
        }
    };
    let log = match fs::OpenOptions::new().create(true).append(true).open(dir.join("container.log")) {
        Ok(f) => Arc::new(Mutex::new(LogFile { file: f, path: dir.join("container.log"), max: spec.log_max_bytes })),
        Err(e) => {
            record_start_error(dir, &format!("opening the log: {e}"));
            return 1;
        }
    };
    let (pid, started_at, copiers) = match start(dir, &spec, &log) {
        Ok(v) => v,
        Err(message) => {
            record_start_error(dir, &message);
            return 1;
        }
    };
    let status = reap(pid);
    // Output still buffered in the pipes is written before the exit is recorded.
    for c in copiers {
        let _ = c.join();
    }
    let (exit_code, signal) = match status {
        nix::sys::wait::WaitStatus::Exited(_, code) => (code, 0),
        nix::sys::wait::WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, sig as i32),
        _ => (255, 0),
    };
    let oom = spec.memory_cgroup.as_deref().is_some_and(oom_killed);
    let reason = if oom {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    cleanup(&spec);
    let exited = Exited {
        exit_code,
        signal,
        reason: reason.into(),
        message: String::new(),
        started_at,
        finished_at: skiff_proto::time::now_rfc3339(),
    };
    match write_atomic(&dir.join("exit.json"), &exited) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shim: writing exit.json: {e}");
            1
        }
    }
}

/// Entry point of `skiff tenant DIR --error-file F -- CMD…`: runs CMD in the running
/// container of instance `DIR` (its namespaces, cgroup, user, environment and working
/// directory, as libcontainer's tenant mode sets them up), with this process's stdin, stdout
/// and stderr, and returns its exit code (128 + the signal that killed it). A command that
/// cannot be started (no such executable, the container stopped) returns
/// [`crate::exec::NOT_STARTED`] with the reason in `F`.
pub fn tenant(dir: &Path, error_file: &Path, command: Vec<String>) -> i32 {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;
    let fail = |message: String| {
        let _ = fs::write(error_file, message);
        crate::exec::NOT_STARTED
    };
    let Some(spec) = read::<ShimSpec>(&dir.join("shim.json")) else {
        return fail(format!("{}/shim.json is missing or invalid", dir.display()));
    };
    use std::os::fd::AsFd;
    let (stdin, stdout, stderr) = (
        std::io::stdin().as_fd().try_clone_to_owned(),
        std::io::stdout().as_fd().try_clone_to_owned(),
        std::io::stderr().as_fd().try_clone_to_owned(),
    );
    let (Ok(stdin), Ok(stdout), Ok(stderr)) = (stdin, stdout, stderr) else {
        return fail("duplicating the standard streams failed".into());
    };
    let built =
        ContainerBuilder::new(spec.id.clone(), SyscallType::default()).with_root_path(&spec.state_root).and_then(|b| {
            b.with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .as_tenant()
                .with_container_args(command)
                .with_detach(false)
                .build()
        });
    match built {
        Ok(pid) => match reap(pid.as_raw()) {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            nix::sys::wait::WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
            _ => 255,
        },
        Err(e) => fail(e.to_string()),
    }
}

type Copiers = Vec<std::thread::JoinHandle<()>>;

fn start(dir: &Path, spec: &ShimSpec, log: &Arc<Mutex<LogFile>>) -> Result<(i32, String, Copiers), String> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;
    let (out_r, out_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let null: OwnedFd = fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?.into();
    let mut container = ContainerBuilder::new(spec.id.clone(), SyscallType::default())
        .with_root_path(&spec.state_root)
        .map_err(|e| format!("state root {}: {e}", spec.state_root.display()))?
        .with_stdin(null)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .as_init(dir)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating the container: {e}"))?;
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        return Err(format!("starting the container: {e}"));
    }
    let pid = container.pid().map(|p| p.as_raw()).ok_or("the started container has no pid")?;
    let started_at = skiff_proto::time::now_rfc3339();
    let _ = write_atomic(
        &dir.join("started.json"),
        &Started { pid, started_at: started_at.clone(), shim_pid: std::process::id() as i32 },
    );
    let copiers = vec![copy_lines(out_r, "stdout", log.clone()), copy_lines(err_r, "stderr", log.clone())];
    Ok((pid, started_at, copiers))
}

/// Waits for `pid`, reaping whatever else exits meanwhile (libcontainer's intermediate process).
pub(crate) fn reap(pid: i32) -> nix::sys::wait::WaitStatus {
    use nix::sys::wait::{waitpid, WaitStatus};
    let target = nix::unistd::Pid::from_raw(pid);
    loop {
        match waitpid(None, None) {
            Ok(s @ (WaitStatus::Exited(p, _) | WaitStatus::Signaled(p, _, _))) if p == target => return s,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return WaitStatus::Exited(target, 255),
        }
    }
}

fn oom_killed(memory_cgroup: &Path) -> bool {
    let Ok(text) = fs::read_to_string(memory_cgroup.join("memory.oom_control")) else {
        // cgroup v2: memory.events counts oom_kill.
        return fs::read_to_string(memory_cgroup.join("memory.events")).is_ok_and(|t| counter(&t, "oom_kill") > 0);
    };
    counter(&text, "oom_kill") > 0
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines().filter_map(|l| l.strip_prefix(name)?.trim().parse().ok()).next().unwrap_or(0)
}

/// Removes libcontainer's state and the container's cgroups.
fn cleanup(spec: &ShimSpec) {
    if let Ok(mut c) = libcontainer::container::Container::load(spec.state_root.join(&spec.id)) {
        if let Err(e) = c.delete(true) {
            eprintln!("shim: deleting container {}: {e}", spec.id);
        }
    }
}

fn record_start_error(dir: &Path, message: &str) {
    eprintln!("shim: {message}");
    let now = skiff_proto::time::now_rfc3339();
    let exited = Exited {
        exit_code: 128,
        signal: 0,
        reason: "StartError".into(),
        message: message.to_string(),
        started_at: now.clone(),
        finished_at: now,
    };
    let _ = write_atomic(&dir.join("exit.json"), &exited);
}

struct LogFile {
    file: fs::File,
    path: PathBuf,
    max: u64,
}

impl LogFile {
    fn line(&mut self, stream: &str, line: &str) {
        let _ = writeln!(self.file, "{} {stream} F {line}", skiff_proto::time::now_rfc3339_nanos());
        if self.max > 0 && self.file.metadata().map(|m| m.len()).unwrap_or(0) > self.max {
            let rotated = self.path.with_extension("log.1");
            if fs::rename(&self.path, &rotated).is_ok() {
                if let Ok(f) = fs::OpenOptions::new().create(true).append(true).open(&self.path) {
                    self.file = f;
                }
            }
        }
    }
}

fn copy_lines(read: OwnedFd, stream: &'static str, log: Arc<Mutex<LogFile>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let reader = BufReader::new(fs::File::from(read));
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line);
            if let Ok(mut log) = log.lock() {
                log.line(stream, &text);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counters_are_read_from_cgroup_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        assert_eq!(counter(v1, "oom_kill"), 1);
        assert_eq!(counter("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"), 0);
        let v2 = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n";
        assert_eq!(counter(v2, "oom_kill"), 2);
    }
}
