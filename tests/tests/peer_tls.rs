//! The raft peer port speaks mutual TLS only: a caller without a certificate from the peer CA
//! is refused at the handshake, whatever RPC it tries (vote, append, forward, snapshot); one
//! with a peer certificate is still refused unless the certificate names a member of the
//! cluster and the request names this cluster. Membership is unchanged afterwards.

use skiff_proto::peer::peer_client::PeerClient;
use skiff_proto::peer::Payload;
use skiff_raft_store::master::Forwarded;
use skiff_raft_store::network::encode;
use skiff_tests::{runtime, Cluster};
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A certificate `cn` signed by a CA of its own: what an outsider can make.
fn foreign_identity() -> Identity {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["member-1.peer.skiff".to_string()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "member-1");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    Identity::from_pem(cert.pem(), key.serialize_pem())
}

async fn peer_client(addr: &str, tls: Option<ClientTlsConfig>) -> Result<PeerClient<Channel>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        Endpoint::from_shared(format!("{scheme}://{addr}")).unwrap().connect_timeout(Duration::from_secs(3));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    Ok(PeerClient::new(endpoint.connect().await.map_err(|e| format!("{e:?}"))?))
}

/// Every kind of peer RPC once; each result as Ok or the error's text.
async fn try_all(
    client: &mut PeerClient<Channel>,
    cluster_id: Option<u64>,
) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let req = |p: Payload| {
        let mut r = tonic::Request::new(p);
        if let Some(id) = cluster_id {
            r.metadata_mut().insert("skiff-cluster-id", id.into());
        }
        r
    };
    let junk = Payload { data: vec![0; 8] };
    let remove = encode(&Forwarded::RemoveMember { id: 3 });
    vec![
        ("vote", client.vote(req(junk.clone())).await.map(|_| ())),
        ("append", client.append_entries(req(junk.clone())).await.map(|_| ())),
        ("snapshot", client.install_snapshot(req(junk)).await.map(|_| ())),
        ("forward RemoveMember", client.forward(req(remove)).await.map(|_| ())),
    ]
}

#[test]
fn the_peer_port_admits_only_members_of_this_cluster_over_mutual_tls() {
    let c = Cluster::up(3, &[]);
    let rt = runtime();
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let peer_addr = c.master(leader).peer.clone();
    let pki = c.dir.path().join("pki");
    let ca = Certificate::from_pem(std::fs::read(pki.join("peer-ca.crt")).unwrap());
    let to_leader = |identity: Option<Identity>| {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(ca.clone()).domain_name(format!("member-{leader}.peer.skiff"));
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        tls
    };

    // phase: plaintext, no client certificate, a certificate from another CA: no connection
    // gets as far as an RPC
    for (what, tls) in [
        ("plaintext", None),
        ("TLS without a client certificate", Some(to_leader(None))),
        ("a client certificate from another CA", Some(to_leader(Some(foreign_identity())))),
    ] {
        let refused = rt.block_on(async {
            let mut client = match peer_client(&peer_addr, tls).await {
                Err(e) => return vec![("connect", e)],
                Ok(client) => client,
            };
            try_all(&mut client, None)
                .await
                .into_iter()
                .map(|(rpc, r)| (rpc, r.map(|_| "answered".to_string()).unwrap_or_else(|e| format!("{e:?}"))))
                .collect::<Vec<_>>()
        });
        for (rpc, outcome) in &refused {
            assert_ne!(outcome, "answered", "{what}: {rpc} was answered");
            assert!(
                !outcome.contains("PermissionDenied") && !outcome.contains("InvalidArgument"),
                "{what}: {rpc} reached the service instead of failing the handshake: {outcome}"
            );
        }
    }

    // phase: a real peer certificate, but of a member the cluster does not have; and a real
    // member's certificate with another cluster's id: refused by the service, naming why
    let dir = c.dir.path().join("intruder");
    std::fs::create_dir_all(&dir).unwrap();
    let identity = |flags: &[String]| {
        let arg = |name: &str| Path::new(&flags[flags.iter().position(|f| f == name).unwrap() + 1]).to_path_buf();
        Identity::from_pem(std::fs::read(arg("--peer-cert")).unwrap(), std::fs::read(arg("--peer-key")).unwrap())
    };
    let stranger = identity(&c.peer_flags(99, &dir));
    let other_dir = c.dir.path().join("member-2-copy");
    std::fs::create_dir_all(&other_dir).unwrap();
    let member_two = identity(&c.peer_flags(2, &other_dir));
    let cluster_id = {
        let st = rt.block_on(skiff_tests::status(&c.master(leader).etcd)).unwrap();
        st.header.unwrap().cluster_id
    };
    for (what, identity, cluster, phrase) in [
        ("member 99", stranger, Some(cluster_id), "member 99 is not in this cluster's membership"),
        ("member 2, another cluster's id", member_two.clone(), Some(cluster_id ^ 1), "this is cluster"),
        ("member 2, no cluster id", member_two, None, "this is cluster"),
    ] {
        let results = rt.block_on(async {
            let mut client = peer_client(&peer_addr, Some(to_leader(Some(identity)))).await.unwrap();
            try_all(&mut client, cluster).await
        });
        for (rpc, r) in results {
            let e = r.expect_err(&format!("{what}: {rpc} must be refused"));
            assert!(
                matches!(e.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated)
                    && e.message().contains(phrase),
                "{what}: {rpc}: {e:?}"
            );
        }
    }

    // phase: nothing any of it tried happened
    let members = c.etcdctl_ok(&c.master(leader).etcd, &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "membership unchanged: {members}");
    assert_eq!(c.wait_leader(&[1, 2, 3], Duration::from_secs(10)), leader, "the leader was not disturbed");
}
