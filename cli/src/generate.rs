//! `skiff create <generator>`, `skiff run` and `skiff expose`: the objects kubectl's imperative
//! commands make (namespace, serviceaccount, configmap, secret generic|tls, deployment; a pod;
//! a service for an object's pods), built here and created like a manifest.

use crate::ctl::{ApplyMode, Conn, Failure, FileArgs, Outcome};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CreateArgs {
    #[command(subcommand)]
    pub what: Option<Generator>,
    #[command(flatten)]
    pub files: FileArgs,
}

#[derive(Subcommand, Debug)]
pub enum Generator {
    /// A namespace.
    #[command(alias = "ns")]
    Namespace { name: String },
    /// A service account.
    #[command(alias = "sa")]
    Serviceaccount { name: String },
    /// A config map from literals and files.
    #[command(alias = "cm")]
    Configmap {
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// A secret: `generic` (literals and files) or `tls` (a certificate and its key).
    #[command(subcommand)]
    Secret(SecretKind),
    /// A deployment running an image.
    #[command(alias = "deploy")]
    Deployment {
        name: String,
        /// The container image.
        #[arg(long, required = true)]
        image: String,
        #[arg(long, default_value_t = 1)]
        replicas: i64,
        /// The container port to declare.
        #[arg(long)]
        port: Option<i64>,
        /// The command to run instead of the image's (after `--`), as kubectl's.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretKind {
    /// A secret from literals and files.
    Generic {
        name: String,
        #[command(flatten)]
        data: DataArgs,
        /// The secret's type.
        #[arg(long = "type", default_value = "Opaque")]
        kind: String,
    },
    /// A kubernetes.io/tls secret from a PEM certificate and key.
    Tls {
        name: String,
        #[arg(long, required = true)]
        cert: PathBuf,
        #[arg(long, required = true)]
        key: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct DataArgs {
    /// `key=value` (repeatable).
    #[arg(long = "from-literal")]
    literals: Vec<String>,
    /// `[key=]path`: a file under its name (or `key`), or every file in a directory.
    #[arg(long = "from-file")]
    files: Vec<String>,
}

fn meta(name: &str) -> Value {
    json!({"name": name})
}

/// `key=value` with a non-empty key; else an error naming the flag and the expected shape.
fn key_value<'a>(flag: &str, text: &'a str, shape: &str) -> Result<(&'a str, &'a str), Failure> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Failure::Local(format!("{flag} {text:?}: expected {shape}")))
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Local(format!("{}: {e}", path.display())))
}

/// The key → bytes of `--from-literal` and `--from-file`, refusing a key given twice.
fn entries(args: &DataArgs) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for lit in &args.literals {
        let (k, v) = key_value("--from-literal", lit, "key=value")?;
        out.push((k.to_string(), v.as_bytes().to_vec()));
    }
    for spec in &args.files {
        let (key, path) = match spec.split_once('=') {
            Some((k, p)) if !k.is_empty() => (Some(k.to_string()), PathBuf::from(p)),
            _ => (None, PathBuf::from(spec)),
        };
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                .map_err(|e| Failure::Local(format!("{}: {e}", path.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for f in files {
                let name = f.file_name().unwrap_or_default().to_string_lossy().into_owned();
                out.push((name, read(&f)?));
            }
        } else {
            let name = key.unwrap_or_else(|| path.file_name().unwrap_or_default().to_string_lossy().into_owned());
            out.push((name, read(&path)?));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (k, _) in &out {
        if !seen.insert(k.clone()) {
            return Err(Failure::Local(format!("cannot add key {k:?}: another key by that name already exists")));
        }
    }
    Ok(out)
}

fn base64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The object a generator describes.
pub fn object(what: Generator) -> Result<Value, Failure> {
    Ok(match what {
        Generator::Namespace { name } => json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(&name)}),
        Generator::Serviceaccount { name } => {
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(&name)})
        }
        Generator::Configmap { name, data } => {
            let (mut text, mut binary) = (Map::new(), Map::new());
            for (k, v) in entries(&data)? {
                match String::from_utf8(v) {
                    Ok(s) => text.insert(k, Value::String(s)),
                    Err(e) => binary.insert(k, base64(e.as_bytes())),
                };
            }
            let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&name), "data": text});
            if !binary.is_empty() {
                cm["binaryData"] = Value::Object(binary);
            }
            cm
        }
        Generator::Secret(SecretKind::Generic { name, data, kind }) => {
            let data: Map<String, Value> = entries(&data)?.into_iter().map(|(k, v)| (k, base64(&v))).collect();
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(&name), "type": kind, "data": data})
        }
        Generator::Secret(SecretKind::Tls { name, cert, key }) => json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": meta(&name), "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64(&read(&cert)?), "tls.key": base64(&read(&key)?)}
        }),
        Generator::Deployment { name, image, replicas, port, command } => {
            // The container is named after the image, as kubectl names it.
            let base = image.rsplit('/').next().unwrap_or(&image);
            let base = base.split(['@', ':']).next().unwrap_or(base);
            let container: String =
                base.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
            let mut c = json!({"name": container.trim_matches('-'), "image": image});
            if let Some(p) = port {
                c["ports"] = json!([{"containerPort": p}]);
            }
            if !command.is_empty() {
                c["command"] = json!(command);
            }
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [c]}}}})
        }
    })
}

