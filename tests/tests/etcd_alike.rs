//! Skiff's etcd API answers as etcd 3.4 does: each check runs the same requests against a
//! 3-master Skiff cluster and a 3-member etcd 3.4 cluster (Debian's `etcd-server`) and expects
//! both to behave alike — so a check that etcd itself would fail is caught here too.

use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::lease_client::LeaseClient;
use skiff_proto::etcdserverpb::request_op::Request as Op;
use skiff_proto::etcdserverpb::response_op::Response as OpResponse;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCancelRequest, WatchCreateRequest,
    WatchRequest,
};
use skiff_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use skiff_proto::v3electionpb::election_client::ElectionClient;
use skiff_proto::v3electionpb::{CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest};
use skiff_proto::v3lockpb::lock_client::LockClient;
use skiff_proto::v3lockpb::{LockRequest, UnlockRequest};
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

async fn grant(store: &Store<'_>, addr: &str, ttl: i64) -> i64 {
    let mut lease = LeaseClient::new(channel(addr).await.expect("channel"));
    let req = store.request(addr, LeaseGrantRequest { ttl, id: 0 }).await;
    lease.lease_grant(req).await.unwrap_or_else(|e| panic!("{}: grant: {e}", store.name())).into_inner().id
}

/// Whether `call` is still waiting after a second (a lock or campaign held up by another).
async fn still_waiting<T>(call: &mut tokio::task::JoinHandle<T>) -> bool {
    tokio::time::timeout(std::time::Duration::from_secs(1), call).await.is_err()
}

