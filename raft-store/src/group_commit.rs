//! Group commit on the leader: writes that arrive while earlier ones are being committed wait
//! in a queue and go into the log together, as one entry.
//!
//! openraft 0.9 appends every proposed entry with a synced write of its own before it takes the
//! next one, so one entry per client write costs one fsync (and one round of raft bookkeeping
//! and replication) per write. Here at most [`IN_FLIGHT`] entries are being committed at a
//! time; what queues meanwhile is proposed as one [`Op::Batch`] entry, whose requests the state
//! machine applies one by one, each as it would apply an entry of its own. A lone write with
//! nothing queued goes alone, as before, so a single client waits no longer.

use crate::error::StoreError;
use crate::types::{ApplyError, Op, Raft, Reply, Request, Response};
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Entries proposed and not yet committed, at most. One measured best (docs/benchmarks.md,
/// 2026-12-06): openraft syncs the leader's log before it replicates, so a second entry in
/// flight overlaps little and only splits the queue into smaller batches.
pub const IN_FLIGHT: usize = 1;

/// Most requests in one batch entry.
const MAX_BATCH: usize = 1024;

struct Waiting {
    req: Request,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// A write's reply and the index of the log entry that carried it.
pub type Written = (Response, u64);

/// The leader's write queue; clones share it.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl GroupCommit {
    /// Starts the queue in front of `raft`; a batch entry holds at most `max_bytes` of
    /// requests (the largest single request, so a batch is never bigger than a lone write may
    /// be), though a request larger than that still goes alone. An entry not committed within
    /// `timeout` is answered `Timeout` (its outcome unknown) and the queue moves on.
    pub fn start(raft: Raft, max_bytes: usize, timeout: Duration) -> GroupCommit {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Batcher { raft, max_bytes, timeout }, rx));
        GroupCommit { queue }
    }

    /// Proposes `req` and waits for its reply. `NotLeader` when this master does not lead
    /// (nothing was proposed); `Stopped` when the master is shutting down.
    pub async fn write(&self, req: Request) -> Result<Written, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.queue.send(Waiting { req, reply }).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

#[derive(Clone)]
struct Batcher {
    raft: Raft,
    max_bytes: usize,
    timeout: Duration,
}

async fn run(b: Batcher, mut rx: mpsc::UnboundedReceiver<Waiting>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    // A write too big to join the last batch: it starts the next one.
    let mut carried = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let first = match carried.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let mut bytes = first.req.op.size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < b.max_bytes {
            match rx.try_recv() {
                Ok(next) if bytes + next.req.op.size() <= b.max_bytes => {
                    bytes += next.req.op.size();
                    batch.push(next);
                }
                Ok(next) => {
                    carried = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let b = b.clone();
        tokio::spawn(async move {
            b.propose(batch).await;
            drop(permit);
        });
    }
}

impl Batcher {
    /// Proposes `batch` as one entry (a lone write as itself) and answers each waiting writer.
    async fn propose(&self, mut batch: Vec<Waiting>) {
        if batch.len() == 1 {
            let w = batch.pop().expect("one write");
            let _ = w.reply.send(self.write(w.req).await);
            return;
        }
        let (reqs, replies): (Vec<Request>, Vec<_>) = batch.into_iter().map(|w| (w.req, w.reply)).unzip();
        match self.write(Request::new(Op::Batch(reqs))).await {
            Ok((Response { result: Ok(Reply::Batch(each)), .. }, index)) if each.len() == replies.len() => {
                for (reply, response) in replies.into_iter().zip(each) {
                    let _ = reply.send(Ok((response, index)));
                }
            }
            Ok((other, _)) => {
                // The state machine answers every batch request by request; anything else is a
                // bug, reported to every writer rather than hidden.
                let msg = format!("a batch entry was answered with {other:?}");
                tracing::error!("{msg}");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Apply(ApplyError::Invalid(msg.clone()))));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn write(&self, req: Request) -> Result<Written, StoreError> {
        match tokio::time::timeout(self.timeout, self.raft.client_write(req)).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok(r)) => Ok((r.data, r.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(StoreError::NotLeader { leader: f.leader_id })
            }
            Ok(Err(e)) => Err(crate::master::map_raft_err(e)),
        }
    }
}