/// `kubectl run`: one pod running an image.
#[derive(Args, Debug)]
pub struct RunArgs {
    name: String,
    #[arg(long, required = true)]
    image: String,
    /// The container port to declare.
    #[arg(long)]
    port: Option<i64>,
    /// Labels `k=v,k2=v2` (default: `run=NAME`).
    #[arg(short = 'l', long)]
    labels: Option<String>,
    /// `NAME=value` environment variables (repeatable).
    #[arg(long)]
    env: Vec<String>,
    /// The pod's restart policy.
    #[arg(long, default_value = "Always", value_parser = ["Always", "OnFailure", "Never"])]
    restart: String,
    /// The command to run instead of the image's (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

fn pairs(what: &str, text: &str) -> Result<Map<String, Value>, Failure> {
    let mut out = Map::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = key_value(what, part, "key=value")?;
        out.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(out)
}

/// The pod `skiff run` creates.
fn pod(args: &RunArgs) -> Result<Value, Failure> {
    let labels = match &args.labels {
        Some(l) => pairs("--labels", l)?,
        None => Map::from_iter([("run".to_string(), Value::String(args.name.clone()))]),
    };
    let mut c = json!({"name": args.name, "image": args.image});
    if let Some(p) = args.port {
        c["ports"] = json!([{"containerPort": p}]);
    }
    if !args.env.is_empty() {
        let mut env = Vec::new();
        for e in &args.env {
            let (k, v) = key_value("--env", e, "NAME=value")?;
            env.push(json!({"name": k, "value": v}));
        }
        c["env"] = Value::Array(env);
    }
    if !args.command.is_empty() {
        c["command"] = json!(args.command);
    }
    Ok(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": args.name, "labels": labels},
        "spec": {"restartPolicy": args.restart, "containers": [c]}}))
}

pub fn run(args: RunArgs) -> Outcome {
    let doc = pod(&args)?;
    crate::ctl::apply_docs(&args.conn, vec![("(run)".into(), doc)], ApplyMode::Create)
}

/// `kubectl expose`: a Service selecting the pods of a Deployment, ReplicaSet, StatefulSet,
/// DaemonSet, Pod or Service.
#[derive(Args, Debug)]
pub struct ExposeArgs {
    /// The kind (`deployment`, `rs`, `pod`, …) or `kind/name`.
    kind: String,
    name: Option<String>,
    /// The service's port.
    #[arg(long, required = true)]
    port: i64,
    /// The pods' port, a number or a name (default: the service port).
    #[arg(long)]
    target_port: Option<String>,
    /// ClusterIP, NodePort or LoadBalancer.
    #[arg(long = "type", default_value = "ClusterIP", value_parser = ["ClusterIP", "NodePort", "LoadBalancer"])]
    kind_of_service: String,
    /// The service's name (default: the object's).
    #[arg(long = "name")]
    service_name: Option<String>,
    #[arg(long, default_value = "TCP", value_parser = ["TCP", "UDP", "SCTP"])]
    protocol: String,
    #[command(flatten)]
    conn: Conn,
}

