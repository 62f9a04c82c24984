//! The run's credentials, shaped as `skiff up` makes them: a cluster CA that signs the masters'
//! serving certificate, the harness's client certificate and the nodes' identities; a peer CA
//! that signs one certificate per raft member; a root password that turns the store's auth on.
//! Every process of a run authenticates and encrypts as in a real cluster, so the faults the
//! nemesis injects hit the TLS and auth paths too.

use anyhow::Context;
use skiff_proto::pki::{create_private_dir, write_private, Ca, Issued, Subject, Usage};
use skiff_raft_store::master::ClientTls;
use skiff_raft_store::peer_tls::{member_common_name, member_name, PeerTls};
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub struct ChaosPki {
    cluster: Ca,
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    peer: Ca,
    peer_ca: PathBuf,
    /// The masters' client listener: their bridge addresses (and 127.0.0.1, the name the
    /// harness's channels verify, whichever namespace they are opened in).
    server: Issued,
    /// The harness's identity: CN `root` (the store's root user), O `system:masters` (the API's
    /// administrators), so one channel serves both APIs.
    harness: Issued,
    /// What the masters present to node servers.
    pub kubelet_client: Issued,
    /// The hash of the store's root password, which turns the store's auth on.
    pub root_password_hash: String,
}

impl ChaosPki {
    /// Makes every credential of a run under `dir/pki` (0700; keys 0600); `ips` are the
    /// masters' bridge addresses.
    pub fn create(dir: &Path, ips: &[String]) -> anyhow::Result<ChaosPki> {
        let dir = dir.join("pki");
        create_private_dir(&dir)?;
        let cluster = Ca::create(&dir.join("ca"), "skiff-chaos-ca")?;
        let peer = Ca::create(&dir.join("peer-ca"), "skiff-chaos-peer-ca")?;
        let mut sans: Vec<&str> = vec!["127.0.0.1", "localhost"];
        sans.extend(ips.iter().map(String::as_str));
        let server = Subject { common_name: "skiff-master", sans: &sans, ..Default::default() };
        let server = cluster.issue(&dir.join("server"), &server, &[Usage::ServerAuth])?;
        let harness = Subject {
            common_name: skiff_raft_store::auth::ROOT,
            organization: Some("system:masters"),
            ..Default::default()
        };
        let harness = cluster.issue(&dir.join("harness"), &harness, &[Usage::ClientAuth])?;
        let kubelet = Subject { common_name: skiff_node::logs::MASTER_CLIENT_CN, ..Default::default() };
        let kubelet_client = cluster.issue(&dir.join("kubelet-client"), &kubelet, &[Usage::ClientAuth])?;
        let password: String = (0..32).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect();
        write_private(&dir.join("root.password"), format!("{password}\n").as_bytes())?;
        Ok(ChaosPki {
            ca: std::fs::canonicalize(dir.join("ca.crt"))?,
            peer_ca: std::fs::canonicalize(dir.join("peer-ca.crt"))?,
            cluster,
            peer,
            server,
            harness,
            kubelet_client,
            root_password_hash: skiff_raft_store::auth::hash_password(&password),
        })
    }

    /// The masters' client listener TLS: certificates from the cluster CA are optional (the
    /// node daemons present theirs; tokens are the other way in).
    pub fn client_listener(&self) -> ClientTls {
        ClientTls {
            cert: self.server.cert.clone(),
            key: self.server.key.clone(),
            client_ca: Some(self.ca.clone()),
            ca: Some(self.ca.clone()),
            client_cert_optional: true,
        }
    }

    /// Member `id`'s peer identity, written in `home` (a replaced member gets a new id, so a
    /// new certificate).
    pub fn peer_identity(&self, home: &Path, id: u64) -> anyhow::Result<PeerTls> {
        let (cn, dns) = (member_common_name(id), member_name(id));
        let subject = Subject { common_name: &cn, sans: &[&dns], ..Default::default() };
        let issued = self.peer.issue(&home.join("peer"), &subject, &[Usage::ServerAuth, Usage::ClientAuth])?;
        Ok(PeerTls { cert: issued.cert, key: issued.key, ca: self.peer_ca.clone() })
    }

    /// Node `name`'s client identity (CN `system:node:<name>`, O `system:nodes`) and its
    /// server's certificate for `node_ip`, both in `home`.
    pub fn node_identity(&self, home: &Path, name: &str, node_ip: &str) -> anyhow::Result<(Issued, Issued)> {
        let cn = format!("system:node:{name}");
        let client = Subject { common_name: &cn, organization: Some("system:nodes"), ..Default::default() };
        let client = self.cluster.issue(&home.join("client"), &client, &[Usage::ClientAuth])?;
        let serving = Subject { common_name: &cn, sans: &[node_ip], ..Default::default() };
        let serving = self.cluster.issue(&home.join("serving"), &serving, &[Usage::ServerAuth])?;
        Ok((client, serving))
    }

    /// An endpoint that verifies the masters but presents no credentials.
    pub fn anonymous_endpoint(&self) -> anyhow::Result<tonic::transport::Endpoint> {
        let ca = std::fs::read(&self.ca).with_context(|| format!("reading {}", self.ca.display()))?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        Ok(tonic::transport::Endpoint::from_static("https://127.0.0.1:2379").tls_config(tls)?)
    }

    /// TLS for the harness's own channels: the cluster CA and the harness's certificate.
    pub fn harness_tls(&self) -> anyhow::Result<ClientTlsConfig> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(read(&self.harness.cert)?, read(&self.harness.key)?)))
    }
}
