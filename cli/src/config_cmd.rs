//! `skiff config`: the client config's contexts, as `kubectl config` handles a kubeconfig's.
//! Edits keep every field they do not touch.

use crate::ctl::{print_table, Failure, Outcome};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use skiff_client::ClientConfig;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// List the contexts; the current one is starred.
    GetContexts(ConfigArgs),
    /// Print the current context's name.
    CurrentContext(ConfigArgs),
    /// Make NAME the current context.
    UseContext {
        name: String,
        #[command(flatten)]
        conf: ConfigArgs,
    },
    /// Create or change a context (`--current` for the current one).
    SetContext {
        name: Option<String>,
        #[arg(long)]
        current: bool,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        conf: ConfigArgs,
    },
    /// Add the cluster's masters to the current context's cluster endpoints: asks a master
    /// it names for the voting members' client addresses (as etcd's clientv3 `Sync`), so
    /// masters that joined since the config was written are named, and failover reaches them.
    /// Endpoints already listed stay (a master that left the cluster is removed by hand).
    SyncEndpoints(ConfigArgs),
    /// Print the config (tokens redacted unless --raw).
    View {
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        conf: ConfigArgs,
    },
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Client config (default: $SKIFF_CONFIG, then ./.skiff/client.json).
    #[arg(long = "config")]
    path: Option<PathBuf>,
}

fn load(path: &Path) -> Result<Value, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::Local(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Failure::Local(format!("{}: {e}", path.display())))
}

fn save(path: &Path, v: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Failure::Local(e.to_string()))? + "\n";
    // Written whole and renamed, so a reader never sees half a file; owner-only, as the tokens
    // and key paths in it are.
    let tmp = path.with_extension("json.tmp");
    skiff_proto::pki::write_private(&tmp, text.as_bytes())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Failure::Local(format!("{}: {e}", path.display())))
}

fn contexts(v: &Value) -> Vec<Value> {
    v["contexts"].as_array().cloned().unwrap_or_default()
}

fn resolve(conf: &ConfigArgs) -> Result<PathBuf, Failure> {
    ClientConfig::path(conf.path.as_deref()).map_err(|e| Failure::Local(e.to_string()))
}

pub fn run(cmd: ConfigCommand) -> Outcome {
    match cmd {
        ConfigCommand::GetContexts(conf) => {
            let v = load(&resolve(&conf)?)?;
            let current = v["currentContext"].as_str().unwrap_or_default();
            let mut rows =
                vec![vec!["CURRENT".into(), "NAME".into(), "CLUSTER".into(), "AUTHINFO".into(), "NAMESPACE".into()]];
            for c in contexts(&v) {
                let name = c["name"].as_str().unwrap_or_default();
                rows.push(vec![
                    if name == current { "*".into() } else { String::new() },
                    name.into(),
                    c["cluster"].as_str().unwrap_or_default().into(),
                    c["user"].as_str().unwrap_or_default().into(),
                    c["namespace"].as_str().unwrap_or_default().into(),
                ]);
            }
            print_table(&rows);
        }
        ConfigCommand::CurrentContext(conf) => {
            let v = load(&resolve(&conf)?)?;
            match v["currentContext"].as_str().filter(|c| !c.is_empty()) {
                Some(c) => println!("{c}"),
                None => return Err(Failure::Local("current-context is not set".into())),
            }
        }
        ConfigCommand::UseContext { name, conf } => {
            let path = resolve(&conf)?;
            let mut v = load(&path)?;
            if !contexts(&v).iter().any(|c| c["name"] == json!(name)) {
                return Err(Failure::Local(format!("no context exists with the name: {name:?}")));
            }
            v["currentContext"] = json!(name);
            save(&path, &v)?;
            println!("Switched to context \"{name}\".");
        }
        ConfigCommand::SetContext { name, current, namespace, cluster, user, conf } => {
            let path = resolve(&conf)?;
            let mut v = load(&path)?;
            let name = match (name, current) {
                (Some(n), false) => n,
                (None, true) => v["currentContext"]
                    .as_str()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| Failure::Local("no current context is set".into()))?
                    .to_string(),
                (Some(_), true) => {
                    return Err(Failure::Local("you cannot specify both a context name and --current".into()))
                }
                (None, false) => {
                    return Err(Failure::Local("you must specify a non-empty context name or --current".into()))
                }
            };
            for (flag, value, list) in [("--cluster", &cluster, "clusters"), ("--user", &user, "users")] {
                if let Some(want) = value {
                    let known = v[list].as_array().is_some_and(|l| l.iter().any(|x| x["name"] == json!(want)));
                    if !known {
                        return Err(Failure::Local(format!(
                            "{flag}: no {} named {want:?} in {}",
                            &list[..list.len() - 1],
                            path.display()
                        )));
                    }
                }
            }
            let mut all = contexts(&v);
            let existed = all.iter().any(|c| c["name"] == json!(name));
            if !existed {
                let first_cluster = v["clusters"][0]["name"].clone();
                let first_user = v["users"][0]["name"].clone();
                all.push(json!({"name": name, "cluster": first_cluster, "user": first_user, "namespace": "default"}));
            }
            for c in all.iter_mut().filter(|c| c["name"] == json!(name)) {
                if let Some(ns) = &namespace {
                    c["namespace"] = json!(ns);
                }
                if let Some(k) = &cluster {
                    c["cluster"] = json!(k);
                }
                if let Some(u) = &user {
                    c["user"] = json!(u);
                }
            }
            v["contexts"] = json!(all);
            save(&path, &v)?;
            println!("Context \"{name}\" {}.", if existed { "modified" } else { "created" });
        }
        ConfigCommand::SyncEndpoints(conf) => {
            let path = resolve(&conf)?;
            let config = ClientConfig::load(&path).map_err(|e| Failure::Local(e.to_string()))?;
            let rt = tokio::runtime::Runtime::new().map_err(|e| Failure::Local(e.to_string()))?;
            // Channels connect lazily on the runtime they were made in.
            let client = rt.block_on(async { skiff_client::Client::new(config) })?;
            rt.block_on(client.sync_endpoints())?;
            let endpoints = client.endpoints();
            let mut v = load(&path)?;
            let current = v["currentContext"].as_str().unwrap_or_default().to_string();
            let cluster = contexts(&v)
                .iter()
                .find(|c| c["name"] == json!(current))
                .and_then(|c| c["cluster"].as_str().map(String::from))
                .ok_or_else(|| Failure::Local(format!("{}: no cluster for the current context", path.display())))?;
            let clusters = v["clusters"].as_array_mut().into_iter().flatten();
            for c in clusters.filter(|c| c["name"] == json!(cluster)) {
                c["endpoints"] = json!(endpoints);
            }
            save(&path, &v)?;
            println!("Cluster \"{cluster}\" endpoints: {}.", endpoints.join(", "));
        }
        ConfigCommand::View { raw, conf } => {
            let mut v = load(&resolve(&conf)?)?;
            if !raw {
                if let Some(users) = v["users"].as_array_mut() {
                    for u in users {
                        if u.get("token").is_some() {
                            u["token"] = json!("REDACTED");
                        }
                    }
                }
            }
            print!("{}", serde_yaml::to_string(&v).map_err(|e| Failure::Local(e.to_string()))?);
        }
    }
    Ok(())
}
