//! One master: the raft node, its storage, and the leader-only duties every client request may
//! need (proposing, read index, lease clocks, membership changes) — executed locally on the
//! leader or forwarded to it from a follower, so clients can talk to any master.

use crate::db;
use crate::election::ElectionWatch;
use crate::error::StoreError;
use crate::fence::Fence;
use crate::group_commit::GroupCommit;
use crate::log_store::LogStore;
use crate::network::{self, Network, PeerClients};
use crate::read_index::ReadIndex;
use crate::state_machine::{SmShared, StateMachine};
use crate::types::{ApplyError, Member, Op, Raft, Reply, Request, Response};
use openraft::error::RaftError;
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::AlarmType;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Everything a master needs to start; `skiff master` fills it from flags or a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasterConfig {
    pub id: u64,
    pub name: String,
    pub data_dir: PathBuf,
    /// host:port peers use to reach this master.
    pub peer_addr: String,
    /// host:port clients use to reach this master.
    pub client_addr: String,
    /// The founding members. On first start with an empty data dir the cluster is bootstrapped
    /// from it; empty means "join": wait to be added by an existing cluster.
    #[serde(default)]
    pub initial_members: BTreeMap<u64, Member>,
    #[serde(default = "defaults::cluster_name")]
    pub cluster_name: String,
    /// Largest accepted client request; etcd's default is 1.5 MiB.
    #[serde(default = "defaults::max_request_bytes")]
    pub max_request_bytes: usize,
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default = "defaults::heartbeat_ms")]
    pub heartbeat_ms: u64,
    #[serde(default = "defaults::election_min_ms")]
    pub election_min_ms: u64,
    /// Build a snapshot (and let the log be purged) after this many applied entries.
    #[serde(default = "defaults::snapshot_logs")]
    pub snapshot_logs: u64,
    /// Largest store (RocksDB files and memtables) before this master raises the `NOSPACE`
    /// alarm ([`crate::alarm`]); etcd's `--quota-backend-bytes`.
    #[serde(default = "defaults::quota_backend_bytes")]
    pub quota_backend_bytes: u64,
    /// Free space the data directory's filesystem must keep; below it this master raises the
    /// `NOSPACE` alarm while there is still room to log the refused writes and the disarm.
    #[serde(default = "defaults::disk_reserve_bytes")]
    pub disk_reserve_bytes: u64,
    /// TLS for the client listener. Off loopback it is mandatory, with client certificates.
    #[serde(default)]
    pub client_tls: Option<ClientTls>,
    /// Testing only, never in a real cluster: serve linearizable reads from this master's local
    /// state without the read-index check. It breaks linearizability on purpose, so the chaos
    /// harness can show that its checker catches the stale reads that follow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsafe_local_reads: bool,
    /// Hash ([`crate::auth::hash_password`]) of the root password a new cluster starts with:
    /// the store's auth is then on from its first entry, and this master refuses the etcd API
    /// until that entry has applied. Without it auth starts off, as in etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password_hash: Option<String>,
    /// Mutual TLS on the peer listener and to other masters ([`crate::peer_tls`]). Without it
    /// peer traffic is plaintext and unauthenticated: for experiments on one machine only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_tls: Option<crate::peer_tls::PeerTls>,
    /// Backups on a schedule (k3s' etcd snapshots): every this many seconds this master
    /// writes its store as `etcdctl snapshot save` would into [`Self::snapshot_dir`]; 0 =
    /// none.
    #[serde(default)]
    pub snapshot_interval_secs: u64,
    /// How many scheduled backups to keep (the oldest go first).
    #[serde(default = "defaults::snapshot_retain")]
    pub snapshot_retain: usize,
    /// Where scheduled backups go (default `DATA_DIR/backups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_dir: Option<PathBuf>,
}

/// PEM files for the client listener's TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that signs the certificates clients must present; `None` asks for none (the API's
    /// bearer tokens authenticate; the etcd API then stays loopback-only).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// The CA that signed `cert`, so components inside the master can verify this listener.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// With `client_ca`: a client may also connect without a certificate (and authenticate
    /// with a token); a certificate it does present must be signed by `client_ca`, and its
    /// common name is then the store user it authenticates as.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_cert_optional: bool,
}

