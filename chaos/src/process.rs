//! A process under test — a master or a node daemon — that the nemesis starts, kills, pauses
//! and resumes, its output appended to a log file.

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Child, Command, Stdio};

#[derive(Default)]
pub struct Process {
    child: Option<Child>,
    /// Stopped by SIGSTOP.
    pub paused: bool,
}

impl Process {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process ended by itself; if so it is reaped and its exit status returned.
    pub fn reap(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.paused = false;
        Some(status)
    }

    /// Runs `cmd` (with the harness's RUST_LOG, default info) unless it is running already;
    /// `what` names it in errors.
    pub fn start(&mut self, cmd: &mut Command, log: &Path, what: &str) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = cmd
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        }
        self.paused = false;
    }
}
