//! etcd 3.4 (Debian's `etcd-server`) as the reference Skiff's etcd API is held to: tests run the
//! same requests against both and expect the same answers.
//!
//! The reference cluster is three members on loopback, plaintext and without auth — it is the
//! yardstick, not a Skiff listener; its data lives in a temporary directory and every member
//! is killed when it is dropped.

use crate::{status, wait_for};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub struct EtcdCluster {
    dir: TempDir,
    members: Vec<Child>,
    /// Client addresses (host:port), one per member.
    pub endpoints: Vec<String>,
}

impl EtcdCluster {
    /// Starts three members and waits until they have elected a leader.
    pub fn start() -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = skiff_chaos::net::free_loopback_ports(6).expect("free ports");
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
        let initial: Vec<String> = (0..3).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut members = Vec::new();
        let mut endpoints = Vec::new();
        for i in 0..3 {
            let client = format!("127.0.0.1:{}", ports[2 * i + 1]);
            let log = std::fs::File::create(dir.path().join(format!("e{i}.log"))).expect("log file");
            let child = Command::new("etcd")
                .args([
                    format!("--name=e{i}"),
                    format!("--data-dir={}", dir.path().join(format!("e{i}")).display()),
                    format!("--listen-peer-urls={}", peer(i)),
                    format!("--initial-advertise-peer-urls={}", peer(i)),
                    format!("--listen-client-urls=http://{client}"),
                    format!("--advertise-client-urls=http://{client}"),
                    format!("--initial-cluster={}", initial.join(",")),
                    "--initial-cluster-state=new".into(),
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("etcd is installed (Debian etcd-server; scripts/setup installs it)");
            members.push(child);
            endpoints.push(client);
        }
        let cluster = EtcdCluster { dir, members, endpoints };
        let rt = crate::runtime();
        wait_for(Duration::from_secs(30), "the etcd reference cluster to elect a leader", || {
            let s = rt.block_on(status(&cluster.endpoints[0])).ok()?;
            (s.leader != 0).then_some(())
        });
        cluster
    }

    /// The member log of member `i`, for a failure message.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("e{i}.log"))).unwrap_or_default()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}
