//! etcd 3.4 (Debian's `etcd-server`) as the reference Skiff's etcd API is held to: tests run the
//! same requests against both and expect the same answers.
//!
//! The reference cluster is three members on loopback that authenticate and encrypt as any
//! listener here must: TLS on client and peer ports with certificates from a CA of its own,
//! and a client certificate required on both (`--client-cert-auth`, `--peer-client-cert-auth`);
//! [`crate::channel`] presents the test's certificate to its addresses. Its data lives in a
//! temporary directory and every member is killed when it is dropped.

use crate::{status, wait_for};
use skiff_proto::pki::{Ca, Issued, Subject, Usage};
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
        let (member, client_identity, ca) = credentials(dir.path());
        let tls = [
            ("--cert-file", &member.cert),
            ("--key-file", &member.key),
            ("--trusted-ca-file", &ca),
            ("--peer-cert-file", &member.cert),
            ("--peer-key-file", &member.key),
            ("--peer-trusted-ca-file", &ca),
        ]
        .map(|(flag, path)| format!("{flag}={}", path.display()));
        let peer = |i: usize| format!("https://127.0.0.1:{}", ports[2 * i]);
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
                    format!("--listen-client-urls=https://{client}"),
                    format!("--advertise-client-urls=https://{client}"),
                    format!("--initial-cluster={}", initial.join(",")),
                    "--initial-cluster-state=new".into(),
                    "--client-cert-auth".into(),
                    "--peer-client-cert-auth".into(),
                ])
                .args(&tls)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("etcd is installed (Debian etcd-server; scripts/setup installs it)");
            members.push(child);
            crate::register_ca(&client, &ca);
            crate::register_identity(&client, &client_identity.cert, &client_identity.key);
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

/// A CA of the reference cluster's own in `dir/pki`, its members' certificate (for 127.0.0.1,
/// serving clients and peers, and presented to peers) and the test's client certificate.
fn credentials(dir: &std::path::Path) -> (Issued, Issued, std::path::PathBuf) {
    let pki = dir.join("pki");
    skiff_proto::pki::create_private_dir(&pki).expect("pki dir");
    let ca = Ca::create(&pki.join("ca"), "etcd-reference-ca").expect("CA");
    let subject = Subject { common_name: "etcd-member", sans: &["127.0.0.1", "localhost"], ..Default::default() };
    let member = ca.issue(&pki.join("member"), &subject, &[Usage::ServerAuth, Usage::ClientAuth]).expect("member");
    let client = Subject { common_name: "skiff-tests", ..Default::default() };
    let client = ca.issue(&pki.join("client"), &client, &[Usage::ClientAuth]).expect("client certificate");
    (member, client, pki.join("ca.crt"))
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}
