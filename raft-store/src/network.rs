//! Raft transport: openraft's RPCs to other masters over tonic gRPC on the peer listener.
//!
//! Payloads are bincode encodings of openraft's own types. A peer that cannot be reached gets
//! exponential backoff (100 ms doubling to 2 s) instead of a retry storm.

use crate::election::ElectionWatch;
use crate::peer_tls::{PeerCredentials, CLUSTER_ID_HEADER};
use crate::types::{Member, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use skiff_proto::peer::peer_client::PeerClient;
use skiff_proto::peer::Payload;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The bytes of one install-snapshot chunk, and the most bytes of entries one append carries:
/// a batch larger than this is split ([`PayloadTooLarge`] asks openraft for fewer entries).
pub const SNAPSHOT_CHUNK: usize = 4 << 20;

/// Largest gRPC message between masters, either way: a snapshot chunk, or an append batch —
/// at most [`SNAPSHOT_CHUNK`] bytes of entries, or one entry, which holds one request of at
/// most `max_request_bytes` (twice that for its framing) — with room for the headers.
pub fn peer_max_message(max_request_bytes: usize) -> usize {
    SNAPSHOT_CHUNK.max(2 * max_request_bytes) + (1 << 20)
}

/// How many of an append's `entries` to send when the whole request is `bytes` long: `None`
/// if it fits [`SNAPSHOT_CHUNK`] (or is a single entry, which always goes alone).
fn fewer_entries(entries: usize, bytes: u64) -> Option<u64> {
    let budget = SNAPSHOT_CHUNK as u64;
    (bytes > budget && entries > 1).then(|| (entries as u64 * budget / bytes).clamp(1, entries as u64 - 1))
}

/// Lazily connected gRPC channels to peers, keyed by member and address; shared by raft and
/// forwarding. With peer credentials every channel is mutual TLS that verifies the member.
#[derive(Clone)]
pub struct PeerClients {
    channels: Arc<Mutex<HashMap<(u64, String), Channel>>>,
    tls: Option<PeerCredentials>,
    cluster_id: u64,
    /// [`peer_max_message`] of this cluster's request limit.
    max_message: usize,
}

impl PeerClients {
    pub fn new(tls: Option<PeerCredentials>, cluster_id: u64, max_request_bytes: usize) -> PeerClients {
        PeerClients { channels: Arc::default(), tls, cluster_id, max_message: peer_max_message(max_request_bytes) }
    }

    /// A client for member `id` at `addr`.
    pub fn get(&self, id: u64, addr: &str) -> Result<PeerClient<Channel>, tonic::transport::Error> {
        let mut map = self.channels.lock().expect("not poisoned");
        let key = (id, addr.to_string());
        let channel = match map.get(&key) {
            Some(c) => c.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true);
                if let Some(tls) = &self.tls {
                    endpoint = endpoint.tls_config(tls.client(id))?;
                }
                let c = endpoint.connect_lazy();
                map.insert(key, c.clone());
                c
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message))
    }

    /// Forgets the connection to member `id` at `addr`, so the next call dials a new one.
    ///
    /// Called when a call to it timed out. A connection can stay open while its peer no longer
    /// serves it: seen in the 2026-12-06 soak, after SIGSTOP pauses, h2 refused streams on a
    /// connection ("remotely-reset pending-accept streams reached limit") while the TCP
    /// connection lived on unread, and every vote over it timed out — no leader for 28
    /// minutes, though a fresh connection to the same port completed its handshake. tonic
    /// reconnects a connection that fails, not one that hangs.
    pub fn reset(&self, id: u64, addr: &str) {
        self.channels.lock().expect("not poisoned").remove(&(id, addr.to_string()));
    }

    /// `message` as a peer request: with this cluster's id, which the receiver checks.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert(CLUSTER_ID_HEADER, self.cluster_id.into());
        req
    }
}

