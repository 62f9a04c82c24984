//! `etcdserverpb.Watch`: many watchers multiplexed on one bidirectional stream.
//!
//! Each watcher is a [`watch_feed`](crate::watch_feed) (ordered, no gap, no duplicate). A start
//! revision that was compacted away gets a canceled response carrying `compact_revision`, as
//! etcd's does, so clients know to re-list.

use super::{status, Caller};
use crate::master::Master;
use crate::mvcc::KeyRange;
use crate::watch_feed::{self, Feed, FeedSpec};
use futures::Stream;
use skiff_proto::etcdserverpb::watch_create_request::FilterType;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::watch_server::Watch;
use skiff_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How often a watcher that asked for progress notifications gets one while idle.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Watchers one stream may hold at once: each is a task and a feed, so an unbounded number
/// would let one client exhaust a master. (etcd clients multiplex a process's watches on one
/// stream; a Kubernetes API server holds a few hundred.)
pub const MAX_WATCHERS_PER_STREAM: usize = 4096;

pub struct WatchService {
    pub master: Arc<Master>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        self.master.check_accepting().map_err(status)?;
        // The stream's metadata names the caller once; each watcher's range is checked as it
        // is created.
        let caller = Caller::of(&self.master, &req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<WatchResponse, Status>>(256);
        let master = self.master.clone();
        let closing = master.sm.hub.closed();
        tokio::spawn(async move {
            let mut watchers: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
            let mut next_id: i64 = 0;
            tokio::pin!(closing);
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = tx.closed() => break,
                    () = &mut closing => {
                        // As etcd does when it stops: the client reconnects to another member.
                        let _ = tx.send(Err(Status::unavailable("etcdserver: server stopped"))).await;
                        break;
                    }
                };
                let Ok(Some(msg)) = msg else { break };
                match msg.request_union {
                    Some(RequestUnion::CreateRequest(create)) => {
                        // As etcd: ids the stream assigns only grow, so a late response to a
                        // cancelled watch is never taken for a newer one's.
                        let id = if create.watch_id != 0 {
                            create.watch_id
                        } else {
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id += 1;
                            next_id - 1
                        };
                        watchers.retain(|_, t| !t.is_finished());
                        let refused = if watchers.contains_key(&id) {
                            Some("etcdserver: duplicate watch ID".to_string())
                        } else if watchers.len() >= MAX_WATCHERS_PER_STREAM {
                            Some(format!(
                                "etcdserver: too many watchers on this stream (limit {MAX_WATCHERS_PER_STREAM}); cancel some or open another stream"
                            ))
                        } else {
                            let (key, end) = watch_range(&create);
                            caller.read(&key, &end).err().map(|e| e.message().to_string())
                        };
                        if let Some(cancel_reason) = refused {
                            let _ = tx
                                .send(Ok(WatchResponse {
                                    header: Some(master.header(master.sm.mvcc.current_revision())),
                                    watch_id: id,
                                    created: true,
                                    canceled: true,
                                    cancel_reason,
                                    ..Default::default()
                                }))
                                .await;
                            continue;
                        }
                        let task = tokio::spawn(run_watcher(master.clone(), id, create, tx.clone()));
                        watchers.insert(id, task);
                    }
                    Some(RequestUnion::CancelRequest(cancel)) => {
                        if let Some(task) = watchers.remove(&cancel.watch_id) {
                            task.abort();
                            let _ = tx
                                .send(Ok(WatchResponse {
                                    header: Some(master.header(master.sm.mvcc.current_revision())),
                                    watch_id: cancel.watch_id,
                                    canceled: true,
                                    ..Default::default()
                                }))
                                .await;
                        }
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        let _ = tx
                            .send(Ok(WatchResponse {
                                header: Some(master.header(master.sm.mvcc.current_revision())),
                                watch_id: -1,
                                ..Default::default()
                            }))
                            .await;
                    }
                    None => {}
                }
                watchers.retain(|_, t| !t.is_finished());
            }
            for (_, t) in watchers {
                t.abort();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The key range a watch covers: etcd reads an empty key and range end as every key.
fn watch_range(create: &WatchCreateRequest) -> (Vec<u8>, Vec<u8>) {
    if create.key.is_empty() && create.range_end.is_empty() {
        (vec![0], vec![0])
    } else {
        (create.key.clone(), create.range_end.clone())
    }
}

async fn run_watcher(
    master: Arc<Master>,
    id: i64,
    create: WatchCreateRequest,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
) {
    let (key, end) = watch_range(&create);
    let range = KeyRange::new(&key, &end);
    let spec = FeedSpec {
        range,
        start_revision: create.start_revision,
        prev_kv: create.prev_kv,
        no_put: create.filters.contains(&(FilterType::Noput as i32)),
        no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
    };
    let mut feed = watch_feed::start(master.sm.clone(), spec);
    let response =
        |revision: i64| WatchResponse { header: Some(master.header(revision)), watch_id: id, ..Default::default() };
    // Headers on one stream never go backwards: the created response says what has been
    // delivered so far (before the start revision), not the store's current revision, when
    // older events are still to be replayed.
    let created = match create.start_revision {
        start if start > 0 => feed.start_current.min(start - 1),
        _ => feed.start_current,
    };
    if tx.send(Ok(WatchResponse { created: true, ..response(created) })).await.is_err() {
        return;
    }
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    loop {
        let resp = tokio::select! {
            msg = feed.rx.recv() => match msg {
                Some(Feed::Events { revision, events }) => WatchResponse { events, ..response(revision) },
                Some(Feed::Compacted { compacted }) => WatchResponse {
                    canceled: true,
                    compact_revision: compacted,
                    cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                    ..response(master.sm.mvcc.current_revision())
                },
                None => return,
            },
            // Only once what is queued has been sent: a progress header never runs ahead of an
            // event still to come (the next tick reports it).
            _ = progress.tick(), if create.progress_notify => match feed.settled_progress() {
                Some(revision) => response(revision),
                None => continue,
            },
            _ = tx.closed() => return,
        };
        let last = resp.canceled;
        if tx.send(Ok(resp)).await.is_err() || last {
            return;
        }
    }
}
