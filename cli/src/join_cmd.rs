//! `skiff join`: a machine becomes a node of a cluster with a bootstrap token, as kubeadm
//! join and kubelet TLS bootstrapping do it:
//!
//! 1. discovery — the cluster's public `ClusterInfo` (its CA and masters) over a TLS
//!    connection that trusts nothing yet; the CA is accepted only if its public key hashes to
//!    `--ca-cert-hash`, and every later connection verifies the masters against it;
//! 2. a client certificate — a key made here, a CertificateSigningRequest for
//!    `system:node:<name>` sent with the token, issued by the control plane (the certificate
//!    controller approves node client requests from bootstrap tokens);
//! 3. registration, then a serving certificate — for its node server (logs, metrics), asked
//!    for in the node's own name for its own addresses;
//! 4. the node daemon, with those credentials.
//!
//! What it makes lives in `<root-dir>/pki` (keys 0600) and `<root-dir>/client.json`; run again
//! on a machine that has joined, it skips to step 4.

use crate::node_cmd::NodeArgs;
use anyhow::{bail, Context};
use clap::Args;
use skiff_client::informer::{self, ApiSource, ObjectKey, Store};
use skiff_client::{Client, ClientConfig};
use skiff_proto::api::{CertificateSigningRequest, CertificateSigningRequestSpec, ObjectMeta};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// A master's URL, `https://HOST:PORT`.
    #[arg(long)]
    server: String,
    /// A bootstrap token (`skiff token create`).
    #[arg(long)]
    token: String,
    /// The cluster CA's public key hash, `sha256:HEX` (printed by `skiff token create
    /// --print-join-command`): the only thing trusted before the cluster is.
    #[arg(long)]
    ca_cert_hash: String,
    /// How long to wait for each certificate to be issued (and, for a master, to be promoted).
    #[arg(long, default_value = "5m")]
    timeout: String,
    /// Join as a master (kubeadm join --control-plane): a raft learner of the store, promoted
    /// once it has caught up, with the control plane's keys from `--certificate-key`. Node
    /// flags other than --name are not used.
    #[arg(long)]
    control_plane: bool,
    /// With --control-plane: the key the control plane's keys were sealed with (printed by
    /// `skiff token create --control-plane`).
    #[arg(long, requires = "control_plane")]
    certificate_key: Option<String>,
    /// With --control-plane: this machine's address the master listens on and the others
    /// reach it at, with etcd's ports 2379 and 2380 (default: the address that routes to
    /// --server).
    #[arg(long, requires = "control_plane")]
    advertise_address: Option<std::net::IpAddr>,
    /// With --control-plane: the master's directory (config.json, pki/, data/, client.json).
    #[arg(long, requires = "control_plane", default_value = "/var/lib/skiff/master")]
    dir: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

