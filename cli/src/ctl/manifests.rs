//! `apply`, `create` and `delete`: manifests read from files or stdin, applied one object at a
//! time, and deletes with kubectl's flags.

use super::*;

#[derive(Args, Debug)]
pub struct FileArgs {
    /// A manifest file, a directory of them, or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) conn: Conn,
}

/// Every document of every file, parsed before anything is sent: a malformed file changes
/// nothing. Errors name the file and line.
pub(super) fn read_manifests(files: &[PathBuf]) -> Result<Vec<(String, Value)>, Failure> {
    let mut paths = Vec::new();
    for f in files {
        if f.as_os_str() == "-" {
            paths.push(f.clone());
        } else if f.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(f)
                .map_err(|e| Failure::Local(format!("{}: {e}", f.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                .collect();
            entries.sort();
            paths.extend(entries);
        } else if f.exists() {
            paths.push(f.clone());
        } else {
            return Err(Failure::Local(format!("the path {:?} does not exist", f.display().to_string())));
        }
    }
    let mut docs = Vec::new();
    for p in paths {
        let (label, text) = if p.as_os_str() == "-" {
            let mut t = String::new();
            std::io::stdin().read_to_string(&mut t).map_err(|e| Failure::Local(e.to_string()))?;
            ("STDIN".to_string(), t)
        } else {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).map_err(|e| Failure::Local(format!("{}: {e}", p.display())))?,
            )
        };
        for (n, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| Failure::Local(format!("error parsing {label}: {e}")))?;
            if v.is_null() {
                continue;
            }
            if v.get("kind").and_then(Value::as_str).is_none() {
                return Err(Failure::Local(format!(
                    "error validating {label} (document {}): Object 'Kind' is missing",
                    n + 1
                )));
            }
            docs.push((label.clone(), v));
        }
    }
    Ok(docs)
}

pub(super) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub(super) fn info_of(obj: &Value) -> Result<&'static KindInfo, Failure> {
    let kind = s(obj, "/kind");
    let api_version = s(obj, "/apiVersion");
    KINDS
        .iter()
        .find(|k| k.kind == kind && (api_version.is_empty() || k.api_version == api_version))
        .ok_or_else(|| Failure::Local(format!("resource mapping not found for name: {:?} namespace: {:?}: no matches for kind {kind:?} in version {api_version:?}", s(obj, "/metadata/name"), s(obj, "/metadata/namespace"))))
}

pub(crate) fn display_name(info: &KindInfo, obj: &Value) -> String {
    let group = info.api_version.split_once('/').map(|(g, _)| format!(".{g}")).unwrap_or_default();
    format!("{}{group}/{}", info.kind.to_lowercase(), s(obj, "/metadata/name"))
}

/// What `apply`, `create` and `replace` do with each document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Create, or merge into the live object (kubectl apply).
    Apply,
    /// Create; an existing object is an error.
    Create,
    /// Replace the live object with the document; a missing one is an error.
    Replace,
}

pub fn apply(args: FileArgs, mode: ApplyMode) -> Outcome {
    let docs = read_manifests(&args.files)?;
    apply_docs(&args.conn, docs, mode)
}

/// `kubectl create -f` or `kubectl create <generator> …`.
pub fn create(args: crate::generate::CreateArgs) -> Outcome {
    match args.what {
        Some(what) => {
            let doc = crate::generate::object(what)?;
            apply_docs(&args.files.conn, vec![("(generated)".into(), doc)], ApplyMode::Create)
        }
        None => apply(args.files, ApplyMode::Create),
    }
}

