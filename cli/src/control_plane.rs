//! Masters on other machines, as kubeadm adds control-plane nodes:
//!
//! - `skiff token create --control-plane --master-config PATH` seals the control plane's keys
//!   (the cluster CA and the peer CA with their keys, the API's token file, the encryption key
//!   of Secrets at rest) and the cluster's settings with a fresh *certificate key* (AES-256-GCM)
//!   into a Secret `kube-system/skiff-certs-<token id>` that only that token may read, and
//!   prints the join command with the key (kubeadm's `--upload-certs` and
//!   `--certificate-key`). The key never reaches the cluster: what it stores is useless without
//!   it, and deleting the token deletes the Secret.
//! - `skiff join --control-plane` pins the cluster CA by its hash as a node join does, reads and
//!   opens its Secret, issues itself a server certificate for its own address and the store's
//!   root identity from the cluster CA, is added to the store as a raft learner (etcd's
//!   `MemberAdd`), issues its peer certificate for the member id it was given, starts its
//!   master, and promotes itself once the leader finds it in sync (`MemberPromote`).
//!
//! What a joined master keeps lives in its directory (`--dir`, default /var/lib/skiff/master):
//! `config.json` (`skiff master --config`), `pki/` (keys 0600), `data/`, and `client.json`, an
//! administrator's client config by certificate (as kubeadm's admin.conf). Run again, the
//! command starts the master from what is there.

use crate::master_cmd::{ClusterSigning, KubeletClient, MasterFile};
use anyhow::{bail, Context};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use skiff_api::bootstrap;
use skiff_client::Client;
use skiff_proto::etcdserverpb::cluster_client::ClusterClient;
use skiff_proto::etcdserverpb::{MemberAddRequest, MemberListRequest, MemberPromoteRequest};
use skiff_proto::pki::{write_private, Ca};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The Secret's type and the data key holding the sealed bundle.
pub const SECRET_TYPE: &str = "skiff.io/control-plane-keys";
const BUNDLE_FIELD: &str = "bundle";
/// etcd's ports, as `skiff up --advertise-address` uses them.
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// The files of a bundle, by the name they are written under in the joiner's `pki/` (CAs) or
/// directory (the rest).
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const PEER_CA_CERT: &str = "peer-ca.crt";
const PEER_CA_KEY: &str = "peer-ca.key";
const TOKENS: &str = "tokens.csv";
const ENCRYPTION: &str = "encryption.yaml";

/// What a joining master receives: the uploading master's configuration file (the cluster's
/// settings: service range, controllers, store tuning; its identity, addresses and paths are
/// replaced by the joiner's own) and the shared files by name.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Bundle {
    pub config: String,
    pub files: BTreeMap<String, String>,
}

/// A fresh certificate key: 32 random bytes as 64 hex digits (kubeadm's shape).
pub fn new_certificate_key() -> String {
    rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes of a certificate key given as 64 hex digits.
pub fn parse_certificate_key(hex: &str) -> anyhow::Result<[u8; 32]> {
    let bad = || {
        anyhow::anyhow!("--certificate-key: expected 64 hex digits (printed by `skiff token create --control-plane`)")
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(key)
}

fn aead(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("an AES-256 key is 32 bytes"))
}

/// `bundle` sealed with `key`, bound to `name` (the Secret it is stored in): a random nonce,
/// then the ciphertext and its tag.
pub fn seal(key: &[u8; 32], name: &str, bundle: &Bundle) -> anyhow::Result<Vec<u8>> {
    let mut data = serde_json::to_vec(bundle)?;
    let nonce: [u8; NONCE_LEN] = rand::random();
    aead(key)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(name.as_bytes()), &mut data)
        .map_err(|_| anyhow::anyhow!("sealing the control plane's keys failed"))?;
    Ok([nonce.as_slice(), &data].concat())
}

