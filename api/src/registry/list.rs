//! Lists: consistent reads from the list cache, paged reads of the store at a revision, and
//! continue tokens.

use super::*;

impl Registry {
    pub async fn list(&self, info: &'static KindInfo, ns: &str, opts: &ListOptions) -> ApiResult<ListPage> {
        let labels = LabelSelector::parse(&opts.label_selector)?;
        let fields = FieldSelector::parse(&opts.field_selector)?;
        let prefix = kinds::prefix(info, if info.namespaced { ns } else { "" });
        if opts.continue_token.is_empty() {
            self.metrics.listed(info.resource, &opts.label_selector, &opts.field_selector);
        }
        let want = if opts.limit > 0 { opts.limit as usize } else { usize::MAX };
        let mvcc = &self.master.sm.mvcc;
        let (start, revision) = if opts.continue_token.is_empty() {
            self.master.read_barrier().await?;
            // Every write acknowledged before the list is applied here by now: a cache at
            // this revision shows them all.
            let revision = mvcc.current_revision();
            let kind_prefix = kinds::prefix(info, "");
            let sm = &self.master.sm;
            let at_rest = self.at_rest.as_ref();
            let cached = self.lists.list(sm, at_rest, &kind_prefix, &prefix, revision, &labels, &fields, want).await;
            if let Some(page) = cached {
                let continue_token = page.next.map(|k| encode_continue(page.revision, &k)).unwrap_or_default();
                return Ok(ListPage { items: page.items, resource_version: page.revision, continue_token });
            }
            (prefix.as_bytes().to_vec(), revision)
        } else {
            decode_continue(&opts.continue_token, &prefix)?
        };
        let mut items = Vec::new();
        let mut next = None;
        scan(mvcc, start, prefix_end(prefix.as_bytes()), revision, |kv| {
            if items.len() == want {
                next = Some(kv.key.clone());
                return Ok(false);
            }
            let stored = Stored::decode(self.at_rest.as_deref(), kv)?;
            if stored.matches(&labels, &fields) {
                items.push(Arc::new(stored));
            }
            Ok(true)
        })?;
        let continue_token = next.map(|k| encode_continue(revision, &k)).unwrap_or_default();
        Ok(ListPage { items, resource_version: revision, continue_token })
    }
}

/// Visits the keys in `[start, end)` as they were at `revision`, in key order and in pages of
/// 500 (each page a consistent read), until `visit` says stop (`false`).
pub(crate) fn scan(
    mvcc: &skiff_raft_store::mvcc::Mvcc,
    mut start: Vec<u8>,
    end: Vec<u8>,
    revision: i64,
    mut visit: impl FnMut(&KeyValue) -> ApiResult<bool>,
) -> ApiResult<()> {
    loop {
        let req = RangeRequest { key: start, range_end: end.clone(), revision, limit: 500, ..Default::default() };
        let page = skiff_raft_store::blocking(|| mvcc.range_page(&req)).map_err(|e| match e {
            ApplyError::Compacted { requested, compacted } => ApiError::Gone { requested, compacted },
            other => ApiError::Store(other.into()),
        })?;
        for kv in &page.kvs {
            if !visit(kv)? {
                return Ok(());
            }
        }
        match page.kvs.last() {
            Some(kv) if page.more => {
                start = kv.key.clone();
                start.push(0);
            }
            _ => return Ok(()),
        }
    }
}

pub(super) fn encode_continue(revision: i64, next_key: &[u8]) -> String {
    let token = json!({"rv": revision, "start": base64::engine::general_purpose::STANDARD.encode(next_key)});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

pub(super) fn decode_continue(token: &str, prefix: &str) -> ApiResult<(Vec<u8>, i64)> {
    let bad = || ApiError::BadRequest("continue token is not valid; list again without it".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = base64::engine::general_purpose::STANDARD
        .decode(v.get("start").and_then(Value::as_str).ok_or_else(bad)?)
        .map_err(|_| bad())?;
    if !start.starts_with(prefix.as_bytes()) {
        return Err(bad());
    }
    Ok((start, rev))
}
