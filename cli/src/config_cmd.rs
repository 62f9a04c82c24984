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
    // Written whole and renamed, so a reader never sees half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)
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