/// The bundle `sealed` holds, if `key` opens it and it was sealed for `name`.
pub fn open(key: &[u8; 32], name: &str, sealed: &[u8]) -> anyhow::Result<Bundle> {
    if sealed.len() < NONCE_LEN {
        bail!("secret {name}: the sealed bundle is too short");
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).expect("NONCE_LEN bytes");
    let mut data = rest.to_vec();
    let plain = aead(key).open_in_place(nonce, Aad::from(name.as_bytes()), &mut data).map_err(|_| {
        anyhow::anyhow!("secret {name}: --certificate-key does not open it (a key printed for another token?)")
    })?;
    serde_json::from_slice(plain).with_context(|| format!("secret {name}: the bundle is not readable"))
}

/// The bundle of the master whose configuration file is `path`: every file a master of this
/// cluster needs that only the masters hold.
pub fn bundle_of(path: &Path) -> anyhow::Result<Bundle> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--master-config {}", path.display()))?;
    let file = MasterFile::parse(&text).with_context(|| format!("--master-config {}", path.display()))?;
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let mut files = BTreeMap::new();
    let signing = file.controllers.cluster_signing.as_ref().with_context(|| {
        format!("{}: this master has no cluster signing CA, so machines cannot join its cluster", path.display())
    })?;
    files.insert(CA_CERT.to_string(), read(&signing.cert)?);
    files.insert(CA_KEY.to_string(), read(&signing.key)?);
    let peer = file.master.peer_tls.as_ref().with_context(|| {
        format!("{}: this master's peers speak plaintext; masters on other machines need peer TLS", path.display())
    })?;
    files.insert(PEER_CA_CERT.to_string(), read(&peer.ca)?);
    files.insert(PEER_CA_KEY.to_string(), read(&peer.ca.with_extension("key"))?);
    if let Some(t) = &file.token_file {
        files.insert(TOKENS.to_string(), read(t)?);
    }
    if let Some(e) = &file.encryption_provider_config {
        files.insert(ENCRYPTION.to_string(), read(e)?);
    }
    Ok(Bundle { config: text, files })
}

/// The Secret holding `sealed` for token `id`.
pub fn secret(id: &str, sealed: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
        "metadata": {"name": bootstrap::certs_secret_name(id), "namespace": bootstrap::NAMESPACE},
        "data": {BUNDLE_FIELD: base64::engine::general_purpose::STANDARD.encode(sealed)},
    })
}

/// What `skiff join --control-plane` was given.
pub struct Joining {
    pub server: String,
    pub token: String,
    pub ca_cert_hash: String,
    pub certificate_key: String,
    pub name: String,
    pub advertise: Option<IpAddr>,
    pub dir: PathBuf,
    pub timeout: Duration,
}

/// A client of the masters `endpoints` as the store's root user (by certificate).
fn root_client(endpoints: &[String], pki: &Path) -> anyhow::Result<Client> {
    let root = (pki.join("root.crt"), pki.join("root.key"));
    crate::join_cmd::pinned_client(endpoints, &pki.join(CA_CERT), None, Some(root))
}

