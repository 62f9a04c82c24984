//! One run of one container: its directory `pods/<uid>/containers/<name>/<n>/` (n = 0, 1, …,
//! one per restart), which holds the OCI bundle, the overlay rootfs, the shim's files and the
//! log. Everything the daemon knows about a container it reads from here, which is what lets a
//! restarted daemon re-adopt running containers instead of starting duplicates.

use crate::shim::{self, Exited, Started};
use std::path::{Path, PathBuf};

/// What a container instance is doing, read from its directory.
#[derive(Clone, Debug, PartialEq)]
pub enum InstanceState {
    /// Bundle written, shim not yet reporting.
    Creating,
    Running(Started),
    Exited(Exited),
}

#[derive(Clone, Debug)]
pub struct Instance {
    pub attempt: u32,
    pub dir: PathBuf,
}

impl Instance {
    pub fn state(&self) -> InstanceState {
        if let Some(e) = shim::read::<Exited>(&self.dir.join("exit.json")) {
            InstanceState::Exited(e)
        } else if let Some(s) = shim::read::<Started>(&self.dir.join("started.json")) {
            // A shim that died without writing exit.json (machine reboot, SIGKILL) leaves a
            // container we can no longer watch: report it as exited with an unknown code. While
            // the shim lives it is reaping the process and about to write exit.json (with the
            // reason, OOMKilled say): the container is still running until then.
            let alive = |pid: i32| Path::new(&format!("/proc/{pid}")).exists();
            let shim_gone = s.shim_pid == 0 || !alive(s.shim_pid);
            if !alive(s.pid) && shim_gone && !self.dir.join("exit.json").exists() {
                return InstanceState::Exited(Exited {
                    exit_code: 137,
                    reason: "Error".into(),
                    message: "the container's process vanished without an exit status".into(),
                    started_at: s.started_at.clone(),
                    finished_at: skiff_proto::time::now_rfc3339(),
                    ..Default::default()
                });
            }
            InstanceState::Running(s)
        } else {
            InstanceState::Creating
        }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }

    /// Unmounts the overlay and drops its writable layer; the log and exit status stay.
    pub fn release(&self) {
        let rootfs = self.rootfs();
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        for d in ["rootfs", "upper", "work"] {
            let _ = std::fs::remove_dir_all(self.dir.join(d));
        }
    }

    /// Sends `signal` to the container's init (its own pid namespace: the rest follow).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let InstanceState::Running(s) = self.state() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.pid), signal);
        }
    }
}

/// The instances of container `name` in `pod_dir`, oldest first.
pub fn instances(pod_dir: &Path, name: &str) -> Vec<Instance> {
    let dir = pod_dir.join("containers").join(name);
    let mut out: Vec<Instance> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let attempt = e.file_name().to_str()?.parse().ok()?;
            Some(Instance { attempt, dir: e.path() })
        })
        .collect();
    out.sort_by_key(|i| i.attempt);
    out
}

/// Every instance of every container in `pod_dir`.
pub fn all_instances(pod_dir: &Path) -> Vec<Instance> {
    std::fs::read_dir(pod_dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .flat_map(|name| instances(pod_dir, &name))
        .collect()
}