/// A client-side TLS check that accepts any server: only for fetching `ClusterInfo`, whose
/// CA is then checked against the pinned hash before anything depends on it.
#[derive(Debug)]
struct TrustNothingYet(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TrustNothingYet {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `host:port` of an `https://host:port` URL.
pub(crate) fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("--server {url:?}: expected https://HOST:PORT (masters serve TLS)"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
        bail!("--server {url:?}: expected https://HOST:PORT");
    }
    Ok(authority.to_string())
}

/// The cluster's `ClusterInfo`, read over TLS that checks nothing; its CA must hash to `pin`.
pub(crate) async fn discover(server: &str, pin: &str) -> anyhow::Result<(String, Vec<String>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustNothingYet(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let addr = authority(server)?;
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_string();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (tls, addr, host) = (tls.clone(), addr.clone(), host.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let name = rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://cluster-info")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("reaching {server}"))?;
    let info = skiff_proto::api::cluster_info_client::ClusterInfoClient::new(channel)
        .get(skiff_proto::api::ClusterInfoRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("asking {server} for the cluster's CA: {}", s.message()))?
        .into_inner();
    let hash = skiff_proto::cert::ca_cert_hash(info.ca.as_bytes()).map_err(anyhow::Error::msg)?;
    if hash != pin {
        bail!(
            "{server} presents a cluster CA whose public key hashes to {hash}, not --ca-cert-hash {pin}: \
             refusing to trust it (a different cluster, or someone in between)"
        );
    }
    let servers = info.servers.iter().map(|s| s.strip_prefix("https://").unwrap_or(s).to_string()).collect();
    Ok((info.ca, servers))
}

/// Asks for a certificate signed by `signer` for the request `pem`, as `client`'s user, and
/// waits (on a watch of the request) until it is issued, refused, or `timeout` passes.
async fn certificate(
    client: &Client,
    signer: &str,
    usages: &[&str],
    pem: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let name = format!("node-csr-{}", (0..10).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect::<String>());
    let csr = CertificateSigningRequest {
        api_version: "certificates.k8s.io/v1".into(),
        kind: "CertificateSigningRequest".into(),
        metadata: Some(ObjectMeta { name: name.clone(), ..Default::default() }),
        spec: Some(CertificateSigningRequestSpec {
            request: pem.as_bytes().to_vec(),
            signer_name: signer.into(),
            usages: usages.iter().map(|u| u.to_string()).collect(),
            ..Default::default()
        }),
        status: None,
    };
    // Watched from before the create, so the issue cannot be missed.
    let store: Store<CertificateSigningRequest> = Store::new();
    let mut changes = store.subscribe();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let source = ApiSource::new(client.clone()).fields(&format!("metadata.name={name}"));
    let feeding = tokio::spawn(informer::run(store.clone(), source, stop_rx));
    let created = skiff_client::api::Api::<CertificateSigningRequest>::new(client.clone()).create(&csr).await;
    let result = async {
        created.map_err(|s| anyhow::anyhow!("asking for a {signer} certificate: {}", s.message()))?;
        let key = ObjectKey::new("", &name);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(now) = store.get(&key) {
                let status = now.status.clone().unwrap_or_default();
                if let Some(c) = status.conditions.iter().find(|c| c.r#type == "Denied" || c.r#type == "Failed") {
                    bail!("certificate request {name} was {}: {} {}", c.r#type.to_lowercase(), c.reason, c.message);
                }
                if !status.certificate.is_empty() {
                    return Ok(status.certificate);
                }
            }
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => bail!("the watch of {name} ended"),
                Err(_) => bail!(
                    "certificate request {name} ({signer}) was not issued within {} s (`skiff get csr {name}` shows it; \
                     do the masters have a signing CA?)",
                    timeout.as_secs()
                ),
            }
        }
    }
    .await;
    let _ = stop_tx.send(true);
    let _ = feeding.await;
    result
}

/// A client config naming every master, the cluster CA and a certificate: the one a joined
/// node runs with (context `node`), and a joined master's administrator config (`admin`); and
/// beside it a `kubeconfig` for kubectl with the same identity, a context per master
/// (`skiff-ADDRESS`), the first of `servers` current.
pub(crate) fn write_client_config(
    path: &Path,
    servers: &[String],
    ca: &Path,
    (cert, key): (&Path, &Path),
    user: &str,
    context: &str,
) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "clusters": [{"name": "cluster", "endpoints": servers}],
        "users": [{"name": user, "clientCertificate": cert, "clientKey": key}],
        "ca": ca,
        "contexts": [{"name": context, "cluster": "cluster", "user": user, "namespace": "default"}],
        "currentContext": context,
    });
    skiff_proto::pki::write_private(path, (serde_json::to_string_pretty(&config)? + "\n").as_bytes())?;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let contexts: Vec<(String, String)> = servers.iter().map(|s| (format!("skiff-{s}"), s.clone())).collect();
    let credentials = serde_json::json!({"client-certificate": absolute(cert), "client-key": absolute(key)});
    let kubeconfig = crate::up::kubeconfig(&contexts, Some(&std::fs::read(ca)?), (user, credentials))?;
    skiff_proto::pki::write_private(&path.with_file_name("kubeconfig"), kubeconfig.as_bytes())?;
    Ok(())
}

/// A client of the masters `servers`, verified against the pinned cluster CA `ca`, calling
/// with a bootstrap `token` or a `client_cert` (certificate, key).
pub(crate) fn pinned_client(
    servers: &[String],
    ca: &Path,
    token: Option<String>,
    client_cert: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<Client> {
    Client::new(ClientConfig {
        endpoints: servers.to_vec(),
        token,
        ca: Some(ca.to_path_buf()),
        client_cert,
        namespace: "default".into(),
        timeout: Duration::from_secs(30),
    })
    .map_err(|s| anyhow::anyhow!("{}", s.message()))
}

/// The local address this machine reaches `server` from (no packet is sent).
pub(crate) fn local_address_towards(server: &str) -> anyhow::Result<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(server).with_context(|| format!("finding a route to {server}"))?;
    Ok(socket.local_addr()?.ip().to_string())
}