/// Opens the sealed keys, writes this master's credentials into `j.dir`, adds it to the store
/// as a learner and writes its configuration to `config_path`.
async fn prepare(j: &Joining, key: &[u8; 32], config_path: &Path) -> anyhow::Result<()> {
    let (id, _) = bootstrap::parse_token(&j.token).context("--token")?;
    let (ca_pem, servers) = crate::join_cmd::discover(&j.server, &j.ca_cert_hash).await?;
    eprintln!("join: the cluster CA matches {}; masters {}", j.ca_cert_hash, servers.join(", "));
    let pki = j.dir.join("pki");
    skiff_proto::pki::create_private_dir(&pki)?;
    std::fs::write(pki.join(CA_CERT), &ca_pem)?;
    let bootstrap = crate::join_cmd::pinned_client(&servers, &pki.join(CA_CERT), Some(j.token.clone()), None)?;
    let name = bootstrap::certs_secret_name(id);
    let stored = bootstrap.get("secrets", bootstrap::NAMESPACE, &name).await.map_err(|s| {
        anyhow::anyhow!(
            "reading the control plane's keys ({}/{name}): {} (made by `skiff token create --control-plane`)",
            bootstrap::NAMESPACE,
            s.message()
        )
    })?;
    let sealed = stored["data"][BUNDLE_FIELD]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .with_context(|| format!("secret {name} has no {BUNDLE_FIELD}"))?;
    let bundle = open(key, &name, &sealed)?;
    if bundle.files.get(CA_CERT).map(String::as_str) != Some(ca_pem.as_str()) {
        bail!("secret {name} holds a CA other than the one --ca-cert-hash pins: refusing it");
    }
    let source = MasterFile::parse(&bundle.config).with_context(|| format!("secret {name}: the master config"))?;
    for (file, text) in &bundle.files {
        let path = if file.ends_with(".crt") || file.ends_with(".key") { pki.join(file) } else { j.dir.join(file) };
        write_private(&path, text.as_bytes())?;
    }
    let (dir, pki) = (std::fs::canonicalize(&j.dir)?, std::fs::canonicalize(&pki)?);
    let (ca_cert, ca_key) = (pki.join(CA_CERT), pki.join(CA_KEY));
    let ca = Ca::from_files(&ca_cert, &ca_key)?;
    let advertise = match j.advertise {
        Some(a) => a,
        None => crate::join_cmd::local_address_towards(&crate::join_cmd::authority(&j.server)?)?.parse()?,
    };
    // Its own identities from the cluster CA, as `skiff up` makes a master's (the root one
    // changes the membership below).
    let ids = crate::up::issue_master_identities(&ca, &pki, Some(&advertise.to_string()))?;
    // A learner first: it counts toward no quorum until it has caught up.
    let peer_addr = std::net::SocketAddr::new(advertise, PEER_PORT).to_string();
    let client_addr = std::net::SocketAddr::new(advertise, CLIENT_PORT).to_string();
    let root_client = root_client(&servers, &pki)?;
    let request = MemberAddRequest { peer_ur_ls: vec![format!("https://{peer_addr}")], is_learner: true };
    let added = root_client
        .with_failover(|channel, auth| {
            let request = request.clone();
            async move { Ok(ClusterClient::with_interceptor(channel, auth).member_add(request).await?.into_inner()) }
        })
        .await
        .map_err(|s| {
            let hint = if s.message().contains("already exists") {
                " (a member at this address is left from an earlier attempt or machine: `etcdctl member remove` it first)"
            } else {
                ""
            };
            anyhow::anyhow!("adding a member at {peer_addr}: {}{hint}", s.message())
        })?
        .member
        .context("member add returned no member")?;
    eprintln!("join: added to the store as learner {:x} at {peer_addr}", added.id);
    // Its peer identity names the member id it was just given.
    let peer_ca = Ca::from_files(&pki.join(PEER_CA_CERT), &pki.join(PEER_CA_KEY))?;
    let peer = crate::up::peer_identity(&pki, added.id, &peer_ca, &pki.join(PEER_CA_CERT))?;
    let mut master = source.master.clone();
    master.id = added.id;
    master.name = j.name.clone();
    master.data_dir = dir.join("data");
    master.peer_addr = peer_addr;
    master.client_addr = client_addr.clone();
    // No founding members: it joins the cluster that just added it.
    master.initial_members = BTreeMap::new();
    master.root_password_hash = None;
    master.client_tls = Some(skiff_raft_store::master::ClientTls {
        cert: ids.server.cert,
        key: ids.server.key,
        client_ca: Some(ca_cert.clone()),
        ca: Some(ca_cert.clone()),
        client_cert_optional: true,
    });
    master.peer_tls = Some(peer);
    let mut controllers = source.controllers.clone();
    let duration_seconds = controllers.cluster_signing.as_ref().map_or(365 * 24 * 3600, |s| s.duration_seconds);
    controllers.cluster_signing = Some(ClusterSigning { cert: ca_cert.clone(), key: ca_key, duration_seconds });
    let shared = |f: &str| bundle.files.contains_key(f).then(|| dir.join(f));
    let file = MasterFile {
        master,
        token_file: shared(TOKENS),
        service_cluster_ip_range: source.service_cluster_ip_range.clone(),
        controllers,
        encryption_provider_config: shared(ENCRYPTION),
        kubelet_client: Some(KubeletClient {
            cert: ids.kubelet_client.cert,
            key: ids.kubelet_client.key,
            ca: ca_cert.clone(),
        }),
    };
    // An administrator's client config naming every master, this one first.
    let mut endpoints = vec![client_addr.clone()];
    endpoints.extend(servers.iter().filter(|s| **s != client_addr).cloned());
    let admin = (ids.admin.cert.as_path(), ids.admin.key.as_path());
    crate::join_cmd::write_client_config(&dir.join("client.json"), &endpoints, &ca_cert, admin, "admin", "admin")?;
    // Written last: its presence means the join got this far.
    write_private(config_path, file.to_json()?.as_bytes())?;
    Ok(())
}

