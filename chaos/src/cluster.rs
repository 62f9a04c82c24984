//! The masters under test: real `skiff master` processes, one per namespace of [`Net`], that the
//! nemesis kills, restarts, pauses and resumes.

use crate::net::Net;
use crate::nodes::Nodes;
use crate::pki::ChaosPki;
use crate::process::Process;
use anyhow::{bail, Context};
use skiff_proto::etcdserverpb::alarm_request::AlarmAction;
use skiff_proto::etcdserverpb::cluster_client::ClusterClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, StatusRequest,
    StatusResponse,
};
use skiff_raft_store::{MasterConfig, Member};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tonic::transport::Channel;

/// One master: its process (when running) and whether it is stopped by SIGSTOP.
pub struct Master {
    pub id: u64,
    config: PathBuf,
    /// The raft data directory (wiped when the member is replaced).
    data: PathBuf,
    peer_addr: String,
    /// Its client listener, on its bridge address (node machines reach it there).
    client_addr: String,
    log: PathBuf,
    pub process: Process,
}

/// What every master of a run is configured with beyond its address.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// Deliberately broken masters (reads skip the read-index check), to prove the checker.
    pub unsafe_local_reads: bool,
    /// How long a node's Lease may go unrenewed before the leader marks it unreachable.
    pub node_grace_seconds: u64,
    /// How long pods stay on an unreachable node before they are evicted.
    pub pod_eviction_seconds: u64,
    /// Testing only: the first master's watch feeds drop every Nth event — a deliberately
    /// broken watch path, to prove the read-path oracle catches it.
    pub drop_watch_events: Option<u64>,
    /// Each master's data directory on a tmpfs of this many bytes, so the `disk-full` fault
    /// can fill it.
    pub disk_bytes: Option<u64>,
}

/// The reserve of free space a master keeps on a run's tmpfs (its NOSPACE threshold).
pub fn disk_reserve(disk_bytes: u64) -> u64 {
    disk_bytes / 5
}

impl Master {
    /// Writes this master's configuration file as raft member `id`; `initial` names the founding
    /// members (empty: join a cluster that added it).
    fn write_config(
        &self,
        initial: &BTreeMap<u64, Member>,
        opts: &MasterOptions,
        pki: &ChaosPki,
    ) -> anyhow::Result<()> {
        let mut config = MasterConfig::new(
            self.id,
            format!("master-{}", self.id),
            self.data.clone(),
            self.peer_addr.clone(),
            self.client_addr.clone(),
        );
        config.initial_members = initial.clone();
        config.unsafe_local_reads = opts.unsafe_local_reads;
        if let Some(bytes) = opts.disk_bytes {
            config.disk_reserve_bytes = disk_reserve(bytes);
        }
        config.client_tls = Some(pki.client_listener());
        config.root_password_hash = Some(pki.root_password_hash.clone());
        let home = self.config.parent().context("a master's config lives in its directory")?;
        config.peer_tls = Some(pki.peer_identity(home, self.id)?);
        // `skiff master --config` reads the controllers' and the API's settings beside the store's.
        let mut file = serde_json::to_value(&config)?;
        file["controllers"] = serde_json::json!({
            "node_grace_seconds": opts.node_grace_seconds,
            "pod_eviction_seconds": opts.pod_eviction_seconds,
        });
        file["kubelet_client"] = serde_json::json!({
            "cert": pki.kubelet_client.cert,
            "key": pki.kubelet_client.key,
            "ca": pki.ca,
        });
        skiff_proto::pki::write_private(&self.config, serde_json::to_string_pretty(&file)?.as_bytes())
            .with_context(|| format!("writing {}", self.config.display()))
    }
}

pub struct ChaosCluster {
    pub net: Net,
    pub masters: Vec<Master>,
    skiff: PathBuf,
    /// One channel per master for the harness's own calls (status, hash, final reads).
    admin: Vec<Channel>,
    options: MasterOptions,
    /// The run's CAs and credentials.
    pub pki: ChaosPki,
    /// The node daemons, when the run has any ([`start_nodes`](Self::start_nodes)).
    pub nodes: Nodes,
    /// The masters' tmpfs data directories, when the run has disk faults (unmounted on drop,
    /// after the masters are stopped).
    disks: Vec<crate::disk::Tmpfs>,
}

