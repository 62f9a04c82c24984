//! Skiff's etcd API answers as etcd 3.4 does: each check runs the same requests against a
//! 3-master Skiff cluster and a 3-member etcd 3.4 cluster (Debian's `etcd-server`) and expects
//! both to behave alike — so a check that etcd itself would fail is caught here too.

use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::request_op::Request as Op;
use skiff_proto::etcdserverpb::response_op::Response as OpResponse;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCancelRequest, WatchCreateRequest,
    WatchRequest,
};
use skiff_tests::etcd::EtcdCluster;
use skiff_tests::{channel, status, Cluster};

/// One of the two systems under comparison.
enum Store<'a> {
    Skiff(&'a Cluster),
    Etcd(&'a EtcdCluster),
}

impl Store<'_> {
    fn name(&self) -> &'static str {
        match self {
            Store::Skiff(_) => "skiff",
            Store::Etcd(_) => "etcd 3.4",
        }
    }

    fn endpoints(&self) -> Vec<String> {
        match self {
            Store::Skiff(c) => c.masters.iter().map(|m| m.etcd.clone()).collect(),
            Store::Etcd(e) => e.endpoints.clone(),
        }
    }

    /// `message` as this store's client sends it: Skiff's as its root user, etcd's bare.
    async fn request<T>(&self, addr: &str, message: T) -> tonic::Request<T> {
        match self {
            Store::Skiff(c) => c.as_root(addr, message).await.expect("root token"),
            Store::Etcd(_) => tonic::Request::new(message),
        }
    }

    /// The address of a member that is not the leader.
    async fn follower(&self) -> String {
        for addr in self.endpoints() {
            let s = status(&addr).await.unwrap_or_else(|e| panic!("{}: status of {addr}: {e}", self.name()));
            if s.header.is_some_and(|h| h.member_id != s.leader) && s.leader != 0 {
                return addr;
            }
        }
        panic!("{}: no member reports another as its leader", self.name())
    }
}

/// A put sent to a follower, then a serializable get on that same follower, `rounds` times:
/// how many gets missed the write just acknowledged.
async fn own_writes_missed(store: &Store<'_>, rounds: usize) -> usize {
    let addr = store.follower().await;
    let mut kv = KvClient::new(channel(&addr).await.expect("channel"));
    let mut missed = 0;
    for i in 0..rounds {
        let (key, value) = (format!("ryw/{}", i % 10), i.to_string().into_bytes());
        let put = PutRequest { key: key.clone().into(), value: value.clone(), ..Default::default() };
        let req = store.request(&addr, put).await;
        kv.put(req).await.unwrap_or_else(|e| panic!("{}: put {key} through {addr}: {e}", store.name()));
        let get = RangeRequest { key: key.clone().into(), serializable: true, ..Default::default() };
        let req = store.request(&addr, get).await;
        let got = kv.range(req).await.unwrap_or_else(|e| panic!("{}: get {key} on {addr}: {e}", store.name()));
        if got.into_inner().kvs.first().map(|kv| &kv.value) != Some(&value) {
            missed += 1;
        }
    }
    missed
}

fn put(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() })),
    }
}

fn get(key: &str) -> RequestOp {
    RequestOp { request: Some(Op::RequestRange(RangeRequest { key: key.into(), ..Default::default() })) }
}

fn delete(key: &str, range_end: &str) -> RequestOp {
    let d = DeleteRangeRequest { key: key.into(), range_end: range_end.into(), ..Default::default() };
    RequestOp { request: Some(Op::RequestDeleteRange(d)) }
}

fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp { request: Some(Op::RequestTxn(TxnRequest { success, failure, ..Default::default() })) }
}

/// Each inner response's header revision less the transaction's own, in order (`None` for an
/// inner response without a header).
async fn txn_inner_revisions(store: &Store<'_>) -> Vec<Option<i64>> {
    let addr = &store.endpoints()[0];
    let mut kv = KvClient::new(channel(addr).await.expect("channel"));
    let success = vec![get("hdr/a"), put("hdr/a"), get("hdr/a"), delete("hdr/none", "")];
    let req = store.request(addr, TxnRequest { success, ..Default::default() }).await;
    let r = kv.txn(req).await.unwrap_or_else(|e| panic!("{}: txn: {e}", store.name())).into_inner();
    let outer = r.header.expect("a txn response has a header").revision;
    r.responses
        .iter()
        .map(|op| {
            let header = match op.response.as_ref()? {
                OpResponse::ResponseRange(r) => r.header.as_ref(),
                OpResponse::ResponsePut(r) => r.header.as_ref(),
                OpResponse::ResponseDeleteRange(r) => r.header.as_ref(),
                OpResponse::ResponseTxn(r) => r.header.as_ref(),
            };
            Some(header?.revision - outer)
        })
        .collect()
}

