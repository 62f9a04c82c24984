//! Linearizable reads on the leader share their leadership checks, as etcd's read loop does.
//!
//! openraft's `get_read_log_id` confirms the leadership with a round of heartbeats to every
//! follower, and each call starts a round of its own: under load that was two peer RPCs per
//! read. Here a read joins the next round: reads that arrive while one is in flight wait and
//! are answered together by the one after it. A round serves only reads that arrived before it
//! began, so the index it returns covers every write acknowledged before any of them was asked.

use crate::error::StoreError;
use crate::types::Raft;
use openraft::error::RaftError;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Answer = Result<u64, StoreError>;

/// The leader's queue of reads waiting for a read index; clones share it.
#[derive(Clone)]
pub struct ReadIndex {
    queue: mpsc::UnboundedSender<oneshot::Sender<Answer>>,
}

impl ReadIndex {
    /// Starts the queue in front of `raft`; a round that has not confirmed the leadership
    /// within `timeout` answers `Timeout`.
    pub fn start(raft: Raft, timeout: Duration) -> ReadIndex {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, timeout, rx));
        ReadIndex { queue }
    }

    /// The log index a linearizable read must see applied, from a leadership check begun after
    /// this call; `NoLeader` when this master does not lead.
    pub async fn index(&self) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.queue.send(tx).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

async fn run(raft: Raft, timeout: Duration, mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Answer>>) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(next) = rx.try_recv() {
            waiting.push(next);
        }
        let answer = match tokio::time::timeout(timeout, raft.get_read_log_id()).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok((read, _))) => Ok(read.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(_))) => Err(StoreError::NoLeader),
            Ok(Err(e)) => Err(crate::master::map_raft_err(e)),
        };
        for w in waiting {
            let _ = w.send(answer.clone());
        }
    }
}