impl ChaosCluster {
    /// Writes each master's configuration under `dir` and starts them all.
    pub fn start(skiff: &Path, n: usize, dir: &Path, options: MasterOptions) -> anyhow::Result<ChaosCluster> {
        let mut net = Net::create(n)?;
        let ips: Vec<String> = net.members.iter().map(|m| m.ip.to_string()).collect();
        let pki = ChaosPki::create(dir, &ips)?;
        net.use_tls(pki.harness_tls()?)?;
        let members: BTreeMap<u64, Member> = (0..n)
            .map(|i| {
                let id = i as u64 + 1;
                let m = Member {
                    name: format!("master-{id}"),
                    peer_addr: net.peer_addr(i),
                    client_addr: net.client_addr(i).to_string(),
                };
                (id, m)
            })
            .collect();
        let mut masters = Vec::new();
        let mut disks = Vec::new();
        for (id, m) in &members {
            let home = dir.join(format!("master-{id}"));
            skiff_proto::pki::create_private_dir(&home)?;
            let master = Master {
                id: *id,
                config: home.join("master.json"),
                data: home.join("data"),
                peer_addr: m.peer_addr.clone(),
                client_addr: m.client_addr.clone(),
                log: dir.join(format!("master-{id}.log")),
                process: Process::default(),
            };
            master.write_config(&members, &options, &pki)?;
            if let Some(bytes) = options.disk_bytes {
                std::fs::create_dir_all(&master.data)?;
                disks.push(crate::disk::Tmpfs::mount(&master.data, bytes)?);
            }
            masters.push(master);
        }
        let admin = (0..n).map(|i| net.channel(i, Duration::from_secs(3))).collect();
        let mut c = ChaosCluster {
            net,
            masters,
            skiff: skiff.to_path_buf(),
            admin,
            options,
            pki,
            nodes: Nodes::default(),
            disks,
        };
        for i in 0..n {
            c.restart(i)?;
        }
        Ok(c)
    }

    /// Starts the node daemons, each on a machine of its own on the masters' bridge.
    pub fn start_nodes(&mut self, dir: &Path, opts: &crate::nodes::NodeOptions) -> anyhow::Result<()> {
        self.nodes = Nodes::start(&self.skiff, &self.net, &self.pki, dir, opts)?;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.masters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.masters.is_empty()
    }