/// Whether each transaction is accepted (`Ok`) or refused (the error's message).
async fn txn_outcomes(store: &Store<'_>, txns: &[Vec<RequestOp>]) -> Vec<Result<(), String>> {
    let addr = &store.endpoints()[0];
    let mut kv = KvClient::new(channel(addr).await.expect("channel"));
    let mut out = Vec::new();
    for success in txns {
        let req = store.request(addr, TxnRequest { success: success.clone(), ..Default::default() }).await;
        out.push(kv.txn(req).await.map(|_| ()).map_err(|e| format!("{:?}: {}", e.code(), e.message())));
    }
    out
}

/// The ids a watch stream assigns to three watches created one after another, each cancelled
/// before the next is created.
async fn watch_ids_after_cancels(store: &Store<'_>) -> Vec<i64> {
    let addr = &store.endpoints()[0];
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let req = store.request(addr, tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    let create = || {
        let create = WatchCreateRequest { key: b"wid/".to_vec(), ..Default::default() };
        WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }
    };
    // etcd answers the call only once the stream carries a request.
    tx.send(create()).await.expect("send");
    let mut client = WatchClient::new(channel(addr).await.expect("channel"));
    let mut stream = client.watch(req).await.unwrap_or_else(|e| panic!("{}: watch: {e}", store.name())).into_inner();
    let mut ids = Vec::new();
    for i in 0..3 {
        if i > 0 {
            tx.send(create()).await.expect("send");
        }
        let created = loop {
            let r = stream.message().await.expect("watch stream").expect("a response");
            if r.created {
                break r;
            }
        };
        ids.push(created.watch_id);
        let cancel = WatchCancelRequest { watch_id: created.watch_id };
        tx.send(WatchRequest { request_union: Some(RequestUnion::CancelRequest(cancel)) }).await.expect("send");
        loop {
            let r = stream.message().await.expect("watch stream").expect("a response");
            if r.canceled && r.watch_id == created.watch_id {
                break;
            }
        }
    }
    ids
}

#[test]
fn skiff_answers_as_etcd_3_4_does() {
    let skiff = Cluster::up(3, &[]);
    let etcd = EtcdCluster::start();
    let stores = [Store::Skiff(&skiff), Store::Etcd(&etcd)];
    let rt = skiff_tests::runtime();

    // A member answers a write only once it has applied it itself, so a client reads its own
    // acknowledged write on the member it wrote through (etcd's apply wait).
    for store in &stores {
        let missed = rt.block_on(own_writes_missed(store, 1000));
        assert_eq!(
            missed,
            0,
            "{}: {missed} of 1000 serializable gets on a follower missed the write it had just acknowledged",
            store.name()
        );
    }

    // Responses inside a transaction carry a header with the revision as the transaction has
    // left the store so far: before its first write the revision it started from, after it
    // the transaction's own. A client may take a watch's start revision from them.
    let skiff_revisions = rt.block_on(txn_inner_revisions(&stores[0]));
    let etcd_revisions = rt.block_on(txn_inner_revisions(&stores[1]));
    assert_eq!(etcd_revisions, [Some(-1), Some(0), Some(0), Some(0)], "etcd 3.4 itself");
    assert_eq!(skiff_revisions, etcd_revisions, "inner header revisions (less the txn's), skiff vs etcd");

    // A put that a delete of the same branch covers is refused as a duplicate key, nested
    // transactions included; the two branches of a nested transaction may write the same key.
    let txns = [
        vec![delete("ov/a", "ov/c"), put("ov/b")],
        vec![put("ov/b"), delete("ov/b", "")],
        vec![delete("ov/", "ov0"), nested(vec![put("ov/q")], vec![])],
        vec![nested(vec![put("ov/x")], vec![]), put("ov/x")],
        vec![nested(vec![put("ov/x")], vec![put("ov/x")]), put("ov/y")],
        vec![delete("ov/a", "ov/c"), put("ov/c")],
    ];
    let skiff_outcomes = rt.block_on(txn_outcomes(&stores[0], &txns));
    let etcd_outcomes = rt.block_on(txn_outcomes(&stores[1], &txns));
    let refused: Vec<bool> = etcd_outcomes.iter().map(|o| o.is_err()).collect();
    assert_eq!(refused, [true, true, true, true, false, false], "etcd 3.4 itself: {etcd_outcomes:?}");
    for (i, (s, e)) in skiff_outcomes.iter().zip(&etcd_outcomes).enumerate() {
        assert_eq!(s.is_err(), e.is_err(), "txn {i}: skiff {s:?}, etcd {e:?}");
        if let (Err(s), Err(e)) = (s, e) {
            assert!(
                s.contains("duplicate key given in txn request") && e.contains("duplicate key"),
                "txn {i}: {s} / {e}"
            );
        }
    }

    // Ids a stream assigns only grow: a cancelled watch's id is not handed out again.
    let skiff_ids = rt.block_on(watch_ids_after_cancels(&stores[0]));
    let etcd_ids = rt.block_on(watch_ids_after_cancels(&stores[1]));
    assert_eq!(etcd_ids, [0, 1, 2], "etcd 3.4 itself");
    assert_eq!(skiff_ids, etcd_ids, "watch ids after cancels, skiff vs etcd");
}