/// The selector of the pods `obj` (of `kind`) stands for.
fn selector_of(kind: &str, obj: &Value) -> Option<Value> {
    let s = match kind {
        "Pod" => obj.pointer("/metadata/labels"),
        "Service" => obj.pointer("/spec/selector"),
        _ => obj.pointer("/spec/selector/matchLabels"),
    };
    s.filter(|v| v.as_object().is_some_and(|m| !m.is_empty())).cloned()
}

pub fn expose(args: ExposeArgs) -> Outcome {
    let (kind, name) = match (args.kind.split_once('/'), &args.name) {
        (Some((k, n)), None) => (k.to_string(), n.to_string()),
        (None, Some(n)) => (args.kind.clone(), n.clone()),
        _ => return Err(Failure::Local("expose needs KIND NAME or KIND/NAME".into())),
    };
    let info = skiff_api::kinds::lookup(&kind)
        .ok_or_else(|| Failure::Local(format!("the server doesn't have a resource type {kind:?}")))?;
    if !matches!(info.kind, "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Pod" | "Service") {
        return Err(Failure::Local(format!("cannot expose a {}", info.kind)));
    }
    let rt = crate::ctl::runtime();
    let obj = {
        let _enter = rt.enter();
        let client = args.conn.client()?;
        let ns = if info.namespaced { client.config.namespace.clone() } else { String::new() };
        rt.block_on(client.get(info.resource, &ns, &name))?
    };
    let selector = selector_of(info.kind, &obj).ok_or_else(|| {
        Failure::Local(format!("couldn't find a selector on {} {name:?}: it has no labels to select by", info.kind))
    })?;
    let target: Value = match &args.target_port {
        Some(t) => t.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(t.clone())),
        None => Value::from(args.port),
    };
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": args.service_name.clone().unwrap_or(name)},
        "spec": {"type": args.kind_of_service, "selector": selector,
            "ports": [{"port": args.port, "targetPort": target, "protocol": args.protocol}]}});
    drop(rt);
    crate::ctl::apply_docs(&args.conn, vec![("(expose)".into(), svc)], ApplyMode::Create)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_build_what_kubectl_builds() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.conf"), "a=1\n").unwrap();
        let data = DataArgs {
            literals: vec!["mode=prod".into()],
            files: vec![d.path().join("app.conf").display().to_string()],
        };
        let cm = object(Generator::Configmap { name: "cfg".into(), data }).unwrap();
        assert_eq!(cm["data"], json!({"mode": "prod", "app.conf": "a=1\n"}));
        let data = DataArgs { literals: vec!["password=s3cret".into()], files: vec![] };
        let s =
            object(Generator::Secret(SecretKind::Generic { name: "db".into(), data, kind: "Opaque".into() })).unwrap();
        assert_eq!(s["data"]["password"], "czNjcmV0");
        let dep = object(Generator::Deployment {
            name: "web".into(),
            image: "registry.local:5000/library/nginx:1.25".into(),
            replicas: 3,
            port: Some(80),
            command: vec!["sleep".into(), "3600".into()],
        })
        .unwrap();
        assert_eq!(dep["spec"]["template"]["spec"]["containers"][0]["name"], "nginx");
        assert_eq!(dep["spec"]["template"]["spec"]["containers"][0]["command"], json!(["sleep", "3600"]));
        assert_eq!(dep["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(dep["spec"]["replicas"], 3);
        let twice = DataArgs { literals: vec!["k=1".into(), "k=2".into()], files: vec![] };
        assert!(object(Generator::Configmap { name: "x".into(), data: twice }).is_err(), "a key given twice");
        let bad = DataArgs { literals: vec!["novalue".into()], files: vec![] };
        assert!(object(Generator::Configmap { name: "x".into(), data: bad }).is_err());
    }
}