mod defaults {
    pub fn cluster_name() -> String {
        "skiff".into()
    }
    pub fn max_request_bytes() -> usize {
        1536 * 1024
    }
    pub fn request_timeout_ms() -> u64 {
        5000
    }
    pub fn heartbeat_ms() -> u64 {
        100
    }
    /// openraft's leader lease is `election_timeout_max` (2× this): a follower of a live leader
    /// starts an election only `lease + timeout` (3–4× this) after its last heartbeat, and a
    /// candidate refused for a shorter log backs off another 4× this. 200 keeps both under
    /// 2 s (docs/reliability.md); a follower still tolerates 600 ms without heartbeats, six
    /// times the heartbeat interval.
    pub fn election_min_ms() -> u64 {
        200
    }
    pub fn snapshot_logs() -> u64 {
        10_000
    }
    /// 8 GiB: etcd's suggested largest quota (its default is 2 GiB; Skiff keeps more history).
    pub fn quota_backend_bytes() -> u64 {
        8 << 30
    }
    pub fn disk_reserve_bytes() -> u64 {
        128 << 20
    }
    /// k3s keeps 5 as well.
    pub fn snapshot_retain() -> usize {
        5
    }
}

impl MasterConfig {
    /// A configuration with every tunable at its default.
    pub fn new(id: u64, name: String, data_dir: PathBuf, peer_addr: String, client_addr: String) -> Self {
        MasterConfig {
            id,
            name,
            data_dir,
            peer_addr,
            client_addr,
            initial_members: BTreeMap::new(),
            cluster_name: defaults::cluster_name(),
            max_request_bytes: defaults::max_request_bytes(),
            request_timeout_ms: defaults::request_timeout_ms(),
            heartbeat_ms: defaults::heartbeat_ms(),
            election_min_ms: defaults::election_min_ms(),
            snapshot_logs: defaults::snapshot_logs(),
            quota_backend_bytes: defaults::quota_backend_bytes(),
            disk_reserve_bytes: defaults::disk_reserve_bytes(),
            client_tls: None,
            unsafe_local_reads: false,
            root_password_hash: None,
            peer_tls: None,
            snapshot_interval_secs: 0,
            snapshot_retain: defaults::snapshot_retain(),
            snapshot_dir: None,
        }
    }

    pub fn member(&self) -> Member {
        Member { name: self.name.clone(), peer_addr: self.peer_addr.clone(), client_addr: self.client_addr.clone() }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// A leader-only operation, run on the leader or forwarded to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Forwarded {
    Write(Request),
    AddMember { id: u64, member: Member, learner: bool },
    Promote { id: u64 },
    RemoveMember { id: u64 },
    SetMember { id: u64, member: Member },
    LeaseKeepAlive { id: i64 },
    LeaseTimeToLive { id: i64 },
}

/// Whether a learner whose log matches the leader's up to `matched` is close enough to the
/// leader's `last` index to be promoted: etcd's rule, 90 % of the leader's progress.
fn learner_in_sync(matched: Option<u64>, last: u64) -> bool {
    matched.is_some_and(|m| m.saturating_mul(10) >= last.saturating_mul(9))
}

/// The reply to a [`Forwarded`] operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    /// A write's reply and the index of the log entry that carried it.
    Write(Response, u64),
    Done,
    /// Remaining and granted TTL in seconds; remaining -1 when the lease does not exist.
    LeaseTtl {
        remaining: i64,
        granted: i64,
    },
}

/// The leader's lease deadlines. Only the leader keeps them; a new leader starts every lease's
/// clock afresh (as etcd does), so a failover extends leases rather than expiring them early.
#[derive(Default)]
struct LeaseClock {
    deadlines: Mutex<HashMap<i64, Instant>>,
}

pub struct Master {
    pub config: MasterConfig,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    pub peers: PeerClients,
    pub cluster_id: u64,
    /// Where this master's writes queue while it leads ([`crate::group_commit`]).
    writes: GroupCommit,
    /// Where linearizable reads wait for a shared leadership check while it leads
    /// ([`crate::read_index`]).
    pub reads: ReadIndex,
    leases: LeaseClock,
    accepting: AtomicBool,
    /// This node's own election trigger (see [`crate::election`]).
    pub election: Arc<ElectionWatch>,
    /// The master process's metrics registry, which the store's metrics ([`crate::metrics`])
    /// start it with and the API, controllers and scheduler add to.
    pub metrics: Arc<skiff_proto::metrics::Metrics>,
    pub(crate) log_fsync_seconds: prometheus_client::metrics::histogram::Histogram,
    /// etcd API calls answered ([`crate::metrics::grpc_layer`] counts them).
    pub grpc_handled: prometheus_client::metrics::family::Family<
        crate::metrics::GrpcLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

fn raft_config(c: &MasterConfig) -> Result<Config, StoreError> {
    let config = Config {
        cluster_name: c.cluster_name.clone(),
        heartbeat_interval: c.heartbeat_ms,
        election_timeout_min: c.election_min_ms,
        election_timeout_max: c.election_min_ms * 2,
        install_snapshot_timeout: 10_000,
        snapshot_max_chunk_size: crate::network::SNAPSHOT_CHUNK as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_logs),
        max_in_snapshot_log_to_keep: 1000.min(c.snapshot_logs),
        max_payload_entries: 512,
        ..Default::default()
    };
    config.validate().map_err(|e| StoreError::InvalidArgument(format!("raft config: {e}")))
}

