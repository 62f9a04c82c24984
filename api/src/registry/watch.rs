//! Watches: a feed from the store's revision log through the selectors, with bookmarks.

use super::*;

impl Registry {
    /// Watches a kind: events after `resourceVersion`, or (empty / "0") the current objects as
    /// ADDED followed by every change. Ends with `Err(Gone)` if the start was compacted.
    pub async fn watch(
        &self,
        info: &'static KindInfo,
        ns: &str,
        opts: WatchOptions,
    ) -> ApiResult<mpsc::Receiver<ApiResult<WatchEvent>>> {
        let labels = LabelSelector::parse(&opts.label_selector)?;
        let fields = FieldSelector::parse(&opts.field_selector)?;
        let prefix = kinds::prefix(info, if info.namespaced { ns } else { "" });
        let (tx, rx) = mpsc::channel(256);
        let mut initial = Vec::new();
        let start_revision = match opts.resource_version.as_str() {
            "" | "0" => {
                let page = self
                    .list(
                        info,
                        ns,
                        &ListOptions {
                            label_selector: opts.label_selector.clone(),
                            field_selector: opts.field_selector.clone(),
                            ..Default::default()
                        },
                    )
                    .await?;
                let revision = page.resource_version;
                initial = page.into_values();
                revision + 1
            }
            rv => {
                let rv: i64 =
                    rv.parse().map_err(|_| ApiError::BadRequest(format!("resourceVersion {rv:?} is not a number")))?;
                let compacted = self.master.sm.mvcc.compact_revision();
                if rv < compacted {
                    return Err(ApiError::Gone { requested: rv, compacted });
                }
                rv + 1
            }
        };
        let spec = FeedSpec {
            range: KeyRange::new(prefix.as_bytes(), &prefix_end(prefix.as_bytes())),
            start_revision,
            prev_kv: true,
            no_put: false,
            no_delete: false,
        };
        let mut feed = watch_feed::start(self.master.sm.clone(), spec);
        let (interval, only_progress) = match opts.bookmark_interval {
            Some(asked) => (asked.max(MIN_BOOKMARK_INTERVAL), true),
            None => (self.bookmark_interval, false),
        };
        let kind_info = info;
        let at_rest = self.at_rest.clone();
        let metrics = self.metrics.clone();
        let sent = move || metrics.watch_event(kind_info.api_version, kind_info.kind);
        tokio::spawn(async move {
            for object in initial {
                if tx.send(Ok(WatchEvent { kind: "ADDED", object })).await.is_err() {
                    return;
                }
                sent();
            }
            let mut bookmarks = tokio::time::interval(interval);
            bookmarks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            bookmarks.tick().await;
            // The newest revision the watcher has been told of, by an event or a bookmark.
            let mut told = start_revision - 1;
            loop {
                tokio::select! {
                    msg = feed.rx.recv() => match msg {
                        Some(Feed::Events { events, revision }) => {
                            told = told.max(revision);
                            for ev in events {
                                match translate(at_rest.as_deref(), &ev, &labels, &fields) {
                                    Ok(Some(e)) => {
                                        if tx.send(Ok(e)).await.is_err() { return }
                                        sent();
                                    }
                                    Ok(None) => {}
                                    Err(e) => { let _ = tx.send(Err(e)).await; return; }
                                }
                            }
                        }
                        Some(Feed::Compacted { compacted }) => {
                            let _ = tx.send(Err(ApiError::Gone { requested: start_revision - 1, compacted })).await;
                            return;
                        }
                        None => return,
                    },
                    _ = bookmarks.tick(), if opts.allow_bookmarks => {
                        // Never ahead of an event still queued: the next tick reports it.
                        let Some(rv) = feed.settled_progress() else { continue };
                        if only_progress && rv <= told {
                            continue;
                        }
                        told = told.max(rv);
                        let object = json!({"apiVersion": kind_info.api_version, "kind": kind_info.kind, "metadata": {"resourceVersion": rv.to_string()}});
                        if tx.send(Ok(WatchEvent { kind: "BOOKMARK", object })).await.is_err() { return }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}

/// Turns a store event into a watch event as seen through the selectors: an object that
/// starts matching is ADDED, one that stops matching is DELETED.
pub(super) fn translate(
    at_rest: Option<&crate::at_rest::AtRest>,
    ev: &skiff_proto::mvccpb::Event,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> ApiResult<Option<WatchEvent>> {
    let matches = |o: &Value| labels.matches(&labels_of(o)) && fields.matches(o);
    let prev = ev.prev_kv.as_ref().map(|kv| decode_object(at_rest, kv)).transpose()?;
    if ev.r#type == EventType::Delete as i32 {
        let Some(mut obj) = prev else { return Ok(None) };
        let rev = ev.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        set_meta(&mut obj, "resourceVersion", json!(rev.to_string()));
        return Ok(matches(&obj).then_some(WatchEvent { kind: "DELETED", object: obj }));
    }
    let Some(kv) = &ev.kv else { return Ok(None) };
    let obj = decode_object(at_rest, kv)?;
    let now = matches(&obj);
    let before = prev.as_ref().is_some_and(matches);
    let created = kv.create_revision == kv.mod_revision;
    Ok(match (before, now) {
        (false, true) => Some(WatchEvent { kind: "ADDED", object: obj }),
        (true, true) if created => Some(WatchEvent { kind: "ADDED", object: obj }),
        (true, true) => Some(WatchEvent { kind: "MODIFIED", object: obj }),
        (true, false) => Some(WatchEvent { kind: "DELETED", object: obj }),
        (false, false) => None,
    })
}
