//! `etcdserverpb.Watch`: many watchers multiplexed on one bidirectional stream.
//!
//! Each watcher delivers revisions in order with no gap and no duplicate: it replays history
//! from the database up to the revision it saw when it subscribed, then follows the live
//! broadcast, skipping what it already sent. Whenever it falls behind the broadcast ring, or
//! sees a revision jump (a snapshot was installed under it), it reads the missing revisions
//! from the database. A start revision that was compacted away gets a canceled response
//! carrying `compact_revision`, as etcd's does, so clients know to re-list.

use super::status;
use crate::master::Master;
use crate::mvcc::KeyRange;
use crate::watch_hub::RevisionEvents;
use futures::Stream;
use skiff_proto::etcdserverpb::watch_create_request::FilterType;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::watch_server::Watch;
use skiff_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use skiff_proto::mvccpb::{event::EventType, Event};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Events per response when replaying history.
const REPLAY_BATCH: usize = 1000;
/// How often a watcher that asked for progress notifications gets one while idle.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

pub struct WatchService {
    pub master: Arc<Master>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        self.master.check_accepting().map_err(status)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<WatchResponse, Status>>(256);
        let master = self.master.clone();
        tokio::spawn(async move {
            let mut watchers: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
            let mut next_id: i64 = 0;
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = tx.closed() => break,
                };
                let Ok(Some(msg)) = msg else { break };
                match msg.request_union {
                    Some(RequestUnion::CreateRequest(create)) => {
                        let id = if create.watch_id != 0 {
                            create.watch_id
                        } else {
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        if watchers.contains_key(&id) {
                            let _ = tx
                                .send(Ok(WatchResponse {
                                    header: Some(master.header(master.sm.mvcc.current_revision())),
                                    watch_id: id,
                                    created: true,
                                    canceled: true,
                                    cancel_reason: "etcdserver: duplicate watch ID".into(),
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

struct Watcher {
    master: Arc<Master>,
    id: i64,
    range: KeyRange,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    /// Highest revision delivered (or skipped as not matching).
    sent: i64,
}

enum Stop {
    ClientGone,
    Compacted(i64),
}

impl Watcher {
    fn matches(&self, ev: &Event) -> bool {
        let put = ev.r#type == EventType::Put as i32;
        if (put && self.no_put) || (!put && self.no_delete) {
            return false;
        }
        ev.kv.as_ref().is_some_and(|kv| self.range.contains(&kv.key))
    }

    async fn send(&self, revision: i64, events: Vec<Event>) -> Result<(), Stop> {
        let resp = WatchResponse {
            header: Some(self.master.header(revision)),
            watch_id: self.id,
            events,
            ..Default::default()
        };
        self.tx.send(Ok(resp)).await.map_err(|_| Stop::ClientGone)
    }

    /// Delivers every revision in `(sent, upto]` from the database.
    async fn replay(&mut self, upto: i64) -> Result<(), Stop> {
        let mvcc = &self.master.sm.mvcc;
        while self.sent < upto {
            let compacted = mvcc.compact_revision();
            if self.sent + 1 < compacted {
                return Err(Stop::Compacted(compacted));
            }
            let batch = mvcc.events(self.sent + 1, upto, REPLAY_BATCH);
            let Some(&(last, _)) = batch.last() else {
                self.sent = upto;
                break;
            };
            let mut events = Vec::new();
            for (rev, mut ev) in batch {
                if self.matches(&ev) {
                    if self.prev_kv {
                        let key = ev.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
                        ev.prev_kv = mvcc.prev_kv(&key, rev);
                    }
                    events.push(ev);
                }
            }
            if !events.is_empty() {
                self.send(last, events).await?;
            }
            self.sent = last;
        }
        Ok(())
    }

    async fn live(&mut self, rev: &RevisionEvents) -> Result<(), Stop> {
        if rev.revision <= self.sent {
            return Ok(());
        }
        if rev.revision > self.sent + 1 {
            self.replay(rev.revision - 1).await?;
        }
        let events: Vec<Event> = rev
            .events
            .iter()
            .filter(|e| self.matches(e))
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect();
        if !events.is_empty() {
            self.send(rev.revision, events).await?;
        }
        self.sent = rev.revision;
        Ok(())
    }
}

async fn run_watcher(
    master: Arc<Master>,
    id: i64,
    create: WatchCreateRequest,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
) {
    let hub = &master.sm.hub;
    let mvcc = &master.sm.mvcc;
    // Subscribe before reading the current revision: anything newer arrives on `rx`.
    let mut rx = hub.subscribe();
    let current = mvcc.current_revision();
    let start = if create.start_revision > 0 { create.start_revision } else { current + 1 };
    let range = if create.key.is_empty() && create.range_end.is_empty() {
        KeyRange::new(&[0], &[0])
    } else {
        KeyRange::new(&create.key, &create.range_end)
    };
    let mut w = Watcher {
        master: master.clone(),
        id,
        range,
        no_put: create.filters.contains(&(FilterType::Noput as i32)),
        no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: create.prev_kv,
        tx: tx.clone(),
        sent: start - 1,
    };
    let created =
        WatchResponse { header: Some(master.header(current)), watch_id: id, created: true, ..Default::default() };
    if tx.send(Ok(created)).await.is_err() {
        return;
    }
    let mut result = w.replay(current).await;
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    while result.is_ok() {
        tokio::select! {
            msg = rx.recv() => {
                result = match msg {
                    Ok(rev) => w.live(&rev).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        rx = hub.subscribe();
                        w.replay(mvcc.current_revision()).await
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
            }
            _ = progress.tick(), if create.progress_notify => {
                result = w.send(w.sent, Vec::new()).await;
            }
            _ = tx.closed() => return,
        }
    }
    if let Err(Stop::Compacted(compacted)) = result {
        let _ = tx
            .send(Ok(WatchResponse {
                header: Some(master.header(mvcc.current_revision())),
                watch_id: id,
                canceled: true,
                compact_revision: compacted,
                cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                ..Default::default()
            }))
            .await;
    }
}