pub struct Network {
    pub clients: PeerClients,
    /// Told when a vote request of this node is refused for a shorter log.
    pub election: Arc<ElectionWatch>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerConnection {
        PeerConnection { target, node: node.clone(), clients: self.clients.clone(), election: self.election.clone() }
    }
}

pub struct PeerConnection {
    target: u64,
    node: Member,
    clients: PeerClients,
    election: Arc<ElectionWatch>,
}

type RpcErr<E> = RPCError<u64, Member, E>;

/// Whether a call ended at its deadline (tonic says `Cancelled: Timeout expired` for a
/// request timeout, `DeadlineExceeded` for a server-side one).
pub fn timed_out(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
}

pub fn encode<T: Serialize>(v: &T) -> Payload {
    Payload { data: bincode::serialize(v).expect("raft messages serialize") }
}

pub fn decode<T: DeserializeOwned>(p: &Payload) -> Result<T, bincode::Error> {
    bincode::deserialize(&p.data)
}

impl PeerConnection {
    async fn call<Req, Resp, E>(&self, kind: &'static str, req: &Req, option: &RPCOption) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .clients
            .get(self.target, &self.node.peer_addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = self.clients.request(encode(req));
        request.set_timeout(option.hard_ttl());
        let reply = match kind {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        if reply.as_ref().is_err_and(timed_out) {
            self.clients.reset(self.target, &self.node.peer_addr);
        }
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, E> = decode(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr<RaftError<u64>>> {
        let bytes = bincode::serialized_size(&rpc).unwrap_or(u64::MAX);
        if let Some(n) = fewer_entries(rpc.entries.len(), bytes) {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(n)));
        }
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<RaftError<u64, InstallSnapshotError>>> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr<RaftError<u64>>> {
        let resp: VoteResponse<u64> = self.call("vote", &rpc, &option).await?;
        if !resp.vote_granted && resp.last_log_id > rpc.last_log_id {
            self.election.refused_for_shorter_log();
        }
        Ok(resp)
    }

    fn backoff(&self) -> Backoff {
        Backoff::new((0..).map(|i: u32| Duration::from_millis(100u64 << i.min(4)).min(Duration::from_secs(2))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_batches_over_a_snapshot_chunk_are_split_but_one_entry_always_goes() {
        let chunk = SNAPSHOT_CHUNK as u64;
        assert_eq!(fewer_entries(512, chunk), None, "a batch that fits goes whole");
        assert_eq!(fewer_entries(1, 10 * chunk), None, "a single entry cannot be split");
        // 100 entries of 1 MiB: four fit a 4 MiB chunk.
        assert_eq!(fewer_entries(100, 100 << 20), Some(4));
        // Two huge entries: one at a time.
        assert_eq!(fewer_entries(2, 3 * chunk), Some(1));
        // Just over: one fewer at least.
        assert_eq!(fewer_entries(10, chunk + 1), Some(9));
        // Every message the split leaves fits the transport's cap.
        assert!(peer_max_message(1536 * 1024) >= SNAPSHOT_CHUNK + (1 << 20));
        assert!(peer_max_message(8 << 20) >= 2 * (8 << 20));
    }

    #[tokio::test]
    async fn a_peer_that_hangs_times_out_and_its_connection_is_dropped() {
        // Accepts connections and never answers: what a wedged peer connection looks like.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let peers = PeerClients::new(None, 7, 1 << 20);
        let mut client = peers.get(2, &addr).unwrap();
        let mut req = peers.request(Payload { data: vec![] });
        req.set_timeout(Duration::from_millis(200));
        let status = client.vote(req).await.expect_err("a peer that never answers");
        assert!(timed_out(&status), "{status:?}");
        assert_eq!(peers.channels.lock().unwrap().len(), 1);
        peers.reset(2, &addr);
        assert!(peers.channels.lock().unwrap().is_empty(), "the hung connection is forgotten");
        held.abort();
    }
}
