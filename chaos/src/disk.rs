//! Disk faults: a size-limited tmpfs under a master's data directory, and a filler file that
//! takes its free space away (used by the `disk-full` fault and by tests/tests/disk_faults.rs).

use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted over a directory; lazily unmounted when dropped, so it goes even while a
/// killed process's files are still being closed.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` over `dir` (which must exist; what it held is hidden).
    pub fn mount(dir: &Path, bytes: u64) -> anyhow::Result<Tmpfs> {
        let path = dir.to_str().with_context(|| format!("{} is not UTF-8", dir.display()))?;
        crate::net::run("mount", &["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700"), "tmpfs", path])?;
        Ok(Tmpfs(dir.to_path_buf()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem.
pub fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let fs = nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok(fs.blocks_available() * fs.fragment_size())
}

/// The file [`fill`] writes in `dir`.
pub fn filler(dir: &Path) -> PathBuf {
    dir.join("chaos-filler")
}

/// Appends to `dir`'s filler until its filesystem has at most `leave` bytes free (0: until a
/// write fails for want of space).
pub fn fill(dir: &Path, leave: u64) -> anyhow::Result<()> {
    let path = filler(dir);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let chunk = vec![0x5a_u8; 1 << 20];
    loop {
        let free = free_bytes(dir)?;
        if free <= leave {
            return Ok(());
        }
        let n = usize::try_from(free - leave).unwrap_or(usize::MAX).min(chunk.len());
        match f.write_all(&chunk[..n]).and_then(|_| f.sync_data()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
        }
    }
}

/// Removes `dir`'s filler, if any.
pub fn free(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(filler(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).context("removing the filler"),
        _ => Ok(()),
    }
}
