//! `skiff token create | list | delete`: bootstrap tokens a new machine joins with, kept as
//! kubeadm keeps them (Secrets `bootstrap-token-<id>` in kube-system, [`skiff_api::bootstrap`]).

use crate::control_plane;
use crate::ctl::{print_table, runtime, Conn, Failure, Outcome};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use skiff_api::bootstrap::{self, NAMESPACE, SECRET_PREFIX, SECRET_TYPE};

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print it (`id.secret`).
    Create(CreateArgs),
    /// The tokens, their expiry and use.
    List(ListArgs),
    /// Delete tokens (by `id.secret` or by id).
    Delete(DeleteArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// How long the token authenticates (`0`: until deleted), e.g. 30m, 24h (default 24h, and
    /// 2h with --control-plane, as kubeadm keeps its uploaded certificates).
    #[arg(long)]
    ttl: Option<String>,
    /// What the token is for, shown by `token list`.
    #[arg(long, default_value = "")]
    description: String,
    /// Extra groups the joining machine is in, each under `system:bootstrappers:`.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Print the whole `skiff join` command for a node (server, token, CA hash).
    #[arg(long)]
    print_join_command: bool,
    /// The token is for a master (kubeadm's --upload-certs): the control plane's keys, read
    /// from --master-config, are sealed with a fresh certificate key into a Secret only this
    /// token may read, and the join command printed carries `--control-plane --certificate-key`.
    #[arg(long, requires = "master_config")]
    control_plane: bool,
    /// With --control-plane: a master's configuration file on this machine (`DIR/master-1/
    /// config.json` of `skiff up`, `DIR/config.json` of a joined master).
    #[arg(long, requires = "control_plane")]
    master_config: Option<std::path::PathBuf>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[arg(required = true)]
    tokens: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

fn random_part(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len).map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char).collect()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The token's Secret, as kubeadm writes it.
fn secret(id: &str, secret: &str, expires: Option<i64>, description: &str, groups: &[String]) -> Value {
    let mut data = json!({
        "token-id": b64(id),
        "token-secret": b64(secret),
        "usage-bootstrap-authentication": b64("true"),
        "usage-bootstrap-signing": b64("true"),
    });
    if let Some(at) = expires {
        data["expiration"] = json!(b64(&skiff_proto::time::rfc3339(at)));
    }
    if !description.is_empty() {
        data["description"] = json!(b64(description));
    }
    if !groups.is_empty() {
        data["auth-extra-groups"] = json!(b64(&groups.join(",")));
    }
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
        "metadata": {"name": bootstrap::secret_name(id), "namespace": NAMESPACE},
        "data": data,
    })
}

/// The hash a join command pins this client config's cluster CA by.
fn ca_cert_hash(conn: &Conn) -> Result<String, Failure> {
    let config = conn.config().map_err(|e| Failure::Local(e.to_string()))?;
    let ca = config.ca.ok_or_else(|| {
        Failure::Local("--print-join-command: the cluster serves no TLS (its client config names no CA)".into())
    })?;
    let pem = std::fs::read(&ca).map_err(|e| Failure::Local(format!("{}: {e}", ca.display())))?;
    skiff_proto::cert::ca_cert_hash(&pem).map_err(|e| Failure::Local(format!("{}: {e}", ca.display())))
}

/// The `skiff join` command through `server` (the master that just answered).
fn join_command(server: &str, token: &str, hash: &str) -> String {
    let server = if server.contains("://") { server.to_string() } else { format!("https://{server}") };
    format!("skiff join --server {server} --token {token} --ca-cert-hash {hash}")
}

