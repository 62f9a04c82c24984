//! Mutual TLS between masters, and who a peer is.
//!
//! A peer CA (separate from the cluster CA that signs users' and nodes' identities) signs one
//! certificate per member: common name `member-<id>`, DNS name [`member_name`]`(id)`, usable
//! as server and as client. On the peer listener a connection must present such a
//! certificate (the TLS handshake refuses any other), and every RPC is then admitted only if
//! the certificate's member is in the cluster's membership (a member that was removed is
//! refused; a master that knows no membership yet, because it is joining, takes its CA's
//! word) and the request carries this cluster's id ([`CLUSTER_ID_HEADER`]). A master dialing a
//! peer verifies that the server's certificate names the member it meant to reach.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Metadata every peer RPC carries: the sender's cluster id, so two clusters sharing a peer
/// CA, or a master pointed at the wrong cluster, never mix.
pub const CLUSTER_ID_HEADER: &str = "skiff-cluster-id";

/// PEM files of one master's peer identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerTls {
    /// This member's certificate (CN `member-<id>`, DNS name `member-<id>.peer.skiff`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The peer CA: every other member's certificate must be signed by it.
    pub ca: PathBuf,
}

/// The DNS name in member `id`'s peer certificate.
pub fn member_name(id: u64) -> String {
    format!("member-{id}.peer.skiff")
}

/// The common name of member `id`'s peer certificate.
pub fn member_common_name(id: u64) -> String {
    format!("member-{id}")
}

/// The member the (verified) client certificate of a peer request names.
pub fn member_of<T>(req: &tonic::Request<T>) -> Option<u64> {
    skiff_proto::cert::client_subject(req)?.common_name.strip_prefix("member-")?.parse().ok()
}

/// The loaded identity and CA, kept for dialing peers.
#[derive(Clone)]
pub struct PeerCredentials {
    identity: Identity,
    ca: Certificate,
}

impl PeerTls {
    pub fn load(&self) -> Result<PeerCredentials, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("peer TLS: {}: {e}", p.display()));
        Ok(PeerCredentials {
            identity: Identity::from_pem(read(&self.cert)?, read(&self.key)?),
            ca: Certificate::from_pem(read(&self.ca)?),
        })
    }
}

impl PeerCredentials {
    /// The peer listener's TLS: this member's identity, and a certificate from the peer CA
    /// required of every client.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone()).client_ca_root(self.ca.clone())
    }

    /// TLS for dialing member `target`: its certificate must name it.
    pub fn client(&self, target: u64) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(member_name(target))
    }
}