pub fn run(args: JoinArgs) -> anyhow::Result<()> {
    let JoinArgs {
        server,
        token,
        ca_cert_hash,
        timeout,
        control_plane,
        certificate_key,
        advertise_address,
        dir,
        mut node,
    } = args;
    if node.config.is_some() {
        bail!("skiff join writes the node's client config itself: drop --config");
    }
    if skiff_api::bootstrap::parse_token(&token).is_none() {
        bail!("--token: a bootstrap token is 6 and 16 characters of [a-z0-9] joined by a dot (skiff token create)");
    }
    if !ca_cert_hash.starts_with("sha256:") || ca_cert_hash.len() != 7 + 64 {
        bail!("--ca-cert-hash {ca_cert_hash:?}: expected sha256: and 64 hex digits");
    }
    let timeout = crate::ctl::parse_duration(&timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let name = node.name.clone().unwrap_or_else(crate::node_cmd::hostname);
    if control_plane {
        let certificate_key = certificate_key.context("--control-plane needs --certificate-key")?;
        let joining = crate::control_plane::Joining {
            server,
            token,
            ca_cert_hash,
            certificate_key,
            name,
            advertise: advertise_address,
            dir,
            timeout,
        };
        return crate::control_plane::run(joining);
    }
    node.name = Some(name.clone());
    let addr = authority(&server)?;
    if node.node_ip == crate::node_cmd::DEFAULT_NODE_IP {
        node.node_ip = local_address_towards(&addr)?;
    }
    let root = node.root_dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/skiff/node").join(&name));
    node.root_dir = Some(root.clone());
    let pki = root.join("pki");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    skiff_proto::pki::create_private_dir(&pki)?;
    let config_path = root.join("client.json");
    let (ca, client_cert, client_key) = (pki.join("ca.crt"), pki.join("client.crt"), pki.join("client.key"));
    let (serving_cert, serving_key) = (pki.join("serving.crt"), pki.join("serving.key"));
    let rt = tokio::runtime::Runtime::new()?;
    if config_path.exists() && serving_cert.exists() {
        eprintln!("join: {name} has joined before; starting with its credentials in {}", root.display());
    } else {
        rt.block_on(async {
            let (ca_pem, servers) = discover(&server, &ca_cert_hash).await?;
            std::fs::write(&ca, &ca_pem)?;
            eprintln!("join: the cluster CA matches {ca_cert_hash}; masters {}", servers.join(", "));
            // The client certificate, asked for with the token.
            let cn = format!("system:node:{name}");
            let key = skiff_proto::pki::KeyPair::generate().map_err(|e| anyhow::anyhow!("making a key: {e}"))?;
            let pem = skiff_proto::pki::request(&key, &cn, Some("system:nodes"), &[])?;
            let bootstrap = pinned_client(&servers, &ca, Some(token.clone()), None)?;
            let usages = ["digital signature", "key encipherment", "client auth"];
            let cert =
                certificate(&bootstrap, skiff_scheduler::certificates::KUBELET_CLIENT, &usages, &pem, timeout).await?;
            skiff_proto::pki::write_private(&client_key, key.serialize_pem().as_bytes())?;
            std::fs::write(&client_cert, &cert)?;
            eprintln!("join: client certificate for {cn} issued");
            // Registered in its own name, then its serving certificate for its own addresses.
            let own = pinned_client(&servers, &ca, None, Some((client_cert.clone(), client_key.clone())))?;
            let config = crate::node_cmd::config_of(&node)?;
            skiff_node::heartbeat::register(&own, &config)
                .await
                .map_err(|s| anyhow::anyhow!("registering node {name}: {}", s.message()))?;
            let key = skiff_proto::pki::KeyPair::generate().map_err(|e| anyhow::anyhow!("making a key: {e}"))?;
            let pem = skiff_proto::pki::request(&key, &cn, Some("system:nodes"), &[&node.node_ip, &name])?;
            let usages = ["digital signature", "key encipherment", "server auth"];
            let cert =
                certificate(&own, skiff_scheduler::certificates::KUBELET_SERVING, &usages, &pem, timeout).await?;
            skiff_proto::pki::write_private(&serving_key, key.serialize_pem().as_bytes())?;
            std::fs::write(&serving_cert, &cert)?;
            eprintln!("join: serving certificate for {} issued", node.node_ip);
            write_client_config(&config_path, &servers, &ca, (&client_cert, &client_key), &cn, "node")
        })?;
    }
    drop(rt);
    node.config = Some(config_path);
    node.tls_cert_file = Some(serving_cert);
    node.tls_private_key_file = Some(serving_key);
    // The masters reach the node server with client certificates of the cluster CA.
    node.client_ca_file = Some(ca);
    crate::node_cmd::run(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_must_be_an_https_url_with_a_port() {
        assert_eq!(authority("https://10.0.0.2:2379").unwrap(), "10.0.0.2:2379");
        assert_eq!(authority("https://10.0.0.2:2379/").unwrap(), "10.0.0.2:2379");
        for bad in ["http://10.0.0.2:2379", "10.0.0.2:2379", "https://10.0.0.2", "https://h:1/x"] {
            assert!(authority(bad).is_err(), "{bad}");
        }
    }
}