pub fn run(cmd: TokenCommand) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    match cmd {
        TokenCommand::Create(args) => {
            let ttl = args.ttl.as_deref().unwrap_or(if args.control_plane { "2h" } else { "24h" });
            let ttl = crate::ctl::parse_duration(ttl).map_err(|e| Failure::Local(format!("--ttl: {e}")))?;
            if let Some(g) = args.groups.iter().find(|g| !g.starts_with("system:bootstrappers:")) {
                return Err(Failure::Local(format!("--groups: {g:?} is not under system:bootstrappers:")));
            }
            let (id, part) = (random_part(6), random_part(16));
            let token = format!("{id}.{part}");
            // The CA hash before writing: a token nobody can use is not made.
            let hash = args.print_join_command.then(|| ca_cert_hash(&args.conn)).transpose()?;
            let expires = (!ttl.is_zero()).then(|| skiff_proto::time::now_secs() + ttl.as_secs() as i64);
            let client = args.conn.client()?;
            // The sealed keys first: a token is never usable before they are there.
            let keys = match &args.master_config {
                Some(path) => {
                    let bundle = control_plane::bundle_of(path).map_err(|e| Failure::Local(format!("{e:#}")))?;
                    let key = control_plane::new_certificate_key();
                    let raw = control_plane::parse_certificate_key(&key).map_err(|e| Failure::Local(e.to_string()))?;
                    let sealed = control_plane::seal(&raw, &bootstrap::certs_secret_name(&id), &bundle)
                        .map_err(|e| Failure::Local(e.to_string()))?;
                    rt.block_on(client.create("secrets", NAMESPACE, &control_plane::secret(&id, &sealed)))?;
                    Some(key)
                }
                None => None,
            };
            let obj = secret(&id, &part, expires, &args.description, &args.groups);
            if let Err(e) = rt.block_on(client.create("secrets", NAMESPACE, &obj)) {
                if keys.is_some() {
                    let _ = rt.block_on(client.delete("secrets", NAMESPACE, &bootstrap::certs_secret_name(&id)));
                }
                return Err(e.into());
            }
            // It names the master that took the token, one known to answer.
            let mut join = hash.map(|hash| join_command(&client.current_endpoint(), &token, &hash));
            if let (Some(line), Some(key)) = (&mut join, &keys) {
                line.push_str(&format!(" --control-plane --certificate-key {key}"));
            }
            match (join, keys) {
                (Some(line), _) => println!("{line}"),
                (None, Some(key)) => println!("{token}\ncertificate key: {key}"),
                (None, None) => println!("{token}"),
            }
            Ok(())
        }
        TokenCommand::List(args) => {
            let client = args.conn.client()?;
            let list = rt.block_on(client.list("secrets", NAMESPACE, "", "type=bootstrap.kubernetes.io/token"))?;
            let now = skiff_proto::time::now_secs();
            let mut rows =
                vec![["TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA GROUPS"].map(String::from).to_vec()];
            for s in list["items"].as_array().into_iter().flatten() {
                let name = s["metadata"]["name"].as_str().unwrap_or_default();
                let Some(id) = name.strip_prefix(SECRET_PREFIX) else { continue };
                let field = |f: &str| bootstrap::field(s, f).unwrap_or_default();
                let expiration = field("expiration");
                let ttl = match skiff_proto::time::parse_rfc3339(&expiration) {
                    _ if expiration.is_empty() => "<forever>".to_string(),
                    Some(at) if at > now => crate::ctl::listing::short_duration(at - now),
                    Some(_) => "<expired>".to_string(),
                    None => "<invalid>".to_string(),
                };
                let usages: Vec<&str> = ["authentication", "signing"]
                    .into_iter()
                    .filter(|u| field(&format!("usage-bootstrap-{u}")) == "true")
                    .collect();
                rows.push(vec![
                    // As kubeadm: the secret half is shown, since whoever may list Secrets in
                    // kube-system may read them anyway.
                    format!("{id}.{}", field("token-secret")),
                    ttl,
                    if expiration.is_empty() { "<never>".into() } else { expiration },
                    usages.join(","),
                    field("description"),
                    field("auth-extra-groups"),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        TokenCommand::Delete(args) => {
            let client = args.conn.client()?;
            for t in &args.tokens {
                let id = t.split_once('.').map_or(t.as_str(), |(id, _)| id);
                rt.block_on(client.delete("secrets", NAMESPACE, &bootstrap::secret_name(id)))?;
                // The control plane's keys sealed for it go with it.
                match rt.block_on(client.delete("secrets", NAMESPACE, &bootstrap::certs_secret_name(id))) {
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(s.into()),
                }
                println!("bootstrap token \"{id}\" deleted");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_authenticates_as_its_bootstrapper_until_it_expires() {
        let (id, part) = (random_part(6), random_part(16));
        assert!(bootstrap::parse_token(&format!("{id}.{part}")).is_some(), "{id}.{part}");
        let now = skiff_proto::time::now_secs();
        let groups = vec!["system:bootstrappers:edge".to_string()];
        let s = secret(&id, &part, Some(now + 60), "for edge nodes", &groups);
        let user = bootstrap::user_of(&s, &id, &part, now).unwrap();
        assert_eq!(user.name, format!("system:bootstrap:{id}"));
        assert!(user.groups.contains(&"system:bootstrappers:edge".to_string()));
        assert!(bootstrap::user_of(&s, &id, &part, now + 61).unwrap_err().contains("expired"));
        assert_eq!(bootstrap::field(&s, "description").as_deref(), Some("for edge nodes"));
    }
}