    /// Starts master `i` (again) with its data directory as it was left.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.masters[i];
        let mut cmd = Command::new("ip");
        cmd.args(self.net.exec_prefix(i)).arg(&self.skiff).arg("master").arg("--config").arg(&m.config);
        if let Some(n) = self.options.drop_watch_events.filter(|_| i == 0) {
            cmd.env("SKIFF_TESTING_DROP_WATCH_EVENTS", n.to_string());
        }
        m.process.start(&mut cmd, &m.log, &format!("master {}", m.id))
    }

    /// Whether master `i` ended by itself (a full disk, a crash); reaps it if so.
    pub fn reap(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.masters[i].process.reap()
    }

    /// Fills master `i`'s data directory below its NOSPACE reserve, or to the last byte.
    pub fn fill_disk(&mut self, i: usize, last_byte: bool) -> anyhow::Result<()> {
        let (Some(bytes), Some(disk)) = (self.options.disk_bytes, self.disks.get(i)) else {
            bail!("a disk fault in a run without tmpfs data directories");
        };
        let leave = if last_byte { 0 } else { disk_reserve(bytes) / 2 };
        crate::disk::fill(disk.path(), leave)
    }

    /// Asks master `i` to defragment (compact) its store; errors are the fault's business.
    pub async fn defragment(&self, i: usize) {
        let mut c = MaintenanceClient::new(self.admin[i].clone());
        let req = skiff_proto::etcdserverpb::DefragmentRequest {};
        let _ = tokio::time::timeout(Duration::from_secs(10), c.defragment(req)).await;
    }

    /// Gives back what [`fill_disk`](Self::fill_disk) took (nothing when no disk faults).
    pub fn free_disk(&mut self, i: usize) -> anyhow::Result<()> {
        self.disks.get(i).map_or(Ok(()), |disk| crate::disk::free(disk.path()))
    }

    /// The active alarms as the first answering master lists them ("no alarm" when none).
    pub async fn alarms(&self) -> anyhow::Result<String> {
        let list = self.list_alarms().await?;
        if list.is_empty() {
            return Ok("no alarm".into());
        }
        let names: Vec<String> =
            list.iter().map(|a| format!("member {} {}", a.member_id, skiff_raft_store::alarm::name(a.alarm))).collect();
        Ok(format!("alarm {}", names.join(", ")))
    }

    async fn list_alarms(&self) -> anyhow::Result<Vec<AlarmMember>> {
        let mut last = String::from("no master running");
        for i in self.answering() {
            let mut c = MaintenanceClient::new(self.admin[i].clone());
            match c.alarm(AlarmRequest::default()).await {
                Ok(r) => return Ok(r.into_inner().alarms),
                Err(e) => last = format!("master {}: {}", self.masters[i].id, e.message()),
            }
        }
        bail!("listing alarms: {last}")
    }

    /// Disarms every alarm, as `etcdctl alarm disarm`, until none is raised for a second
    /// (a master's disk check in flight when its space came back can raise it once more).
    pub async fn disarm(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut quiet_since: Option<std::time::Instant> = None;
        loop {
            let alarms = match self.list_alarms().await {
                Ok(a) => a,
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => Vec::new(),
            };
            if alarms.is_empty() {
                let since = *quiet_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= Duration::from_secs(1) {
                    return Ok(());
                }
            } else {
                quiet_since = None;
            }
            if std::time::Instant::now() > deadline {
                bail!("alarms still raised after 30 s: {}", self.alarms().await.unwrap_or_default());
            }
            for a in alarms {
                for i in self.answering() {
                    let req =
                        AlarmRequest { action: AlarmAction::Deactivate as i32, member_id: a.member_id, alarm: a.alarm };
                    if MaintenanceClient::new(self.admin[i].clone()).alarm(req).await.is_ok() {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGKILL; the master's data directory stays for [`restart`](Self::restart).
    pub fn kill(&mut self, i: usize) {
        self.masters[i].process.kill();
    }

    pub fn pause(&mut self, i: usize) {
        self.masters[i].process.pause();
    }

    pub fn resume(&mut self, i: usize) {
        self.masters[i].process.resume();
    }

    pub fn running(&self, i: usize) -> bool {
        self.masters[i].process.running()
    }

    /// The masters that can answer now: running and not stopped by SIGSTOP.
    fn answering(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| self.running(i) && !self.masters[i].process.paused)
    }

    pub fn channel(&self, i: usize) -> Channel {
        self.admin[i].clone()
    }

    pub async fn status(&self, i: usize) -> Option<StatusResponse> {
        if !self.answering().any(|a| a == i) {
            return None;
        }
        let mut c = MaintenanceClient::new(self.admin[i].clone());
        tokio::time::timeout(Duration::from_secs(2), c.status(StatusRequest {}))
            .await
            .ok()?
            .ok()
            .map(|r| r.into_inner())
    }

    /// What the API says about node `name` now: its Ready condition and how many of its pods
    /// are being deleted (evicted), as "Ready=Unknown, 3 of its 4 pods terminating"; `None` when no
    /// master answered.
    pub async fn node_view(&self, name: &str) -> Option<String> {
        use skiff_proto::api::objects_client::ObjectsClient;
        use skiff_proto::api::{RawListRequest, RawRequest};
        for i in self.answering() {
            let mut c = ObjectsClient::new(self.admin[i].clone());
            let node = RawRequest { resource: "nodes".into(), name: name.into(), ..Default::default() };
            let pods = RawListRequest {
                resource: "pods".into(),
                field_selector: format!("spec.nodeName={name}"),
                ..Default::default()
            };
            let (Ok(node), Ok(pods)) = (c.get(node).await, c.list(pods).await) else { continue };
            let node: serde_json::Value = serde_json::from_str(&node.into_inner().json).ok()?;
            let pods: serde_json::Value = serde_json::from_str(&pods.into_inner().json).ok()?;
            let ready = node["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .and_then(|c| c["status"].as_str())
                .unwrap_or("none")
                .to_string();
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            let terminating = items.iter().filter(|p| !p["metadata"]["deletionTimestamp"].is_null()).count();
            return Some(format!("Ready={ready}, {terminating} of its {} pods terminating", items.len()));
        }
        None
    }

    /// The index of the master that the reachable masters with the highest term call leader.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, u64)> = None;
        for i in 0..self.len() {
            if let Some(s) = self.status(i).await {
                if s.leader != 0 && best.is_none_or(|(term, _)| s.raft_term > term) {
                    best = Some((s.raft_term, s.leader));
                }
            }
        }
        let (_, id) = best?;
        self.masters.iter().position(|m| m.id == id)
    }

    /// Membership churn: replaces master `i` with a fresh member at the same address, as an
    /// operator replaces a machine — remove it, wipe its data, add a learner (a new raft id, ids
    /// are never reused), start it, and promote it once the leader accepts. Returns the new id.
    pub async fn replace_member(&mut self, i: usize) -> anyhow::Result<u64> {
        let old = self.masters[i].id;
        let helper = (0..self.len())
            .find(|&j| j != i && self.running(j) && !self.masters[j].process.paused)
            .context("no other running master to change membership through")?;
        let mut cluster = ClusterClient::new(self.admin[helper].clone());
        cluster
            .member_remove(MemberRemoveRequest { id: old })
            .await
            .with_context(|| format!("removing member {old}"))?;
        self.kill(i);
        let m = &self.masters[i];
        let _ = std::fs::remove_dir_all(&m.data);
        let added = cluster
            .member_add(MemberAddRequest { peer_ur_ls: vec![format!("http://{}", m.peer_addr)], is_learner: true })
            .await
            .with_context(|| format!("adding a member at {}", m.peer_addr))?
            .into_inner()
            .member
            .context("member add returned no member")?;
        self.masters[i].id = added.id;
        // No founding members: it joins the cluster that just added it.
        self.masters[i].write_config(&BTreeMap::new(), &self.options, &self.pki)?;
        self.restart(i)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match cluster.member_promote(MemberPromoteRequest { id: added.id }).await {
                Ok(_) => return Ok(added.id),
                Err(e) if std::time::Instant::now() > deadline => {
                    anyhow::bail!("promoting member {}: {}", added.id, e.message())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    /// Ends every process (resuming paused ones so they die cleanly).
    pub fn stop_all(&mut self) {
        for i in 0..self.len() {
            self.resume(i);
            self.kill(i);
        }
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        // The nodes first: their reset runs on their machines, which outlive the masters' net.
        self.nodes.stop_all();
        self.stop_all();
    }
}