/// Applies parsed documents (`(source, document)`) one by one, reporting each.
pub fn apply_docs(conn: &Conn, docs: Vec<(String, Value)>, mode: ApplyMode) -> Outcome {
    let create_only = mode == ApplyMode::Create;
    // As kubectl: the documents of a kind the server does not serve are reported after the
    // others are applied, and the exit code says something failed.
    let mut unmapped = Vec::new();
    let known: Vec<(&Value, &KindInfo)> = docs
        .iter()
        .filter_map(|(_, d)| match info_of(d) {
            Ok(info) => Some((d, info)),
            Err(e) => {
                unmapped.push(e);
                None
            }
        })
        .collect();
    let rt = runtime();
    let _enter = rt.enter();
    let client = conn.client()?;
    let mut failed = None;
    for (doc, info) in known {
        let ns = if info.namespaced {
            let own = s(doc, "/metadata/namespace");
            if own.is_empty() {
                client.config.namespace.clone()
            } else {
                own.to_string()
            }
        } else {
            String::new()
        };
        let name = s(doc, "/metadata/name").to_string();
        // As kubectl: remember what was applied, so re-applying the same manifest is a no-op.
        let applied = doc.to_string();
        let mut with_annotation = doc.clone();
        if mode == ApplyMode::Apply {
            with_annotation["metadata"]["annotations"][LAST_APPLIED] = Value::String(applied.clone());
        }
        conn.record_into(&mut with_annotation);
        // What happened, and the object as stored when it was created (a `generateName` gets its
        // name there).
        let result: Result<(&str, Option<Value>), tonic::Status> = rt.block_on(async {
            if mode == ApplyMode::Replace {
                let live = client.get(info.resource, &ns, &name).await?;
                let mut replacement = with_annotation.clone();
                if s(&replacement, "/metadata/resourceVersion").is_empty() {
                    // No version in the file: replace whatever is there (as kubectl does).
                    replacement["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
                }
                if replacement["metadata"]["namespace"].is_null() && info.namespaced {
                    replacement["metadata"]["namespace"] = Value::String(ns.clone());
                }
                return client.update(info.resource, &replacement).await.map(|_| ("replaced", None));
            }
            if create_only || name.is_empty() {
                return client.create(info.resource, &ns, &with_annotation).await.map(|o| ("created", Some(o)));
            }
            // A merge into the live object, as kubectl's patch: a write that lands between
            // the read and the update (a controller's status, say) is merged into again,
            // unless the manifest pins a resourceVersion.
            let pinned = !s(doc, "/metadata/resourceVersion").is_empty();
            let mut attempt = 0;
            loop {
                let live = match client.get(info.resource, &ns, &name).await {
                    Err(e) if e.code() == Code::NotFound => {
                        return client.create(info.resource, &ns, &with_annotation).await.map(|o| ("created", Some(o)))
                    }
                    other => other?,
                };
                let pointer = format!("/metadata/annotations/{}", LAST_APPLIED.replace('/', "~1"));
                if live.pointer(&pointer).and_then(Value::as_str) == Some(applied.as_str()) {
                    return Ok(("unchanged", None));
                }
                let mut merged = live.clone();
                skiff_api::object::merge_patch(&mut merged, &with_annotation);
                match client.update(info.resource, &merged).await {
                    Err(e) if e.code() == Code::Aborted && !pinned && attempt < 5 => attempt += 1,
                    other => return other.map(|_| ("configured", None)),
                }
            }
        });
        match result {
            Ok((what, stored)) => println!("{} {what}", display_name(info, stored.as_ref().unwrap_or(doc))),
            Err(e) => {
                eprintln!("{}", Failure::Server(e));
                failed = Some(Failure::Reported);
            }
        }
    }
    for e in unmapped {
        eprintln!("{e}");
        failed = Some(Failure::Reported);
    }
    match failed {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kind and names, or `kind/name`.
    targets: Vec<String>,
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Delete every object of the kind matching this label selector.
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    /// Delete every object of the kind in the namespace.
    #[arg(long)]
    all: bool,
    /// Seconds a pod gets to stop (-1: its own terminationGracePeriodSeconds).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    grace_period: i64,
    /// With --grace-period=0: remove pods from the API at once, without waiting for the node.
    #[arg(long)]
    force: bool,
    /// background (default), foreground or orphan (dependents keep running, ownerless).
    #[arg(long, default_value = "background")]
    cascade: String,
    #[command(flatten)]
    conn: Conn,
}

pub fn delete(args: DeleteArgs) -> Outcome {
    // Flags first: a bad one is refused even when nothing matches.
    let policy = match args.cascade.as_str() {
        "background" | "true" => "Background",
        "foreground" => "Foreground",
        "orphan" | "false" => "Orphan",
        other => {
            return Err(Failure::Local(format!("invalid --cascade {other:?}: use background, foreground or orphan")))
        }
    };
    if args.force && args.grace_period > 0 {
        return Err(Failure::Local("--force needs --grace-period=0 (or none)".into()));
    }
    let grace = if args.force { Some(0) } else { (args.grace_period >= 0).then_some(args.grace_period) };
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let mut targets: Vec<(&'static KindInfo, String, String)> = Vec::new();
    if !args.files.is_empty() {
        for (_, doc) in read_manifests(&args.files)? {
            let info = info_of(&doc)?;
            let ns = if s(&doc, "/metadata/namespace").is_empty() {
                client.config.namespace.clone()
            } else {
                s(&doc, "/metadata/namespace").into()
            };
            targets.push((info, ns, s(&doc, "/metadata/name").into()));
        }
    } else if let Some(first) = args.targets.first() {
        if first.contains('/') {
            for t in &args.targets {
                let (k, n) = t.split_once('/').unwrap_or((t, ""));
                targets.push((kind_arg(k)?, client.config.namespace.clone(), n.into()));
            }
        } else {
            let info = kind_arg(first)?;
            if args.all || args.selector.is_some() {
                let ns = if info.namespaced { client.config.namespace.clone() } else { String::new() };
                let labels = args.selector.clone().unwrap_or_default();
                let list = rt.block_on(client.list(info.resource, &ns, &labels, ""))?;
                for o in list["items"].as_array().into_iter().flatten() {
                    targets.push((info, s(o, "/metadata/namespace").to_string(), s(o, "/metadata/name").to_string()));
                }
                if targets.is_empty() {
                    println!("No resources found");
                    return Ok(());
                }
            } else if args.targets.len() < 2 {
                return Err(Failure::Local("resource(s) were provided, but no name was specified".into()));
            }
            for n in &args.targets[1..] {
                targets.push((info, client.config.namespace.clone(), n.clone()));
            }
        }
    } else {
        return Err(Failure::Local("You must provide one or more resources by argument or filename.".into()));
    }
    let mut failed = None;
    for (info, ns, name) in targets {
        match rt.block_on(client.delete_with(info.resource, &ns, &name, grace, policy)) {
            Ok(_) => println!(
                "{} {name:?} deleted",
                kinds::qualified(info).replace(info.resource, &info.kind.to_lowercase())
            ),
            Err(e) => {
                eprintln!("{}", Failure::Server(e));
                failed = Some(Failure::Reported);
            }
        }
    }
    match failed {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

pub fn api_resources() -> Outcome {
    let mut rows =
        vec![vec!["NAME".to_string(), "SHORTNAMES".into(), "APIVERSION".into(), "NAMESPACED".into(), "KIND".into()]];
    for k in KINDS {
        rows.push(vec![
            k.resource.into(),
            k.short_names.into(),
            k.api_version.into(),
            k.namespaced.to_string(),
            k.kind.into(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// Runs a verb, printing its failure as kubectl does; the caller exits 1 on `Err`.
pub fn report(outcome: Outcome) -> anyhow::Result<()> {
    if let Err(f) = outcome {
        if let Failure::Exit(code) = f {
            std::process::exit(code);
        }
        if !matches!(f, Failure::Reported) {
            eprintln!("{f}");
        }
        std::process::exit(1);
    }
    Ok(())
}
