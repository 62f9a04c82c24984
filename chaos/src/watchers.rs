//! Watchers, one per master, on the workload's key range from the run's start revision: they
//! record every event, reconnect (resuming after the last revision received) when their master
//! dies or is cut off, and end when they receive the run's end marker.

use crate::watch::Received;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The key whose put marks the end of the run; every watcher must receive it.
pub const END_KEY: &str = "chaos/zz-end";

#[derive(Debug, Default)]
pub struct WatchLog {
    pub master: u64,
    pub received: Vec<Received>,
    /// Parallel to `received`: the value a PUT event carried (`None` for a DELETE).
    pub values: Vec<Option<String>>,
    pub reconnects: u32,
    /// Progress headers that went backwards within one stream.
    pub bookmark_regressions: Vec<String>,
    /// Whether the end marker arrived.
    pub finished: bool,
}

/// Watches `prefix` from `start` through `channel` until [`END_KEY`] arrives or `give_up`
/// turns true.
pub async fn watcher(
    master: u64,
    channel: Channel,
    prefix: &str,
    start: i64,
    give_up: tokio::sync::watch::Receiver<bool>,
) -> WatchLog {
    let mut log = WatchLog { master, ..Default::default() };
    let mut next = start;
    let mut first = true;
    while !*give_up.borrow() {
        if !first {
            log.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        first = false;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: skiff_raft_store::mvcc::prefix_end(prefix.as_bytes()),
                start_revision: next,
                progress_notify: true,
                ..Default::default()
            })),
        };
        if tx.send(create).await.is_err() {
            continue;
        }
        let mut client = WatchClient::new(channel.clone());
        // Opening is raced with `give_up` too: a leaderless master may never answer the call.
        let mut give_up_changed = give_up.clone();
        let opened = tokio::select! {
            r = client.watch(ReceiverStream::new(rx)) => r,
            _ = give_up_changed.changed() => break,
        };
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(_) => continue,
        };
        let mut header_revision = 0i64;
        loop {
            let mut give_up_changed = give_up.clone();
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = give_up_changed.changed() => break,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => break,
            };
            if resp.canceled {
                break;
            }
            let h = resp.header.as_ref().map_or(0, |h| h.revision);
            if h < header_revision {
                log.bookmark_regressions
                    .push(format!("master {master}: stream header went from revision {header_revision} back to {h}"));
            }
            header_revision = header_revision.max(h);
            for e in &resp.events {
                let Some(kv) = &e.kv else { continue };
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                next = kv.mod_revision + 1;
                let end = key == END_KEY;
                log.received.push(Received { revision: kv.mod_revision, key });
                // Event type 0 is PUT, 1 is DELETE.
                log.values.push((e.r#type == 0).then(|| String::from_utf8_lossy(&kv.value).into_owned()));
                if end {
                    log.finished = true;
                    return log;
                }
            }
        }
        // Keep the tx alive until here so the server saw an open request stream.
        drop(tx);
    }
    log
}