/// The id of the cluster named `name`, sent with every peer RPC and in response headers.
fn cluster_id(name: &str) -> u64 {
    u64::from(crc32fast::hash(name.as_bytes())) << 32 | u64::from(crc32fast::hash(b"skiff-cluster"))
}

impl Master {
    /// Opens the data dir, starts raft, and bootstraps the cluster if this is a founding
    /// member's first start.
    pub async fn open(config: MasterConfig) -> Result<Arc<Master>, StoreError> {
        let internal = |e: &dyn std::fmt::Display| StoreError::Internal(e.to_string());
        std::fs::create_dir_all(&config.data_dir).map_err(|e| internal(&e))?;
        // The store holds credentials and every Secret: its owner's alone.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| internal(&e))?;
        }
        let db = db::open(&config.data_dir.join("db")).map_err(|e| internal(&e))?;
        let sm = StateMachine::open(db.clone(), &config.data_dir.join("snapshots")).map_err(|e| internal(&e))?;
        let shared = sm.shared();
        let cluster_id = cluster_id(&config.cluster_name);
        let peer_credentials =
            config.peer_tls.as_ref().map(|t| t.load()).transpose().map_err(StoreError::InvalidArgument)?;
        let peers = PeerClients::new(peer_credentials, cluster_id, config.max_request_bytes);
        let election = Arc::new(ElectionWatch::default());
        let log_store = LogStore::new(db);
        let log_fsync_seconds = log_store.fsync_seconds.clone();
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config(&config)?),
            Network { clients: peers.clone(), election: election.clone() },
            log_store,
            sm,
        )
        .await
        .map_err(|e| internal(&e))?;
        if !config.initial_members.is_empty() && !raft.is_initialized().await.map_err(|e| internal(&e))? {
            if !config.initial_members.contains_key(&config.id) {
                return Err(StoreError::InvalidArgument(format!(
                    "initial members {:?} do not include this master's id {}",
                    config.initial_members.keys().collect::<Vec<_>>(),
                    config.id
                )));
            }
            // Every founding member may call this with the same membership; openraft accepts
            // that and the members then elect normally.
            if let Err(e) = raft.initialize(config.initial_members.clone()).await {
                tracing::info!("bootstrap skipped: {e}");
            }
        }
        let writes = GroupCommit::start(raft.clone(), config.max_request_bytes, config.request_timeout());
        let reads = ReadIndex::start(raft.clone(), config.request_timeout());
        let master = Arc::new(Master {
            config,
            writes,
            reads,
            raft,
            sm: shared,
            peers,
            cluster_id,
            leases: LeaseClock::default(),
            accepting: AtomicBool::new(true),
            election,
            metrics: Arc::default(),
            log_fsync_seconds,
            grpc_handled: Default::default(),
        });
        crate::metrics::register(&master);
        Ok(master)
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    pub fn current_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The term of this master's leadership, while it leads: the fence its controllers' writes
    /// carry (DESIGN.md rule 4). A leader's term does not change while it leads, so two reads
    /// that return the same term saw the same leadership.
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    /// [`Master::leader_term`] as it changes: a receiver that wakes when this master takes or
    /// loses the leadership, so that what acts on it learns at once instead of polling.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        let mut metrics = self.raft.metrics();
        let term = |m: &openraft::RaftMetrics<u64, Member>| (m.state == ServerState::Leader).then_some(m.current_term);
        let (tx, rx) = tokio::sync::watch::channel(term(&metrics.borrow_and_update()));
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() && !tx.is_closed() {
                let now = term(&metrics.borrow_and_update());
                tx.send_if_modified(|held| std::mem::replace(held, now) != now);
            }
        });
        rx
    }

    /// The leader this master believes in, with its address.
    pub fn leader(&self) -> Option<(u64, Member)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// The client URLs of the voting members, as the membership names them now.
    pub fn client_urls(&self) -> Vec<String> {
        let scheme = if self.config.client_tls.is_some() { "https" } else { "http" };
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: Vec<u64> = m.voter_ids().collect();
        m.membership()
            .nodes()
            .filter(|(id, n)| voters.contains(id) && !n.client_addr.is_empty())
            .map(|(_, n)| format!("{scheme}://{}", n.client_addr))
            .collect()
    }

    pub fn header(&self, revision: i64) -> skiff_proto::etcdserverpb::ResponseHeader {
        skiff_proto::etcdserverpb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id(),
            revision,
            raft_term: self.current_term(),
        }
    }

    pub fn check_accepting(&self) -> Result<(), StoreError> {
        if self.accepting.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StoreError::Stopped)
        }
    }

    /// Proposes a state-machine command through raft, from any master; within a request fenced
    /// to a leadership term ([`crate::fence`]), only as [`Master::propose_fenced`].
    pub async fn propose(&self, op: Op) -> Result<Response, StoreError> {
        // Refused here as the state machine would refuse it, without a log entry to hold it
        // (the state machine's check is the one every master agrees on).
        if self.sm.alarms.nospace() && crate::alarm::grows_store(&op) {
            return Err(StoreError::Apply(ApplyError::NoSpace));
        }
        match crate::fence::current() {
            Fence::None => {}
            Fence::Term(term) => return self.propose_fenced(op, term).await,
            Fence::Invalid(msg) => return Err(StoreError::InvalidArgument(msg)),
        }
        let deadline = Instant::now() + self.config.request_timeout();
        match self.execute(Forwarded::Write(Request::new(op))).await? {
            ForwardReply::Write(r, index) => {
                self.wait_applied(index, deadline).await;
                Ok(r)
            }
            other => Err(StoreError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Waits until this master has applied the log up to `index`, so that a client reads its
    /// own acknowledged write here, as etcd answers a write only once the member it was sent
    /// to has applied it. At `deadline` the write is acknowledged anyway — it is committed,
    /// and calling it failed would invite a retry that applies it twice.
    async fn wait_applied(&self, index: u64, deadline: Instant) {
        let mut applied = self.sm.applied();
        let caught_up = applied.wait_for(|&at| at >= index);
        if tokio::time::timeout_at(deadline, caught_up).await.is_err() {
            tracing::warn!(index, "acknowledging a write this master has not applied yet: it is behind the leader");
        }
    }

    /// Proposes a controller's write fenced to the leadership of `term` (DESIGN.md rule 4): only
    /// on this master, only while it leads in `term`, and the state machine refuses the entry
    /// if it lands in any other term. Never forwarded — a deposed leader's controller acted on
    /// what it read in its own term, and its write must not reach the next leader.
    pub async fn propose_fenced(&self, op: Op, term: u64) -> Result<Response, StoreError> {
        self.check_accepting()?;
        match self.leader_term() {
            Some(t) if t == term => {}
            Some(t) => return Err(StoreError::Apply(ApplyError::Fenced { expected: term, actual: t })),
            None => return Err(self.not_leader()),
        }
        let deadline = Instant::now() + self.config.request_timeout();
        let req = Request { fence_term: Some(term), op };
        match self.execute_local(Forwarded::Write(req), deadline).await? {
            ForwardReply::Write(r, _) => Ok(r),
            other => Err(StoreError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Runs a leader-only operation: locally when leader, else on the leader. Retries only
    /// when the operation certainly was not started (no leader, a stale leader, a refused
    /// connection), so nothing is applied twice; gives up at the request timeout.
    pub async fn execute(&self, op: Forwarded) -> Result<ForwardReply, StoreError> {
        self.check_accepting()?;
        let deadline = Instant::now() + self.config.request_timeout();
        loop {
            let attempt = match self.leader() {
                Some((id, _)) if id == self.id() => self.execute_local(op.clone(), deadline).await,
                Some((id, node)) => self.forward(id, &node, &op, deadline).await,
                None => Err(StoreError::NoLeader),
            };
            match attempt {
                Err(StoreError::NoLeader | StoreError::NotLeader { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Completes once this master no longer sees `leader` as the leader (a new one was elected,
    /// or its own election timer fired): a request still waiting on `leader` will not get an
    /// answer soon.
    async fn leader_moved_from(&self, leader: u64) {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader != Some(leader) {
                return;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    async fn forward(
        &self,
        leader_id: u64,
        leader: &Member,
        op: &Forwarded,
        deadline: Instant,
    ) -> Result<ForwardReply, StoreError> {
        if self.leader().map(|(id, _)| id) != Some(leader_id) {
            // Moved on before anything was sent: safe to retry.
            return Err(StoreError::NoLeader);
        }
        let mut client = self.peers.get(leader_id, &leader.peer_addr).map_err(|_| StoreError::NoLeader)?;
        let mut req = self.peers.request(network::encode(op));
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        // A leader that died or was cut off mid-request leaves the outcome unknown either way;
        // saying so when the election moves on (as etcd's "leader changed") lets the client
        // retry within the failover instead of at its deadline.
        let reply = tokio::select! {
            r = client.forward(req) => r,
            _ = self.leader_moved_from(leader_id) => return Err(StoreError::LeaderChanged),
        };
        match reply {
            Ok(reply) => network::decode::<Result<ForwardReply, StoreError>>(reply.get_ref())
                .map_err(|e| StoreError::Internal(format!("bad forward reply: {e}")))?,
            // Never sent: safe to retry once a leader is known again.
            Err(s) if never_sent(&s) => Err(StoreError::NoLeader),
            Err(s) if network::timed_out(&s) => {
                self.peers.reset(leader_id, &leader.peer_addr);
                Err(StoreError::Timeout)
            }
            Err(s) => Err(StoreError::Interrupted(format!("forwarding to leader {}: {s}", leader.name))),
        }
    }

    /// Runs a leader-only operation on this master; `NotLeader` if it is not the leader.
    pub async fn execute_local(&self, op: Forwarded, deadline: Instant) -> Result<ForwardReply, StoreError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        tokio::time::timeout_at(deadline, self.execute_leader(op)).await.map_err(|_| StoreError::Timeout)?
    }

    fn not_leader(&self) -> StoreError {
        StoreError::NotLeader { leader: self.leader().map(|(id, _)| id) }
    }

    async fn execute_leader(&self, op: Forwarded) -> Result<ForwardReply, StoreError> {
        match op {
            Forwarded::Write(req) => self.writes.write(req).await.map(|(r, index)| ForwardReply::Write(r, index)),
            Forwarded::AddMember { id, member, learner } => {
                self.raft.add_learner(id, member, false).await.map_err(map_raft_err)?;
                if !learner {
                    self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
                }
                Ok(ForwardReply::Done)
            }
            Forwarded::Promote { id } => {
                let m = self.raft.metrics().borrow().membership_config.clone();
                if m.membership().get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound { id });
                }
                if m.voter_ids().any(|v| v == id) {
                    return Err(StoreError::FailedPrecondition("etcdserver: can only promote a learner member".into()));
                }
                // As etcd: a learner far behind would count toward quorum before it can vote
                // usefully, so it is promoted only once it holds most of the leader's log.
                let (matched, last) = {
                    let metrics = self.raft.metrics().borrow().clone();
                    let matched = metrics.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten());
                    (matched.map(|l| l.index), metrics.last_log_index.unwrap_or(0))
                };
                if !learner_in_sync(matched, last) {
                    return Err(StoreError::FailedPrecondition(
                        "etcdserver: can only promote a learner member which is in sync with leader".into(),
                    ));
                }
                self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
                Ok(ForwardReply::Done)
            }
            Forwarded::RemoveMember { id } => {
                let m = self.raft.metrics().borrow().membership_config.clone();
                if m.membership().get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound { id });
                }
                if m.voter_ids().any(|v| v == id) {
                    self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
                } else {
                    self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
                }
                Ok(ForwardReply::Done)
            }
            Forwarded::SetMember { id, member } => {
                self.change(ChangeMembers::SetNodes(BTreeMap::from([(id, member)]))).await?;
                Ok(ForwardReply::Done)
            }
            Forwarded::LeaseKeepAlive { id } => {
                let ttl = self.sm.mvcc.lease_ttl(id);
                let mut clock = self.leases.deadlines.lock().expect("not poisoned");
                match ttl {
                    Some(ttl) => {
                        clock.insert(id, Instant::now() + Duration::from_secs(ttl.max(0) as u64));
                        Ok(ForwardReply::LeaseTtl { remaining: ttl, granted: ttl })
                    }
                    None => Ok(ForwardReply::LeaseTtl { remaining: 0, granted: 0 }),
                }
            }
            Forwarded::LeaseTimeToLive { id } => {
                let Some(ttl) = self.sm.mvcc.lease_ttl(id) else {
                    return Ok(ForwardReply::LeaseTtl { remaining: -1, granted: 0 });
                };
                let clock = self.leases.deadlines.lock().expect("not poisoned");
                let remaining = clock
                    .get(&id)
                    .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64().ceil() as i64)
                    .unwrap_or(ttl);
                Ok(ForwardReply::LeaseTtl { remaining, granted: ttl })
            }
        }
    }

    async fn change(&self, change: ChangeMembers<u64, Member>) -> Result<(), StoreError> {
        self.raft.change_membership(change, false).await.map_err(map_raft_err)?;
        Ok(())
    }

    /// Waits until this master's state machine reflects every write acknowledged before the
    /// call (the read-index protocol), so a read served here is linearizable.
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        self.check_accepting()?;
        if self.config.unsafe_local_reads {
            return Ok(());
        }
        let deadline = Instant::now() + self.config.request_timeout();
        loop {
            let index = match self.leader() {
                Some((id, _)) if id == self.id() => self.reads.index().await,
                Some((id, node)) => tokio::select! {
                    r = self.remote_read_index(id, &node, deadline) => r,
                    // A read changes nothing: ask the next leader instead.
                    _ = self.leader_moved_from(id) => Err(StoreError::NoLeader),
                },
                None => Err(StoreError::NoLeader),
            };
            match index {
                Ok(index) => {
                    let wait = self.raft.wait(Some(deadline.saturating_duration_since(Instant::now())));
                    return wait
                        .applied_index_at_least(Some(index), "read index")
                        .await
                        .map(|_| ())
                        .map_err(|_| StoreError::Timeout);
                }
                Err(StoreError::NoLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(StoreError::NoLeader) => return Err(StoreError::Timeout),
                Err(e) => return Err(e),
            }
        }
    }

    async fn remote_read_index(&self, leader_id: u64, leader: &Member, deadline: Instant) -> Result<u64, StoreError> {
        let mut client = self.peers.get(leader_id, &leader.peer_addr).map_err(|_| StoreError::NoLeader)?;
        let mut req = self.peers.request(skiff_proto::peer::Empty {});
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        match client.read_index(req).await {
            Ok(r) => Ok(r.into_inner().index),
            Err(s) => {
                if network::timed_out(&s) {
                    self.peers.reset(leader_id, &leader.peer_addr);
                }
                Err(if s.code() == tonic::Code::DeadlineExceeded { StoreError::Timeout } else { StoreError::NoLeader })
            }
        }
    }

    /// The leader's lease loop: expire leases whose keep-alives stopped. Runs on every master
    /// and acts only while this master leads.
    pub async fn run_lease_expiry(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut was_leader = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
            let leader = self.is_leader();
            if !leader || !was_leader {
                self.leases.deadlines.lock().expect("not poisoned").clear();
            }
            was_leader = leader;
            if !leader {
                continue;
            }
            let now = Instant::now();
            let mut expired = Vec::new();
            {
                let mut clock = self.leases.deadlines.lock().expect("not poisoned");
                let live: Vec<(i64, i64)> = self.sm.mvcc.leases();
                clock.retain(|id, _| live.iter().any(|(l, _)| l == id));
                for (id, ttl) in live {
                    let deadline = *clock.entry(id).or_insert(now + Duration::from_secs(ttl.max(0) as u64));
                    if deadline <= now {
                        expired.push(id);
                    }
                }
                for id in &expired {
                    clock.remove(id);
                }
            }
            for id in expired {
                let me = self.clone();
                tokio::spawn(async move {
                    let deadline = Instant::now() + me.config.request_timeout();
                    let op = Forwarded::Write(Request::new(Op::LeaseRevoke { id }));
                    if let Err(e) = me.execute_local(op, deadline).await {
                        tracing::warn!(lease = id, "expiring lease: {e}");
                    }
                });
            }
        }
    }

    /// Makes sure the cluster's record of this member carries its current addresses (a member
    /// added through `MemberAdd` is known by its peer address only until it starts).
    pub async fn announce(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let me = self.config.member();
        loop {
            let recorded = self.raft.metrics().borrow().membership_config.membership().get_node(&self.id()).cloned();
            if let Some(recorded) = recorded {
                if recorded == me {
                    return;
                }
                if self.leader().is_some() {
                    match self.execute(Forwarded::SetMember { id: self.id(), member: me.clone() }).await {
                        Ok(_) => return,
                        Err(e) => tracing::debug!("announcing member addresses: {e}"),
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Proposes the cluster's first auth state (root user, auth on) until it has applied, when
    /// this master is configured with a root password. Every such master proposes it; the
    /// first to commit wins and the rest change nothing.
    pub async fn bootstrap_auth(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(hash) = self.config.root_password_hash.clone() else { return };
        let op =
            Op::Auth(crate::auth::AuthOp::Bootstrap { root_password: hash, token_key: crate::auth::new_token_key() });
        while !self.sm.auth.current().bootstrapped {
            if self.leader().is_some() {
                if let Err(e) = self.propose(op.clone()).await {
                    tracing::debug!("proposing the store's first auth state: {e}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Writes a backup of this master's store every `snapshot_interval_secs` into the
    /// snapshot directory (`skiff-snapshot-<member>-<unix seconds>.db`, readable by its
    /// owner alone: the store holds every Secret) and keeps the newest `snapshot_retain`.
    pub async fn run_scheduled_backups(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let interval = Duration::from_secs(self.config.snapshot_interval_secs);
        if interval.is_zero() {
            return;
        }
        let dir = self.config.snapshot_dir.clone().unwrap_or_else(|| self.config.data_dir.join("backups"));
        let prefix = format!("skiff-snapshot-{}-", self.config.name);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            let (sm, into, prefix, retain) =
                (self.sm.clone(), dir.clone(), prefix.clone(), self.config.snapshot_retain);
            let taken = tokio::task::spawn_blocking(move || {
                skiff_proto::pki::create_private_dir(&into)?;
                let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let path = into.join(format!("{prefix}{:012}.db", secs.as_secs()));
                let revision = sm.write_backup(&path)?;
                prune_backups(&into, &prefix, retain)?;
                Ok::<_, std::io::Error>((path, revision))
            })
            .await;
            match taken {
                Ok(Ok((path, revision))) => tracing::info!("backup at revision {revision}: {}", path.display()),
                Ok(Err(e)) => tracing::warn!("scheduled backup into {}: {e}", dir.display()),
                Err(e) => tracing::warn!("scheduled backup: {e}"),
            }
        }
    }

    /// The store's size on disk and in memtables, as etcd's `dbSize` reports it.
    pub fn db_size(&self) -> u64 {
        let db = self.sm.db();
        let prop = |name: &str, p: &str| db.property_int_value_cf(db::cf(db, name), p).ok().flatten().unwrap_or(0);
        [db::CF_LOG, db::CF_META, db::CF_KV, db::CF_REV, db::CF_HIST, db::CF_LKEY, db::CF_SM]
            .iter()
            .map(|n| prop(n, "rocksdb.total-sst-files-size") + prop(n, "rocksdb.cur-size-all-mem-tables"))
            .sum()
    }

    /// Why this master is out of space, if it is: the data directory's filesystem has less
    /// free than the reserve, or the store is past its quota.
    fn short_of_space(&self) -> Option<String> {
        let reserve = self.config.disk_reserve_bytes;
        match nix::sys::statvfs::statvfs(&self.config.data_dir) {
            Ok(fs) => {
                let free = fs.blocks_available().saturating_mul(fs.fragment_size());
                if free < reserve {
                    return Some(format!(
                        "{free} bytes free on {}'s filesystem, below the reserve of {reserve}",
                        self.config.data_dir.display()
                    ));
                }
            }
            Err(e) => tracing::warn!("reading free space of {}: {e}", self.config.data_dir.display()),
        }
        let (size, quota) = (self.db_size(), self.config.quota_backend_bytes);
        (size > quota).then(|| format!("the store holds {size} bytes, past its quota of {quota}"))
    }

    /// Raises this member's `NOSPACE` alarm while it is short of space ([`crate::alarm`]).
    /// Free space has no event to wait on, so it is read every [`DISK_CHECK_PERIOD`] (one
    /// `statvfs` and a few RocksDB properties). Never clears the alarm: as in etcd, an operator
    /// makes room and disarms it, and if space is still short it is raised again.
    pub async fn run_disk_monitor(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut warned = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(DISK_CHECK_PERIOD) => {}
                _ = stop.changed() => return,
            }
            // Raised already: nothing to do until it is disarmed (then, if space is still
            // short, it is raised again and said again).
            if self.sm.alarms.current().has(self.id(), AlarmType::Nospace) {
                warned = false;
                continue;
            }
            let Some(why) = self.short_of_space() else {
                warned = false;
                continue;
            };
            if !warned {
                tracing::error!(id = self.id(), "out of space: {why}; raising the NOSPACE alarm");
                warned = true;
            }
            let op = Op::Alarm { activate: true, member: self.id(), alarm: AlarmType::Nospace as i32 };
            if let Err(e) = self.propose(op).await {
                tracing::warn!(id = self.id(), "raising the NOSPACE alarm: {e}");
            }
        }
    }

    /// Starts an election when this follower's leader has been silent as long as openraft's
    /// own timer waits without its stale smaller-log penalty (see [`crate::election`]).
    pub async fn run_election_watch(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        // openraft's follower timer: the leader lease (= election_timeout_max) plus an election
        // timeout of at most election_timeout_max; this fires only when that has passed.
        let quiet = Duration::from_millis(self.config.election_min_ms * 4);
        let min = self.config.election_min_ms;
        // When this node's vote last changed: a campaign openraft's own timer started is given
        // an election timeout before this one retries it.
        let mut vote = self.raft.metrics().borrow().vote;
        let mut vote_since = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => return,
            }
            let now = std::time::Instant::now();
            // A split vote is retried after an election timeout, drawn afresh each time.
            let retry = Duration::from_millis(rand::Rng::gen_range(&mut rand::thread_rng(), min..2 * min));
            let waiting_voter = {
                let m = self.raft.metrics();
                let m = m.borrow();
                if m.vote != vote {
                    (vote, vote_since) = (m.vote, now);
                }
                let campaign_settled = m.state == ServerState::Follower
                    || (m.state == ServerState::Candidate && now.duration_since(vote_since) >= retry);
                campaign_settled && m.membership_config.membership().voter_ids().any(|v| v == self.id())
            };
            if waiting_voter && self.election.due(now, quiet, retry) {
                tracing::info!("leader silent for {quiet:?}: starting an election");
                if let Err(e) = self.raft.trigger().elect().await {
                    tracing::warn!("starting an election: {e}");
                }
            }
        }
    }

    /// Stops taking client requests and ends the watches it serves, then stops raft. Peers
    /// elect a new leader once this member's heartbeats stop (openraft 0.9 has no
    /// leadership-transfer call).
    pub async fn shutdown(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.sm.hub.close();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

/// Removes all but the newest `retain` backups named `prefix…` in `dir` (their names sort
/// by time).
fn prune_backups(dir: &std::path::Path, prefix: &str, retain: usize) -> std::io::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && n.ends_with(".db"))
        .collect();
    names.sort();
    for old in &names[..names.len().saturating_sub(retain.max(1))] {
        std::fs::remove_file(dir.join(old))?;
    }
    Ok(())
}

/// How often each master reads its free space ([`Master::run_disk_monitor`]).
pub const DISK_CHECK_PERIOD: Duration = Duration::from_millis(500);

/// Whether a failed call certainly never reached the server (the connection was refused or
/// could not be made), which is the only case where retrying a write cannot apply it twice.
fn never_sent(s: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("error trying to connect") || text.contains("tcp connect error") {
            return true;
        }
        source = e.source();
    }
    false
}

/// Maps a reply to the store error a client sees.
pub fn reply_result(r: Response) -> Result<(i64, Reply), StoreError> {
    match r.result {
        Ok(reply) => Ok((r.revision, reply)),
        Err(e) => Err(StoreError::Apply(e)),
    }
}

pub(crate) fn map_raft_err<E: std::fmt::Display>(e: RaftError<u64, E>) -> StoreError {
    match e {
        RaftError::Fatal(_) => StoreError::Stopped,
        RaftError::APIError(e) => {
            let msg = e.to_string();
            if msg.contains("forward") || msg.contains("leader") {
                StoreError::NotLeader { leader: None }
            } else {
                StoreError::FailedPrecondition(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::learner_in_sync;

    #[test]
    fn a_learner_is_promoted_only_once_it_holds_most_of_the_leaders_log() {
        assert!(!learner_in_sync(None, 0), "a learner the leader has not reached yet");
        assert!(!learner_in_sync(Some(10), 1000));
        assert!(!learner_in_sync(Some(899), 1000));
        assert!(learner_in_sync(Some(900), 1000));
        assert!(learner_in_sync(Some(1000), 1000));
        assert!(learner_in_sync(Some(0), 0));
    }
}