/// Promotes this master (member `id`) once the leader finds it in sync, as etcd refuses to
/// promote a learner that is behind; gives up after `timeout`.
async fn promote(client: &Client, id: u64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let members = client
            .with_failover(|channel, auth| async move {
                let list = MemberListRequest { linearizable: true };
                Ok(ClusterClient::with_interceptor(channel, auth).member_list(list).await?.into_inner().members)
            })
            .await;
        if let Ok(members) = &members {
            match members.iter().find(|m| m.id == id) {
                Some(m) if !m.is_learner => return Ok(()),
                Some(_) => {}
                None => bail!("member {id:x} is no longer in the cluster (removed?)"),
            }
        }
        let tried = client
            .with_failover(|channel, auth| async move {
                ClusterClient::with_interceptor(channel, auth).member_promote(MemberPromoteRequest { id }).await
            })
            .await;
        match tried {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("promoting member {id:x}: {}", e.message()),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

pub fn run(j: Joining) -> anyhow::Result<()> {
    let key = parse_certificate_key(&j.certificate_key)?;
    std::fs::create_dir_all(&j.dir).with_context(|| format!("creating {}", j.dir.display()))?;
    skiff_proto::pki::create_private_dir(&j.dir)?;
    let config_path = j.dir.join("config.json");
    if config_path.exists() {
        eprintln!("join: this machine has joined before; starting its master from {}", config_path.display());
    } else {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(prepare(&j, &key, &config_path))?;
    }
    let file = MasterFile::parse(&std::fs::read_to_string(&config_path)?)?;
    let (id, client) = (file.master.id, file.master.client_addr.clone());
    let pki = std::fs::canonicalize(j.dir.join("pki"))?;
    let timeout = j.timeout;
    // Beside the master in this process: promotion needs it running and catching up.
    std::thread::spawn(move || {
        let promoted = tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(async {
                let c = root_client(&[client], &pki)?;
                promote(&c, id, timeout).await
            })
        });
        match promoted {
            Ok(()) => eprintln!("join: member {id:x} is a voting member"),
            Err(e) => eprintln!(
                "join: {e:#} — it stays a learner; promote it with `etcdctl member promote {id:x}` once it has caught up"
            ),
        }
    });
    crate::master_cmd::run_config(&config_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Bundle {
        Bundle { config: "{}".into(), files: BTreeMap::from([(CA_CERT.to_string(), "pem".to_string())]) }
    }

    #[test]
    fn a_sealed_bundle_opens_only_with_its_key_and_under_its_name() {
        let key = parse_certificate_key(&new_certificate_key()).unwrap();
        let sealed = seal(&key, "skiff-certs-abc123", &bundle()).unwrap();
        assert_eq!(open(&key, "skiff-certs-abc123", &sealed).unwrap(), bundle());
        let other = parse_certificate_key(&new_certificate_key()).unwrap();
        let e = open(&other, "skiff-certs-abc123", &sealed).unwrap_err().to_string();
        assert!(e.contains("does not open it"), "{e}");
        assert!(open(&key, "skiff-certs-zzz999", &sealed).is_err(), "moved to another token's Secret");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open(&key, "skiff-certs-abc123", &flipped).is_err(), "changed in the store");
        assert!(open(&key, "skiff-certs-abc123", &sealed[..5]).is_err());
    }

    #[test]
    fn a_certificate_key_is_64_hex_digits() {
        assert_eq!(new_certificate_key().len(), 64);
        assert_eq!(parse_certificate_key(&"0f".repeat(32)).unwrap(), [0x0f; 32]);
        for bad in ["", "0f", &"0g".repeat(32), &"0f".repeat(33), &"é".repeat(32)] {
            assert!(parse_certificate_key(bad).is_err(), "{bad}");
        }
    }
}