/// Two clients contend for one lock through different members; what each step saw.
async fn lock_contention(store: &Store<'_>) -> Vec<String> {
    let addrs = store.endpoints();
    let (a, b) = (addrs[0].clone(), addrs[1].clone());
    let mut seen = Vec::new();
    let (lease_a, lease_b) = (grant(store, &a, 60).await, grant(store, &b, 60).await);
    let mut lock_a = LockClient::new(channel(&a).await.expect("channel"));
    let req = store.request(&a, LockRequest { name: b"lk".to_vec(), lease: lease_a }).await;
    let key_a = lock_a.lock(req).await.unwrap_or_else(|e| panic!("{}: lock: {e}", store.name())).into_inner().key;
    seen.push(format!("a holds {}", String::from_utf8_lossy(&key_a).replace(&format!("{lease_a:x}"), "<lease a>")));
    let req = store.request(&b, LockRequest { name: b"lk".to_vec(), lease: lease_b }).await;
    let mut lock_b = LockClient::new(channel(&b).await.expect("channel"));
    let mut waiting = tokio::spawn(async move { lock_b.lock(req).await.map(|r| r.into_inner().key) });
    seen.push(format!("b waits: {}", still_waiting(&mut waiting).await));
    let req = store.request(&a, UnlockRequest { key: key_a.clone() }).await;
    lock_a.unlock(req).await.unwrap_or_else(|e| panic!("{}: unlock: {e}", store.name()));
    let key_b = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
    let key_b = key_b.expect("b's lock within 10 s of a's unlock").expect("task").expect("b's lock");
    seen.push(format!("b holds {}", String::from_utf8_lossy(&key_b).replace(&format!("{lease_b:x}"), "<lease b>")));
    // A holder whose lease is revoked lets the next one in.
    let req = store.request(&a, LockRequest { name: b"lk".to_vec(), lease: lease_a }).await;
    let mut waiting = tokio::spawn(async move { lock_a.lock(req).await.map(|r| r.into_inner().key) });
    seen.push(format!("a waits: {}", still_waiting(&mut waiting).await));
    let mut lease = LeaseClient::new(channel(&b).await.expect("channel"));
    let req = store.request(&b, LeaseRevokeRequest { id: lease_b }).await;
    lease.lease_revoke(req).await.unwrap_or_else(|e| panic!("{}: revoke: {e}", store.name()));
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
    seen.push(format!("a holds again: {}", again.expect("a's lock after b's lease went").expect("task").is_ok()));
    // A waiter that goes away leaves no key behind to hold up the ones after it.
    let lease_c = grant(store, &b, 60).await;
    let req = store.request(&b, LockRequest { name: b"lk".to_vec(), lease: lease_c }).await;
    let mut lock_c = LockClient::new(channel(&b).await.expect("channel"));
    let mut waiting = tokio::spawn(async move { lock_c.lock(req).await.map(|r| r.into_inner().key) });
    seen.push(format!("c waits: {}", still_waiting(&mut waiting).await));
    waiting.abort();
    let mut kv = KvClient::new(channel(&a).await.expect("channel"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let queued = loop {
        let range =
            RangeRequest { key: b"lk/".to_vec(), range_end: b"lk0".to_vec(), count_only: true, ..Default::default() };
        let req = store.request(&a, range).await;
        let count = kv.range(req).await.unwrap_or_else(|e| panic!("{}: range: {e}", store.name())).into_inner().count;
        if count == 1 || std::time::Instant::now() > deadline {
            break count;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    seen.push(format!("keys queued after c went away: {queued}"));
    seen
}

/// Two candidates and an observer of one election; what each step saw.
async fn election_with_a_leader_change(store: &Store<'_>) -> Vec<String> {
    let addrs = store.endpoints();
    let (one, two, watcher) = (addrs[0].clone(), addrs[1].clone(), addrs[2].clone());
    let mut seen = Vec::new();
    let name = b"el".to_vec();
    let mut observer = ElectionClient::new(channel(&watcher).await.expect("channel"));
    let req = store.request(&watcher, LeaderRequest { name: name.clone() }).await;
    let err = observer.leader(req).await.expect_err("no leader yet");
    seen.push(format!("leader before any: {:?} {}", err.code(), err.message()));
    let (lease_one, lease_two) = (grant(store, &one, 60).await, grant(store, &two, 60).await);
    let mut first = ElectionClient::new(channel(&one).await.expect("channel"));
    let req =
        store.request(&one, CampaignRequest { name: name.clone(), lease: lease_one, value: b"one".to_vec() }).await;
    let leader = first.campaign(req).await.unwrap_or_else(|e| panic!("{}: campaign: {e}", store.name()));
    let leader = leader.into_inner().leader.expect("a leader key");
    // etcd answers an Observe call with its first message: started once there is a leader,
    // and read once, so what follows is seen from here on.
    let req = store.request(&watcher, LeaderRequest { name: name.clone() }).await;
    let mut observed =
        observer.observe(req).await.unwrap_or_else(|e| panic!("{}: observe: {e}", store.name())).into_inner();
    let mut values = Vec::new();
    let mut next_value = async || {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), observed.message()).await;
        let msg = next.expect("an observed leader within 10 s").expect("observe stream").expect("a message");
        String::from_utf8_lossy(&msg.kv.expect("a key").value).into_owned()
    };
    values.push(next_value().await);
    let mut second = ElectionClient::new(channel(&two).await.expect("channel"));
    let req =
        store.request(&two, CampaignRequest { name: name.clone(), lease: lease_two, value: b"two".to_vec() }).await;
    let mut waiting = tokio::spawn(async move { second.campaign(req).await.map(|r| r.into_inner()) });
    seen.push(format!("second waits: {}", still_waiting(&mut waiting).await));
    let req = store.request(&one, ProclaimRequest { leader: Some(leader.clone()), value: b"one-b".to_vec() }).await;
    first.proclaim(req).await.unwrap_or_else(|e| panic!("{}: proclaim: {e}", store.name()));
    let req = store.request(&one, ResignRequest { leader: Some(leader.clone()) }).await;
    first.resign(req).await.unwrap_or_else(|e| panic!("{}: resign: {e}", store.name()));
    let took_over = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
    let took_over = took_over.expect("the second leads within 10 s").expect("task").expect("campaign");
    seen.push(format!("second leads: {}", took_over.leader.is_some()));
    let req = store.request(&watcher, LeaderRequest { name: name.clone() }).await;
    let now = observer.leader(req).await.expect("a leader").into_inner().kv.expect("its key");
    seen.push(format!("leader now: {}", String::from_utf8_lossy(&now.value)));
    let req = store.request(&one, ProclaimRequest { leader: Some(leader), value: b"stale".to_vec() }).await;
    let err = first.proclaim(req).await.expect_err("the old leader may not proclaim");
    seen.push(format!("old leader proclaims: {:?} {}", err.code(), err.message()));
    while values.len() < 3 {
        values.push(next_value().await);
    }
    seen.push(format!("observed: {values:?}"));
    seen
}

/// A NOSPACE alarm raised by hand: listed, refusing puts (not deletes), then disarmed.
async fn alarm_round(store: &Store<'_>) -> Vec<String> {
    use skiff_proto::etcdserverpb::alarm_request::AlarmAction;
    use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use skiff_proto::etcdserverpb::{AlarmRequest, AlarmType};
    let addr = store.endpoints()[0].clone();
    let member = status(&addr).await.expect("status").header.expect("header").member_id;
    let mut maintenance = MaintenanceClient::new(channel(&addr).await.expect("channel"));
    let mut kv = KvClient::new(channel(&addr).await.expect("channel"));
    let mut seen = Vec::new();
    let alarm = |action: AlarmAction| AlarmRequest {
        action: action as i32,
        member_id: member,
        alarm: AlarmType::Nospace as i32,
    };
    let req = store.request(&addr, alarm(AlarmAction::Activate)).await;
    let raised = maintenance.alarm(req).await.unwrap_or_else(|e| panic!("{}: activate: {e}", store.name()));
    seen.push(format!(
        "activate answers: {:?}",
        raised.into_inner().alarms.iter().map(|a| a.alarm).collect::<Vec<_>>()
    ));
    let req = store.request(&addr, AlarmRequest { action: AlarmAction::Get as i32, member_id: 0, alarm: 0 }).await;
    let listed = maintenance.alarm(req).await.expect("list alarms").into_inner().alarms;
    seen.push(format!("listed: {:?}", listed.iter().map(|a| (a.member_id == member, a.alarm)).collect::<Vec<_>>()));
    let put_req = PutRequest { key: b"alarm/k".to_vec(), value: b"v".to_vec(), ..Default::default() };
    let req = store.request(&addr, put_req.clone()).await;
    let refused = kv.put(req).await.expect_err("a put under NOSPACE");
    seen.push(format!("put: {:?} {}", refused.code(), refused.message()));
    let req = store.request(&addr, DeleteRangeRequest { key: b"alarm/k".to_vec(), ..Default::default() }).await;
    seen.push(format!("delete: {}", kv.delete_range(req).await.is_ok()));
    let req = store.request(&addr, alarm(AlarmAction::Deactivate)).await;
    maintenance.alarm(req).await.unwrap_or_else(|e| panic!("{}: deactivate: {e}", store.name()));
    let req = store.request(&addr, put_req).await;
    seen.push(format!("put after disarm: {}", kv.put(req).await.is_ok()));
    seen
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

    // etcd's lock service: one holder at a time, the next let in by an unlock or by the
    // holder's lease going.
    let skiff_lock = rt.block_on(lock_contention(&stores[0]));
    let etcd_lock = rt.block_on(lock_contention(&stores[1]));
    let expected = [
        "a holds lk/<lease a>",
        "b waits: true",
        "b holds lk/<lease b>",
        "a waits: true",
        "a holds again: true",
        "c waits: true",
        "keys queued after c went away: 1",
    ];
    assert_eq!(etcd_lock, expected, "etcd 3.4 itself");
    assert_eq!(skiff_lock, etcd_lock, "lock contention, skiff vs etcd");

    // etcd's election service: a second candidate waits, takes over when the first resigns;
    // the old leader may no longer proclaim; an observer sees each leader's value.
    let skiff_election = rt.block_on(election_with_a_leader_change(&stores[0]));
    let etcd_election = rt.block_on(election_with_a_leader_change(&stores[1]));
    assert_eq!(etcd_election[1..4], ["second waits: true", "second leads: true", "leader now: two"], "etcd itself");
    assert_eq!(etcd_election[5], r#"observed: ["one", "one-b", "two"]"#, "etcd 3.4 itself: {etcd_election:?}");
    assert_eq!(skiff_election, etcd_election, "election, skiff vs etcd");

    // Alarms: NOSPACE raised through the API is listed and refuses puts until disarmed.
    let skiff_alarms = rt.block_on(alarm_round(&stores[0]));
    let etcd_alarms = rt.block_on(alarm_round(&stores[1]));
    assert_eq!(etcd_alarms[2], "put: ResourceExhausted etcdserver: mvcc: database space exceeded", "etcd itself");
    assert_eq!(skiff_alarms, etcd_alarms, "alarms, skiff vs etcd");
}
